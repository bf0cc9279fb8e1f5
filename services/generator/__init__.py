"""Generator service: a model zoo of GAN generators behind a dynamic batcher."""
