"""Progressive GAN generator (Karras et al. 2018) in the converted-PyTorch layout (`lod`, `layer{i}`, `output{i}`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import GeneratorNet, kaiming_scale
from .layers import fused_upconv_kernel, normalize_z, pixel_norm


def channel_widths(resolution: int, channel_base: int = 8192, max_channels: int = 512) -> list[int]:
    """Widths: [latent, 4 px, 8 px, ...]; entry i is min(max_channels, channel_base / 2^i) (official configs)."""
    levels = int(math.log2(resolution))
    return [min(max_channels, channel_base // 2 ** i) for i in range(levels)]


class WScale(nn.Module):
    """Holds the bias of an equalized-learning-rate layer (`<block>.wscale.bias`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))


class PGConvBlock(nn.Module):
    """pixel norm -> [nearest 2x up] -> conv (weights scaled by He's constant) -> + bias -> activation.

    Keys: `conv.weight` (out, in, k, k) or, fused, `weight` (k, k, in, out); `wscale.bias` (out).
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, padding: int = 1, upsample: bool = False,
                 fused_scale: bool = False, gain: float = math.sqrt(2.0), activation: str = "lrelu"):
        super().__init__()
        self.upsample = upsample
        self.fused = upsample and fused_scale
        self.padding = padding
        self.scale = kaiming_scale(cin * kernel * kernel, gain)
        if self.fused:
            self.weight = nn.Parameter(torch.randn(kernel, kernel, cin, cout))
        else:
            self.conv = nn.Conv2d(cin, cout, kernel, 1, padding, bias=False)
            nn.init.normal_(self.conv.weight)
        self.wscale = WScale(cout)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x)
        if self.fused:
            x = F.conv_transpose2d(x, fused_upconv_kernel(self.weight * self.scale), stride=2, padding=1)
        else:
            if self.upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.conv2d(x, self.conv.weight * self.scale, padding=self.padding)
        x = x + self.wscale.bias.view(1, -1, 1, 1)
        return F.leaky_relu(x, 0.2) if self.activation == "lrelu" else x


class PGGANGenerator(GeneratorNet):
    """PGGAN generator: z (N, 512) -> (N, 3, R, R), unbounded output around [-1, 1].

    Layout (1024 px): `lod` (scalar), `layer0` (4x4 "dense" conv, k4 p3 on the 1x1 code) and
    `layer1..17` (3x3 convs, every even one upsampling), `output0..8` (1x1 to-RGB per level of detail).

    Args:
        resolution: Output side, 8 ... 1024.
        fused_scale: Upsample with one transposed conv (`layer{2i}.weight`, (3, 3, in, out)) instead of
            nearest + conv (`layer{2i}.conv.weight`).
        channel_base, max_channels: Feature-map widths, min(max_channels, channel_base / 2^i).
    """

    architecture = "pggan"

    def __init__(self, resolution: int = 1024, fused_scale: bool = False, channel_base: int = 8192,
                 max_channels: int = 512):
        super().__init__()
        if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
            raise ValueError(f"PGGAN resolution must be a power of two in 8..1024, got {resolution}")
        self.resolution = resolution
        self.fused_scale = fused_scale
        self.channel_base = channel_base
        self.max_channels = max_channels
        self.widths = channel_widths(resolution, channel_base, max_channels)
        self.latent_dim = self.widths[0]
        self.latent_shapes = {"z": (self.latent_dim,)}
        self.num_blocks = len(self.widths) - 1
        for b in range(1, len(self.widths)):
            cin, cout = self.widths[b - 1], self.widths[b]
            if b == 1:
                first = PGConvBlock(cin, cout, kernel=4, padding=3)
            else:
                first = PGConvBlock(cin, cout, upsample=True, fused_scale=fused_scale)
            self.add_module(f"layer{2 * b - 2}", first)
            self.add_module(f"layer{2 * b - 1}", PGConvBlock(cout, cout))
            self.add_module(f"output{b - 1}", PGConvBlock(cout, 3, kernel=1, padding=0, gain=1.0, activation="linear"))
        self.lod = nn.Parameter(torch.zeros(()))
        self._blocks = self.num_blocks

    def config(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "fused_scale": self.fused_scale,
                "channel_base": self.channel_base, "max_channels": self.max_channels}

    def after_load(self) -> None:
        # A non-zero level of detail stops at a coarser block and upsamples its image (as the reference does).
        lod = float(self.lod.detach().cpu())
        self._blocks = max(1, min(self.num_blocks, math.ceil(self.num_blocks - lod)))

    def normalize_z(self, z: torch.Tensor) -> torch.Tensor:
        return normalize_z(z)

    def render(self, z: torch.Tensor) -> torch.Tensor:
        x = z.reshape(z.shape[0], self.latent_dim, 1, 1)
        for b in range(1, self._blocks + 1):
            x = getattr(self, f"layer{2 * b - 1}")(getattr(self, f"layer{2 * b - 2}")(x))
        image = getattr(self, f"output{self._blocks - 1}")(x)
        if self._blocks < self.num_blocks:
            image = F.interpolate(image, scale_factor=2 ** (self.num_blocks - self._blocks), mode="nearest")
        return image
