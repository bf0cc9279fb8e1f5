"""The one way a service calls another: replicas, round robin, the caller's deadline, gRPC retries, auth, TLS.

Every service that calls another (editor -> generator/scorer/boundary/inversion, boundary -> generator/scorer)
and the local cluster's health checks build their channels here, from the calling service's settings::

    generator = Upstream("generator", settings.generator_address, GeneratorServiceStub, settings)
    info = await generator.unary("GetModelInfo", request, CallContext.of(context, request_id, 120.0))

- Addresses: `host:port`; a comma-separated list of replicas; or a gRPC target URI such as
  `dns:///generator:50052` (every address the name resolves to). A list of IP literals becomes one channel
  balanced by gRPC's round robin policy (`ipv4:a:1,b:2`), so a retry reaches another replica; a list of host
  names gets one channel per entry, picked in turn.
- Deadlines: every call carries what is left of the incoming call's deadline (context.time_remaining()), or
  the service's default timeout when the caller set none.
- Retries: only gRPC's own, from the channel's service config (the SDK's `channel.service_config`): the
  idempotent methods are retried on UNAVAILABLE, on another replica of the channel, until their first
  response arrived and within the deadline. Nothing here retries on top.
- Auth and TLS: the bearer token (settings.auth_token) and x-request-id travel as metadata; TLS when
  settings.tls_ca is set, presenting tls_cert/tls_key as the client certificate (mTLS).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import ipaddress
import itertools
import logging
import socket
import time
from typing import AsyncIterator, Sequence

import grpc
from prometheus_client import Counter

from interfacegan import channel as sdk

from .batching import LANE_METADATA, request_lane
from .errors import ServiceError, deadline_exceeded, resource_exhausted, unavailable
from .runtime import MAX_REQUEST_ID_CHARS
from .settings import ServerSettings

log = logging.getLogger(__name__)

#: A replica that went away is tried again soon, not after gRPC's default reconnect backoff (up to 2 minutes).
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2_000))
#: A call never starts with less than this left of the caller's deadline.
MIN_CALL_SECONDS = 0.05

CALLS = Counter("ifgan_upstream_calls_total", "Calls this service made to another, by target service and method",
                ["target", "method"])


def targets(addresses: str | Sequence[str]) -> list[str]:
    """The gRPC targets of an address setting: one per channel to open.

    Replicas given as IP literals share one target (`ipv4:10.0.0.1:1,10.0.0.2:1`, balanced round robin by
    gRPC, so its retries reach another replica); host names and target URIs stay one target each.
    """
    parts = sdk.split_addresses(addresses)
    if len(parts) == 1:
        return parts
    hosts = []
    for p in parts:
        host = p.rsplit(":", 1)[0].strip("[]") if ":" in p and "/" not in p else ""
        try:
            hosts.append(ipaddress.ip_address(host))
        except ValueError:
            return parts
    versions = {h.version for h in hosts}
    if len(versions) != 1:
        return parts
    return [f"ipv{versions.pop()}:{','.join(parts)}"]


#: Services wait out a peer's refusal (RESOURCE_EXHAUSTED carries the server's pushback) as well as a lost replica.
SERVICE_RETRY = sdk.RetryPolicy(status_codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"))


def client_config(settings: ServerSettings | None = None, *, retry: sdk.RetryPolicy | None = SERVICE_RETRY,
                  max_message_bytes: int | None = None, server_name: str | None = None,
                  tls_ca: str | None = None, tls_cert: str | None = None,
                  tls_key: str | None = None) -> sdk.ChannelConfig:
    """The SDK channel configuration a service uses to call another, from its settings (keywords override)."""
    s = settings
    ca = tls_ca if tls_ca is not None else (s.tls_ca if s else "")
    cert = tls_cert if tls_cert is not None else (s.tls_cert if s else "")
    key = tls_key if tls_key is not None else (s.tls_key if s else "")
    name = server_name if server_name is not None else (s.tls_server_name if s else "")
    with_cert = bool(ca and cert and key)
    return sdk.ChannelConfig(
        tls=bool(ca), root_certificates=ca or None, client_certificate=cert if with_cert else None,
        client_key=key if with_cert else None, server_name=(name or None) if ca else None,
        max_message_bytes=max_message_bytes or (s.max_message_bytes if s else sdk.DEFAULT_MAX_MESSAGE_BYTES),
        retry=retry, extra_options=RECONNECT_OPTIONS)


def _for_target(config: sdk.ChannelConfig, target: str) -> sdk.ChannelConfig:
    if config.tls and not config.server_name and target.startswith(("ipv4:", "ipv6:")):
        # A replica list has no single authority to verify: expect the first host in every certificate
        # (replicas sharing a certificate); --tls-server-name names a common name otherwise.
        first = target.split(":", 1)[1].split(",")[0].rsplit(":", 1)[0].strip("[]")
        return dataclasses.replace(config, server_name=first)
    return config


def sync_channel(address: str, config: sdk.ChannelConfig | None = None) -> grpc.Channel:
    """A blocking channel to `address` (for tools such as health checks), configured as services' channels."""
    target = targets(address)[0]
    return sdk.secure_channel(target, _for_target(config or client_config(retry=None), target))


