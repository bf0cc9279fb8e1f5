"""Reliability load test: mixed RPCs from many client processes against a real local cluster, then overload.

Starts Redis and the five services (`services.cluster`), plus one extra generator with a small
`--max-queue-size` (the capacity-limited replica). Then, in order:

1. warm-up: `--clients` client threads spread over `--processes` processes send a mix of RPCs in turn:
   generator Synthesize (4 codes, PNG), scorer Score (2 faces), boundary EditLatents (4 codes x 5 steps),
   editor Edit (a seed, 4 steps, re-scored every other call), inversion Invert (a generated face, 20 steps),
   each with a deadline;
2. steady: the same load, measured: throughput, p50 / p99 latency per RPC, errors (the target is none: the
   load stays below capacity, each client has one call in flight); the services' resident memory (VmRSS of
   /proc/PID/status) after warm-up and at the end: growth under 10% is the target;
3. overload: `--overload-clients` clients send Synthesize (16 codes) to the capacity-limited generator with no
   pause: what exceeds its queue must be refused at once with RESOURCE_EXHAUSTED and a RetryInfo, every other
   call must succeed, nothing else (no timeouts, no INTERNAL).

Prints a table and writes bench/results/reliability.json with the table and `targets`.
`--quick` runs seconds instead of minutes (used by tests/reliability/test_bench.py); `--attach DIR` loads a
cluster already running instead of starting one.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,  # noqa: E402
                             generator_pb2, generator_pb2_grpc, inversion_pb2, inversion_pb2_grpc, scorer_pb2,
                             scorer_pb2_grpc)
from services.cluster import SERVICES, Cluster, ServiceProcess, check_health  # noqa: E402
from services.common import errors, tensors  # noqa: E402

MODEL = "dcgan-digiface-64"
Z = common_pb2.LATENT_SPACE_Z
LOAD_ATTRIBUTE = "reliability-load"  # a random boundary of the default model, imported by the bench
MIX = ("synthesize", "score", "edit_latents", "edit", "invert")
MEMORY_GROWTH_TARGET_PCT = 10.0


# -- clients (run in their own processes) ---------------------------------------------------------------------

def _requests(faces: list[bytes], seed: int):
    rng = np.random.default_rng(seed)
    codes = tensors.latents_from_numpy(Z, rng.standard_normal((4, 100)).astype(np.float32))
    return {
        "synthesize": generator_pb2.SynthesizeRequest(codes=codes),
        "score": scorer_pb2.ScoreRequest(images=[common_pb2.Image(encoded=f) for f in faces[:2]]),
        "edit_latents": boundary_pb2.EditLatentsRequest(codes=codes, edits=[boundary_pb2.Edit(
            boundary=common_pb2.BoundaryRef(model=MODEL, attribute=LOAD_ATTRIBUTE, space=Z), start=-2, end=2,
            steps=5)]),
        "invert": inversion_pb2.InvertRequest(image=common_pb2.Image(encoded=faces[seed % len(faces)]),
                                              space=Z, max_steps=20),
        "overload": generator_pb2.SynthesizeRequest(codes=tensors.latents_from_numpy(
            Z, rng.standard_normal((16, 100)).astype(np.float32)), format=common_pb2.IMAGE_FORMAT_RAW),
    }


def _edit_request(seed: int, rescore: bool) -> editor_pb2.EditRequest:
    return editor_pb2.EditRequest(seed=seed, rescore=rescore, edits=[
        editor_pb2.AttributeEdit(attribute=LOAD_ATTRIBUTE, start=-2, end=2, steps=4)])


def client_process(args: dict) -> list[tuple]:
    """One process: `threads` clients, each with one call in flight until `until` (time.time()).

    Returns records (rpc, start, seconds, status, retry_info) with start in time.time() seconds.
    """
    addresses, kinds, until, threads, faces, seed, deadline = (
        args["addresses"], args["kinds"], args["until"], args["threads"], args["faces"], args["seed"], args["deadline"])
    channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
    stubs = {"generator": generator_pb2_grpc.GeneratorServiceStub(channels["generator"]),
             "scorer": scorer_pb2_grpc.ScorerServiceStub(channels["scorer"]),
             "boundary": boundary_pb2_grpc.BoundaryServiceStub(channels["boundary"]),
             "editor": editor_pb2_grpc.EditorServiceStub(channels["editor"]),
             "inversion": inversion_pb2_grpc.InversionServiceStub(channels["inversion"]),
             "overload": generator_pb2_grpc.GeneratorServiceStub(channels["overload"])}
    records: list[tuple] = []
    lock = threading.Lock()

    def call(kind: str, requests: dict, i: int):
        if kind == "synthesize":
            return sum(len(r.images) for r in stubs["generator"].Synthesize(requests[kind], timeout=deadline))
        if kind == "score":
            return sum(len(r.results) for r in stubs["scorer"].Score(requests[kind], timeout=deadline))
        if kind == "edit_latents":
            return stubs["boundary"].EditLatents(requests[kind], timeout=deadline).codes.codes.shape[0]
        if kind == "edit":
            return len(list(stubs["editor"].Edit(_edit_request(seed * 1000 + i, i % 2 == 0), timeout=deadline)))
        if kind == "invert":
            return len(list(stubs["inversion"].Invert(requests[kind], timeout=deadline)))
        return sum(len(r.images) for r in stubs["overload"].Synthesize(requests[kind], timeout=deadline))

    def client(k: int):
        requests = _requests(faces, seed * 100 + k)
        mine, i = [], k  # clients start at different points of the mix
        while time.time() < until:
            kind = kinds[i % len(kinds)]
            started = time.time()
            t0 = time.perf_counter()
            try:
                call(kind, requests, i)
                status, retry = "OK", False
            except grpc.RpcError as e:
                status, retry = e.code().name, errors.status_details(e).get("retry_after") is not None
            mine.append((kind, started, time.perf_counter() - t0, status, retry))
            i += 1
        with lock:
            records.extend(mine)

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for channel in channels.values():
        channel.close()
    return records


def run_phase(pool, addresses: dict, kinds, seconds: float, clients: int, processes: int, faces, deadline: float):
    """Runs `clients` client threads over `processes` processes for `seconds`; returns (records, wall seconds)."""
    until = time.time() + seconds
    per = [clients // processes + (1 if p < clients % processes else 0) for p in range(processes)]
    jobs = [{"addresses": addresses, "kinds": kinds, "until": until, "threads": n, "faces": faces, "seed": p + 1,
             "deadline": deadline} for p, n in enumerate(per) if n]
    started = time.time()
    results = pool.map(client_process, jobs)
    return [r for part in results for r in part], time.time() - started


# -- measurements ---------------------------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summarise(records: list[tuple], seconds: float) -> dict:
    out = {"requests": len(records), "seconds": round(seconds, 2),
           "throughput_rps": round(len(records) / seconds, 2) if seconds else 0.0, "per_rpc": {}, "status": {}}
    for status in sorted({r[3] for r in records}):
        out["status"][status] = sum(r[3] == status for r in records)
    for kind in sorted({r[0] for r in records}):
        mine = [r for r in records if r[0] == kind]
        ok = np.array([r[2] for r in mine if r[3] == "OK"]) * 1000
        refused = np.array([r[2] for r in mine if r[3] != "OK"]) * 1000
        out["per_rpc"][kind] = {
            "requests": len(mine), "ok": int(len(ok)), "errors": len(mine) - int(len(ok)),
            "rps": round(len(ok) / seconds, 2) if seconds else 0.0,
            "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
            "p99_ms": round(float(np.percentile(ok, 99)), 1) if len(ok) else None,
            "refused_p99_ms": round(float(np.percentile(refused, 99)), 1) if len(refused) else None,
            "refused_with_retry_info": sum(1 for r in mine if r[3] != "OK" and r[4])}
    return out


def faces_from(generator_address: str, count: int = 4) -> list[bytes]:
    with grpc.insecure_channel(generator_address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        codes = tensors.latents_from_numpy(Z, np.random.default_rng(0).standard_normal((count, 100)).astype(np.float32))
        return [im.encoded for r in stub.Synthesize(generator_pb2.SynthesizeRequest(codes=codes), timeout=60)
                for im in r.images]


def import_boundary(boundary_address: str) -> None:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(1).standard_normal((1, 100)))
    with grpc.insecure_channel(boundary_address) as channel:
        boundary_pb2_grpc.BoundaryServiceStub(channel).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
            model=MODEL, attribute=LOAD_ATTRIBUTE, space=Z, npy=buf.getvalue()), timeout=30)


# -- main -----------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes (the test's run)")
    p.add_argument("--warmup", type=float, default=30.0, help="warm-up seconds")
    p.add_argument("--duration", type=float, default=120.0, help="measured seconds of mixed load")
    p.add_argument("--overload", type=float, default=30.0, help="seconds of the overload phase")
    p.add_argument("--clients", type=int, default=8, help="client threads of the mixed load")
    p.add_argument("--processes", type=int, default=4, help="client processes the clients are spread over")
    p.add_argument("--overload-clients", type=int, default=32, help="clients of the overload phase")
    p.add_argument("--max-queue-size", type=int, default=4, help="queue of the capacity-limited generator")
    p.add_argument("--deadline", type=float, default=30.0, help="deadline of every call, seconds")
    p.add_argument("--attach", type=Path, default=None,
                   help="run against the cluster already running from this folder (its cluster.json, as written by "
                        "`python -m services.cluster up --dir DIR`) instead of starting one")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json", help="results file")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.duration, args.overload = 2.0, 5.0, 3.0
        args.clients, args.processes, args.overload_clients = 4, 2, 16

    workdir = Path(tempfile.mkdtemp(prefix="ifgan-reliability-"))
    began = time.perf_counter()
    print(f"starting the cluster in {workdir} ...", flush=True)
    # The capacity-limited replica loads while the cluster starts.
    limited = ServiceProcess.start("generator", ["--max-queue-size", str(args.max_queue_size),
                                                 "--max-batch-size", "16", "--drain-seconds", "0"],
                                   log_dir=workdir / "logs" / "limited")
    cluster = None
    try:
        if args.attach:
            state = json.loads((args.attach / "cluster.json").read_text())["services"]
            addresses = {name: f"127.0.0.1:{info['port']}" for name, info in state.items()}
            pids = {name: info["pid"] for name, info in state.items()}
        else:
            cluster = Cluster.up(workdir, fixed_ports=False, log=lambda *_: None,
                                 extra_args={name: ["--drain-seconds", "0"] for name in SERVICES})
            addresses = {name: proc.address for name, proc in cluster.services.items()}
            pids = {name: proc.pid for name, proc in cluster.services.items()}
    except BaseException:
        limited.stop()
        raise
    try:
        limited.wait_serving()
        addresses["overload"] = limited.address
        import_boundary(addresses["boundary"])
        faces = faces_from(addresses["generator"])
        print(f"cluster up in {time.perf_counter() - began:.1f} s", flush=True)
        with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
            print(f"warm-up {args.warmup:.0f} s, {args.clients} clients in {args.processes} processes ...", flush=True)
            run_phase(pool, addresses, MIX, args.warmup, args.clients, args.processes, faces, args.deadline)
            memory_before = {name: rss_mb(pid) for name, pid in pids.items()}
            print(f"steady {args.duration:.0f} s ...", flush=True)
            records, seconds = run_phase(pool, addresses, MIX, args.duration, args.clients, args.processes, faces,
                                         args.deadline)
            memory_after = {name: rss_mb(pid) for name, pid in pids.items()}
            print(f"overload {args.overload:.0f} s, {args.overload_clients} clients, queue {args.max_queue_size} ...",
                  flush=True)
            over_records, over_seconds = run_phase(pool, addresses, ("overload",), args.overload,
                                                   args.overload_clients, min(args.processes, args.overload_clients),
                                                   faces, args.deadline)
        healthy = {name: check_health(address) for name, address in addresses.items()}
    finally:
        limited.stop()
        if cluster is not None:
            cluster.down()
    print(f"done in {time.perf_counter() - began:.1f} s", flush=True)

    steady = summarise(records, seconds)
    overload = summarise(over_records, over_seconds)
    memory = {name: {"after_warmup_mb": round(memory_before[name], 1), "end_mb": round(memory_after[name], 1),
                     "growth_pct": round(100 * (memory_after[name] - memory_before[name]) / memory_before[name], 2)}
              for name in pids}
    refused = overload["status"].get("RESOURCE_EXHAUSTED", 0)
    with_retry = overload["per_rpc"].get("overload", {}).get("refused_with_retry_info", 0)
    unclean = sum(v for k, v in overload["status"].items() if k not in ("OK", "RESOURCE_EXHAUSTED"))
    steady_errors = sum(v for k, v in steady["status"].items() if k != "OK")
    growth = max(m["growth_pct"] for m in memory.values())
    targets = {
        "steady_errors": {"value": steady_errors, "target": 0, "met": steady_errors == 0},
        "overload_refused_resource_exhausted": {"value": refused, "target": "> 0", "met": refused > 0},
        "overload_refusals_with_retry_info": {"value": with_retry, "target": refused, "met": with_retry == refused},
        "overload_other_errors": {"value": unclean, "target": 0, "met": unclean == 0},
        "overload_served": {"value": overload["status"].get("OK", 0), "target": "> 0",
                            "met": overload["status"].get("OK", 0) > 0},
        "memory_growth_max_pct": {"value": growth, "target": f"< {MEMORY_GROWTH_TARGET_PCT}",
                                  "met": growth < MEMORY_GROWTH_TARGET_PCT},
        "all_serving_after": {"value": sum(v == "SERVING" for v in healthy.values()), "target": len(healthy),
                              "met": all(v == "SERVING" for v in healthy.values())},
    }
    table = []
    for phase, summary in (("steady", steady), ("overload", overload)):
        for kind, row in summary["per_rpc"].items():
            table.append({"phase": phase, "rpc": kind, **row})
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "steady": steady, "overload": overload, "memory": memory, "health_after": healthy,
        "table": table, "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'phase':9s} {'rpc':13s} {'requests':>8s} {'ok':>6s} {'errors':>6s} {'rps':>7s} {'p50 ms':>8s} "
          f"{'p99 ms':>8s} {'refused p99':>11s}")
    for row in table:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{row['phase']:9s} {row['rpc']:13s} {row['requests']:8d} {row['ok']:6d} {row['errors']:6d} "
              f"{row['rps']:7.1f} {fmt(row['p50_ms']):>8s} {fmt(row['p99_ms']):>8s} {fmt(row['refused_p99_ms']):>11s}")
    print(f"\nsteady: {steady['throughput_rps']} requests/s, statuses {steady['status']}; "
          f"overload: statuses {overload['status']}")
    print("memory (MiB, after warm-up -> end): " + ", ".join(
        f"{n} {m['after_warmup_mb']:.0f}->{m['end_mb']:.0f} ({m['growth_pct']:+.1f}%)" for n, m in memory.items()))
    for name, t in targets.items():
        print(f"target {name:38s} {str(t['value']):>8s}  (target {t['target']})  {'met' if t['met'] else 'NOT MET'}")
    print(f"wrote {args.out}")
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
