"""Inversion engine: the encoder's first guess, then batched Adam on the code with per-image early stop.

The optimiser state is kept per row (per image), so images can join and leave a running batch at any
step: the server feeds concurrent requests into one batch (continuous batching), the benchmark and the
tests run a fixed batch through `Inverter.invert`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .encoder import Encoder
from .quality import psnr, quantize, ssim

#: What ended a row's refinement.
STOP_TARGET, STOP_BUDGET, STOP_DEADLINE, STOP_CANCELLED, STOP_ENCODER = (
    "target_psnr", "max_steps", "deadline", "cancelled", "encoder_only")


@dataclasses.dataclass
class Options:
    """Refinement settings of one image.

    Attributes:
        max_steps: Adam steps at most.
        target_psnr: Stop once the reconstruction reaches this PSNR (dB).
        lr: Peak learning rate in units of the space's per-dimension spread (cosine decay over max_steps).
        progress_every: Report progress every this many steps (0: never).
    """

    max_steps: int = 80
    target_psnr: float = 38.0
    lr: float = 0.15
    progress_every: int = 0


@dataclasses.dataclass
class Result:
    """The best code found for one image."""

    code: np.ndarray  # one code, shape of the space
    reconstruction: np.ndarray  # (R, R, 3) uint8
    psnr: float
    ssim: float
    steps: int
    first_psnr: float  # of the first guess
    stopped: str


class _Row:
    """One image being refined: its target, code, Adam moments and best result so far."""

    def __init__(self, target: torch.Tensor, code: torch.Tensor, options: Options,
                 on_progress: Callable[["_Row"], None] | None, features: list[torch.Tensor] | None):
        self.target = target
        self.code = code.clone()
        self.m = torch.zeros_like(code)
        self.v = torch.zeros_like(code)
        self.options = options
        self.on_progress = on_progress
        self.features = features
        self.step = 0
        self.best_code = code.clone()
        self.best_image: torch.Tensor | None = None
        self.best_psnr = -math.inf
        self.first_psnr = math.nan
        self.stopped: str | None = None
        self.cancelled = False
        self.deadline: float | None = None  # time.monotonic() value


def clipped_residual(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """images - targets, except where a target pixel sits at the clip limit and the image goes past it.

    Served images are clipped to [-1, 1]: a target pixel at +1 only says "at least 1", so an output
    beyond it is no error (style-based generators often overshoot; DCGAN's tanh never reaches the limit).
    """
    diff = images - targets
    limit = 1 - 1 / 255
    over = ((targets >= limit) & (images > targets)) | ((targets <= -limit) & (images < targets))
    return torch.where(over, torch.zeros_like(diff), diff)


def pyramid_features(images: torch.Tensor) -> list[torch.Tensor]:
    """A small fixed conv net (no weights to learn or download): image gradients at three scales."""
    out = []
    x = images
    for _ in range(3):
        out.append(x[..., :, 1:] - x[..., :, :-1])
        out.append(x[..., 1:, :] - x[..., :-1, :])
        x = F.avg_pool2d(x, 2)
    return out


def invertible_spaces(style_based: bool) -> tuple[str, ...]:
    """The spaces images are inverted into, the default (the most faithful) last."""
    return ("w", "wp") if style_based else ("z",)


class Inverter:
    """Inverts images of one generator model into one of its latent spaces.

    Args:
        model: A loaded `GeneratorModel` (models).
        encoder: The model's trained encoder, or None (then the first guess is the space's mean).
        feature_weight: Weight of the feature loss (encoder features, else `pyramid_features`) relative to
            the pixel MSE.
        encoder_iterations: Fixed-point corrections of the encoder's guess (see `_encode`).
        encoder_step: Step size of those corrections.
    """

    def __init__(self, model, encoder: Encoder | None = None, feature_weight: float = 1.0,
                 encoder_iterations: int = 3, encoder_step: float = 0.5):
        self.model = model
        self.encoder_iterations = encoder_iterations
        self.encoder_step = encoder_step
        self.net = model.net
        self.encoder = encoder
        self.feature_weight = feature_weight
        self.resolution = model.resolution
        self.style_based = "w" in model.latent_shapes
        self.spaces = invertible_spaces(self.style_based)
        self.encoder_space = "w" if self.style_based else "z"
        if encoder is not None and tuple(encoder.code_shape) != tuple(model.latent_shapes[self.encoder_space]):
            raise ValueError(f"encoder predicts codes of shape {list(encoder.code_shape)}; {model.name} "
                             f"{self.encoder_space.upper()} codes have shape "
                             f"{list(model.latent_shapes[self.encoder_space])}")
        self.mean, self.scale = self._statistics()

    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and per-dimension spread of the encoder space (the start without an encoder; lr units)."""
        shape = self.model.latent_shapes[self.encoder_space]
        if not self.style_based:
            return torch.zeros(shape), torch.ones(shape)
        if self.encoder is not None:
            return self.encoder.code_mean.view(shape).clone(), self.encoder.code_std.view(shape).clone()
        gen = torch.Generator().manual_seed(11)
        with torch.no_grad():
            z = torch.randn(1024, *self.model.latent_shapes["z"], generator=gen)
            w = self.net.map_z(self.net.normalize_z(z)).float()
        return self.net.w_avg().float().view(shape).clone(), w.std(0).clamp_min(1e-3)

    # --- pieces ------------------------------------------------------------------------------------
    def targets(self, images: np.ndarray) -> torch.Tensor:
        """(N, R, R, 3) uint8 -> (N, 3, R, R) float in [-1, 1]."""
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def render(self, codes: torch.Tensor, space: str) -> torch.Tensor:
        return self.net.render(self.net.synthesis_input(codes, space)).float()

    def first_guess(self, targets: torch.Tensor, space: str, candidates: int = 16) -> torch.Tensor:
        """Codes of `space` for (N, 3, R, R) targets: the encoder's prediction, else the best of a few
        seeded prior samples (the space's mean is no start in Z: at z = 0 a DCGAN's ReLUs are all off and
        the gradient vanishes)."""
        with torch.no_grad():
            if self.encoder is not None:
                guess = self._encode(targets)
            else:
                pool = self._prior_pool(candidates)
                images = self.render(pool, self.encoder_space)
                err = torch.cdist(targets.flatten(1), images.flatten(1))  # (N, K)
                guess = pool[err.argmin(1)].clone()
        if space == "wp":  # the W+ code rendering what the W guess renders (its truncation made explicit)
            guess = self.net.synthesis_input(guess, "w").float()
        return guess

    def _encode(self, targets: torch.Tensor) -> torch.Tensor:
        """The encoder's guess, corrected by fixed-point iterations code += a (E(x) - E(G(code))).

        An encoder's error is largely systematic: where E(G(code)) differs from E(x), moving the code by
        that difference cancels much of it (a Newton-like step with the encoder as approximate inverse;
        ReStyle's idea without a second network). Each iteration costs one generator and one encoder pass
        (about 5 Adam steps); the best iterate per image (by PSNR) is kept, so it never makes a guess worse.
        """
        wanted = self.encoder(targets)
        guess, best = wanted.clone(), wanted.clone()
        best_score = torch.full((targets.shape[0],), -math.inf)
        for i in range(self.encoder_iterations + 1):
            images = quantize(self.render(guess, self.encoder_space))
            score = psnr(images, targets)
            better = score > best_score
            best[better], best_score = guess[better], torch.where(better, score, best_score)
            if i < self.encoder_iterations:
                guess = guess + self.encoder_step * (wanted - self.encoder(images))
        return best

    def _prior_pool(self, count: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(12345)
        z = torch.randn(count, *self.model.latent_shapes["z"], generator=gen)
        if not self.style_based:
            return z
        w = self.net.map_z(self.net.normalize_z(z)).float()
        return torch.cat([self.mean.unsqueeze(0), w[:-1]])

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.feature_weight <= 0:
            return []
        if self.encoder is not None:
            return self.encoder.features(images)
        return pyramid_features(images)

    def _scale_for(self, space: str) -> torch.Tensor:
        return self.scale.unsqueeze(0) if space == "wp" else self.scale

    # --- the batched step --------------------------------------------------------------------------
    def new_row(self, target: torch.Tensor, code: torch.Tensor, options: Options,
                on_progress: Callable[[_Row], None] | None = None) -> _Row:
        with torch.no_grad():
            feats = [f[0] for f in self._features(target.unsqueeze(0))] if self.feature_weight > 0 else None
        return _Row(target, code, options, on_progress, feats)

    def step(self, rows: list[_Row], space: str) -> None:
        """One Adam step for every row (same space); updates bests and stop reasons in place."""
        codes = torch.stack([r.code for r in rows]).requires_grad_(True)
        targets = torch.stack([r.target for r in rows])
        images = self.render(codes, space)
        loss = clipped_residual(images, targets).square().mean(dim=(1, 2, 3)).sum()
        if self.feature_weight > 0 and rows[0].features is not None:
            for k, feat in enumerate(self._features(images)):
                want = torch.stack([r.features[k] for r in rows])
                loss = loss + self.feature_weight * (feat - want).square().mean(dim=tuple(range(1, feat.dim()))).sum()
        grad, = torch.autograd.grad(loss, codes)
        with torch.no_grad():
            scores = psnr(images, targets).tolist()
            scale = self._scale_for(space)
            b1, b2, eps = 0.9, 0.999, 1e-8
            for i, row in enumerate(rows):
                score = scores[i]
                if row.step == 0:
                    row.first_psnr = score
                if score > row.best_psnr:
                    row.best_psnr = score
                    row.best_code = row.code.clone()
                    row.best_image = images[i].detach().clone()
                opts = row.options
                if score >= opts.target_psnr:
                    row.stopped = STOP_TARGET
                    continue
                if row.step >= opts.max_steps:
                    row.stopped = STOP_BUDGET
                    continue
                g = grad[i]
                row.step += 1
                t = row.step
                row.m.mul_(b1).add_(g, alpha=1 - b1)
                row.v.mul_(b2).addcmul_(g, g, value=1 - b2)
                lr = opts.lr * 0.5 * (1 + math.cos(math.pi * (t - 1) / max(1, opts.max_steps)))
                denom = (row.v / (1 - b2 ** t)).sqrt_().add_(eps)
                row.code.addcdiv_(row.m * scale, denom, value=-lr / (1 - b1 ** t))
                if row.on_progress is not None and opts.progress_every and t % opts.progress_every == 0:
                    row.on_progress(row)

    def result(self, row: _Row, space: str) -> Result:
        """The best code of a finished row, with its reconstruction and SSIM."""
        if row.best_image is None:  # never stepped (encoder only): render the code once
            with torch.no_grad():
                row.best_image = self.render(row.best_code.unsqueeze(0), space)[0]
                row.best_psnr = row.first_psnr = float(psnr(row.best_image[None], row.target[None])[0])
        image = row.best_image.unsqueeze(0)
        score = float(ssim(image, row.target.unsqueeze(0))[0])
        pixels = ((quantize(image)[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        return Result(row.best_code.numpy().copy(), pixels, float(row.best_psnr), score, row.step,
                      float(row.first_psnr), row.stopped or STOP_BUDGET)

    # --- a fixed batch (benchmark, tests) ----------------------------------------------------------
    def invert(self, images: np.ndarray, space: str | None = None, options: Options | None = None,
               refine: bool = True) -> list[Result]:
        """Inverts (N, R, R, 3) uint8 images in one batch; rows leave the batch as they finish."""
        space = space or self.spaces[-1]
        options = options or Options()
        targets = self.targets(images)
        guesses = self.first_guess(targets, space)
        rows = [self.new_row(t, c, options) for t, c in zip(targets, guesses)]
        if not refine:
            for r in rows:
                r.stopped = STOP_ENCODER
            return [self.result(r, space) for r in rows]
        active = list(rows)
        while active:
            self.step(active, space)
            active = [r for r in active if r.stopped is None]
        return [self.result(r, space) for r in rows]
