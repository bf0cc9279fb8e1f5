"""Model zoo: DCGAN (default), PGGAN, StyleGAN and StyleGAN2 generators behind one GeneratorModel interface.

Usage:
    from models import load_model
    model = load_model("dcgan-digiface-64", "cpu")
    z = model.sample(8, seed=1)                      # (8, 100) float32, reproducible
    images = model.synthesize(z, "z")                # (8, 3, 64, 64) float tensor in [-1, 1] (differentiable)
    pixels = model.synthesize(z, "z", output="uint8")  # (8, 64, 64, 3) uint8
    model.net                                        # the nn.Module (e.g. DCGANGenerator)
"""

from .base import (SPACES, GeneratorModel, GeneratorNet, ModelSpec, WeightsError, check_state_dict, parse_space,
                   to_uint8)
from .registry import (BUILTIN, DEFAULT_MODEL, Registry, architectures, build_net, load_model, load_weights,
                       read_checkpoint, save_checkpoint)

__all__ = ["SPACES", "GeneratorModel", "GeneratorNet", "ModelSpec", "WeightsError", "check_state_dict", "parse_space",
           "to_uint8", "BUILTIN", "DEFAULT_MODEL", "Registry", "architectures", "build_net", "load_model",
           "load_weights", "read_checkpoint", "save_checkpoint"]
