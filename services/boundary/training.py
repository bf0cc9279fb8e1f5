"""The training job: one sampling pass (generate + score, pipelined, sharded to disk), then one SVM per attribute.

Memory stays bounded at any N: codes live in shards on disk; the job holds the scores of one attribute
(5 bytes a sample), the codes of the chosen samples, and one shard at a time.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Histogram

from interfacegan.v1 import boundary_pb2, common_pb2
from services.common.errors import failed_precondition, invalid_argument
from services.common.pipeline import ordered
from services.common.upstream import CallContext

from . import svm
from .convert import info_of
from .dataset import Dataset, FolderLock, dataset_path, shard_seed
from .jobs import Job
from .sampler import Sampler
from .store import SPACE_KEYS, BoundaryStore

log = logging.getLogger(__name__)

SAMPLES = Counter("ifgan_boundary_samples_total", "Samples synthesized and scored by training jobs")
SVM_SECONDS = Histogram("ifgan_boundary_svm_seconds", "Seconds of one boundary's SVM fit",
                        buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))


@dataclasses.dataclass
class TrainSettings:
    """Server-side knobs of training (from the service settings)."""

    data_dir: Path
    default_num_samples: int = 500_000
    max_num_samples: int = 10_000_000
    shard_size: int = 10_000
    sample_block: int = 500
    pipeline_depth: int = 3
    svm_max_iter: int = 5000
    score_all_attributes: bool = True
    progress_interval: float = 0.5


@dataclasses.dataclass
class TrainSpec:
    """A validated TrainBoundariesRequest."""

    model: str
    model_version: str
    space: int
    dimension: int
    attributes: list[str]
    dataset_attributes: list[str]
    num_samples: int
    chosen_ratio: float
    train_split: float
    seed: int
    c: float
    solver: str
    reuse_dataset: bool
    block: int
    request_id: str


_dataset_locks: dict[Path, asyncio.Lock] = collections.defaultdict(asyncio.Lock)


async def validate(request: boundary_pb2.TrainBoundariesRequest, sampler: Sampler,
                   settings: TrainSettings, call: CallContext | None = None) -> TrainSpec:
    """Checks a request against the generator's model and the scorer's attributes; fills defaults.

    `call` carries the deadline of the request being validated to the generator and scorer.
    """
    if not request.attributes:
        raise invalid_argument("attributes", "empty; name at least one attribute the scorer computes, e.g. gender")
    if len(set(request.attributes)) != len(request.attributes):
        raise invalid_argument("attributes", f"names repeat: {list(request.attributes)}")
    n = request.num_samples or settings.default_num_samples
    if not 100 <= n <= settings.max_num_samples:
        raise invalid_argument("num_samples", f"{n} is out of range; accepted 100 .. {settings.max_num_samples} "
                                              f"(0 means the default {settings.default_num_samples})")
    ratio = request.chosen_ratio or 0.02
    if not 0 < ratio <= 0.5:
        raise invalid_argument("chosen_ratio", f"{ratio} is out of range; accepted (0, 0.5] (0 means 0.02)")
    split = request.train_split or 0.7
    if not 0 < split < 1:
        raise invalid_argument("train_split", f"{split} is out of range; accepted (0, 1) (0 means 0.7)")
    c = request.svm_c or 1.0
    if not 0 < c <= 1e6:
        raise invalid_argument("svm_c", f"{c} is out of range; accepted (0, 1e6] (0 means 1)")
    solver = request.solver or svm.DEFAULT_SOLVER
    if solver not in svm.SOLVERS:
        raise invalid_argument("solver", f"{solver!r} is not a solver; accepted: {', '.join(svm.SOLVERS)}")
    if svm.chosen_count(n, ratio) < 10:
        raise invalid_argument("chosen_ratio", f"{n} samples x {ratio} gives {svm.chosen_count(n, ratio)} per side; "
                                               f"at least 10 are needed (sample more or raise the ratio)")
    info = await sampler.model_info(request.model.name, request.model.version, call)
    shapes = {s.space: tuple(s.shape) for s in info.latent_spaces}
    space = request.space or common_pb2.LATENT_SPACE_Z
    if space not in shapes or len(shapes[space]) != 1:
        flat = [SPACE_KEYS[s].upper() for s, shape in shapes.items() if len(shape) == 1]
        raise invalid_argument("space", f"model {info.name} cannot train boundaries in space {space}; accepted: "
                                        f"{', '.join(flat)} (W boundaries also edit W+ codes)")
    scorer = await sampler.scorer_info(call)
    known = [a.name for a in scorer.attributes]
    unknown = [a for a in request.attributes if a not in known]
    if unknown:
        raise invalid_argument("attributes", f"{unknown} not computed by the scorer; accepted: {', '.join(known)}")
    limits = [settings.sample_block, info.max_request_codes or settings.sample_block,
              scorer.max_request_images or settings.sample_block,
              # One Score request carries the whole block of raw images.
              max(1, (sampler.max_message_bytes * 3 // 4) // max(1, info.resolution ** 2 * 3))]
    block = max(1, min(limits))
    while settings.shard_size % block:  # blocks must tile shards exactly
        block -= 1
    dataset_attributes = sorted(set(known) if settings.score_all_attributes else set(request.attributes))
    return TrainSpec(model=info.name, model_version=info.version, space=space, dimension=int(shapes[space][0]),
                     attributes=list(request.attributes), dataset_attributes=dataset_attributes, num_samples=n,
                     chosen_ratio=ratio, train_split=split, seed=request.seed, c=c, solver=solver,
                     reuse_dataset=request.reuse_dataset, block=block, request_id=request.request_id)


class _Progress:
    """Rate-limited progress reports with an ETA for the whole job."""

    def __init__(self, job: Job, interval: float):
        self.job, self.interval, self.last = job, interval, 0.0

    async def report(self, stage: str, done: int, total: int, eta: float, message: str = "", force: bool = False):
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            await self.job.update(stage=stage, done=done, total=total, eta=eta, message=message)


async def train(job: Job, spec: TrainSpec, sampler: Sampler, store: BoundaryStore,
                settings: TrainSettings) -> list[boundary_pb2.BoundaryInfo]:
    """Runs the whole job; returns the stored boundaries' metadata."""
    started = time.perf_counter()
    progress = _Progress(job, settings.progress_interval)
    path = dataset_path(settings.data_dir, spec.model, spec.model_version, SPACE_KEYS[spec.space], spec.seed)
    async with _dataset_locks[path]:
        path.mkdir(parents=True, exist_ok=True)
        folder_lock = FolderLock(path / ".lock")
        await asyncio.to_thread(folder_lock.__enter__)  # another process may hold it: wait off the event loop
        try:
            dataset = Dataset.open_or_create(path, model=spec.model, model_version=spec.model_version,
                                             space=SPACE_KEYS[spec.space], seed=spec.seed, dimension=spec.dimension,
                                             shard_size=settings.shard_size, attributes=spec.dataset_attributes)
            timings = await _ensure_dataset(job, spec, dataset, sampler, settings, progress)
            # Later stages only read the first N samples; others may grow the dataset once we release it.
            fits = await _fit_all(job, spec, dataset, settings, progress, timings)
        finally:
            await asyncio.to_thread(folder_lock.__exit__)
    await progress.report("storing", 0, len(fits), 0.0, force=True)
    infos = []
    for attr, (fit, attr_timings) in fits.items():
        meta = {
            "model": spec.model, "model_version": spec.model_version, "attribute": attr, "space": spec.space,
            "intercept": fit.intercept, "validation_accuracy": _finite(fit.validation_accuracy),
            "remaining_accuracy": _finite(fit.remaining_accuracy), "train_accuracy": fit.train_accuracy,
            "num_samples": fit.num_samples, "num_valid": fit.num_valid, "num_positive": fit.num_positive,
            "num_negative": fit.num_negative, "seed": spec.seed, "parents": [], "origin": "trained",
            "chosen_ratio": spec.chosen_ratio, "train_split": spec.train_split, "svm_c": spec.c,
            "solver": fit.solver, "converged": fit.converged, "threshold": fit.threshold,
            "dataset": str(path.relative_to(settings.data_dir)), "job_id": job.id,
            "timings": {**attr_timings, "total": time.perf_counter() - started},
        }
        stored, _ = await store.put(meta, fit.normal)
        infos.append(stored)
    return [info_of(b) for b in infos]


