"""Inversion service settings."""

from __future__ import annotations

import dataclasses

import grpc

from interfacegan.v1 import inversion_pb2_grpc
from services.common import runtime
from services.common.settings import ServerSettings, setting


@dataclasses.dataclass
class Settings(ServerSettings):
    """Inversion service settings."""

    service_name = "inversion"


class InversionService(inversion_pb2_grpc.InversionServiceServicer):
    """Skeleton: RPCs answer UNIMPLEMENTED until the service's issue lands."""

    service_names = ("interfacegan.v1.InversionService",)

    def __init__(self, settings: Settings):
        self.settings = settings

    def register(self, server: grpc.aio.Server) -> None:
        inversion_pb2_grpc.add_InversionServiceServicer_to_server(self, server)

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass
