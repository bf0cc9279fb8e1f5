"""Inversion benchmark: the served Invert RPC at the server's default settings, one request and many.

python bench/inversion.py [--quick]

Starts one inversion server with its defaults (one process, its torch threads, refinement batches of up to
max_batch_size rows that requests join and leave at every step) and sends it, over gRPC:

1. encoder only: every held-out generated image with encoder_only=true (the encoder and its corrections);
2. one request: `--single` generated images, one call at a time (what one user waits for);
3. many requests: all `--count` generated images at once from max_batch_size concurrent callers (what the
   server sustains);
4. real photos: each photo of the model cache with align_face=true (face detection, 5 landmarks, the
   generator's framing), one call at a time, `--photo-repeats` times; PSNR is against the aligned crop.

Held-out images come from numpy PCG64 seeds the encoder never saw (its training draws torch samples) and
are sent as PNG. Every reply is checked (final message, a code of the model's shape, a decodable
reconstruction of the model's resolution, the reported PSNR equal to the PSNR of that reconstruction); a
call that fails or answers wrongly counts as an error. Wall time is the client's clock; CPU time is the
server process's (all threads, from /proc), both divided by the images of the phase.

Targets, with thresholds near two runs on the 2-core machine shared with other work (load averages 17 and 27):
mean PSNR of the many-requests phase >= 33.7 dB (34.74 in both: about 1 dB of slack, so a change that costs
reconstruction quality shows); the lowest real-photo PSNR >= 13.5 dB (14.51 in both; the default model is
trained on synthetic renders, so real photos reconstruct far worse than its own images); server CPU seconds
per image <= 0.9 under many requests (0.74 and 0.76) and <= 2.3 one request at a time (1.81 and 1.94: a lone
request keeps 2 torch threads busy for a batch of one); wall seconds per image under many requests <= 4.0
(2.5 and 3.2) and p50 of one request <= 6.5 s (3.5 and 5.4): wall time follows the other work on the
machine, so these catch a several-fold slowdown only, the CPU figures a 20% one; errors must be zero.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import (at_least, at_most, load_average, percentile_ms, print_targets,  # noqa: E402
                           proc_cpu_seconds)

PHOTOS = ("astronaut.png", "grace_hopper.jpg")

#: Thresholds (see the module help for the measurements they are set against).
MIN_MEAN_PSNR_DB = 33.7
MIN_PHOTO_PSNR_DB = 13.5
MAX_WALL_S_PER_IMAGE_MANY = 4.0
MAX_CPU_S_PER_IMAGE_MANY = 0.9
MAX_CPU_S_PER_IMAGE_ONE = 2.3
MAX_SINGLE_P50_S = 6.5


class Checked:
    """Collects the checked results of one phase."""

    def __init__(self, name: str):
        self.name = name
        self.latencies: list[float] = []
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.steps: list[int] = []
        self.errors: list[str] = []
        self.wall = 0.0
        self.cpu = 0.0
        self.images = 0

    def row(self) -> dict:
        ok = len(self.psnr)
        return {"phase": self.name, "images": self.images, "ok": ok, "errors": len(self.errors),
                "mean_psnr": round(float(np.mean(self.psnr)), 2) if ok else None,
                "min_psnr": round(float(np.min(self.psnr)), 2) if ok else None,
                "mean_ssim": round(float(np.mean(self.ssim)), 3) if ok else None,
                "mean_steps": round(float(np.mean(self.steps)), 1) if ok else None,
                "p50_ms": percentile_ms(self.latencies, 50), "p99_ms": percentile_ms(self.latencies, 99),
                "wall_s": round(self.wall, 2),
                "wall_s_per_image": round(self.wall / max(1, self.images), 3),
                "images_per_s": round(self.images / self.wall, 3) if self.wall else None,
                "server_cpu_s_per_image": round(self.cpu / max(1, self.images), 3),
                "first_error": self.errors[0] if self.errors else ""}


def check_reply(replies: list, resolution: int, code_shape: tuple) -> tuple[float, float, int]:
    """Raises AssertionError unless the last reply is a complete, consistent answer; returns psnr, ssim, steps."""
    from services.common import images
    from services.common import tensors

    assert replies, "no reply"
    final = replies[-1]
    assert final.final, "the stream ended without a final message"
    code = tensors.to_numpy(final.code.codes, "code")
    assert code.shape == (1, *code_shape), f"code shape {code.shape}, expected {(1, *code_shape)}"
    assert np.isfinite(code).all(), "code is not finite"
    recon = images.decode(final.reconstruction, "reconstruction")
    target = images.decode(final.aligned_target, "aligned_target")
    assert recon.shape == (resolution, resolution, 3), f"reconstruction {recon.shape}"
    mse = float(np.mean((recon.astype(np.float64) - target.astype(np.float64)) ** 2))
    psnr = 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))
    # The server measures PSNR on the float render; the 8-bit PNG rounds it a little.
    assert abs(psnr - final.psnr) < 0.5, f"reported {final.psnr:.2f} dB, reconstruction is {psnr:.2f} dB"
    return final.psnr, final.ssim, final.steps


async def run_phase(stub, phase: Checked, requests: list, concurrency: int, pid: int, resolution: int,
                    code_shape: tuple, timeout: float) -> None:
    """Sends `requests` from `concurrency` closed-loop callers; every reply checked; wall and server CPU."""
    import grpc

    queue = list(enumerate(requests))
    queue.reverse()

    async def caller() -> None:
        while queue:
            _, request = queue.pop()
            t0 = time.perf_counter()
            try:
                replies = [r async for r in stub.Invert(request, timeout=timeout)]
                psnr, ssim, steps = check_reply(replies, resolution, code_shape)
            except grpc.aio.AioRpcError as e:
                phase.errors.append(f"{e.code().name}: {e.details()}")
                continue
            except Exception as e:  # a wrong answer is an error, never a silent success
                phase.errors.append(f"{type(e).__name__}: {e}")
                continue
            phase.latencies.append(time.perf_counter() - t0)
            phase.psnr.append(psnr)
            phase.ssim.append(ssim)
            phase.steps.append(steps)

    phase.images += len(requests)
    cpu0, wall0 = proc_cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*[caller() for _ in range(min(concurrency, len(requests)))])
    phase.wall += time.perf_counter() - wall0
    phase.cpu += proc_cpu_seconds(pid) - cpu0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="dcgan-digiface-64", help="registry model")
    p.add_argument("--count", type=int, default=100, help="held-out generated images of the many-requests phase")
    p.add_argument("--single", type=int, default=10, help="generated images sent one call at a time")
    p.add_argument("--photo-repeats", type=int, default=3, help="calls per real photo")
    p.add_argument("--concurrency", type=int, default=0,
                   help="callers of the many-requests phase (0: the server's max_batch_size)")
    p.add_argument("--seed", type=int, default=90210, help="sampling seed of the held-out images")
    p.add_argument("--server-args", default="", help="extra inversion server flags (default: none, its defaults)")
    p.add_argument("--quick", action="store_true", help="4 images, 2 single calls, 1 photo call each, 5 steps")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inversion.json", help="result JSON")
    args = p.parse_args(argv)
    server_args = args.server_args.split()
    if args.quick:
        args.count, args.single, args.photo_repeats = 4, 2, 1
        server_args += ["--default-steps", "5"]

    import grpc
    import torch

    from interfacegan import codec
    from interfacegan.v1 import common_pb2, inversion_pb2, inversion_pb2_grpc
    from models import load_model
    from services.cluster import ServiceProcess
    from services.common import assets, images
    from services.inversion.server import Settings

    torch.set_num_threads(1)
    defaults = Settings.load(server_args)
    concurrency = args.concurrency or defaults.max_batch_size
    model = load_model(args.model, "cpu")
    codes = model.sample(args.count + args.single, seed=args.seed)
    pixels = model.synthesize(codes, "z", output="uint8").numpy()
    ref = common_pb2.ModelRef(name=args.model)

    def invert_request(image: common_pb2.Image, **kw) -> inversion_pb2.InvertRequest:
        return inversion_pb2.InvertRequest(request_id=uuid.uuid4().hex, model=ref, image=image, **kw)

    generated = [invert_request(images.encode(im)) for im in pixels]
    photos = {name: np.asarray(Image.open(assets.path_of(name)).convert("RGB")) for name in PHOTOS}

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        server = ServiceProcess.start("inversion", ["--log-level", "WARNING", *server_args], log_dir=Path(tmp))
        try:
            server.wait_serving(300)
            phases: dict[str, Checked] = {}
            photo_rows = []

            async def session() -> None:
                channel = grpc.aio.insecure_channel(server.address,
                                                    options=[("grpc.max_receive_message_length", 64 << 20)])
                stub = inversion_pb2_grpc.InversionServiceStub(channel)
                info = {m.model.name: m for m in (await stub.GetInfo(inversion_pb2.GetInversionInfoRequest())).models}
                space = info[args.model].default_space
                shape = tuple(model.latent_shapes[codec.SPACE_KEYS[space]])
                res = model.resolution
                warm = Checked("warm-up")
                await run_phase(stub, warm, generated[-2:], 2, server.pid, res, shape, 600)
                say(f"warm-up: {warm.row()}")
                for name, reqs, conc in (
                        ("encoder only", [invert_request(r.image, encoder_only=True) for r in generated[:args.count]],
                         concurrency),
                        ("one request at a time", generated[args.count:], 1),
                        (f"{args.count} requests, {concurrency} concurrent", generated[:args.count], concurrency)):
                    phases[name] = Checked(name)
                    await run_phase(stub, phases[name], reqs, conc, server.pid, res, shape, 1800)
                    say(f"{name}: {phases[name].row()}")
                for photo_name, photo in photos.items():
                    phase = Checked(f"photo {photo_name}")
                    reqs = [invert_request(images.encode(photo, common_pb2.IMAGE_FORMAT_PNG), align_face=True)
                            for _ in range(args.photo_repeats)]
                    await run_phase(stub, phase, reqs, 1, server.pid, res, shape, 600)
                    phases[phase.name] = phase
                    h, w = photo.shape[:2]
                    photo_rows.append({**phase.row(), "photo": photo_name, "size": f"{w}x{h}"})
                    say(f"{phase.name}: {phase.row()}")
                await channel.close()

            asyncio.run(session())
        finally:
            server.stop()

    enc, one = phases["encoder only"], phases["one request at a time"]
    many = phases[f"{args.count} requests, {concurrency} concurrent"]
    photo_phases = [phases[f"photo {n}"] for n in PHOTOS]
    errors = sum(len(ph.errors) for ph in phases.values())
    photo_psnr = [v for ph in photo_phases for v in ph.psnr]
    targets = {
        "mean_psnr_many_db": at_least(np.mean(many.psnr) if many.psnr else 0.0, MIN_MEAN_PSNR_DB),
        "min_photo_psnr_db": at_least(min(photo_psnr) if photo_psnr else 0.0, MIN_PHOTO_PSNR_DB),
        "wall_seconds_per_image_many": at_most(many.wall / many.images, MAX_WALL_S_PER_IMAGE_MANY),
        "server_cpu_seconds_per_image_many": at_most(many.cpu / many.images, MAX_CPU_S_PER_IMAGE_MANY),
        "server_cpu_seconds_per_image_one_request": at_most(one.cpu / one.images, MAX_CPU_S_PER_IMAGE_ONE),
        "p50_seconds_one_request": at_most((percentile_ms(one.latencies, 50) or 1e9) / 1000, MAX_SINGLE_P50_S),
        "errors": at_most(errors, 0),
    }
    result = {
        "benchmark": "inversion", "quick": args.quick, "model": args.model, "seed": args.seed,
        "images": args.count, "single": args.single, "concurrency": concurrency,
        "server": {"torch_threads": defaults.torch_threads, "max_batch_size": defaults.max_batch_size,
                   "max_queue_size": defaults.max_queue_size, "default_steps": defaults.default_steps,
                   "default_target_psnr": defaults.default_target_psnr,
                   "encoder_iterations": defaults.encoder_iterations, "extra_flags": server_args},
        "machine": {"cpus": __import__("os").cpu_count(), "load_average": load_average()},
        "table": [ph.row() for ph in (enc, one, many)], "photos": photo_rows, "targets": targets,
    }
    print(f"\ninversion benchmark: served Invert of {args.model}, server defaults (torch threads "
          f"{defaults.torch_threads}, max_batch_size {defaults.max_batch_size}, {defaults.default_steps} steps, "
          f"stop at {defaults.default_target_psnr} dB); load average {result['machine']['load_average']}")
    print(f"{'phase':34s} {'images':>6s} {'errors':>6s} {'PSNR':>6s} {'min':>6s} {'steps':>6s} {'p50 ms':>8s} "
          f"{'p99 ms':>8s} {'wall s/img':>10s} {'CPU s/img':>9s}")
    for r in result["table"] + photo_rows:
        print(f"{r['phase']:34s} {r['images']:6d} {r['errors']:6d} {r['mean_psnr'] or 0:6.2f} {r['min_psnr'] or 0:6.2f} "
              f"{r['mean_steps'] or 0:6.1f} {r['p50_ms'] or 0:8.0f} {r['p99_ms'] or 0:8.0f} "
              f"{r['wall_s_per_image']:10.3f} {r['server_cpu_s_per_image']:9.3f}")
    print("targets:")
    print_targets(targets)
    for ph in phases.values():
        if ph.errors:
            print(f"errors in {ph.name}: {ph.errors[:3]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