@dataclasses.dataclass
class CallContext:
    """What every downstream call of one incoming request shares: its deadline, request id and priority lane.

    Attributes:
        request_id: Forwarded as the `x-request-id` metadata (and by callers in request fields).
        deadline: time.monotonic() by which the incoming call must end (None: no deadline).
        default_timeout: Per-call timeout when the incoming call has no deadline.
        lane: Priority lane forwarded as the `ifgan-priority` metadata ("": the called RPC's default).
    """

    request_id: str
    deadline: float | None
    default_timeout: float
    lane: str = ""

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext | None, request_id: str, default_timeout: float,
           lane: str = "") -> "CallContext":
        """The context of an incoming call: its deadline (context.time_remaining()) and its lane (its
        `ifgan-priority` metadata, else `lane`: this RPC's default) carried on.

        Raises:
            ServiceError: INVALID_ARGUMENT when the metadata names no lane.
        """
        remaining = context.time_remaining() if context is not None else None
        deadline = time.monotonic() + remaining if remaining is not None else None
        return cls(request_id, deadline, default_timeout, request_lane(context, lane))

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def derived_id(self, tag: str) -> str:
        """The request id of one downstream call, "<id>/<tag>"; a hash stands for an id too long to extend, so
        the derived one stays within the request-id limit the servers enforce."""
        rid = f"{self.request_id}/{tag}"
        if len(rid) <= MAX_REQUEST_ID_CHARS:
            return rid
        return f"{hashlib.sha256(self.request_id.encode()).hexdigest()[:32]}/{tag}"[:MAX_REQUEST_ID_CHARS]

    def timeout(self, what: str) -> float:
        """Timeout of the next call: what is left of the caller's deadline, or the default."""
        left = self.remaining()
        if left is None:
            return self.default_timeout
        if left < MIN_CALL_SECONDS:
            raise deadline_exceeded(f"the deadline passed before {what}; give the call a longer deadline")
        return min(left, self.default_timeout)


