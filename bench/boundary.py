"""Boundary benchmark: the whole InterFaceGAN pipeline on the default model through the real services.

Starts Redis (AOF), the generator, `--scorer-replicas` scorers and the boundary service on loopback, then:

1. ours: one TrainBoundaries job of N samples (default 100,000; fresh dataset) for gender, age, yaw and
   smile: samples/s through generate + score (pipelined blocks of raw images), SVM seconds per attribute,
   total seconds, peak memory of the boundary server, validation accuracy of every attribute;
2. our solver against the reference's SVC(kernel='linear') on the job's own chosen set (cosine of the
   normals), and the SVM on `--svm-samples` chosen samples (20K: the paper's 2% of 500K): fit time,
   whether the server's solver converged, and its normal against SVC fitted on the very same samples and
   split (or, with `--svc-samples` below that, both solvers on a subsample of them);
3. a reference-style baseline against ours in alternating rounds of `--round-samples` samples each side:
   the baseline does what the reference's scripts do, through the same generator and scorer processes
   (SampleLatents, then batches of 4, each synthesized then scored, nothing overlapped, its Score calls
   spread over the same scorer replicas ours uses, then SVC(kernel='linear')); ours runs one
   TrainBoundaries job of the same size on a fresh dataset. Both are timed by this client's wall clock
   from their first call to their boundaries. The machine is shared, so the rounds alternate (baseline,
   ours, baseline, ...) and the sums are compared: both sides see the same load.

Targets, with thresholds near two runs on the 2-core shared machine (N=100K on a quiet machine, N=30K under
heavy load; the 20K set is the extremes at 100K but two thirds of all samples at 30K, a harder fit):
  svm_cosine_vs_svc >= 0.997: our normal against SVC's on the same samples, the least over attributes and
    over the job's chosen set and the 20K check (measured 0.9991 at 100K, 0.9976 at 30K; dropping the
    centring that makes the solvers agree costs far more);
  svm_20k_converged: every attribute's 20K fit converged with the server's solver (4 of 4 is the target;
    0 of 4 converged at 30K, where the solver stops at its iteration cap);
  svm_seconds_20k <= 12 s: the slowest attribute's 20K fit (1.4 s at 100K, 10.0 s at 30K at the cap);
  gender / age / yaw / smile validation accuracy >= 0.86 / 0.70 / 0.97 / 0.94: 3 points under the lower
    of the two runs (0.929 / 0.717 / 0.999 / 0.979 at 100K, 0.892 / 0.734 / 1.000 / 0.974 at 30K; the
    validation sets of 340 to 1200 samples have a sampling error of 1.5 to 2.5 points);
  boundary_peak_rss_mb <= 320 (268 MiB in both runs: the job holds shards, not the dataset);
  speedup_per_sample_vs_baseline >= 1.15 (1.31 at 30K: same processes, same timer, rounds of 1000;
    rounds vary by about 15% on the shared machine).

Writes bench/results/boundary.json: the table and `targets`. `--quick` runs a small version (a test runs it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from interfacegan import codec  # noqa: E402
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, generator_pb2,  # noqa: E402
                             generator_pb2_grpc, scorer_pb2, scorer_pb2_grpc)
from services.boundary import svm as bm  # noqa: E402
from services.boundary.dataset import Dataset  # noqa: E402
from services.cluster import RedisProcess, ServiceProcess, free_port  # noqa: E402
from services.common import editing, tensors  # noqa: E402
from bench.harness import at_least, at_most, print_targets, proc_memory_mb  # noqa: E402

ATTRIBUTES = ["gender", "age", "yaw", "smile"]
#: Thresholds (see the module help for the measurements they are set against).
MIN_COSINE, MAX_SVM_SECONDS_20K, MAX_RSS_MB, MIN_SPEEDUP = 0.997, 12.0, 320, 1.15
MIN_ACCURACY = {"gender": 0.86, "age": 0.70, "yaw": 0.97, "smile": 0.94}
MODEL = "dcgan-digiface-64"


def run_ours(stub, n: int, ratio: float, seed: int, log, reuse: bool = False, quiet: bool = False
             ) -> tuple[boundary_pb2.JobUpdate, float]:
    request = boundary_pb2.TrainBoundariesRequest(request_id=uuid.uuid4().hex, attributes=ATTRIBUTES, num_samples=n,
                                                  chosen_ratio=ratio, seed=seed, reuse_dataset=reuse)
    started, last_print = time.perf_counter(), 0.0
    update = None
    for update in stub.TrainBoundaries(request, timeout=24 * 3600):
        now = time.perf_counter()
        if not quiet and (now - last_print > 30 or update.state != boundary_pb2.JOB_STATE_RUNNING):
            last_print = now
            p = update.progress
            log(f"  [{now - started:7.1f} s] {boundary_pb2.JobState.Name(update.state)[10:]:9s} {p.stage:10s} "
                f"{p.done}/{p.total} eta {p.eta_seconds:.0f} s {p.message}")
    if update is None or update.state != boundary_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"training job failed: {update.error if update else 'no update'}")
    return update, time.perf_counter() - started


def svm_checks(data_dir: Path, n: int, ratio: float, seed: int, svm_samples: int, svc_samples: int, log) -> dict:
    """Our solver vs SVC(kernel='linear') on the job's chosen set; on `svm_samples` chosen samples: fit time,
    convergence, and the cosine to SVC on those samples (on `svc_samples` of them when fewer)."""
    path = next(data_dir.glob(f"{MODEL}/*/z/seed-{seed}"))
    dataset = Dataset.open_or_create(path, model=MODEL, model_version="", space="z", seed=seed, dimension=100,
                                     shard_size=0, attributes=[])
    out: dict = {"svm": {}, "cosine_vs_svc": {}}
    for attr in ATTRIBUTES:
        scores, valid = dataset.scores(attr, n)
        idx = np.flatnonzero(valid)
        # The reference protocol's chosen set: the same selection and the same seeded split as the job.
        pos, neg, _ = bm.select_extremes(scores[idx], ratio)
        codes = dataset.gather({"p": idx[pos], "n": idx[neg]}, n)
        ours = bm.fit_extremes(codes["p"], codes["n"], seed=seed)  # the server's solver
        t = time.perf_counter()
        reference = bm.fit_extremes(codes["p"], codes["n"], seed=seed, solver="svc")
        svc_seconds = time.perf_counter() - t
        # 20K chosen samples (the paper's 2% of 500K), the scale the issue asks to fit in seconds.
        per_side = min(svm_samples // 2, len(idx) // 2)
        pos20, neg20, _ = bm.select_extremes(scores[idx], per_side)
        big = dataset.gather({"p": idx[pos20], "n": idx[neg20]}, n)
        big_fit = bm.fit_extremes(big["p"], big["n"], seed=seed)  # the server's solver
        squared = bm.fit_extremes(big["p"], big["n"], seed=seed, solver="squared_hinge")
        if svc_samples >= big_fit.num_train + big_fit.num_validation:
            # The reference's SVC on the very same 20K chosen samples and split.
            t = time.perf_counter()
            big_svc = bm.fit_extremes(big["p"], big["n"], seed=seed, solver="svc")
            svc_seconds_20k = time.perf_counter() - t
            cos_20k, svc_n = float(big_fit.normal[0] @ big_svc.normal[0]), big_svc.num_train
        else:
            # Time-boxed check: both solvers on one subsample of the 20K chosen samples (libsvm is O(n^2)).
            rng = np.random.default_rng(seed)
            sp = rng.choice(len(big["p"]), min(svc_samples // 2, len(big["p"])), replace=False)
            sn = rng.choice(len(big["n"]), min(svc_samples // 2, len(big["n"])), replace=False)
            x = np.concatenate([big["p"][sp], big["n"][sn]])
            y = np.r_[np.ones(len(sp)), np.zeros(len(sn))]
            w_ours, _, _ = bm.fit_linear_svm(x, y, seed=seed)
            t = time.perf_counter()
            w_svc, _, _ = bm.fit_linear_svm(x, y, solver="svc", seed=seed)
            svc_seconds_20k = time.perf_counter() - t
            cos_20k, svc_n = float(editing.unit(w_ours) @ editing.unit(w_svc)), len(x)
        out["svm"][attr] = {"chosen_train": ours.num_train, "hinge_seconds": ours.seconds, "svc_seconds": svc_seconds,
                            "samples_20k": big_fit.num_train + big_fit.num_validation,
                            "hinge_seconds_20k": big_fit.seconds, "squared_hinge_seconds_20k": squared.seconds,
                            "converged_20k": big_fit.converged, "squared_hinge_converged_20k": squared.converged,
                            "svc_check_samples": svc_n, "svc_seconds_20k": svc_seconds_20k,
                            "cosine_vs_svc_20k": cos_20k, "validation_accuracy_20k": big_fit.validation_accuracy}
        out["cosine_vs_svc"][attr] = {"same_chosen_set": float(ours.normal[0] @ reference.normal[0]),
                                      "chosen_20k": cos_20k}
        log(f"  {attr:7s} SVM: hinge {ours.seconds:.2f} s vs SVC {svc_seconds:.2f} s on {ours.num_train} samples, "
            f"cos {ours.normal[0] @ reference.normal[0]:.4f}; {out['svm'][attr]['samples_20k']} samples: hinge "
            f"{big_fit.seconds:.2f} s (converged {big_fit.converged}); SVC on {svc_n} of them {svc_seconds_20k:.1f} s, "
            f"cos {cos_20k:.4f}")
    return out


def compare(stub, generator_address: str, scorer_addresses: list[str], rounds: int, n: int, ratio: float,
            seed: int, log) -> dict:
    """Alternating rounds of n samples each side: the reference-style baseline, then one job of ours.

    Both sides: the same generator and scorer processes, this client's wall clock from the first call to
    the fitted boundaries, fresh samples every round.
    """
    base_seconds = ours_seconds = 0.0
    base_runs = []
    for r in range(rounds):
        base = run_baseline(generator_address, scorer_addresses, n, seed + 1000 + r, ratio, log)
        base_runs.append(base)
        base_seconds += base["seconds"]
        _, seconds = run_ours(stub, n, ratio, seed + 2000 + r, log, quiet=True)
        ours_seconds += seconds
        log(f"  round {r + 1}/{rounds}: baseline {n} samples in {base['seconds']:.1f} s, ours in {seconds:.1f} s")
    base_rate, ours_rate = rounds * n / base_seconds, rounds * n / ours_seconds
    return {"rounds": rounds, "samples_per_round": n, "timer": "client wall clock, first call to boundaries",
            "scorer_processes": len(scorer_addresses),
            "baseline_samples_per_second": base_rate, "ours_samples_per_second": ours_rate,
            "speedup_per_sample": ours_rate / base_rate,
            "baseline_svc_seconds": sum(sum(b["svc_seconds"].values()) for b in base_runs) / rounds}


def run_baseline(generator_address: str, scorer_addresses: list[str], n: int, seed: int, ratio: float, log) -> dict:
    """The reference's way: batches of 4, one after the other (synthesize, then score), then SVC.

    Score calls go to the scorer replicas in turn, the processes ours uses (one call at a time, as the
    reference's script makes them, so only one is busy at once).
    """
    channels = [grpc.insecure_channel(generator_address)] + [grpc.insecure_channel(a) for a in scorer_addresses]
    try:
        gen = generator_pb2_grpc.GeneratorServiceStub(channels[0])
        scorers = [scorer_pb2_grpc.ScorerServiceStub(c) for c in channels[1:]]
        model = common_pb2.ModelRef(name=MODEL)
        started = time.perf_counter()
        codes = tensors.to_numpy(gen.SampleLatents(generator_pb2.SampleLatentsRequest(
            model=model, space=common_pb2.LATENT_SPACE_Z, count=n, seed=seed)).codes.codes, "codes")
        scores = np.zeros((n, len(ATTRIBUTES)), np.float32)
        valid = np.zeros((n, len(ATTRIBUTES)), bool)
        for k, lo in enumerate(range(0, n, 4)):
            batch = codes[lo:lo + 4]
            images = [img for reply in gen.Synthesize(generator_pb2.SynthesizeRequest(
                model=model, codes=codec.latents(batch, common_pb2.LATENT_SPACE_Z),
                format=common_pb2.IMAGE_FORMAT_RAW)) for img in reply.images]
            results = [r for reply in scorers[k % len(scorers)].Score(
                scorer_pb2.ScoreRequest(images=images, attributes=ATTRIBUTES)) for r in reply.results]
            for i, r in enumerate(results):
                for j, s in enumerate(r.scores):
                    scores[lo + i, j], valid[lo + i, j] = s.value, s.valid
        generate_score = time.perf_counter() - started
        svc = {}
        for j, attr in enumerate(ATTRIBUTES):
            t = time.perf_counter()
            try:
                bm.train_boundary(codes, scores[:, j], valid[:, j], chosen_ratio=ratio, seed=seed, solver="svc")
            except ValueError:
                pass  # too few samples at tiny N; the time is what the baseline measures
            svc[attr] = time.perf_counter() - t
        seconds = time.perf_counter() - started
    finally:
        for c in channels:
            c.close()
    log(f"  baseline: {n} samples in {seconds:.1f} s ({n / seconds:.1f} samples/s), SVC {sum(svc.values()):.2f} s")
    return {"num_samples": n, "generate_score_seconds": generate_score, "seconds": seconds,
            "samples_per_second": n / seconds, "svc_seconds": svc}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small version: N=600, ratio 0.1, one round of 200 samples")
    p.add_argument("--num-samples", type=int, default=100_000, help="N of the training job")
    p.add_argument("--chosen-ratio", type=float, default=0.02, help="top/bottom fraction (the paper: 0.02)")
    p.add_argument("--round-samples", type=int, default=1000, help="samples per comparison round, each side")
    p.add_argument("--rounds", type=int, default=3, help="alternating comparison rounds (0 skips the baseline)")
    p.add_argument("--svm-samples", type=int, default=20_000, help="chosen samples of the SVM timing")
    p.add_argument("--svc-samples", type=int, default=20_000,
                   help="samples of the SVC cross-check at the --svm-samples scale: all of them by default; fewer "
                        "check both solvers on a subsample (libsvm takes minutes per attribute at 20K on 2 cores)")
    p.add_argument("--seed", type=int, default=2020, help="sampling seed")
    p.add_argument("--scorer-replicas", type=int, default=2,
                   help="scorer processes behind the boundary service and the baseline alike (face alignment holds "
                        "the GIL, so one scorer process uses about one core)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "boundary.json", help="result file")
    p.add_argument("--work-dir", type=Path, default=None, help="Redis, data and logs (default: a temp folder)")
    p.add_argument("--reuse-dataset", action="store_true",
                   help="grow the dataset already in --work-dir instead of sampling afresh (rates count new samples)")
    args = p.parse_args(argv)
    if args.quick:
        args.num_samples, args.chosen_ratio = 600, 0.1
        args.round_samples, args.rounds = 200, 1
        args.svm_samples, args.svc_samples = 400, 400
        if args.out == p.get_default("out"):
            args.out = Path(tempfile.gettempdir()) / "boundary-bench-quick.json"

    def log(msg: str) -> None:
        print(msg, flush=True)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-boundary-"))
    work.mkdir(parents=True, exist_ok=True)
    redis = RedisProcess.start(free_port(), work / "redis")
    procs: list[ServiceProcess] = []
    try:
        generator = ServiceProcess.start("generator", [], log_dir=work / "logs")
        procs.append(generator)
        scorers = []
        for i in range(args.scorer_replicas):
            scorers.append(ServiceProcess.start("scorer", [], log_dir=work / "logs" / f"scorer-{i}"))
            procs.append(scorers[-1])
        # Several replicas: the boundary's channel balances blocks over them round robin (channels.py).
        boundary = ServiceProcess.start("boundary", [
            "--redis-url", redis.url, "--data-dir", str(work / "data"), "--generator-address", generator.address,
            "--scorer-address", ",".join(s.address for s in scorers)], log_dir=work / "logs")
        procs.append(boundary)
        for proc in procs:
            proc.wait_serving()
        log(f"services up; work dir {work}")
        log(f"ours: TrainBoundaries N={args.num_samples} ratio={args.chosen_ratio} attributes={ATTRIBUTES}")
        existing = sum(json.loads(m.read_text())["shards"][i]["count"] for m in (work / "data").glob(
            f"{MODEL}/*/z/seed-{args.seed}/manifest.json") for i in range(len(json.loads(m.read_text())["shards"])))
        new_samples = args.num_samples - (existing if args.reuse_dataset else 0)
        with grpc.insecure_channel(boundary.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
            final, wall = run_ours(boundary_pb2_grpc.BoundaryServiceStub(ch), args.num_samples, args.chosen_ratio,
                                   args.seed, log, args.reuse_dataset)
        rss = proc_memory_mb(boundary.pid, "VmHWM")
        infos = {b.ref.attribute: b for b in final.boundaries}
        sampling = infos[ATTRIBUTES[0]].timings["sampling"]
        ours_rate = new_samples / sampling
        log(f"  {new_samples} new samples in {sampling:.1f} s = {ours_rate:.1f} samples/s; job {wall:.1f} s; "
            f"boundary server peak RSS {rss:.0f} MiB")
        log("SVM checks")
        svm = svm_checks(work / "data", args.num_samples, args.chosen_ratio, args.seed, args.svm_samples,
                         args.svc_samples, log)
        baseline = None
        if args.rounds:
            log(f"comparison: {args.rounds} alternating rounds of {args.round_samples} samples, baseline "
                f"(sequential batches of 4) and ours, the same {len(scorers)} scorer processes, client wall clock")
            with grpc.insecure_channel(boundary.address) as ch:
                baseline = compare(boundary_pb2_grpc.BoundaryServiceStub(ch), generator.address,
                                   [s.address for s in scorers], args.rounds, args.round_samples, args.chosen_ratio,
                                   args.seed, log)
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.stop()

    rows = []
    for attr in ATTRIBUTES:
        b = infos[attr]
        rows.append({"attribute": attr, "validation_accuracy": b.validation_accuracy,
                     "remaining_accuracy": b.remaining_accuracy, "num_valid": b.num_valid,
                     "num_positive": b.num_positive, "num_negative": b.num_negative,
                     "svm_seconds": b.timings["fitting"], "converged": b.converged, **svm["svm"][attr],
                     "cosine_vs_svc_same_set": svm["cosine_vs_svc"][attr]["same_chosen_set"]})
    min_cos = min(min(c["same_chosen_set"], c["chosen_20k"]) for c in svm["cosine_vs_svc"].values())
    max_svm_20k = max(s["hinge_seconds_20k"] for s in svm["svm"].values())
    converged_20k = sum(s["converged_20k"] for s in svm["svm"].values())
    result = {
        "benchmark": "boundary", "quick": args.quick, "scorer_replicas": args.scorer_replicas, "machine": f"{platform.node()} {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ours": {"num_samples": args.num_samples, "new_samples": new_samples, "chosen_ratio": args.chosen_ratio,
                 "sampling_seconds": sampling, "samples_per_second": ours_rate,
                 "rate_timer": "the job's own sampling timer (the comparison uses the client's wall clock)",
                 "svm_seconds_total": sum(b.timings["fitting"] for b in infos.values()),
                 "job_seconds": wall, "boundary_peak_rss_mb": rss, "timings": dict(infos[ATTRIBUTES[0]].timings)},
        "attributes": rows,
        "baseline": baseline,
    }
    accuracy = {a: infos[a].validation_accuracy for a in ATTRIBUTES}
    targets = {
        "svm_cosine_vs_svc": at_least(min_cos, MIN_COSINE),
        "svm_20k_converged": at_least(converged_20k, len(ATTRIBUTES)),
        "svm_seconds_20k": at_most(max_svm_20k, MAX_SVM_SECONDS_20K),
        **{f"{a}_validation_accuracy": at_least(accuracy[a], MIN_ACCURACY[a]) for a in ATTRIBUTES},
        "boundary_peak_rss_mb": at_most(rss, MAX_RSS_MB),
    }
    if baseline:
        result["comparison"] = {**baseline, "baseline_seconds_per_sample": 1 / baseline["baseline_samples_per_second"],
                                "ours_seconds_per_sample": 1 / baseline["ours_samples_per_second"]}
        targets["speedup_per_sample_vs_baseline"] = at_least(baseline["speedup_per_sample"], MIN_SPEEDUP)
    result["targets"] = targets

    log("")
    log(f"{'attribute':10s} {'val acc':>8s} {'rest acc':>8s} {'valid':>7s} {'chosen':>7s} {'svm s':>6s} "
        f"{'svc s':>6s} {'cos svc':>8s} | {'20K s':>6s} {'conv':>5s} {'SVC s':>6s} {'cos SVC':>8s} {'val acc':>7s}")
    for r in rows:
        log(f"{r['attribute']:10s} {r['validation_accuracy']:8.3f} {r['remaining_accuracy']:8.3f} {r['num_valid']:7d} "
            f"{r['num_positive'] + r['num_negative']:7d} {r['svm_seconds']:6.2f} {r['svc_seconds']:6.2f} "
            f"{r['cosine_vs_svc_same_set']:8.4f} | {r['hinge_seconds_20k']:6.2f} {str(r['converged_20k']):>5s} "
            f"{r['svc_seconds_20k']:6.1f} {r['cosine_vs_svc_20k']:8.4f} {r['validation_accuracy_20k']:7.3f}")
    log(f"ours: {args.num_samples} samples, {ours_rate:.1f} samples/s through generate + score, job {wall:.1f} s, "
        f"SVM {result['ours']['svm_seconds_total']:.2f} s, peak RSS {rss:.0f} MiB")
    if baseline:
        c = result["comparison"]
        log(f"alternating rounds of {c['samples_per_round']} samples, {c['scorer_processes']} scorer processes, "
            f"client wall clock: baseline {c['baseline_samples_per_second']:.1f} samples/s (batches of 4, "
            f"sequential), ours {c['ours_samples_per_second']:.1f} samples/s; speedup per sample "
            f"{c['speedup_per_sample']:.2f}x")
    log("targets:")
    print_targets(targets, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
