"""Priority lanes benchmark: interactive edits alone and under a saturating bulk load, lanes on and off.

One run starts Redis, a boundary service and, for each mode, a generator and an editor: one generator with
priority lanes (the default), one with `--no-priority-lanes` (one FIFO queue, the baseline), otherwise the
same settings. Three kinds of slices:

1. idle: an interactive client edits seeds through the editor (Edit of one seed, one attribute, `--steps`
   images, no metadata: Edit's default lane, interactive) at a steady `--rate`, alone;
2. mixed: the same while `--bulk-clients` closed-loop clients (a process of their own per mode) send Synthesize
   calls of `--bulk-codes` codes (raw pixels, `ifgan-priority: bulk`) straight to the generator, enough to
   keep its queue full;
3. bulk: the bulk load alone.

The machine is shared and its load drifts by the minute, so the slices are short and interleaved: each round
runs idle, mixed and bulk slices of `--seconds` for one mode, then for the other (the mode order alternates
by round); before an idle slice the bulk load pauses and the generator's queue drains. Each figure pools its
mode's slices over `--rounds` rounds: p50 / p99 of the interactive edits (idle and mixed), bulk images/s
(alone and mixed).

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
import multiprocessing
import platform
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, at_most, load_average, percentile_ms, print_targets, write_result  # noqa: E402
from interfacegan import codec  # noqa: E402
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,  # noqa: E402
                             generator_pb2, generator_pb2_grpc)
from services.cluster import RedisProcess, ServiceProcess, free_port  # noqa: E402
from services.common.batching import LANE_METADATA  # noqa: E402

MODEL = "dcgan-digiface-64"
Z = common_pb2.LATENT_SPACE_Z
ATTRIBUTE = "priority-load"  # a random boundary of the default model, imported by the bench
MODES = {"on": [], "off": ["--no-priority-lanes"]}


# -- the bulk load (its own process) --------------------------------------------------------------------------

def bulk_load(address: str, clients: int, codes: int, state, window, ready, out) -> None:
    """Closed-loop bulk Synthesize clients, paused while `state` is 0 and stopped when it is 2; images answered
    while `window` holds a slice number count for that slice. Puts ({slice: images}, errors) on `out`."""

    async def main():
        rng = np.random.default_rng(7)
        request = generator_pb2.SynthesizeRequest(
            codes=codec.latents(rng.standard_normal((codes, 100)).astype(np.float32), Z),
            format=common_pb2.IMAGE_FORMAT_RAW)
        counted: dict[int, int] = {}
        errors: list[str] = []

        async def client(stub):
            while state.value != 2:
                if state.value == 0:
                    await asyncio.sleep(0.02)
                    continue
                try:
                    async for reply in stub.Synthesize(request, timeout=120, metadata=((LANE_METADATA, "bulk"),)):
                        if window.value >= 0:
                            counted[window.value] = counted.get(window.value, 0) + len(reply.images)
                except grpc.aio.AioRpcError as e:
                    errors.append(f"{e.code().name}: {e.details()[:160]}")
                    await asyncio.sleep(0.05)

        async with grpc.aio.insecure_channel(address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            await channel.channel_ready()
            ready.set()
            await asyncio.gather(*(client(stub) for _ in range(clients)))
        return counted, errors

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


class Bulk:
    """The bulk load of one mode: a process of its own, paused, resumed and counted per slice."""

    def __init__(self, address: str, args):
        ctx = multiprocessing.get_context("spawn")
        self.state, self.window = ctx.Value("i", 0), ctx.Value("i", -1)
        ready, self.results = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=bulk_load, args=(address, args.bulk_clients, args.bulk_codes, self.state,
                                                        self.window, ready, self.results), daemon=True)
        self.proc.start()
        if not ready.wait(120):
            raise RuntimeError("the bulk load did not connect within 120 s")

    def finish(self) -> tuple[dict, list]:
        self.state.value = 2
        counted, errors = self.results.get(timeout=300)
        self.proc.join(30)
        return counted, errors


def queue_depth(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r"^ifgan_batch_queue_depth\{[^}]*\} ([0-9.e+-]+)$", text, re.M))


def run_slices(stack: dict, mode: str, bulk: Bulk, args, number: int, seed: int) -> dict:
    """One idle, one mixed and one bulk slice of `mode`; returns {kind: {latencies, slice, errors}}."""
    out = {}
    bulk.state.value = 0
    deadline = time.monotonic() + 120
    while queue_depth(stack[f"metrics-{mode}"]) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # the paused load's calls in flight finish first
    time.sleep(0.5)
    latencies, errors = interactive(stack[f"editor-{mode}"], args.rate, args.seconds, args.steps, seed)
    out["idle"] = {"latencies": latencies, "errors": errors, "slice": None, "seconds": 0.0}
    bulk.state.value = 1
    time.sleep(args.warmup)  # the queue fills again
    bulk.window.value, opened = 2 * number, time.perf_counter()
    latencies, errors = interactive(stack[f"editor-{mode}"], args.rate, args.seconds, args.steps, seed + 500)
    bulk.window.value = 2 * number + 1  # the last edit may end after --seconds: the windows keep their own time
    switched = time.perf_counter()
    out["mixed"] = {"latencies": latencies, "errors": errors, "slice": 2 * number, "seconds": switched - opened}
    time.sleep(args.seconds)
    bulk.window.value = -1
    out["bulk"] = {"latencies": [], "errors": [], "slice": 2 * number + 1, "seconds": time.perf_counter() - switched}
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
        generator = ServiceProcess.start("generator", [*common, *flags], log_dir=workdir / "logs" / f"generator-{mode}",
                                         metrics_port=free_port())
        procs.append(generator)
        editor = ServiceProcess.start("editor", common, env={
            "IFGAN_GENERATOR_ADDRESS": generator.address, "IFGAN_BOUNDARY_ADDRESS": boundary.address,
            "IFGAN_SCORER_ADDRESS": "127.0.0.1:1", "IFGAN_INVERSION_ADDRESS": "127.0.0.1:1"},
            log_dir=workdir / "logs" / f"editor-{mode}")
        procs.append(editor)
        addresses[f"generator-{mode}"], addresses[f"editor-{mode}"] = generator.address, editor.address
        addresses[f"metrics-{mode}"] = generator.metrics_port
    for p in procs[1:]:
        p.wait_serving(300)
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(1).standard_normal((1, 100)))
    with grpc.insecure_channel(boundary.address) as channel:
        boundary_pb2_grpc.BoundaryServiceStub(channel).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
            model=MODEL, attribute=ATTRIBUTE, space=Z, npy=buf.getvalue()), timeout=30)
    return addresses, procs


def summarize(runs: list[dict], counted: dict) -> dict:
    latencies = [x for r in runs for x in r["latencies"]]
    slices = [r["slice"] for r in runs if r["slice"] is not None]
    seconds = sum(r["seconds"] for r in runs)
    return {"edits": len(latencies), "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
            "bulk_images_per_s": round(sum(counted.get(i, 0) for i in slices) / seconds, 1) if slices else None,
            "errors": sum(len(r["errors"]) for r in runs),
            "error_samples": sorted({e for r in runs for e in r["errors"]})[:3]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes (the test's run)")
    p.add_argument("--rounds", type=int, default=6, help="rounds of idle, mixed and bulk slices of both modes")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds of one slice")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of bulk load before a mixed slice counts")
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
    counted: dict = {m: {} for m in MODES}
    bulk_errors: dict = {m: [] for m in MODES}
    bulks: dict = {}
    try:
        stack, procs = start_stack(workdir)
        for mode in MODES:  # warm: first edits load the boundary into the editor's cache
            interactive(stack[f"editor-{mode}"], 20.0, 0.5, args.steps, 10_000)
            bulks[mode] = Bulk(stack[f"generator-{mode}"], args)
        print(f"up in {time.perf_counter() - began:.1f} s", flush=True)
        number = 0
        for r in range(args.rounds):
            for mode in (list(MODES) if r % 2 == 0 else list(reversed(MODES))):
                slices = run_slices(stack, mode, bulks[mode], args, number, 1000 * (number + 1))
                number += 1
                for kind, result in slices.items():
                    runs[(mode, kind)].append(result)
                print(f"round {r + 1} lanes {mode:3s}: " + "; ".join(
                    f"{kind} p50 {percentile_ms(res['latencies'], 50)} p99 {percentile_ms(res['latencies'], 99)} ms"
                    for kind, res in slices.items() if kind != "bulk"), flush=True)
        for mode, bulk in bulks.items():
            counted[mode], bulk_errors[mode] = bulk.finish()
    finally:
        for bulk in bulks.values():
            if bulk.proc.is_alive():
                bulk.proc.kill()
        for proc in reversed(procs):
            proc.stop()

    table = {mode: {kind: summarize(runs[(mode, kind)], counted[mode])
                    for kind in ("idle", "bulk", "mixed")} for mode in MODES}
    for mode in MODES:
        table[mode]["bulk"]["errors"] += len(bulk_errors[mode])
        table[mode]["bulk"]["error_samples"] = sorted(set(bulk_errors[mode]))[:3]
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
                        "note": "shared 2-core machine; figures pool interleaved slices, ratios within the run count"},
        "seconds": round(time.perf_counter() - began, 1),
    }
    result["settings"]["out"] = str(args.out.relative_to(ROOT)) if args.out.is_relative_to(ROOT) else args.out.name
    write_result(args.out, result)
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
