"""A per-service budget of decoded pixels in flight: admission of image requests, memory returned after bursts."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import time
from typing import AsyncIterator

from prometheus_client import Counter, Gauge

from .errors import resource_exhausted


USED = Gauge("ifgan_pixel_budget_used", "Decoded image pixels held by admitted requests", ["service"])
CAPACITY = Gauge("ifgan_pixel_budget_capacity", "Decoded image pixels a service may hold at once", ["service"])
REFUSED = Counter("ifgan_pixel_budget_refused_total", "Requests the pixel budget refused, by reason (queue_full: "
                  "too many waiting; wait: not admitted within the longest wait or the call's deadline)",
                  ["service", "reason"])


#: Seconds without large requests after which freed memory is returned to the OS.
TRIM_DELAY = 1.0


def _libc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _libc_trim()


def release_memory() -> None:
    """Returns freed heap pages to the OS (glibc malloc_trim).

    glibc raises its mmap threshold after large frees, so later multi-megabyte arrays come from the heap
    and stay resident once freed; without a trim a service kept gigabytes after one burst of large images.
    """
    if _TRIM is not None:
        _TRIM(0)


class PixelBudget:
    """Decoded pixels a service may hold at once, shared by its image-decoding RPCs.

    A request asks for the pixels it will decode (read from the images' headers, before decoding) and holds
    them until it is done. Requests of at most `small` pixels (a quarter of `reserve` by default) may use the
    whole budget; larger ones only what leaves `reserve` free, so small requests keep flowing while large ones
    wait (were requests as large as the reserve small, four largest photos took all of it and a 64 px face
    waited seconds behind them). Large
    requests are admitted in arrival order. A request that is not admitted within `max_wait` seconds (or
    its deadline), or that finds `max_waiting` requests already waiting, is refused with RESOURCE_EXHAUSTED
    and a retry hint. A request larger than the large share is admitted alone (its own limits bound it).
    When the budget drains after large requests, freed memory is returned to the OS.

    The work of holds over `heavy` pixels (`Held.to_thread`) runs on the budget's own `threads`, not on the
    event loop's default executor: the quick steps of small calls (a model lookup, a 64 px decode) never
    queue there behind seconds-long decodes and encodes of large photos.

    Usage::

        budget = PixelBudget("scorer", capacity=128 << 20)
        async with budget.hold(pixels, timeout=context.time_remaining()) as held:
            decoded = await held.to_thread(decode, request)  # held until the thread ends, even if cancelled
            ...
            await held.release(done_pixels)  # what the request no longer holds goes back at once
    """

    def __init__(self, service: str, capacity: int, *, reserve: int | None = None, max_wait: float = 30.0,
                 max_waiting: int = 64, small: int | None = None, heavy: int | None = None, threads: int = 4):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 pixel, got {capacity}")
        self.service = service
        self.capacity = capacity
        self.reserve = capacity // 4 if reserve is None else reserve
        if not 0 <= self.reserve < capacity:
            raise ValueError(f"reserve must be within 0..capacity-1, got {self.reserve}")
        self.small = self.reserve // 4 if small is None else small
        if not 0 <= self.small <= self.reserve:
            raise ValueError(f"small must be within 0..reserve, got {self.small}")
        self.max_wait = max_wait
        self.max_waiting = max_waiting
        self.heavy = capacity // 64 if heavy is None else heavy
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"{service}-pixels")
        self.used = 0
        self._large_used = 0
        self._queue: collections.deque[object] = collections.deque()  # large waiters, in arrival order
        self._waiting = 0
        self._changed = asyncio.Condition()
        self._hold_seconds = 1.0  # moving average of large holds: the retry hint
        self._trim_pending = False
        self._trimmer: asyncio.Task | None = None
        self._gauge = USED.labels(service)
        CAPACITY.labels(service).set(capacity)

    def _fits(self, pixels: int, large: bool, token: object = None) -> bool:
        if not large:
            return self.used + pixels <= self.capacity
        if self._queue and self._queue[0] is not token:
            return False  # large requests go in arrival order
        return self.used + pixels <= self.capacity - self.reserve

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int, *, timeout: float | None = None) -> AsyncIterator[Held]:
        """Holds `pixels` of the budget for the body of the `async with`; yields a `Held` handle.

        Raises:
            ServiceError: RESOURCE_EXHAUSTED with retry_after when not admitted in time.
        """
        declared = pixels
        large = pixels > self.small
        # One request over the large share counts as the whole share: admitted alone (its own limits bound it).
        pixels = min(pixels, self.capacity - self.reserve)
        token = object()
        wait = self.max_wait if timeout is None else max(0.0, min(self.max_wait, timeout))
        async with self._changed:
            if not self._fits(pixels, large):
                if self._waiting >= self.max_waiting:
                    raise self._refusal(pixels, "queue_full")
                if large:
                    self._queue.append(token)
                self._waiting += 1
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: self._fits(pixels, large, token)), wait)
                except asyncio.TimeoutError:
                    raise self._refusal(pixels, "wait") from None
                finally:
                    self._waiting -= 1
                    if large:
                        self._queue.remove(token)
                        self._changed.notify_all()  # the next large waiter may be first now
            self.used += pixels
            if large:
                self._large_used += pixels
            self._gauge.set(self.used)
        held = Held(self, declared, pixels, large)
        try:
            yield held
        finally:
            if held._threads:
                # The caller left (cancelled, or failed) while threads still work on its pixels: they stay held,
                # so nothing else is admitted on memory not yet freed, and the trim waits for them.
                threads = asyncio.gather(*held._threads, return_exceptions=True)
                threads.add_done_callback(lambda _: asyncio.ensure_future(held._finish()))
            else:
                await asyncio.shield(held._finish())

    async def _give_back(self, pixels: int, large: bool, ended: float | None) -> None:
        async with self._changed:
            self.used -= pixels
            self._gauge.set(self.used)
            if large:
                self._large_used -= pixels
                if ended is not None:
                    self._hold_seconds = 0.8 * self._hold_seconds + 0.2 * ended
                self._trim_pending = True
            if self._trim_pending and self._large_used == 0 and self._trimmer is None:
                self._trimmer = asyncio.create_task(self._trim_when_idle())
            self._changed.notify_all()

    async def _trim_when_idle(self) -> None:
        """Returns memory once no large request has been held for TRIM_DELAY seconds.

        Later, not at the release: the request's arrays are freed only after its handler's frame lets go of
        them, and pages freed after a trim stay resident.
        """
        try:
            while True:
                await asyncio.sleep(TRIM_DELAY)
                if self._large_used == 0:
                    self._trim_pending = False
                    await asyncio.to_thread(release_memory)
                    return
        finally:
            self._trimmer = None

    def _refusal(self, pixels: int, reason: str):
        REFUSED.labels(self.service, reason).inc()
        retry = round(min(30.0, max(0.1, self._hold_seconds * (1 + len(self._queue)))), 1)
        return resource_exhausted(
            f"the service is decoding {self.used} of its {self.capacity} pixels in flight and {self._waiting} "
            f"image requests wait; this one needs {pixels} pixels; retry after {retry} s, or send smaller or "
            f"fewer images per request", retry_after=retry)


class Held:
    """An admitted request's share of a PixelBudget (from `PixelBudget.hold`)."""

    def __init__(self, budget: PixelBudget, declared: int, pixels: int, large: bool):
        self._budget = budget
        self._declared = declared  # what the request said it decodes; `pixels` is what it holds (capped)
        self.pixels = pixels
        self._large = large
        self._started = time.monotonic()
        self._threads: set[asyncio.Future] = set()
        self._finished = False

    async def release(self, pixels: int) -> None:
        """Gives back `pixels` of the declared ones now (decoded images dropped), before the request ends."""
        self._declared = max(0, self._declared - pixels)
        keep = min(self.pixels, self._declared)  # a capped request holds its cap until its rest fits under it
        if keep < self.pixels and not self._finished:
            freed, self.pixels = self.pixels - keep, keep
            await self._budget._give_back(freed, self._large, None)

    async def to_thread(self, fn, /, *args, **kwargs):
        """asyncio.to_thread, but the pixels stay held until the thread ends even when the caller is cancelled;
        heavy work runs on the budget's own threads."""
        if self.pixels > self._budget.heavy:
            call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            future = asyncio.get_running_loop().run_in_executor(self._budget._executor, call)
        else:
            future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        self._threads.add(future)
        future.add_done_callback(self._threads.discard)
        return await asyncio.shield(future)

    async def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            await self._budget._give_back(self.pixels, self._large, time.monotonic() - self._started)
