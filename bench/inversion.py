"""Inversion benchmark: encoder alone vs encoder + refinement on held-out generated images, and real photos.

python bench/inversion.py [--quick]

Held-out images are generated from numpy PCG64 seeds the encoder never saw (its training draws torch
samples). Refinement runs with the server's default settings, batched (rows leave the batch as they reach the
target PSNR), in `--processes` worker processes of `--threads` torch threads each (default 2 x 1: one per core;
on a shared CPU two single-thread processes lose far less to OpenMP spin-waits than one two-thread process).
Time per image is wall-clock for the whole pipeline (encoder + refinement) over all images divided by their
number; the process CPU seconds are reported beside it, since the machine is shared. Real photos are aligned with the
server's code path (face detection, 5 landmarks, similarity to the generator's framing) and inverted the
same way; their PSNR is against the aligned crop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common import assets  # noqa: E402
from services.inversion.faces import FaceFinder, similarity_transform, warp_crop  # noqa: E402
from services.inversion import encoder as enc  # noqa: E402
from services.inversion.framing import template_for  # noqa: E402
from services.inversion.refine import Inverter, Options  # noqa: E402
from services.inversion.server import Settings  # noqa: E402

PHOTOS = ("astronaut.png", "grace_hopper.jpg")


_WORKER: dict = {}


def _init_worker(model_name: str, models_dir: str | None, threads: int) -> None:
    """Builds this process's inverter with the server's default settings (once per worker process)."""
    from models import load_model

    torch.set_num_threads(threads)
    defaults = Settings.load([])
    model = load_model(model_name, "cpu", models_dir=models_dir)
    found = enc.load_for(model_name, models_dir)
    if found is None:
        raise SystemExit(f"no encoder for {model_name}; train one: python -m services.inversion.train_encoder")
    encoder, manifest = found
    _WORKER.update(model=model, manifest=manifest, defaults=defaults, inverter=Inverter(
        model, encoder, feature_weight=defaults.feature_weight, encoder_iterations=defaults.encoder_iterations))
    _WORKER["inverter"].invert(model.synthesize(model.sample(2, seed=1), "z", output="uint8").numpy(), "z",
                               Options(max_steps=2))  # warm-up (allocator, kernels)


def _work(images: np.ndarray, batch: int, iterations: int, refine: bool, options: Options) -> tuple[list, float]:
    """Inverts `images` in batches; returns [(psnr, ssim, steps)] and the process CPU seconds used."""
    inverter = _WORKER["inverter"]
    inverter.encoder_iterations = iterations
    cpu = time.process_time()
    out = [(r.psnr, r.ssim, r.steps) for s in range(0, len(images), batch)
           for r in inverter.invert(images[s:s + batch], "z", options, refine=refine)]
    return out, time.process_time() - cpu


def _pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def run(args: argparse.Namespace) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    torch.set_num_threads(args.threads)
    _init_worker(args.model, args.models_dir, args.threads)
    model, manifest, defaults, inverter = (_WORKER[k] for k in ("model", "manifest", "defaults", "inverter"))
    options = Options(max_steps=args.steps or defaults.default_steps,
                      target_psnr=args.target_psnr or defaults.default_target_psnr, lr=defaults.learning_rate)
    codes = model.sample(args.count, seed=args.seed)
    images = model.synthesize(codes, "z", output="uint8").numpy()
    chunks = np.array_split(images, args.processes)
    iterations = defaults.encoder_iterations
    context = multiprocessing.get_context("spawn")  # no fork after torch started its thread pools
    with ProcessPoolExecutor(args.processes, mp_context=context, initializer=_init_worker,
                             initargs=(args.model, args.models_dir, args.threads)) as pool:
        list(pool.map(_pause, [1.0] * args.processes))  # every worker started and warmed up before timing

        def stage(iters: int, refine: bool) -> tuple[list, float, float]:
            started = time.perf_counter()
            parts = list(pool.map(_work, chunks, [args.batch] * len(chunks), [iters] * len(chunks),
                                  [refine] * len(chunks), [options] * len(chunks)))
            wall = time.perf_counter() - started
            return [r for part, _ in parts for r in part], wall, sum(cpu for _, cpu in parts)

        single, single_seconds, _ = stage(0, False)
        encoded, encoder_seconds, _ = stage(iterations, False)
        refined, refine_seconds, refine_cpu = stage(iterations, True)

    def col(results, k):
        return np.array([r[k] for r in results])

    one_psnr, enc_psnr, ref_psnr = col(single, 0), col(encoded, 0), col(refined, 0)
    steps = col(refined, 2)
    rows = [
        {"stage": "encoder, one pass", "mean_psnr": one_psnr.mean(), "min_psnr": one_psnr.min(),
         "mean_ssim": col(single, 1).mean(), "mean_steps": 0.0, "seconds_per_image": single_seconds / args.count},
        {"stage": f"encoder + {iterations} corrections", "mean_psnr": enc_psnr.mean(), "min_psnr": enc_psnr.min(),
         "mean_ssim": col(encoded, 1).mean(), "mean_steps": 0.0,
         "seconds_per_image": encoder_seconds / args.count},
        {"stage": "encoder + refinement", "mean_psnr": ref_psnr.mean(), "min_psnr": ref_psnr.min(),
         "mean_ssim": col(refined, 1).mean(), "mean_steps": steps.mean(),
         "seconds_per_image": refine_seconds / args.count, "cpu_seconds_per_image": refine_cpu / args.count},
    ]
    photos = []
    if not args.no_photos:
        finder = FaceFinder(assets.path_of("shape_predictor_5_face_landmarks.dat", args.models_dir))
        template = template_for(args.model, model.resolution)
        for name in PHOTOS:
            photo = np.asarray(Image.open(assets.path_of(name, args.models_dir)).convert("RGB"))
            t0 = time.perf_counter()
            faces = finder.find(photo, defaults.detect_upsample)
            crop = warp_crop(photo, similarity_transform(faces[0].landmarks, template), model.resolution)
            r_enc, = inverter.invert(crop[None], "z", options, refine=False)
            r, = inverter.invert(crop[None], "z", options)
            photos.append({"photo": name, "faces_found": len(faces), "encoder_psnr": r_enc.psnr, "psnr": r.psnr,
                           "ssim": r.ssim, "steps": r.steps, "seconds": time.perf_counter() - t0})
    targets = {
        "mean_psnr_after_refinement_db": {"value": round(float(ref_psnr.mean()), 2), "target": 32.0,
                                          "met": bool(ref_psnr.mean() >= 32.0)},
        "cpu_seconds_per_image": {"value": round(refine_seconds / args.count, 3), "target": 1.0,
                                  "met": bool(refine_seconds / args.count <= 1.0)},
    }
    return {
        "benchmark": "inversion", "model": args.model, "images": args.count, "batch": args.batch,
        "processes": args.processes, "threads": args.threads, "seed": args.seed, "quick": args.quick,
        "settings": {"encoder_iterations": inverter.encoder_iterations, "max_steps": options.max_steps,
                     "target_psnr": options.target_psnr, "lr": options.lr, "feature_weight": inverter.feature_weight},
        "encoder": {"sha256": manifest.get("sha256"), "trained_images": manifest.get("images"),
                    "held_out": manifest.get("held_out")},
        "machine": {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_average": [round(float(v), 2) for v in _load()]},
        "table": [{k: (round(float(v), 3) if not isinstance(v, str) else v) for k, v in r.items()} for r in rows],
        "photos": [{k: (round(float(v), 3) if not isinstance(v, str) else v) for k, v in p.items()}
                   for p in photos],
        "targets": targets,
    }


def _load() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="dcgan-digiface-64", help="registry model")
    p.add_argument("--count", type=int, default=100, help="held-out generated images")
    p.add_argument("--batch", type=int, default=50, help="images refined together")
    p.add_argument("--steps", type=int, default=0, help="step budget (0: the server default)")
    p.add_argument("--target-psnr", type=float, default=0.0, help="early-stop PSNR (0: the server default)")
    p.add_argument("--seed", type=int, default=90210, help="sampling seed of the held-out images")
    p.add_argument("--processes", type=int, default=2, help="worker processes, each inverting its share of the "
                                                            "images in batches (one per core)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--models-dir", default=None, help="model cache folder")
    p.add_argument("--no-photos", action="store_true", help="skip the real photos")
    p.add_argument("--quick", action="store_true", help="4 images, 5 steps (a smoke test of this script)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "inversion.json"),
                   help="result JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.count, args.batch, args.steps = 4, 4, args.steps or 5
    result = run(args)
    print(f"inversion of {args.count} held-out {args.model} images (batch {args.batch}, {args.processes} processes x "
          f"{args.threads} threads, "
          f"load average {result['machine']['load_average']})")
    print(f"{'stage':24s} {'mean PSNR':>10s} {'min PSNR':>9s} {'SSIM':>6s} {'steps':>6s} {'wall s/img':>10s} "
          f"{'CPU s/img':>9s}")
    for r in result["table"]:
        cpu = r.get("cpu_seconds_per_image")
        print(f"{r['stage']:24s} {r['mean_psnr']:10.2f} {r['min_psnr']:9.2f} {r['mean_ssim']:6.3f} "
              f"{r['mean_steps']:6.1f} {r['seconds_per_image']:10.3f} {'' if cpu is None else f'{cpu:9.3f}'}")
    for ph in result["photos"]:
        print(f"photo {ph['photo']:20s} faces {ph['faces_found']}  encoder {ph['encoder_psnr']:.2f} dB  "
              f"refined {ph['psnr']:.2f} dB  SSIM {ph['ssim']:.3f}  {ph['seconds']:.2f} s")
    for name, t in result["targets"].items():
        print(f"target {name}: {t['value']} (target {t['target']}) {'met' if t['met'] else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
