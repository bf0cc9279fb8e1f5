"""DCGAN generator (Radford et al. 2016) in the PyTorch-tutorial layout: `main.{0,1,3,...}` keys."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .base import GeneratorNet, WeightsError


class DCGANGenerator(GeneratorNet):
    """Transposed-conv generator: z (N, latent_dim) -> (N, 3, resolution, resolution) in [-1, 1].

    The layout is `main` = [ConvT(latent->C, k4, s1, p0), BN, ReLU] then one [ConvT(k4, s2, p1), BN, ReLU]
    per doubling, then ConvT(->3, k4, s2, p1), Tanh; all convs without bias. At 64 px with
    base_channels=64 this is exactly the tutorial net (512-256-128-64 channels, 3,576,704 parameters).

    Args:
        resolution: Output side, a power of two >= 8.
        latent_dim: Size of z (nz).
        base_channels: Channels of the last hidden layer (ngf); they double towards the input.
        channels: Output channels (nc).
    """

    architecture = "dcgan"
    channels_last_ok = True

    def __init__(self, resolution: int = 64, latent_dim: int = 100, base_channels: int = 64, channels: int = 3):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"DCGAN resolution must be a power of two >= 8, got {resolution}")
        self.resolution = resolution
        self.latent_dim = latent_dim
        self.base_channels = base_channels
        self.channels = channels
        self.latent_shapes = {"z": (latent_dim,)}
        hidden = int(math.log2(resolution)) - 2  # 4 px from z, then one doubling per hidden block, then the output
        widths = [base_channels * 2 ** (hidden - 1 - i) for i in range(hidden)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def config(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "latent_dim": self.latent_dim,
                "base_channels": self.base_channels, "channels": self.channels}

    def render(self, z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(z.shape[0], self.latent_dim, 1, 1)
        return self.main(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)

    @classmethod
    def state_dict_of(cls, checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        # The published file is {'netG_state_dict': ...}; a bare state dict is accepted as well.
        if "netG_state_dict" in checkpoint:
            return checkpoint["netG_state_dict"]
        if any(k.startswith("main.") for k in checkpoint):
            return checkpoint
        raise WeightsError(f"not a DCGAN checkpoint: expected key 'netG_state_dict' or 'main.*' keys, "
                           f"found {sorted(checkpoint)[:8]}")

    def checkpoint(self) -> dict[str, Any]:
        return {"netG_state_dict": dict(self.state_dict())}
