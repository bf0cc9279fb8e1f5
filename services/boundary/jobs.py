"""Background jobs: progress with ETA, re-attachable watchers, cancellation, idempotent request ids."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable

from prometheus_client import Gauge

from interfacegan.v1 import boundary_pb2, common_pb2
from services.common.errors import ServiceError, invalid_argument, not_found, resource_exhausted

log = logging.getLogger(__name__)

JOBS = Gauge("ifgan_boundary_jobs", "Training jobs known to this server, by state", ["state"])

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
        JOBS.labels("queued").inc()

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
        before = self.state
        for key, value in fields.items():
            setattr(self, key, value)
        if self.state != before:
            JOBS.labels(boundary_pb2.JobState.Name(before)[10:].lower()).dec()
            JOBS.labels(boundary_pb2.JobState.Name(self.state)[10:].lower()).inc()
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


class JobRecords:
    """Where finished jobs and request ids are kept (Redis, through the boundary store), so retries and
    WatchJob work after a restart.

    Args:
        store: a BoundaryStore (claim_request, request_value, set_request, save_job, load_job).
        ttl: seconds records are kept.
    """

    def __init__(self, store, ttl: int):
        self.store, self.ttl = store, ttl

    async def claim(self, rid: str, job_id: str) -> str:
        return await self.store.claim_request(f"train:{rid}", job_id, self.ttl)

    async def take_over(self, rid: str, job_id: str) -> None:
        await self.store.set_request(f"train:{rid}", job_id, self.ttl)

    async def lookup(self, rid: str) -> str | None:
        return await self.store.request_value(f"train:{rid}")

    async def save(self, job: "Job") -> None:
        await self.store.save_job(job.id, job.record(), self.ttl)

    async def load(self, job_id: str) -> dict | None:
        return await self.store.load_job(job_id)


class JobManager:
    """Runs jobs as asyncio tasks, at most `max_running` at once (the others wait QUEUED).

    Args:
        max_running: jobs running at the same time.
        records: persistence of finished jobs and request ids (None keeps them in memory only).
        max_queued: jobs that may wait QUEUED; one more is refused with RESOURCE_EXHAUSTED.
    """

    def __init__(self, max_running: int = 1, records: JobRecords | None = None, max_queued: int = 16):
        self.jobs: dict[str, Job] = {}
        self.by_request: dict[str, str] = {}
        self.slots = asyncio.Semaphore(max_running)
        self.records = records
        self.max_queued = max_queued
        self.keep_finished = 256

    async def submit(self, request, prepare: Callable[[], Awaitable[Callable[[Job], Awaitable[list]]]]
                     ) -> tuple[Job | None, dict | None]:
        """Starts a job for `request`, or finds the one its request_id already started.

        Args:
            prepare: validates the request (raising ServiceError) and returns the job's work, `work(job)`;
                called only when a new job starts, so a retry of a finished request needs no dependency.
        Returns:
            (live job, None), or (None, saved record) for a job that finished before a restart.
        """
        rid = request.request_id
        fp = fingerprint(request)
        found = await self._find(rid, fp) if rid else None
        if found is not None:
            return found
        work = await prepare()
        found = self._find_local(rid, fp) if rid else None  # another call may have started it meanwhile
        if found is not None:
            return found
        waiting = sum(1 for j in self.jobs.values() if j.state == boundary_pb2.JOB_STATE_QUEUED)
        if waiting >= self.max_queued:
            raise resource_exhausted(f"{waiting} training jobs are waiting already (at most {self.max_queued} may "
                                     f"wait); retry when one has finished", retry_after=30.0)
        job = Job(f"job-{uuid.uuid4().hex[:16]}", rid, fp)
        # Registered before the next await, so a concurrent retry in this process finds it.
        self.jobs[job.id] = job
        if rid:
            self.by_request[rid] = job.id
            if self.records is not None:
                claimed = await self.records.claim(rid, job.id)
                if claimed != job.id:
                    record = await self.records.load(claimed)
                    if record is not None:  # finished meanwhile (another instance)
                        del self.jobs[job.id], self.by_request[rid]
                        self._check(rid, claimed, record.get("fingerprint"), fp)
                        return None, record
                    # Claimed by a job that never finished (its instance died): this one takes over.
                    await self.records.take_over(rid, job.id)
        job.task = asyncio.create_task(self._run(job, work), name=job.id)
        return job, None

    @staticmethod
    def _check(rid: str, job_id: str, found_fp: str | None, fp: str) -> None:
        if found_fp is not None and found_fp != fp:
            raise invalid_argument("request_id", f"{rid!r} was already used by job {job_id} for a different "
                                                 f"request; use a new request_id for a new job")

    def _find_local(self, rid: str, fp: str) -> tuple[Job, None] | None:
        job_id = self.by_request.get(rid)
        if job_id is None or job_id not in self.jobs:
            return None
        self._check(rid, job_id, self.jobs[job_id].fingerprint, fp)
        return self.jobs[job_id], None

    async def _find(self, rid: str, fp: str) -> tuple[Job | None, dict | None] | None:
        local = self._find_local(rid, fp)
        if local is not None or self.records is None:
            return local
        job_id = await self.records.lookup(rid)
        record = await self.records.load(job_id) if job_id else None
        if record is None:
            return None  # unknown, or claimed by an instance that died before finishing: start afresh
        self._check(rid, job_id, record.get("fingerprint"), fp)
        return None, record

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
        if self.records is not None:
            try:
                await self.records.save(job)
            except Exception:  # noqa: BLE001
                log.exception("could not save the record of job %s", job.id)
                return  # keep it in memory: it is the only copy
            self._forget_old()

    def _forget_old(self) -> None:
        """Bounds memory: beyond `keep_finished` finished jobs, the oldest live on only as Redis records."""
        finished = [j for j in self.jobs.values() if j.finished]
        for job in sorted(finished, key=lambda j: j.started)[:max(0, len(finished) - self.keep_finished)]:
            del self.jobs[job.id]
            if job.request_id and self.by_request.get(job.request_id) == job.id:
                del self.by_request[job.request_id]

    async def watch(self, job_id: str) -> AsyncIterator[boundary_pb2.JobUpdate]:
        job = self.jobs.get(job_id)
        if job is not None:
            async for update in job.watch():
                yield update
            return
        record = await self.records.load(job_id) if self.records else None
        if record is None:
            raise not_found(f"no job {job_id!r}; job ids come from TrainBoundaries (finished jobs are kept for a week)")
        yield boundary_pb2.JobUpdate.FromString(bytes.fromhex(record["update"]))

    async def cancel(self, job_id: str) -> boundary_pb2.JobUpdate:
        job = self.jobs.get(job_id)
        if job is None:
            record = await self.records.load(job_id) if self.records else None
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
