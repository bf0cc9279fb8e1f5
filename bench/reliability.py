"""Reliability load test: mixed RPCs against a real local cluster, at its measured capacity, then overload.

Starts Redis and the five services (`services.cluster`), plus a capacity-limited replica of every service
(generator, scorer and inversion with a small `--max-queue-size`, boundary and editor with a small
`--max-concurrent-rpcs`). The mix: generator Synthesize (4 codes, PNG), scorer Score (2 faces), boundary
EditLatents (4 codes x 5 steps), editor Edit (a seed, 4 steps, re-scored every other call) and inversion
Invert (a generated face, 20 steps). Every RPC of the mix has client threads of its own (spread over
`--processes` processes), so a slow RPC does not pace the others. Then, in order:

1. warm-up: `--clients` threads per RPC, closed loop; its errors count like any other;
2. capacity: `--capacity-clients` threads per RPC, closed loop with no pause: the OK calls per second of
   each RPC when all of them saturate the cluster together, its measured capacity for this mix;
3. load: each RPC offered at `--load-fraction` (default 0.8) of its measured capacity, open loop (calls
   start on a fixed schedule, whatever the latency; up to `--load-clients` in flight per RPC):
   throughput, p50 / p99 latency, errors (the target is none), the calls that ended OK against the calls
   the schedule made due (calls that fall behind are made late, and those still due at the end are missed),
   and the services' resident memory (VmRSS of /proc/PID/status) after warm-up and at the end;
4. overload, every service in turn: `--overload-clients` threads with no pause against its capacity-limited
   replica: what exceeds its limit (the queue of generator, scorer and inversion, the concurrent-call limit
   of boundary and editor, set above half the overload clients, see `limits`) must be refused at once with RESOURCE_EXHAUSTED and a RetryInfo, every other
   call must succeed, nothing else (no timeouts, no INTERNAL).

Every reply is checked (the number of images, results, codes or steps asked for, a final inversion message
with a code); a wrong reply, and any exception in a client, counts as an error and is kept.

Targets: zero errors in warm-up and under load; under load at least 95% of the scheduled calls made and
answered OK (a cluster that cannot hold 80% of its own measured capacity fails it, one that can passes with the
margin the scheduling jitter of a shared machine needs); overload refused cleanly on every service; memory
growth under 10% over the loaded minutes (measured growth 0.5% in earlier runs: a real leak of a few MiB a
minute shows, allocator noise does not); every service SERVING at the end.

Prints a table and writes bench/results/reliability.json with the table and `targets`.
`--quick` runs seconds instead of minutes (used by tests/reliability/test_bench.py); `--attach DIR` loads a
cluster already running instead of starting one.
"""

from __future__ import annotations

import argparse
import io
import json
import math
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

from bench.harness import at_least, at_most, load_average, print_targets, proc_memory_mb  # noqa: E402
from interfacegan import codec  # noqa: E402
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,  # noqa: E402
                             generator_pb2, generator_pb2_grpc, inversion_pb2, inversion_pb2_grpc, scorer_pb2,
                             scorer_pb2_grpc)
from services.cluster import SERVICES, Cluster, ServiceProcess, check_health  # noqa: E402
from services.common import errors  # noqa: E402

MODEL = "dcgan-digiface-64"
Z = common_pb2.LATENT_SPACE_Z
LOAD_ATTRIBUTE = "reliability-load"  # a random boundary of the default model, imported by the bench
#: RPC of the mix -> the service it calls.
MIX = {"synthesize": "generator", "score": "scorer", "edit_latents": "boundary", "edit": "editor",
       "invert": "inversion"}
#: What floods each service's capacity-limited replica.
OVERLOAD = {"generator": "synthesize_16", "scorer": "score", "boundary": "edit_latents", "inversion": "invert",
            "editor": "edit"}


