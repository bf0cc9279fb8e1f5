"""InterFaceGAN client: generated API stubs (interfacegan.v1) and a small SDK."""
