"""Memory under a burst of large valid image requests, and the latency of small requests during it.

Against a real local cluster (started here, or `--attach DIR`), one image-decoding service at a time:

- scorer: `--large-calls` concurrent Score calls of 16 face photos of 2048 x 2048 pixels each (PNG);
- inversion: concurrent Blend calls pasting a face into a 4096 x 4096 photo (JPEG), and Invert calls aligning
  the face in that photo (encoder only);
- editor: concurrent Edit calls of that photo, 16 steps each, every step blended back into the photo.

Large callers do what a well-behaved client does with RESOURCE_EXHAUSTED: wait the RetryInfo hint and try
again, within the call's deadline. Meanwhile one client sends small calls in a loop (a 64 px face to the
scorer, an encoder-only Invert of a 64 px face to inversion, a seed Edit to the editor) with a 20 s
deadline. Resident memory (VmRSS of /proc/PID/status) of every service is sampled at 20 Hz: before the
burst (after a warm-up that ran one large call), its peak, and 3 s after the last large call ended.

Targets: every large call answered OK in the end and never anything but OK or RESOURCE_EXHAUSTED with a
retry hint; no small call failed; small calls' p99 under 5 s; per service, peak growth under 1.5 GiB and
what is kept after the burst under 300 MiB above the level before it.

Merges its results into bench/results/reliability.json (section "burst", targets named "burst_*"), keeping
the rest of that file (bench/reliability.py's load test); `--quick` runs a smaller burst (512 px faces, a
1024 px photo, 4 calls; the test's run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, at_most, load_average, print_targets, proc_memory_mb  # noqa: E402
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,  # noqa: E402
                             inversion_pb2, inversion_pb2_grpc, scorer_pb2, scorer_pb2_grpc)
from services.cluster import Cluster, check_health  # noqa: E402
from services.common import assets  # noqa: E402
from services.common.errors import status_details  # noqa: E402

OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
FACES = ROOT / "tests" / "fixtures" / "scorer"
SMALL_DEADLINE = 20.0
PEAK_GROWTH_MB, KEPT_MB, SMALL_P99_S = 1536, 300, 5.0
ATTRIBUTE = "burst-smile"


def encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 9}))
    return buf.getvalue()


def face(i: int = 0) -> np.ndarray:
    return np.asarray(Image.open(FACES / f"dcgan_{i:03d}.png").convert("RGB"))


def big(array: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((side, side), Image.BICUBIC))


class Sampler(threading.Thread):
    """Samples the resident memory of some processes at 20 Hz; keeps each one's peak."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids, self.peak = pids, {n: 0.0 for n in pids}
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], proc_memory_mb(pid))
            time.sleep(0.05)


def call_with_retries(fn, deadline: float) -> dict:
    """A large call as a well-behaved client makes it: on RESOURCE_EXHAUSTED wait the hint and retry."""
    out = {"refused": 0, "refused_without_hint": 0, "status": "OK"}
    end = time.monotonic() + deadline
    while True:
        try:
            fn(max(1.0, end - time.monotonic()))
            return out
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > end:
                out["status"] = f"{e.code().name}: {(e.details() or '')[:200]}"
                return out
            out["refused"] += 1
            hint = status_details(e).get("retry_after")
            if hint is None:
                out["refused_without_hint"] += 1
            time.sleep(min(hint or 1.0, max(0.0, end - time.monotonic())))


