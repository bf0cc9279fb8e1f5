"""Tuned variants for photos: pivotal tuning off the event loop, bounded in concurrency, stored by content hash."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Callable

import numpy as np
import torch

from services.common import variants

from .tuning import Tuned, TuningOptions, tune

log = logging.getLogger(__name__)


class PhotoTuner:
    """Tunes the faces of one photo into a generator variant and stores it where every replica can load it.

    Args:
        store: The shared variant store (None: tuning is off).
        options: Default tuning settings (a request may lower the step budget).
        concurrency: Tuning runs at once (each holds a CPU core busy for about a second or two).
    """

    def __init__(self, store: variants.VariantStore | None, options: TuningOptions, concurrency: int = 1):
        self.store = store
        self.options = options
        self._slots = asyncio.Semaphore(max(1, concurrency))

    @property
    def enabled(self) -> bool:
        return self.store is not None

    async def run(self, model, pivots: np.ndarray, targets: torch.Tensor, image_sha256: str, selection: str,
                  steps: int = 0, deadline: float | None = None, cancelled: Callable[[], bool] = lambda: False
                  ) -> tuple[str, Tuned]:
        """Tunes `model` (a GeneratorModel) around the pivots; returns (variant id, the run).

        The id hashes the base model and version, the photo's bytes, the face selection and the settings,
        so the same photo asked again maps to the same variant (re-tuning gives the same weights).

        Raises:
            variants.VariantError: The tuned weights are over the store's size limit.
        """
        options = TuningOptions(**{**vars(self.options), "steps": steps or self.options.steps})
        vid = variants.variant_id(model.name, model.spec.version, image_sha256, f"{selection};{options.key()}")
        async with self._slots:
            started = time.monotonic()
            tuned = await asyncio.to_thread(tune, model.net, torch.from_numpy(np.asarray(pivots, np.float32)),
                                            targets, options, deadline, cancelled)
        blob = variants.encode(model.name, model.spec.version, {k: v.numpy() for k, v in tuned.delta.items()},
                               {"faces": int(len(pivots)), "psnr": tuned.psnr, "steps": tuned.steps})
        await self.store.put(vid, blob)
        log.info("variant tuned", extra={"variant": vid, "faces": len(pivots), "steps": tuned.steps,
                                         "psnr": [round(p, 2) for p in tuned.psnr], "bytes": len(blob),
                                         "cpu_seconds": round(tuned.cpu_seconds, 2),
                                         "wall_seconds": round(time.monotonic() - started, 2)})
        return vid, tuned


def image_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
