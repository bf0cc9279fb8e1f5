"""Editor gateway settings."""

from __future__ import annotations

import dataclasses

import grpc

from interfacegan.v1 import editor_pb2_grpc
from services.common import runtime
from services.common.settings import ServerSettings, setting


@dataclasses.dataclass
class Settings(ServerSettings):
    """Editor gateway settings."""

    service_name = "editor"


class EditorService(editor_pb2_grpc.EditorServiceServicer):
    """Skeleton: RPCs answer UNIMPLEMENTED until the service's issue lands."""

    service_names = ("interfacegan.v1.EditorService",)

    def __init__(self, settings: Settings):
        self.settings = settings

    def register(self, server: grpc.aio.Server) -> None:
        editor_pb2_grpc.add_EditorServiceServicer_to_server(self, server)

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass
