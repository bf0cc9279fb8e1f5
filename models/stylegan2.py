"""StyleGAN2 (Karras et al. 2020) generator in the common PyTorch layout: a checkpoint {g_ema, g, d, args}."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import GeneratorNet, WeightsError
from .layers import fir_kernel, pixel_norm, upfirdn2d
from .stylegan import estimate_w_avg

SQRT2 = math.sqrt(2.0)


def channel_table(channel_multiplier: int = 2) -> dict[int, int]:
    """Feature maps per resolution (config-f with channel_multiplier=2)."""
    m = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * m, 128: 128 * m, 256: 64 * m, 512: 32 * m, 1024: 16 * m}


class EqualLinear(nn.Module):
    """Equalized-lr linear layer: `weight` (out, in) stored divided by lr_mul, `bias` (out).

    With activation it is the fused bias + leaky ReLU(0.2) * sqrt(2) of the reference.
    """

    def __init__(self, din: int, dout: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dout, din) / lr_mul)
        self.bias = nn.Parameter(torch.full((dout,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(din)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul, 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    """FIR filter after a transposed conv; `kernel` (4, 4) buffer, already multiplied by factor^2."""

    def __init__(self, taps: list[float], pad: tuple[int, int], factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(taps, float(factor ** 2)))
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the RGB skip path; `kernel` (4, 4) buffer."""

    def __init__(self, taps: list[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", fir_kernel(taps, float(factor ** 2)))
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv: `weight` (1, out, in, k, k), `modulation` (EqualLinear style_dim -> in, bias 1).

    Computed as modulate input -> shared-weight conv -> demodulate output, which equals the per-sample
    grouped conv of the reference but runs as one dense conv for the whole batch.
    """

    def __init__(self, cin: int, cout: int, kernel: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_taps: list[float] = (1, 3, 3, 1)):
        super().__init__()
        self.cin, self.cout, self.k = cin, cout, kernel
        self.upsample = upsample
        self.demodulate = demodulate
        self.scale = 1.0 / math.sqrt(cin * kernel * kernel)
        self.padding = kernel // 2
        self.weight = nn.Parameter(torch.randn(1, cout, cin, kernel, kernel))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1.0)
        if upsample:
            factor = 2
            p = (len(blur_taps) - factor) - (kernel - 1)
            self.blur = Blur(list(blur_taps), pad=((p + 1) // 2 + factor - 1, p // 2 + 1), factor=factor)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        s = self.modulation(style)  # (N, in)
        x = x * s.view(n, self.cin, 1, 1)
        if self.upsample:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = self.blur(x)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum over (in, k, k) of (w * s)^2, per sample and output channel
            demod = torch.rsqrt(torch.einsum("oi,ni->no", weight.pow(2).sum((2, 3)), s.pow(2)) + 1e-8)
            x = x * demod.view(n, self.cout, 1, 1)
        return x


class NoiseInjection(nn.Module):
    """Adds a noise image scaled by the learned scalar `weight` (1)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1) * 0.1)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight * noise.to(x.dtype)