def limits(overload_clients: int) -> dict[str, list[str]]:
    """The capacity-limited replicas' flags. Boundary and editor refuse every call past their concurrent-call
    limit with a retry hint; the limit is about half the overload clients, so the flood meets it."""
    calls = str(overload_clients // 2 + 1)
    return {"generator": ["--max-queue-size", "4", "--max-batch-size", "16"],
            "scorer": ["--max-queue-size", "2", "--max-batch-size", "4"],
            "inversion": ["--max-queue-size", "2", "--max-batch-size", "2"],
            "boundary": ["--max-concurrent-rpcs", calls], "editor": ["--max-concurrent-rpcs", calls]}
MISSED = "MISSED_SLOT"  # a call of the open loop's schedule that was due but never made (the load fell behind)
MEMORY_GROWTH_TARGET_PCT = 10.0
MIN_ACHIEVED_OVER_OFFERED = 0.95


# -- clients (run in their own processes) ---------------------------------------------------------------------

def _requests(faces: list[bytes], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    codes = codec.latents(rng.standard_normal((4, 100)).astype(np.float32), Z)
    return {
        "synthesize": generator_pb2.SynthesizeRequest(codes=codes),
        "score": scorer_pb2.ScoreRequest(images=[common_pb2.Image(encoded=f) for f in faces[:2]]),
        "edit_latents": boundary_pb2.EditLatentsRequest(codes=codes, edits=[boundary_pb2.Edit(
            boundary=common_pb2.BoundaryRef(model=MODEL, attribute=LOAD_ATTRIBUTE, space=Z), start=-2, end=2,
            steps=5)]),
        "invert": inversion_pb2.InvertRequest(image=common_pb2.Image(encoded=faces[seed % len(faces)]),
                                              space=Z, max_steps=20),
        "synthesize_16": generator_pb2.SynthesizeRequest(codes=codec.latents(rng.standard_normal((16, 100)).astype(np.float32), Z), format=common_pb2.IMAGE_FORMAT_RAW),
    }


def _edit_request(seed: int, rescore: bool) -> editor_pb2.EditRequest:
    return editor_pb2.EditRequest(seed=seed, rescore=rescore, edits=[
        editor_pb2.AttributeEdit(attribute=LOAD_ATTRIBUTE, start=-2, end=2, steps=4)])


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def call_and_check(stubs: dict, kind: str, requests: dict, i: int, seed: int, deadline: float) -> None:
    """One call of `kind`; raises grpc.RpcError, or AssertionError when the reply is not what was asked."""
    if kind in ("synthesize", "synthesize_16"):
        want = 4 if kind == "synthesize" else 16
        got = [im for r in stubs["generator"].Synthesize(requests[kind], timeout=deadline) for im in r.images]
        _expect(len(got) == want, f"{len(got)} images for {want} codes")
        if kind == "synthesize_16":
            _expect(all(len(im.raw.data) == 64 * 64 * 3 for im in got), "raw image of the wrong size")
        else:
            _expect(all(im.encoded[:4] == b"\x89PNG" for im in got), "image is not a PNG")
    elif kind == "score":
        results = [res for r in stubs["scorer"].Score(requests[kind], timeout=deadline) for res in r.results]
        _expect(len(results) == 2 and all(len(res.scores) > 0 for res in results),
                f"{len(results)} score results for 2 images")
    elif kind == "edit_latents":
        shape = list(stubs["boundary"].EditLatents(requests[kind], timeout=deadline).codes.codes.shape)
        _expect(shape == [4, 1, 5, 100], f"edited codes of shape {shape}, expected [4, 1, 5, 100]")
    elif kind == "edit":
        rescore = i % 2 == 0
        replies = list(stubs["editor"].Edit(_edit_request(seed * 1000 + i, rescore), timeout=deadline))
        edited = [r for r in replies if r.edit_index >= 0 and r.HasField("image")]
        _expect(len(edited) == 4, f"{len(edited)} edited images for 4 steps")
        _expect(not rescore or all(len(r.scores) > 0 for r in edited), "re-scored edit without scores")
    elif kind == "invert":
        replies = list(stubs["inversion"].Invert(requests[kind], timeout=deadline))
        _expect(bool(replies) and replies[-1].final, "no final inversion message")
        _expect(list(replies[-1].code.codes.shape) == [1, 100], "inversion code of the wrong shape")
    else:
        raise ValueError(f"unknown call {kind}")


def client_process(args: dict) -> list[tuple]:
    """One process: for each (kind, threads, rate) of the plan, `threads` client threads until `until`.

    rate None: closed loop (one call in flight per thread, no pause); else the kind's calls are due on a fixed
    schedule of `rate` calls/s over its threads (open loop; a thread that falls behind starts its next call at
    once; calls still due when the phase ends are recorded as missed). Returns records (rpc, start, seconds,
    status, retry_info).
    """
    addresses, plan, until, faces, seed, deadline = (
        args["addresses"], args["plan"], args["until"], args["faces"], args["seed"], args["deadline"])
    channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
    stubs = {"generator": generator_pb2_grpc.GeneratorServiceStub(channels["generator"]),
             "scorer": scorer_pb2_grpc.ScorerServiceStub(channels["scorer"]),
             "boundary": boundary_pb2_grpc.BoundaryServiceStub(channels["boundary"]),
             "editor": editor_pb2_grpc.EditorServiceStub(channels["editor"]),
             "inversion": inversion_pb2_grpc.InversionServiceStub(channels["inversion"])}
    records: list[tuple] = []
    lock = threading.Lock()
    began = time.time()

    def client(kind: str, k: int, threads: int, rate: float | None) -> None:
        mine: list[tuple] = []
        try:
            requests = _requests(faces, seed * 100 + k)
            interval = threads / rate if rate else 0.0
            first = began + k * interval / threads
            i = j = k
            while True:
                if rate:  # open loop: the j-th call of this thread is due at first + j * interval
                    slot = first + (j - k) * interval
                    now = time.time()
                    if slot >= until:
                        break
                    if now >= until:  # behind schedule at the end: the calls still due were never made
                        mine.extend([(kind, now, 0.0, MISSED, False)] * math.ceil((until - slot) / interval))
                        break
                    if now < slot:
                        time.sleep(slot - now)
                    j += 1  # a late thread starts at once and catches up (the schedule is not shifted)
                elif time.time() >= until and i != k:  # closed loop: at least one call per thread
                    break
                started = time.time()
                t0 = time.perf_counter()
                try:
                    call_and_check(stubs, kind, requests, i, seed, deadline)
                    status, retry = "OK", False
                except grpc.RpcError as e:
                    status, retry = e.code().name, errors.status_details(e).get("retry_after") is not None
                except AssertionError as e:
                    status, retry = f"WRONG_REPLY: {e}", False
                except Exception as e:  # noqa: BLE001 - any failure of a call is an error, never dropped
                    status, retry = f"EXCEPTION: {type(e).__name__}: {e}", False
                mine.append((kind, started, time.perf_counter() - t0, status, retry))
                i += threads
        except Exception as e:  # noqa: BLE001 - a dying client thread is an error too
            mine.append((kind, time.time(), 0.0, f"CLIENT_CRASH: {type(e).__name__}: {e}", False))
        finally:
            with lock:
                records.extend(mine)

    workers = [threading.Thread(target=client, args=(kind, k, threads, rate))
               for kind, threads, rate in plan for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for channel in channels.values():
        channel.close()
    return records


def ready(_: int) -> bool:
    """A no-op a pool worker runs once, so its imports are done before any phase's clock starts."""
    return True


def run_phase(pool, addresses: dict, plan: list[tuple], seconds: float, processes: int, faces, deadline: float):
    """Runs a plan [(kind, threads, rate or None)] spread over `processes` processes for `seconds`.

    Returns (records, seconds). Each kind's threads (and rate) are split evenly over the processes.
    """
    until = time.time() + seconds
    jobs = []
    for p in range(processes):
        part = []
        for kind, threads, rate in plan:
            n = threads // processes + (1 if p < threads % processes else 0)
            if n:
                part.append((kind, n, rate * n / threads if rate else None))
        if part:
            jobs.append({"addresses": addresses, "plan": part, "until": until, "faces": faces, "seed": p + 1,
                         "deadline": deadline})
    results = pool.map(client_process, jobs)
    return [r for part in results for r in part], seconds


# -- measurements ---------------------------------------------------------------------------------------------

def summarise(records: list[tuple], seconds: float) -> dict:
    """Per-RPC counts and latencies; rates are calls started in the phase's `seconds` that ended OK."""
    missed = [r for r in records if r[3] == MISSED]
    records = [r for r in records if r[3] != MISSED]
    out = {"requests": len(records), "seconds": round(seconds, 2), "missed_slots": len(missed),
           "throughput_rps": round(sum(r[3] == "OK" for r in records) / seconds, 2) if seconds else 0.0,
           "per_rpc": {}, "status": {}}
    for status in sorted({r[3].split(":")[0] for r in records}):
        out["status"][status] = sum(r[3].split(":")[0] == status for r in records)
    for kind in sorted({r[0] for r in records}):
        mine = [r for r in records if r[0] == kind]
        ok = np.array([r[2] for r in mine if r[3] == "OK"]) * 1000
        refused = np.array([r[2] for r in mine if r[3] != "OK"]) * 1000
        odd = sorted({r[3] for r in mine if r[3] != "OK" and r[3] != "RESOURCE_EXHAUSTED"})
        out["per_rpc"][kind] = {
            "requests": len(mine), "ok": int(len(ok)), "errors": len(mine) - int(len(ok)),
            "rps": round(len(ok) / seconds, 2) if seconds else 0.0,
            "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
            "p99_ms": round(float(np.percentile(ok, 99)), 1) if len(ok) else None,
            "refused_p99_ms": round(float(np.percentile(refused, 99)), 1) if len(refused) else None,
            "resource_exhausted": sum(1 for r in mine if r[3] == "RESOURCE_EXHAUSTED"),
            "refused_with_retry_info": sum(1 for r in mine if r[3] == "RESOURCE_EXHAUSTED" and r[4]),
            "missed_slots": sum(1 for r in missed if r[0] == kind),
            "other_errors": odd[:3]}
    return out


def faces_from(generator_address: str, count: int = 4) -> list[bytes]:
    with grpc.insecure_channel(generator_address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        codes = codec.latents(np.random.default_rng(0).standard_normal((count, 100)).astype(np.float32), Z)
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="seconds instead of minutes (the test's run)")
    p.add_argument("--warmup", type=float, default=30.0, help="warm-up seconds")
    p.add_argument("--capacity-seconds", type=float, default=60.0, help="seconds of the capacity measurement")
    p.add_argument("--duration", type=float, default=120.0, help="measured seconds at the load fraction")
    p.add_argument("--overload", type=float, default=15.0, help="seconds of overload per service")
    p.add_argument("--clients", type=int, default=2, help="warm-up client threads per RPC")
    p.add_argument("--capacity-clients", type=int, default=6,
                   help="client threads per RPC that saturate the cluster (and the most in flight under load)")
    p.add_argument("--load-clients", type=int, default=0,
                   help="client threads per RPC under load, the most calls in flight (0: 3 x --capacity-clients, "
                        "so latency spikes do not make the open loop miss its schedule)")
    p.add_argument("--load-fraction", type=float, default=0.8, help="offered load, as a fraction of capacity")
    p.add_argument("--processes", type=int, default=4, help="client processes the threads are spread over")
    p.add_argument("--overload-clients", type=int, default=24, help="client threads of each overload phase")
    p.add_argument("--deadline", type=float, default=30.0, help="deadline of every call, seconds")
    p.add_argument("--attach", type=Path, default=None,
                   help="run against the cluster already running from this folder (its cluster.json, as written by "
                        "`python -m services.cluster up --dir DIR`) instead of starting one")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json", help="results file")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.capacity_seconds, args.duration, args.overload = 3.0, 5.0, 6.0, 3.0
        args.clients, args.capacity_clients, args.processes, args.overload_clients = 1, 2, 2, 12

    flags = limits(args.overload_clients)
    workdir = Path(tempfile.mkdtemp(prefix="ifgan-reliability-"))
    began = time.perf_counter()
    print(f"starting the cluster in {workdir} ...", flush=True)
    cluster = None
    limited: dict[str, ServiceProcess] = {}
    try:
        if args.attach:
            state = json.loads((args.attach / "cluster.json").read_text())
            addresses = {name: f"127.0.0.1:{info['port']}" for name, info in state["services"].items()}
            pids = {name: info["pid"] for name, info in state["services"].items()}
            redis_url = f"redis://127.0.0.1:{state['redis']['port']}/0"
        else:
            cluster = Cluster.up(workdir, fixed_ports=False, log=lambda *_: None,
                                 extra_args={name: ["--drain-seconds", "0"] for name in SERVICES})
            addresses = {name: proc.address for name, proc in cluster.services.items()}
            pids = {name: proc.pid for name, proc in cluster.services.items()}
            redis_url = cluster.redis.url
        # The capacity-limited replicas call the cluster's services.
        wiring = {"IFGAN_REDIS_URL": redis_url, "IFGAN_DATA_DIR": str(workdir / "data-limited"),
                  **{f"IFGAN_{n.upper()}_ADDRESS": a for n, a in addresses.items()}}
        for name in OVERLOAD:
            limited[name] = ServiceProcess.start(name, [*flags[name], "--drain-seconds", "0", "--log-level",
                                                        "WARNING"], env=wiring, log_dir=workdir / "logs" / "limited")
        for proc in limited.values():
            proc.wait_serving(300)
        import_boundary(addresses["boundary"])
        faces = faces_from(addresses["generator"])
        print(f"cluster and limited replicas up in {time.perf_counter() - began:.1f} s", flush=True)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.processes) as pool:
            pool.map(ready, range(args.processes))
            def phase(name: str, plan: list, seconds: float, where: dict, processes: int = args.processes):
                print(f"{name}: {seconds:.0f} s, {sum(t for _, t, _ in plan)} threads ...", flush=True)
                return run_phase(pool, where, plan, seconds, processes, faces, args.deadline)

            warm_records, warm_seconds = phase("warm-up", [(k, args.clients, None) for k in MIX], args.warmup,
                                               addresses)
            cap_records, cap_seconds = phase("capacity", [(k, args.capacity_clients, None) for k in MIX],
                                             args.capacity_seconds, addresses)
            capacity = summarise(cap_records, cap_seconds)
            load_clients = args.load_clients or 3 * args.capacity_clients
            offered = {k: args.load_fraction * capacity["per_rpc"].get(k, {}).get("rps", 0.0) for k in MIX}
            memory_before = {name: proc_memory_mb(pid) for name, pid in pids.items()}
            load_records, load_seconds = phase(
                f"load at {args.load_fraction:.0%} of capacity",
                [(k, load_clients, max(offered[k], 0.05)) for k in MIX], args.duration, addresses)
            memory_after = {name: proc_memory_mb(pid) for name, pid in pids.items()}
            overloads = {}
            for name, kind in OVERLOAD.items():
                where = {**addresses, name: limited[name].address}
                recs, secs = phase(f"overload {name}", [(kind, args.overload_clients, None)], args.overload, where)
                overloads[name] = summarise(recs, secs)
        healthy = {name: check_health(address) for name, address in addresses.items()}
        healthy.update({f"{name} (limited)": check_health(p.address) for name, p in limited.items()})
    finally:
        for proc in limited.values():
            proc.stop()
        if cluster is not None:
            cluster.down()
    print(f"done in {time.perf_counter() - began:.1f} s", flush=True)

    warm = summarise(warm_records, warm_seconds)
    load = summarise(load_records, load_seconds)
    memory = {name: {"after_warmup_mb": round(memory_before[name], 1), "end_mb": round(memory_after[name], 1),
                     "growth_pct": round(100 * (memory_after[name] - memory_before[name]) / memory_before[name], 2)}
              for name in pids}
    # Achieved over offered: OK calls over the slots the schedule made due (calls started plus slots missed).
    due = {k: load["per_rpc"].get(k, {}).get("requests", 0) + load["per_rpc"].get(k, {}).get("missed_slots", 0)
           for k in MIX}
    ratio = min(load["per_rpc"].get(k, {}).get("ok", 0) / due[k] if due[k] else 0.0 for k in MIX)
    targets = {
        "warmup_errors": at_most(warm["requests"] - warm["status"].get("OK", 0), 0),
        "load_errors": at_most(load["requests"] - load["status"].get("OK", 0), 0),
        "load_achieved_over_offered_min": at_least(ratio, MIN_ACHIEVED_OVER_OFFERED),
    }
    for name, summary in overloads.items():
        row = summary["per_rpc"].get(OVERLOAD[name], {})
        refused, served = row.get("resource_exhausted", 0), row.get("ok", 0)
        unclean = row.get("requests", 0) - refused - served
        targets[f"overload_{name}_refused"] = at_least(refused, 1)
        targets[f"overload_{name}_served"] = at_least(served, 1)
        targets[f"overload_{name}_other_errors"] = at_most(unclean, 0)
        targets[f"overload_{name}_refusals_without_retry_info"] = at_most(
            refused - row.get("refused_with_retry_info", 0), 0)
    growth = max(m["growth_pct"] for m in memory.values())
    targets["memory_growth_max_pct"] = at_most(growth, MEMORY_GROWTH_TARGET_PCT)
    targets["all_serving_after"] = at_least(sum(v == "SERVING" for v in healthy.values()), len(healthy))
    table = []
    for phase_name, summary in (("warm-up", warm), ("capacity", capacity), ("load", load),
                                *((f"overload {n}", s) for n, s in overloads.items())):
        for kind, row in summary["per_rpc"].items():
            extra = {"offered_rps": round(offered[kind], 2)} if phase_name == "load" else {}
            table.append({"phase": phase_name, "rpc": kind, **row, **extra})
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "attach")},  # no machine paths
        "limits": flags,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": load_average()},
        "warmup": warm, "capacity": capacity, "load": load, "offered_rps": offered, "overload": overloads,
        "memory": memory, "health_after": healthy, "table": table, "targets": targets,
    }
    if args.out.exists():  # bench/burst.py's "burst" section and burst_* targets live in this file too: kept
        previous = json.loads(args.out.read_text())
        result = {**{k: v for k, v in previous.items() if k not in result}, **result}
        result["targets"] = {**targets, **{k: v for k, v in previous.get("targets", {}).items()
                                           if k.startswith("burst_")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'phase':18s} {'rpc':13s} {'requests':>8s} {'ok':>6s} {'errors':>6s} {'rps':>7s} {'offered':>7s} "
          f"{'p50 ms':>8s} {'p99 ms':>8s} {'refused':>7s} {'w/ retry':>8s}")
    for row in table:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"{row['phase']:18s} {row['rpc']:13s} {row['requests']:8d} {row['ok']:6d} {row['errors']:6d} "
              f"{row['rps']:7.1f} {fmt(row.get('offered_rps')):>7s} {fmt(row['p50_ms']):>8s} {fmt(row['p99_ms']):>8s} "
              f"{row['resource_exhausted']:7d} {row['refused_with_retry_info']:8d}")
        if row["other_errors"]:
            print(f"    {row['other_errors']}")
    print(f"\nload: {load['throughput_rps']} OK calls/s at {args.load_fraction:.0%} of the measured capacity "
          f"({capacity['throughput_rps']} OK calls/s), statuses {load['status']}")
    print("memory (MiB, after warm-up -> end): " + ", ".join(
        f"{n} {m['after_warmup_mb']:.0f}->{m['end_mb']:.0f} ({m['growth_pct']:+.1f}%)" for n, m in memory.items()))
    print("targets:")
    print_targets(targets)
    print(f"wrote {args.out}")
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
