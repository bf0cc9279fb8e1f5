"""The refinement worker's continuous batching: joining, leaving, queue limit, deadline and cancel."""

from __future__ import annotations

import threading
import time

from services.inversion.refine import Options, _Row
from services.inversion.worker import Job, RefineWorker


class Counter:
    """Stands in for an Inverter's step: counts steps per row and records batch sizes (no model needed)."""

    def __init__(self, delay: float = 0.01):
        self.batches: list[int] = []
        self.delay = delay

    def step(self, rows, space):
        self.batches.append(len(rows))
        time.sleep(self.delay)
        for r in rows:
            r.step += 1
            if r.step >= r.options.max_steps:
                r.stopped = "max_steps"


def _job(inverter, steps: int, done: list, event: threading.Event | None = None) -> Job:
    import torch
    row = _Row(torch.zeros(3, 4, 4), torch.zeros(2), Options(max_steps=steps), None, None)

    def finish(job):
        done.append(job)
        if event is not None:
            event.set()
    return Job(inverter, "z", row, finish)


def test_jobs_join_a_running_batch_and_leave_when_done():
    inverter, done, finished = Counter(), [], threading.Event()
    worker = RefineWorker(max_batch_size=8, max_queue_size=8)
    try:
        first = _job(inverter, 40, done)
        assert worker.submit(first)
        time.sleep(0.1)
        second = _job(inverter, 5, done, finished)
        assert worker.submit(second)
        assert finished.wait(10)
        assert second.row.step == 5 and 2 in inverter.batches  # ran alongside the first
        deadline = time.time() + 10
        while len(done) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert first.row.step == 40 and inverter.batches[-1] == 1 and [j.row.stopped for j in done] == ["max_steps"] * 2
    finally:
        worker.close()


def test_queue_limit_deadline_and_cancel():
    inverter, done = Counter(delay=0.02), []
    worker = RefineWorker(max_batch_size=1, max_queue_size=1)
    try:
        running = _job(inverter, 10_000, done)
        running.row.deadline = time.monotonic() + 0.3
        assert worker.submit(running)
        time.sleep(0.05)
        queued = _job(inverter, 10_000, done)
        assert worker.submit(queued)
        assert not worker.submit(_job(inverter, 1, done))  # queue full: the caller answers RESOURCE_EXHAUSTED
        queued.row.cancelled = True
        deadline = time.time() + 10
        while len(done) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert running.row.stopped == "deadline" and 0 < running.row.step < 10_000
        assert queued.row.stopped == "cancelled" and queued.row.step == 0
    finally:
        worker.close()
