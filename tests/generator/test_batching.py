"""DynamicBatcher unit tests: no wait when idle, batching under load, deadlines, cancel, full queue, split order."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from services.common import metrics
from services.common.batching import BatchingConfig, DynamicBatcher
from services.common.errors import ServiceError


class Device:
    """A fake device: records every batch; can be held busy until released."""

    def __init__(self, seconds: float = 0.0):
        self.batches: list[list] = []
        self.keys: list = []
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list, key) -> list:
        self.batches.append(list(items))
        self.keys.append(key)
        self.entered.set()
        self.gate.wait(10)
        time.sleep(self.seconds)
        return [(key, x * 10) for x in items]

    @property
    def seen(self) -> set:
        return {x for b in self.batches for x in b}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def started(device: Device, **config) -> DynamicBatcher:
    # Queue-semantics tests hold the one worker busy and look at the queue; a prefetched batch would leave
    # it early, so prefetch is off unless a test asks for it.
    config.setdefault("prefetch_batches", 0)
    batcher = DynamicBatcher(device, BatchingConfig(**config), service="test", queue=f"q{id(device)}")
    await batcher.start()
    return batcher


async def hold(device: Device, batcher: DynamicBatcher) -> asyncio.Task:
    """Occupies the (single) instance with a batch that runs until device.gate is set."""
    device.gate.clear()
    device.entered.clear()
    task = asyncio.create_task(batcher.submit([-1], timeout=30))
    while not device.entered.is_set():
        await asyncio.sleep(0.002)
    return task


def test_lone_client_on_idle_device_does_not_wait_for_company():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=64, max_queue_delay_microseconds=300_000)
        latencies = []
        for i in range(5):  # a sequential client: each request alone, each run at once
            t = time.perf_counter()
            assert await batcher.submit([i], key="k") == [("k", i * 10)]
            latencies.append(time.perf_counter() - t)
        await batcher.close()
        assert max(latencies) < 0.15, latencies  # far below the 300 ms max_queue_delay
        assert [len(b) for b in device.batches] == [1] * 5
    run(main())


def test_concurrent_requests_are_batched_and_results_routed():
    async def main():
        device = Device(seconds=0.02)
        batcher = await started(device, max_batch_size=16, max_queue_delay_microseconds=20_000)
        results = await asyncio.gather(*[batcher.submit([i], key="k") for i in range(40)])
        assert results == [[("k", i * 10)] for i in range(40)]
        assert max(len(b) for b in device.batches) >= 8
        assert all(len(b) <= 16 for b in device.batches)
        # Different keys never share a batch.
        before = len(device.batches)
        await asyncio.gather(*[batcher.submit([i], key=i % 2) for i in range(20)])
        for key, b in zip(device.keys[before:], device.batches[before:]):
            assert {x % 2 for x in b} == {key}
        await batcher.close()
    run(main())


def test_request_larger_than_a_batch_is_split_and_streamed_in_order():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=8)
        slices = []
        async with contextlib.aclosing(batcher.stream(list(range(30)), key="k")) as chunks:
            async for offset, results in chunks:
                slices.append((offset, [x for _, x in results]))
        assert [o for o, _ in slices] == [0, 8, 16, 24]
        assert [x for _, xs in slices for x in xs] == [i * 10 for i in range(30)]
        await batcher.close()
    run(main())


def test_small_request_is_not_starved_behind_a_large_one():
    async def main():
        device = Device(seconds=0.01)
        batcher = await started(device, max_batch_size=4, max_queue_delay_microseconds=0)
        blocker = await hold(device, batcher)
        large = asyncio.create_task(batcher.submit(list(range(100, 140))))
        await asyncio.sleep(0.01)
        small = asyncio.create_task(batcher.submit([7]))
        await asyncio.sleep(0.01)
        device.gate.set()
        await small
        assert not large.done()  # the small one finished while the large one was still being served
        await asyncio.gather(blocker, large)
        await batcher.close()
    run(main())


def test_deadline_passed_in_queue_is_dropped_not_computed():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=8)
        blocker = await hold(device, batcher)
        with pytest.raises(ServiceError) as err:
            await batcher.submit([42], timeout=0.05)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        late = asyncio.create_task(batcher.submit([43], timeout=0.05))
        await asyncio.sleep(0.1)
        device.gate.set()
        await blocker
        with pytest.raises(ServiceError):
            await late
        await batcher.submit([1])  # the device moves on
        assert 42 not in device.seen and 43 not in device.seen
        with pytest.raises(ServiceError, match="already passed"):
            await batcher.submit([5], timeout=0)
        await batcher.close()
    run(main())


def test_default_timeout_applies_to_requests_without_deadline():
    async def main():
        device = Device()
        batcher = await started(device, default_timeout_microseconds=50_000)
        blocker = await hold(device, batcher)
        with pytest.raises(ServiceError) as err:
            await batcher.submit([9])
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        device.gate.set()
        await blocker
        assert 9 not in device.seen
        await batcher.close()
    run(main())


def test_full_queue_refuses_with_retry_hint_and_cancel_frees_a_place():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=4, max_queue_size=2)
        blocker = await hold(device, batcher)
        first = asyncio.create_task(batcher.submit([1]))
        second = asyncio.create_task(batcher.submit([2]))
        await asyncio.sleep(0.01)
        assert batcher.queued_requests == 2
        assert REGISTRY.get_sample_value("ifgan_batch_queue_depth", dict(zip(("service", "queue"), batcher.labels))) == 2
        with pytest.raises(ServiceError) as err:
            await batcher.submit([3])
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.retry_after and err.value.retry_after > 0
        assert "retry" in err.value.message
        second.cancel()  # a cancelled caller leaves the queue at once
        with contextlib.suppress(asyncio.CancelledError):
            await second
        assert batcher.queued_requests == 1
        third = asyncio.create_task(batcher.submit([3]))
        await asyncio.sleep(0.01)
        device.gate.set()
        assert await third == [(None, 30)] and await first == [(None, 10)]
        await blocker
        assert 2 not in device.seen  # the cancelled request was never computed
        await batcher.close()
    run(main())


def test_closing_a_stream_early_cancels_the_rest():
    async def main():
        device = Device(seconds=0.01)
        batcher = await started(device, max_batch_size=4)
        async with contextlib.aclosing(batcher.stream(list(range(400)))) as chunks:
            async for offset, _ in chunks:
                break
        await asyncio.sleep(0.05)
        assert len(device.seen) < 40  # at most a few batches ahead were computed
        assert batcher.queued_requests == 0
        await batcher.close()
    run(main())


def test_errors_of_run_batch_reach_every_caller_of_the_batch():
    def broken(items, key):
        raise ValueError("device on fire")

    async def main():
        batcher = DynamicBatcher(broken, BatchingConfig(max_batch_size=8), service="test", queue="broken")
        await batcher.start()
        results = await asyncio.gather(*[batcher.submit([i]) for i in range(3)], return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        await batcher.close()
    run(main())


def test_close_refuses_queued_requests_as_unavailable():
    async def main():
        device = Device()
        batcher = await started(device)
        blocker = await hold(device, batcher)
        queued = asyncio.create_task(batcher.submit([5]))
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.01)
        device.gate.set()
        await closing
        with pytest.raises(ServiceError) as err:
            await queued
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        await blocker
        with pytest.raises(ServiceError):
            await batcher.submit([1])
    run(main())


def test_batching_off_runs_one_item_per_batch_and_metrics_are_recorded():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=1)
        await asyncio.gather(*[batcher.submit([i, i + 100]) for i in range(5)])
        assert all(len(b) == 1 for b in device.batches) and len(device.batches) == 10
        await batcher.close()
        return batcher.labels

    labels = run(main())
    sizes = metrics.BATCH_SIZE.labels(*labels)
    assert sizes._sum.get() == 10  # ten batches of one item
    depth = REGISTRY.get_sample_value("ifgan_batch_queue_depth", {"service": labels[0], "queue": labels[1]})
    assert depth == 0


def test_config_is_validated():
    with pytest.raises(ValueError):
        BatchingConfig(max_batch_size=0)
    with pytest.raises(ValueError):
        BatchingConfig(max_batch_size=8, preferred_batch_sizes=(16,))


def test_preferred_batch_sizes_are_formed_when_possible():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=16, preferred_batch_sizes=(4, 8),
                                max_queue_delay_microseconds=0)
        blocker = await hold(device, batcher)
        waiting = [asyncio.create_task(batcher.submit([i])) for i in range(11)]
        await asyncio.sleep(0.02)
        device.gate.set()
        await asyncio.gather(blocker, *waiting)
        assert [len(b) for b in device.batches[1:]] == [8, 3]  # the largest preferred size, then the rest
        await batcher.close()
    run(main())


def test_prefetched_batch_runs_while_the_event_loop_is_busy():
    """With prefetch the worker starts the next batch itself; without it the batch waits for the loop."""

    async def batches_done_while_loop_blocked(prefetch: int) -> int:
        device = Device(seconds=0.05)
        batcher = await started(device, max_batch_size=4, max_queue_delay_microseconds=0, prefetch_batches=prefetch)
        try:
            tasks = [asyncio.create_task(batcher.submit([i, i + 1, i + 2, i + 3])) for i in (0, 10, 20)]
            while not device.entered.is_set():
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.005)  # the scheduler forms the prefetched batch while the first runs
            time.sleep(0.4)  # the event loop is busy (as when answering a finished batch): no scheduling now
            done = len(device.batches)
            results = await asyncio.gather(*tasks)
            assert [r[1] for r in results[1]] == [100, 110, 120, 130]  # results still routed, in order
            return done
        finally:
            await batcher.close()

    assert run(batches_done_while_loop_blocked(1)) == 2
    assert run(batches_done_while_loop_blocked(0)) == 1


def test_prefetched_batch_gathers_company_until_a_worker_frees_up():
    """A batch formed while the worker is busy keeps taking arrivals instead of leaving half empty."""

    async def main():
        device = Device(seconds=0.3)
        batcher = await started(device, max_batch_size=8, max_queue_delay_microseconds=1000, prefetch_batches=1)
        try:
            await batcher.submit([0] * 8)  # measures the time per item the estimate of a worker's free time uses
            first = asyncio.create_task(batcher.submit(list(range(8))))
            while len(device.batches) < 2:
                await asyncio.sleep(0.001)
            later = []
            for i in range(4):  # arrivals spread over 40 ms, far beyond the 1 ms queue delay
                later.append(asyncio.create_task(batcher.submit([100 + i])))
                await asyncio.sleep(0.01)
            await asyncio.gather(first, *later)
            assert sorted(device.batches[2]) == [100, 101, 102, 103]  # one batch, not four
        finally:
            await batcher.close()

    run(main())


def test_a_prefetched_batch_whose_callers_all_left_is_not_computed():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=4, max_queue_delay_microseconds=0, prefetch_batches=1)
        try:
            blocker = await hold(device, batcher)
            waiting = asyncio.create_task(batcher.submit([7, 8]))
            await asyncio.sleep(0.02)
            assert batcher.queued_requests == 0  # it left the queue: prefetched at the worker
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            device.gate.set()
            await blocker
            await asyncio.sleep(0.05)
            assert 7 not in device.seen
        finally:
            await batcher.close()

    run(main())


def test_a_prefetched_slice_whose_deadline_passes_at_the_worker_is_not_computed():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=4, max_queue_delay_microseconds=0, prefetch_batches=1)
        try:
            blocker = await hold(device, batcher)
            late = asyncio.create_task(batcher.submit([7], timeout=0.05))
            on_time = asyncio.create_task(batcher.submit([8], timeout=30))
            await asyncio.sleep(0.02)
            assert batcher.queued_requests == 0  # both prefetched together, waiting at the worker
            with pytest.raises(ServiceError) as err:
                await late
            assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            device.gate.set()
            await blocker
            assert await on_time == [(None, 80)]
            assert 7 not in device.seen and 8 in device.seen  # only the live slice ran
        finally:
            await batcher.close()

    run(main())
