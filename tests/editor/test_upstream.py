"""The editor's downstream call logic in-process: retries of idempotent calls on another replica, backoff hints,
deadlines, request ids and tokens on the wire, and the ordered chunk pipeline."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from interfacegan.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common import pipeline
from services.common.errors import ServiceError
from services.editor.upstream import CallContext, Upstream


class Replica(generator_pb2_grpc.GeneratorServiceServicer):
    """A generator stand-in that fails its first `failures` calls with `code` and records what it received."""

    def __init__(self, name: str, failures: int = 0, code=grpc.StatusCode.UNAVAILABLE, trailers=()):
        self.name, self.failures, self.code, self.trailers = name, failures, code, trailers
        self.calls: list[tuple[dict, str]] = []

    async def GetModelInfo(self, request, context):
        self.calls.append((dict(context.invocation_metadata()), request.model.name))
        if len(self.calls) <= self.failures:
            await context.abort(self.code, f"{self.name} is busy", trailing_metadata=self.trailers)
        return generator_pb2.ModelInfo(name=self.name)


async def serve(*replicas: Replica):
    servers, addresses = [], []
    for r in replicas:
        server = grpc.aio.server()
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(r, server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        await server.start()
        servers.append(server)
    return servers, ",".join(addresses)


def call(request_id: str = "rid-1", timeout: float | None = None, default: float = 10.0) -> CallContext:
    return CallContext(request_id, None if timeout is None else time.monotonic() + timeout, default)


REQUEST = generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name="m"))


def test_idempotent_calls_are_retried_on_the_next_replica_with_token_and_request_id():
    async def main():
        a, b = Replica("a", failures=10), Replica("b")
        servers, addresses = await serve(a, b)
        up = Upstream("generator", addresses, generator_pb2_grpc.GeneratorServiceStub, token="tok", backoff=0.01)
        try:
            replies = [await up.unary("GetModelInfo", REQUEST, call()) for _ in range(4)]
        finally:
            await up.close()
            for s in servers:
                await s.stop(0)
        return a, b, replies
    a, b, replies = asyncio.run(main())
    assert [r.name for r in replies] == ["b"] * 4
    md, _ = b.calls[0]
    assert md["authorization"] == "Bearer tok" and md["x-request-id"] == "rid-1"
    assert 1 <= len(a.calls) <= 4  # tried in turn, then skipped or retried elsewhere; never the failure returned


def test_non_idempotent_calls_and_unhinted_overload_are_not_retried():
    async def main():
        busy = Replica("busy", failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
        hinted = Replica("hinted", failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                         trailers=(("retry-after-ms", "20"),))
        down = Replica("down", failures=1)
        servers, addresses = await serve(busy, hinted, down)
        ups = [Upstream("generator", a, generator_pb2_grpc.GeneratorServiceStub, backoff=0.01)
               for a in addresses.split(",")]
        out = []
        try:
            for up in ups[:1]:
                with pytest.raises(ServiceError) as err:
                    await up.unary("GetModelInfo", REQUEST, call())
                out.append(err.value.code)
            out.append((await ups[1].unary("GetModelInfo", REQUEST, call())).name)
            with pytest.raises(ServiceError) as err:
                await ups[2].unary("GetModelInfo", REQUEST, call(), idempotent=False)
            out.append(err.value.code)
        finally:
            for up in ups:
                await up.close()
            for s in servers:
                await s.stop(0)
        return out, busy, hinted, down
    out, busy, hinted, down = asyncio.run(main())
    assert out == [grpc.StatusCode.RESOURCE_EXHAUSTED, "hinted", grpc.StatusCode.UNAVAILABLE]
    assert (len(busy.calls), len(hinted.calls), len(down.calls)) == (1, 2, 1)


def test_retries_stop_at_the_callers_deadline():
    async def main():
        always = Replica("always", failures=10**6, trailers=(("retry-after-ms", "300"),))
        servers, addresses = await serve(always)
        up = Upstream("generator", addresses, generator_pb2_grpc.GeneratorServiceStub, attempts=50, backoff=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(ServiceError) as err:
                await up.unary("GetModelInfo", REQUEST, call(timeout=0.8))
        finally:
            await up.close()
            for s in servers:
                await s.stop(0)
        return err.value, time.monotonic() - started, always
    error, took, always = asyncio.run(main())
    assert took < 1.0 and 1 < len(always.calls) < 6
    assert error.code == grpc.StatusCode.UNAVAILABLE and "generator" in error.message and error.retry_after


def test_call_context_timeouts():
    assert call(default=7.0).timeout("x") == 7.0
    assert 0.4 < call(timeout=0.5).timeout("x") <= 0.5
    with pytest.raises(ServiceError) as err:
        call(timeout=-1).timeout("the generator call")
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "generator" in err.value.message


def test_ordered_pipeline_keeps_order_bounds_concurrency_and_cancels_the_rest():
    async def main():
        running, peak, log = 0, 0, []

        def job(i: int, delay: float):
            async def run():
                nonlocal running, peak
                running += 1
                peak = max(peak, running)
                try:
                    await asyncio.sleep(delay)
                finally:
                    running -= 1
                if i == 5:
                    raise ValueError("five")
                return i
            return run

        delays = [0.05, 0.01, 0.03, 0.0, 0.02, 0.01, 0.2, 0.2]
        with pytest.raises(ValueError):
            async for value in pipeline.ordered([job(i, d) for i, d in enumerate(delays)], depth=3):
                log.append(value)
        await asyncio.sleep(0.01)
        return log, peak, running
    log, peak, running = asyncio.run(main())
    assert log == [0, 1, 2, 3, 4] and peak == 3 and running == 0
