"""Inversion service: images and photos to latent codes (encoder + optimisation)."""
