"""The model registry: name -> architecture, weights and options; builds and loads GeneratorModels."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from services.common import assets

from .base import GeneratorModel, GeneratorNet, ModelSpec, WeightsError

DEFAULT_MODEL = "dcgan-digiface-64"


def architectures() -> dict[str, type[GeneratorNet]]:
    """architecture name -> network class."""
    from .dcgan import DCGANGenerator
    from .pggan import PGGANGenerator
    from .stylegan import StyleGANGenerator
    from .stylegan2 import StyleGAN2Generator
    return {c.architecture: c for c in (DCGANGenerator, PGGANGenerator, StyleGANGenerator, StyleGAN2Generator)}


BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(DEFAULT_MODEL, "dcgan", 64, "asset:dcgan-digiface-64.pt", version="1",
              description="DCGAN trained on DigiFace-1M (synthetic face renders), 64 px, z ~ N(0, I) of 100 "
                          "dimensions; weights from the gan-face-generate 1.1.1 wheel"),
)


def build_net(architecture: str, resolution: int, **options: Any) -> GeneratorNet:
    """A network of `architecture` with freshly initialised (random) weights."""
    archs = architectures()
    if architecture not in archs:
        raise ValueError(f"unknown architecture {architecture!r}; accepted: {', '.join(sorted(archs))}")
    return archs[architecture](resolution=resolution, **options)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True (argparse.Namespace allowed: rosinality checkpoints keep `args`)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(net: GeneratorNet, path: str | os.PathLike) -> Path:
    """Writes `net` in its architecture's published checkpoint layout."""
    path = Path(path)
    torch.save(net.checkpoint(), path)
    return path


def load_weights(net: GeneratorNet, weights: str, models_dir: str | None = None) -> None:
    """Fills `net` from `weights` ("asset:<file>" or a path); strict about keys."""
    path = assets.path_of(weights.split(":", 1)[1], models_dir) if weights.startswith("asset:") else Path(weights)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        checkpoint = read_checkpoint(path)
    except Exception as e:  # pickle errors of every kind: refuse the file, say why
        raise WeightsError(f"{path}: not a loadable weights_only torch checkpoint ({type(e).__name__}: {e})") from None
    try:
        net.load_checkpoint(checkpoint)
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None


class Registry:
    """Known models by name. Built-in entries plus user entries from JSON files or `--model` flags."""

    def __init__(self, specs: Iterable[ModelSpec] = BUILTIN):
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ModelSpec) -> ModelSpec:
        archs = architectures()
        if spec.architecture not in archs:
            raise ValueError(f"model {spec.name!r}: unknown architecture {spec.architecture!r}; "
                             f"accepted: {', '.join(sorted(archs))}")
        if not spec.name or any(c.isspace() for c in spec.name):
            raise ValueError(f"model name {spec.name!r} must be non-empty without spaces")
        self._specs[spec.name] = spec
        return spec

    def register_flag(self, value: str) -> ModelSpec:
        """Registers `name=architecture:path:resolution` (the `--model` flag; the path may contain ':')."""
        try:
            name, rest = value.split("=", 1)
            arch, rest = rest.split(":", 1)
            path, resolution = rest.rsplit(":", 1)
            return self.register(ModelSpec(name.strip(), arch.strip(), int(resolution), path,
                                           description=f"user-supplied {arch} weights: {path}"))
        except ValueError as e:
            raise ValueError(f"--model {value!r}: expected name=architecture:path:resolution "
                             f"(e.g. ffhq=stylegan:/models/stylegan_ffhq.pth:1024): {e}") from None

    def register_json(self, path: str | os.PathLike) -> list[ModelSpec]:
        """Registers the entries of a models.json: [{"name", "architecture", "weights", "resolution",
        optional "version", "description", "options"}]. Relative weight paths are relative to the file."""
        base = Path(path).parent
        entries = json.loads(Path(path).read_text())
        if isinstance(entries, dict):
            entries = entries.get("models", [])
        out = []
        for e in entries:
            weights = str(e["weights"])
            if not weights.startswith(("asset:", "random:")) and not os.path.isabs(weights):
                weights = str(base / weights)
            out.append(self.register(ModelSpec(
                name=e["name"], architecture=e["architecture"], resolution=int(e["resolution"]), weights=weights,
                version=str(e.get("version", "1")), description=e.get("description", ""),
                options=tuple(sorted((e.get("options") or {}).items())))))
        return out

    def get(self, name: str) -> ModelSpec:
        if name not in self._specs:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(self._specs))}")
        return self._specs[name]

    def names(self) -> list[str]:
        return list(self._specs)

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def load(self, name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", *,
             dtype: torch.dtype = torch.float32, models_dir: str | None = None) -> GeneratorModel:
        spec = self.get(name)
        if spec.weights.startswith("random:"):  # random weights, reproducible from the seed
            torch.manual_seed(int(spec.weights.split(":", 1)[1] or 0))
        net = build_net(spec.architecture, spec.resolution, **spec.kwargs)
        if not spec.weights.startswith("random:"):
            load_weights(net, spec.weights, models_dir)
        net.after_load()
        return GeneratorModel(spec, net, device, dtype)


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", *,
               dtype: torch.dtype = torch.float32, registry: Registry | None = None,
               models_dir: str | None = None) -> GeneratorModel:
    """Loads a registry model, e.g. `load_model("dcgan-digiface-64", "cpu")`, ready to sample and synthesize."""
    return (registry or Registry()).load(name, device, dtype=dtype, models_dir=models_dir)
