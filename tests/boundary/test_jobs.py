"""The job machinery in process with real Redis records: watchers, queueing, cancel, idempotency, restarts."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from interfacegan.v1 import boundary_pb2
from services.boundary.jobs import JobManager, JobRecords
from services.boundary.store import BoundaryStore
from services.common.errors import ServiceError

QUEUED, RUNNING = boundary_pb2.JOB_STATE_QUEUED, boundary_pb2.JOB_STATE_RUNNING
SUCCEEDED, CANCELLED, FAILED = (boundary_pb2.JOB_STATE_SUCCEEDED, boundary_pb2.JOB_STATE_CANCELLED,
                                boundary_pb2.JOB_STATE_FAILED)


def request(rid="", **fields):
    return boundary_pb2.TrainBoundariesRequest(request_id=rid, attributes=["yaw"], **fields)


def prepared(work):
    async def prepare():
        return work
    return prepare


async def steps(job, count=20, delay=0.0):
    for i in range(count):
        await job.update(stage="sampling", done=i + 1, total=count)
        await asyncio.sleep(delay)
    return []


def test_every_watcher_gets_every_update_and_the_final_state():
    async def scenario():
        manager = JobManager()
        job, _ = await manager.submit(request(), prepared(lambda j: steps(j, 50)))
        seen_fast, seen_slow = [], []

        async def slow():
            async for u in manager.watch(job.id):
                seen_slow.append(u)
                await asyncio.sleep(0.01)

        async def fast():
            async for u in job.watch():
                seen_fast.append(u)

        await asyncio.gather(slow(), fast())
        for seen in (seen_fast, seen_slow):
            assert seen[-1].state == SUCCEEDED
            done = [u.progress.done for u in seen if u.progress.stage == "sampling"]
            assert done == list(range(1, 51))
        late = [u async for u in manager.watch(job.id)]
        assert len(late) == 1 and late[0].state == SUCCEEDED

    asyncio.run(scenario())


def test_jobs_queue_run_one_at_a_time_and_cancel():
    async def scenario():
        manager = JobManager(max_running=1)
        release = asyncio.Event()

        async def blocking(job):
            await job.update(stage="sampling")
            await release.wait()
            return []

        first, _ = await manager.submit(request(), prepared(blocking))
        second, _ = await manager.submit(request(), prepared(blocking))
        await asyncio.sleep(0.05)
        assert first.state == RUNNING and second.state == QUEUED
        cancelled = await manager.cancel(second.id)
        assert cancelled.state == CANCELLED
        cancelled = await manager.cancel(first.id)
        assert cancelled.state == CANCELLED and first.finished

        async def broken(job):
            raise RuntimeError("scorer exploded")

        failed, _ = await manager.submit(request(), prepared(broken))
        final = [u async for u in failed.watch()][-1]
        assert final.state == FAILED and "scorer exploded" in final.error
        with pytest.raises(ServiceError, match="no job"):
            await manager.cancel("job-nope")

    asyncio.run(scenario())


def test_request_ids_are_idempotent_across_restarts(redis_url):
    async def scenario():
        store = BoundaryStore(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:")
        records = JobRecords(store, ttl=600)
        before = JobManager(records=records)
        rid = "train-once"
        job, _ = await before.submit(request(rid, num_samples=1000), prepared(lambda j: steps(j, 3)))
        again, _ = await before.submit(request(rid, num_samples=1000), prepared(lambda j: steps(j, 3)))
        assert again is job
        final = [u async for u in job.watch()][-1]
        await job.task

        async def must_not_run():
            raise AssertionError("a finished request must not be prepared again")

        after = JobManager(records=records)  # a new server instance
        live, record = await after.submit(request(rid, num_samples=1000), must_not_run)
        assert live is None and JobManager.record_update(record).job_id == job.id
        assert JobManager.record_update(record).state == final.state == SUCCEEDED
        watched = [u async for u in after.watch(job.id)]
        assert watched[0].job_id == job.id and watched[0].state == SUCCEEDED
        with pytest.raises(ServiceError, match="different request"):
            await after.submit(request(rid, num_samples=2000), must_not_run)
        # A request claimed by an instance that died mid-job is taken over by the next retry.
        await store.claim_request("train:orphan", "job-dead", 600)
        taken, _ = await after.submit(request("orphan"), prepared(lambda j: steps(j, 1)))
        await taken.task
        assert await records.lookup("orphan") == taken.id
        await store.close()

    asyncio.run(scenario())


def test_finished_jobs_leave_memory_but_stay_answerable_from_redis(redis_url):
    async def scenario():
        store = BoundaryStore(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:")
        manager = JobManager(records=JobRecords(store, ttl=600))
        manager.keep_finished = 2
        jobs = []
        for i in range(4):
            job, _ = await manager.submit(request(f"r{i}"), prepared(lambda j: steps(j, 1)))
            await job.task
            jobs.append(job)
        assert set(manager.jobs) == {jobs[2].id, jobs[3].id}
        watched = [u async for u in manager.watch(jobs[0].id)]
        assert watched[-1].state == SUCCEEDED and watched[-1].job_id == jobs[0].id
        live, record = await manager.submit(request("r0"), prepared(lambda j: steps(j, 1)))
        assert live is None and JobManager.record_update(record).job_id == jobs[0].id
        await store.close()

    asyncio.run(scenario())