def _finite(value: float) -> float:
    return float(value) if np.isfinite(value) else 0.0


async def _ensure_dataset(job: Job, spec: TrainSpec, dataset: Dataset, sampler: Sampler,
                          settings: TrainSettings, progress: _Progress) -> dict[str, float]:
    """Makes the dataset hold N samples scored on every needed attribute; returns stage timings."""
    timings = {"sampling": 0.0, "augmenting": 0.0}
    if not spec.reuse_dataset or dataset.num_samples == 0:
        dataset.reset(spec.dataset_attributes, shard_size=settings.shard_size, block=spec.block)
    block = int(dataset.manifest["block"])
    if dataset.shard_size % block:
        raise failed_precondition(f"dataset {dataset.path}: shard size {dataset.shard_size} is not a multiple of its "
                                  f"block {block}; retrain with reuse_dataset=false")
    if block > spec.block:
        raise failed_precondition(f"dataset {dataset.path} was sampled in blocks of {block} codes, more than the "
                                  f"services accept now ({spec.block}); retrain with reuse_dataset=false")
    missing = sorted(set(spec.attributes) - set(dataset.attributes))
    if missing and dataset.num_samples:
        started = time.perf_counter()
        await _augment(job, spec, dataset, missing, sampler, settings, progress)
        timings["augmenting"] = time.perf_counter() - started
    elif missing:
        dataset.declare_attributes(missing)
    if dataset.num_samples < spec.num_samples:
        started = time.perf_counter()
        await _extend(job, spec, dataset, sampler, settings, progress)
        timings["sampling"] = time.perf_counter() - started
    return timings


