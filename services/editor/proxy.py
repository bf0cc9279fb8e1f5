"""Relays a whole downstream gRPC service through the editor, byte for byte, so clients need one address."""

from __future__ import annotations

import logging
from typing import Callable

import grpc

from interfacegan import channel as sdk
from services.common import logs
from services.common.upstream import CallContext, Upstream

log = logging.getLogger(__name__)


class ServiceProxy(grpc.GenericRpcHandler):
    """Forwards every method of `service` (a protobuf ServiceDescriptor) to `upstream`, undecoded.

    Messages pass as bytes (no re-serialisation). The caller's deadline and x-request-id travel on; the
    downstream status, message and rich details come back unchanged. Retries are the upstream channel's own
    (idempotent methods on UNAVAILABLE, streams only before their first message).
    """

    def __init__(self, service, upstream: Upstream, default_timeout: float = 300.0, *,
                 after_write: Callable[[], None] | None = None):
        self.prefix = f"/{service.full_name}/"
        self.upstream = upstream
        self.default_timeout = default_timeout
        # Called when a method that may add a stored version (not in the idempotent read set) was relayed.
        self.after_write = after_write or (lambda: None)
        self.reads = set(sdk.IDEMPOTENT_METHODS.get(service.name, ())) - {"ConditionBoundary"}
        self.streaming = {m.name: m.server_streaming for m in service.methods
                          if not m.client_streaming}
        # The stubs of raw channels: one multicallable per replica and method.
        self._calls = {}
        for name, streaming in self.streaming.items():
            path = self.prefix + name
            self._calls[name] = [c.unary_stream(path) if streaming else c.unary_unary(path)
                                 for c in upstream.channels]

    def service(self, details: grpc.HandlerCallDetails):
        if not details.method.startswith(self.prefix):
            return None
        name = details.method[len(self.prefix):]
        if name not in self.streaming:
            return None
        if self.streaming[name]:
            return grpc.unary_stream_rpc_method_handler(self._stream(name))
        return grpc.unary_unary_rpc_method_handler(self._unary(name))

    def _call_context(self, context: grpc.aio.ServicerContext) -> CallContext:
        md = dict(context.invocation_metadata() or ())
        rid = md.get("x-request-id", "")
        logs.request_id_var.set(rid)
        return CallContext.of(context, rid, self.default_timeout)

    def _start(self, name: str, request: bytes, call: CallContext):
        index = self.upstream.pick()
        self.upstream.count(name)
        # A relayed stream (a training job's progress) lives as long as its caller: without the caller's deadline
        # it gets none either, and the caller's cancel reaches it (the handler's finally cancels the stream).
        no_deadline = self.streaming[name] and call.deadline is None
        timeout = None if no_deadline else call.timeout(f"{self.upstream.name} {name}")
        return self._calls[name][index](request, timeout=timeout,
                                        metadata=self.upstream.metadata(call.request_id, call.lane))

    def _unary(self, name: str):
        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = self._call_context(context)
            try:
                return await self._start(name, request, call)
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "", _trailers(e))
            finally:
                if name not in self.reads:
                    self.after_write()
        return handler

    def _stream(self, name: str):
        async def handler(request: bytes, context: grpc.aio.ServicerContext):
            call = self._call_context(context)
            stream = self._start(name, request, call)
            try:
                async for message in stream:
                    yield message
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "", _trailers(e))
            finally:
                stream.cancel()
                if name not in self.reads:
                    self.after_write()
        return handler


def _trailers(e: grpc.aio.AioRpcError) -> tuple:
    # Keep the rich status (grpc-status-details-bin) and hints such as retry-after-ms; drop transport headers.
    return tuple((k, v) for k, v in (e.trailing_metadata() or ())
                 if k in ("grpc-status-details-bin", "grpc-retry-pushback-ms") or not k.startswith("grpc-"))
