"""StyleGAN (v1, Karras et al. 2019) generator in the converted-PyTorch layout (`mapping`, `truncation`, `synthesis`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import GeneratorNet, kaiming_scale
from .layers import fused_upconv_kernel, normalize_z, pixel_norm
from .pggan import WScale, channel_widths

#: From this resolution on, "auto" fuses nearest-upsampling and conv into one transposed conv (official rule).
FUSED_SCALE_MIN_RES = 128


class DenseBlock(nn.Module):
    """Equalized-lr dense layer; keys `linear.weight` (out, in) and `wscale.bias` (out)."""

    def __init__(self, din: int, dout: int, gain: float = math.sqrt(2.0), lr_mul: float = 0.01,
                 activation: str = "lrelu"):
        super().__init__()
        self.linear = nn.Linear(din, dout, bias=False)
        nn.init.normal_(self.linear.weight, std=1.0 / lr_mul)
        self.wscale = WScale(dout)
        self.scale = kaiming_scale(din, gain) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.linear.weight * self.scale, self.wscale.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) if self.activation == "lrelu" else x


class Mapping(nn.Module):
    """z -> pixel norm -> `dense0..{n-1}` (lr multiplier 0.01, leaky ReLU) -> w."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 8):
        super().__init__()
        self.num_layers = num_layers
        for i in range(num_layers):
            self.add_module(f"dense{i}", DenseBlock(z_dim if i == 0 else w_dim, w_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(z)
        for i in range(self.num_layers):
            x = getattr(self, f"dense{i}")(x)
        return x


class Truncation(nn.Module):
    """Holds `w_avg`, the moving average of W recorded during training."""

    def __init__(self, w_dim: int):
        super().__init__()
        self.register_buffer("w_avg", torch.zeros(w_dim))


class NoiseInput(nn.Module):
    """Adds the stored per-layer noise image (`noise`, (1, 1, res, res)) scaled per channel (`weight`)."""

    def __init__(self, channels: int, res: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels) * 0.1)
        self.register_buffer("noise", torch.randn(1, 1, res, res))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.noise.to(x.dtype) * self.weight.view(1, -1, 1, 1)


class StyleMod(nn.Module):
    """AdaIN style: x * (1 + scale(w)) + shift(w), from `dense` (w_dim -> 2C)."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.channels = channels
        self.dense = DenseBlock(w_dim, 2 * channels, gain=1.0, lr_mul=1.0, activation="linear")

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.dense(w).view(-1, 2, self.channels, 1, 1)
        return x * (style[:, 0] + 1) + style[:, 1]


class Epilogue(nn.Module):
    """noise -> bias -> leaky ReLU -> instance norm -> style modulation."""

    def __init__(self, channels: int, res: int, w_dim: int):
        super().__init__()
        self.apply_noise = NoiseInput(channels, res)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.style_mod = StyleMod(channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.apply_noise(x)
        x = F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2)
        x = x - x.mean(dim=(2, 3), keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-8)
        return self.style_mod(x, w)


class FirstBlock(nn.Module):
    """The learned 4x4 constant (`first_layer`, (1, C, 4, 4)) and its epilogue."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.first_layer = nn.Parameter(torch.ones(1, channels, 4, 4))
        self.epilogue = Epilogue(channels, 4, w_dim)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.epilogue(self.first_layer.expand(w.shape[0], -1, -1, -1), w)


class ConvBlock(nn.Module):
    """[2x upsample] -> 3x3 conv -> [blur] -> epilogue. Fused upsampling keeps `weight` (3, 3, in, out)."""

    def __init__(self, cin: int, cout: int, res: int, w_dim: int, upsample: bool = False, fused: bool = False):
        super().__init__()
        self.upsample = upsample
        self.fused = upsample and fused
        self.scale = kaiming_scale(cin * 9)
        if self.fused:
            self.weight = nn.Parameter(torch.randn(3, 3, cin, cout))
        else:
            self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            nn.init.normal_(self.conv.weight)
        if upsample:
            k = torch.tensor([1.0, 2.0, 1.0])
            k = (k[:, None] * k[None, :]) / 16
            self.blur = Blur(cout, k)
        self.epilogue = Epilogue(cout, res, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.fused:
            x = F.conv_transpose2d(x, fused_upconv_kernel(self.weight * self.scale), stride=2, padding=1)
        else:
            if self.upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.conv2d(x, self.conv.weight * self.scale, padding=1)
        if self.upsample:
            x = self.blur(x)
        return self.epilogue(x, w)


class Blur(nn.Module):
    """Depthwise 3x3 [1 2 1] blur after upsampling; the stored `kernel` is (C, 1, 3, 3)."""

    def __init__(self, channels: int, kernel: torch.Tensor):
        super().__init__()
        self.channels = channels
        self.register_buffer("kernel", kernel.view(1, 1, 3, 3).repeat(channels, 1, 1, 1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=self.channels)


class ToRGB(nn.Module):
    """1x1 conv to RGB (`conv.weight` (3, C, 1, 1), gain 1) plus `bias` (3)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 3, 1, bias=False)
        nn.init.normal_(self.conv.weight)
        self.bias = nn.Parameter(torch.zeros(3))
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.conv.weight * self.scale) + self.bias.view(1, -1, 1, 1)


class Synthesis(nn.Module):
    """W+ (N, L, w_dim) -> image; `layer0..L-1`, `output0..` (one to-RGB per level of detail), `lod`."""

    def __init__(self, resolution: int, w_dim: int, widths: list[int], fused_scale: bool | str):
        super().__init__()
        self.num_blocks = len(widths) - 1
        for b in range(1, len(widths)):
            res = 2 ** (b + 1)
            cin, cout = widths[b - 1], widths[b]
            if b == 1:
                self.add_module("layer0", FirstBlock(cout, w_dim))
            else:
                fused = res >= FUSED_SCALE_MIN_RES if fused_scale == "auto" else bool(fused_scale)
                self.add_module(f"layer{2 * b - 2}", ConvBlock(cin, cout, res, w_dim, upsample=True, fused=fused))
            self.add_module(f"layer{2 * b - 1}", ConvBlock(cout, cout, res, w_dim))
            self.add_module(f"output{b - 1}", ToRGB(cout))
        self.lod = nn.Parameter(torch.zeros(()))
        self.blocks = self.num_blocks

    def forward(self, wp: torch.Tensor) -> torch.Tensor:
        x = self.layer0(wp[:, 0])
        x = self.layer1(x, wp[:, 1])
        for b in range(2, self.blocks + 1):
            x = getattr(self, f"layer{2 * b - 2}")(x, wp[:, 2 * b - 2])
            x = getattr(self, f"layer{2 * b - 1}")(x, wp[:, 2 * b - 1])
        image = getattr(self, f"output{self.blocks - 1}")(x)
        if self.blocks < self.num_blocks:
            image = F.interpolate(image, scale_factor=2 ** (self.num_blocks - self.blocks), mode="nearest")
        return image


class StyleGANGenerator(GeneratorNet):
    """StyleGAN generator: Z (N, 512) -mapping-> W (N, 512) -truncation-> W+ (N, L, 512) -synthesis-> image.

    L = 2 log2(R) - 2 (18 at 1024 px). Noise is the stored per-layer buffer, so output is deterministic.
    Truncation defaults to psi 0.7 on the first 8 layers (the reference settings).

    Args:
        resolution: Output side, 8 ... 1024.
        w_dim: Size of Z and W.
        mapping_layers: Dense layers of the mapping network.
        fused_scale: True, False or "auto" (fused transposed conv from 128 px on).
        channel_base, max_channels: Feature-map widths as for PGGAN.
    """

    architecture = "stylegan"
    ignored_keys = ("truncation.truncation",)  # per-layer psi constants some converters also store

    def __init__(self, resolution: int = 1024, w_dim: int = 512, mapping_layers: int = 8,
                 fused_scale: bool | str = "auto", channel_base: int = 8192, max_channels: int = 512,
                 truncation_psi: float = 0.7, truncation_layers: int = 8):
        super().__init__()
        if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
            raise ValueError(f"StyleGAN resolution must be a power of two in 8..1024, got {resolution}")
        self.resolution = resolution
        self.w_dim = w_dim
        self.mapping_layers = mapping_layers
        self.fused_scale = fused_scale
        self.channel_base = channel_base
        self.max_channels = max_channels
        widths = channel_widths(resolution, channel_base, max_channels)
        num_layers = 2 * int(math.log2(resolution)) - 2
        self.latent_shapes = {"z": (w_dim,), "w": (w_dim,), "wp": (num_layers, w_dim)}
        self.default_truncation_psi = truncation_psi
        self.default_truncation_layers = truncation_layers
        self.mapping = Mapping(w_dim, w_dim, mapping_layers)
        self.truncation = Truncation(w_dim)
        self.synthesis = Synthesis(resolution, w_dim, widths, fused_scale)

    def config(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "w_dim": self.w_dim, "mapping_layers": self.mapping_layers,
                "fused_scale": self.fused_scale, "channel_base": self.channel_base,
                "max_channels": self.max_channels, "truncation_psi": self.default_truncation_psi,
                "truncation_layers": self.default_truncation_layers}

    @property
    def synthesis_space(self) -> str:
        return "wp"

    def normalize_z(self, z: torch.Tensor) -> torch.Tensor:
        return normalize_z(z)

    def map_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.mapping(z)

    def w_avg(self) -> torch.Tensor:
        return self.truncation.w_avg

    def render(self, wp: torch.Tensor) -> torch.Tensor:
        return self.synthesis(wp)

    def after_load(self) -> None:
        lod = float(self.synthesis.lod.detach().cpu())
        self.synthesis.blocks = max(1, min(self.synthesis.num_blocks,
                                               math.ceil(self.synthesis.num_blocks - lod)))
        if not bool(self.truncation.w_avg.any()):  # random weights: estimate the average W
            self.truncation.w_avg.copy_(estimate_w_avg(self))


def estimate_w_avg(net: GeneratorNet, samples: int = 4096, seed: int = 0) -> torch.Tensor:
    """Mean of the mapping network's output over seeded Gaussian Z (for checkpoints without a stored average)."""
    g = torch.Generator().manual_seed(seed)
    dim = net.latent_shapes["z"][0]
    param = next(net.parameters())
    with torch.no_grad():
        z = torch.randn(samples, dim, generator=g).to(param)
        return net.map_z(z).mean(0).float()
