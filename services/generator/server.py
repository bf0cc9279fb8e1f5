"""Generator service settings."""

from __future__ import annotations

import dataclasses

import grpc

from interfacegan.v1 import generator_pb2_grpc
from services.common import runtime
from services.common.settings import ServerSettings, setting


@dataclasses.dataclass
class Settings(ServerSettings):
    """Generator service settings."""

    service_name = "generator"


class GeneratorService(generator_pb2_grpc.GeneratorServiceServicer):
    """Skeleton: RPCs answer UNIMPLEMENTED until the service's issue lands."""

    service_names = ("interfacegan.v1.GeneratorService",)

    def __init__(self, settings: Settings):
        self.settings = settings

    def register(self, server: grpc.aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(self, server)

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass
