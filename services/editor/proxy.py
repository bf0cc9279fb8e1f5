"""Relays a whole downstream gRPC service through the editor, byte for byte, so clients need one address."""

from __future__ import annotations

import logging

import grpc

from interfacegan import channel as ch
from services.common import logs

from .upstream import CallContext, Upstream, UpstreamError

log = logging.getLogger(__name__)


class ServiceProxy(grpc.GenericRpcHandler):
    """Forwards every method of `service` (a protobuf ServiceDescriptor) to `upstream`, undecoded.

    Messages pass as bytes (no re-serialisation). The caller's deadline and x-request-id travel on; the
    downstream status, message and rich details come back unchanged. Idempotent methods are retried on
    another replica on UNAVAILABLE (streams only before their first message).
    """

    def __init__(self, service, upstream: Upstream, default_timeout: float = 300.0):
        self.prefix = f"/{service.full_name}/"
        self.upstream = upstream
        self.default_timeout = default_timeout
        self.streaming = {m.name: m.server_streaming for m in service.methods
                          if not m.client_streaming}
        self.idempotent = set(ch.IDEMPOTENT_METHODS.get(service.name, ()))
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

    def _unary(self, name: str):
        calls = self._calls[name]

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = self._call_context(context)

            async def run(replica, timeout):
                return await calls[replica](request, timeout=timeout, metadata=self.upstream.metadata(call.request_id))
            try:
                return await self.upstream.attempts_of(name, call, name in self.idempotent, run)
            except UpstreamError as e:
                await _relay(context, e)
        return handler

    def _stream(self, name: str):
        calls = self._calls[name]

        async def handler(request: bytes, context: grpc.aio.ServicerContext):
            call = self._call_context(context)
            attempts = self.upstream.attempts if name in self.idempotent else 1
            last: grpc.aio.AioRpcError | None = None
            for _ in range(attempts):
                index = self.upstream.pick()
                left = call.remaining()
                stream = calls[index](request, timeout=left, metadata=self.upstream.metadata(call.request_id))
                relayed = False
                try:
                    async for message in stream:
                        relayed = True
                        yield message
                    return
                except grpc.aio.AioRpcError as e:
                    last = e
                    if relayed or e.code() != grpc.StatusCode.UNAVAILABLE:
                        break
                finally:
                    stream.cancel()
            if last is not None:
                await context.abort(last.code(), last.details() or "", _trailers(last))
        return handler


def _trailers(e: grpc.aio.AioRpcError) -> tuple:
    # Keep the rich status (grpc-status-details-bin) and hints such as retry-after-ms; drop transport headers.
    return tuple((k, v) for k, v in (e.trailing_metadata() or ())
                 if k == "grpc-status-details-bin" or not k.startswith("grpc-"))


async def _relay(context: grpc.aio.ServicerContext, e: UpstreamError | Exception) -> None:
    source = getattr(e, "source", None)
    if source is not None:
        await context.abort(source.code(), source.details() or "", _trailers(source))
    raise e
