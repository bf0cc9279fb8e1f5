"""Dynamic batching (Triton's dynamic-batcher semantics, with priority lanes), shared by the generator and scorer.

API::

    config = BatchingConfig(max_batch_size=64, max_queue_delay_microseconds=2000, max_queue_size=256)
    batcher = DynamicBatcher(run_batch, config, service="generator", queue="dcgan-digiface-64")
    await batcher.start()
    # run_batch(items: list, key) -> list of results, one per item, in order. It is synchronous and
    # runs in a worker thread (`config.instances` threads), so it may hold the GIL-free torch/ORT call.
    lane = request_lane(context, config.lanes)                            # the caller's ifgan-priority metadata
    results = await batcher.submit(items, key=("z", 0.7), timeout=5.0, lane=lane)  # all results, in order
    async with contextlib.aclosing(batcher.stream(items, key=k, timeout=t, lane=lane)) as chunks:
        async for offset, results in chunks:                              # slices, in order, as batches finish
            ...
    await batcher.close()

Semantics:
- Items of queued requests with the same `key` run together, up to `max_batch_size` per batch. A request
  larger than a batch is split; its slices are delivered in order. A partly served request goes to the back
  of its lane's queue, so one large request does not starve small ones.
- Priority lanes (`LANES`: interactive, then bulk), chosen per request by the `ifgan-priority` metadata
  (`LANE_METADATA`), else the service's `default_lane`. Each lane has its own queue and queue policy
  (Triton's ModelQueuePolicy: `max_queue_size`, a queue timeout and its action, `reject` or `delay`). A batch
  is led by the highest lane with work and filled from the higher lanes first (same key only). Starvation is
  bounded: while both lanes wait, bulk leads at least one batch in every round(1 / bulk_min_share). With lanes
  off (`priority_lanes=False`) there is one FIFO queue with `max_queue_size`, as before lanes existed.
- While a batch runs, the next one is formed and handed to the worker ahead (`prefetch_batches`), so the
  device goes from batch to batch without waiting for a busy event loop; that batch keeps gathering
  company until about when a worker frees up. An interactive arrival takes back the prefetched batches of bulk
  work that no worker has started (their slices return to the front of the bulk queue), so it waits for the
  running batch only; and while bulk batches hold every shared worker, batches led by interactive requests run
  on workers of their own (`interactive_instances`), so it does not wait for that either. `bulk_fill` bounds
  the bulk items such a batch takes (a batch's time grows with its size on a CPU, hardly on a GPU).
- A lone client on an idle device never waits: when no batch is running the queue is dispatched at once.
  The batcher waits (at most `max_queue_delay_microseconds`) only when there is evidence of concurrent load:
  another instance is running a batch, or the last batch served several requests whose clients are expected
  back (their follow-up requests are gathered instead of being run one by one).
- A lane holds `max_queue_size` queued requests at most; one more is refused with RESOURCE_EXHAUSTED and a
  retry hint (ServiceError.retry_after, estimated from the measured batch time and the work ahead of it).
- A request waiting longer than its lane's queue timeout before its first batch is refused
  (RESOURCE_EXHAUSTED, action `reject`) or kept, moved to the back of the lowest lane (action `delay`).
- A request whose own deadline (`timeout`, else `default_timeout_microseconds`) passes while queued is dropped
  without being computed and fails with DEADLINE_EXCEEDED. A cancelled caller (the task is cancelled or the
  stream closed) frees its place in the queue at once.
- Metrics (services/common/metrics.py): queue depth in items, in all (`ifgan_batch_queue_depth`, the
  autoscaling signal) and per lane; batch sizes; queue wait and rejections by reason, per lane.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import sys
import threading
import time
import concurrent.futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Hashable, Sequence

from . import metrics
from .errors import deadline_exceeded, invalid_argument, resource_exhausted, unavailable
from .settings import setting

log = logging.getLogger(__name__)

#: Priority lanes, highest first.
LANES = ("interactive", "bulk")
#: gRPC metadata naming a request's lane (`ifgan-priority: bulk`); a service calling another carries it on.
LANE_METADATA = "ifgan-priority"
#: What a lane's queue timeout does to a request still waiting for its first batch (Triton's timeout_action).
TIMEOUT_ACTIONS = ("reject", "delay")


@dataclasses.dataclass(frozen=True)
class QueuePolicy:
    """One lane's queue policy (Triton's ModelQueuePolicy).

    Attributes:
        max_queue_size: Most requests waiting in the lane; 0 = the batcher's max_queue_size.
        timeout_microseconds: Longest wait before a request's first batch; 0 = none (its own deadline applies).
        timeout_action: "reject" (refused with RESOURCE_EXHAUSTED) or "delay" (kept, moved to the back of the
            lowest lane).
    """

    max_queue_size: int = 0
    timeout_microseconds: int = 0
    timeout_action: str = "reject"

    def __post_init__(self):
        if self.max_queue_size < 0 or self.timeout_microseconds < 0:
            raise ValueError("a lane's max_queue_size and queue timeout must be 0 or more")
        if self.timeout_action not in TIMEOUT_ACTIONS:
            raise ValueError(f"timeout_action {self.timeout_action!r}; accepted: {', '.join(TIMEOUT_ACTIONS)}")


@dataclasses.dataclass(frozen=True)
class LaneConfig:
    """Priority lanes of a queue (the dynamic batcher's, or the inversion service's continuous batching).

    Attributes:
        enabled: False: one FIFO queue; every request's lane is ignored.
        default_lane: Lane of requests that name none.
        policies: One QueuePolicy per lane of LANES, in that order.
        bulk_min_share: Least share of batches the bulk lane leads while both lanes wait (0 = strict priority).
        interactive_instances: Worker threads kept for batches led by interactive requests while bulk batches
            occupy every shared worker (`instances`), so an interactive request does not wait for a running bulk
            batch (0 = none: it waits for the running batch, never for a prefetched one).
        bulk_fill: Most bulk items added to a batch led by interactive requests (-1 = up to max_batch_size, as
            suits a GPU, where a batch's size costs little; on a CPU, where its time grows with its size, a few).
        shared_worker_nice: CPU niceness (Linux, per thread) of the shared workers when `interactive_instances`
            keeps workers for interactive batches: a bulk batch and an interactive one then run at once on the
            same cores, and the kernel gives the interactive worker (niceness 0) most of the CPU. Nothing is
            lost when no interactive batch runs (niceness only orders threads that compete). 0 = off.
    """

    enabled: bool = True
    default_lane: str = LANES[0]
    policies: tuple[QueuePolicy, ...] = (QueuePolicy(), QueuePolicy())
    bulk_min_share: float = 0.1
    interactive_instances: int = 0
    bulk_fill: int = -1
    shared_worker_nice: int = 0

    def __post_init__(self):
        if self.default_lane not in LANES:
            raise ValueError(f"default_lane {self.default_lane!r}; accepted: {', '.join(LANES)}")
        if len(self.policies) != len(LANES):
            raise ValueError(f"one queue policy per lane ({', '.join(LANES)}), got {len(self.policies)}")
        if not 0 <= self.bulk_min_share <= 1:
            raise ValueError(f"bulk_min_share must be within 0..1, got {self.bulk_min_share}")
        if self.interactive_instances < 0 or self.bulk_fill < -1:
            raise ValueError(f"interactive_instances must be 0 or more and bulk_fill -1 or more, got "
                             f"{self.interactive_instances} and {self.bulk_fill}")
        if not 0 <= self.shared_worker_nice <= 19:
            raise ValueError(f"shared_worker_nice must be within 0..19, got {self.shared_worker_nice}")

    @property
    def names(self) -> tuple[str, ...]:
        """The queues' names (metrics label `lane`): the lanes, or one "all" with lanes off."""
        return LANES if self.enabled else ("all",)

    def index(self, lane: str | None) -> int:
        """The queue of a lane name (None or "" = the default lane); always 0 with lanes off."""
        if not self.enabled:
            return 0
        name = lane or self.default_lane
        if name not in LANES:
            raise invalid_argument(LANE_METADATA, f"{name!r} is not a lane; accepted: {', '.join(LANES)}")
        return LANES.index(name)

    def policy(self, index: int) -> QueuePolicy:
        return self.policies[index] if self.enabled else QueuePolicy()


def request_lane(context, default: str = "") -> str:
    """The lane a gRPC call names in its `ifgan-priority` metadata, else `default` ("" = the service's).

    Raises:
        ServiceError: INVALID_ARGUMENT when the metadata names no lane.
    """
    for key, value in (context.invocation_metadata() or ()) if context is not None else ():
        if key == LANE_METADATA:
            lane = value.strip().lower()
            if lane not in LANES:
                raise invalid_argument(f"{LANE_METADATA} metadata", f"{value[:64]!r} is not a lane; accepted: "
                                                                   f"{', '.join(LANES)} (or none: the RPC's default)")
            return lane
    return default


class LaneScheduler:
    """Which lane leads the next batch: the highest with work, except that a lower lane that has waited through
    round(1 / min_share) - 1 batches led by others leads the next one (its guaranteed share).

    Args:
        lanes: Number of lanes, highest first.
        min_share: Least share of batches a waiting lower lane leads (0 = strict priority).
    """

    def __init__(self, lanes: int, min_share: float):
        self.period = max(1, round(1 / min_share)) if min_share > 0 else 0
        self.passed = [0] * lanes  # batches led by a higher lane while this one waited

    def order(self, waiting: Sequence[bool]) -> list[int]:
        """Lanes in the order a batch is filled from: the leading lane, then the others highest first."""
        lead = next((i for i, w in enumerate(waiting) if w), 0)
        if self.period:
            for i in range(len(waiting) - 1, lead, -1):  # the lowest lane that is owed a turn
                if waiting[i] and self.passed[i] >= self.period - 1:
                    lead = i
                    break
        return [lead] + [i for i in range(len(waiting)) if i != lead]

    def led(self, lead: int, waiting: Sequence[bool]) -> None:
        """Records that `lead` led a batch while `waiting` lanes had work."""
        for i, w in enumerate(waiting):
            self.passed[i] = self.passed[i] + 1 if w and i > lead else 0


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Dynamic batcher settings, named as in Triton's model configuration.

    Attributes:
        max_batch_size: Most items run in one batch (1 disables batching).
        max_queue_delay_microseconds: Longest time a queued item waits for company under load.
        max_queue_size: Most requests waiting in a lane's queue (unless its policy says); more are refused
            (RESOURCE_EXHAUSTED).
        preferred_batch_sizes: Optional batch sizes to form when possible (e.g. sizes captured as CUDA graphs).
        default_timeout_microseconds: Deadline of requests that carry none (0 = no deadline).
        instances: Batches that may run at once (worker threads; Triton's instance_group count).
        prefetch_batches: Batches formed ahead and waiting at the workers, so a worker starts the next
            batch the moment it finishes one instead of waiting for the event loop (which is then busy
            answering the batch just done). 0 forms each batch only when a worker is free.
        lanes: Priority lanes and their queue policies.
    """

    max_batch_size: int = 64
    max_queue_delay_microseconds: int = 2000
    max_queue_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = ()
    default_timeout_microseconds: int = 0
    instances: int = 1
    prefetch_batches: int = 1
    lanes: LaneConfig = LaneConfig()

    def __post_init__(self):
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.instances < 1:
            raise ValueError("max_batch_size, max_queue_size and instances must be at least 1")
        if self.prefetch_batches < 0:
            raise ValueError("prefetch_batches must be 0 or more")
        if any(s < 1 or s > self.max_batch_size for s in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes {self.preferred_batch_sizes} must lie in 1..max_batch_size")


def batch_settings(*, max_batch_size: int, max_queue_size: int, max_queue_delay_microseconds: int | None = None,
                   instances: int = 1, prefetch_batches: int = 1, max_batch_size_help: str = "",
                   zero_batch_size_means: str = "", instances_help: str = "",
                   auto_bulk_fill_means: str = "up to max_batch_size") -> type:
    """The batcher's settings group with one service's defaults, to mix into that service's Settings.

    Every batching service declares its batcher with this group, so the flags (--max-batch-size, ...), the
    environment variables (IFGAN_MAX_BATCH_SIZE, ...), the spelling and the units (Triton's) are the same
    everywhere, the priority lanes' included (--priority-lanes, --interactive-max-queue-size, ...). Without
    `max_queue_delay_microseconds` the group has only the queue and lane settings: the continuous batching of
    the inversion service forms no batches to wait for.

    Usage::

        @dataclasses.dataclass
        class Settings(batch_settings(max_batch_size=64, max_queue_size=256, max_queue_delay_microseconds=5000),
                       ServerSettings):
            ...
        batcher = DynamicBatcher(run, settings.batching_config(), ...)

    Args:
        zero_batch_size_means: When given, max_batch_size 0 is accepted and means this (e.g. a device-dependent
            size the service picks; it then passes max_batch_size to `batching_config`).
        auto_bulk_fill_means: What bulk_fill -1 means (a service picking a device-dependent fill says so, and
            passes `lanes` to `batching_config`).
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
        max_queue_size: int = setting(queue_default, "requests that may wait in each lane's queue; more are "
                                                      "refused with RESOURCE_EXHAUSTED and a retry hint")
        priority_lanes: bool = setting(True, f"priority lanes ({', '.join(LANES)}, chosen by the "
                                             f"'{LANE_METADATA}' metadata): batches are filled from the higher "
                                             f"lane first; --no-priority-lanes: one FIFO queue")
        default_lane: str = setting(LANES[0], "lane of requests whose metadata names none")
        interactive_max_queue_size: int = setting(0, "requests that may wait in the interactive lane "
                                                     "(0 = --max-queue-size)")
        bulk_max_queue_size: int = setting(0, "requests that may wait in the bulk lane (0 = --max-queue-size)")
        interactive_queue_timeout_microseconds: int = setting(0, "longest wait of an interactive request for its "
                                                                 "first batch (0 = only its own deadline)")
        bulk_queue_timeout_microseconds: int = setting(0, "longest wait of a bulk request for its first batch "
                                                          "(0 = only its own deadline)")
        interactive_timeout_action: str = setting("reject", "past the interactive queue timeout: reject "
                                                            "(RESOURCE_EXHAUSTED) or delay (kept, moved to the back "
                                                            "of the bulk lane)")
        bulk_timeout_action: str = setting("reject", "past the bulk queue timeout: reject (RESOURCE_EXHAUSTED) or "
                                                     "delay (kept, moved to the back of the bulk lane)")
        bulk_min_share: float = setting(0.1, "least share of batches the bulk lane leads while interactive "
                                             "requests wait too (bounds starvation; 0 = strict priority)")
        interactive_instances: int = setting(1, "worker threads kept for batches of interactive requests while "
                                                "bulk batches occupy the others, so interactive requests never wait "
                                                "for a running bulk batch (0 = none)")
        bulk_fill: int = setting(-1, "most bulk items added to a batch led by interactive requests "
                                     f"(-1 = {auto_bulk_fill_means})")
        shared_worker_nice: int = setting(10, "CPU niceness of the shared worker threads (Linux) while "
                                              "interactive_instances keeps workers for interactive batches: the "
                                              "kernel runs an interactive batch first when both compete for the "
                                              "cores (0 = off)")

        def validate(self) -> None:
            super().validate()  # type: ignore[misc] - the ServerSettings this group is mixed into
            if not least <= self.max_batch_size <= 4096:
                raise ValueError(f"max_batch_size must be within {least}..4096, got {self.max_batch_size}")
            if self.max_queue_size < 1:
                raise ValueError(f"max_queue_size must be at least 1, got {self.max_queue_size}")
            self.lane_config()  # the lane settings raise ValueError naming what is wrong

        def lane_config(self) -> LaneConfig:
            """The LaneConfig of these settings."""
            policies = tuple(QueuePolicy(getattr(self, f"{lane}_max_queue_size"),
                                         getattr(self, f"{lane}_queue_timeout_microseconds"),
                                         getattr(self, f"{lane}_timeout_action")) for lane in LANES)
            return LaneConfig(self.priority_lanes, self.default_lane, policies, self.bulk_min_share,
                              self.interactive_instances, self.bulk_fill, self.shared_worker_nice)

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
                          instances=self.instances, prefetch_batches=self.prefetch_batches,
                          lanes=self.lane_config())
            values.update(overrides)
            return BatchingConfig(**values)

    return BatchSettings


_DEADLINE = object()  # outbox marker: the request's deadline passed
_NO_KEY = object()


class _Request:
    __slots__ = ("items", "key", "deadline", "enqueued", "scheduled", "consumed", "outbox", "done", "waited",
                 "lane", "queue", "queue_timer")

    def __init__(self, items: Sequence[Any], key: Hashable, deadline: float | None, now: float, lane: int):
        self.items = items
        self.key = key
        self.deadline = deadline
        self.enqueued = now
        self.scheduled = 0  # items handed to batches so far
        self.consumed = 0  # items the caller has taken
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.done = False
        self.waited = False  # queue wait observed
        self.lane = lane  # the lane it asked for (metrics)
        self.queue = lane  # the queue it waits in (the lowest one once delayed by its queue timeout)
        self.queue_timer: asyncio.TimerHandle | None = None  # its lane's queue timeout, until its first batch

    @property
    def remaining(self) -> int:
        return len(self.items) - self.scheduled


def _renice(nice: int) -> None:
    """Lowers the calling thread's CPU priority by `nice` (Linux schedules threads on their own; elsewhere the
    whole process would change, so nothing is done)."""
    if nice and sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)
        except OSError as e:  # a sandbox may forbid it: the lanes still order the queue
            log.warning("shared workers keep their CPU priority", extra={"error": str(e)})


class _Batch:
    """Slices (request, start, end) handed to a worker, and the worker's job."""

    __slots__ = ("slices", "top", "job", "withdrawn", "reserved")

    def __init__(self, slices: list[tuple[_Request, int, int]], reserved: bool):
        self.slices = slices
        self.top = any(r.queue == 0 for r, _, _ in slices)  # holds work of the highest lane
        self.reserved = reserved  # runs on the interactive lane's own workers
        self.job: concurrent.futures.Future | None = None
        self.withdrawn = False  # taken back before a worker started it (see _withdraw_prefetched)


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
        self.lanes = self.config.lanes
        self.labels = (service, queue)
        self.max_ahead = max_ahead or 4 * self.config.max_batch_size
        names = self.lanes.names
        self._queues: list[collections.deque[_Request]] = [collections.deque() for _ in names]
        self._limits = [self.lanes.policy(i).max_queue_size or self.config.max_queue_size for i in range(len(names))]
        self._turns = LaneScheduler(len(names), self.lanes.bulk_min_share)
        self._wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._top_executor: ThreadPoolExecutor | None = None  # the interactive lane's own workers
        self._top_slots = self.lanes.interactive_instances if self.lanes.enabled else 0
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._busy = 0  # batches handed to the shared workers and not finished (running or prefetched)
        self._top_busy = 0  # batches on the interactive lane's own workers
        self._formed: collections.deque[_Batch] = collections.deque()  # shared workers' batches, oldest first
        self._expected = 1  # requests in the last batch: how many follow-ups to gather under load
        self._last_done = 0.0
        self._item_seconds = 0.0  # EMA of compute seconds per item, for retry hints
        self._closed = False
        self._purge_at = math.inf  # earliest deadline in the queues: purging is skipped before it
        self._busy_until = 0.0  # estimated loop time when the batches handed to the workers are done
        # Metric children resolved once (labels() costs more than the update); queue depths are read at scrape time.
        metrics.QUEUE_DEPTH.labels(*self.labels).set_function(self._scraped_depth)
        for i, name in enumerate(names):
            metrics.LANE_QUEUE_DEPTH.labels(*self.labels, name).set_function(lambda i=i: self._scraped_depth(i))
        self._batch_size = metrics.BATCH_SIZE.labels(*self.labels)
        self._queue_wait = [metrics.QUEUE_WAIT.labels(*self.labels, name) for name in names]

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts the scheduler; call from the event loop that will submit requests."""
        if self._task is None:
            nice = self.lanes.shared_worker_nice if self._top_slots else 0
            self._executor = ThreadPoolExecutor(self.config.instances, thread_name_prefix=f"batch-{self.labels[1]}",
                                                initializer=_renice, initargs=(nice,))
            if self._top_slots:
                self._top_executor = ThreadPoolExecutor(self._top_slots,
                                                        thread_name_prefix=f"batch-top-{self.labels[1]}")
            self._task = asyncio.create_task(self._schedule(), name=f"batcher-{self.labels[1]}")

    async def close(self) -> None:
        """Refuses queued requests (UNAVAILABLE), waits for running batches, stops the worker threads."""
        self._closed = True
        for queue in self._queues:
            while queue:
                self._fail(queue.popleft(), unavailable("the server is shutting down; retry on another replica"),
                           "closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for executor in (self._executor, self._top_executor):
            if executor is not None:
                executor.shutdown(wait=True)

    # --- public calls ------------------------------------------------------------------------------
    @property
    def queued_requests(self) -> int:
        return sum(len(q) for q in self._queues)

    @property
    def queued_items(self) -> int:
        return sum(r.remaining for q in self._queues for r in q)

    def queued(self, lane: str) -> int:
        """Requests waiting in `lane`'s queue."""
        return len(self._queues[self.lanes.index(lane)])

    def _scraped_depth(self, lane: int | None = None) -> float:
        queues = self._queues if lane is None else self._queues[lane:lane + 1]
        try:  # called from the metrics HTTP thread while the loop may be changing the queue
            return float(sum(r.remaining for q in queues for r in q))
        except RuntimeError:
            return float(sum(len(q) for q in queues))

    def _rejected(self, lane: int, reason: str):
        return metrics.REJECTED.labels(*self.labels, self.lanes.names[lane], reason)

    async def submit(self, items: Sequence[Any], *, key: Hashable = None, timeout: float | None = None,
                     lane: str | None = None) -> list:
        """Runs `items` and returns their results in order (see `stream` for errors)."""
        out: list = []
        async with contextlib.aclosing(self.stream(items, key=key, timeout=timeout, lane=lane)) as chunks:
            async for _, results in chunks:
                out.extend(results)
        return out

    async def stream(self, items: Sequence[Any], *, key: Hashable = None, timeout: float | None = None,
                     lane: str | None = None) -> AsyncIterator[tuple[int, list]]:
        """Yields (offset, results) slices of `items`' results in order, as their batches finish.

        Args:
            lane: Priority lane (one of LANES; None = the configured default lane).

        Raises:
            ServiceError: RESOURCE_EXHAUSTED (lane queue full, or its queue timeout passed; with retry_after),
                DEADLINE_EXCEEDED (deadline passed in the queue or while waiting), UNAVAILABLE (batcher closed),
                INVALID_ARGUMENT (no such lane), or whatever run_batch raised (as the exception itself).
        """
        request = self._enqueue(items, key, timeout, lane)
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
                    self._rejected(request.lane, "deadline").inc()
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
            if request.queue_timer is not None:
                request.queue_timer.cancel()
            if not request.done:
                self._cancel(request)

    # --- queueing ----------------------------------------------------------------------------------
    def _enqueue(self, items: Sequence[Any], key: Hashable, timeout: float | None, lane: str | None) -> _Request:
        if self._task is None or self._closed:
            raise unavailable("the batcher is not running (server starting or shutting down)")
        if len(items) == 0:
            raise ValueError("a request needs at least one item")
        index = self.lanes.index(lane)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if timeout is None and self.config.default_timeout_microseconds > 0:
            timeout = self.config.default_timeout_microseconds / 1e6
        if timeout is not None and timeout <= 0:
            self._rejected(index, "deadline").inc()
            raise deadline_exceeded("the deadline had already passed when the request arrived")
        queue, limit = self._queues[index], self._limits[index]
        if len(queue) >= limit:
            self._rejected(index, "queue_full").inc()
            retry = self.retry_after(index)
            lane_name = self.lanes.names[index]
            raise resource_exhausted(f"the {lane_name} batch queue is full ({len(queue)} requests waiting, limit "
                                     f"{limit}); retry after about {retry:.2f} s", retry)
        request = _Request(items, key, None if timeout is None else now + timeout, now, index)
        policy = self.lanes.policy(index)
        if policy.timeout_microseconds:
            request.queue_timer = loop.call_at(now + policy.timeout_microseconds / 1e6, self._queue_timeout, request)
        if request.deadline is not None:
            self._purge_at = min(self._purge_at, request.deadline)
        queue.append(request)
        if index == 0 and self.lanes.enabled and not self._reserved_free():
            # No reserved worker can take it at once: a bulk batch formed ahead would run first.
            self._withdraw_prefetched()
        self._wakeup.set()
        return request

    def retry_after(self, lane: int | None = None) -> float:
        """Seconds until the work queued ahead of a request of `lane` (default: all) has likely drained
        (at least 50 ms)."""
        queues = self._queues if lane is None else self._queues[:lane + 1]
        items = sum(r.remaining for q in queues for r in q)
        return max(0.05, round(items * (self._item_seconds or 0.005), 3))

    def _cancel(self, request: _Request) -> None:
        request.done = True
        with contextlib.suppress(ValueError):
            self._queues[request.queue].remove(request)
            self._rejected(request.lane, "cancelled").inc()

    def _fail(self, request: _Request, error: BaseException, reason: str) -> None:
        request.done = True
        if request.queue_timer is not None:
            request.queue_timer.cancel()
        request.outbox.put_nowait(error)
        self._rejected(request.lane, reason).inc()

    def _withdraw_prefetched(self) -> None:
        """Takes back the newest batches of lower lanes that wait at the workers unstarted (prefetched), so the
        highest-lane request that just arrived leads the next batch instead of waiting behind them; their
        slices return to the front of their queues."""
        while self._formed:
            batch = self._formed[-1]
            # Only a batch holding each of its requests' latest slice can be undone by rewinding the requests.
            if batch.top or any(r.scheduled != b for r, _, b in batch.slices) or not batch.job.cancel():
                return
            batch.withdrawn = True
            self._formed.pop()
            for r, a, _ in reversed(batch.slices):
                queue = self._queues[r.queue]
                if not r.remaining and not r.done:  # it had left the queue: fully scheduled
                    queue.appendleft(r)
                r.scheduled = a
                if r.deadline is not None:
                    self._purge_at = min(self._purge_at, r.deadline)

    def _queue_timeout(self, request: _Request) -> None:
        """Its lane's queue timeout passed before its first batch: refuse it, or move it to the lowest lane's back."""
        request.queue_timer = None
        if request.done or request.scheduled:
            return
        policy = self.lanes.policy(request.lane)
        with contextlib.suppress(ValueError):
            self._queues[request.queue].remove(request)
        if policy.timeout_action == "reject":
            retry = self.retry_after(request.lane)
            self._fail(request, resource_exhausted(
                f"waited {policy.timeout_microseconds / 1000:g} ms in the {self.lanes.names[request.lane]} queue "
                f"(its queue timeout) without being scheduled; retry after about {retry:.2f} s", retry),
                "queue_timeout")
            return
        request.queue = len(self._queues) - 1
        self._queues[request.queue].append(request)
        self._rejected(request.lane, "delayed").inc()
        self._wakeup.set()

    def _purge(self, now: float) -> None:
        """Drops requests whose deadline passed while queued (never computed); free until the earliest one."""
        if now < self._purge_at:
            return
        next_deadline = math.inf
        for index, queue in enumerate(self._queues):
            kept: collections.deque[_Request] = collections.deque()
            for r in queue:
                if r.done:
                    continue
                if r.deadline is not None and now >= r.deadline:
                    self._fail(r, deadline_exceeded(f"deadline passed while queued ({r.scheduled} of {len(r.items)} "
                                                    f"items had started); the rest was not computed"), "deadline")
                    continue
                if r.deadline is not None:
                    next_deadline = min(next_deadline, r.deadline)
                kept.append(r)
            self._queues[index] = kept
        self._purge_at = next_deadline

    def _first_eligible(self, queue: collections.deque[_Request]) -> _Request | None:
        # Requests held back for a slow reader (max_ahead) are skipped.
        return next((r for r in queue if r.scheduled - r.consumed < self.max_ahead), None)

    def _candidates(self, top_only: bool) -> tuple[list[_Request], tuple[int, int], float, list[bool], list[int]]:
        """The next batch's candidates: the leading lane's oldest eligible request's key group, filled from the
        lanes in turn; its items (of the highest lane, of the others), oldest arrival, which lanes wait and the
        lane order. `top_only`: only a batch led by the highest lane may be formed now."""
        firsts = [self._first_eligible(q) for q in self._queues]
        waiting = [r is not None for r in firsts]
        if not any(waiting) or (top_only and not waiting[0]):
            return [], (0, 0), math.inf, waiting, []
        order = list(range(len(waiting))) if top_only else self._turns.order(waiting)
        key = firsts[order[0]].key
        group: list[_Request] = []
        top, low, oldest = 0, 0, math.inf
        for lane in order:
            for r in self._queues[lane]:
                if r.key != key or r.scheduled - r.consumed >= self.max_ahead:
                    continue
                group.append(r)
                if lane == 0:
                    top += r.remaining
                else:
                    low += r.remaining
                oldest = min(oldest, r.enqueued)
        return group, (top, low), oldest, waiting, order

    # --- scheduling --------------------------------------------------------------------------------
    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._form_batch(loop)
            # Handed to a worker and counted now, so the next batch formed at once sees this one as running.
            size = sum(b - a for _, a, b in batch.slices)
            timing = {"seconds": 0.0, "items": 0}  # of the computation alone, set by the worker
            if batch.reserved:
                self._top_busy += 1
                batch.job = self._top_executor.submit(self._work, batch, timing)
            else:
                self._busy += 1
                estimate = size * self._item_seconds / self.config.instances
                self._busy_until = max(loop.time(), self._busy_until) + estimate
                batch.job = self._executor.submit(self._work, batch, timing)
                self._formed.append(batch)
            task = asyncio.create_task(self._execute(batch, timing, loop))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _wait_until(self, requests: int, oldest: float) -> float | None:
        """When to dispatch a batch smaller than the maximum, given the waiting requests; None = now."""
        delay = self.config.max_queue_delay_microseconds / 1e6
        if delay <= 0 or self.config.max_batch_size == 1:
            return None
        if self._busy >= self.config.instances:
            # Every worker is busy, so this batch is prefetched: it can gather company until about when a
            # worker frees up (estimated from the measured time per item), not only for the queue delay.
            return max(oldest + delay, self._busy_until - delay)
        if self._busy:  # another instance is busy: gather company for a while
            return oldest + delay
        if requests >= min(self._expected, self.config.max_batch_size):
            return None  # idle device, and everyone expected is here (a lone client never waits)
        return self._last_done + delay  # idle, but the last batch's clients are still coming back

    def _reserved_free(self) -> bool:
        """Whether an interactive-led batch may go to the interactive lane's own workers now: one is free and
        bulk work holds every shared worker (otherwise the shared workers serve it, as without lanes)."""
        return (self._top_busy < self._top_slots and self._busy >= self.config.instances
                and any(not b.top for b in self._formed))

    async def _form_batch(self, loop: asyncio.AbstractEventLoop) -> _Batch:
        cfg = self.config
        largest = min(cfg.max_batch_size, max(cfg.preferred_batch_sizes, default=cfg.max_batch_size))
        shared_slots = cfg.instances + cfg.prefetch_batches
        while True:
            now = loop.time()
            self._purge(now)
            shared, reserved = self._busy < shared_slots, self._reserved_free()
            group, (top, low), oldest, waiting, order = self._candidates(top_only=not shared) \
                if shared or reserved else ([], (0, 0), math.inf, [], [])
            if not group:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            on_reserved = reserved and order[0] == 0
            # A batch led by interactive requests takes bulk items only up to bulk_fill.
            fill = low if order[0] != 0 or self.lanes.bulk_fill < 0 else min(low, self.lanes.bulk_fill)
            pending = top + fill
            if pending >= largest or on_reserved:  # a full (or largest preferred) batch never waits, nor a reserved one
                break
            until = self._wait_until(len(group), oldest)
            if until is None or now >= until:
                break
            until = min(until, self._purge_at)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, until - now))
        if not on_reserved:
            self._turns.led(order[0], waiting)
        size = min(pending, cfg.max_batch_size)
        fitting = [s for s in cfg.preferred_batch_sizes if s <= size]
        if fitting:
            size = max(fitting)
        batch: list[tuple[_Request, int, int]] = []
        taken = low_taken = 0
        for r in group:
            if taken == size:
                break
            n = min(r.remaining, size - taken)
            if r.queue:
                n = min(n, fill - low_taken)
                if n <= 0:
                    continue
                low_taken += n
            batch.append((r, r.scheduled, r.scheduled + n))
            r.scheduled += n
            if r.queue_timer is not None:  # the queue timeout covers the wait for the first batch only
                r.queue_timer.cancel()
                r.queue_timer = None
            taken += n
            if not r.waited:
                r.waited = True
                self._queue_wait[r.lane].observe(now - r.enqueued)
        for r, _, _ in batch:  # served requests leave the queue; partly served ones go to the back of theirs
            queue = self._queues[r.queue]
            queue.remove(r)
            if r.remaining:
                queue.append(r)
        return _Batch(batch, on_reserved)

    def _work(self, batch: _Batch, timing: dict) -> tuple[list[tuple[_Request, int, int]], Sequence[Any]]:
        """Runs on a worker thread. A prefetched batch may have waited: slices whose caller left or whose deadline
        passed meanwhile are not computed (asyncio's loop.time() is time.monotonic())."""
        now = time.monotonic()
        live = [(r, a, b) for r, a, b in batch.slices if not r.done and (r.deadline is None or now < r.deadline)]
        if not live:
            return live, []
        todo = list(itertools.chain.from_iterable(r.items[a:b] for r, a, b in live))
        started = time.perf_counter()
        try:
            results = self.run_batch(todo, batch.slices[0][0].key)
        finally:
            timing["seconds"], timing["items"] = time.perf_counter() - started, len(todo)
        if len(results) != len(todo):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(todo)} items")
        return live, results

    async def _execute(self, batch: _Batch, timing: dict, loop: asyncio.AbstractEventLoop) -> None:
        try:
            live, results = await asyncio.wrap_future(batch.job)
        except asyncio.CancelledError:
            if not batch.withdrawn:
                raise
            return  # taken back unstarted; its requests are queued again (see the finally below)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the error
            log.warning("batch of %d items failed: %s", sum(b - a for _, a, b in batch.slices), e)
            for r, _, _ in batch.slices:
                if not r.done:
                    with contextlib.suppress(ValueError):
                        self._queues[r.queue].remove(r)
                    self._fail(r, e, "error")
            return
        finally:
            if timing["items"]:
                self._batch_size.observe(timing["items"])
            if batch.reserved:
                self._top_busy -= 1
            else:
                with contextlib.suppress(ValueError):
                    self._formed.remove(batch)
                if timing["items"]:
                    per_item = timing["seconds"] / timing["items"]
                    self._item_seconds = per_item if not self._item_seconds else \
                        0.8 * self._item_seconds + 0.2 * per_item
                if not batch.withdrawn:
                    self._expected = len(batch.slices) if len(batch.slices) > 1 else 1
                    self._last_done = loop.time()
                self._busy -= 1
            self._wakeup.set()
        offset = 0
        for r, a, b in live:  # a slice left out (its deadline passed) fails through its request's own timer
            if not r.done:
                r.outbox.put_nowait((a, list(results[offset:offset + b - a])))
            offset += b - a
