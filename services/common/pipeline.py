"""Bounded, order-preserving concurrency for async work items (e.g. chunks of one request across replicas)."""

from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator, Awaitable, Callable, Iterable, TypeVar

T = TypeVar("T")


async def ordered(factories: Iterable[Callable[[], Awaitable[T]]], depth: int) -> AsyncIterator[T]:
    """Runs coroutine factories with at most `depth` in flight; yields their results in submission order.

    A failure is raised when its turn comes; closing the iterator early (or a failure) cancels the rest.
    """
    pending: collections.deque[asyncio.Task] = collections.deque()
    try:
        for make in factories:
            pending.append(asyncio.ensure_future(make()))
            if len(pending) >= max(1, depth):
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
