"""The server runtime every service runs in: grpc.aio, health, reflection, metrics, auth, shutdown."""

from __future__ import annotations

import asyncio
import faulthandler
import hmac
import inspect
import logging
import re
import signal
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

from . import logs, metrics
from .errors import ServiceError, resource_exhausted
from .settings import ServerSettings

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


class Service(Protocol):
    """What a service hands to the runtime."""

    #: Full proto names of the gRPC services it implements, e.g. "interfacegan.v1.GeneratorService".
    service_names: tuple[str, ...]

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the servicers to the server."""

    async def load(self) -> None:
        """Loads models and connects to dependencies; health says SERVING once this returns."""

    async def close(self) -> None:
        """Releases resources after the server stopped."""


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    size = settings.max_message_bytes
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        # Keepalive agreed with clients/python/interfacegan/channel.py: clients ping at most every 20 s.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ] + ([("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
          # Long streams (training jobs, big Synthesize calls) may outlive the age: let them finish.
          ("grpc.max_connection_age_grace_ms", 3_600_000)] if settings.max_connection_age_seconds > 0 else [])


class _Interceptor(grpc.aio.ServerInterceptor):
    """Turns ServiceError into statuses, checks the bearer token, records metrics, sets the log request id."""

    EXEMPT = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, service: str, auth_token: str, max_concurrent_rpcs: int = 0):
        self.service = service
        self.auth_token = auth_token
        # The concurrent-call limit is kept here rather than by gRPC's core, whose refusals carry no retry
        # hint and never reach the metrics: calls past it get the batcher's rich RESOURCE_EXHAUSTED.
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.active = 0
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._refusing: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        exempt = method.startswith(self.EXEMPT)
        if not exempt and self.auth_token:
            md = dict(details.invocation_metadata or ())
            # Constant-time comparison: the token must not leak through response timing.
            if not hmac.compare_digest(md.get("authorization", "").encode(), f"Bearer {self.auth_token}".encode()):
                return _wrap(handler, _deny)
        if self.max_concurrent_rpcs and self.active >= self.max_concurrent_rpcs:
            # Refused here, before the request is even parsed: a flood far past the limit costs a status each.
            return self._refuser(method, handler)
        if exempt:
            if not self.max_concurrent_rpcs:
                return handler
            wrapped = self._wrapped.get(method)
            if wrapped is None:  # health on this port counts against the limit: readiness fails when saturated
                wrapped = self._wrapped[method] = _wrap(
                    handler, lambda behavior, streaming: self._limited(behavior, streaming, method), lenient=False)
            return wrapped
        wrapped = self._wrapped.get(method)
        if wrapped is None:  # one wrapper per method, built on its first call
            wrapped = self._wrapped[method] = _wrap(
                handler, lambda behavior, streaming: self._observe(behavior, streaming, method))
        return wrapped

    def _refusal(self, method: str) -> ServiceError:
        metrics.REQUESTS.labels(self.service, method.rsplit("/", 1)[-1], "RESOURCE_EXHAUSTED").inc()
        return resource_exhausted(f"the server is handling {self.active} calls, its limit "
                                  f"(max_concurrent_rpcs {self.max_concurrent_rpcs}); retry after the hint",
                                  retry_after=0.5)

    def _refuser(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The method's handler for calls past the limit: the rich refusal, counted, the request left unparsed."""
        refuser = self._refusing.get(method)
        if refuser is None:
            def refuse(behavior, streaming: bool):
                async def unary(request, context):
                    await context.abort_with_status(self._refusal(method).to_status())

                async def stream(request, context):
                    await context.abort_with_status(self._refusal(method).to_status())
                    yield  # pragma: no cover - makes this an async generator
                return stream if streaming else unary
            refuser = self._refusing[method] = _wrap(handler, refuse, parse=_unparsed)
        return refuser

    def _limited(self, behavior, streaming: bool, method: str):
        """Exempt methods: only the concurrent-call limit."""
        if streaming:
            async def stream(request, context):
                if self.active >= self.max_concurrent_rpcs:
                    await context.abort_with_status(self._refusal(method).to_status())
                self.active += 1
                try:
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:  # health's Watch writes with context.write() and returns nothing
                        await result
                finally:
                    self.active -= 1
            return stream

        async def unary(request, context):
            if self.active >= self.max_concurrent_rpcs:
                await context.abort_with_status(self._refusal(method).to_status())
            self.active += 1
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            finally:
                self.active -= 1
        return unary

    def _admit(self, request) -> bool:
        """Checks the call limit and the request's bytes; raises ServiceError, or counts the call in."""
        if self.max_concurrent_rpcs and self.active >= self.max_concurrent_rpcs:
            # Counted by the caller's wrapper, with every other status of the method.
            raise resource_exhausted(f"the server is handling {self.active} calls, its limit (max_concurrent_rpcs "
                                     f"{self.max_concurrent_rpcs}); retry after the hint", retry_after=0.5)
        if isinstance(request, _Undecodable):
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {request.name} "
                               f"message ({request.error}); accepted: the message's protobuf encoding")
        if hasattr(request, "DESCRIPTOR"):
            check_request_id(getattr(request, "request_id", ""), "request_id")
        self.active += 1
        return True

    def _observe(self, behavior, streaming: bool, method: str):
        short = method.rsplit("/", 1)[-1]
        service = self.service
        # Metric children resolved once per method: labels() costs ~15 us a call on the hot path.
        latency = metrics.LATENCY.labels(service, short)
        in_flight = metrics.IN_FLIGHT.labels(service)
        counters: dict[str, object] = {}

        def finish(code: str, start: float):
            counter = counters.get(code)
            if counter is None:
                counter = counters[code] = metrics.REQUESTS.labels(service, short, code)
            counter.inc()
            latency.observe(time.perf_counter() - start)

        def request_id_of(request) -> str:
            rid = getattr(request, "request_id", "") if hasattr(request, "DESCRIPTOR") else ""
            return rid if _REQUEST_ID.fullmatch(rid) else ""  # an invalid id is refused, and never logged

        if streaming:
            async def stream(request, context):
                start = time.perf_counter()
                logs.request_id_var.set(request_id_of(request))
                in_flight.inc()
                code, admitted = "OK", False
                try:
                    admitted = self._admit(request)
                    async for item in behavior(request, context):
                        yield item
                except ServiceError as e:
                    code = e.code.name
                    await context.abort_with_status(bounded(e).to_status())
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except Exception as e:  # noqa: BLE001 - reported as INTERNAL, never crashes the server
                    code = _code_of(context, e)
                    if code == "UNKNOWN":
                        log.exception("unhandled error in %s", method)
                        code = "INTERNAL"
                        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")
                    raise
                finally:
                    self.active -= admitted
                    in_flight.dec()
                    finish(code, start)
            return stream

        async def unary(request, context):
            start = time.perf_counter()
            logs.request_id_var.set(request_id_of(request))
            in_flight.inc()
            code, admitted = "OK", False
            try:
                admitted = self._admit(request)
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except NotImplementedError:
                code = "UNIMPLEMENTED"
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this server")
            except ServiceError as e:
                code = e.code.name
                await context.abort_with_status(bounded(e).to_status())
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as e:  # noqa: BLE001
                code = _code_of(context, e)
                if code == "UNKNOWN":
                    log.exception("unhandled error in %s", method)
                    code = "INTERNAL"
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}")
                raise
            finally:
                self.active -= admitted
                in_flight.dec()
                finish(code, start)
        return unary


