"""Scorer service settings."""

from __future__ import annotations

import dataclasses

import grpc

from interfacegan.v1 import scorer_pb2_grpc
from services.common import runtime
from services.common.settings import ServerSettings, setting


@dataclasses.dataclass
class Settings(ServerSettings):
    """Scorer service settings."""

    service_name = "scorer"


class ScorerService(scorer_pb2_grpc.ScorerServiceServicer):
    """Skeleton: RPCs answer UNIMPLEMENTED until the service's issue lands."""

    service_names = ("interfacegan.v1.ScorerService",)

    def __init__(self, settings: Settings):
        self.settings = settings

    def register(self, server: grpc.aio.Server) -> None:
        scorer_pb2_grpc.add_ScorerServiceServicer_to_server(self, server)

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass
