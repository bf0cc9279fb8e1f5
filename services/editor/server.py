"""Editor gateway: edits faces given as seeds, codes or photos by orchestrating generator, scorer, boundary, inversion."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import time
import uuid

import grpc
import numpy as np

from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,
                             generator_pb2, generator_pb2_grpc, inversion_pb2, inversion_pb2_grpc, scorer_pb2,
                             scorer_pb2_grpc)
from interfacegan import channel as sdk, codec
from services.common import editing, images, logs, pipeline, tensors, variants
from services.common.admission import PixelBudget
from services.common.errors import ServiceError, failed_precondition, invalid_argument, not_found
from services.common.runtime import check_request_id
from services.common.settings import ServerSettings, setting
from services.common.upstream import SERVICE_RETRY, CallContext, Upstream

from .calibrate import Calibration, CalibratedEdits, apply_corrections, check_target, expand_hold_auto, replay_source
from .proxy import ServiceProxy

log = logging.getLogger(__name__)

Z, W, WP = common_pb2.LATENT_SPACE_Z, common_pb2.LATENT_SPACE_W, common_pb2.LATENT_SPACE_WP
#: Boundary spaces that edit codes of a space, in order of preference (W boundaries edit W+ codes too).
BOUNDARY_SPACES = {Z: (Z,), W: (W,), WP: (W, WP)}
RAW = common_pb2.IMAGE_FORMAT_RAW
#: Side of the aligned crops a photo's identity distances are measured on (the photo's own detail counts).
IDENTITY_CROP = 128


@dataclasses.dataclass
class Settings(ServerSettings):
    """Editor gateway settings."""

    generator_address: str = setting("127.0.0.1:50052", "generator replicas: host:port, dns:///name:port (round "
                                                         "robin over every address the name resolves to), or a "
                                                         "comma-separated list of either")
    scorer_address: str = setting("127.0.0.1:50053", "scorer replicas (same forms as --generator-address)")
    boundary_address: str = setting("127.0.0.1:50054", "boundary service (same forms as --generator-address)")
    inversion_address: str = setting("127.0.0.1:50055", "inversion replicas (same forms as --generator-address)")
    call_timeout: float = setting(120.0, "seconds one downstream call may take when the client's call has no deadline")
    retry_attempts: int = setting(4, "tries (2 .. 5) of an idempotent downstream call on UNAVAILABLE, by gRPC's "
                                     "retry policy: on another replica of a round robin channel")
    retry_backoff: float = setting(0.1, "seconds before the first retry; doubles up to 2 s, with gRPC's jitter")
    chunk_size: int = setting(8, "edited images per Synthesize call; the chunks of one Edit run in parallel, "
                                 "spread over the generator replicas")
    parallel_chunks: int = setting(4, "chunks in flight per Edit call (synthesize, re-score, blend)")
    max_edits: int = setting(32, "most edits per Edit call")
    max_images: int = setting(1024, "most images one Edit call returns (the sum of the edits' steps)")
    max_photo_pixels: int = setting(4096 * 4096, "largest photo an Edit accepts, height * width (as the inversion "
                                                 "service's default)")
    max_pixels_in_flight: int = setting(48 * 1024 * 1024, "most photo pixels all Edit calls blend at once (bounds "
                                                          "this service's memory and the inversion service's load); "
                                                          "blends wait for their share within the call's deadline")
    condition_cache_size: int = setting(512, "conditional boundaries remembered (keyed by their parents' versions)")
    normal_cache_size: int = setting(1024, "boundary normals kept in memory, by versioned ref (a version never "
                                           "changes, so entries are only evicted, never stale)")
    boundary_refresh_seconds: float = setting(10.0, "how long the newest version of a boundary is reused before "
                                                    "asking again; writes relayed by this editor refresh at once")
    proxy_boundary: bool = setting(True, "also serve interfacegan.v1.BoundaryService by relaying it to "
                                         "--boundary-address, so clients need only the editor's address")

    service_name = "editor"

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.chunk_size <= 256 or not 1 <= self.parallel_chunks <= 64:
            raise ValueError("chunk_size must be within 1..256 and parallel_chunks within 1..64")
        if self.max_pixels_in_flight < self.max_photo_pixels:
            raise ValueError("max_pixels_in_flight must be at least max_photo_pixels")
        if self.call_timeout <= 0 or not 2 <= self.retry_attempts <= 5 or self.retry_backoff <= 0:
            raise ValueError("call_timeout and retry_backoff must be positive and retry_attempts within 2..5 "
                             "(gRPC's retry policy caps tries at 5)")
        if self.normal_cache_size < 1 or self.condition_cache_size < 1 or self.boundary_refresh_seconds < 0:
            raise ValueError("normal_cache_size and condition_cache_size must be at least 1 and "
                             "boundary_refresh_seconds not negative")


@dataclasses.dataclass
class Source:
    """The face to edit, as a code, plus what a photo brings along."""

    space: int
    code: np.ndarray  # (1, d) or (1, L, d): the face edits are measured on (a photo's first face)
    photo: common_pb2.Image | None = None
    alignment: inversion_pb2.FaceAlignment | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    psnr: float = 0.0
    faces: list[inversion_pb2.InvertedFace] = dataclasses.field(default_factory=list)  # a photo's faces
    variant: str = ""  # the generator variant tuned for the photo ("" renders the base weights)

    @property
    def codes(self) -> np.ndarray:
        """(F, d) or (F, L, d): every face's code (F = 1 for seeds and codes)."""
        if not self.faces:
            return self.code
        return np.concatenate([tensors.to_numpy(f.code.codes, "inversion code") for f in self.faces])