async def _extend(job: Job, spec: TrainSpec, dataset: Dataset, sampler: Sampler, settings: TrainSettings,
                  progress: _Progress) -> None:
    """Samples, synthesizes and scores samples [have, N) block by block, pipelined, writing full shards."""
    block, shard_size, attrs = int(dataset.manifest["block"]), dataset.shard_size, dataset.attributes
    have, target = dataset.num_samples, spec.num_samples
    model = common_pb2.ModelRef(name=spec.model, version=spec.model_version)
    shard_index = have // shard_size
    buffer_codes: list[np.ndarray] = []
    buffer_scores: list[np.ndarray] = []
    buffer_valid: list[np.ndarray] = []
    if have % shard_size:  # the last shard is partial: reload it and extend it in place
        offset = shard_index * shard_size
        for off, codes, scores, valid in dataset.iter_shards(attributes=attrs):
            if off == offset:
                buffer_codes.append(codes)
                buffer_scores.append(np.stack([scores[a] for a in attrs], axis=1))
                buffer_valid.append(np.stack([valid[a] for a in attrs], axis=1))

    def flush() -> None:
        nonlocal shard_index, buffer_codes, buffer_scores, buffer_valid
        if not buffer_codes:
            return
        codes = np.concatenate(buffer_codes)
        scores = np.concatenate(buffer_scores)
        valid = np.concatenate(buffer_valid)
        dataset.write_shard(shard_index, codes, {a: scores[:, j] for j, a in enumerate(attrs)},
                            {a: valid[:, j] for j, a in enumerate(attrs)})
        if len(codes) == shard_size:
            shard_index += 1
            buffer_codes, buffer_scores, buffer_valid = [], [], []

    def work(start: int):
        index = start // block
        first = start - index * block
        count = min((index + 1) * block, target) - index * block

        async def run():
            codes = await sampler.sample(model, spec.space, shard_seed(spec.seed, index), count,
                                            f"{job.id}/b{index}")
            codes = codes[first:]
            values, valid = await sampler.generate_and_score(model, spec.space, codes, attrs, f"{job.id}/b{index}")
            return codes, values, valid
        return run

    starts = []
    position = have
    while position < target:
        starts.append(position)
        position = min((position // block + 1) * block, target)
    sampled, t0 = 0, time.perf_counter()
    fit_estimate = 3.0 * len(spec.attributes) + 1e-6 * target * 3
    try:
        async for codes, values, valid in ordered((work(s) for s in starts),
                                                  await sampler.depth(settings.pipeline_depth)):
            buffer_codes.append(codes)
            buffer_scores.append(values)
            buffer_valid.append(valid)
            sampled += len(codes)
            SAMPLES.inc(len(codes))
            if sum(len(c) for c in buffer_codes) >= shard_size:
                await asyncio.to_thread(flush)
            rate = sampled / max(1e-9, time.perf_counter() - t0)
            eta = (target - have - sampled) / rate + fit_estimate
            await progress.report("sampling", have + sampled, target, eta,
                                  f"{rate:.0f} samples/s through generate + score")
    finally:
        # Completed blocks are kept even on cancellation or error: a later job resumes from them.
        flush()
    await progress.report("sampling", target, target, fit_estimate, force=True)


async def _augment(job: Job, spec: TrainSpec, dataset: Dataset, missing: list[str], sampler: Sampler,
                   settings: TrainSettings, progress: _Progress) -> None:
    """Scores stored codes on attributes the dataset lacks (re-synthesizing them; nothing is resampled)."""
    model = common_pb2.ModelRef(name=spec.model, version=spec.model_version)
    block = int(dataset.manifest["block"])
    total, done, t0 = dataset.num_samples, 0, time.perf_counter()
    for index in range(len(dataset.shards)):
        if set(missing) <= dataset.shard_attributes(index):
            done += dataset.shards[index].count
            continue
        codes = await asyncio.to_thread(dataset.shard_codes, index)

        def work(lo: int, codes=codes):
            return lambda: sampler.generate_and_score(model, spec.space, codes[lo:lo + block], missing, job.id)

        parts = [r async for r in ordered((work(lo) for lo in range(0, len(codes), block)),
                                          await sampler.depth(settings.pipeline_depth))]
        values = np.concatenate([p[0] for p in parts])
        valid = np.concatenate([p[1] for p in parts])
        await asyncio.to_thread(dataset.add_attributes, index, {a: values[:, j] for j, a in enumerate(missing)},
                                {a: valid[:, j] for j, a in enumerate(missing)})
        done += len(codes)
        rate = done / max(1e-9, time.perf_counter() - t0)
        await progress.report("augmenting", done, total, (total - done) / rate, f"scoring {missing} on stored codes")
    dataset.declare_attributes(missing)


async def _fit_all(job: Job, spec: TrainSpec, dataset: Dataset, settings: TrainSettings, progress: _Progress,
                   timings: dict[str, float]) -> dict[str, tuple[svm.BoundaryFit, dict[str, float]]]:
    """Selects, gathers, fits and evaluates every attribute with three passes over the shards."""
    n, attrs = spec.num_samples, spec.attributes
    t = time.perf_counter()
    await progress.report("selecting", 0, len(attrs), -1, force=True)
    chosen: dict[str, tuple] = {}
    for i, attr in enumerate(attrs):
        scores, valid = await asyncio.to_thread(dataset.scores, attr, n)
        idx = np.flatnonzero(valid)
        if svm.chosen_count(len(idx), spec.chosen_ratio) < 2:
            raise failed_precondition(f"attribute {attr}: only {len(idx)} of {n} samples have a valid score; "
                                      f"too few to choose from (sample more or raise chosen_ratio)")
        pos, neg, threshold = svm.select_extremes(scores[idx], spec.chosen_ratio)
        chosen[attr] = (idx[pos], idx[neg], threshold, len(idx))
        await progress.report("selecting", i + 1, len(attrs), -1)
    selecting = time.perf_counter() - t

    t = time.perf_counter()
    await progress.report("gathering", 0, n, -1, "reading the chosen codes from the shards", force=True)
    wanted = {}
    for attr, (pos, neg, _, _) in chosen.items():
        wanted[f"{attr}+"], wanted[f"{attr}-"] = pos, neg
    gathered = await asyncio.to_thread(dataset.gather, wanted, n)
    gathering = time.perf_counter() - t

    fits: dict[str, svm.SvmFit] = {}
    fit_seconds: dict[str, float] = {}
    for i, attr in enumerate(attrs):
        await progress.report("fitting", i, len(attrs), -1, f"linear SVM ({spec.solver}) for {attr}", force=True)
        t = time.perf_counter()
        try:
            fits[attr] = await asyncio.to_thread(
                svm.fit_extremes, gathered[f"{attr}+"], gathered[f"{attr}-"], train_split=spec.train_split,
                seed=spec.seed, c=spec.c, solver=spec.solver, max_iter=settings.svm_max_iter)
        except ValueError as e:
            raise failed_precondition(f"attribute {attr}: {e}") from None
        fit_seconds[attr] = time.perf_counter() - t
        SVM_SECONDS.observe(fit_seconds[attr])
    del gathered

    t = time.perf_counter()
    await progress.report("evaluating", 0, n, -1, "accuracy on the remaining samples", force=True)
    hits = await asyncio.to_thread(_remaining_hits, dataset, n, attrs, chosen, fits)
    evaluating = time.perf_counter() - t

    out = {}
    for attr in attrs:
        pos, neg, threshold, num_valid = chosen[attr]
        fit = fits[attr]
        remaining = num_valid - len(pos) - len(neg)
        result = svm.BoundaryFit(**dataclasses.asdict(fit), num_samples=n, num_valid=num_valid,
                                num_positive=len(pos), num_negative=len(neg), threshold=threshold,
                                remaining_accuracy=hits[attr] / remaining if remaining else float("nan"))
        out[attr] = (result, {**timings, "selecting": selecting, "gathering": gathering,
                              "fitting": fit_seconds[attr], "evaluating": evaluating})
    return out


def _remaining_hits(dataset: Dataset, n: int, attrs: list[str], chosen: dict, fits: dict) -> dict[str, int]:
    """One pass: per attribute, correct side-of-plane predictions among valid, unchosen samples."""
    hits = dict.fromkeys(attrs, 0)
    normals = np.stack([fits[a].normal[0] for a in attrs], axis=1)  # (d, A)
    intercepts = np.array([fits[a].intercept for a in attrs])
    for offset, codes, scores, valid in dataset.iter_shards(attributes=attrs, limit=n):
        decision = codes.astype(np.float64) @ normals + intercepts  # (n, A)
        end = offset + len(codes)
        for j, attr in enumerate(attrs):
            pos, neg, threshold, _ = chosen[attr]
            keep = valid[attr].copy()
            for idx in (pos, neg):
                lo, hi = np.searchsorted(idx, [offset, end])
                keep[idx[lo:hi] - offset] = False
            predicted = decision[keep, j] > 0
            hits[attr] += int(np.sum(predicted == (scores[attr][keep] >= threshold)))
    return hits
