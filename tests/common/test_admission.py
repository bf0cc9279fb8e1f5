"""The pixel budget's admission rules, in-process: small requests pass large waiters, large ones go in order,
refusals carry a retry hint, and every hold is released (also when the holder fails or is cancelled)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from services.common.admission import PixelBudget, release_memory
from services.common.errors import ServiceError


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_small_requests_pass_while_large_ones_wait():
    async def main():
        budget = PixelBudget("test", 100, reserve=25, small=25, max_wait=5)
        order: list[str] = []
        first_in = asyncio.Event()
        release_first = asyncio.Event()

        async def large(name, pixels, hold: asyncio.Event | None = None):
            async with budget.hold(pixels):
                order.append(name)
                if hold is not None:
                    first_in.set()
                    await hold.wait()

        first = asyncio.create_task(large("large-1", 70, release_first))
        await first_in.wait()
        second = asyncio.create_task(large("large-2", 60))
        await asyncio.sleep(0.05)
        assert order == ["large-1"] and budget.used == 70  # 70 + 60 > 75, the large share: it waits
        for i in range(3):  # 25 pixels each, one after another: the reserve keeps them flowing
            async with budget.hold(25):
                order.append(f"small-{i}")
        release_first.set()
        await asyncio.gather(first, second)
        assert order == ["large-1", "small-0", "small-1", "small-2", "large-2"]
        assert budget.used == 0
    run(main())


def test_large_requests_are_admitted_in_arrival_order():
    async def main():
        budget = PixelBudget("test", 100, reserve=20, max_wait=5)
        order: list[str] = []
        gate = asyncio.Event()

        async def take(name, pixels, wait_for: asyncio.Event | None = None):
            async with budget.hold(pixels):
                order.append(name)
                if wait_for is not None:
                    await wait_for.wait()

        holder = asyncio.create_task(take("a", 60, gate))
        await asyncio.sleep(0.01)
        big = asyncio.create_task(take("b", 50))   # waits: 60 + 50 > 80
        await asyncio.sleep(0.01)
        late = asyncio.create_task(take("c", 21))  # would fit (60 + 21 > 80: no) - and must not pass b anyway
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(holder, big, late)
        assert order == ["a", "b", "c"]
    run(main())


def test_a_request_not_admitted_in_time_is_refused_with_a_retry_hint():
    async def main():
        budget = PixelBudget("test", 100, reserve=10, max_wait=0.2)
        async with budget.hold(90):
            with pytest.raises(ServiceError) as err:
                async with budget.hold(50):
                    pass
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.value.retry_after and err.value.retry_after > 0
            assert "needs 50 pixels" in err.value.message and "retry after" in err.value.message
            # A call's own deadline shortens the wait.
            with pytest.raises(ServiceError):
                async with budget.hold(50, timeout=0.01):
                    pass
        assert budget.used == 0 and budget._waiting == 0 and not budget._queue
    run(main())


def test_too_many_waiting_requests_are_refused_at_once():
    async def main():
        budget = PixelBudget("test", 100, reserve=10, max_wait=5, max_waiting=1)
        async with budget.hold(90):
            waiter = asyncio.create_task(budget.hold(50).__aenter__())
            await asyncio.sleep(0.01)
            with pytest.raises(ServiceError) as err:
                async with budget.hold(50):
                    pass
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert budget.used == 0 and budget._waiting == 0 and not budget._queue
    run(main())


def test_holds_are_released_on_errors_and_oversized_requests_run_alone():
    async def main():
        budget = PixelBudget("test", 100, reserve=25)
        with pytest.raises(RuntimeError):
            async with budget.hold(60):
                raise RuntimeError("the handler failed")
        assert budget.used == 0
        async with budget.hold(10_000):  # over the large share: counts as all of it
            assert budget.used == 75
            async with budget.hold(6):  # the reserve is still there for a small one
                assert budget.used == 81
        assert budget.used == 0
    run(main())


def test_bad_budgets_and_release_memory():
    with pytest.raises(ValueError):
        PixelBudget("test", 0)
    with pytest.raises(ValueError):
        PixelBudget("test", 10, reserve=10)
    release_memory()  # glibc: returns freed pages; elsewhere a no-op


def test_pixels_released_early_go_back_at_once_and_a_capped_hold_keeps_its_cap():
    async def main():
        budget = PixelBudget("test", 100, reserve=25)
        async with budget.hold(60) as held:
            await held.release(20)
            assert budget.used == 40
            await held.release(100)  # more than is left: nothing below zero
            assert budget.used == 0
        assert budget.used == 0
        async with budget.hold(300) as held:  # capped at the large share, 75
            await held.release(200)  # 100 declared left: still over the cap
            assert budget.used == 75
            await held.release(50)
            assert budget.used == 50
        assert budget.used == 0 and budget._large_used == 0
    run(main())


def test_a_cancelled_caller_keeps_its_pixels_held_until_its_thread_ends():
    import threading

    async def main():
        budget = PixelBudget("test", 100, reserve=25)
        started, finish = threading.Event(), threading.Event()

        def work():
            started.set()
            finish.wait(10)

        async def call():
            async with budget.hold(60) as held:
                await held.to_thread(work)

        task = asyncio.create_task(call())
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.used == 60  # the thread still holds the memory the pixels stand for
        finish.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if budget.used == 0:
                break
        assert budget.used == 0 and budget._large_used == 0
    run(main())


def test_requests_as_large_as_the_reserve_leave_it_to_small_ones():
    async def main():
        budget = PixelBudget("test", 100, reserve=25, max_wait=0.2)  # small: up to 6 pixels
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(budget.hold(25))
            with pytest.raises(ServiceError):  # a fourth would take the reserve
                async with budget.hold(25):
                    pass
            async with budget.hold(6):
                assert budget.used == 81
    run(main())