#: Longest request id accepted. Ids name idempotency records (Redis keys kept for days) and go into every log line.
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID = re.compile(r"[!-~]{1,%d}" % MAX_REQUEST_ID_CHARS)


def check_request_id(value: str, field: str) -> str:
    """Refuses a request id that is not 1..128 printable ASCII characters without spaces (empty: none given)."""
    if value and not _REQUEST_ID.fullmatch(value):
        shown = repr(value[:40]) + ("..." if len(value) > 40 else "")
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{field}: {shown} ({len(value)} characters) is not a request id; accepted: 1 to "
                           f"{MAX_REQUEST_ID_CHARS} printable ASCII characters without spaces or control "
                           f"characters (e.g. a UUID), or empty", field=field)
    return value


#: Longest error message sent, in UTF-8 bytes. Messages echo what the caller sent; the status travels in trailing metadata,
#: which clients cap at 16 KiB, so an overlong name would turn NOT_FOUND into a RESOURCE_EXHAUSTED "Stream removed".
MAX_ERROR_CHARS = 1024
_LONG_TOKEN = re.compile(r"\S{97,}")


def bounded(error: ServiceError, limit: int = MAX_ERROR_CHARS) -> ServiceError:
    """The error with overlong words cut (head ... tail) and the message kept under `limit` UTF-8 bytes."""
    def cut(text: str) -> str:
        text = _LONG_TOKEN.sub(lambda m: f"{m[0][:48]}...({len(m[0]) - 96} more characters)...{m[0][-48:]}", text)
        size = len(text.encode())
        if size > limit:  # in UTF-8 bytes (non-ASCII is escaped on the wire); keep the tail: what is accepted
            keep = max(16, int(len(text) * limit / size) // 2 - 24)
            text = f"{text[:keep]} ...({len(text) - 2 * keep} characters cut)... {text[-keep:]}"
        return text

    if len(error.message) <= 96 and (error.field is None or len(error.field) <= 96):
        return error
    return ServiceError(error.code, cut(error.message), field=None if error.field is None else cut(error.field),
                        retry_after=error.retry_after)


_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]*@")


