"""The shared runtime in-process: health gating on load, rich errors, auth, graceful shutdown, limits."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interfacegan.v1 import generator_pb2, generator_pb2_grpc
from services.common import errors, runtime
from services.common.settings import ServerSettings


class SlowModels(generator_pb2_grpc.GeneratorServiceServicer):
    """A minimal service on the real runtime: load waits for a signal, ListModels sleeps, GetModelInfo fails."""

    service_names = ("interfacegan.v1.GeneratorService",)

    def __init__(self):
        self.loaded = asyncio.Event()
        self.call_started = asyncio.Event()
        self.closed = False

    def register(self, server):
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(self, server)

    async def load(self):
        await self.loaded.wait()

    async def close(self):
        self.closed = True

    async def ListModels(self, request, context):
        self.call_started.set()
        await asyncio.sleep(1.5)
        return generator_pb2.ListModelsResponse(models=[generator_pb2.ModelInfo(name="finished")])

    async def GetModelInfo(self, request, context):
        if request.model.name == "busy":
            raise errors.resource_exhausted("queue full (64 waiting); retry later", retry_after=0.25)
        raise errors.invalid_argument("model.name", f"unknown model {request.model.name!r}; known: none")


@dataclasses.dataclass
class _Settings(ServerSettings):
    service_name = "test"


async def _start(service, **overrides):
    settings = _Settings.load([], **{"grace_seconds": 5.0, "drain_seconds": 0.3, **overrides})
    stop = asyncio.Event()
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(runtime.serve(service, settings, stop=stop, on_ready=ready.set_result))
    port = await asyncio.wait_for(ready, 10)
    return task, stop, f"127.0.0.1:{port}"


def _run(scenario):
    """Runs an async scenario; a failing assertion still stops the server (no hanging test)."""
    async def guarded():
        holder = {}

        async def start(service, **overrides):
            holder["server"] = await _start(service, **overrides)
            return holder["server"]
        try:
            await asyncio.wait_for(scenario(start), 60)
        finally:
            if "server" in holder:
                task, stop, _ = holder["server"]
                stop.set()
                await asyncio.wait_for(task, 20)
    asyncio.run(guarded())


async def _health(channel, service="") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return reply.status


def test_not_serving_until_loaded_then_graceful_shutdown_finishes_in_flight_call():
    async def scenario(_start):
        service = SlowModels()
        task, stop, address = await _start(service)
        async with grpc.aio.insecure_channel(address) as channel:
            assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _health(channel, "interfacegan.v1.GeneratorService") == health_pb2.HealthCheckResponse.NOT_SERVING
            service.loaded.set()
            for _ in range(50):
                if await _health(channel) == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.02)
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING

            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            in_flight = asyncio.ensure_future(stub.ListModels(generator_pb2.ListModelsRequest(), timeout=10))
            await service.call_started.wait()
            stop.set()  # what SIGTERM does
            await asyncio.sleep(0.1)
            assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            reply = await in_flight
            assert reply.models[0].name == "finished"
        await asyncio.wait_for(task, 10)
        assert service.closed

    _run(scenario)


def test_service_errors_carry_field_and_retry_details():
    async def scenario(_start):
        service = SlowModels()
        service.loaded.set()
        task, stop, address = await _start(service)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetModelInfo(generator_pb2.GetModelInfoRequest(model={"name": "nope"}), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown model 'nope'" in err.value.details()
            assert errors.status_details(err.value)["fields"] == ["model.name"]

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetModelInfo(generator_pb2.GetModelInfoRequest(model={"name": "busy"}), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert errors.status_details(err.value)["retry_after"] == 0.25
            assert ("retry-after-ms", "250") in tuple(err.value.trailing_metadata())
            assert ("grpc-retry-pushback-ms", "250") in tuple(err.value.trailing_metadata())

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SampleLatents(generator_pb2.SampleLatentsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING  # still up
        stop.set()
        await task

    _run(scenario)


def test_bearer_token_required_except_for_health():
    async def scenario(_start):
        service = SlowModels()
        service.loaded.set()
        task, stop, address = await _start(service, auth_token="t0ken")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListModels(generator_pb2.ListModelsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListModels(generator_pb2.ListModelsRequest(), timeout=5,
                                      metadata=(("authorization", "Bearer wrong"),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.ListModels(generator_pb2.ListModelsRequest(), timeout=5,
                                          metadata=(("authorization", "Bearer t0ken"),))
            assert reply.models
            assert await _health(channel) in (health_pb2.HealthCheckResponse.SERVING,
                                              health_pb2.HealthCheckResponse.NOT_SERVING)
        stop.set()
        await task

    _run(scenario)


def test_oversize_message_is_refused_and_server_stays_up():
    async def scenario(_start):
        service = SlowModels()
        service.loaded.set()
        task, stop, address = await _start(service, max_message_mb=1)
        async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            big = generator_pb2.GetModelInfoRequest(model={"name": "x" * (2 << 20)})
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetModelInfo(big, timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        stop.set()
        await task

    _run(scenario)
