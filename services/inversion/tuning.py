"""Pivotal tuning (Roich et al. 2021): tune a copy of the generator so that the pivot codes render the photo.

The pivot codes stay fixed while the weights move, so the layers that are not tuned run once: the tuned
tail starts from their cached output (for a DCGAN, `tune_from` picks the first tuned block of `main`).

An edit is pasted into the photo as its change, G(pivot + d n) - G(pivot). Tuning only to reconstruct
the pivot damps that change (the tail learns to map the pivot's features to the photo and little else),
so the locality term keeps the tuned generator's change equal to the original's: for codes the edit
distance away from each pivot along random directions, (G'(p + r u) - G'(p)) is pulled to
(G(p + r u) - G(p)). The original generator keeps its meaning around the pivot while the tuned one renders
the person. Faces of one photo are tuned together, into one variant.
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
        tune_from: DCGAN only: index in `main` of the first tuned layer (0 tunes all; 9 tunes the 32 px block
            and the output layer: at the same CPU-seconds as 150 steps from the 16 px block, 250 steps from
            it reach about the same PSNR, a closer identity and keep more of an edit's change; see
            bench/photos.py's trade-off table).
        feature_weight: Weight of the image-gradient feature loss next to the pixel MSE.
        locality_weight: Weight of the locality term (MSE between the tuned and the original generator's
            change from the pivot).
        locality_codes: Random directions per face each time the term is added (fresh ones every time).
        locality_radius: How far from the pivot the locality codes lie (the edit distances served).
        locality_every: The locality term is added every this many steps (its codes join the faces' batch;
            2 codes per face every 4th step add about a quarter to the cost of tuning one face).
        seed: Seed of the locality directions (a variant is reproducible from its settings).
    """

    steps: int = 250
    lr: float = 4e-3
    target_psnr: float = 40.0
    tune_from: int = 9
    feature_weight: float = 1.0
    locality_weight: float = 3.0
    locality_codes: int = 2
    locality_radius: float = 3.0
    locality_every: int = 4
    seed: int = 0

    def key(self) -> str:
        """The settings that change the tuned weights, as a stable string (part of a variant's hash)."""
        return (f"steps={self.steps};lr={self.lr:g};target={self.target_psnr:g};from={self.tune_from};"
                f"feat={self.feature_weight:g};loc={self.locality_weight:g}x{self.locality_codes}"
                f"@{self.locality_radius:g}/{self.locality_every};seed={self.seed}")


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
    """The frozen prefix, the original and the tuned (copied) tail of a network, and the tail's state-dict keys.

    Only tail parameters that the rendering reaches are tuned: a style-based model's mapping network
    takes no part in rendering a W+ pivot, and a delta of zeros for it would only fill the variant store.
    """

    def __init__(self, net: nn.Module, tune_from: int, probe: torch.Tensor):
        main = getattr(net, "main", None)
        if isinstance(main, nn.Sequential) and getattr(net, "architecture", "") == "dcgan":
            k = max(0, min(int(tune_from), len(main) - 1))
            self.prefix = lambda codes: main[:k](codes.reshape(codes.shape[0], -1, 1, 1))
            self.original = main[k:]
            self.tail = copy.deepcopy(main[k:])
            # A slice of a Sequential keeps the original module names, so "6.weight" is main.6.weight.
            keys = {f"main.{name}": name for name, _ in self.tail.named_parameters()}
        else:  # other architectures: everything after the code -> synthesis-input mapping is tuned
            self.prefix = lambda codes: net.synthesis_input(codes, net.synthesis_space)
            self.original = net.render
            self.tail = _Render(copy.deepcopy(net))
            keys = {name.split(".", 1)[1]: name for name, _ in self.tail.named_parameters()}
        self.tail.eval()  # BatchNorm keeps the running statistics of the original
        named = dict(self.tail.named_parameters())
        for p in named.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            self.tail(self.prefix(probe[:1])).sum().backward()
        self.params = {name: p for name, p in named.items() if p.grad is not None}
        for name, p in named.items():
            p.grad = None
            p.requires_grad_(name in self.params)
        self.keys = {key: name for key, name in keys.items() if name in self.params}


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
    pivots = pivots.float()
    split = _Split(net, options.tune_from, pivots)
    tail = split.tail
    params = list(split.params.values())
    originals = [p.detach().clone() for p in params]
    local = options.locality_codes > 0 and options.locality_weight > 0 and options.locality_radius > 0
    gen = torch.Generator().manual_seed(options.seed)
    with torch.no_grad():
        start = split.prefix(pivots)
        features = pyramid_features(targets) if options.feature_weight > 0 else []
        first_images = split.original(start)
        first = psnr(first_images, targets).tolist()
    best_psnr, best_state, best_images = [-math.inf], None, None
    optimizer = _adam(params, options.lr)
    stopped, step, n = STOP_BUDGET, 0, len(pivots)
    for step in range(options.steps + 1):
        near = local and step < options.steps and step % max(1, options.locality_every) == 0
        if near:  # the locality codes ride in the faces' batch: one pass of N + K codes costs less than two
            codes, owner = _near(pivots, options.locality_codes, options.locality_radius, gen)
            with torch.no_grad():
                near_in = split.prefix(codes)
                wanted = split.original(near_in) - first_images[owner]
            both = tail(torch.cat([start, near_in]))
            images, near_out = both[:n], both[n:]
        else:
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
        if near:
            change = near_out - images[owner]
            loss = loss + options.locality_weight * (change - wanted).square().mean()
        for group in optimizer.param_groups:
            group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, options.steps)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    inverse = {v: k for k, v in split.keys.items()}
    delta = {inverse[name]: (best - orig).float()
             for name, best, orig in zip(split.params, best_state, originals)}
    return Tuned(delta, best_images, [float(s) for s in best_psnr], first, step, stopped,
                 time.process_time() - started)


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch build has it on CPU (about 8% of a DCGAN tuning step saved)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def _near(pivots: torch.Tensor, per_face: int, radius: float, gen: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes `radius` away from each pivot along `per_face` random directions, and the pivot index of each.

    A direction is a unit vector of the code's last axis, the same on every layer of a W+ code: an edit
    along a W boundary moves every layer alike.
    """
    owner = torch.arange(len(pivots)).repeat_interleave(per_face)
    u = torch.randn((len(owner), pivots.shape[-1]), generator=gen)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u = u.view(len(owner), *([1] * (pivots.dim() - 2)), -1).expand(len(owner), *pivots.shape[1:])
    return pivots[owner] + radius * u, owner


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, R, R) in [-1, 1] -> (N, R, R, 3) uint8."""
    return ((images.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
