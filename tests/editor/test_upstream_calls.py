"""The one way services call each other (services/common/upstream.py), in-process against real gRPC servers:
retries of idempotent calls by the channel's service config on another replica, no retry of other calls or of
overload, the caller's deadline on the wire, request ids and tokens, address forms, and the ordered pipeline."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from interfacegan import channel as sdk
from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2, generator_pb2, generator_pb2_grpc
from services.common import pipeline
from services.common.errors import ServiceError
from services.common.settings import ServerSettings
from services.common.upstream import CallContext, Upstream, targets

FAST = sdk.RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.05)
#: gRPC rounds a deadline up to its wire units, so a server may see a few milliseconds more than was left.
SLACK = 0.05


class Replica(generator_pb2_grpc.GeneratorServiceServicer, boundary_pb2_grpc.BoundaryServiceServicer):
    """A stand-in that fails its first `failures` calls with `code` and records what it received."""

    def __init__(self, name: str, failures: int = 0, code=grpc.StatusCode.UNAVAILABLE, trailers=()):
        self.name, self.failures, self.code, self.trailers = name, failures, code, trailers
        self.calls: list[tuple[dict, str, float | None]] = []

    async def _answer(self, context, what: str):
        self.calls.append((dict(context.invocation_metadata()), what, context.time_remaining()))
        if len(self.calls) <= self.failures:
            await context.abort(self.code, f"{self.name} is busy", trailing_metadata=self.trailers)

    async def GetModelInfo(self, request, context):
        await self._answer(context, request.model.name)
        return generator_pb2.ModelInfo(name=self.name)

    async def ImportBoundary(self, request, context):  # not idempotent: a retry would add a second version
        await self._answer(context, request.attribute)
        return boundary_pb2.Boundary()


async def serve(*replicas: Replica):
    servers, addresses = [], []
    for r in replicas:
        server = grpc.aio.server()
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(r, server)
        boundary_pb2_grpc.add_BoundaryServiceServicer_to_server(r, server)
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
        up = Upstream("generator", addresses, generator_pb2_grpc.GeneratorServiceStub,
                      ServerSettings(auth_token="tok"), retry=FAST)
        try:
            replies = [await up.unary("GetModelInfo", REQUEST, call()) for _ in range(4)]
        finally:
            await up.close()
            for s in servers:
                await s.stop(0)
        return a, b, replies, up
    a, b, replies, up = asyncio.run(main())
    assert len(up.channels) == 1  # IP replicas share one round robin channel, so gRPC's retry reaches b
    assert [r.name for r in replies] == ["b"] * 4
    md, _, _ = b.calls[0]
    assert md["authorization"] == "Bearer tok" and md["x-request-id"] == "rid-1"
    # Tried in turn, then retried elsewhere; never the failure returned (how often a is picked first depends on
    # which subchannel connects first, so only its lower bound is fixed).
    assert 1 <= len(a.calls) <= 4 * FAST.max_attempts
    assert up.calls == {"GetModelInfo": 4}  # retries are the channel's: one call each for the caller


def test_non_idempotent_calls_and_overload_are_not_retried():
    async def main():
        busy = Replica("busy", failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
        hinted = Replica("hinted", failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                         trailers=(("retry-after-ms", "20"),))
        down = Replica("down", failures=1)
        servers, addresses = await serve(busy, hinted, down)
        ups = [Upstream("generator", a, generator_pb2_grpc.GeneratorServiceStub, retry=FAST)
               for a in addresses.split(",")]
        out = []
        try:
            for up in ups[:2]:
                with pytest.raises(ServiceError) as err:
                    await up.unary("GetModelInfo", REQUEST, call())
                out.append((err.value.code, err.value.retry_after))
            stub = Upstream("boundary", addresses.split(",")[2], boundary_pb2_grpc.BoundaryServiceStub, retry=FAST)
            with pytest.raises(ServiceError) as err:
                await stub.unary("ImportBoundary", boundary_pb2.ImportBoundaryRequest(attribute="x"), call())
            out.append(err.value.code)
            await stub.close()
        finally:
            for up in ups:
                await up.close()
            for s in servers:
                await s.stop(0)
        return out, busy, hinted, down
    out, busy, hinted, down = asyncio.run(main())
    # Overload goes back to the caller with the server's hint (1 s when it gave none), to retry when it likes.
    assert out == [(grpc.StatusCode.RESOURCE_EXHAUSTED, 1.0), (grpc.StatusCode.RESOURCE_EXHAUSTED, 0.02),
                   grpc.StatusCode.UNAVAILABLE]
    assert (len(busy.calls), len(hinted.calls), len(down.calls)) == (1, 1, 1)


def test_services_wait_out_a_refusal_for_the_servers_pushback_then_retry():
    from services.common.upstream import SERVICE_RETRY

    async def main():
        pushed = Replica("pushed", failures=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                         trailers=(("grpc-retry-pushback-ms", "300"),))
        servers, address = await serve(pushed)
        up = Upstream("generator", address, generator_pb2_grpc.GeneratorServiceStub)
        assert "RESOURCE_EXHAUSTED" in SERVICE_RETRY.status_codes
        try:
            started = time.monotonic()
            info = await up.unary("GetModelInfo", REQUEST, call())
            return info, time.monotonic() - started, pushed
        finally:
            await up.close()
            for s in servers:
                await s.stop(0)
    info, waited, pushed = asyncio.run(main())
    # One refusal, then the retry gRPC scheduled after exactly the server's pushback (not its own backoff).
    assert info.name == "pushed" and len(pushed.calls) == 2 and waited >= 0.3


def test_retries_stop_at_the_callers_deadline_which_travels_on_the_wire():
    async def main():
        always = Replica("always", failures=10**6, trailers=(("retry-after-ms", "300"),))
        servers, addresses = await serve(always)
        up = Upstream("generator", addresses, generator_pb2_grpc.GeneratorServiceStub, retry=FAST)
        slow = Upstream("generator", addresses, generator_pb2_grpc.GeneratorServiceStub,
                        retry=sdk.RetryPolicy(max_attempts=5, initial_backoff=5.0, max_backoff=5.0))
        started = time.monotonic()
        try:
            with pytest.raises(ServiceError) as err:
                await up.unary("GetModelInfo", REQUEST, call(timeout=5.0))
            quick = len(always.calls)
            with pytest.raises(ServiceError) as late:
                await slow.unary("GetModelInfo", REQUEST, call(timeout=0.5))
        finally:
            await up.close()
            await slow.close()
            for s in servers:
                await s.stop(0)
        return err.value, late.value, time.monotonic() - started, quick, always
    error, late, took, quick, always = asyncio.run(main())
    assert quick == 5  # gRPC's retry policy: at most 5 tries, then the status
    assert error.code == grpc.StatusCode.UNAVAILABLE and "generator" in error.message and error.retry_after
    # The caller's deadline bounds the retries and reaches the server: every try saw at most what was left.
    assert late.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert took < 5.0 and len(always.calls) < quick + 5
    assert all(left is not None and left <= 5.0 + SLACK for _, _, left in always.calls[:quick]), always.calls[:quick]
    assert all(left is not None and left <= 0.5 + SLACK for _, _, left in always.calls[quick:]), always.calls[quick:]


def test_call_context_timeouts():
    assert call(default=7.0).timeout("x") == 7.0
    assert 0.4 < call(timeout=0.5).timeout("x") <= 0.5
    with pytest.raises(ServiceError) as err:
        call(timeout=-1).timeout("the generator call")
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "generator" in err.value.message


def test_address_forms_give_one_balanced_target_per_channel():
    assert targets("127.0.0.1:1") == ["127.0.0.1:1"]
    assert targets("127.0.0.1:1, 127.0.0.2:2") == ["ipv4:127.0.0.1:1,127.0.0.2:2"]
    assert targets("[::1]:1,[::1]:2") == ["ipv6:[::1]:1,[::1]:2"]
    assert targets("ipv4:10.0.0.1:1,10.0.0.2:1") == ["ipv4:10.0.0.1:1,10.0.0.2:1"]
    assert targets("dns:///generator:50052") == ["dns:///generator:50052"]
    # Host names cannot share a static target: one channel each, picked in turn.
    assert targets("gen-a:1,gen-b:1") == ["gen-a:1", "gen-b:1"]
    assert targets("127.0.0.1:1,[::1]:2") == ["127.0.0.1:1", "[::1]:2"]
    with pytest.raises(ValueError, match="no address"):
        targets(" , ")


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
