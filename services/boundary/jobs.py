"""Background jobs: progress with ETA, re-attachable watchers, cancellation, idempotent request ids."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable

from interfacegan.v1 import boundary_pb2, common_pb2
from services.common.errors import ServiceError, invalid_argument, not_found

log = logging.getLogger(__name__)

TERMINAL = (boundary_pb2.JOB_STATE_SUCCEEDED, boundary_pb2.JOB_STATE_FAILED, boundary_pb2.JOB_STATE_CANCELLED)


class Job:
    """One job's live state. Every watcher gets every update in order (a watcher that falls more than
    `backlog` updates behind loses the oldest progress updates, never the final state)."""

    backlog = 256

    def __init__(self, job_id: str, request_id: str, fingerprint: str):
        self.id = job_id
        self.request_id = request_id
        self.fingerprint = fingerprint
        self.state = boundary_pb2.JOB_STATE_QUEUED
        self.started = time.time()
        self.stage = "queued"
        self.done = 0
        self.total = 0
        self.eta = -1.0
        self.message = ""
        self.boundaries: list[boundary_pb2.BoundaryInfo] = []
        self.error = ""
        self.task: asyncio.Task | None = None
        self._watchers: list[collections.deque] = []
        self._wakeups: list[asyncio.Event] = []

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def snapshot(self) -> boundary_pb2.JobUpdate:
        return boundary_pb2.JobUpdate(
            job_id=self.id, state=self.state, error=self.error, boundaries=self.boundaries,
            progress=common_pb2.Progress(stage=self.stage, done=self.done, total=self.total, eta_seconds=self.eta,
                                         elapsed_seconds=time.time() - self.started, message=self.message))

    async def update(self, **fields) -> None:
        """Sets fields (state, stage, done, total, eta, message, boundaries, error) and tells every watcher."""
        for key, value in fields.items():
            setattr(self, key, value)
        update = self.snapshot()
        for queue, wakeup in zip(self._watchers, self._wakeups):
            queue.append(update)
            wakeup.set()

    async def watch(self) -> AsyncIterator[boundary_pb2.JobUpdate]:
        """The state now, then every update, until the job ends (its final state is always sent)."""
        queue: collections.deque = collections.deque(maxlen=self.backlog)
        wakeup = asyncio.Event()
        queue.append(self.snapshot())
        self._watchers.append(queue)
        self._wakeups.append(wakeup)
        try:
            while True:
                while queue:
                    update = queue.popleft()
                    yield update
                    if update.state in TERMINAL:
                        return
                wakeup.clear()
                if not queue:
                    await wakeup.wait()
        finally:
            self._watchers.remove(queue)
            self._wakeups.remove(wakeup)

    def record(self) -> dict:
        """JSON-able final state (kept in Redis so WatchJob works after a restart)."""
        return {"job_id": self.id, "request_id": self.request_id, "fingerprint": self.fingerprint,
                "update": self.snapshot().SerializeToString().hex()}


def fingerprint(request) -> str:
    """Hash of a request without its request_id (a reused id must carry the same request)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.request_id = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()[:32]


