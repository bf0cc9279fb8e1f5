"""InterFaceGAN microservices: one package per service, shared code in `common`."""
