"""Continuous batching of refinements: concurrent requests share one Adam batch, joining and leaving per step."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

from services.common import metrics
from services.common.batching import LaneConfig, LaneScheduler

from .refine import STOP_CANCELLED, STOP_DEADLINE, Inverter, _Row

log = logging.getLogger(__name__)


class Job:
    """One image's refinement as the worker sees it."""

    def __init__(self, inverter: Inverter, space: str, row: _Row, on_done: Callable[["Job"], None]):
        self.inverter = inverter
        self.space = space
        self.row = row
        self.on_done = on_done
        self.submitted = 0.0  # time.monotonic() when queued


class RefineWorker:
    """A thread that steps every running job; new jobs join the batch at the next step.

    Jobs of the same (model, space) are stepped together, at most `max_batch_size` rows at a time; the rest
    wait in their priority lane's queue (`submit` returns False when it is full). Free rows go to the
    interactive lane first; the bulk lane keeps its guaranteed share of admissions (LaneConfig.bulk_min_share).
    The lanes' queue timeouts do not apply here: a queued refinement stops at its own deadline, with the
    encoder's guess, and a running one cannot be made to wait.
    """

    def __init__(self, max_batch_size: int = 32, max_queue_size: int = 64, service: str = "inversion",
                 lanes: LaneConfig | None = None):
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.lanes = lanes or LaneConfig()
        names = self.lanes.names
        self._pending: list[collections.deque[Job]] = [collections.deque() for _ in names]
        self.limits = [self.lanes.policy(i).max_queue_size or max_queue_size for i in range(len(names))]
        self._turns = LaneScheduler(len(names), self.lanes.bulk_min_share)
        self._active: list[Job] = []
        self._cv = threading.Condition()
        self._stop = False
        self._queue_gauge = metrics.QUEUE_DEPTH.labels(service, "refine")
        self._lane_gauges = [metrics.LANE_QUEUE_DEPTH.labels(service, "refine", n) for n in names]
        self._waits = [metrics.QUEUE_WAIT.labels(service, "refine", n) for n in names]
        self._rejected = [metrics.REJECTED.labels(service, "refine", n, "queue_full") for n in names]
        self._batch_hist = metrics.BATCH_SIZE.labels(service, "refine")
        self._thread = threading.Thread(target=self._run, name="refine-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job, lane: str | None = None) -> bool:
        """Queues `job` in `lane` (None = the default lane); False when that lane's queue is full.

        Raises:
            ServiceError: INVALID_ARGUMENT when `lane` is not a lane.
        """
        index = self.lanes.index(lane)
        with self._cv:
            if len(self._pending[index]) >= self.limits[index]:
                self._rejected[index].inc()
                return False
            job.submitted = time.monotonic()
            self._pending[index].append(job)
            self._gauges()
            self._cv.notify()
        return True

    def load(self) -> tuple[int, int]:
        """(running rows, queued jobs)."""
        with self._cv:
            return len(self._active), sum(len(q) for q in self._pending)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _gauges(self) -> None:
        for gauge, queue in zip(self._lane_gauges, self._pending):
            gauge.set(len(queue))
        self._queue_gauge.set(sum(len(q) for q in self._pending))

    def _admit(self) -> None:
        with self._cv:
            while not self._active and not any(self._pending) and not self._stop:
                self._cv.wait()
            now = time.monotonic()
            while len(self._active) < self.max_batch_size:
                waiting = [bool(q) for q in self._pending]
                if not any(waiting):
                    break
                lead = self._turns.order(waiting)[0]
                self._turns.led(lead, waiting)
                job = self._pending[lead].popleft()
                self._waits[lead].observe(now - job.submitted)
                self._active.append(job)
            self._gauges()

    def _finish(self, job: Job) -> None:
        try:
            job.on_done(job)
        except Exception:  # a callback must never kill the worker
            log.exception("refine callback failed")

    def _run(self) -> None:
        while True:
            self._admit()
            if self._stop:
                for job in self._active + [j for q in self._pending for j in q]:
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
