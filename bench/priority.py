"""Priority lanes benchmark: interactive edits alone and under a saturating bulk load, lanes on and off.

One run starts Redis, a boundary service and, for each mode, a generator and an editor: one generator with
priority lanes (the default), one with `--no-priority-lanes` (one FIFO queue, the baseline), otherwise the
same settings. Per mode, three phases:

1. idle: an interactive client edits seeds through the editor (Edit of one seed, one attribute, `--steps`
   images, no metadata: Edit's default lane, interactive) at a steady `--rate`, alone;
2. bulk: `--bulk-clients` closed-loop clients in a process of their own send Synthesize calls of `--bulk-codes`
   codes (raw pixels, `ifgan-priority: bulk`) straight to the generator, enough to keep its queue full;
3. mixed: both at once.

Reported: p50 / p99 of the interactive edits in the idle and mixed phases, bulk throughput (images/s) alone
and mixed. The machine is shared and its load drifts, so the modes' phases alternate in `--rounds` rounds
(on, off, then off, on, ...) and each figure pools its mode's rounds: ratios within a run count.

Targets (bench/results/priority.json):
  lanes on: interactive p99 under saturation <= 2 x its idle p99;
  lanes on: mixed bulk throughput >= 0.9 x the lanes-off mixed bulk throughput;
  no errors in any phase.
Lanes off is reported with the same figures, as the baseline (no target).
`--quick` runs seconds instead of minutes (tests/generator/test_priority_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import platform
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, at_most, load_average, percentile_ms, print_targets  # noqa: E402
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,  # noqa: E402
                             generator_pb2, generator_pb2_grpc)
from services.cluster import RedisProcess, ServiceProcess, free_port  # noqa: E402
from services.common import tensors  # noqa: E402
from services.common.batching import LANE_METADATA  # noqa: E402

MODEL = "dcgan-digiface-64"
Z = common_pb2.LATENT_SPACE_Z
ATTRIBUTE = "priority-load"  # a random boundary of the default model, imported by the bench
MODES = {"on": [], "off": ["--no-priority-lanes"]}


# -- the bulk load (its own process) --------------------------------------------------------------------------

def bulk_load(address: str, clients: int, codes: int, warmup: float, seconds: float, started, out) -> None:
    """Closed-loop bulk Synthesize clients; puts (images answered within the measured window, errors) on `out`."""

    async def main():
        rng = np.random.default_rng(7)
        request = generator_pb2.SynthesizeRequest(
            codes=tensors.latents_from_numpy(Z, rng.standard_normal((codes, 100)).astype(np.float32)),
            format=common_pb2.IMAGE_FORMAT_RAW)
        loop = asyncio.get_running_loop()
        begin = loop.time() + warmup
        end = begin + seconds
        counted, errors = [0], []

        async def client(stub):
            while loop.time() < end:
                try:
                    async for reply in stub.Synthesize(request, timeout=120, metadata=((LANE_METADATA, "bulk"),)):
                        if begin <= loop.time() < end:
                            counted[0] += len(reply.images)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"{e.code().name}: {e.details()[:160]}")
                    await asyncio.sleep(0.05)

        async with grpc.aio.insecure_channel(address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            loop.call_at(begin, started.set)
            await asyncio.gather(*(client(stub) for _ in range(clients)))
        return counted[0], errors

    out.put(asyncio.run(main()))


# -- the interactive client -----------------------------------------------------------------------------------

def interactive(address: str, rate: float, seconds: float, steps: int, first_seed: int) -> tuple[list, list]:
    """Edits of one seed each at a steady `rate`; returns (latencies in seconds, errors)."""
    latencies, errors = [], []
    with grpc.insecure_channel(address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        start = time.perf_counter()
        k = 0
        while True:
            due = start + k / rate
            now = time.perf_counter()
            if due - start >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            request = editor_pb2.EditRequest(seed=first_seed + k, edits=[editor_pb2.AttributeEdit(
                attribute=ATTRIBUTE, start=-2, end=2, steps=steps)])
            t = time.perf_counter()
            try:
                replies = list(stub.Edit(request, timeout=30))
                if len(replies) != steps:
                    errors.append(f"{len(replies)} images for {steps} steps")
                else:
                    latencies.append(time.perf_counter() - t)
            except grpc.RpcError as e:
                errors.append(f"{e.code().name}: {e.details()[:160]}")
            k += 1
    return latencies, errors


def phase(kind: str, stack: dict, mode: str, args, seed: int) -> dict:
    """One phase of one mode: idle, bulk or mixed."""
    out: dict = {"latencies": [], "images": 0, "seconds": args.seconds, "errors": []}
    bulk = None
    if kind in ("bulk", "mixed"):
        ctx = multiprocessing.get_context("spawn")
        started, results = ctx.Event(), ctx.Queue()
        bulk = ctx.Process(target=bulk_load, args=(stack[f"generator-{mode}"], args.bulk_clients, args.bulk_codes,
                                                   args.warmup, args.seconds, started, results), daemon=True)
        bulk.start()
        if not started.wait(120):
            raise RuntimeError("the bulk load did not start within 120 s")
    if kind in ("idle", "mixed"):
        out["latencies"], out["errors"] = interactive(stack[f"editor-{mode}"], args.rate, args.seconds, args.steps,
                                                      seed)
    if bulk is not None:
        images, errors = results.get(timeout=args.seconds + 180)
        bulk.join(30)
        out["images"], out["errors"] = images, out["errors"] + errors
    return out


# -- the stack ------------------------------------------------------------------------------------------------

def start_stack(workdir: Path, log_level: str = "WARNING") -> tuple[dict, list]:
    """Redis, a boundary service, and a generator + editor per mode; returns (addresses, processes)."""
    procs: list = []
    redis = RedisProcess.start(free_port(), workdir / "redis")
    procs.append(redis)
    common = ["--drain-seconds", "0", "--log-level", log_level]
    boundary = ServiceProcess.start("boundary", common, env={"IFGAN_REDIS_URL": redis.url,
                                                             "IFGAN_DATA_DIR": str(workdir / "data")},
                                    log_dir=workdir / "logs" / "boundary")
    procs.append(boundary)
    addresses = {"boundary": boundary.address}
    for mode, flags in MODES.items():
        generator = ServiceProcess.start("generator", [*common, *flags], log_dir=workdir / "logs" / f"generator-{mode}")
        procs.append(generator)
        editor = ServiceProcess.start("editor", common, env={
            "IFGAN_GENERATOR_ADDRESS": generator.address, "IFGAN_BOUNDARY_ADDRESS": boundary.address,
            "IFGAN_SCORER_ADDRESS": "127.0.0.1:1", "IFGAN_INVERSION_ADDRESS": "127.0.0.1:1"},
            log_dir=workdir / "logs" / f"editor-{mode}")
        procs.append(editor)
        addresses[f"generator-{mode}"], addresses[f"editor-{mode}"] = generator.address, editor.address
    for p in procs[1:]:
        p.wait_serving(300)
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(1).standard_normal((1, 100)))
    with grpc.insecure_channel(boundary.address) as channel:
        boundary_pb2_grpc.BoundaryServiceStub(channel).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
            model=MODEL, attribute=ATTRIBUTE, space=Z, npy=buf.getvalue()), timeout=30)
    return addresses, procs


def summarize(runs: list[dict]) -> dict:
    latencies = [x for r in runs for x in r["latencies"]]
    seconds = sum(r["seconds"] for r in runs)
    return {"edits": len(latencies), "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
            "bulk_images_per_s": round(sum(r["images"] for r in runs) / seconds, 1) if seconds else None,
            "errors": sum(len(r["errors"]) for r in runs),
            "error_samples": sorted({e for r in runs for e in r["errors"]})[:3]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes (the test's run)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of every phase of both modes")
    p.add_argument("--seconds", type=float, default=25.0, help="measured seconds of one phase of one round")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of bulk load before its phase is measured")
    p.add_argument("--rate", type=float, default=4.0, help="interactive edits per second")
    p.add_argument("--steps", type=int, default=3, help="images per interactive edit")
    p.add_argument("--bulk-clients", type=int, default=4, help="closed-loop bulk Synthesize clients")
    p.add_argument("--bulk-codes", type=int, default=64, help="codes per bulk Synthesize call")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "priority.json", help="results file")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.warmup, args.rate, args.bulk_clients = 1, 3.0, 1.0, 4.0, 2

    workdir = Path(tempfile.mkdtemp(prefix="ifgan-priority-"))
    began = time.perf_counter()
    print(f"starting Redis, boundary, and a generator + editor per mode in {workdir} ...", flush=True)
    procs: list = []
    runs: dict = {(m, k): [] for m in MODES for k in ("idle", "bulk", "mixed")}
    try:
        stack, procs = start_stack(workdir)
        for mode in MODES:  # warm: first edits load the boundary into the editor's cache
            interactive(stack[f"editor-{mode}"], 20.0, 0.5, args.steps, 10_000)
        print(f"up in {time.perf_counter() - began:.1f} s", flush=True)
        seed = 0
        for r in range(args.rounds):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for kind in ("idle", "bulk", "mixed"):
                for mode in order:
                    result = phase(kind, stack, mode, args, seed)
                    seed += 1000
                    runs[(mode, kind)].append(result)
                    s = summarize([result])
                    print(f"round {r + 1} {kind:5s} lanes {mode:3s}: edits {s['edits']:4d} p50 {s['p50_ms']} ms "
                          f"p99 {s['p99_ms']} ms, bulk {s['bulk_images_per_s']} images/s, errors {s['errors']}",
                          flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()

    table = {mode: {kind: summarize(runs[(mode, kind)]) for kind in ("idle", "bulk", "mixed")} for mode in MODES}
    on, off = table["on"], table["off"]
    print(f"\n{'lanes':6s} {'idle p50':>9s} {'idle p99':>9s} {'mixed p50':>10s} {'mixed p99':>10s} "
          f"{'bulk alone':>11s} {'bulk mixed':>11s}  (ms; images/s)")
    for mode, row in table.items():
        print(f"{mode:6s} {row['idle']['p50_ms']!s:>9s} {row['idle']['p99_ms']!s:>9s} {row['mixed']['p50_ms']!s:>10s} "
              f"{row['mixed']['p99_ms']!s:>10s} {row['bulk']['bulk_images_per_s']!s:>11s} "
              f"{row['mixed']['bulk_images_per_s']!s:>11s}")
    errors = sum(row[k]["errors"] for row in table.values() for k in row)
    p99_ratio = (on["mixed"]["p99_ms"] or float("inf")) / (on["idle"]["p99_ms"] or float("nan"))
    bulk_ratio = (on["mixed"]["bulk_images_per_s"] or 0.0) / (off["mixed"]["bulk_images_per_s"] or float("nan"))
    baseline_ratio = (off["mixed"]["p99_ms"] or float("inf")) / (off["idle"]["p99_ms"] or float("nan"))
    targets = {
        "lanes_on_mixed_p99_over_idle_p99": at_most(p99_ratio, 2.0),
        "lanes_on_over_off_mixed_bulk_throughput": at_least(bulk_ratio, 0.9),
        "errors": at_most(errors, 0),
    }
    print(f"\nbaseline (lanes off): mixed p99 / idle p99 = {baseline_ratio:.2f}")
    print_targets(targets)
    result = {
        "benchmark": "priority", "quick": args.quick, "table": table,
        "baseline": {"lanes_off_mixed_p99_over_idle_p99": round(baseline_ratio, 3)},
        "targets": targets,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"model": MODEL},
        "environment": {"cpus": multiprocessing.cpu_count(), "python": platform.python_version(),
                        "load_average_at_end": load_average(),
                        "note": "shared 2-core machine; figures pool alternating rounds, ratios within the run count"},
        "seconds": round(time.perf_counter() - began, 1),
    }
    result["settings"]["out"] = str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else args.out.name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
