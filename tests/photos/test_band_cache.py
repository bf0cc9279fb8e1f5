"""The Blend band cache under concurrency: one build per photo, callers that leave, failed builds, and no call
ever spinning on a finished build (which froze the inversion service's event loop)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from services.inversion.blending import BandCache


@dataclasses.dataclass
class Band:
    """What the cache needs of a band: its size."""
    nbytes: int
    name: str = ""


def run_guarded(scenario, seconds: float = 20.0):
    """Runs `scenario()` on its own event loop in a thread: a loop that never yields again cannot be interrupted
    from inside, so the test fails on the join instead of hanging the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = asyncio.run(scenario())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the event loop is stuck: a caller is spinning on a finished build"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_call_arriving_as_a_left_callers_build_finishes_gets_the_band():
    async def scenario():
        cache, ready = BandCache(1 << 20, 60), asyncio.Event()
        builds = []

        async def build():
            builds.append(1)
            await ready.wait()
            return Band(100, "built")

        first = asyncio.create_task(cache.get_or_build(("photo", 1), build))
        await asyncio.sleep(0)  # the first caller starts the build
        first.cancel()  # and leaves (its client's deadline), the build goes on for the others
        await asyncio.sleep(0)
        ready.set()  # the build resumes next ...
        late = asyncio.create_task(cache.get_or_build(("photo", 1), build))  # ... and this call right after it
        band = await asyncio.wait_for(late, 5)
        assert first.cancelled()
        return band, len(builds), cache.get(("photo", 1))

    band, builds, cached = run_guarded(scenario)
    assert band.name == "built" and builds == 1 and cached is band  # kept although its first caller left


def test_concurrent_calls_share_one_build_and_a_failed_build_is_retried_by_the_next_call():
    async def scenario():
        cache, ready = BandCache(1 << 20, 60), asyncio.Event()
        attempts = []

        async def failing():
            attempts.append("fail")
            await ready.wait()
            raise ValueError("undecodable photo")

        async def working():
            attempts.append("ok")
            return Band(10, "second")

        waiting = [asyncio.create_task(cache.get_or_build(("p",), failing)) for _ in range(3)]
        await asyncio.sleep(0)
        ready.set()
        errors = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(e, ValueError) for e in errors)
        band = await asyncio.wait_for(cache.get_or_build(("p",), working), 5)
        return attempts, band

    attempts, band = run_guarded(scenario)
    assert attempts == ["fail", "ok"] and band.name == "second"


def test_a_band_larger_than_the_cache_is_answered_but_not_kept():
    async def scenario():
        cache = BandCache(50, 60)

        async def build():
            return Band(80, "big")

        band = await cache.get_or_build(("big",), build)
        return band, cache.get(("big",)), cache.bytes

    band, cached, used = run_guarded(scenario)
    assert band.name == "big" and cached is None and used == 0


@pytest.mark.parametrize("callers", [2, 8])
def test_callers_leaving_at_every_point_never_leave_the_loop_stuck(callers):
    async def scenario():
        cache = BandCache(1 << 20, 60)
        built = []

        async def build():
            await asyncio.sleep(0.01)
            built.append(1)
            return Band(1)

        for round_ in range(30):
            key = ("photo", round_)
            tasks = [asyncio.create_task(cache.get_or_build(key, build)) for _ in range(callers)]
            for i, task in enumerate(tasks):
                await asyncio.sleep(0.002 * (i % 3))
                if i % 2 == 0:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.wait_for(cache.get_or_build(key, build), 5)
        return len(built)

    assert run_guarded(scenario) == 30  # one build per photo, whoever left
