"""The runtime's liveness port answers while the concurrent-RPC limit refuses calls; reflection v1 and v1alpha."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from interfacegan.v1 import generator_pb2, generator_pb2_grpc
from services.cluster import free_port
from services.common import runtime
from services.common.settings import ServerSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Held(generator_pb2_grpc.GeneratorServiceServicer):
    """A service on the real runtime whose ListModels calls stay in flight until released."""

    service_names = ("interfacegan.v1.GeneratorService",)

    def __init__(self, fail_load: bool = False):
        self.fail_load = fail_load
        self.release = asyncio.Event()
        self.in_flight = 0

    def register(self, server):
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(self, server)

    async def load(self):
        if self.fail_load:
            raise RuntimeError("no model file")

    async def close(self):
        pass

    async def ListModels(self, request, context):
        self.in_flight += 1
        await self.release.wait()
        return generator_pb2.ListModelsResponse()


@dataclasses.dataclass
class _Settings(ServerSettings):
    service_name = "test"


def _serve(service, scenario, **overrides):
    """Runs `scenario(address, health_address)` against `service` served by runtime.serve, then stops it."""
    async def main():
        health_port = free_port()
        settings = _Settings.load([], **{"drain_seconds": 0.0, "grace_seconds": 1.0, "health_port": health_port,
                                         **overrides})
        stop = asyncio.Event()
        ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(runtime.serve(service, settings, stop=stop, on_ready=ready.set_result))
        port = await asyncio.wait_for(ready, 10)
        try:
            await asyncio.wait_for(scenario(f"127.0.0.1:{port}", f"127.0.0.1:{health_port}"), 60)
        finally:
            service.release.set()
            stop.set()
            await asyncio.wait_for(task, 20)
    asyncio.run(main())


async def _check(address: str) -> int | grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
            return reply.status
        except grpc.aio.AioRpcError as e:
            return e.code()


async def _eventually(address: str, expected) -> None:
    for _ in range(100):
        if await _check(address) == expected:
            return
        await asyncio.sleep(0.05)
    assert await _check(address) == expected


def test_liveness_answers_while_the_server_is_saturated():
    service = Held()

    async def scenario(address, health_address):
        await _eventually(address, SERVING)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)
            held = [asyncio.ensure_future(stub.ListModels(generator_pb2.ListModelsRequest(), timeout=30))
                    for _ in range(2)]
            for _ in range(100):
                if service.in_flight == 2:
                    break
                await asyncio.sleep(0.05)
            assert service.in_flight == 2
            # Past the limit: the serving port refuses even health checks (readiness fails, callers move away)...
            assert await _check(address) == grpc.StatusCode.RESOURCE_EXHAUSTED
            # ...while the liveness port still says the process is alive.
            for _ in range(5):
                assert await _check(health_address) == SERVING
            service.release.set()
            await asyncio.gather(*held)
        await _eventually(address, SERVING)

    _serve(service, scenario, max_concurrent_rpcs=2)


def test_liveness_asks_for_a_restart_when_loading_failed():
    service = Held(fail_load=True)

    async def scenario(address, health_address):
        await _eventually(health_address, NOT_SERVING)
        assert await _check(address) == NOT_SERVING

    _serve(service, scenario)


async def _reflect(address: str, version: str, request: reflection_pb2.ServerReflectionRequest):
    """One reflection exchange over grpc.reflection.`version` (the two versions share the wire format)."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        replies = [reply async for reply in call(iter([request]), timeout=5)]
    (reply,) = replies
    return reply


def test_reflection_v1_and_v1alpha():
    service = Held()

    async def scenario(address, _):
        for version in ("v1", "v1alpha"):
            reply = await _reflect(address, version, reflection_pb2.ServerReflectionRequest(list_services=""))
            names = {s.name for s in reply.list_services_response.service}
            assert {"interfacegan.v1.GeneratorService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                    "grpc.reflection.v1alpha.ServerReflection"} <= names, (version, names)
            # The v1 service's own file is described too (grpcurl describes what it lists).
            reply = await _reflect(address, version, reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection"))
            assert not reply.HasField("error_response"), reply.error_response
            files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                     for b in reply.file_descriptor_response.file_descriptor_proto]
            assert files[0].package == "grpc.reflection.v1" and files[0].service[0].name == "ServerReflection"
            reply = await _reflect(address, version, reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="interfacegan.v1.GeneratorService"))
            assert not reply.HasField("error_response"), reply.error_response

    _serve(service, scenario)


def test_logged_settings_hide_url_credentials():
    shown = runtime.redact_urls({"redis_url": "redis://:s3cret@redis:6379/0", "port": 1,
                                 "generator_address": "dns:///generator:50052"})
    assert shown == {"redis_url": "redis://***@redis:6379/0", "port": 1, "generator_address": "dns:///generator:50052"}
