"""Scorer benchmark: images/s per attribute group at batch 1 and 64, in process and served over gRPC.

Scores 64 px DCGAN faces (the default generator's output, what the boundary service sends) with the engine in
this process and through a real scorer server on loopback (one client sending requests of `batch` raw images,
one at a time; and several concurrent clients at batch 64). In-process and served runs of a cell alternate,
`--rounds` times, and the best of each is kept, so both see the same load on a shared machine. Besides wall
clock images/s the table gives images per CPU-second (this process, plus the server's CPU when served), which
other people's load does not distort.

Writes bench/results/scorer.json with the table and `targets`: the served / in-process wall-clock ratio at
batch 64 must reach 0.85 for every group. Measured on the 2-core shared CPU: gender 1.01, age 0.98, mesh 0.93,
all 0.90; serving adds the image transfer and the batcher, which cost a few percent, so 0.85 passes a
healthy run with noise to spare and fails when serving loses a sixth of the engine's throughput.
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

from interfacegan.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc  # noqa: E402
from services.cluster import ServiceProcess  # noqa: E402
from services.common import images as imagecodec  # noqa: E402
from bench.harness import at_least, print_targets, proc_cpu_seconds  # noqa: E402

GROUPS = {
    "gender": ["gender"],
    "age": ["age"],
    "mesh": ["yaw", "pitch", "roll", "smile", "mouth_open"],
    "all": ["gender", "age", "yaw", "pitch", "roll", "smile", "mouth_open"],
}
TARGET_RATIO = 0.85


def faces(count: int, seed: int = 0) -> np.ndarray:
    """(count, 64, 64, 3) uint8 faces from the default DCGAN (the fixture faces where torch is unavailable)."""
    try:
        import torch

        from models import load_model

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


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system, all threads) of this process, or of process `pid` (Linux /proc)."""
    return time.process_time() if pid is None else proc_cpu_seconds(pid)


def measure(fn, batches: list, warmup: int, server_pid: int | None = None, workers: int = 1) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second) of fn over all batches, after warm-up calls."""
    for b in batches[:warmup]:
        fn(b)
    images = sum(len(b) for b in batches)
    cpu0 = cpu_seconds() + (cpu_seconds(server_pid) if server_pid else 0.0)
    start = time.perf_counter()
    if workers == 1:
        for b in batches:
            fn(b)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fn, batches))
    wall = time.perf_counter() - start
    cpu = cpu_seconds() + (cpu_seconds(server_pid) if server_pid else 0.0) - cpu0
    return images / wall, images / max(cpu, 1e-9)


def split(items, batch: int, count: int) -> list:
    return [items[i:i + batch] for i in range(0, count, batch)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few images per cell (for the test); numbers are rough")
    p.add_argument("--images-b1", type=int, default=32, help="images scored one per call, per cell and round")
    p.add_argument("--images-b64", type=int, default=256, help="images scored 64 per call, per cell and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating in-process/served rounds; the best counts")
    p.add_argument("--concurrency", type=int, default=4, help="clients at once for the concurrent served column")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scorer.json", help="result file")
    args = p.parse_args(argv)
    warmup = 1
    if args.quick:  # exercises every code path in seconds; the numbers mean little
        args.images_b1, args.images_b64, args.rounds, warmup = 2, 64, 1, 0
    counts = {1: args.images_b1, 64: args.images_b64}
    pixels = faces(max(counts.values()))
    raw = [imagecodec.encode(a, common_pb2.IMAGE_FORMAT_RAW) for a in pixels]

    from services.scorer.engine import Engine

    engine = Engine()
    engine.load()
    best: dict[tuple, tuple[float, float]] = {}

    def keep(key, value):
        best[key] = max(best.get(key, (0.0, 0.0)), value)

    with tempfile.TemporaryDirectory() as logs:
        server = ServiceProcess.start("scorer", [], log_dir=Path(logs))
        try:
            server.wait_serving()
            options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
            with grpc.insecure_channel(server.address, options=options) as channel:
                stub = scorer_pb2_grpc.ScorerServiceStub(channel)
                info = stub.GetInfo(scorer_pb2.GetScorerInfoRequest())

                def served(attrs):
                    def send(images):
                        request = scorer_pb2.ScoreRequest(images=images, attributes=attrs)
                        got = sum(len(r.results) for r in stub.Score(request, timeout=600))
                        assert got == len(images)
                    return send

                for _ in range(args.rounds):
                    for group, attrs in GROUPS.items():
                        for batch, count in counts.items():
                            keep(("in", group, batch), measure(lambda b: engine.score(list(b), attrs),
                                                               split(pixels, batch, count), warmup))
                            keep(("served", group, batch), measure(served(attrs), split(raw, batch, count), warmup,
                                                                   server.pid))
                        concurrent = split(raw, 32, 64) if args.quick else split(raw, 64, counts[64])
                        keep(("many", group, 64), measure(served(attrs), concurrent, warmup, server.pid,
                                                          args.concurrency))
                providers = dict(info.providers)
        finally:
            server.stop()

    rows = []
    for group in GROUPS:
        for batch in counts:
            (iw, ic), (sw, sc) = best["in", group, batch], best["served", group, batch]
            rows.append({"group": group, "batch": batch, "in_process_img_s": round(iw, 1), "served_img_s": round(sw, 1),
                         "served_over_in_process": round(sw / iw, 3),
                         f"served_{args.concurrency}_clients_img_s":
                             round(best["many", group, 64][0], 1) if batch == 64 else None,
                         "in_process_img_per_cpu_s": round(ic, 1), "served_img_per_cpu_s": round(sc, 1)})
    targets = {f"served_over_in_process_b64_{g}": at_least(round(best["served", g, 64][0] / best["in", g, 64][0], 3),
                                                            TARGET_RATIO) for g in GROUPS}
    result = {"benchmark": "scorer", "quick": args.quick, "rounds": args.rounds,
              "images_per_cell": {"batch_1": counts[1], "batch_64": counts[64]},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "providers": providers,
                          "load_average_1m": round(os.getloadavg()[0], 2)},
              "table": rows, "targets": targets}
    many = f"{args.concurrency} clients"
    print(f"{'group':7s} {'batch':>5s} {'in-process':>10s} {'served':>8s} {'ratio':>6s} {many:>10s}   "
          f"{'in-proc/cpu-s':>13s} {'served/cpu-s':>12s}   (images/s)")
    for r in rows:
        c = r[f"served_{args.concurrency}_clients_img_s"]
        print(f"{r['group']:7s} {r['batch']:5d} {r['in_process_img_s']:10.1f} {r['served_img_s']:8.1f} "
              f"{r['served_over_in_process']:6.2f} {'' if c is None else f'{c:.1f}':>10s}   "
              f"{r['in_process_img_per_cpu_s']:13.1f} {r['served_img_per_cpu_s']:12.1f}")
    print("targets:")
    print_targets(targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
