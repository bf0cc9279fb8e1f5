"""Boundary service: InterFaceGAN boundary training, subspace projection, edit math, Redis store."""
