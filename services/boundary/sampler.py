"""The boundary service's calls to the generator and the scorer: sample, synthesize (raw pixels) and score."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np

from interfacegan import codec
from interfacegan.v1 import common_pb2, generator_pb2, generator_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from services.common import tensors
from services.common.batching import LANES
from services.common.errors import ServiceError, unavailable
from services.common.settings import ServerSettings
from services.common.upstream import CallContext, Upstream


BULK = LANES[1]


class Sampler:
    """Codes, images and scores from the generator and scorer replicas (services/common/upstream.py).

    Every method takes the CallContext of the incoming call whose deadline it carries on; without one (a
    training job, which outlives the call that started it) each call may take `call_timeout` seconds.

    Args:
        generator_address / scorer_address: replicas (host:port, a comma-separated list, dns:///name:port).
        settings: the boundary service's settings (auth token, TLS files, message limit).
        call_timeout: seconds one call may take when no caller deadline applies.
    """

    def __init__(self, generator_address: str, scorer_address: str, settings: ServerSettings | None = None, *,
                 call_timeout: float = 300.0):
        self.addresses = {"generator": generator_address, "scorer": scorer_address}
        self.settings = settings
        self.max_message_bytes = settings.max_message_bytes if settings else 16 << 20
        self.call_timeout = call_timeout
        self._upstreams: dict[str, Upstream] = {}

    def _upstream(self, name: str, stub_cls) -> Upstream:
        # Opened at first use, inside the server's event loop (aio channels belong to the loop they are made on).
        if name not in self._upstreams:
            self._upstreams[name] = Upstream(name, self.addresses[name], stub_cls, self.settings)
        return self._upstreams[name]

    @property
    def generator(self) -> Upstream:
        return self._upstream("generator", generator_pb2_grpc.GeneratorServiceStub)

    @property
    def scorer(self) -> Upstream:
        return self._upstream("scorer", scorer_pb2_grpc.ScorerServiceStub)

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.close()
        self._upstreams.clear()

    def _call(self, call: CallContext | None, request_id: str = "") -> CallContext:
        # Sampling is bulk work (training, analysis): it yields to interactive edits unless its caller named a
        # lane (the ifgan-priority metadata of the incoming call).
        if call is None:
            return CallContext(request_id, None, self.call_timeout, BULK)
        return call if call.lane else dataclasses.replace(call, lane=BULK)

    async def depth(self, per_replica: int) -> int:
        """Blocks to keep in flight: `per_replica` for each replica of the generator or the scorer, whichever
        has more, so every replica has work (gRPC balances the calls over them round robin)."""
        return per_replica * max(await self.generator.replicas(), await self.scorer.replicas())

    # -- generator ---------------------------------------------------------------------------------------

    async def model_info(self, name: str = "", version: str = "", call: CallContext | None = None
                         ) -> generator_pb2.ModelInfo:
        request = generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name=name, version=version))
        return await self.generator.unary("GetModelInfo", request, self._call(call))

    async def sample(self, model: common_pb2.ModelRef, space: int, seed: int, count: int,
                     request_id: str = "", call: CallContext | None = None) -> np.ndarray:
        request = generator_pb2.SampleLatentsRequest(request_id=request_id, model=model, space=space,
                                                     count=count, seed=seed)
        reply = await self.generator.unary("SampleLatents", request, self._call(call, request_id))
        return tensors.to_numpy(reply.codes.codes, "codes")

    async def synthesize(self, model: common_pb2.ModelRef, space: int, codes: np.ndarray,
                         request_id: str = "", call: CallContext | None = None) -> list[common_pb2.Image]:
        """Raw RGB images (no PNG cost), in order."""
        request = generator_pb2.SynthesizeRequest(request_id=request_id, model=model,
                                                  codes=codec.latents(codes, space),
                                                  format=common_pb2.IMAGE_FORMAT_RAW)
        images: list[common_pb2.Image] = []
        async for reply in self.generator.stream("Synthesize", request, self._call(call, request_id)):
            if reply.offset != len(images):
                raise ServiceError(grpc.StatusCode.INTERNAL, f"generator streamed offset {reply.offset}, "
                                                             f"expected {len(images)}")
            images.extend(reply.images)
        if len(images) != len(codes):
            raise unavailable(f"generator returned {len(images)} images for {len(codes)} codes")
        return images

    # -- scorer ------------------------------------------------------------------------------------------

    async def scorer_info(self, call: CallContext | None = None) -> scorer_pb2.ScorerInfo:
        return await self.scorer.unary("GetInfo", scorer_pb2.GetScorerInfoRequest(), self._call(call))

    async def score(self, images: list[common_pb2.Image], attributes: list[str], request_id: str = "",
                    call: CallContext | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(values (n, A) float32, valid (n, A) bool), columns in `attributes` order."""
        request = scorer_pb2.ScoreRequest(request_id=request_id, images=images, attributes=attributes)
        n, a = len(images), len(attributes)
        values = np.zeros((n, a), np.float32)
        valid = np.zeros((n, a), bool)
        seen = 0
        async for reply in self.scorer.stream("Score", request, self._call(call, request_id)):
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

    async def generate_and_score(self, model: common_pb2.ModelRef, space: int, codes: np.ndarray,
                                 attributes: list[str], request_id: str = "", call: CallContext | None = None
                                 ) -> tuple[np.ndarray, np.ndarray]:
        images = await self.synthesize(model, space, codes, request_id, call)
        return await self.score(images, attributes, request_id, call)
