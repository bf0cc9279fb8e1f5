"""Reconstruction quality: PSNR and SSIM of images in [-1, 1], batched, as an 8-bit image would score."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Rounds [-1, 1] images to the 256 levels an 8-bit image holds (what a client receives)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of the 8-bit versions of two (N, 3, H, W) batches in [-1, 1] (peak 255)."""
    mse = (quantize(images) - quantize(targets)).square().mean(dim=(1, 2, 3)) / 4  # in [0, 1] units
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


@functools.lru_cache(maxsize=4)
def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid region),
    averaged over the RGB channels, of the 8-bit versions of two (N, 3, H, W) batches in [-1, 1]."""
    a = (quantize(images) + 1) / 2
    b = (quantize(targets) + 1) / 2
    size = min(11, a.shape[-1], a.shape[-2])
    w = _window(size).to(a)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_a, mu_b = F.conv2d(a, w, groups=3), F.conv2d(b, w, groups=3)
    var_a = F.conv2d(a * a, w, groups=3) - mu_a.square()
    var_b = F.conv2d(b * b, w, groups=3) - mu_b.square()
    cov = F.conv2d(a * b, w, groups=3) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))
