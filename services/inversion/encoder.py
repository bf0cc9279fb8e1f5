"""The inversion encoder: a small CNN from a generator's image to its code, stored with a sha256 manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from services.common.assets import models_dir as resolve_models_dir, sha256_of

#: Encoders shipped with the repository (trained by `python -m services.inversion.train_encoder`).
SHIPPED_DIR = Path(__file__).parent / "weights"
#: sha256 of each shipped encoder's weights; a shipped file with another hash is refused.
SHIPPED_SHA256: dict[str, str] = {
    "dcgan-digiface-64": "66794e0d8ada2ce8bff1c487ab2fe4d102639a5cc6841677868914af42c91c70"}


class EncoderError(RuntimeError):
    """An encoder file that is missing, altered or does not match its manifest."""


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.norm1(self.conv1(x)), 0.2)
        return F.leaky_relu(x + self.norm2(self.conv2(h)), 0.2)


class Encoder(nn.Module):
    """Image (N, 3, R, R) in [-1, 1] -> code (N, *code_shape), mirroring a DCGAN discriminator.

    Stride-2 convolutions halve the image down to 4 px (a residual block at each scale from R/4 on), then
    two linear layers give the code normalised by the training statistics (`code_mean`, `code_std`), so
    one architecture serves Z (mean 0, std 1) and W codes (mapping-network statistics).

    Args:
        resolution: Input side, a power of two >= 16.
        code_shape: Shape of one code, e.g. (100,) or (512,) (W+ codes are predicted as W and broadcast).
        width: Channels of the first convolution; they double at each halving, capped at 16 x width.
        hidden: Width of the hidden linear layer.
    """

    def __init__(self, resolution: int = 64, code_shape: tuple[int, ...] = (100,), width: int = 32,
                 hidden: int = 256):
        super().__init__()
        if resolution < 16 or resolution & (resolution - 1):
            raise ValueError(f"encoder resolution must be a power of two >= 16, got {resolution}")
        self.resolution, self.code_shape, self.width, self.hidden = resolution, tuple(code_shape), width, hidden
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        side, ch = resolution // 2, width
        while side > 4:
            out = min(ch * 2, width * 16)
            layers += [nn.Conv2d(ch, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True),
                       _Residual(out)]
            side, ch = side // 2, out
        self.body = nn.Sequential(*layers)
        dim = 1
        for s in self.code_shape:
            dim *= s
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * 16, hidden), nn.LeakyReLU(0.2, True),
                                  nn.Linear(hidden, dim))
        self.register_buffer("code_mean", torch.zeros(dim))
        self.register_buffer("code_std", torch.ones(dim))

    def config(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "code_shape": list(self.code_shape), "width": self.width,
                "hidden": self.hidden}

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """The raw head output: the code in units of the training statistics."""
        return self.head(self.body(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        code = self.normalized(images) * self.code_std + self.code_mean
        return code.view(images.shape[0], *self.code_shape)

    def features(self, images: torch.Tensor, depth: int = 3) -> list[torch.Tensor]:
        """Activations after the stem and after each residual stage, the first `depth` of them (feature loss)."""
        out, h = [], images
        for i, layer in enumerate(self.body):
            h = layer(h)
            if i == 1 or isinstance(layer, _Residual):
                out.append(h)
                if len(out) >= depth:
                    break
        return out


def file_name(model: str) -> str:
    return f"encoder-{model}.pt"


def save(net: Encoder, path: str | os.PathLike, manifest: dict[str, Any], half: bool = True) -> Path:
    """Writes the state dict (float16 to keep the file small) and `<path>.json` with its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() and not k.startswith("code_") else v)
             for k, v in net.state_dict().items()}
    partial = path.with_name(f".{path.name}.partial")
    torch.save(state, partial)
    os.replace(partial, path)
    manifest = {**manifest, "file": path.name, "sha256": sha256_of(path), "config": net.config()}
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def load(path: str | os.PathLike, expected_sha256: str | None = None) -> tuple[Encoder, dict[str, Any]]:
    """Loads an encoder after checking its sha256 against its manifest (and `expected_sha256` if given)."""
    path = Path(path)
    side = path.with_suffix(path.suffix + ".json")
    if not path.exists():
        raise EncoderError(f"encoder weights {path} are missing; train them: "
                           f"python -m services.inversion.train_encoder")
    if not side.exists():
        raise EncoderError(f"{side} (the encoder's manifest with its sha256) is missing; the encoder is refused")
    try:
        manifest = json.loads(side.read_text())
    except ValueError as e:
        raise EncoderError(f"{side}: not valid JSON ({e})") from None
    actual = sha256_of(path)
    for want, source in ((manifest.get("sha256"), side.name), (expected_sha256, "the pinned checksum")):
        if want is not None and actual != want:
            raise EncoderError(f"{path}: sha256 is {actual}, {source} says {want}; the file is refused "
                               f"(retrain it with python -m services.inversion.train_encoder)")
    try:
        net = Encoder(**manifest["config"])
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise EncoderError(f"{path}: does not match its manifest's architecture ({type(e).__name__}: {e})") from None
    return net.eval().requires_grad_(False), manifest


def find(model: str, models_dir: str | os.PathLike | None = None) -> Path | None:
    """The encoder of `model`: a trained one in the models folder first, else the shipped one, else None."""
    for folder in (resolve_models_dir(models_dir), SHIPPED_DIR):
        path = folder / file_name(model)
        if path.exists():
            return path
    return None


def load_for(model: str, models_dir: str | os.PathLike | None = None) -> tuple[Encoder, dict[str, Any]] | None:
    """Loads the encoder `find` picks (shipped files are also checked against SHIPPED_SHA256)."""
    path = find(model, models_dir)
    if path is None:
        return None
    pinned = SHIPPED_SHA256.get(model) if path.parent == SHIPPED_DIR else None
    return load(path, pinned)
