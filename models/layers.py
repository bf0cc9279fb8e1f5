"""Small functional building blocks shared by the architecture modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalises each feature vector (dim 1) to unit root-mean-square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def normalize_z(z: torch.Tensor) -> torch.Tensor:
    """Rescales each code to norm sqrt(d), as the InterFaceGAN reference does for PGGAN/StyleGAN Z input."""
    d = z.shape[1]
    return z * (d ** 0.5 / z.norm(dim=1, keepdim=True).clamp_min(1e-8))


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample (zero insertion), FIR filter, downsample; the same padding on both axes.

    Pads may be negative (cropping). Output side: (side * up + pad0 + pad1 - k + 1) // down.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x).view(1, 1, kh, kw)
    # Channels folded into the batch: one static (1, 1, kh, kw) kernel (exportable to ONNX with any C).
    hp, wp = x.shape[2], x.shape[3]
    x = F.conv2d(x.reshape(n * c, 1, hp, wp), weight, stride=down)
    return x.reshape(n, c, x.shape[2], x.shape[3])


def fir_kernel(taps: list[float] | tuple[float, ...], gain: float = 1.0) -> torch.Tensor:
    """Separable 2-D FIR kernel from 1-D taps, normalised to sum `gain`."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum() * gain


def fused_upconv_kernel(weight_hwio: torch.Tensor) -> torch.Tensor:
    """3x3 (kh, kw, in, out) kernel -> the 4x4 (in, out, 4, 4) kernel of TF progressive GAN's "fused scale"
    stride-2 transposed conv. It equals nearest 2x upsampling followed by a 3x3 conv with the spatially
    flipped kernel (the transposed-conv orientation of the stored weights)."""
    k = F.pad(weight_hwio, (0, 0, 0, 0, 1, 1, 1, 1))
    k = k[1:, 1:] + k[:-1, 1:] + k[1:, :-1] + k[:-1, :-1]
    return k.permute(2, 3, 0, 1)