def redact(text: str) -> str:
    """`text` with the credentials of URLs in it (redis://:PASSWORD@host) masked, for logs and messages."""
    return _URL_CREDENTIALS.sub("***@", text)


def redact_urls(values: dict) -> dict:
    """`values` with the credentials of URLs (redis://:PASSWORD@host) masked, for logs."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in values.items()}


def _code_of(context, error: Exception) -> str:
    if isinstance(error, grpc.aio.AbortError) or type(error).__name__ == "AbortError":
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN_ABORT"
    return "UNKNOWN"


def _deny(behavior, streaming: bool):
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'")

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'")
        yield  # pragma: no cover - makes this an async generator
    return stream if streaming else unary


class _Undecodable:
    """Stands for request bytes that do not parse, so the handler's wrapper answers INVALID_ARGUMENT (gRPC's core
    answers a failed deserializer with UNKNOWN)."""

    def __init__(self, name: str, error: Exception):
        self.name, self.error = name, error


def _lenient(deserializer):
    if deserializer is None:
        return None
    name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = name.full_name if name is not None else "request"

    def parse(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as e:
            return _Undecodable(name, e)
    return parse


def _unparsed(data: bytes) -> None:
    return None


def _wrap(handler: grpc.RpcMethodHandler, wrap: Callable, lenient: bool = True,
          parse: Callable | None = None) -> grpc.RpcMethodHandler:
    if parse is None:
        parse = _lenient(handler.request_deserializer) if lenient else handler.request_deserializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False),
                                                   parse, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, True),
                                                    parse, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False),
                                                    parse, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True),
                                                 parse, handler.response_serializer)


def _reflection_v1_descriptor() -> None:
    """Adds grpc/reflection/v1/reflection.proto to the default descriptor pool (once).

    grpcio-reflection ships v1alpha only; v1 is the same file under package grpc.reflection.v1 (same
    messages, same field numbers, so the same bytes on the wire). Registering it lets reflection describe
    the v1 service to clients that ask for its file.
    """
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(REFLECTION_V1)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto.FromString(reflection_pb2.DESCRIPTOR.serialized_pb)
    old, new = proto.package, "grpc.reflection.v1"
    proto.name, proto.package = "grpc/reflection/v1/reflection.proto", new
    proto.options.Clear()
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{old}."):
                field.type_name = f".{new}." + field.type_name.removeprefix(f".{old}.")
    for method in proto.service[0].method:
        method.input_type = f".{new}." + method.input_type.removeprefix(f".{old}.")
        method.output_type = f".{new}." + method.output_type.removeprefix(f".{old}.")
    pool.Add(proto)


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serves server reflection as grpc.reflection.v1 (what current grpcurl asks first) and v1alpha."""
    _reflection_v1_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = ReflectionServicer(names)
    for service in (reflection.SERVICE_NAME, REFLECTION_V1):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))


