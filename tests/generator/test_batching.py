"""DynamicBatcher unit tests: no wait when idle, batching under load, deadlines, cancel, full queue, split order,
priority lanes (order, queue policies, starvation bound, per-lane metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import threading
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from services.common import metrics
from services.common.batching import (LANE_METADATA, BatchingConfig, DynamicBatcher, LaneConfig, LaneScheduler,
                                      QueuePolicy, batch_settings, request_lane)
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


# --- priority lanes ----------------------------------------------------------------------------------------------

def lanes(interactive: QueuePolicy = QueuePolicy(), bulk: QueuePolicy = QueuePolicy(), **kw) -> LaneConfig:
    return LaneConfig(policies=(interactive, bulk), **kw)


def sample(name: str, batcher: DynamicBatcher, **labels) -> float | None:
    return REGISTRY.get_sample_value(name, {"service": batcher.labels[0], "queue": batcher.labels[1], **labels})


def test_a_batch_is_filled_from_the_higher_lane_first():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=3, max_queue_delay_microseconds=0)
        blocker = await hold(device, batcher)
        bulk = [asyncio.create_task(batcher.submit([i], lane="bulk")) for i in range(4)]
        await asyncio.sleep(0.01)
        interactive = [asyncio.create_task(batcher.submit([100 + i], lane="interactive")) for i in range(2)]
        await asyncio.sleep(0.01)
        device.gate.set()
        await asyncio.gather(blocker, *bulk, *interactive)
        # The later interactive requests lead; bulk fills the rest of the batch, oldest first.
        assert device.batches[1:] == [[100, 101, 0], [1, 2, 3]]
        await batcher.close()
    run(main())


def test_lanes_off_is_one_fifo_queue():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=3, max_queue_delay_microseconds=0,
                                lanes=LaneConfig(enabled=False))
        blocker = await hold(device, batcher)
        tasks = [asyncio.create_task(batcher.submit([i], lane="bulk")) for i in range(4)]
        await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(batcher.submit([100 + i], lane="interactive")) for i in range(2)]
        await asyncio.sleep(0.01)
        device.gate.set()
        await asyncio.gather(blocker, *tasks)
        assert device.batches[1:] == [[0, 1, 2], [3, 100, 101]]
        assert sample("ifgan_batch_lane_queue_depth", batcher, lane="all") == 0
        await batcher.close()
    run(main())


def test_each_lane_has_its_own_queue_limit_and_the_total_depth_is_the_sum():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=4, max_queue_size=10,
                                lanes=lanes(QueuePolicy(max_queue_size=1), QueuePolicy(max_queue_size=2)))
        blocker = await hold(device, batcher)
        queued = [asyncio.create_task(batcher.submit([i, i], lane="bulk")) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceError) as err:
            await batcher.submit([9], lane="bulk")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "bulk" in err.value.message
        assert err.value.retry_after > 0
        queued.append(asyncio.create_task(batcher.submit([5], lane="interactive")))  # its own limit, not bulk's
        await asyncio.sleep(0.01)
        with pytest.raises(ServiceError, match="interactive batch queue is full"):
            await batcher.submit([6], lane="interactive")
        assert sample("ifgan_batch_lane_queue_depth", batcher, lane="bulk") == 4
        assert sample("ifgan_batch_lane_queue_depth", batcher, lane="interactive") == 1
        assert sample("ifgan_batch_queue_depth", batcher) == 5  # the autoscaling signal: every lane
        assert sample("ifgan_batch_rejected_total", batcher, lane="bulk", reason="queue_full") == 1
        assert sample("ifgan_batch_rejected_total", batcher, lane="interactive", reason="queue_full") == 1
        device.gate.set()
        await asyncio.gather(blocker, *queued)
        assert sample("ifgan_batch_queue_seconds_count", batcher, lane="bulk") == 2
        assert sample("ifgan_batch_queue_seconds_count", batcher, lane="interactive") == 2  # with the blocker
        await batcher.close()
    run(main())


def test_queue_timeout_rejects_and_the_own_deadline_still_applies():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=1, max_queue_delay_microseconds=0,
                                lanes=lanes(bulk=QueuePolicy(timeout_microseconds=30_000, timeout_action="reject")))
        blocker = await hold(device, batcher)
        with pytest.raises(ServiceError) as err:  # past its queue timeout: refused, never computed
            await batcher.submit([1], lane="bulk")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue timeout" in err.value.message
        assert err.value.retry_after > 0
        assert sample("ifgan_batch_rejected_total", batcher, lane="bulk", reason="queue_timeout") == 1
        with pytest.raises(ServiceError) as err:  # its own deadline, shorter than the queue timeout
            await batcher.submit([2], lane="bulk", timeout=0.01)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert sample("ifgan_batch_rejected_total", batcher, lane="bulk", reason="deadline") == 1
        device.gate.set()
        await blocker
        assert await batcher.submit([3], lane="bulk") == [(None, 30)]  # scheduled at once: no timeout
        assert device.seen == {-1, 3}
        await batcher.close()
    run(main())


def test_queue_timeout_delay_keeps_the_request_behind_the_bulk_lane():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=1, max_queue_delay_microseconds=0,
                                lanes=lanes(QueuePolicy(timeout_microseconds=30_000, timeout_action="delay")))
        blocker = await hold(device, batcher)
        bulk = asyncio.create_task(batcher.submit([4], lane="bulk"))
        delayed = asyncio.create_task(batcher.submit([3], lane="interactive"))
        await asyncio.sleep(0.08)  # past its queue timeout: moved to the back of the bulk lane, still waiting
        assert sample("ifgan_batch_rejected_total", batcher, lane="interactive", reason="delayed") == 1
        fresh = asyncio.create_task(batcher.submit([5], lane="interactive"))
        await asyncio.sleep(0.01)
        device.gate.set()
        assert await delayed == [(None, 30)]
        await asyncio.gather(blocker, bulk, fresh)
        assert device.batches[1:] == [[5], [4], [3]]
        await batcher.close()
    run(main())


def test_bulk_keeps_its_guaranteed_share_under_interactive_load():
    async def order(share: float) -> list[str]:
        device = Device()
        batcher = await started(device, max_batch_size=1, max_queue_delay_microseconds=0,
                                lanes=lanes(bulk_min_share=share))
        blocker = await hold(device, batcher)
        tasks = [asyncio.create_task(batcher.submit([1000 + i], key="b", lane="bulk")) for i in range(3)]
        tasks += [asyncio.create_task(batcher.submit([i], key="i", lane="interactive")) for i in range(9)]
        await asyncio.sleep(0.01)
        device.gate.set()
        await asyncio.gather(blocker, *tasks)
        await batcher.close()
        return "".join(k for k in device.keys[1:])

    assert run(order(0.25)) == "iiibiiibiiib"  # one batch in every four led by bulk while both wait
    assert run(order(0.0)) == "iiiiiiiiibbb"  # strict priority when asked


def test_lane_scheduler_counts_only_batches_where_the_lower_lane_waited():
    turns = LaneScheduler(2, 0.5)
    assert turns.order([True, False]) == [0, 1]
    turns.led(0, [True, False])  # bulk had nothing: no debt
    assert turns.order([True, True]) == [0, 1]
    turns.led(0, [True, True])
    assert turns.order([True, True]) == [1, 0]  # its turn
    turns.led(1, [True, True])
    assert turns.order([True, True]) == [0, 1]


def test_interactive_arrival_is_not_queued_behind_a_prefetched_bulk_batch():
    """While interactive traffic is seen, a full bulk batch is formed ahead only when the worker is about to be
    free, so an interactive request arriving meanwhile runs next instead of after it."""

    async def order(enabled: bool) -> list[list]:
        device = Device(seconds=0.3)
        batcher = await started(device, max_batch_size=1, max_queue_delay_microseconds=1000, prefetch_batches=1,
                                lanes=LaneConfig(enabled=enabled))
        try:
            await batcher.submit([0], lane="interactive")  # measures the batch time; interactive seen
            bulk = [asyncio.create_task(batcher.submit([10 + i], lane="bulk")) for i in range(3)]
            while len(device.batches) < 2:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.1)
            await batcher.submit([99], lane="interactive")
            await asyncio.gather(*bulk)
            return device.batches[1:]
        finally:
            await batcher.close()

    assert run(order(True)) == [[10], [99], [11], [12]]
    assert run(order(False)) == [[10], [11], [12], [99]]  # the baseline, one FIFO queue: behind every bulk request


def test_lane_names_are_checked():
    async def main():
        device = Device()
        batcher = await started(device)
        with pytest.raises(ServiceError) as err:
            await batcher.submit([1], lane="urgent")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "interactive, bulk" in err.value.message
        await batcher.close()
    run(main())

    class Context:
        def __init__(self, *md):
            self.md = md

        def invocation_metadata(self):
            return self.md

    assert request_lane(Context((LANE_METADATA, "Bulk"))) == "bulk"
    assert request_lane(Context(("x-request-id", "r")), "bulk") == "bulk"
    with pytest.raises(ServiceError, match="accepted: interactive, bulk"):
        request_lane(Context((LANE_METADATA, "fast")))


def test_lane_settings_build_one_lane_config_and_are_validated():
    from services.common.settings import ServerSettings

    @dataclasses.dataclass
    class Settings(batch_settings(max_batch_size=8, max_queue_size=16, max_queue_delay_microseconds=100),
                   ServerSettings):
        pass

    s = Settings.load(["--bulk-max-queue-size", "4", "--interactive-queue-timeout-microseconds", "500",
                       "--interactive-timeout-action", "delay", "--bulk-min-share", "0.2", "--default-lane", "bulk",
                       "--bulk-fill", "2"])
    config = s.batching_config()
    assert config.lanes == LaneConfig(True, "bulk", (QueuePolicy(0, 500, "delay"), QueuePolicy(4, 0, "reject")), 0.2,
                                      interactive_instances=1, bulk_fill=2, shared_worker_nice=10)
    assert Settings.load(["--no-priority-lanes"]).batching_config().lanes.enabled is False
    for bad in (["--bulk-timeout-action", "drop"], ["--default-lane", "urgent"], ["--bulk-min-share", "2"],
                ["--bulk-max-queue-size", "-1"], ["--bulk-fill", "-2"], ["--interactive-instances", "-1"],
                ["--shared-worker-nice", "20"]):
        with pytest.raises(ValueError):
            Settings.load(bad)


def test_interactive_batches_take_bulk_items_only_up_to_bulk_fill():
    async def main():
        device = Device()
        batcher = await started(device, max_batch_size=8, max_queue_delay_microseconds=0, lanes=lanes(bulk_fill=1))
        blocker = await hold(device, batcher)
        tasks = [asyncio.create_task(batcher.submit([i, i + 1, i + 2], lane="bulk")) for i in (10, 20)]
        tasks.append(asyncio.create_task(batcher.submit([1], lane="interactive")))
        await asyncio.sleep(0.01)
        device.gate.set()
        await asyncio.gather(blocker, *tasks)
        await batcher.close()
        assert device.batches[1:] == [[1, 10], [20, 21, 22, 11, 12]]  # then bulk leads: full batches
    run(main())


def test_a_reserved_worker_runs_interactive_batches_beside_a_running_bulk_batch():
    class BulkGate(Device):
        def __call__(self, items: list, key) -> list:
            if key == "bulk":
                self.entered.set()
                self.gate.wait(10)
            self.batches.append(list(items))
            return [(key, x) for x in items]

    async def interactive_waits(reserved: int) -> bool:
        device = BulkGate()
        device.gate.clear()
        batcher = await started(device, max_batch_size=4, max_queue_delay_microseconds=0,
                                lanes=lanes(interactive_instances=reserved))
        bulk = asyncio.create_task(batcher.submit([10], key="bulk", lane="bulk"))
        while not device.entered.is_set():
            await asyncio.sleep(0.002)
        edit = asyncio.create_task(batcher.submit([1], key="edit", lane="interactive"))
        await asyncio.sleep(0.2)
        waited = not edit.done()
        device.gate.set()
        assert await edit == [("edit", 1)] and await bulk == [("bulk", 10)]
        await batcher.close()
        return waited

    assert not run(interactive_waits(1))
    assert run(interactive_waits(0))  # no reserved worker: behind the running bulk batch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
@pytest.mark.parametrize("interactive_instances, expected", [(1, 7), (0, 0)])
def test_shared_workers_yield_the_cpu_to_interactive_workers(interactive_instances, expected):
    """With workers kept for interactive batches, the shared workers run niced (per thread, not the process)."""
    seen = {}

    def run(items, key):
        seen.setdefault(threading.current_thread().name.startswith("batch-top"), set()).add(
            os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        time.sleep(0.05)
        return items

    async def main():
        base = os.getpriority(os.PRIO_PROCESS, 0)
        lanes = LaneConfig(interactive_instances=interactive_instances, shared_worker_nice=7)
        batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=4, max_queue_size=64, lanes=lanes))
        await batcher.start()
        try:
            bulk = asyncio.ensure_future(batcher.submit(list(range(4)), key="k", timeout=10, lane="bulk"))
            await asyncio.sleep(0.01)  # the bulk batch holds the shared worker
            assert await batcher.submit([9], key="k", timeout=10, lane="interactive") == [9]
            await bulk
        finally:
            await batcher.close()
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the event loop's thread and the process are untouched
        return base

    base = asyncio.run(main())
    assert seen[False] == {base + expected}
    if interactive_instances:
        assert seen[True] == {base}
