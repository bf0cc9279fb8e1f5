"""Continuous batching of refinements: concurrent requests share one Adam batch, joining and leaving per step."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

from services.common import metrics

from .refine import STOP_CANCELLED, STOP_DEADLINE, Inverter, _Row

log = logging.getLogger(__name__)


class Job:
    """One image's refinement as the worker sees it."""

    def __init__(self, inverter: Inverter, space: str, row: _Row, on_done: Callable[["Job"], None]):
        self.inverter = inverter
        self.space = space
        self.row = row
        self.on_done = on_done


class RefineWorker:
    """A thread that steps every running job; new jobs join the batch at the next step.

    Jobs of the same (model, space) are stepped together, at most `max_batch_size` rows at a time; the rest
    wait in a queue of at most `max_queue_size` jobs (`submit` returns False when it is full).
    """

    def __init__(self, max_batch_size: int = 32, max_queue_size: int = 64, service: str = "inversion"):
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[Job] = []
        self._cv = threading.Condition()
        self._stop = False
        self._queue_gauge = metrics.QUEUE_DEPTH.labels(service, "refine")
        self._batch_hist = metrics.BATCH_SIZE.labels(service, "refine")
        self._rejected = metrics.REJECTED.labels(service, "refine", "queue_full")
        self._thread = threading.Thread(target=self._run, name="refine-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        with self._cv:
            if len(self._pending) >= self.max_queue_size:
                self._rejected.inc()
                return False
            self._pending.append(job)
            self._queue_gauge.set(len(self._pending))
            self._cv.notify()
        return True

    def load(self) -> tuple[int, int]:
        """(running rows, queued jobs)."""
        with self._cv:
            return len(self._active), len(self._pending)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _admit(self) -> None:
        with self._cv:
            while not self._active and not self._pending and not self._stop:
                self._cv.wait()
            while self._pending and len(self._active) < self.max_batch_size:
                self._active.append(self._pending.popleft())
            self._queue_gauge.set(len(self._pending))

    def _finish(self, job: Job) -> None:
        try:
            job.on_done(job)
        except Exception:  # a callback must never kill the worker
            log.exception("refine callback failed")

    def _run(self) -> None:
        while True:
            self._admit()
            if self._stop:
                for job in self._active + list(self._pending):
                    job.row.stopped = STOP_CANCELLED
                    self._finish(job)
                return
            now = time.monotonic()
            for job in self._active:
                if job.row.cancelled:
                    job.row.stopped = STOP_CANCELLED
                elif job.row.deadline is not None and now >= job.row.deadline:
                    job.row.stopped = STOP_DEADLINE
            groups: dict[tuple[int, str], list[Job]] = {}
            for job in self._active:
                if job.row.stopped is None:
                    groups.setdefault((id(job.inverter), job.space), []).append(job)
            for jobs in groups.values():
                self._batch_hist.observe(len(jobs))
                try:
                    jobs[0].inverter.step([j.row for j in jobs], jobs[0].space)
                except Exception:
                    log.exception("refinement step failed")
                    for j in jobs:
                        j.row.stopped = "error"
            still = []
            for job in self._active:
                if job.row.stopped is None:
                    still.append(job)
                else:
                    self._finish(job)
            self._active = still
