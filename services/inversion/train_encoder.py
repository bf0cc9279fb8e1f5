"""Trains the inversion encoder on the generator's own samples: python -m services.inversion.train_encoder.

Every batch is fresh: codes are drawn, images generated (rounded to 8 bits, as served images are), and the
encoder learns to predict the code (MSE in normalised code units) and, from `--image-loss-from` on, to
reproduce the image through the frozen generator (pixel MSE). Writes `<out>` (state dict, float16) and
`<out>.json` (sha256, architecture, training options, held-out PSNR) that the server checks at load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from services.common.settings import default_models_dir

from . import encoder as enc
from .quality import psnr


def encoder_space(model) -> str:
    """The space an encoder of `model` predicts: W for style-based generators, else Z."""
    return "w" if "w" in model.latent_shapes else "z"


def batch_of(model, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, images): `count` fresh samples in the encoder's space, images rounded to 8 bits."""
    net = model.net
    z = torch.randn(count, *model.latent_shapes["z"], generator=generator)
    with torch.no_grad():
        if encoder_space(model) == "w":
            code = net.map_z(net.normalize_z(z))
            images = net.render(net.synthesis_input(code, "w"))  # served W semantics: truncated here
        else:
            code = z
            images = net.render(z)
        images = ((images.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1
    return code, images


def render(model, codes: torch.Tensor) -> torch.Tensor:
    net = model.net
    x = net.synthesis_input(codes, "w") if encoder_space(model) == "w" else codes
    return net.render(x).float()


def code_statistics(model, samples: int = 4096, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    if encoder_space(model) == "z":
        dim = model.latent_shapes["z"][0]
        return torch.zeros(dim), torch.ones(dim)
    codes, _ = batch_of(model, samples, torch.Generator().manual_seed(seed))
    return codes.mean(0), codes.std(0).clamp_min(1e-3)


def evaluate(net: enc.Encoder, model, codes: torch.Tensor, images: torch.Tensor) -> dict[str, float]:
    net.eval()
    with torch.no_grad():
        guess = net(images)
        recon = render(model, guess)
        out = {"psnr": float(psnr(recon, images).mean()),
               "code_rmse": float((guess - codes).square().mean().sqrt())}
    net.train()
    return out


def train(args: argparse.Namespace) -> dict:
    from models import Registry

    torch.set_num_threads(args.threads)
    registry = Registry()
    if args.models_json:
        registry.register_json(args.models_json)
    model = registry.load(args.model, "cpu", models_dir=args.models_dir)
    torch.manual_seed(args.seed)
    space = encoder_space(model)
    code_shape = model.latent_shapes[space]
    if args.init:  # continue from a trained encoder (its architecture and statistics)
        net, previous = enc.load(args.init)
        net.train().requires_grad_(True)
        mean, std = net.code_mean.clone(), net.code_std.clone()
        history_before = [previous]
    else:
        net = enc.Encoder(model.resolution, code_shape, width=args.width, hidden=args.hidden)
        mean, std = code_statistics(model)
        net.code_mean.copy_(mean)
        net.code_std.copy_(std)
        history_before = []
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.99))
    data = torch.Generator().manual_seed(args.seed)
    held_codes, held_images = batch_of(model, args.eval_samples, torch.Generator().manual_seed(args.seed + 1_000_003))
    out = Path(args.out or Path(args.models_dir or default_models_dir()).expanduser() / enc.file_name(args.model))
    started = time.time()
    step = 0
    history = []

    def progress() -> float:
        by_steps = step / args.steps
        by_time = (time.time() - started) / (args.minutes * 60) if args.minutes > 0 else 0.0
        return max(by_steps, by_time)

    while progress() < 1.0:
        frac = progress()
        lr = args.lr * (min(1.0, (step + 1) / 100)) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        codes, images = batch_of(model, args.batch_size, data)
        pred = net.normalized(images)
        loss = F.mse_loss(pred, ((codes - mean) / std).flatten(1))
        if args.image_loss_weight > 0 and frac >= args.image_loss_from:
            recon = render(model, (pred * std + mean).view(-1, *code_shape))
            loss = loss + args.image_loss_weight * F.mse_loss(recon, images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0:
            stats = evaluate(net, model, held_codes, held_images)
            row = {"step": step, "images": step * args.batch_size, "seconds": round(time.time() - started, 1),
                   "loss": round(loss.item(), 5), **{k: round(v, 4) for k, v in stats.items()}}
            history.append(row)
            print(json.dumps(row), flush=True)
            if args.checkpoint:
                enc.save(net, out, {"model": args.model, "space": space, "partial": True, **row})
    stats = evaluate(net, model, held_codes, held_images)
    manifest = {"model": args.model, "space": space, "steps": step, "images": step * args.batch_size,
                "seconds": round(time.time() - started, 1), "held_out": {k: round(v, 4) for k, v in stats.items()},
                "options": {k: v for k, v in vars(args).items() if k not in ("out", "models_dir", "init")},
                "command": "python -m services.inversion.train_encoder " + " ".join(sys.argv[1:]),
                "continued_from": [{k: p.get(k) for k in ("sha256", "steps", "images", "seconds", "command",
                                                          "continued_from")} for p in history_before]}
    enc.save(net, out, manifest)
    print(json.dumps({"saved": str(out), **manifest["held_out"], "steps": step}), flush=True)
    return manifest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m services.inversion.train_encoder", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="dcgan-digiface-64", help="registry name of the generator")
    p.add_argument("--models-dir", default=None, help="model cache folder (default $IFGAN_MODELS_DIR or ~/.cache/...)")
    p.add_argument("--models-json", default=None, help="extra registry entries (JSON), e.g. user or random models")
    p.add_argument("--out", default=None, help="weights path (default <models-dir>/encoder-<model>.pt)")
    p.add_argument("--steps", type=int, default=6000, help="optimiser steps (the schedule ends at steps or minutes)")
    p.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget; 0 = steps only")
    p.add_argument("--batch-size", type=int, default=64, help="fresh samples per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (warm-up, then cosine)")
    p.add_argument("--image-loss-weight", type=float, default=1.0, help="weight of the pixel loss through G")
    p.add_argument("--image-loss-from", type=float, default=0.5, help="fraction of training before the pixel loss")
    p.add_argument("--init", default=None, help="continue training this encoder file (checked like at load)")
    p.add_argument("--width", type=int, default=32, help="channels of the first convolution")
    p.add_argument("--hidden", type=int, default=256, help="hidden linear width")
    p.add_argument("--eval-samples", type=int, default=256, help="held-out samples for the logged PSNR")
    p.add_argument("--log-every", type=int, default=250, help="steps between held-out evaluations")
    p.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="save the weights at every evaluation (resumable inspection of long runs)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and the initial weights")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