class FusedLeakyReLU(nn.Module):
    """bias + leaky ReLU(0.2), times sqrt(2); `bias` (C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * SQRT2


class StyledConv(nn.Module):
    """`conv` (ModulatedConv2d) -> `noise` -> `activate`."""

    def __init__(self, cin: int, cout: int, kernel: int, style_dim: int, upsample: bool = False,
                 blur_taps: list[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, kernel, style_dim, upsample=upsample, blur_taps=blur_taps)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(cout)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    """Unmodulated-demod 1x1 conv to RGB + `bias` (1, 3, 1, 1), added to the upsampled skip image."""

    def __init__(self, cin: int, style_dim: int, upsample: bool = True, blur_taps: list[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(list(blur_taps))
        self.conv = ModulatedConv2d(cin, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))


class StyleGAN2Generator(GeneratorNet):
    """The `g_ema` generator: Z -> `style` (pixel norm + n_mlp EqualLinear) -> W -> W+ (N, L, style_dim) -> image.

    L = 2 log2(R) - 2 (18 at 1024 px). The synthesis uses the stored `noises.noise_{i}` buffers, so output is
    deterministic. Checkpoints are {"g_ema", "g", "d", "args"} (optionally "latent_avg"); only g_ema is read.
    The average W for truncation is `latent_avg` when stored, else estimated from 4096 seeded samples.

    Args:
        resolution: Output side, 8 ... 1024.
        style_dim: Size of Z and W (512).
        n_mlp: Layers of the mapping network (8).
        channel_multiplier: 2 for config-f.
        lr_mlp: Learning-rate multiplier of the mapping network (0.01).
        truncation_psi: Default psi for Z input (1.0: no truncation, like the reference's default).
    """

    architecture = "stylegan2"

    def __init__(self, resolution: int = 1024, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 lr_mlp: float = 0.01, truncation_psi: float = 1.0, blur_kernel: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        if resolution < 8 or resolution > 1024 or resolution & (resolution - 1):
            raise ValueError(f"StyleGAN2 resolution must be a power of two in 8..1024, got {resolution}")
        self.resolution = resolution
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.lr_mlp = lr_mlp
        self.blur_kernel = list(blur_kernel)
        self.log_size = int(math.log2(resolution))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        self.latent_shapes = {"z": (style_dim,), "w": (style_dim,), "wp": (self.n_latent, style_dim)}
        self.default_truncation_psi = truncation_psi
        self.default_truncation_layers = self.n_latent
        ch = channel_table(channel_multiplier)
        self.style = nn.Sequential(nn.Identity(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                                    for _ in range(n_mlp)])  # index 0 is the pixel norm
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_taps=self.blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = (i + 5) // 2
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, 2 ** res, 2 ** res))
        cin = ch[4]
        for i in range(3, self.log_size + 1):
            cout = ch[2 ** i]
            self.convs.append(StyledConv(cin, cout, 3, style_dim, upsample=True, blur_taps=self.blur_kernel))
            self.convs.append(StyledConv(cout, cout, 3, style_dim, blur_taps=self.blur_kernel))
            self.to_rgbs.append(ToRGB(cout, style_dim, blur_taps=self.blur_kernel))
            cin = cout
        self.register_buffer("latent_avg", torch.zeros(style_dim), persistent=False)

    def config(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "lr_mlp": self.lr_mlp,
                "truncation_psi": self.default_truncation_psi, "blur_kernel": tuple(self.blur_kernel)}

    @property
    def synthesis_space(self) -> str:
        return "wp"

    def map_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.style[1:](pixel_norm(z))

    def w_avg(self) -> torch.Tensor:
        return self.latent_avg

    def after_load(self) -> None:
        if not bool(self.latent_avg.any()):
            self.latent_avg.copy_(estimate_w_avg(self))

    def render(self, wp: torch.Tensor) -> torch.Tensor:
        noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        x = self.input.input.expand(wp.shape[0], -1, -1, -1)
        x = self.conv1(x, wp[:, 0], noise[0])
        skip = self.to_rgb1(x, wp[:, 1])
        i = 1
        for up, conv, n1, n2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs):
            x = up(x, wp[:, i], n1)
            x = conv(x, wp[:, i + 1], n2)
            skip = to_rgb(x, wp[:, i + 2], skip)
            i += 2
        return skip

    # --- checkpoints -------------------------------------------------------------------------------
    @classmethod
    def state_dict_of(cls, checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        if "g_ema" in checkpoint:
            return checkpoint["g_ema"]
        if any(k.startswith("style.") for k in checkpoint):
            return checkpoint  # a bare g_ema state dict
        raise WeightsError(f"not a StyleGAN2 checkpoint: expected a dict with 'g_ema' (and 'g', 'd', 'args'), "
                           f"found keys {sorted(checkpoint)[:8]}")

    def load_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        super().load_checkpoint(checkpoint)
        avg = checkpoint.get("latent_avg") if isinstance(checkpoint, Mapping) else None
        if isinstance(avg, torch.Tensor) and avg.numel() >= self.style_dim:
            # pSp/e4e-style checkpoints store the average W, sometimes repeated per layer.
            self.latent_avg.copy_(avg.reshape(-1, self.style_dim)[0].float())

    def checkpoint(self) -> dict[str, Any]:
        state = dict(self.state_dict())
        # No discriminator here (inference only); "g" mirrors g_ema so the file keeps the published container.
        return {"g_ema": state, "g": dict(state), "d": {},
                "args": {"size": self.resolution, "latent": self.style_dim, "n_mlp": self.n_mlp,
                         "channel_multiplier": self.channel_multiplier},
                "latent_avg": self.latent_avg.clone()}