class Upstream:
    """Channels to the replicas of one service, called with the caller's deadline, token and request id.

    Args:
        name: Service name for messages and metrics ("generator").
        addresses: The replicas (see the module docstring).
        stub_cls: Generated stub class.
        settings: The calling service's settings: auth_token, TLS files, message limit.
        retry: gRPC retry policy of the idempotent methods (None: no retries).
    """

    def __init__(self, name: str, addresses: str, stub_cls, settings: ServerSettings | None = None, *,
                 retry: sdk.RetryPolicy | None = SERVICE_RETRY):
        self.name = name
        self.addresses = targets(addresses)
        self._listed = sdk.split_addresses(addresses)
        config = client_config(settings, retry=retry)
        self.channels = [sdk.aio_channel(a, _for_target(config, a)) for a in self.addresses]
        self.stubs = [stub_cls(c) for c in self.channels]
        self.token = settings.auth_token if settings else ""
        #: Calls made, by method: what a test or a log reads to see the round trips of a request.
        self.calls: collections.Counter[str] = collections.Counter()
        self._turn = itertools.count()
        self._idempotent = set(sdk.IDEMPOTENT_METHODS.get(stub_cls.__name__.removesuffix("Stub"), ()))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)

    def metadata(self, request_id: str, lane: str = "") -> tuple[tuple[str, str], ...]:
        return (sdk.auth_metadata(self.token) + (((LANE_METADATA, lane),) if lane else ())
                + ((("x-request-id", request_id),) if request_id else ()))

    async def replicas(self) -> int:
        """How many replicas the calls spread over: the addresses listed, a `dns:///` name counting the addresses
        it resolves to now (1 when it does not resolve)."""
        loop = asyncio.get_running_loop()
        count = 0
        for address in self._listed:
            host, _, port = address.removeprefix("dns:").lstrip("/").rpartition(":")
            if not address.startswith("dns:") or not host:
                count += 1
                continue
            try:
                found = await loop.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
                count += max(1, len({info[4][0] for info in found}))
            except OSError:
                count += 1
        return max(1, count)

    def pick(self) -> int:
        """The next channel in turn, skipping those in TRANSIENT_FAILURE while a healthier one exists."""
        n = len(self.channels)
        start = next(self._turn)
        for k in range(n):
            i = (start + k) % n
            if self.channels[i].get_state(try_to_connect=True) != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                return i
        return start % n

    def count(self, method: str) -> None:
        self.calls[method] += 1
        CALLS.labels(self.name, method).inc()

    async def unary(self, method: str, request, call: CallContext):
        """Calls a unary `method`; a failure is raised as a ServiceError naming this service."""
        replica = self.pick()
        self.count(method)
        try:
            return await getattr(self.stubs[replica], method)(
                request, timeout=call.timeout(f"{self.name} {method}"),
                metadata=self.metadata(call.request_id, call.lane))
        except grpc.aio.AioRpcError as e:
            raise as_service_error(self.name, method, e, self.addresses[replica]) from None

    async def stream(self, method: str, request, call: CallContext) -> AsyncIterator:
        """Calls a server-streaming `method` and yields its messages."""
        replica = self.pick()
        self.count(method)
        stream = getattr(self.stubs[replica], method)(
            request, timeout=call.timeout(f"{self.name} {method}"), metadata=self.metadata(call.request_id, call.lane))
        try:
            async for message in stream:
                yield message
        except grpc.aio.AioRpcError as e:
            raise as_service_error(self.name, method, e, self.addresses[replica]) from None
        finally:
            stream.cancel()

    async def collect(self, method: str, request, call: CallContext) -> list:
        """Calls a server-streaming `method` and returns every message.

        gRPC's retry policy cannot redo a stream once its first message arrived, so a replica lost mid-stream
        would fail the call. Nothing of a collected stream has been passed on yet, so an idempotent one is
        redone whole, once, on the next replica (within the caller's deadline): the only retry this client adds
        to the channel's, and only where the channel's cannot act.
        """
        got: list = []
        try:
            async for m in self.stream(method, request, call):
                got.append(m)
            return got
        except ServiceError as e:
            if not (got and e.code == grpc.StatusCode.UNAVAILABLE and method in self._idempotent):
                raise
            log.info("stream from a lost replica redone", extra={"service": self.name, "method": method})
            return [m async for m in self.stream(method, request, call)]


class UpstreamError(ServiceError):
    """A downstream failure, with the downstream status kept so a proxy can relay it unchanged."""

    def __init__(self, code: grpc.StatusCode, message: str, source: grpc.aio.AioRpcError):
        super().__init__(code, message)
        self.source = source


def retry_after(error: grpc.aio.AioRpcError) -> float | None:
    """The server's `retry-after-ms` hint in seconds, if it sent one."""
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return int(value) / 1000
            except ValueError:
                return None
    return None


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
                                  retry_after=retry_after(e) or 1.0)
    if code == grpc.StatusCode.UNAVAILABLE:
        return unavailable(f"{service} {what} at {address} failed: {e.details()}; retry later",
                           retry_after=retry_after(e) or 1.0)
    return UpstreamError(grpc.StatusCode.INTERNAL if code == grpc.StatusCode.UNKNOWN else code,
                         f"{service} {what} failed: {code.name}: {e.details()}", e)
