"""Pivotal tuning (Roich et al. 2021): tune a copy of the generator so that the pivot codes render the photo.

The pivot codes stay fixed while the weights move, so the layers that are not tuned run once: the tuned
tail starts from their cached output (for a DCGAN, `tune_from` picks the first tuned block of `main`). A
locality term keeps the tuned tail close to the original one on a few fixed random codes (their frozen
prefix and their original images are computed once too), so edits away from the pivot keep working.
Faces of one photo are tuned together, into one variant.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .quality import psnr
from .refine import clipped_residual, pyramid_features

#: What ended a tuning run.
STOP_TARGET, STOP_BUDGET, STOP_DEADLINE, STOP_CANCELLED = "target_psnr", "max_steps", "deadline", "cancelled"


@dataclasses.dataclass
class TuningOptions:
    """Pivotal tuning settings.

    Attributes:
        steps: Adam steps at most.
        lr: Peak learning rate (cosine decay over `steps`).
        target_psnr: Stop once every face's reconstruction reaches this PSNR (dB).
        tune_from: DCGAN only: index in `main` of the first tuned layer (0 tunes all; 6 tunes the 16 px block
            on: the best identity per CPU-second measured, see bench/photos.py's trade-off table).
        feature_weight: Weight of the image-gradient feature loss next to the pixel MSE.
        locality_weight: Weight of the locality term (MSE to the original generator on random codes).
        locality_codes: Random codes of the locality term.
        locality_every: The locality term is added every this many steps (it costs as much as the faces'
            own forward and backward pass; every 4th step keeps most of its effect at a quarter of the cost).
        seed: Seed of the locality codes (a variant is reproducible from its settings).
    """

    steps: int = 150
    lr: float = 4e-3
    target_psnr: float = 40.0
    tune_from: int = 6
    feature_weight: float = 1.0
    locality_weight: float = 1.0
    locality_codes: int = 4
    locality_every: int = 4
    seed: int = 0

    def key(self) -> str:
        """The settings that change the tuned weights, as a stable string (part of a variant's hash)."""
        return (f"steps={self.steps};lr={self.lr:g};target={self.target_psnr:g};from={self.tune_from};"
                f"feat={self.feature_weight:g};loc={self.locality_weight:g}x{self.locality_codes}/"
                f"{self.locality_every};seed={self.seed}")


@dataclasses.dataclass
class Tuned:
    """The outcome of one tuning run.

    Attributes:
        delta: Tuned minus original value of every tuned tensor, by state-dict key (float32).
        images: (N, 3, R, R) reconstructions of the pivots by the tuned generator, in [-1, 1].
        psnr: Per-face PSNR of those reconstructions (dB).
        first_psnr: Per-face PSNR before tuning.
        steps: Adam steps run.
        stopped: Why tuning ended (one of the STOP_* values).
        cpu_seconds: Process CPU time the run took.
    """

    delta: dict[str, torch.Tensor]
    images: torch.Tensor
    psnr: list[float]
    first_psnr: list[float]
    steps: int
    stopped: str
    cpu_seconds: float


class _Split:
    """The frozen prefix and the tuned tail of a network, and the tail's state-dict key prefix."""

    def __init__(self, net: nn.Module, tune_from: int):
        main = getattr(net, "main", None)
        if isinstance(main, nn.Sequential) and getattr(net, "architecture", "") == "dcgan":
            k = max(0, min(int(tune_from), len(main) - 1))
            self.prefix = lambda codes: main[:k](codes.reshape(codes.shape[0], -1, 1, 1))
            self.tail = copy.deepcopy(main[k:])
            # A slice of a Sequential keeps the original module names, so "6.weight" is main.6.weight.
            self.keys = {f"main.{name}": name for name, _ in self.tail.named_parameters()}
        else:  # other architectures: everything after the code -> synthesis-input mapping is tuned
            self.prefix = lambda codes: net.synthesis_input(codes, net.synthesis_space)
            self.tail = _Render(copy.deepcopy(net))
            self.keys = {name.split(".", 1)[1]: name for name, _ in self.tail.named_parameters()}
        self.tail.eval()  # BatchNorm keeps the running statistics of the original


class _Render(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.render(x)


def tune(net: nn.Module, pivots: torch.Tensor, targets: torch.Tensor, options: TuningOptions,
         deadline: float | None = None, cancelled: Callable[[], bool] = lambda: False,
         on_progress: Callable[[int, list[float]], None] | None = None) -> Tuned:
    """Tunes a copy of `net` so that `pivots` render `targets`; `net` itself is left untouched.

    Args:
        net: The generator network (a GeneratorNet), float32.
        pivots: (N, d) codes of the network's synthesis space (Z for a DCGAN), the faces of one photo.
        targets: (N, 3, R, R) aligned face crops in [-1, 1].
        options: The settings.
        deadline: time.monotonic() value at which tuning stops with what it has.
        cancelled: Polled every step; True stops tuning.
        on_progress: Called every 10 steps with (step, per-face PSNR).

    Returns:
        The tuned tensors (as deltas), reconstructions and the numbers of the run.
    """
    started = time.process_time()
    split = _Split(net, options.tune_from)
    tail = split.tail
    params = list(tail.parameters())
    originals = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        start = split.prefix(pivots.float())
        features = pyramid_features(targets) if options.feature_weight > 0 else []
        if options.locality_codes and options.locality_weight > 0:
            gen = torch.Generator().manual_seed(options.seed)
            shape = (options.locality_codes, *pivots.shape[1:])
            local_in = split.prefix(torch.randn(shape, generator=gen))
            local_out = tail(local_in)
        else:
            local_in = local_out = None
        first = psnr(tail(start), targets).tolist()
    best_psnr, best_state, best_images = [-math.inf], None, None
    optimizer = torch.optim.Adam(params, lr=options.lr)
    stopped, step = STOP_BUDGET, 0
    for step in range(options.steps + 1):
        images = tail(start)
        with torch.no_grad():
            scores = psnr(images, targets).tolist()
            if min(scores) > min(best_psnr):  # the worst face decides: one variant serves all faces of a photo
                best_psnr, best_images = scores, images.detach().clone()
                best_state = [p.detach().clone() for p in params]
        if on_progress is not None and step % 10 == 0:
            on_progress(step, scores)
        if min(scores) >= options.target_psnr:
            stopped = STOP_TARGET
            break
        if step == options.steps:
            break
        if cancelled():
            stopped = STOP_CANCELLED
            break
        if deadline is not None and time.monotonic() >= deadline:
            stopped = STOP_DEADLINE
            break
        loss = clipped_residual(images, targets).square().mean(dim=(1, 2, 3)).sum()
        for have, want in zip(pyramid_features(images) if features else [], features):
            loss = loss + options.feature_weight * (have - want).square().mean(dim=tuple(range(1, have.dim()))).sum()
        if local_in is not None and step % max(1, options.locality_every) == 0:
            loss = loss + options.locality_weight * (tail(local_in) - local_out).square().mean()
        for group in optimizer.param_groups:
            group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, options.steps)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    names = dict(tail.named_parameters())
    inverse = {v: k for k, v in split.keys.items()}
    delta = {inverse[name]: (best - orig).float()
             for (name, _), best, orig in zip(names.items(), best_state, originals)}
    return Tuned(delta, best_images, [float(s) for s in best_psnr], first, step, stopped,
                 time.process_time() - started)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, R, R) in [-1, 1] -> (N, R, R, 3) uint8."""
    return ((images.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