async def _liveness_server(settings: ServerSettings) -> tuple[grpc.aio.Server, HealthServicer, int] | None:
    """A second server answering only grpc.health.v1, without the concurrent-RPC limit of the main one.

    Its overall status ("") says the process is alive: its event loop answers. Under saturation the main
    port refuses health checks (readiness fails and callers move away) while this one keeps answering,
    so liveness probes never restart a pod for being busy. Plaintext, as kubelet gRPC probes are.
    """
    if settings.health_port < 0:
        return None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    if port == 0:
        raise RuntimeError(f"could not bind the health port {settings.host}:{settings.health_port}")
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    return server, health, port


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    key = Path(settings.tls_key).read_bytes()
    chain = Path(settings.tls_cert).read_bytes()
    ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


async def serve(service: Service, settings: ServerSettings, *, stop: asyncio.Event | None = None,
                on_ready: Callable[[int], Awaitable[None] | None] | None = None) -> None:
    """Runs `service` until SIGTERM/SIGINT (or `stop` is set), then shuts down gracefully.

    Health reports NOT_SERVING until `service.load()` returned, and again as soon as
    shutdown starts; in-flight calls then get `settings.grace_seconds` to finish.
    """
    # No maximum_concurrent_rpcs for gRPC's core: its refusal is a bare status (no RetryInfo, no pushback,
    # never in the metrics). The interceptor refuses every call past the limit before parsing its request.
    server = grpc.aio.server(
        options=server_options(settings),
        interceptors=[_Interceptor(settings.service_name, settings.auth_token, settings.max_concurrent_rpcs)],
    )
    service.register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(server, (*service.service_names, HEALTH_SERVICE))
    for name in ("", *service.service_names):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    address = f"{settings.host}:{settings.port}"
    creds = _credentials(settings)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    await server.start()
    liveness = await _liveness_server(settings)
    metrics_port = None
    if settings.metrics_port >= 0:
        metrics_port = metrics.start_metrics_server(settings.metrics_port, settings.host)
    if settings.port_file:
        Path(settings.port_file).write_text(str(port))
    log.info("listening", extra={"port": port, "metrics_port": metrics_port, "tls": bool(creds),
                                 "health_port": liveness[2] if liveness else None,
                                 "settings": redact_urls(settings.public_dict())})

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests run servers in threads)
            pass

    async def load():
        started = time.perf_counter()
        try:
            await service.load()
        except Exception:
            log.exception("loading failed; staying NOT_SERVING")
            if liveness:  # a restart may succeed (a dependency back, a volume mounted): let liveness ask for one
                await liveness[1].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            return
        for name in ("", *service.service_names):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"load_seconds": round(time.perf_counter() - started, 3)})

    loader = asyncio.create_task(load())
    if on_ready is not None:
        result = on_ready(port)
        if asyncio.iscoroutine(result):
            await result
    await stop.wait()

    log.info("shutting down", extra={"grace_seconds": settings.grace_seconds, "drain_seconds": settings.drain_seconds})
    await health.enter_graceful_shutdown()
    loader.cancel()
    if settings.drain_seconds > 0:
        await asyncio.sleep(settings.drain_seconds)
    await server.stop(settings.grace_seconds)
    if liveness:  # alive until the main server stopped: a draining pod is not restarted
        await liveness[0].stop(0)
    await service.close()
    log.info("stopped")


def run(service_factory: Callable[[ServerSettings], Service], settings_cls: type[ServerSettings],
        argv: list[str] | None = None) -> None:
    """Entry point of `python -m services.<name>`: parse settings, configure logs, serve."""
    import sys

    settings = settings_cls.load(sys.argv[1:] if argv is None else argv)
    logs.configure(settings.service_name, settings.log_level, settings.log_format)
    # `kill -USR1 <pid>` writes every thread's stack to stderr, even while one holds the event loop: how a
    # service that stopped answering shows where it is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.run(serve(service_factory(settings), settings))
