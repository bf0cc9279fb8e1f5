"""The paper's disentanglement study: cosines of boundaries and the re-scoring of edited samples."""

from __future__ import annotations

import dataclasses
from typing import Awaitable, Callable

import numpy as np

from interfacegan.v1 import common_pb2
from services.common import editing
from services.common.pipeline import ordered
from services.common.upstream import CallContext

from .dataset import shard_seed
from .sampler import Sampler


@dataclasses.dataclass
class Rescore:
    """Per boundary (rows) and attribute (columns): mean score change per unit of edit, its standard error,
    and how many samples were valid at both ends."""

    mean: np.ndarray
    stderr: np.ndarray
    counts: np.ndarray


def rescore_summary(plus: np.ndarray, minus: np.ndarray, valid: np.ndarray, distance: float) -> tuple:
    """(mean, stderr, count) of (plus − minus) / 2d over valid samples, per column. Inputs (M, A)."""
    delta = (plus.astype(np.float64) - minus) / (2 * distance)
    counts = valid.sum(axis=0)
    safe = np.maximum(counts, 1)
    mean = np.where(valid, delta, 0).sum(axis=0) / safe
    var = np.where(valid, (delta - mean) ** 2, 0).sum(axis=0) / np.maximum(counts - 1, 1)
    stderr = np.sqrt(var / safe)
    mean = np.where(counts > 0, mean, np.nan)
    stderr = np.where(counts > 1, stderr, np.nan)
    return mean, stderr, counts


async def rescore(sampler: Sampler, model: common_pb2.ModelRef, space: int, normals: np.ndarray,
                  attributes: list[str], samples: int, distance: float, seed: int, block: int,
                  on_progress: Callable[[int, int], Awaitable[None]] | None = None,
                  request_id: str = "", depth: int = 4, call: CallContext | None = None) -> Rescore:
    """Edits `samples` sampled codes by ±distance along each normal, re-scores every attribute.

    Args:
        normals: (K, d) boundary normals (normalised here).
        block: codes per generator/scorer request.
        depth: blocks in flight at once.
    """
    normals = editing.unit(np.atleast_2d(normals))
    codes = []
    for lo in range(0, samples, block):
        # Seeded blocks so the sample set is reproducible whatever the block size limit of the services.
        codes.append(await sampler.sample(model, space, shard_seed(seed, lo // block),
                                             min(block, samples - lo), request_id, call))
    codes = np.concatenate(codes)
    k, a = len(normals), len(attributes)
    edited = {(i, sign): editing.edit(codes, n[None], np.array([[sign * distance]]))[:, 0, 0]
              for i, n in enumerate(normals) for sign in (1.0, -1.0)}
    items = [(key, lo) for key in edited for lo in range(0, samples, block)]

    def work(key, lo):
        return lambda: sampler.generate_and_score(model, space, edited[key][lo:lo + block], attributes, request_id, call)

    values = {key: [] for key in edited}
    valid = {key: [] for key in edited}
    total, done = 2 * k * samples, 0
    # Blocks pipelined through generator and scorer, results in order.
    async for (key, _), (v, ok) in _zip_ordered(items, ordered((work(*item) for item in items), depth)):
        values[key].append(v)
        valid[key].append(ok)
        done += len(v)
        if on_progress is not None:
            await on_progress(done, total)
    mean, stderr, counts = np.zeros((k, a)), np.zeros((k, a)), np.zeros((k, a), np.int64)
    for i in range(k):
        plus, minus = np.concatenate(values[(i, 1.0)]), np.concatenate(values[(i, -1.0)])
        both = np.concatenate(valid[(i, 1.0)]) & np.concatenate(valid[(i, -1.0)])
        mean[i], stderr[i], counts[i] = rescore_summary(plus, minus, both, distance)
    return Rescore(mean=mean, stderr=stderr, counts=counts)


async def _zip_ordered(items, results):
    i = 0
    async for result in results:
        yield items[i], result
        i += 1


def column_scaled(matrix: np.ndarray) -> np.ndarray:
    """Each column divided by its largest absolute finite value (for colouring attributes of different units)."""
    m = np.asarray(matrix, dtype=np.float64)
    scale = np.nanmax(np.abs(np.where(np.isfinite(m), m, np.nan)), axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return m / scale
