"""Calls from the editor to the other services: replica pools, deadlines, request ids, retries of idempotent calls."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import time
from typing import Callable

import grpc

from interfacegan import channel as ch
from services.common.errors import ServiceError, deadline_exceeded, resource_exhausted, unavailable

log = logging.getLogger(__name__)

#: Statuses worth another try of an idempotent call, on another replica: the replica is down or restarting
#: (UNAVAILABLE) or its queue is full and it said when to come back (RESOURCE_EXHAUSTED with retry-after).
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
#: Kept for the caller's own deadline handling: a call never starts with less than this left.
MIN_CALL_SECONDS = 0.05


@dataclasses.dataclass
class CallContext:
    """What every downstream call of one incoming request shares: its deadline and its request id.

    Attributes:
        request_id: Forwarded as the `request_id` field and the `x-request-id` metadata.
        deadline: time.monotonic() by which the incoming call must end (None: no deadline).
        default_timeout: Per-call timeout when the incoming call has no deadline.
    """

    request_id: str
    deadline: float | None
    default_timeout: float

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext | None, request_id: str, default_timeout: float) -> "CallContext":
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        return cls(request_id, deadline, default_timeout)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def timeout(self, what: str) -> float:
        """Timeout of the next call: what is left of the caller's deadline, or the default."""
        left = self.remaining()
        if left is None:
            return self.default_timeout
        if left < MIN_CALL_SECONDS:
            raise deadline_exceeded(f"the deadline passed before {what}; give the call a longer deadline")
        return min(left, self.default_timeout)


def _retry_after(error: grpc.aio.AioRpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return int(value) / 1000
            except ValueError:
                return None
    return None


class Upstream:
    """A pool of channels to the replicas of one service.

    `addresses` is a comma-separated list; each entry is host:port or a gRPC target such as
    dns:///generator:50052, whose every A record is balanced by the round robin policy. Calls go to the
    entries in turn; a retried call goes to the next one, skipping replicas whose channel is failing.

    Args:
        name: Service name for messages ("generator").
        addresses: The replicas.
        stub_cls: Generated stub class.
        token: Bearer token sent downstream (the cluster shares one).
        attempts: Tries of an idempotent call on UNAVAILABLE / RESOURCE_EXHAUSTED.
        backoff: First wait between tries, seconds; doubles up to `max_backoff`, with jitter.
        config: Channel configuration (TLS, limits); default plaintext without channel retries.
    """

    def __init__(self, name: str, addresses: str, stub_cls, *, token: str = "", max_message_bytes: int = 16 << 20,
                 attempts: int = 4, backoff: float = 0.1, max_backoff: float = 2.0,
                 config: ch.ChannelConfig | None = None):
        self.name = name
        self.addresses = ch.split_addresses(addresses)
        # The editor retries itself (deadline-aware, across replicas): no retries inside the channel on top.
        # `config` (services/common/channels.client_config) carries TLS / mTLS from the editor's settings.
        config = config or ch.ChannelConfig(retry=None, max_message_bytes=max_message_bytes)
        self.channels = [ch.aio_channel(a, config) for a in self.addresses]
        self.stubs = [stub_cls(c) for c in self.channels]
        self.token = token
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._turn = itertools.count()

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)

    def metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        md = (("authorization", f"Bearer {self.token}"),) if self.token else ()
        return md + ((("x-request-id", request_id),) if request_id else ())

    def pick(self) -> int:
        """The next replica in turn, skipping those in TRANSIENT_FAILURE while a healthier one exists."""
        n = len(self.channels)
        start = next(self._turn)
        for k in range(n):
            i = (start + k) % n
            if self.channels[i].get_state(try_to_connect=True) != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                return i
        return start % n

    async def attempts_of(self, what: str, call: CallContext, idempotent: bool, run: Callable):
        """Awaits run(replica_index, timeout) until it succeeds, retrying idempotent calls on another replica."""
        delay = self.backoff
        attempts = self.attempts if idempotent else 1
        for attempt in range(1, attempts + 1):
            replica = self.pick()
            try:
                return await run(replica, call.timeout(f"{self.name} {what}"))
            except grpc.aio.AioRpcError as e:
                code = e.code()
                left = call.remaining()
                wait = min(self.max_backoff, _retry_after(e) or delay) * (1 + 0.25 * random.random())
                retry = (code in RETRYABLE and attempt < attempts
                         and (code == grpc.StatusCode.UNAVAILABLE or _retry_after(e) is not None)
                         and (left is None or left > wait + MIN_CALL_SECONDS))
                if not retry:
                    raise as_service_error(self.name, what, e, self.addresses[replica]) from None
                log.warning("%s %s on %s: %s; retrying in %.2f s (attempt %d of %d)", self.name, what,
                            self.addresses[replica], code.name, wait, attempt, attempts)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.max_backoff)

    async def unary(self, method: str, request, call: CallContext, *, idempotent: bool = True):
        """Calls `method` of the stub; retries idempotent calls on another replica."""
        md = self.metadata(call.request_id)

        async def run(replica, timeout):
            return await getattr(self.stubs[replica], method)(request, timeout=timeout, metadata=md)
        return await self.attempts_of(method, call, idempotent, run)

    async def collect(self, method: str, request, call: CallContext, *, idempotent: bool = True) -> list:
        """Calls a server-streaming `method` and returns every message; a failed idempotent call is redone whole."""
        md = self.metadata(call.request_id)

        async def run(replica, timeout):
            return [m async for m in getattr(self.stubs[replica], method)(request, timeout=timeout, metadata=md)]
        return await self.attempts_of(method, call, idempotent, run)


class UpstreamError(ServiceError):
    """A downstream failure, with the downstream status kept so a proxy can relay it unchanged."""

    def __init__(self, code: grpc.StatusCode, message: str, source: grpc.aio.AioRpcError):
        super().__init__(code, message)
        self.source = source


def as_service_error(service: str, what: str, e: grpc.aio.AioRpcError, address: str) -> ServiceError:
    """Keeps the downstream code for client errors, says which service failed for the others."""
    code = e.code()
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.CANCELLED):
        return UpstreamError(code, f"{service}: {e.details()}", e)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamError(code, f"{service} {what} did not finish within the deadline ({e.details()})", e)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return resource_exhausted(f"{service} {what} at {address} is overloaded: {e.details()}; retry later",
                                  retry_after=_retry_after(e) or 1.0)
    if code == grpc.StatusCode.UNAVAILABLE:
        return unavailable(f"{service} {what} at {address} failed: {e.details()}; retry later",
                           retry_after=_retry_after(e) or 1.0)
    return UpstreamError(grpc.StatusCode.INTERNAL if code == grpc.StatusCode.UNKNOWN else code,
                         f"{service} {what} failed: {code.name}: {e.details()}", e)
