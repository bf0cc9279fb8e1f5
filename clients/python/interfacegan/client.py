"""Synchronous client: edit faces, list the catalog, train and manage boundaries.

    from interfacegan import Client
    with Client("127.0.0.1:50051") as client:
        result = client.edit(seed=7, edits=["age:-3:3:7", "gender:-2:2:5:hold=age"], rescore=True)
        result.grid(score="age").save("grid.png")
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import grpc
import numpy as np

from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc)

from . import _requests as rq
from . import channel as ch
from . import codec
from .edits import (EditFrame, EditLike, EditResult, Output, Source, build_edit_request, collect, edit_specs,
                    new_request_id)

T = TypeVar("T")
ApiError = rq.ApiError


def _api(method: str):
    """Turns grpc.RpcError raised by the wrapped call (or while iterating its stream) into ApiError."""

    def wrap(fn):
        @functools.wraps(fn)
        def call(self, *args, **kwargs):
            try:
                result = fn(self, *args, **kwargs)
            except grpc.RpcError as e:
                raise ApiError.of(e, method) from None
            if isinstance(result, Iterator):
                return _guard(result, method)
            return result
        return call
    return wrap


def _guard(stream: Iterator[T], method: str) -> Iterator[T]:
    try:
        yield from stream
    except grpc.RpcError as e:
        raise ApiError.of(e, method) from None


class Client:
    """A connection to the editor gateway (which also forwards BoundaryService calls).

    Args:
        address: host:port or a gRPC target such as dns:///editor.example:50051.
        token: Bearer token, when the servers require one.
        tls: Connect with TLS (system roots, or `root_certificates`).
        root_certificates: PEM bytes or path of the CA that signed the server certificate.
        config: Full channel settings (overrides tls / root_certificates).
        boundary_address: Talk to a BoundaryService at this address instead of through the editor.
        timeout: Default deadline in seconds of unary calls and of one Edit; streams of training jobs have none.
        default_model: Model used for boundary calls when none is given; the server's default when empty.
        priority: Priority lane of every call ("interactive" or "bulk", sent as the `ifgan-priority` metadata);
            empty: each RPC's default (Edit interactive; training and analysis sample in the bulk lane).
    """

    def __init__(self, address: str = "127.0.0.1:50051", *, token: str | None = None, tls: bool = False,
                 root_certificates: bytes | str | Path | None = None, config: ch.ChannelConfig | None = None,
                 boundary_address: str | None = None, timeout: float = 300.0, default_model: str = "",
                 priority: str = ""):
        self.config = config or ch.ChannelConfig(tls=tls, root_certificates=root_certificates)
        self.address = address
        self.token = token
        self.timeout = timeout
        self._channel = ch.secure_channel(address, self.config)
        self._boundary_channel = ch.secure_channel(boundary_address, self.config) if boundary_address else None
        self.editor = editor_pb2_grpc.EditorServiceStub(self._channel)
        self.boundary = boundary_pb2_grpc.BoundaryServiceStub(self._boundary_channel or self._channel)
        self._default_model = default_model
        self.priority = rq.check_priority(priority)

    def close(self) -> None:
        self._channel.close()
        if self._boundary_channel is not None:
            self._boundary_channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Blocks until the channel is connected (raises grpc.FutureTimeoutError otherwise)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def _md(self, request_id: str = "", priority: str | None = None) -> tuple[tuple[str, str], ...]:
        return rq.metadata(self.token, request_id, self.priority if priority is None else rq.check_priority(priority))

    # -- editing -----------------------------------------------------------------------------------------

    def edit(self, source: Source | None = None, edits: Iterable[EditLike] | EditLike = (), *,
             seed: int | None = None, code: np.ndarray | None = None, photo=None, output: Output = "numpy",
             model: str = "", space: str | None = None, rescore: bool = False, include_original: bool = False,
             blend: bool = False, include_face: bool = False, inversion_steps: int = 0, image_format: str = "png",
             face_selection: str | None = None, face_indices: Sequence[int] = (), skip_tuning: bool = False,
             paste_whole_face: bool = False, change_smoothing: float | None = None, timeout: float | None = None,
             request_id: str | None = None, priority: str | None = None,
             on_frame: Callable[[EditFrame], None] | None = None) -> EditResult:
        """Edits one face (every chosen face of a photo) and returns every frame.

        Give the face as `source` (an int seed, a float latent code, or a photo: path, bytes, PIL image or
        uint8 array), or as exactly one of `seed=`, `code=`, `photo=`.

        Args:
            edits: EditSpec objects or strings such as "age:-3:3:7" or "gender:-2:2:5:hold=age".
            output: "numpy" (uint8 (H, W, 3) arrays) or "pil" (PIL images).
            rescore: Score every attribute on each result (EditFrame.scores).
            include_original: Also return the unedited face (EditResult.original; for photos also
                EditResult.reconstruction, and EditResult.photo is the input).
            blend: Photos: paste each edited face back into the photo.
            include_face: Photos with blend: also return each edited face crop (EditFrame.face).
            face_selection: Photos: "largest" (the server's default when empty), "all" (every face found, up
                to the server's limit) or "indices" (the faces in `face_indices`).
            face_indices: Photos: the faces to edit, numbered largest first (selects "indices" by itself).
            skip_tuning: Photos: skip pivotal tuning (faster; the face usually becomes another person's).
            paste_whole_face: Photos with blend: paste the whole edited face instead of only the edit's change.
            change_smoothing: Photos pasted as the change: Gaussian sigma of the change as a fraction of the
                face crop (0: none, sharper; None: the server's default, 1/64).
            priority: This call's lane ("interactive" or "bulk"); None: the client's.
            on_frame: Called with each frame as it arrives.
        """
        specs = edit_specs(edits)
        request = build_edit_request(
            _one_source(source, seed, code, photo), specs, request_id=request_id, model=model, space=space,
            rescore=rescore, include_original=include_original, blend=blend, include_face=include_face,
            inversion_steps=inversion_steps, image_format=image_format, face_selection=face_selection,
            face_indices=face_indices, skip_tuning=skip_tuning, paste_whole_face=paste_whole_face,
            change_smoothing=change_smoothing)
        frames = []
        for frame in self._send(request, output, timeout, priority):
            if on_frame is not None:
                on_frame(frame)
            frames.append(frame)
        return collect(specs, frames, request)

    def edit_stream(self, source: Source | None = None, edits: Iterable[EditLike] | EditLike = (), *,
                    seed: int | None = None, code: np.ndarray | None = None, photo=None, output: Output = "numpy",
                    timeout: float | None = None, request_id: str | None = None, priority: str | None = None,
                    **options) -> Iterator[EditFrame]:
        """Like `edit` (the same options), but yields each frame as the server streams it."""
        request = build_edit_request(_one_source(source, seed, code, photo), edits, request_id=request_id, **options)
        return self._send(request, output, timeout, priority)

    def _send(self, request: editor_pb2.EditRequest, output: Output, timeout: float | None,
              priority: str | None) -> Iterator[EditFrame]:
        stream = self.editor.Edit(request, timeout=timeout or self.timeout,
                                  metadata=self._md(request.request_id, priority))
        return self._frames(stream, output, request.request_id)

    @staticmethod
    def _frames(stream, output: Output, request_id: str) -> Iterator[EditFrame]:
        try:
            for message in stream:
                yield EditFrame.of(message, output)
        except grpc.RpcError as e:
            raise ApiError.of(e, "Edit", request_id) from None

    @_api("GetCatalog")
    def catalog(self, timeout: float | None = None) -> editor_pb2.Catalog:
        """Models (the default first), scorer attributes, stored boundaries and invertible models."""
        return self.editor.GetCatalog(editor_pb2.GetCatalogRequest(), timeout=timeout or 30, metadata=self._md())

    def default_model(self) -> str:
        """The name of the server's default generator model (cached)."""
        if not self._default_model:
            models = self.catalog().models
            if not models:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "the server lists no generator model", method="GetCatalog")
            self._default_model = models[0].name
        return self._default_model

    # -- boundaries --------------------------------------------------------------------------------------

    def ref(self, attribute: str, *, model: str = "", space: str | int | None = "Z", version: int = 0) -> common_pb2.BoundaryRef:
        """A BoundaryRef; 'gender@2' pins version 2."""
        r = rq.parse_ref(attribute, model=model or self.default_model(), space=space)
        if version:
            r.version = version
        return r

    @_api("ListBoundaries")
    def list_boundaries(self, *, model: str = "", attribute: str = "", space: str | None = None,
                        all_versions: bool = False) -> list[boundary_pb2.BoundaryInfo]:
        reply = self.boundary.ListBoundaries(boundary_pb2.ListBoundariesRequest(
            model=model, attribute=attribute, space=codec.space_of(space), all_versions=all_versions),
            timeout=self.timeout, metadata=self._md())
        return list(reply.boundaries)

    @_api("GetBoundary")
    def get_boundary(self, attribute: str, *, model: str = "", space: str = "Z",
                     version: int = 0) -> tuple[boundary_pb2.BoundaryInfo, np.ndarray]:
        """(metadata, unit normal (1, d))."""
        reply = self.boundary.GetBoundary(boundary_pb2.GetBoundaryRequest(
            ref=self.ref(attribute, model=model, space=space, version=version)), timeout=self.timeout,
            metadata=self._md())
        return reply.info, codec.array(reply.normal)

    @_api("TrainBoundaries")
    def train_boundaries(self, attributes: Sequence[str], *, num_samples: int = 0, chosen_ratio: float = 0.0,
                         train_split: float = 0.0, seed: int = 0, svm_c: float = 0.0, reuse_dataset: bool = True,
                         solver: str = "", model: str = "", space: str | None = "Z",
                         request_id: str | None = None, timeout: float | None = None) -> Iterator[boundary_pb2.JobUpdate]:
        """Starts a training job; yields its JobUpdates (progress, then the boundaries) until it ends.

        With the same `request_id` a second call attaches to the same job instead of starting another.
        """
        request = rq.train_request(attributes, model=model, space=space, num_samples=num_samples,
                                   chosen_ratio=chosen_ratio, train_split=train_split, seed=seed, svm_c=svm_c,
                                   reuse_dataset=reuse_dataset, solver=solver, request_id=request_id)
        return self.boundary.TrainBoundaries(request, timeout=timeout, metadata=self._md(request.request_id))

    @_api("WatchJob")
    def watch_job(self, job_id: str, timeout: float | None = None) -> Iterator[boundary_pb2.JobUpdate]:
        return self.boundary.WatchJob(boundary_pb2.WatchJobRequest(job_id=job_id), timeout=timeout, metadata=self._md())

    @_api("CancelJob")
    def cancel_job(self, job_id: str) -> boundary_pb2.JobUpdate:
        return self.boundary.CancelJob(boundary_pb2.CancelJobRequest(job_id=job_id), timeout=self.timeout,
                                       metadata=self._md())

    @_api("ConditionBoundary")
    def condition_boundary(self, attribute: str, hold: Sequence[str], *, model: str = "",
                           space: str = "Z") -> boundary_pb2.BoundaryInfo:
        """Stores (or finds) `attribute`'s boundary projected off the boundaries of `hold`; returns its metadata."""
        rid = new_request_id()
        reply = self.boundary.ConditionBoundary(boundary_pb2.ConditionBoundaryRequest(
            request_id=rid, target=self.ref(attribute, model=model, space=space),
            conditions=[self.ref(h, model=model, space=space) for h in hold]), timeout=self.timeout,
            metadata=self._md(rid))
        return reply.info

    @_api("ImportBoundary")
    def import_boundary(self, npy: bytes | str | Path, *, file_name: str | None = None, model: str = "",
                        attribute: str = "", space: str | None = None) -> boundary_pb2.BoundaryInfo:
        """Stores a reference-format .npy boundary (path or bytes); model, attribute, space come from the file name
        unless given."""
        reply = self.boundary.ImportBoundary(rq.import_request(npy, file_name=file_name, model=model,
                                                               attribute=attribute, space=space),
                                             timeout=self.timeout, metadata=self._md())
        return reply.info

    @_api("ExportBoundary")
    def export_boundary(self, attribute: str, *, model: str = "", space: str = "Z",
                        version: int = 0) -> tuple[str, bytes]:
        """(conventional file name, .npy bytes)."""
        reply = self.boundary.ExportBoundary(boundary_pb2.ExportBoundaryRequest(
            ref=self.ref(attribute, model=model, space=space, version=version)), timeout=self.timeout,
            metadata=self._md())
        return reply.file_name, reply.npy

    @_api("AnalyzeBoundaries")
    def analyze_boundaries(self, attributes: Sequence[str], *, model: str = "", space: str = "Z",
                           rescore_samples: int = 0, rescore_distance: float = 0.0, seed: int = 0,
                           rescore_attributes: Sequence[str] = (), timeout: float | None = None,
                           on_progress: Callable[[common_pb2.Progress], None] | None = None
                           ) -> boundary_pb2.AnalyzeBoundariesResponse:
        """Cosine matrix (and, with rescore_samples, the re-scoring study) of boundaries named like 'gender@2'.

        Returns the last message merged with the first (so cosine_image is kept)."""
        rid = new_request_id()
        request = boundary_pb2.AnalyzeBoundariesRequest(
            request_id=rid, boundaries=[self.ref(a, model=model, space=space) for a in attributes],
            rescore_samples=rescore_samples, rescore_distance=rescore_distance, seed=seed,
            rescore_attributes=list(rescore_attributes))
        merged = boundary_pb2.AnalyzeBoundariesResponse()
        for reply in self.boundary.AnalyzeBoundaries(request, timeout=timeout, metadata=self._md(rid)):
            if on_progress is not None and reply.HasField("progress"):
                on_progress(reply.progress)
            merge_analysis(merged, reply)
        return merged


def merge_analysis(merged: boundary_pb2.AnalyzeBoundariesResponse,
                   reply: boundary_pb2.AnalyzeBoundariesResponse) -> None:
    """Folds one streamed analysis message into `merged`: fields set in later messages win."""
    for fd, _ in reply.ListFields():
        merged.ClearField(fd.name)
    merged.MergeFrom(reply)


def _one_source(source, seed, code, photo):
    given = [s for s in (source, seed, code, photo) if s is not None]
    if len(given) != 1:
        raise ValueError("give exactly one face: source, seed=, code= or photo=")
    if photo is not None and isinstance(photo, np.ndarray) and photo.dtype != np.uint8:
        raise ValueError("photo arrays must be uint8 (H, W, 3)")
    if code is not None:
        return np.asarray(code, dtype=np.float32)
    if seed is not None:
        return int(seed)
    if photo is not None and isinstance(photo, np.ndarray):
        return photo
    return photo if photo is not None else source
