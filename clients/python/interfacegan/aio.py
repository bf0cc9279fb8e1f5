"""asyncio client, the same API as `interfacegan.Client` with coroutines and async iterators.

    from interfacegan.aio import AsyncClient
    async with AsyncClient("127.0.0.1:50051") as client:
        result = await client.edit(seed=7, edits=["age:-3:3:7"])
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Callable, Iterable, Sequence

import grpc
import numpy as np

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc

from . import _requests as rq
from . import channel as ch
from . import codec
from .client import _one_source, merge_analysis
from .edits import (EditFrame, EditLike, EditResult, Output, Source, build_edit_request, collect, edit_specs,
                    new_request_id)

ApiError = rq.ApiError


class AsyncClient:
    """asyncio connection to the editor gateway; see `interfacegan.Client` for the arguments."""

    def __init__(self, address: str = "127.0.0.1:50051", *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | str | Path | None = None, config: ch.ChannelConfig | None = None,
                 boundary_address: str | None = None, timeout: float = 300.0, default_model: str = "",
                 priority: str = ""):
        self.config = config or ch.ChannelConfig(tls=tls, root_certificates=root_certificates)
        self.address = address
        self.token = token
        self.timeout = timeout
        self._channel = ch.aio_channel(address, self.config)
        self._boundary_channel = ch.aio_channel(boundary_address, self.config) if boundary_address else None
        self.editor = editor_pb2_grpc.EditorServiceStub(self._channel)
        self.boundary = boundary_pb2_grpc.BoundaryServiceStub(self._boundary_channel or self._channel)
        self._default_model = default_model
        self.priority = rq.check_priority(priority)

    async def close(self) -> None:
        await self._channel.close()
        if self._boundary_channel is not None:
            await self._boundary_channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        import asyncio
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    def _md(self, request_id: str = "", priority: str | None = None) -> tuple[tuple[str, str], ...]:
        return rq.metadata(self.token, request_id, self.priority if priority is None else rq.check_priority(priority))

    async def _unary(self, method: str, call, request, timeout: float | None = None, request_id: str = ""):
        try:
            return await call(request, timeout=timeout or self.timeout, metadata=self._md(request_id))
        except grpc.RpcError as e:
            raise ApiError.of(e, method, request_id) from None

    async def _stream(self, method: str, call, request, timeout: float | None, request_id: str = "",
                      priority: str | None = None):
        try:
            async for reply in call(request, timeout=timeout, metadata=self._md(request_id, priority)):
                yield reply
        except grpc.RpcError as e:
            raise ApiError.of(e, method, request_id) from None

    # -- editing -----------------------------------------------------------------------------------------

    async def edit(self, source: Source | None = None, edits: Iterable[EditLike] | EditLike = (), *,
                   seed: int | None = None, code: np.ndarray | None = None, photo=None, output: Output = "numpy",
                   timeout: float | None = None, request_id: str | None = None, priority: str | None = None,
                   on_frame: Callable[[EditFrame], None] | None = None, **options) -> EditResult:
        """Edits one face (every chosen face of a photo); the same options as `Client.edit`."""
        specs = edit_specs(edits)
        request = build_edit_request(_one_source(source, seed, code, photo), specs, request_id=request_id,
                                     **options)
        frames = []
        async for frame in self._send(request, output, timeout, priority):
            if on_frame is not None:
                on_frame(frame)
            frames.append(frame)
        return collect(specs, frames, request)

    async def edit_stream(self, source: Source | None = None, edits: Iterable[EditLike] | EditLike = (), *,
                          seed: int | None = None, code: np.ndarray | None = None, photo=None,
                          output: Output = "numpy", timeout: float | None = None, request_id: str | None = None,
                          priority: str | None = None, **options) -> AsyncIterator[EditFrame]:
        """Yields each frame as the server streams it; the same options as `Client.edit`."""
        request = build_edit_request(_one_source(source, seed, code, photo), edits, request_id=request_id, **options)
        async for frame in self._send(request, output, timeout, priority):
            yield frame

    async def _send(self, request: editor_pb2.EditRequest, output: Output, timeout: float | None,
                    priority: str | None) -> AsyncIterator[EditFrame]:
        async for message in self._stream("Edit", self.editor.Edit, request, timeout or self.timeout,
                                          request.request_id, priority):
            yield EditFrame.of(message, output)

    async def catalog(self, timeout: float | None = None) -> editor_pb2.Catalog:
        return await self._unary("GetCatalog", self.editor.GetCatalog, editor_pb2.GetCatalogRequest(), timeout or 30)

    async def default_model(self) -> str:
        if not self._default_model:
            models = (await self.catalog()).models
            if not models:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "the server lists no generator model")
            self._default_model = models[0].name
        return self._default_model

    # -- boundaries --------------------------------------------------------------------------------------

    async def ref(self, attribute: str, *, model: str = "", space: str | int | None = "Z",
                  version: int = 0) -> common_pb2.BoundaryRef:
        r = rq.parse_ref(attribute, model=model or await self.default_model(), space=space)
        if version:
            r.version = version
        return r

    async def list_boundaries(self, *, model: str = "", attribute: str = "", space: str | None = None,
                              all_versions: bool = False) -> list[boundary_pb2.BoundaryInfo]:
        reply = await self._unary("ListBoundaries", self.boundary.ListBoundaries, boundary_pb2.ListBoundariesRequest(
            model=model, attribute=attribute, space=codec.space_of(space), all_versions=all_versions))
        return list(reply.boundaries)

    async def get_boundary(self, attribute: str, *, model: str = "", space: str = "Z",
                           version: int = 0) -> tuple[boundary_pb2.BoundaryInfo, np.ndarray]:
        ref = await self.ref(attribute, model=model, space=space, version=version)
        reply = await self._unary("GetBoundary", self.boundary.GetBoundary, boundary_pb2.GetBoundaryRequest(ref=ref))
        return reply.info, codec.array(reply.normal)

    def train_boundaries(self, attributes: Sequence[str], *, num_samples: int = 0, chosen_ratio: float = 0.0,
                         train_split: float = 0.0, seed: int = 0, svm_c: float = 0.0, reuse_dataset: bool = True,
                         solver: str = "", model: str = "", space: str | None = "Z", request_id: str | None = None,
                         timeout: float | None = None) -> AsyncIterator[boundary_pb2.JobUpdate]:
        """Async iterator of the training job's JobUpdates; see `Client.train_boundaries`."""
        request = rq.train_request(attributes, model=model, space=space, num_samples=num_samples,
                                   chosen_ratio=chosen_ratio, train_split=train_split, seed=seed, svm_c=svm_c,
                                   reuse_dataset=reuse_dataset, solver=solver, request_id=request_id)
        return self._stream("TrainBoundaries", self.boundary.TrainBoundaries, request, timeout, request.request_id)

    def watch_job(self, job_id: str, timeout: float | None = None) -> AsyncIterator[boundary_pb2.JobUpdate]:
        return self._stream("WatchJob", self.boundary.WatchJob, boundary_pb2.WatchJobRequest(job_id=job_id), timeout)

    async def cancel_job(self, job_id: str) -> boundary_pb2.JobUpdate:
        return await self._unary("CancelJob", self.boundary.CancelJob, boundary_pb2.CancelJobRequest(job_id=job_id))

    async def condition_boundary(self, attribute: str, hold: Sequence[str], *, model: str = "",
                                 space: str = "Z") -> boundary_pb2.BoundaryInfo:
        rid = new_request_id()
        request = boundary_pb2.ConditionBoundaryRequest(
            request_id=rid, target=await self.ref(attribute, model=model, space=space),
            conditions=[await self.ref(h, model=model, space=space) for h in hold])
        return (await self._unary("ConditionBoundary", self.boundary.ConditionBoundary, request, request_id=rid)).info

    async def import_boundary(self, npy: bytes | str | Path, *, file_name: str | None = None, model: str = "",
                              attribute: str = "", space: str | None = None) -> boundary_pb2.BoundaryInfo:
        request = rq.import_request(npy, file_name=file_name, model=model, attribute=attribute, space=space)
        return (await self._unary("ImportBoundary", self.boundary.ImportBoundary, request)).info

    async def export_boundary(self, attribute: str, *, model: str = "", space: str = "Z",
                              version: int = 0) -> tuple[str, bytes]:
        ref = await self.ref(attribute, model=model, space=space, version=version)
        reply = await self._unary("ExportBoundary", self.boundary.ExportBoundary,
                                  boundary_pb2.ExportBoundaryRequest(ref=ref))
        return reply.file_name, reply.npy

    async def analyze_boundaries(self, attributes: Sequence[str], *, model: str = "", space: str = "Z",
                                 rescore_samples: int = 0, rescore_distance: float = 0.0, seed: int = 0,
                                 rescore_attributes: Sequence[str] = (), timeout: float | None = None,
                                 on_progress: Callable[[common_pb2.Progress], None] | None = None
                                 ) -> boundary_pb2.AnalyzeBoundariesResponse:
        rid = new_request_id()
        request = boundary_pb2.AnalyzeBoundariesRequest(
            request_id=rid, boundaries=[await self.ref(a, model=model, space=space) for a in attributes],
            rescore_samples=rescore_samples, rescore_distance=rescore_distance, seed=seed,
            rescore_attributes=list(rescore_attributes))
        merged = boundary_pb2.AnalyzeBoundariesResponse()
        async for reply in self._stream("AnalyzeBoundaries", self.boundary.AnalyzeBoundaries, request, timeout, rid):
            if on_progress is not None and reply.HasField("progress"):
                on_progress(reply.progress)
            merge_analysis(merged, reply)
        return merged
