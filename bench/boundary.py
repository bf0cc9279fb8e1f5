"""Boundary benchmark: the whole InterFaceGAN pipeline on the default model through the real services.

Starts Redis (AOF), the generator, the scorer and the boundary service on loopback, then:

1. ours: one TrainBoundaries job of N samples (default 100,000; fresh dataset) for gender, age, yaw and
   smile: samples/s through generate + score (pipelined blocks of raw images), SVM seconds per attribute,
   total seconds, peak memory of the boundary server;
2. the SVM alone on 20K chosen samples (the paper's 2% of 500K), and the check of our solver against the
   reference's SVC(kernel='linear') on the very same training samples (cosine of the normals);
3. a reference-style baseline on a smaller N: sequential batches of 4 through the same generator and
   scorer (the reference's hard-coded batch size, nothing overlapped), then SVC(kernel='linear');
   reported per sample, as a ratio. The machine is shared, so the comparison alternates rounds
   (baseline, then a fresh training job of ours, repeated) and compares their sums: both sides see the
   same load, which a baseline run once after the long job would not.

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

from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, generator_pb2,  # noqa: E402
                             generator_pb2_grpc, scorer_pb2, scorer_pb2_grpc)
from services.boundary import math as bm  # noqa: E402
from services.boundary.dataset import Dataset  # noqa: E402
from services.cluster import RedisProcess, ServiceProcess, free_port  # noqa: E402
from services.common import editing, tensors  # noqa: E402

ATTRIBUTES = ["gender", "age", "yaw", "smile"]
MODEL = "dcgan-digiface-64"


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


def svm_checks(data_dir: Path, n: int, ratio: float, seed: int, svm_samples: int, subsample: int, log) -> dict:
    """SVM time on `svm_samples` chosen samples and our solver vs SVC(kernel='linear') on the same samples."""
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
        ours = bm.fit_extremes(codes["p"], codes["n"], seed=seed, solver="hinge")
        t = time.perf_counter()
        reference = bm.fit_extremes(codes["p"], codes["n"], seed=seed, solver="svc")
        svc_seconds = time.perf_counter() - t
        # 20K chosen samples (the paper's 2% of 500K), the scale the issue asks to fit in seconds.
        per_side = min(svm_samples // 2, len(idx) // 2)
        pos20, neg20, _ = bm.select_extremes(scores[idx], per_side)
        big = dataset.gather({"p": idx[pos20], "n": idx[neg20]}, n)
        big_fit = bm.fit_extremes(big["p"], big["n"], seed=seed, solver="hinge")
        squared = bm.fit_extremes(big["p"], big["n"], seed=seed, solver="squared_hinge")
        # And the subsample check: both solvers on one subsample of the 20K training samples.
        rng = np.random.default_rng(seed)
        sp = rng.choice(len(big["p"]), min(subsample // 2, len(big["p"])), replace=False)
        sn = rng.choice(len(big["n"]), min(subsample // 2, len(big["n"])), replace=False)
        x = np.concatenate([big["p"][sp], big["n"][sn]])
        y = np.r_[np.ones(len(sp)), np.zeros(len(sn))]
        w_ours, _, _ = bm.fit_linear_svm(x, y, solver="hinge", seed=seed)
        w_svc, _, _ = bm.fit_linear_svm(x, y, solver="svc", seed=seed)
        cos_sub = float(editing.unit(w_ours) @ editing.unit(w_svc))
        out["svm"][attr] = {"chosen_train": ours.num_train, "hinge_seconds": ours.seconds, "svc_seconds": svc_seconds,
                            "samples_20k": big_fit.num_train + big_fit.num_validation,
                            "hinge_seconds_20k": big_fit.seconds, "squared_hinge_seconds_20k": squared.seconds,
                            "validation_accuracy_20k": big_fit.validation_accuracy}
        out["cosine_vs_svc"][attr] = {"same_chosen_set": float(ours.normal[0] @ reference.normal[0]),
                                      "subsample": cos_sub, "subsample_size": len(x)}
        log(f"  {attr:7s} SVM: hinge {ours.seconds:.2f} s vs SVC {svc_seconds:.2f} s on {ours.num_train} samples, "
            f"cos {ours.normal[0] @ reference.normal[0]:.4f}; {out['svm'][attr]['samples_20k']} samples: hinge "
            f"{big_fit.seconds:.2f} s; subsample cos {cos_sub:.4f}")
    return out


def compare(stub, generator_address: str, scorer_address: str, rounds: int, n_baseline: int, n_ours: int,
            ratio: float, seed: int, log) -> dict:
    """Alternating rounds: the baseline on n_baseline samples, then our pipeline on n_ours fresh samples."""
    base_seconds = ours_seconds = 0.0
    base_runs = []
    for r in range(rounds):
        base = run_baseline(generator_address, scorer_address, n_baseline, seed + 1000 + r, ratio, log)
        base_runs.append(base)
        base_seconds += base["generate_score_seconds"]
        final, _ = run_ours(stub, n_ours, ratio, seed + 2000 + r, log, quiet=True)
        seconds = final.boundaries[0].timings["sampling"]
        ours_seconds += seconds
        log(f"  round {r + 1}/{rounds}: ours {n_ours} samples in {seconds:.1f} s ({n_ours / seconds:.1f} samples/s)")
    base_rate, ours_rate = rounds * n_baseline / base_seconds, rounds * n_ours / ours_seconds
    return {"rounds": rounds, "baseline_samples_per_round": n_baseline, "ours_samples_per_round": n_ours,
            "baseline_samples_per_second": base_rate, "ours_samples_per_second": ours_rate,
            "speedup_per_sample": ours_rate / base_rate,
            "baseline_svc_seconds": sum(sum(b["svc_seconds"].values()) for b in base_runs) / rounds}


def run_baseline(generator_address: str, scorer_address: str, n: int, seed: int, ratio: float, log) -> dict:
    """The reference's way: batches of 4, one after the other (synthesize, then score), then SVC."""
    with grpc.insecure_channel(generator_address) as gch, grpc.insecure_channel(scorer_address) as sch:
        gen, sco = generator_pb2_grpc.GeneratorServiceStub(gch), scorer_pb2_grpc.ScorerServiceStub(sch)
        model = common_pb2.ModelRef(name=MODEL)
        started = time.perf_counter()
        codes = tensors.to_numpy(gen.SampleLatents(generator_pb2.SampleLatentsRequest(
            model=model, space=common_pb2.LATENT_SPACE_Z, count=n, seed=seed)).codes.codes, "codes")
        scores = np.zeros((n, len(ATTRIBUTES)), np.float32)
        valid = np.zeros((n, len(ATTRIBUTES)), bool)
        for lo in range(0, n, 4):
            batch = codes[lo:lo + 4]
            images = [img for reply in gen.Synthesize(generator_pb2.SynthesizeRequest(
                model=model, codes=tensors.latents_from_numpy(common_pb2.LATENT_SPACE_Z, batch),
                format=common_pb2.IMAGE_FORMAT_RAW)) for img in reply.images]
            results = [r for reply in sco.Score(scorer_pb2.ScoreRequest(images=images, attributes=ATTRIBUTES))
                       for r in reply.results]
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
    log(f"  baseline: {n} samples in {generate_score:.1f} s ({n / generate_score:.1f} samples/s), "
        f"SVC {sum(svc.values()):.2f} s")
    return {"num_samples": n, "generate_score_seconds": generate_score, "samples_per_second": n / generate_score,
            "svc_seconds": svc}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small version: N=600, ratio 0.1, one round of 60 vs 300")
    p.add_argument("--num-samples", type=int, default=100_000, help="N of the training job")
    p.add_argument("--chosen-ratio", type=float, default=0.02, help="top/bottom fraction (the paper: 0.02)")
    p.add_argument("--baseline-samples", type=int, default=800, help="baseline samples per comparison round")
    p.add_argument("--ours-samples", type=int, default=3000, help="our samples per comparison round")
    p.add_argument("--rounds", type=int, default=3, help="alternating comparison rounds (0 skips the baseline)")
    p.add_argument("--svm-samples", type=int, default=20_000, help="chosen samples of the SVM timing")
    p.add_argument("--subsample", type=int, default=2000, help="samples of the SVC cross-check subsample")
    p.add_argument("--seed", type=int, default=2020, help="sampling seed")
    p.add_argument("--scorer-replicas", type=int, default=2,
                   help="scorer processes behind the boundary service (face alignment holds the GIL, so one "
                        "scorer process uses about one core)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "boundary.json", help="result file")
    p.add_argument("--work-dir", type=Path, default=None, help="Redis, data and logs (default: a temp folder)")
    p.add_argument("--reuse-dataset", action="store_true",
                   help="grow the dataset already in --work-dir instead of sampling afresh (rates count new samples)")
    args = p.parse_args(argv)
    if args.quick:
        args.num_samples, args.chosen_ratio = 600, 0.1
        args.baseline_samples, args.ours_samples, args.rounds = 60, 300, 1
        args.svm_samples, args.subsample = 400, 200
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
        scorer = scorers[0]  # the baseline, a single-process script, uses one
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
        rss = peak_rss_mb(boundary.pid)
        infos = {b.ref.attribute: b for b in final.boundaries}
        sampling = infos[ATTRIBUTES[0]].timings["sampling"]
        ours_rate = new_samples / sampling
        log(f"  {new_samples} new samples in {sampling:.1f} s = {ours_rate:.1f} samples/s; job {wall:.1f} s; "
            f"boundary server peak RSS {rss:.0f} MiB")
        log("SVM checks")
        svm = svm_checks(work / "data", args.num_samples, args.chosen_ratio, args.seed, args.svm_samples,
                         args.subsample, log)
        baseline = None
        if args.rounds:
            log(f"comparison: {args.rounds} alternating rounds, baseline (sequential batches of 4) on "
                f"{args.baseline_samples} samples, ours on {args.ours_samples}")
            with grpc.insecure_channel(boundary.address) as ch:
                baseline = compare(boundary_pb2_grpc.BoundaryServiceStub(ch), generator.address, scorer.address,
                                   args.rounds, args.baseline_samples, args.ours_samples, args.chosen_ratio,
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
                     "cosine_vs_svc_same_set": svm["cosine_vs_svc"][attr]["same_chosen_set"],
                     "cosine_vs_svc_subsample": svm["cosine_vs_svc"][attr]["subsample"]})
    min_cos = min(min(c["same_chosen_set"], c["subsample"]) for c in svm["cosine_vs_svc"].values())
    max_svm_20k = max(s["hinge_seconds_20k"] for s in svm["svm"].values())
    result = {
        "benchmark": "boundary", "quick": args.quick, "scorer_replicas": args.scorer_replicas, "machine": f"{platform.node()} {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "ours": {"num_samples": args.num_samples, "new_samples": new_samples, "chosen_ratio": args.chosen_ratio,
                 "sampling_seconds": sampling, "samples_per_second": ours_rate,
                 "svm_seconds_total": sum(b.timings["fitting"] for b in infos.values()),
                 "job_seconds": wall, "boundary_peak_rss_mb": rss, "timings": dict(infos[ATTRIBUTES[0]].timings)},
        "attributes": rows,
        "baseline": baseline,
    }
    targets = {
        "svm_cosine_vs_svc": {"value": min_cos, "target": 0.99, "met": min_cos >= 0.99},
        "svm_seconds_20k": {"value": max_svm_20k, "target": 10.0, "met": max_svm_20k <= 10.0},
        "yaw_validation_accuracy": {"value": infos["yaw"].validation_accuracy, "target": 0.95,
                                    "met": infos["yaw"].validation_accuracy >= 0.95},
        "boundary_peak_rss_mb": {"value": rss, "target": 1024, "met": rss <= 1024},
    }
    if baseline:
        speedup = baseline["speedup_per_sample"]
        # End to end at N, at the rates of the alternating rounds: the baseline's generate + score over N
        # samples plus SVC(kernel='linear') on the same chosen sets, against our sampling plus our SVM.
        svc_at_n = sum(s["svc_seconds"] for s in svm["svm"].values())
        ours_svm = result["ours"]["svm_seconds_total"]
        end_to_end = ((args.num_samples / baseline["baseline_samples_per_second"] + svc_at_n)
                      / (args.num_samples / baseline["ours_samples_per_second"] + ours_svm))
        result["comparison"] = {**baseline, "baseline_seconds_per_sample": 1 / baseline["baseline_samples_per_second"],
                                "ours_seconds_per_sample": 1 / baseline["ours_samples_per_second"],
                                "svc_seconds_at_n": svc_at_n, "ours_svm_seconds_at_n": ours_svm,
                                "end_to_end_speedup_at_n": end_to_end}
        targets["speedup_per_sample_vs_baseline"] = {"value": speedup, "target": 1.0, "met": speedup > 1.0}
    result["targets"] = targets

    log("")
    log(f"{'attribute':10s} {'val acc':>8s} {'rest acc':>8s} {'valid':>7s} {'chosen':>7s} {'svm s':>6s} "
        f"{'svc s':>6s} {'cos svc':>8s} {'20K s':>6s}")
    for r in rows:
        log(f"{r['attribute']:10s} {r['validation_accuracy']:8.3f} {r['remaining_accuracy']:8.3f} {r['num_valid']:7d} "
            f"{r['num_positive'] + r['num_negative']:7d} {r['svm_seconds']:6.2f} {r['svc_seconds']:6.2f} "
            f"{min(r['cosine_vs_svc_same_set'], r['cosine_vs_svc_subsample']):8.4f} {r['hinge_seconds_20k']:6.2f}")
    log(f"ours: {args.num_samples} samples, {ours_rate:.1f} samples/s through generate + score, job {wall:.1f} s, "
        f"SVM {result['ours']['svm_seconds_total']:.2f} s, peak RSS {rss:.0f} MiB")
    if baseline:
        c = result["comparison"]
        log(f"alternating rounds: baseline {c['baseline_samples_per_second']:.1f} samples/s (batches of 4, "
            f"sequential), ours {c['ours_samples_per_second']:.1f} samples/s; speedup per sample "
            f"{c['speedup_per_sample']:.2f}x; end to end at N {c['end_to_end_speedup_at_n']:.2f}x")
    for name, t in targets.items():
        log(f"target {name}: {t['value']:.4g} (target {t['target']}) {'met' if t['met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