class JobManager:
    """Runs jobs as asyncio tasks, at most `max_running` at once (the others wait QUEUED).

    Args:
        max_running: jobs running at the same time.
        save: called with a finished job (persists its record); errors are logged, not raised.
        load: returns a saved record for a job id unknown in memory, or None.
        claim: (request_id, job_id) -> the job id that request id already names (or job_id itself).
    """

    def __init__(self, max_running: int = 1, *, save: Callable[[Job], Awaitable[None]] | None = None,
                 load: Callable[[str], Awaitable[dict | None]] | None = None,
                 claim: Callable[[str, str], Awaitable[str]] | None = None):
        self.jobs: dict[str, Job] = {}
        self.by_request: dict[str, str] = {}
        self.slots = asyncio.Semaphore(max_running)
        self._save, self._load, self._claim = save, load, claim

    async def submit(self, request, work: Callable[[Job], Awaitable[list]]) -> tuple[Job | None, dict | None]:
        """Starts `work(job)` for `request`, or finds the job its request_id already started.

        Returns (live job, None) or (None, saved record) for a job that finished before a restart.
        """
        rid = request.request_id
        fp = fingerprint(request)
        existing_id = self.by_request.get(rid) if rid else None
        if rid and existing_id is None and self._claim is not None:
            candidate = f"job-{uuid.uuid4().hex[:16]}"
            claimed = await self._claim(rid, candidate)
            existing_id = None if claimed == candidate else claimed
            job_id = candidate
        else:
            job_id = f"job-{uuid.uuid4().hex[:16]}"
        if existing_id:
            job = self.jobs.get(existing_id)
            record = None if job else (await self._load(existing_id) if self._load else None)
            found_fp = job.fingerprint if job else (record or {}).get("fingerprint")
            if found_fp is not None and found_fp != fp:
                raise invalid_argument("request_id", f"{rid!r} was already used by job {existing_id} for a different "
                                                     f"request; use a new request_id for a new job")
            if job or record:
                return job, record
            # Claimed by an instance that died before finishing: run it again under the same id.
            job_id = existing_id
        job = Job(job_id, rid, fp)
        self.jobs[job_id] = job
        if rid:
            self.by_request[rid] = job_id
        job.task = asyncio.create_task(self._run(job, work), name=job_id)
        return job, None

    async def _run(self, job: Job, work: Callable[[Job], Awaitable[list]]) -> None:
        try:
            async with self.slots:
                await job.update(state=boundary_pb2.JOB_STATE_RUNNING, stage="starting")
                boundaries = await work(job)
            await job.update(state=boundary_pb2.JOB_STATE_SUCCEEDED, stage="done", eta=0.0, boundaries=boundaries,
                             message=f"{len(boundaries)} boundaries stored")
        except asyncio.CancelledError:
            await job.update(state=boundary_pb2.JOB_STATE_CANCELLED, eta=0.0, message="cancelled by CancelJob")
        except ServiceError as e:
            await job.update(state=boundary_pb2.JOB_STATE_FAILED, eta=0.0, error=f"{e.code.name}: {e.message}")
        except Exception as e:  # noqa: BLE001 - a job failure must end in FAILED, never kill the server
            log.exception("job %s failed", job.id)
            await job.update(state=boundary_pb2.JOB_STATE_FAILED, eta=0.0, error=f"{type(e).__name__}: {e}")
        log.info("job finished", extra={"job_id": job.id, "state": boundary_pb2.JobState.Name(job.state),
                                        "seconds": round(time.time() - job.started, 2), "error": job.error})
        if self._save is not None:
            try:
                await self._save(job)
            except Exception:  # noqa: BLE001
                log.exception("could not save the record of job %s", job.id)

    async def watch(self, job_id: str) -> AsyncIterator[boundary_pb2.JobUpdate]:
        job = self.jobs.get(job_id)
        if job is not None:
            async for update in job.watch():
                yield update
            return
        record = await self._load(job_id) if self._load else None
        if record is None:
            raise not_found(f"no job {job_id!r}; job ids come from TrainBoundaries (finished jobs are kept for a week)")
        yield boundary_pb2.JobUpdate.FromString(bytes.fromhex(record["update"]))

    async def cancel(self, job_id: str) -> boundary_pb2.JobUpdate:
        job = self.jobs.get(job_id)
        if job is None:
            record = await self._load(job_id) if self._load else None
            if record is None:
                raise not_found(f"no job {job_id!r}")
            return boundary_pb2.JobUpdate.FromString(bytes.fromhex(record["update"]))
        if not job.finished and job.task is not None:
            job.task.cancel()
            try:
                await asyncio.shield(job.task)
            except asyncio.CancelledError:
                pass
        return job.snapshot()

    async def close(self) -> None:
        running = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    def record_update(record: dict) -> boundary_pb2.JobUpdate:
        return boundary_pb2.JobUpdate.FromString(bytes.fromhex(record["update"]))
