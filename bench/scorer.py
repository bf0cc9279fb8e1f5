"""Scorer benchmark: images/s per attribute group at batch 1 and 64, in process and served over gRPC.

Scores 64 px DCGAN faces (the default generator's output, what the boundary service sends) with the engine
in this process, then through a real scorer server on loopback (one client, requests of `batch` raw images,
one at a time; and 4 concurrent clients at batch 64). Writes bench/results/scorer.json with the table and
`targets`: the served / in-process throughput ratio at batch 64 must reach 0.5 for every group.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interfacegan.v1 import scorer_pb2, scorer_pb2_grpc  # noqa: E402
from services.cluster import ServiceProcess  # noqa: E402
from services.common import images as imagecodec  # noqa: E402
from interfacegan.v1 import common_pb2  # noqa: E402

GROUPS = {
    "gender": ["gender"],
    "age": ["age"],
    "mesh": ["yaw", "pitch", "roll", "smile", "mouth_open"],
    "all": ["gender", "age", "yaw", "pitch", "roll", "smile", "mouth_open"],
}
TARGET_RATIO = 0.5


def faces(count: int, seed: int = 0) -> np.ndarray:
    """(count, 64, 64, 3) uint8 faces from the default DCGAN (the fixture faces where torch is unavailable)."""
    try:
        import torch

        from services.generator.models import load_model

        torch.set_num_threads(min(2, os.cpu_count() or 1))
        model = load_model("dcgan-digiface-64", "cpu")
        with torch.no_grad():
            pixels = model.synthesize(model.sample(count, seed=seed), "z", output="uint8")
        return np.asarray(pixels.cpu().numpy() if hasattr(pixels, "cpu") else pixels, dtype=np.uint8)
    except ImportError:
        from PIL import Image

        files = sorted((ROOT / "tests" / "fixtures" / "scorer").glob("dcgan_*.png"))
        pool = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        return np.stack([pool[i % len(pool)] for i in range(count)])


def rate(fn, batches: list, warmup: int = 1) -> float:
    """Images per second of fn(batch) over all batches (after `warmup` untimed calls)."""
    for b in batches[:warmup]:
        fn(b)
    start = time.perf_counter()
    for b in batches:
        fn(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def split(pixels: np.ndarray, batch: int, count: int) -> list:
    return [pixels[i:i + batch] for i in range(0, count, batch)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few images per cell (for the test); numbers are rough")
    p.add_argument("--images-b1", type=int, default=48, help="images scored one per call, per cell")
    p.add_argument("--images-b64", type=int, default=384, help="images scored 64 per call, per cell")
    p.add_argument("--concurrency", type=int, default=4, help="clients at once for the concurrent served column")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scorer.json", help="result file")
    args = p.parse_args(argv)
    warmup = 1
    if args.quick:  # exercises every code path in seconds; the numbers mean little
        args.images_b1, args.images_b64, warmup = 2, 64, 0
    pixels = faces(max(args.images_b1, args.images_b64 * 2))
    counts = {1: args.images_b1, 64: args.images_b64}

    from services.scorer.engine import Engine

    engine = Engine()
    engine.load()
    inproc: dict[tuple[str, int], float] = {}
    for group, attrs in GROUPS.items():
        for batch, count in counts.items():
            inproc[group, batch] = rate(lambda b: engine.score(list(b), attrs), split(pixels, batch, count), warmup)
    del engine

    served: dict[tuple[str, int], float] = {}
    concurrent: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as logs:
        server = ServiceProcess.start("scorer", [], log_dir=Path(logs))
        try:
            server.wait_serving()
            options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
            with grpc.insecure_channel(server.address, options=options) as channel:
                stub = scorer_pb2_grpc.ScorerServiceStub(channel)
                info = stub.GetInfo(scorer_pb2.GetScorerInfoRequest())
                raw = [imagecodec.encode(a, common_pb2.IMAGE_FORMAT_RAW) for a in pixels]

                def call(attrs):
                    def send(batch_images):
                        request = scorer_pb2.ScoreRequest(images=batch_images, attributes=attrs)
                        got = sum(len(r.results) for r in stub.Score(request, timeout=300))
                        assert got == len(batch_images)
                    return send

                for group, attrs in GROUPS.items():
                    for batch, count in counts.items():
                        served[group, batch] = rate(call(attrs), split(raw, batch, count), warmup)
                    batches = split(raw, 32, 64) if args.quick else split(raw, 64, counts[64] * 2)
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        start = time.perf_counter()
                        list(pool.map(call(attrs), batches))
                        concurrent[group] = sum(len(b) for b in batches) / (time.perf_counter() - start)
                providers = dict(info.providers)
        finally:
            server.stop()

    rows = []
    for group in GROUPS:
        for batch in counts:
            i, s = inproc[group, batch], served[group, batch]
            rows.append({"group": group, "batch": batch, "in_process_img_s": round(i, 1), "served_img_s": round(s, 1),
                         "served_over_in_process": round(s / i, 3),
                         f"served_{args.concurrency}_clients_img_s": round(concurrent[group], 1) if batch == 64 else None})
    targets = {f"served_over_in_process_b64_{g}": {"value": round(served[g, 64] / inproc[g, 64], 3),
                                                   "target": TARGET_RATIO,
                                                   "met": served[g, 64] / inproc[g, 64] >= TARGET_RATIO}
               for g in GROUPS}
    result = {"benchmark": "scorer", "quick": args.quick, "images": {"batch_1": counts[1], "batch_64": counts[64]},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "providers": providers},
              "table": rows, "targets": targets}
    header = f"{'group':8s} {'batch':>5s} {'in-process':>11s} {'served':>9s} {'ratio':>6s} {f'{args.concurrency} clients':>10s}"
    print(header + "   (images/s)")
    for r in rows:
        c = r[f"served_{args.concurrency}_clients_img_s"]
        print(f"{r['group']:8s} {r['batch']:5d} {r['in_process_img_s']:11.1f} {r['served_img_s']:9.1f} "
              f"{r['served_over_in_process']:6.2f} {'' if c is None else f'{c:10.1f}'}")
    for name, t in targets.items():
        print(f"target {name}: {t['value']} >= {t['target']}: {'met' if t['met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
