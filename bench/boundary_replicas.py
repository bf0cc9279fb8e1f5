"""Boundary training over generator and scorer replicas: 2 generators + 2 scorers against 1 + 1, on loopback.

Starts Redis, two generators, two scorers and two boundary services: "1+1" calls the first generator and
scorer, "2+2" both of each (address lists: gRPC balances their calls round robin, and the boundary keeps
`--pipeline-depth` blocks in flight per replica). Rounds alternate 1+1 and 2+2 (1+1, 2+2, then 2+2, 1+1,
...) and each runs one TrainBoundaries job of `--num-samples` fresh samples (a new seed per job) in blocks of
`--sample-block`. Reported per setup: sampling samples/s (the generate + score pass), pooled over its rounds;
for 2+2, each replica's share of the Synthesize and Score calls (from its /metrics); and the lanes the
generators saw: training samples in the bulk lane.

Targets (bench/results/boundary-replicas.json): every replica of 2+2 takes at least 30% of its service's
calls; the generators queued the training's batches in the bulk lane only; 2+2 keeps at least 0.8 of the
1+1 rate. This machine has 2 shared cores, so four model servers cannot run faster than two: the ratio
shows the overhead of spreading, not a speed-up (on separate machines each replica adds its own capacity).
`--quick` runs a small version (tests/boundary/test_replicas_bench.py).
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import at_least, at_most, load_average, print_targets, write_result  # noqa: E402
from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc  # noqa: E402
from services.cluster import RedisProcess, ServiceProcess, free_port  # noqa: E402

ATTRIBUTES = ["yaw"]


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for found, value in re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def counts(procs: list[ServiceProcess], method: str) -> list[float]:
    return [metric(scrape(p.metrics_port), "ifgan_requests_total", method=method, code="OK") for p in procs]


def train(address: str, n: int, seed: int) -> tuple[float, float]:
    """One fresh TrainBoundaries job; returns (sampling seconds, job seconds)."""
    request = boundary_pb2.TrainBoundariesRequest(request_id=uuid.uuid4().hex, attributes=ATTRIBUTES, num_samples=n,
                                                  chosen_ratio=0.2, seed=seed)
    started, update = time.perf_counter(), None
    with grpc.insecure_channel(address) as channel:
        for update in boundary_pb2_grpc.BoundaryServiceStub(channel).TrainBoundaries(request, timeout=3600):
            pass
    if update is None or update.state != boundary_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"training job failed: {update.error if update else 'no update'}")
    return update.boundaries[0].timings["sampling"], time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small version (the test's run)")
    p.add_argument("--num-samples", type=int, default=1000, help="fresh samples per training job")
    p.add_argument("--sample-block", type=int, default=50, help="codes per sample/synthesize/score call")
    p.add_argument("--rounds", type=int, default=2, help="jobs per setup, alternating")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "boundary-replicas.json",
                   help="results file")
    args = p.parse_args(argv)
    if args.quick:
        args.num_samples, args.sample_block, args.rounds = 200, 25, 1

    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    began = time.perf_counter()
    redis = RedisProcess.start(free_port(), work / "redis")
    procs: list[ServiceProcess] = []

    def start(name: str, flags: list[str], tag: str, env: dict | None = None) -> ServiceProcess:
        proc = ServiceProcess.start(name, ["--log-level", "WARNING", "--drain-seconds", "0", *flags], env=env,
                                    log_dir=work / "logs" / tag, metrics_port=free_port())
        procs.append(proc)
        return proc

    try:
        generators = [start("generator", [], f"generator-{i}") for i in range(2)]
        scorers = [start("scorer", [], f"scorer-{i}") for i in range(2)]
        boundaries = {}
        for setup, k in (("1+1", 1), ("2+2", 2)):
            boundaries[setup] = start("boundary", [
                "--sample-block", str(args.sample_block), "--shard-size", str(args.sample_block * 10),
                "--data-dir", str(work / f"data-{k}"), "--redis-url", redis.url,
                "--redis-prefix", f"bench{k}:"], f"boundary-{k}", env={
                    "IFGAN_GENERATOR_ADDRESS": ",".join(g.address for g in generators[:k]),
                    "IFGAN_SCORER_ADDRESS": ",".join(s.address for s in scorers[:k])})
        for proc in procs:
            proc.wait_serving(300)
        print(f"services up in {time.perf_counter() - began:.0f} s ({work})", flush=True)

        runs: dict[str, list[tuple[float, float]]] = {"1+1": [], "2+2": []}
        shares: dict[str, list[float]] = {"Synthesize": [0.0, 0.0], "Score": [0.0, 0.0]}
        interactive_before = sum(metric(scrape(g.metrics_port), "ifgan_batch_queue_seconds_count",
                                        lane="interactive") for g in generators)
        seed = 5000
        for r in range(args.rounds):
            for setup in (("1+1", "2+2") if r % 2 == 0 else ("2+2", "1+1")):
                before = {m: counts(generators if m == "Synthesize" else scorers, m) for m in shares}
                sampling, wall = train(boundaries[setup].address, args.num_samples, seed)
                seed += 1
                runs[setup].append((sampling, wall))
                if setup == "2+2":
                    for m in shares:
                        after = counts(generators if m == "Synthesize" else scorers, m)
                        shares[m] = [s + a - b for s, a, b in zip(shares[m], after, before[m])]
                print(f"round {r + 1} {setup}: {args.num_samples / sampling:.1f} samples/s (sampling {sampling:.1f} s, "
                      f"job {wall:.1f} s)", flush=True)
        text = [scrape(g.metrics_port) for g in generators]
        bulk = sum(metric(t, "ifgan_batch_queue_seconds_count", lane="bulk") for t in text)
        interactive = sum(metric(t, "ifgan_batch_queue_seconds_count", lane="interactive") for t in text) \
            - interactive_before
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.stop()

    rate = {setup: args.num_samples * len(r) / sum(s for s, _ in r) for setup, r in runs.items()}
    split = {m: [round(v / sum(c), 3) if sum(c) else 0.0 for v in c] for m, c in shares.items()}
    table = [{"setup": setup, "generators": int(setup[0]), "scorers": int(setup[2]), "jobs": len(runs[setup]),
              "samples_per_job": args.num_samples, "sampling_samples_per_s": round(rate[setup], 1),
              "job_seconds": [round(w, 1) for _, w in runs[setup]]} for setup in runs]
    ratio = rate["2+2"] / rate["1+1"]
    targets = {
        "2x2_over_1x1_sampling_rate": at_least(ratio, 0.8),
        "least_generator_replica_share_of_synthesize": at_least(min(split["Synthesize"]), 0.3),
        "least_scorer_replica_share_of_score": at_least(min(split["Score"]), 0.3),
        "training_batches_in_the_interactive_lane": at_most(interactive, 0),
    }
    print(f"\n{'setup':6s} {'samples/s':>10s}  jobs")
    for row in table:
        print(f"{row['setup']:6s} {row['sampling_samples_per_s']:10.1f}  {row['job_seconds']}")
    print(f"2+2 over 1+1: {ratio:.2f}; 2+2 call shares: Synthesize {split['Synthesize']}, Score {split['Score']}; "
          f"generator batches queued: bulk {bulk:.0f}, interactive {interactive:.0f}")
    print_targets(targets)
    result = {"benchmark": "boundary_replicas", "quick": args.quick, "table": table,
              "ratio_2x2_over_1x1": round(ratio, 3), "replica_call_shares_2x2": split,
              "generator_requests_queued_by_lane": {"bulk": bulk, "interactive": interactive},
              "targets": targets,
              "settings": {"num_samples": args.num_samples, "sample_block": args.sample_block, "rounds": args.rounds,
                           "attributes": ATTRIBUTES},
              "environment": {"python": platform.python_version(), "load_average_at_end": load_average(),
                              "note": "2 shared cores: 2+2 cannot outrun 1+1 here; the ratio is the overhead"},
              "seconds": round(time.perf_counter() - began, 1)}
    write_result(args.out, result)
    return 0 if all(t["met"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