def burst(name: str, pids: dict[str, int], large: list, small, calls: int, deadline: float) -> dict:
    """Runs `calls` large calls at once (cycling through `large`) while `small` loops; returns the figures."""
    time.sleep(1.0)
    before = {n: proc_memory_mb(p) for n, p in pids.items()}
    sampler = Sampler(pids)
    sampler.start()
    stop = threading.Event()
    small_results: list[tuple[float, str]] = []

    def small_loop():
        while not stop.is_set():
            t = time.perf_counter()
            try:
                small(SMALL_DEADLINE)
                status = "OK"
            except grpc.RpcError as e:
                status = e.code().name
            small_results.append((time.perf_counter() - t, status))
            time.sleep(0.05)

    smalls = threading.Thread(target=small_loop, daemon=True)
    smalls.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(calls) as pool:
        outcomes = list(pool.map(lambda i: call_with_retries(large[i % len(large)], deadline), range(calls)))
    burst_seconds = time.perf_counter() - started
    stop.set()
    smalls.join()
    time.sleep(3.0)
    after = {n: proc_memory_mb(p) for n, p in pids.items()}
    sampler.done.set()
    sampler.join()
    latencies = np.array([s for s, _ in small_results])  # failed calls count with the time they took
    statuses: dict[str, int] = {}
    for _, status in small_results:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "large_calls": calls, "burst_seconds": round(burst_seconds, 1),
        "large_ok": sum(o["status"] == "OK" for o in outcomes),
        "large_refusals": sum(o["refused"] for o in outcomes),
        "large_refusals_without_hint": sum(o["refused_without_hint"] for o in outcomes),
        "large_errors": sorted({o["status"] for o in outcomes if o["status"] != "OK"}),
        "small_calls": len(small_results), "small_status": statuses, "small_max_s": round(float(latencies.max()), 3)
        if len(latencies) else None,
        "small_p50_s": round(float(np.percentile(latencies, 50)), 3) if len(latencies) else None,
        "small_p99_s": round(float(np.percentile(latencies, 99)), 3) if len(latencies) else None,
        "memory_mb": {n: {"before": round(before[n], 1), "peak": round(sampler.peak[n], 1),
                          "after": round(after[n], 1)} for n in pids},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller burst (the test's run)")
    p.add_argument("--large-calls", type=int, default=24, help="concurrent large calls per service")
    p.add_argument("--deadline", type=float, default=600.0, help="deadline of each large call, seconds")
    p.add_argument("--attach", type=Path, default=None, help="use the cluster running from this folder")
    p.add_argument("--services", default="scorer,inversion,editor", help="services to burst, in order")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json",
                   help="results file (its 'burst' section and burst_* targets are replaced)")
    args = p.parse_args(argv)
    # Quick: smaller images and fewer calls, the same paths.
    score_side, photo_side, edit_steps = (512, 1024, 4) if args.quick else (2048, 4096, 16)
    if args.quick:
        args.large_calls = 4

    cluster = None
    began = time.perf_counter()
    try:
        if args.attach:
            state = json.loads((args.attach / "cluster.json").read_text())
            addresses = {n: f"127.0.0.1:{i['port']}" for n, i in state["services"].items()}
            pids = {n: i["pid"] for n, i in state["services"].items()}
        else:
            workdir = Path(tempfile.mkdtemp(prefix="ifgan-burst-"))
            print(f"starting the cluster in {workdir} ...", flush=True)
            cluster = Cluster.up(workdir, fixed_ports=False, log=lambda *_: None)
            addresses = {n: proc.address for n, proc in cluster.services.items()}
            pids = {n: proc.pid for n, proc in cluster.services.items()}
        watched = {n: pids[n] for n in ("scorer", "inversion", "editor") if n in pids}
        channels = {n: grpc.insecure_channel(a, options=OPTIONS) for n, a in addresses.items()}
        scorer = scorer_pb2_grpc.ScorerServiceStub(channels["scorer"])
        inversion = inversion_pb2_grpc.InversionServiceStub(channels["inversion"])
        editor = editor_pb2_grpc.EditorServiceStub(channels["editor"])

        small_face = common_pb2.Image(encoded=encode(face(0), "PNG"))
        # Large, valid and compressible, as photos of one flat colour region are: faces enlarged.
        score_images = [common_pb2.Image(encoded=encode(big(face(i), score_side), "PNG")) for i in range(16)]
        portrait = np.asarray(Image.open(assets.path_of("astronaut.png")).convert("RGB"))
        photo = common_pb2.Image(encoded=encode(big(portrait, photo_side), "JPEG"))
        aligned = list(inversion.Invert(inversion_pb2.InvertRequest(image=photo, align_face=True, encoder_only=True),
                                        timeout=300))[-1]
        boundary = boundary_pb2_grpc.BoundaryServiceStub(channels["boundary"])
        normal = np.random.default_rng(5).standard_normal((1, 100))
        buf = io.BytesIO()
        np.save(buf, normal)
        boundary.ImportBoundary(boundary_pb2.ImportBoundaryRequest(model="dcgan-digiface-64", attribute=ATTRIBUTE,
                                                                   space=common_pb2.LATENT_SPACE_Z,
                                                                   npy=buf.getvalue()), timeout=60)
        print(f"cluster ready in {time.perf_counter() - began:.0f} s; score call "
              f"{sum(len(i.encoded) for i in score_images) / 1e6:.1f} MB, photo {len(photo.encoded) / 1e6:.1f} MB",
              flush=True)

        def score_large(timeout):
            list(scorer.Score(scorer_pb2.ScoreRequest(images=score_images), timeout=timeout))

        def score_small(timeout):
            list(scorer.Score(scorer_pb2.ScoreRequest(images=[small_face]), timeout=timeout))

        def blend_large(timeout):
            inversion.Blend(inversion_pb2.BlendRequest(photo=photo, face=aligned.aligned_target,
                                                       alignment=aligned.alignment), timeout=timeout)

        def invert_large(timeout):
            list(inversion.Invert(inversion_pb2.InvertRequest(image=photo, align_face=True, encoder_only=True),
                                  timeout=timeout))

        def invert_small(timeout):
            list(inversion.Invert(inversion_pb2.InvertRequest(image=small_face, encoder_only=True), timeout=timeout))

        edit = editor_pb2.AttributeEdit(attribute=ATTRIBUTE, start=-1, end=1, steps=edit_steps)

        def edit_large(timeout):
            list(editor.Edit(editor_pb2.EditRequest(photo=photo, edits=[edit], blend_into_photo=True,
                                                    inversion_steps=5, skip_tuning=True), timeout=timeout))

        def edit_small(timeout):
            list(editor.Edit(editor_pb2.EditRequest(seed=3, edits=[editor_pb2.AttributeEdit(
                attribute=ATTRIBUTE, end=1, steps=1)]), timeout=timeout))

        plans = {"scorer": ([score_large], score_small), "inversion": ([blend_large, invert_large], invert_small),
                 "editor": ([edit_large], edit_small)}
        results = {}
        for name in [s.strip() for s in args.services.split(",") if s.strip()]:
            large, small = plans[name]
            for fn in large:  # warm-up: every path has run once, so the burst measures holding, not first use
                call_with_retries(fn, args.deadline)
            for _ in range(3):
                small(SMALL_DEADLINE)
            calls = max(2, args.large_calls // 4) if name == "editor" else args.large_calls
            print(f"{name}: {calls} large calls at once ...", flush=True)
            results[name] = burst(name, watched, large, small, calls, args.deadline)
            print(f"  {results[name]}", flush=True)
        healthy = {n: check_health(a) for n, a in addresses.items()}
        for channel in channels.values():
            channel.close()
    finally:
        if cluster is not None:
            cluster.down()

    targets = {}
    for name, r in results.items():
        targets[f"burst_{name}_large_ok"] = at_least(r["large_ok"], r["large_calls"])
        targets[f"burst_{name}_refusals_without_retry_hint"] = at_most(r["large_refusals_without_hint"], 0)
        targets[f"burst_{name}_small_errors"] = at_most(r["small_calls"] - r["small_status"].get("OK", 0), 0)
        targets[f"burst_{name}_small_p99_s"] = at_most(r["small_p99_s"] if r["small_p99_s"] is not None else 1e9,
                                                       SMALL_P99_S)
        for service, mm in r["memory_mb"].items():
            if service == name or (name == "editor" and service == "inversion"):
                targets[f"burst_{name}_{service}_peak_growth_mb"] = at_most(mm["peak"] - mm["before"], PEAK_GROWTH_MB)
                targets[f"burst_{name}_{service}_kept_mb"] = at_most(mm["after"] - mm["before"], KEPT_MB)
    targets["burst_all_serving_after"] = at_least(sum(v == "SERVING" for v in healthy.values()), len(healthy))

    print(f"\n{'burst':10s} {'service':10s} {'before':>8s} {'peak':>8s} {'after':>8s}   large ok/refused   "
          f"small p50/p99 s")
    for name, r in results.items():
        for service, mm in r["memory_mb"].items():
            print(f"{name:10s} {service:10s} {mm['before']:8.0f} {mm['peak']:8.0f} {mm['after']:8.0f}   "
                  f"{r['large_ok']:3d}/{r['large_refusals']:<4d}          {r['small_p50_s']}/{r['small_p99_s']}")
    print("targets:")
    print_targets(targets)

    # Services burst in another run (--services) keep their figures and targets.
    document = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous = document.get("burst", {}).get("results", {})
    document["burst"] = {"config": {k: v for k, v in vars(args).items() if k not in ("out", "attach")},  # no paths
                         "machine": {"cpus": os.cpu_count(), "load_average_at_end": load_average()},
                         "results": {**previous, **results}, "health_after": healthy}
    replaced = tuple(f"burst_{name}_" for name in results) + ("burst_all_",)
    kept = {k: v for k, v in document.get("targets", {}).items() if not k.startswith(replaced)}
    document["targets"] = {**kept, **targets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