@dataclasses.dataclass(frozen=True)
class Direction:
    """A stored boundary an edit follows: its versioned ref, its unit normal (d,), and for a derived one its parents."""

    ref: common_pb2.BoundaryRef
    normal: np.ndarray
    parents: tuple = ()


def _key(ref: common_pb2.BoundaryRef) -> tuple:
    return ref.model, ref.attribute, ref.space, ref.version


@dataclasses.dataclass
class Item:
    """One image to produce: the original (edit -1) or one step of one edit."""

    edit: int
    step: int
    distance: float
    code: np.ndarray  # one code without the batch dimension (a photo's first face)
    boundary: common_pb2.BoundaryRef | None
    face_codes: np.ndarray | None = None  # (F, ...) every face's code of a photo; None: `code` alone


class EditorService(CalibratedEdits, editor_pb2_grpc.EditorServiceServicer):
    """EditorService (Edit, GetCatalog), and a relay of BoundaryService for clients that only reach the editor."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.service_names: tuple[str, ...] = ("interfacegan.v1.EditorService",)
        if settings.proxy_boundary:
            self.service_names += ("interfacegan.v1.BoundaryService",)
        self._models: dict[tuple[str, str], generator_pb2.ModelInfo] = {}
        # Derived (conditional) boundaries, keyed by their parents' versioned refs.
        self._conditioned: collections.OrderedDict[tuple, Direction] = collections.OrderedDict()
        # Normals by versioned ref (model, attribute, space, version): a stored version never changes.
        self._normals: collections.OrderedDict[tuple, Direction] = collections.OrderedDict()
        # The newest version of (model, attribute, code space): (ref key, monotonic time it was looked up).
        self._latest: dict[tuple, tuple[tuple, float]] = {}
        self.generator = self.scorer = self.boundary = self.inversion = None
        self.budget = PixelBudget("editor", settings.max_pixels_in_flight, max_wait=3600, max_waiting=4096)

    def _upstream(self, name: str, addresses: str, stub_cls) -> Upstream:
        s = self.settings
        return Upstream(name, addresses, stub_cls, s,
                        retry=sdk.RetryPolicy(max_attempts=s.retry_attempts, initial_backoff=s.retry_backoff,
                                              max_backoff=2.0, status_codes=SERVICE_RETRY.status_codes))

    def forget_latest(self) -> None:
        """Drops the newest-version lookups: a boundary write went through this editor."""
        self._latest.clear()

    def register(self, server: grpc.aio.Server) -> None:
        # Channels are made here, inside the server's event loop.
        s = self.settings
        self.generator = self._upstream("generator", s.generator_address, generator_pb2_grpc.GeneratorServiceStub)
        self.scorer = self._upstream("scorer", s.scorer_address, scorer_pb2_grpc.ScorerServiceStub)
        self.boundary = self._upstream("boundary", s.boundary_address, boundary_pb2_grpc.BoundaryServiceStub)
        self.inversion = self._upstream("inversion", s.inversion_address, inversion_pb2_grpc.InversionServiceStub)
        editor_pb2_grpc.add_EditorServiceServicer_to_server(self, server)
        if s.proxy_boundary:
            service = boundary_pb2.DESCRIPTOR.services_by_name["BoundaryService"]
            server.add_generic_rpc_handlers((ServiceProxy(service, self.boundary, s.call_timeout,
                                                          after_write=self.forget_latest),))

    async def load(self) -> None:
        log.info("downstream", extra={"generator": self.generator.addresses, "scorer": self.scorer.addresses,
                                      "boundary": self.boundary.addresses, "inversion": self.inversion.addresses})

    async def close(self) -> None:
        for upstream in (self.generator, self.scorer, self.boundary, self.inversion):
            if upstream is not None:
                await upstream.close()

    # -- helpers -----------------------------------------------------------------------------------------

    def _call(self, request_id: str, context) -> CallContext:
        # The runtime checked the request's id; one from the metadata is checked here, before any use.
        rid = request_id or check_request_id(dict(context.invocation_metadata() or ()).get("x-request-id", ""),
                                             "x-request-id") or uuid.uuid4().hex
        logs.request_id_var.set(rid)
        return CallContext.of(context, rid, self.settings.call_timeout)

    async def _model(self, ref: common_pb2.ModelRef, call: CallContext) -> generator_pb2.ModelInfo:
        key = (ref.name, ref.version)
        if key not in self._models:
            info = await self.generator.unary("GetModelInfo", generator_pb2.GetModelInfoRequest(model=ref), call)
            self._models[key] = self._models[(info.name, info.version)] = info
        return self._models[key]

    def _plan(self, request: editor_pb2.EditRequest) -> list[int]:
        """Validates the edits' counts and sizes; returns the number of steps of each (defaults filled)."""
        s = self.settings
        if not request.edits and not request.include_original:
            raise invalid_argument("edits", "empty; give at least one AttributeEdit (e.g. attribute 'age', start -3, "
                                            "end 3, steps 10), or set include_original to only reconstruct the face")
        if len(request.edits) > s.max_edits:
            raise invalid_argument("edits", f"{len(request.edits)} edits; accepted 1 .. {s.max_edits} per call")
        steps = []
        for i, e in enumerate(request.edits):
            field = f"edits[{i}]"
            if not e.attribute:
                raise invalid_argument(f"{field}.attribute", "empty; name an attribute with a stored boundary "
                                                             "(GetCatalog lists them), e.g. 'age'")
            if e.WhichOneof("target"):
                check_target(e, field)  # one image, at the distance its search finds
                n = 1
            else:
                try:
                    _, _, n, _ = editing.check_edit(e.start, e.end, e.steps, absolute=False)
                except editing.EditError as err:
                    raise invalid_argument(f"{field}.{err.field}", str(err)) from None
            if e.attribute in e.hold:
                raise invalid_argument(f"{field}.hold", f"holds {e.attribute!r}, the attribute being edited; hold "
                                                        f"other attributes only")
            if len(e.hold) > 16:
                raise invalid_argument(f"{field}.hold", f"{len(e.hold)} attributes; accepted 0 .. 16")
            steps.append(n)
        total = sum(steps) + bool(request.include_original)
        if total > s.max_images:
            raise invalid_argument("edits", f"the edits ask for {total} images; accepted at most {s.max_images} per "
                                            f"call (split the edits over several calls)")
        return steps

    async def _source(self, request: editor_pb2.EditRequest, info: generator_pb2.ModelInfo,
                      call: CallContext) -> Source:
        shapes = {s.space: tuple(s.shape) for s in info.latent_spaces}
        model = common_pb2.ModelRef(name=info.name, version=info.version)
        kind = request.WhichOneof("source")
        if request.space and request.space not in shapes:
            raise invalid_argument("space", f"model {info.name} has no space {tensors.space_name(request.space)}; "
                                            f"accepted: {', '.join(tensors.space_name(s) for s in shapes)}")
        if request.variant and kind != "code":
            raise invalid_argument("variant", "only a code is rendered with a given variant; a photo gets its own "
                                              "and a seed has none: leave variant empty")
        if kind == "seed":
            space = request.space or (Z if Z in shapes else next(iter(shapes)))
            if space == Z:
                # Z codes of a seed are a pure function of (seed, shape): no generator round trip.
                return Source(space, editing.sample_z(request.seed, 1, shapes[Z]))
            reply = await self.generator.unary("SampleLatents", generator_pb2.SampleLatentsRequest(
                request_id=call.request_id, model=model, space=space, count=1, seed=request.seed), call)
            return Source(space, tensors.to_numpy(reply.codes.codes, "codes"))
        if kind == "code":
            space, code = tensors.latents_to_numpy(request.code, "code", expected=shapes, max_codes=1)
            if request.space and request.space != space:
                raise invalid_argument("code.space", f"the code is in {tensors.space_name(space)} but the request "
                                                     f"asks for {tensors.space_name(request.space)}; make them agree")
            if request.variant and not variants.is_variant_id(request.variant):
                raise invalid_argument("variant", f"{request.variant[:80]!r} is not a variant id; give a photo's "
                                                  "EditResponse.variant (or leave it empty for the model's weights)")
            return Source(space, code, variant=request.variant)
        if kind == "photo":
            if request.photo.WhichOneof("payload") is None:
                raise invalid_argument("photo", "empty image; give PNG or JPEG bytes in photo.encoded")
            # Refused here, before inversion decodes it, when its header says it is too thin or too large.
            images.size_of(request.photo, "photo", max_pixels=self.settings.max_photo_pixels)
            replies = await self.inversion.collect("Invert", inversion_pb2.InvertRequest(
                request_id=call.request_id, model=model, space=request.space, image=request.photo, align_face=True,
                max_steps=request.inversion_steps, format=RAW, face_selection=request.face_selection,
                face_indices=request.face_indices, skip_tuning=request.skip_tuning), call)
            final = next((r for r in reversed(replies) if r.final), replies[-1] if replies else None)
            if final is None or not final.code.HasField("codes"):
                raise ServiceError(grpc.StatusCode.INTERNAL, "inversion returned no code for the photo")
            code = tensors.to_numpy(final.code.codes, "inversion code")
            return Source(final.code.space, code, photo=request.photo,
                          alignment=final.alignment if final.HasField("alignment") else None,
                          warnings=list(final.warnings), psnr=final.psnr, faces=list(final.faces),
                          variant=final.variant)
        raise invalid_argument("source", "missing; set one of seed, code or photo")

    def _remember(self, cache: collections.OrderedDict, key: tuple, value, size: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)

    async def _find_boundary(self, model: str, attribute: str, space: int, version: int, call: CallContext,
                             field: str) -> Direction:
        """The stored boundary `attribute` that edits `space` codes, from the cache when it can be."""
        wanted = (model, attribute, space, version)
        if version == 0 and wanted in self._latest:
            key, seen = self._latest[wanted]
            if time.monotonic() - seen <= self.settings.boundary_refresh_seconds and key in self._normals:
                self._normals.move_to_end(key)
                return self._normals[key]
        for bspace in BOUNDARY_SPACES.get(space, (space,)):
            key = (model, attribute, bspace, version)
            if version and key in self._normals:
                self._normals.move_to_end(key)
                return self._normals[key]
            ref = common_pb2.BoundaryRef(model=model, attribute=attribute, space=bspace, version=version)
            try:
                found = await self.boundary.unary("GetBoundary", boundary_pb2.GetBoundaryRequest(ref=ref), call)
            except ServiceError as e:
                if e.code != grpc.StatusCode.NOT_FOUND:
                    raise
                continue
            direction = Direction(found.info.ref, tensors.to_numpy(found.normal, "boundary normal").reshape(-1))
            key = _key(found.info.ref)
            self._remember(self._normals, key, direction, self.settings.normal_cache_size)
            if version == 0:
                self._latest.pop(wanted, None)
                self._latest[wanted] = (key, time.monotonic())
                if len(self._latest) > self.settings.normal_cache_size:
                    del self._latest[next(iter(self._latest))]  # the oldest lookup
            return direction
        stored = await self.boundary.unary("ListBoundaries", boundary_pb2.ListBoundariesRequest(model=model), call)
        names = sorted({b.ref.attribute for b in stored.boundaries
                        if b.ref.space in BOUNDARY_SPACES.get(space, (space,))})
        which = f"version {version} of " if version else ""
        raise not_found(f"{field}: no {which}boundary {attribute!r} for model {model} in "
                        f"{tensors.space_name(space)}; stored: {', '.join(names) or 'none'} (train one with "
                        f"`ifgan train-boundary {attribute}` or import one)")

    async def _boundary(self, index: int, edit: editor_pb2.AttributeEdit, model: str, space: int,
                        call: CallContext) -> Direction:
        """The direction an edit follows: stored, or projected off the held attributes (cached per parent versions)."""
        field = f"edits[{index}]"
        target = await self._find_boundary(model, edit.attribute, space, edit.boundary_version, call,
                                           f"{field}.attribute")
        hold = list(dict.fromkeys(edit.hold))
        if not hold:
            return target
        conditions = await asyncio.gather(*(
            self._find_boundary(model, h, target.ref.space, 0, call, f"{field}.hold[{k}]")
            for k, h in enumerate(hold)))
        key = (_key(target.ref), tuple(_key(c.ref) for c in conditions))
        if key in self._conditioned:
            self._conditioned.move_to_end(key)
            return self._conditioned[key]
        # Stored once so that responses name a ref every client can fetch; a request id made of the parents'
        # versions makes every editor replica get the same stored version.
        rid = "editor-condition:" + hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        derived = await self.boundary.unary("ConditionBoundary", boundary_pb2.ConditionBoundaryRequest(
            request_id=rid, target=target.ref, conditions=[c.ref for c in conditions]), call)
        direction = Direction(derived.info.ref, tensors.to_numpy(derived.normal, "boundary normal").reshape(-1),
                              (target.ref, *(c.ref for c in conditions)))
        self._remember(self._conditioned, key, direction, self.settings.condition_cache_size)
        return direction

    def _layer_ranges(self, request: editor_pb2.EditRequest, source: Source,
                      directions: list[Direction]) -> list[tuple[int, int] | None]:
        """Checks every edit against the source's code; returns each edit's W+ layer range (None for Z / W)."""
        num_layers = source.code.shape[1] if source.code.ndim == 3 else None
        ranges = []
        for i, (e, d) in enumerate(zip(request.edits, directions)):
            field = f"edits[{i}]"
            if d.normal.size != source.code.shape[-1]:
                raise invalid_argument(f"{field}.attribute", f"boundary {d.ref.attribute!r} has dimension "
                                                             f"{d.normal.size}, the codes {source.code.shape[-1]}")
            try:
                *_, layer_range = editing.check_edit(
                    e.start if not e.WhichOneof("target") else 0.0, e.end, e.steps,
                    absolute=e.mode == boundary_pb2.DISTANCE_MODE_ABSOLUTE, layer_start=e.layer_start,
                    layer_end=e.layer_end, num_layers=num_layers)
            except editing.EditError as err:
                raise invalid_argument(f"{field}.{err.field}", str(err)) from None
            ranges.append(layer_range)
        return ranges

    def _edit_codes(self, request: editor_pb2.EditRequest, source: Source, directions: list[Direction],
                    steps: list[int], ranges: list, found: list[Calibration | None]) -> list[Item]:
        """The edited codes, computed here (services/common/editing.py) on the cached normals; a target edit's
        one distance is the one its search found."""
        table, absolute, layers = [], [], []
        for e, c, layer_range in zip(request.edits, found, ranges):
            if c is not None and c.distance is not None:
                table.append((c.distance, c.distance, 1))
            else:
                table.append(editing.check_edit(e.start, e.end, e.steps, absolute=False)[:3])
            absolute.append(e.mode == boundary_pb2.DISTANCE_MODE_ABSOLUTE)
            if layer_range is not None:
                layers.append(layer_range)
        dist = editing.distance_table(table)
        edited = editing.edit(source.codes, np.stack([d.normal for d in directions]), dist,
                              absolute=np.array(absolute), layers=np.array(layers) if layers else None)
        apply_corrections(edited, found, [d.normal for d in directions], dist, ranges)
        return [Item(e, s, float(dist[e, s]), edited[0, e, s], directions[e].ref, edited[:, e, s])
                for e, n in enumerate(steps) for s in range(n)]

    async def _render(self, items: list[Item], chunk: int, model: common_pb2.ModelRef, source: Source,
                      request: editor_pb2.EditRequest, call: CallContext, rescore: bool) -> list[tuple]:
        """Synthesizes one chunk (every face of a photo, by its variant), re-scores, blends and measures identity;
        returns (image, face, scores, identity per face, blend mode) per item."""
        per_item = [it.face_codes if it.face_codes is not None else it.code[None] for it in items]
        faces_per_item = len(per_item[0])
        # The unedited faces ride along in the same batch (no extra round trip): a seed's render is the identity
        # reference; a photo's renders are the reconstructions its change is measured from, by the very weights
        # that render the edits, so an unedited face adds exactly nothing to the photo.
        codes = np.concatenate(per_item + [source.codes])
        replies = await self.generator.collect("Synthesize", generator_pb2.SynthesizeRequest(
            request_id=call.derived_id(str(chunk)), model=model, codes=codec.latents(codes, source.space),
            format=RAW, variant=source.variant), call)
        rendered = [image for reply in replies for image in reply.images]
        if len(rendered) != len(codes):
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"generator returned {len(rendered)} images for "
                                                            f"{len(codes)} codes; retry")
        unedited = rendered[len(items) * faces_per_item:]
        groups = [unedited if it.edit < 0 else rendered[k * faces_per_item:(k + 1) * faces_per_item]
                  for k, it in enumerate(items)]
        faces = [g[0] for g in groups]

        async def score():
            if not rescore:
                return [None] * len(items)
            measured = faces
            if source.photo is not None and request.blend_into_photo:
                # A photo pasted back is measured as the user receives it: the face in the result photo, aligned
                # as the generator frames faces (the unedited item's is the input photo's own face).
                measured = [b.result_crops[0] if b is not None and b.result_crops else f
                            for f, b in zip(faces, await blending)]
            replies = await self.scorer.collect("Score", scorer_pb2.ScoreRequest(
                request_id=call.derived_id(str(chunk)), images=measured), call)
            results = [None] * len(items)
            for reply in replies:
                for i, r in enumerate(reply.results, start=reply.offset):
                    results[i] = list(r.scores)
            return results

        async def blend():
            if source.photo is None or not request.blend_into_photo:
                return [None] * len(items)
            if not source.faces:
                raise ServiceError(grpc.StatusCode.INTERNAL, "inversion returned no face alignment to blend with")
            mode = inversion_pb2.BLEND_MODE_FACE if request.paste_whole_face else inversion_pb2.BLEND_MODE_CHANGE
            # Unset stays unset: the inversion service owns the default.
            smoothing = {"change_smoothing": request.change_smoothing} if request.HasField("change_smoothing") else {}
            h, w = images.size_of(source.photo, "photo", max_pixels=self.settings.max_photo_pixels)

            async def one(group):
                # The blends of every Edit call share one budget: the inversion service gets as many large
                # photos at once as it can hold, and this service holds as many blended ones.
                async with self.budget.hold(h * w, timeout=call.remaining()):
                    return await self.inversion.unary("Blend", inversion_pb2.BlendRequest(
                        photo=source.photo, face=group[0], reconstruction=unedited[0],
                        alignment=source.faces[0].alignment, mode=mode, crop_size=IDENTITY_CROP, format=request.format,
                        more_faces=[inversion_pb2.BlendFace(face=f, reconstruction=r, alignment=sf.alignment)
                                    for f, r, sf in zip(group[1:], unedited[1:], source.faces[1:])],
                        **smoothing), call)
            return list(await asyncio.gather(*(one(group) for group in groups)))

        blending = asyncio.ensure_future(blend())

        async def identity_of():  # a seed's starts at once, beside the scoring; a photo's waits for its blends
            return await self._identity(source, groups, await blending, unedited, call)

        scores, blended, identity = await asyncio.gather(score(), blending, identity_of())
        fmt = request.format or common_pb2.IMAGE_FORMAT_PNG
        out = []
        for group, s, b, ids in zip(groups, scores, blended, identity):
            encoded = group[0] if fmt == RAW else await _encode(group[0], fmt)
            if b is not None:
                mode = "face" if b.mode == inversion_pb2.BLEND_MODE_FACE else "change"
                crops = None
                if request.include_face:  # every face's render, the largest first
                    crops = [encoded, *[f if fmt == RAW else await _encode(f, fmt) for f in group[1:]]]
                out.append((b.image, crops, s, ids, (mode, b.change_smoothing)))
            else:
                out.append((encoded, None, s, ids, ("", 0.0)))
        return out

    async def _identity(self, source: Source, groups: list[list[common_pb2.Image]], blended: list,
                        reference: list[common_pb2.Image], call: CallContext) -> list[list[float]]:
        """Identity distance per item and face: a photo's faces in the photo against the result's (the aligned
        crops of a blend, else the aligned target against the render); a seed's or code's unedited render
        against each render. -1 where the scorer cannot tell (it is reported, never made up)."""
        refs, imgs = [], []
        for group, b in zip(groups, blended):
            if b is not None:
                refs += list(b.source_crops)
                imgs += list(b.result_crops)
            elif source.faces:
                refs += [f.aligned_target for f in source.faces]
                imgs += group
            else:
                refs += reference
                imgs += group[:1]
        per_item = len(imgs) // max(1, len(groups))
        try:
            reply = await self.scorer.unary("CompareIdentity", scorer_pb2.IdentityRequest(
                references=refs, images=imgs), call)
            distances = list(reply.distances)
        except ServiceError as e:
            log.warning("identity distances unavailable", extra={"error": e.message})
            distances = [-1.0] * len(imgs)
        return [distances[k * per_item:(k + 1) * per_item] for k in range(len(groups))]

    # -- RPCs --------------------------------------------------------------------------------------------

    async def Edit(self, request: editor_pb2.EditRequest, context: grpc.aio.ServicerContext):
        call = self._call(request.request_id, context)
        await context.send_initial_metadata((("x-request-id", call.request_id),))
        started = time.monotonic()
        expand_hold_auto(request)
        steps = self._plan(request)
        if request.format not in (common_pb2.IMAGE_FORMAT_UNSPECIFIED, common_pb2.IMAGE_FORMAT_PNG,
                                  common_pb2.IMAGE_FORMAT_JPEG, RAW):
            raise invalid_argument("format", f"{request.format}; accepted PNG, JPEG, RAW (unspecified = PNG)")
        if request.blend_into_photo and request.WhichOneof("source") != "photo":
            raise invalid_argument("blend_into_photo", "set only for photo sources; seeds and codes have no photo")
        if request.HasField("change_smoothing") and (not request.blend_into_photo or request.paste_whole_face):
            raise invalid_argument("change_smoothing", "set only for photos pasted back as the change "
                                                       "(blend_into_photo, without paste_whole_face)")
        info = await self._model(request.model, call)
        model = common_pb2.ModelRef(name=info.name, version=info.version)
        source = await self._source(request, info, call)
        plan, sent, retuned = None, 0, False
        while True:
            try:
                if plan is None:
                    plan = await self._prepare(request, model, info.name, source, call)
                async for response in self._respond(request, model, source, steps, plan, call, started, sent):
                    sent += 1
                    yield response
                break
            except ServiceError as e:
                # Only a photo can be tuned again: it is in the request (a code rendered with a variant is not).
                if request.WhichOneof("source") != "photo" or not _variant_lost(e, source):
                    raise
                if retuned:
                    raise failed_precondition(
                        f"the tuned generator variant of this photo left the variant store again right after it was "
                        f"tuned anew ({e.message}); the store is dropping variants: check its memory limit and "
                        f"eviction policy and that the generator replicas read the store the inversion service "
                        f"writes (--redis-url), then retry, or set skip_tuning to edit with the model's own "
                        f"weights") from None
                retuned = True
                source = await self._retune(request, info, source, sent, e, call)
                if not sent:  # nothing shown yet: measure the face again on the new weights
                    plan = None
        log.info("edited", extra={"images": sent, "edits": len(request.edits), "source": request.WhichOneof("source"),
                                  "retuned": retuned, "seconds": round(time.monotonic() - started, 3)})

    async def _prepare(self, request: editor_pb2.EditRequest, model: common_pb2.ModelRef, model_name: str,
                       source: Source, call: CallContext) -> tuple[list[Direction], list, list]:
        """Each edit's direction, W+ layer range and (target edits, hold=auto) what its calibration found."""
        directions = list(await asyncio.gather(*(self._boundary(i, e, model_name, source.space, call)
                                                 for i, e in enumerate(request.edits))))
        ranges = self._layer_ranges(request, source, directions)
        # Target edits and hold=auto measure the face along the edit first (the scorer in the loop).
        found = list(await asyncio.gather(*(self._calibrate(i, e, d, model, source, r, call) for i, (e, d, r)
                                            in enumerate(zip(request.edits, directions, ranges)))))
        directions = [c.direction if c is not None else d for c, d in zip(found, directions)]
        return directions, ranges, found

    async def _retune(self, request: editor_pb2.EditRequest, info: generator_pb2.ModelInfo, lost: Source, sent: int,
                      error: ServiceError, call: CallContext) -> Source:
        """The photo inverted and tuned again after the variant store lost its variant (flushed, expired or
        corrupted between inversion and rendering). Before any image was sent the new inversion simply replaces
        the old one; after some were, the rest must come from the same codes and the same variant id (the
        variant is addressed by its content: photo, model and settings), else the call stops with what to do."""
        log.warning("tuned variant lost; tuning the photo again", extra={"variant": lost.variant, "sent": sent,
                                                                         "error": error.message})
        fresh = await self._source(request, info, call)
        if not sent:
            return fresh
        same = (fresh.variant == lost.variant and fresh.codes.shape == lost.codes.shape
                and np.allclose(fresh.codes, lost.codes, rtol=0, atol=1e-4))
        if not same:
            raise failed_precondition(
                f"the tuned generator variant {lost.variant} of this photo left the variant store after {sent} "
                f"images were sent, and tuning the photo again gave other weights ({fresh.variant or 'none'}); "
                f"the images still to come cannot match the ones sent: send the request again")
        return fresh

    async def _respond(self, request: editor_pb2.EditRequest, model: common_pb2.ModelRef, source: Source,
                       steps: list[int], plan: tuple, call: CallContext, started: float, skip: int):
        """The call's responses from the `skip`-th on (those before it were sent before a re-tune)."""
        directions, ranges, found = plan
        items: list[Item] = []
        if request.include_original:
            items.append(Item(-1, 0, 0.0, source.code[0], None, source.codes if source.faces else None))
        if request.edits:
            items.extend(self._edit_codes(request, source, directions, steps, ranges, found))
        total, items = len(items), items[skip:]
        rescore = request.rescore or any(c is not None for c in found)
        size = self.settings.chunk_size
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        factories = [lambda c=c, k=k: self._render(c, k, model, source, request, call, rescore)
                     for k, c in enumerate(chunks)]
        sent = skip
        async for chunk, rendered in _zip_ordered(chunks, pipeline.ordered(factories, self.settings.parallel_chunks)):
            for item, (image, face, scores, identity, (blend_mode, smoothing)) in zip(chunk, rendered):
                sent += 1
                elapsed = time.monotonic() - started
                response = editor_pb2.EditResponse(
                    edit_index=item.edit, step_index=item.step, distance=item.distance, image=image,
                    code=codec.latents(item.code[None], source.space), scores=scores or [],
                    progress=common_pb2.Progress(stage="editing", done=sent, total=total, elapsed_seconds=elapsed,
                                                 eta_seconds=elapsed / sent * (total - sent)),
                    request_id=call.request_id, inversion_psnr=source.psnr, variant=source.variant,
                    identity_distance=identity[0] if identity else -1.0, blend_mode=blend_mode,
                    change_smoothing=smoothing)
                for k, (f, d) in enumerate(zip(source.faces, identity)):
                    response.faces.append(editor_pb2.EditedFace(index=f.index, box=f.alignment.face_box,
                                                                reconstruction_psnr=f.psnr, identity_distance=d))
                    if face is not None and k < len(face):
                        response.faces[-1].face.CopyFrom(face[k])
                if item.boundary is not None:
                    response.boundary.CopyFrom(item.boundary)
                if face is not None:
                    response.face.CopyFrom(face[0])
                if sent == 1:
                    response.warnings.extend(source.warnings)
                if item.edit >= 0:
                    self._report(response, request, item, directions[item.edit], found[item.edit],
                                 ranges[item.edit], model, source)
                yield response

    def _report(self, response: editor_pb2.EditResponse, request: editor_pb2.EditRequest, item: Item,
                direction: Direction, found: Calibration | None, layers: tuple[int, int] | None,
                model: common_pb2.ModelRef, source: Source) -> None:
        """Fills a frame's target outcome (measured on this very image), hold drifts and receipt."""
        edit = request.edits[item.edit]
        if found is not None and found.target is not None:
            response.target.CopyFrom(found.target)
            row = {s.attribute: s.value for s in response.scores if s.valid}
            after = row.get(response.target.attribute)
            if after is not None:
                response.target.after = after
                response.target.met = abs(after - response.target.goal) <= response.target.tolerance
        if found is not None:
            response.holds.extend(found.holds)
        held = list(dict.fromkeys([*edit.hold, *(found.held if found is not None else ())]))
        mode = edit.mode or boundary_pb2.DISTANCE_MODE_RELATIVE
        lo, hi = layers or (0, 0)
        replay = editor_pb2.EditRequest(
            model=model, space=source.space, rescore=request.rescore, format=request.format,
            edits=[editor_pb2.AttributeEdit(attribute=direction.ref.attribute,
                                            boundary_version=direction.ref.version, mode=mode, start=item.distance,
                                            end=item.distance, steps=1, layer_start=lo, layer_end=hi)])
        kind = request.WhichOneof("source")
        if kind == "seed":
            replay.seed = request.seed
        elif kind == "code":
            replay.code.CopyFrom(request.code)
            replay.variant = request.variant
        replay_source(replay, found, source.space, source.variant)
        response.receipt.CopyFrom(editor_pb2.EditReceipt(
            model=model, variant=response.variant, space=source.space, boundary=direction.ref,
            parents=list(direction.parents), held=held, mode=mode, distance=item.distance, layer_start=lo,
            layer_end=hi, scores=response.scores,
            identity_distance=response.identity_distance if response.identity_distance else -1.0, replay=replay))

    async def GetCatalog(self, request: editor_pb2.GetCatalogRequest, context: grpc.aio.ServicerContext):
        call = self._call("", context)
        catalog = editor_pb2.Catalog()

        async def optional(what: str, coro):
            try:
                return await coro
            except ServiceError as e:
                catalog.warnings.append(f"{what}: {e.message}")
                return None

        models, default, attributes, boundaries, inversion = await asyncio.gather(
            self.generator.unary("ListModels", generator_pb2.ListModelsRequest(), call),
            self._model(common_pb2.ModelRef(), call),
            optional("scorer", self.scorer.unary("ListAttributes", scorer_pb2.ListAttributesRequest(), call)),
            optional("boundary", self.boundary.unary("ListBoundaries", boundary_pb2.ListBoundariesRequest(), call)),
            optional("inversion", self.inversion.unary("GetInfo", inversion_pb2.GetInversionInfoRequest(), call)))
        # The default model first: clients that name no model get it.
        catalog.models.extend(sorted(models.models, key=lambda m: (m.name != default.name, m.name)))
        if attributes is not None:
            catalog.attributes.extend(attributes.attributes)
        if boundaries is not None:
            catalog.boundaries.extend(boundaries.boundaries)
        if inversion is not None:
            catalog.invertible_models.extend(inversion.models)
        return catalog


async def _encode(raw: common_pb2.Image, fmt: int) -> common_pb2.Image:
    pixels = images.decode(raw, "image", max_pixels=1 << 30)
    if pixels.shape[0] * pixels.shape[1] > 256 * 256:  # big images: keep the event loop free
        return await asyncio.to_thread(images.encode, pixels, fmt)
    return images.encode(pixels, fmt)


def _variant_lost(error: ServiceError, source: Source) -> bool:
    """Whether a generator refused the photo's variant because the store no longer serves it: expired, flushed,
    corrupted or over its size limit (the generator then says "invert the photo again", which re-tuning does)."""
    return (bool(source.variant) and error.code == grpc.StatusCode.FAILED_PRECONDITION
            and source.variant in error.message and "invert the photo again" in error.message)


async def _zip_ordered(chunks, results):
    index = 0
    async for rendered in results:
        yield chunks[index], rendered
        index += 1
