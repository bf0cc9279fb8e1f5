"""Client of the generator and scorer services: sample, synthesize (raw pixels) and score, with retries."""

from __future__ import annotations

import asyncio
import logging
import random

import grpc
import numpy as np

from interfacegan.v1 import common_pb2, generator_pb2, generator_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from services.common import channels, tensors
from services.common.errors import ServiceError, status_details, unavailable
from services.common.settings import ServerSettings

log = logging.getLogger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Agreed with the servers' keepalive policy (runtime.server_options): at most one ping per 20 s.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


class Downstream:
    """Channels to the generator and the scorer; every call retries UNAVAILABLE / RESOURCE_EXHAUSTED.

    Args:
        generator_address / scorer_address: host:port.
        auth_token: bearer token sent downstream (the cluster shares one), empty for none.
        max_message_bytes: gRPC message limit of the channels.
        attempts: tries per call before the error is raised as UNAVAILABLE.
        settings: the calling service's settings; its TLS files (--tls-ca, client certificate) secure the
            channels (services/common/channels.py).
    """

    def __init__(self, generator_address: str, scorer_address: str, *, auth_token: str = "",
                 max_message_bytes: int = 16 << 20, attempts: int = 6, call_timeout: float = 300.0,
                 settings: ServerSettings | None = None):
        self.generator_address = generator_address
        self.scorer_address = scorer_address
        self.metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else ()
        self.options = channel_options(max_message_bytes)
        self.max_message_bytes = max_message_bytes
        self.settings = settings
        self.attempts = attempts
        self.call_timeout = call_timeout
        self._generator: generator_pb2_grpc.GeneratorServiceStub | None = None
        self._scorer: scorer_pb2_grpc.ScorerServiceStub | None = None
        self._channels: list[grpc.aio.Channel] = []

    @property
    def generator(self) -> generator_pb2_grpc.GeneratorServiceStub:
        if self._generator is None:
            channel = self._open(self.generator_address)
            self._channels.append(channel)
            self._generator = generator_pb2_grpc.GeneratorServiceStub(channel)
        return self._generator

    @property
    def scorer(self) -> scorer_pb2_grpc.ScorerServiceStub:
        if self._scorer is None:
            channel = self._open(self.scorer_address)
            self._channels.append(channel)
            self._scorer = scorer_pb2_grpc.ScorerServiceStub(channel)
        return self._scorer

    def _open(self, address: str) -> grpc.aio.Channel:
        return channels.open_channel(address, self.settings, token="", max_message_bytes=self.max_message_bytes)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._generator = self._scorer = None

    async def _retry(self, what: str, call):
        delay = 0.2
        for attempt in range(1, self.attempts + 1):
            try:
                return await call()
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE or attempt == self.attempts:
                    raise _as_service_error(what, e) from None
                wait = status_details(e).get("retry_after") or delay
                log.warning("%s: %s, retrying in %.2f s (attempt %d/%d)", what, e.code().name, wait, attempt,
                            self.attempts)
                await asyncio.sleep(wait * (1 + 0.2 * random.random()))
                delay = min(delay * 2, 5.0)

    # -- generator ---------------------------------------------------------------------------------------

    async def model_info(self, name: str = "", version: str = "") -> generator_pb2.ModelInfo:
        request = generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name=name, version=version))
        return await self._retry("generator GetModelInfo", lambda: self.generator.GetModelInfo(
            request, metadata=self.metadata, timeout=30))

    async def sample(self, model: common_pb2.ModelRef, space: int, seed: int, count: int,
                     request_id: str = "") -> np.ndarray:
        request = generator_pb2.SampleLatentsRequest(request_id=request_id, model=model, space=space,
                                                     count=count, seed=seed)
        reply = await self._retry("generator SampleLatents", lambda: self.generator.SampleLatents(
            request, metadata=self.metadata, timeout=self.call_timeout))
        return tensors.to_numpy(reply.codes.codes, "codes")

    async def synthesize(self, model: common_pb2.ModelRef, space: int, codes: np.ndarray,
                         request_id: str = "") -> list[common_pb2.Image]:
        """Raw RGB images (no PNG cost), in order."""
        request = generator_pb2.SynthesizeRequest(request_id=request_id, model=model,
                                                  codes=tensors.latents_from_numpy(space, codes),
                                                  format=common_pb2.IMAGE_FORMAT_RAW)

        async def call():
            images: list[common_pb2.Image] = []
            async for reply in self.generator.Synthesize(request, metadata=self.metadata, timeout=self.call_timeout):
                if reply.offset != len(images):
                    raise ServiceError(grpc.StatusCode.INTERNAL, f"generator streamed offset {reply.offset}, "
                                                                 f"expected {len(images)}")
                images.extend(reply.images)
            return images

        images = await self._retry("generator Synthesize", call)
        if len(images) != len(codes):
            raise unavailable(f"generator returned {len(images)} images for {len(codes)} codes")
        return images

    # -- scorer ------------------------------------------------------------------------------------------

    async def scorer_info(self) -> scorer_pb2.ScorerInfo:
        return await self._retry("scorer GetInfo", lambda: self.scorer.GetInfo(
            scorer_pb2.GetScorerInfoRequest(), metadata=self.metadata, timeout=30))

    async def score(self, images: list[common_pb2.Image], attributes: list[str],
                    request_id: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(values (n, A) float32, valid (n, A) bool), columns in `attributes` order."""
        request = scorer_pb2.ScoreRequest(request_id=request_id, images=images, attributes=attributes)
        n, a = len(images), len(attributes)

        async def call():
            values = np.zeros((n, a), np.float32)
            valid = np.zeros((n, a), bool)
            seen = 0
            async for reply in self.scorer.Score(request, metadata=self.metadata, timeout=self.call_timeout):
                for i, result in enumerate(reply.results, start=reply.offset):
                    by_name = {s.attribute: s for s in result.scores}
                    for j, name in enumerate(attributes):
                        s = by_name.get(name)
                        if s is not None and s.valid and np.isfinite(s.value):
                            values[i, j], valid[i, j] = s.value, True
                seen = max(seen, reply.offset + len(reply.results))
            if seen != n:
                raise unavailable(f"scorer returned {seen} results for {n} images")
            return values, valid

        return await self._retry("scorer Score", call)

    async def generate_and_score(self, model: common_pb2.ModelRef, space: int, codes: np.ndarray,
                                 attributes: list[str], request_id: str = "") -> tuple[np.ndarray, np.ndarray]:
        images = await self.synthesize(model, space, codes, request_id)
        return await self.score(images, attributes, request_id)


def _as_service_error(what: str, e: grpc.aio.AioRpcError) -> ServiceError:
    code = e.code()
    if code in RETRYABLE or code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return unavailable(f"{what} failed: {code.name}: {e.details()}", retry_after=5.0)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
        return ServiceError(code, f"{what}: {e.details()}")
    return ServiceError(grpc.StatusCode.INTERNAL if code == grpc.StatusCode.UNKNOWN else code,
                        f"{what} failed: {code.name}: {e.details()}")
