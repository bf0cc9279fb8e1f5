"""Dynamic batching (Triton's dynamic-batcher semantics), shared by the generator and the scorer.

API::

    config = BatchingConfig(max_batch_size=64, max_queue_delay_microseconds=2000, max_queue_size=256)
    batcher = DynamicBatcher(run_batch, config, service="generator", queue="dcgan-digiface-64")
    await batcher.start()
    # run_batch(items: list, key) -> list of results, one per item, in order. It is synchronous and
    # runs in a worker thread (`config.instances` threads), so it may hold the GIL-free torch/ORT call.
    results = await batcher.submit(items, key=("z", 0.7), timeout=5.0)    # all results, in order
    async with contextlib.aclosing(batcher.stream(items, key=k, timeout=t)) as chunks:
        async for offset, results in chunks:                              # slices, in order, as batches finish
            ...
    await batcher.close()

Semantics:
- Items of queued requests with the same `key` run together, up to `max_batch_size` per batch. A request
  larger than a batch is split; its slices are delivered in order. A partly served request goes to the back
  of the queue, so one large request does not starve small ones.
- While a batch runs, the next one is formed and handed to the worker ahead (`prefetch_batches`), so the
  device goes from batch to batch without waiting for a busy event loop; that batch keeps gathering
  company until about when a worker frees up.
- A lone client on an idle device never waits: when no batch is running the queue is dispatched at once.
  The batcher waits (at most `max_queue_delay_microseconds`) only when there is evidence of concurrent load:
  another instance is running a batch, or the last batch served several requests whose clients are expected
  back (their follow-up requests are gathered instead of being run one by one).
- `max_queue_size` queued requests at most; one more is refused with RESOURCE_EXHAUSTED and a retry hint
  (ServiceError.retry_after, estimated from the measured batch time).
- A request whose deadline (`timeout`, else `default_timeout_microseconds`) passes while queued is dropped
  without being computed and fails with DEADLINE_EXCEEDED. A cancelled caller (the task is cancelled or the
  stream closed) frees its place in the queue at once.
- Metrics (services/common/metrics.py): queue depth (items), batch sizes, queue wait, rejections by reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Hashable, Sequence

from . import metrics
from .errors import deadline_exceeded, resource_exhausted, unavailable
from .settings import setting

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batcher settings, named as in Triton's model configuration.

    Attributes:
        max_batch_size: Most items run in one batch (1 disables batching).
        max_queue_delay_microseconds: Longest time a queued item waits for company under load.
        max_queue_size: Most requests waiting in the queue; more are refused (RESOURCE_EXHAUSTED).
        preferred_batch_sizes: Optional batch sizes to form when possible (e.g. sizes captured as CUDA graphs).
        default_timeout_microseconds: Deadline of requests that carry none (0 = no deadline).
        instances: Batches that may run at once (worker threads; Triton's instance_group count).
        prefetch_batches: Batches formed ahead and waiting at the workers, so a worker starts the next
            batch the moment it finishes one instead of waiting for the event loop (which is then busy
            answering the batch just done). 0 forms each batch only when a worker is free.
    """

    max_batch_size: int = 64
    max_queue_delay_microseconds: int = 2000
    max_queue_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = ()
    default_timeout_microseconds: int = 0
    instances: int = 1
    prefetch_batches: int = 1

    def __post_init__(self):
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.instances < 1:
            raise ValueError("max_batch_size, max_queue_size and instances must be at least 1")
        if self.prefetch_batches < 0:
            raise ValueError("prefetch_batches must be 0 or more")
        if any(s < 1 or s > self.max_batch_size for s in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes {self.preferred_batch_sizes} must lie in 1..max_batch_size")


def batch_settings(*, max_batch_size: int, max_queue_size: int, max_queue_delay_microseconds: int | None = None,
                   instances: int = 1, prefetch_batches: int = 1, max_batch_size_help: str = "",
                   zero_batch_size_means: str = "", instances_help: str = "") -> type:
    """The batcher's settings group with one service's defaults, to mix into that service's Settings.

    Every batching service declares its batcher with this group, so the flags (--max-batch-size, ...), the
    environment variables (IFGAN_MAX_BATCH_SIZE, ...), the spelling and the units (Triton's) are the same
    everywhere. Without `max_queue_delay_microseconds` the group has only max_batch_size and max_queue_size:
    the continuous batching of the inversion service forms no batches to wait for.

    Usage::

        @dataclasses.dataclass
        class Settings(batch_settings(max_batch_size=64, max_queue_size=256, max_queue_delay_microseconds=5000),
                       ServerSettings):
            ...
        batcher = DynamicBatcher(run, settings.batching_config(), ...)

    Args:
        zero_batch_size_means: When given, max_batch_size 0 is accepted and means this (e.g. a device-dependent
            size the service picks; it then passes max_batch_size to `batching_config`).
    """
    # Class bodies do not see the enclosing function's names they assign themselves: copy the defaults.
    batch_default, queue_default, delay_default = max_batch_size, max_queue_size, max_queue_delay_microseconds
    instances_default, prefetch_default = instances, prefetch_batches
    least = 0 if zero_batch_size_means else 1
    size_help = max_batch_size_help or "most items run in one batch"
    if zero_batch_size_means:
        size_help += f"; 0 = {zero_batch_size_means}"

    @dataclasses.dataclass
    class QueueSettings:
        max_batch_size: int = setting(batch_default, size_help)
        max_queue_size: int = setting(queue_default, "requests that may wait; more are refused with "
                                                      "RESOURCE_EXHAUSTED and a retry hint")

        def validate(self) -> None:
            super().validate()  # type: ignore[misc] - the ServerSettings this group is mixed into
            if not least <= self.max_batch_size <= 4096:
                raise ValueError(f"max_batch_size must be within {least}..4096, got {self.max_batch_size}")
            if self.max_queue_size < 1:
                raise ValueError(f"max_queue_size must be at least 1, got {self.max_queue_size}")

    if max_queue_delay_microseconds is None:
        return QueueSettings

    @dataclasses.dataclass
    class BatchSettings(QueueSettings):
        max_queue_delay_microseconds: int = setting(delay_default, "longest wait of a queued "
                                                    "request for company under load (never when idle)")
        preferred_batch_sizes: str = setting("", "optional batch sizes to form when possible, comma separated")
        default_timeout_microseconds: int = setting(0, "deadline of requests that carry none (0 = none)")
        instances: int = setting(instances_default, instances_help or "batches that may run at once (worker threads)")
        prefetch_batches: int = setting(prefetch_default, "batches formed ahead while one runs, so the device "
                                                          "never waits for the event loop between batches (0 = "
                                                          "form each batch when a worker is free)")

        def validate(self) -> None:
            super().validate()
            if self.max_queue_delay_microseconds < 0 or self.default_timeout_microseconds < 0:
                raise ValueError("max_queue_delay_microseconds and default_timeout_microseconds must be 0 or more")
            if self.instances < 1 or self.prefetch_batches < 0:
                raise ValueError(f"instances must be at least 1 and prefetch_batches 0 or more, got "
                                 f"{self.instances} and {self.prefetch_batches}")
            sizes = self.preferred_sizes()
            if any(v < 1 or (self.max_batch_size and v > self.max_batch_size) for v in sizes):
                raise ValueError(f"preferred_batch_sizes {list(sizes)} must lie in 1..max_batch_size")

        def preferred_sizes(self) -> tuple[int, ...]:
            try:
                return tuple(sorted({int(v) for v in self.preferred_batch_sizes.replace(" ", "").split(",") if v}))
            except ValueError:
                raise ValueError(f"preferred_batch_sizes {self.preferred_batch_sizes!r}: accepted comma-separated "
                                 f"integers, e.g. 1,2,4,8") from None

        def batching_config(self, **overrides) -> BatchingConfig:
            """The BatchingConfig of these settings; `overrides` replace fields (e.g. an automatic batch size)."""
            values = dict(max_batch_size=self.max_batch_size,
                          max_queue_delay_microseconds=self.max_queue_delay_microseconds,
                          max_queue_size=self.max_queue_size, preferred_batch_sizes=self.preferred_sizes(),
                          default_timeout_microseconds=self.default_timeout_microseconds,
                          instances=self.instances, prefetch_batches=self.prefetch_batches)
            values.update(overrides)
            return BatchingConfig(**values)

    return BatchSettings


_DEADLINE = object()  # outbox marker: the request's deadline passed
_NO_KEY = object()


class _Request:
    __slots__ = ("items", "key", "deadline", "enqueued", "scheduled", "consumed", "outbox", "done", "waited")

    def __init__(self, items: Sequence[Any], key: Hashable, deadline: float | None, now: float):
        self.items = items
        self.key = key
        self.deadline = deadline
        self.enqueued = now
        self.scheduled = 0  # items handed to batches so far
        self.consumed = 0  # items the caller has taken
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.done = False
        self.waited = False  # queue wait observed

    @property
    def remaining(self) -> int:
        return len(self.items) - self.scheduled


class DynamicBatcher:
    """Queues requests of items and runs them through `run_batch` in dynamic batches.

    Args:
        run_batch: `run_batch(items: list, key) -> Sequence` (one result per item), run in a worker thread.
        config: Batching settings.
        service: Metrics label of the owning service.
        queue: Metrics label of this queue (e.g. the model name).
        max_ahead: Most computed-but-unconsumed items per streaming request before its next slices wait
            (bounds memory when a caller reads slowly). Default: 4 batches.
    """

    def __init__(self, run_batch: Callable[[list, Hashable], Sequence[Any]], config: BatchingConfig | None = None,
                 *, service: str = "server", queue: str = "default", max_ahead: int | None = None):
        self.run_batch = run_batch
        self.config = config or BatchingConfig()
        self.labels = (service, queue)
        self.max_ahead = max_ahead or 4 * self.config.max_batch_size
        self._queue: collections.deque[_Request] = collections.deque()
        self._wakeup = asyncio.Event()
        self._free: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._expected = 1  # requests in the last batch: how many follow-ups to gather under load
        self._last_done = 0.0
        self._item_seconds = 0.0  # EMA of compute seconds per item, for retry hints
        self._closed = False
        self._purge_at = math.inf  # earliest deadline in the queue: purging is skipped before it
        self._busy_until = 0.0  # estimated loop time when the batches handed to the workers are done
        # Metric children resolved once (labels() costs more than the update); queue depth is read at scrape time.
        metrics.QUEUE_DEPTH.labels(*self.labels).set_function(self._scraped_depth)
        self._batch_size = metrics.BATCH_SIZE.labels(*self.labels)
        self._queue_wait = metrics.QUEUE_WAIT.labels(*self.labels)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts the scheduler; call from the event loop that will submit requests."""
        if self._task is None:
            self._free = asyncio.Semaphore(self.config.instances + self.config.prefetch_batches)
            self._executor = ThreadPoolExecutor(self.config.instances, thread_name_prefix=f"batch-{self.labels[1]}")
            self._task = asyncio.create_task(self._schedule(), name=f"batcher-{self.labels[1]}")

    async def close(self) -> None:
        """Refuses queued requests (UNAVAILABLE), waits for running batches, stops the worker threads."""
        self._closed = True
        while self._queue:
            self._fail(self._queue.popleft(), unavailable("the server is shutting down; retry on another replica"),
                       "closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # --- public calls ------------------------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def queued_items(self) -> int:
        return sum(r.remaining for r in self._queue)

    def _scraped_depth(self) -> float:
        try:  # called from the metrics HTTP thread while the loop may be changing the queue
            return float(self.queued_items)
        except RuntimeError:
            return float(self.queued_requests)

    async def submit(self, items: Sequence[Any], *, key: Hashable = None, timeout: float | None = None) -> list:
        """Runs `items` and returns their results in order (see `stream` for errors)."""
        out: list = []
        async with contextlib.aclosing(self.stream(items, key=key, timeout=timeout)) as chunks:
            async for _, results in chunks:
                out.extend(results)
        return out

    async def stream(self, items: Sequence[Any], *, key: Hashable = None, timeout: float | None = None
                     ) -> AsyncIterator[tuple[int, list]]:
        """Yields (offset, results) slices of `items`' results in order, as their batches finish.

        Raises:
            ServiceError: RESOURCE_EXHAUSTED (queue full, with retry_after), DEADLINE_EXCEEDED (deadline
                passed in the queue or while waiting), UNAVAILABLE (batcher closed), or whatever run_batch
                raised (as the exception itself).
        """
        request = self._enqueue(items, key, timeout)
        loop = asyncio.get_running_loop()
        waiting: dict[int, list] = {}
        offset = 0
        # A timer (cheaper than wait_for's task per get) posts the deadline into the request's outbox.
        timer = None if request.deadline is None else loop.call_at(request.deadline, request.outbox.put_nowait,
                                                                   _DEADLINE)
        try:
            while offset < len(items):
                message = await request.outbox.get()
                if message is _DEADLINE:
                    metrics.REJECTED.labels(*self.labels, "deadline").inc()
                    raise deadline_exceeded(f"deadline passed after {offset} of {len(items)} results; "
                                            f"give a longer deadline or fewer items")
                if isinstance(message, BaseException):
                    raise message
                start, results = message
                waiting[start] = results
                while offset in waiting:
                    results = waiting.pop(offset)
                    request.consumed += len(results)
                    if request.remaining:
                        self._wakeup.set()  # it may have been held back for a slow reader (max_ahead)
                    yield offset, results
                    offset += len(results)
            request.done = True
        finally:
            if timer is not None:
                timer.cancel()
            if not request.done:
                self._cancel(request)

    # --- queueing ----------------------------------------------------------------------------------
    def _enqueue(self, items: Sequence[Any], key: Hashable, timeout: float | None) -> _Request:
        if self._task is None or self._closed:
            raise unavailable("the batcher is not running (server starting or shutting down)")
        if len(items) == 0:
            raise ValueError("a request needs at least one item")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if timeout is None and self.config.default_timeout_microseconds > 0:
            timeout = self.config.default_timeout_microseconds / 1e6
        if timeout is not None and timeout <= 0:
            metrics.REJECTED.labels(*self.labels, "deadline").inc()
            raise deadline_exceeded("the deadline had already passed when the request arrived")
        if self.queued_requests >= self.config.max_queue_size:
            metrics.REJECTED.labels(*self.labels, "queue_full").inc()
            retry = self.retry_after()
            raise resource_exhausted(f"the batch queue is full ({self.queued_requests} requests waiting, limit "
                                     f"{self.config.max_queue_size}); retry after about {retry:.2f} s", retry)
        request = _Request(items, key, None if timeout is None else now + timeout, now)
        if request.deadline is not None:
            self._purge_at = min(self._purge_at, request.deadline)
        self._queue.append(request)
        self._wakeup.set()
        return request

    def retry_after(self) -> float:
        """Seconds until the current queue has likely drained (at least 50 ms)."""
        return max(0.05, round(self.queued_items * (self._item_seconds or 0.005), 3))

    def _cancel(self, request: _Request) -> None:
        request.done = True
        with contextlib.suppress(ValueError):
            self._queue.remove(request)
            metrics.REJECTED.labels(*self.labels, "cancelled").inc()

    def _fail(self, request: _Request, error: BaseException, reason: str) -> None:
        request.done = True
        request.outbox.put_nowait(error)
        metrics.REJECTED.labels(*self.labels, reason).inc()

    def _purge(self, now: float) -> None:
        """Drops requests whose deadline passed while queued (never computed); free until the earliest one."""
        if now < self._purge_at:
            return
        kept: collections.deque[_Request] = collections.deque()
        next_deadline = math.inf
        for r in self._queue:
            if r.done:
                continue
            if r.deadline is not None and now >= r.deadline:
                self._fail(r, deadline_exceeded(f"deadline passed while queued ({r.scheduled} of {len(r.items)} "
                                                f"items had started); the rest was not computed"), "deadline")
                continue
            if r.deadline is not None:
                next_deadline = min(next_deadline, r.deadline)
            kept.append(r)
        self._queue = kept
        self._purge_at = next_deadline

    def _candidates(self) -> tuple[list[_Request], int, float, float]:
        """One pass over the queue: the oldest eligible request's key group, its items, oldest arrival and
        earliest deadline (requests held back for a slow reader are skipped)."""
        group: list[_Request] = []
        pending, oldest, deadline = 0, math.inf, math.inf
        key = _NO_KEY
        for r in self._queue:
            if r.scheduled - r.consumed >= self.max_ahead:
                continue
            if key is _NO_KEY:
                key = r.key
            elif r.key != key:
                continue
            group.append(r)
            pending += len(r.items) - r.scheduled
            oldest = min(oldest, r.enqueued)
            if r.deadline is not None:
                deadline = min(deadline, r.deadline)
        return group, pending, oldest, deadline

    # --- scheduling --------------------------------------------------------------------------------
    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._free.acquire()
            try:
                batch = await self._form_batch(loop)
            except BaseException:
                self._free.release()
                raise
            task = asyncio.create_task(self._execute(batch, loop))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _wait_until(self, requests: int, oldest: float) -> float | None:
        """When to dispatch a batch smaller than the maximum, given the waiting requests; None = now."""
        delay = self.config.max_queue_delay_microseconds / 1e6
        if delay <= 0 or self.config.max_batch_size == 1:
            return None
        if len(self._running) >= self.config.instances:
            # Every worker is busy, so this batch is prefetched: it can gather company until about when a
            # worker frees up (estimated from the measured time per item), not only for the queue delay.
            return max(oldest + delay, self._busy_until - delay)
        if self._running:  # another instance is busy: gather company for a while
            return oldest + delay
        if requests >= min(self._expected, self.config.max_batch_size):
            return None  # idle device, and everyone expected is here (a lone client never waits)
        return self._last_done + delay  # idle, but the last batch's clients are still coming back

    async def _form_batch(self, loop: asyncio.AbstractEventLoop) -> list[tuple[_Request, int, int]]:
        cfg = self.config
        full = min(cfg.max_batch_size, max(cfg.preferred_batch_sizes, default=cfg.max_batch_size))
        while True:
            now = loop.time()
            self._purge(now)
            group, pending, oldest, deadline = self._candidates()
            if not group:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if pending >= full:  # a full (or largest preferred) batch never waits
                break
            until = self._wait_until(len(group), oldest)
            if until is None or now >= until:
                break
            until = min(until, deadline)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, until - now))
        size = min(pending, cfg.max_batch_size)
        fitting = [s for s in cfg.preferred_batch_sizes if s <= size]
        if fitting:
            size = max(fitting)
        batch: list[tuple[_Request, int, int]] = []
        taken = 0
        for r in group:
            if taken == size:
                break
            n = min(r.remaining, size - taken)
            batch.append((r, r.scheduled, r.scheduled + n))
            r.scheduled += n
            taken += n
            if not r.waited:
                r.waited = True
                self._queue_wait.observe(now - r.enqueued)
        for r, _, _ in batch:  # served requests leave the queue; partly served ones go to its back
            self._queue.remove(r)
            if r.remaining:
                self._queue.append(r)
        return batch

    async def _execute(self, batch: list[tuple[_Request, int, int]], loop: asyncio.AbstractEventLoop) -> None:
        items = list(itertools.chain.from_iterable(r.items[a:b] for r, a, b in batch))
        key = batch[0][0].key
        self._batch_size.observe(len(items))
        now = loop.time()
        estimate = len(items) * (self._item_seconds or 0.0) / self.config.instances
        self._busy_until = max(now, self._busy_until) + estimate
        timing = {"seconds": 0.0, "items": 0}  # of the computation alone, set by the worker

        def work() -> tuple[list[tuple[_Request, int, int]], Sequence[Any]]:
            # Runs on the worker thread. A prefetched batch may have waited here: slices whose caller left or
            # whose deadline passed meanwhile are not computed (asyncio's loop.time() is time.monotonic()).
            now = time.monotonic()
            live = [(r, a, b) for r, a, b in batch if not r.done and (r.deadline is None or now < r.deadline)]
            if not live:
                return live, []
            todo = items if len(live) == len(batch) else \
                list(itertools.chain.from_iterable(r.items[a:b] for r, a, b in live))
            started = time.perf_counter()
            try:
                results = self.run_batch(todo, key)
            finally:
                timing["seconds"], timing["items"] = time.perf_counter() - started, len(todo)
            if len(results) != len(todo):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(todo)} items")
            return live, results

        try:
            live, results = await loop.run_in_executor(self._executor, work)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            log.warning("batch of %d items failed: %s", len(items), e)
            for r, _, _ in batch:
                if not r.done:
                    with contextlib.suppress(ValueError):
                        self._queue.remove(r)
                    self._fail(r, e, "error")
            return
        finally:
            if timing["items"]:
                per_item = timing["seconds"] / timing["items"]
                self._item_seconds = per_item if not self._item_seconds else 0.8 * self._item_seconds + 0.2 * per_item
            self._expected = len(batch) if len(batch) > 1 else 1
            self._last_done = loop.time()
            self._free.release()
            self._wakeup.set()
        offset = 0
        for r, a, b in live:  # a slice left out (its deadline passed) fails through its request's own timer
            if not r.done:
                r.outbox.put_nowait((a, list(results[offset:offset + b - a])))
            offset += b - a
