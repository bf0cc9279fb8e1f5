"""What the page edits: faces (seeds; photos inverted once, kept by content hash), the codes of slider combinations,
and the editor calls that render them."""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import logging
import math
import secrets
import time
import uuid
from typing import Any

from google.protobuf import json_format
import grpc

from interfacegan.codec import SPACE_NAMES
from interfacegan.v1 import common_pb2, editor_pb2, inversion_pb2
from services.common.errors import ServiceError, failed_precondition, invalid_argument, not_found
from services.common.upstream import CallContext, Upstream

log = logging.getLogger(__name__)

SPACES = {name: space for space, name in SPACE_NAMES.items()}  # "Z" -> LATENT_SPACE_Z, "W+" -> LATENT_SPACE_WP
#: Boundary spaces whose boundaries edit codes of a space, as the editor picks them (W boundaries edit W+ codes).
BOUNDARY_SPACES = {"Z": ("Z",), "W": ("W",), "W+": ("W", "W+")}
#: EditResponse fields the page shows in places of their own. Any other field a response carries (an identity
#: distance, an edit receipt, units...) is passed on under `extras` and listed beside the image.
SHOWN = {"edit_index", "step_index", "distance", "image", "code", "scores", "progress", "boundary", "request_id",
         "warnings", "inversion_psnr", "face"}
MAX_NAME_CHARS = 128
MAX_SLIDERS = 64
MAX_HOLD = 16
MAX_SEED = 2**63 - 1
MAX_FACE_INDEX = 63  # the inversion service says how many faces it found and how many it accepts
#: Slider half-ranges and steps in an attribute's own unit (the units toggle): the editor finds the distance.
UNIT_SLIDERS = {"years": (20.0, 1.0), "degrees": (30.0, 1.0), "probability": (0.5, 0.01), "ratio": (0.2, 0.005)}


@dataclasses.dataclass(frozen=True)
class Move:
    """One slider's edit: `attribute` moved by `value` (a distance along the normal, or with `unit` a change in
    the attribute's unit that the editor's search turns into a distance), holding others, on W+ layers."""

    attribute: str
    value: float
    hold: tuple[str, ...] = ()
    layer_start: int = 0
    layer_end: int = 0
    unit: str = ""  # "" = `value` is a distance
    hold_auto: bool = False

    def message(self, start: float | None = None, end: float | None = None, steps: int = 1) -> editor_pb2.AttributeEdit:
        edit = editor_pb2.AttributeEdit(attribute=self.attribute, hold=list(self.hold), layer_start=self.layer_start,
                                        layer_end=self.layer_end, hold_auto=self.hold_auto)
        if self.unit and start is None:
            edit.delta, edit.unit, edit.steps = self.value, self.unit, 1
        else:
            edit.start = self.value if start is None else start
            edit.end = self.value if end is None else end
            edit.steps = steps
        return edit


@dataclasses.dataclass
class Source:
    """A face the page edits: its code in one model's space, its unedited render and scores."""

    key: tuple  # ("seed", model, space, seed) or ("photo", model, space, sha256)
    model: common_pb2.ModelRef
    space: str
    code: common_pb2.LatentBatch
    image: str  # data: URL of the unedited render (for a photo: the inverted face)
    scores: list[dict]
    details: dict
    variant: str = ""  # a photo's tuned generator variant: every render of its code uses it

    def public(self) -> dict:
        kind, model, space, ident = self.key
        return {"source": {kind: ident}, "model": model, "space": space, "image": self.image, "scores": self.scores,
                **self.details}


class LRU(collections.OrderedDict):
    """A dict that keeps its `limit` most recently used entries."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def get(self, key, default=None):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def data_url(image: common_pb2.Image) -> str:
    kind = "jpeg" if image.encoded[:2] == b"\xff\xd8" else "png"
    return f"data:image/{kind};base64,{base64.b64encode(image.encoded).decode()}"


def scores_of(reply: editor_pb2.EditResponse) -> list[dict]:
    return [{"attribute": s.attribute, "value": s.value, "valid": s.valid} for s in reply.scores]


def extras_of(reply: editor_pb2.EditResponse, shown: set[str] = SHOWN) -> dict:
    """Fields of a response the page has no place for (e.g. an identity distance), as JSON values."""
    fields = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    fields.get("receipt", {}).pop("replay", None)  # the request that renders it again: the SDK's, not the page's
    return {k: v for k, v in fields.items() if k not in shown}


def text(value: Any, field: str, *, limit: int = MAX_NAME_CHARS) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise invalid_argument(field, f"must be a non-empty string of at most {limit} characters")
    return value


def number(value: Any, field: str, *, bound: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > bound:
        raise invalid_argument(field, f"{value!r:.40}; accepted: a number within -{bound:g} .. {bound:g}")
    return float(value)


def integer(value: Any, field: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_argument(field, f"{value!r:.40}; accepted: a whole number within {low} .. {high}")
    return value


class Workspace:
    """The page's state and its calls to the editor.

    A slider move is one Edit call: the moved attribute applied to the code of every other slider's setting
    (cached: while one slider is dragged, the others' code is fixed), re-scored. Relative edits add up
    (code + d_a n_a + d_b n_b), so the order in which sliders are applied does not change the face.
    """

    def __init__(self, editor: Upstream, settings):
        self.editor = editor
        self.settings = settings
        self._catalog: tuple[float, editor_pb2.Catalog] | None = None
        self._sources: LRU = LRU(settings.max_sources)
        self._codes: LRU = LRU(settings.max_codes)
        self._inverting: dict[tuple, asyncio.Future] = {}

    # -- editor calls ------------------------------------------------------------------------------------

    def _call(self) -> CallContext:
        timeout = self.settings.call_timeout
        return CallContext(f"studio-{uuid.uuid4().hex[:16]}", time.monotonic() + timeout, timeout)

    async def _edit(self, request: editor_pb2.EditRequest) -> list[editor_pb2.EditResponse]:
        try:
            return await self.editor.collect("Edit", request, self._call())
        except ServiceError as e:
            if request.variant and e.code == grpc.StatusCode.FAILED_PRECONDITION:
                # The photo's tuned variant left the cluster's store (its TTL): forget the photo, so that the
                # upload the message asks for tunes it anew instead of finding the stale entry here.
                for key in [k for k, v in self._sources.items() if v.variant == request.variant]:
                    del self._sources[key]
                raise ServiceError(e.code, f"{e.message}; the studio forgot this photo: upload it again") from None
            raise

    async def catalog(self, *, fresh: bool = False) -> editor_pb2.Catalog:
        now = time.monotonic()
        if fresh or self._catalog is None or now - self._catalog[0] > self.settings.catalog_seconds:
            catalog = await self.editor.unary("GetCatalog", editor_pb2.GetCatalogRequest(), self._call())
            self._catalog = (now, catalog)
        return self._catalog[1]

    # -- what the page shows -----------------------------------------------------------------------------

    async def describe(self, model: str = "", space: str = "", *, fresh: bool = False) -> dict:
        """Models, the chosen model's spaces, one slider per boundary of that space, limits and features."""
        catalog = await self.catalog(fresh=fresh)
        if not catalog.models:
            raise failed_precondition("the editor lists no generator model; is the generator running?")
        info = self._model(catalog, model)
        spaces = {SPACE_NAMES.get(s.space, "?"): list(s.shape) for s in info.latent_spaces}
        _, space, _ = await self._space(info.name, space)
        attributes = {a.name: a for a in catalog.attributes}
        chosen: dict[str, Any] = {}
        for bspace in BOUNDARY_SPACES.get(space, (space,)):
            for b in catalog.boundaries:
                ref = b.ref
                if (ref.model == info.name and SPACE_NAMES.get(ref.space) == bspace and ref.attribute not in chosen
                        and b.origin != "conditional" and "|" not in ref.attribute):
                    chosen[ref.attribute] = b
        r = self.settings.slider_range
        sliders = []
        for name in sorted(chosen):
            b, a = chosen[name], attributes.get(name)
            unit = UNIT_SLIDERS.get(a.unit if a else "")
            sliders.append({"attribute": name, "min": -r, "max": r, "step": 0.05, "unit": "distance",
                            "unit_range": {"min": -unit[0], "max": unit[0], "step": unit[1]} if unit else None,
                            "space": SPACE_NAMES.get(b.ref.space, "?"),
                            "scored": a is not None, "score_unit": a.unit if a else "",
                            "description": a.description if a else "",
                            "boundary": json_format.MessageToDict(b, preserving_proto_field_name=True)})
        invertible = {m.model.name for m in catalog.invertible_models}
        s = self.settings
        return {
            "models": [{"name": m.name, "version": m.version, "architecture": m.architecture,
                        "resolution": m.resolution, "invertible": m.name in invertible} for m in catalog.models],
            "model": info.name, "spaces": spaces, "space": space,
            "layers": spaces[space][0] if len(spaces[space]) == 2 else 0,
            "sliders": sliders,
            "attributes": [{"name": a.name, "unit": a.unit, "min": a.min_value, "max": a.max_value,
                            "description": a.description} for a in catalog.attributes],
            "warnings": list(catalog.warnings),
            "limits": {"max_upload_bytes": s.max_upload_bytes, "max_upload_pixels": s.max_upload_pixels,
                       "max_grid_steps": s.max_grid_steps, "max_distance": s.max_distance},
        }

    @staticmethod
    def _model(catalog: editor_pb2.Catalog, name: Any):
        if name and not isinstance(name, str):
            raise invalid_argument("model", "must be a model name (GetCatalog lists them), or empty for the default")
        if not name:
            return catalog.models[0]  # the default model comes first
        for m in catalog.models:
            if m.name == name:
                return m
        raise not_found(f"model {name!r:.80} is not served; served: {', '.join(m.name for m in catalog.models)}")

    async def _space(self, model: str, space: str) -> tuple[common_pb2.ModelRef, str, int]:
        """The model's ref, the space's name and its number of W+ layers (0 for (1, d) spaces)."""
        info = self._model(await self.catalog(), model)
        if space and not isinstance(space, str):
            raise invalid_argument("space", "must be the name of a latent space: Z, W or W+")
        shapes = {SPACE_NAMES.get(s.space, "?"): list(s.shape) for s in info.latent_spaces}
        space = space or next(iter(shapes), "Z")
        if space not in shapes:
            raise invalid_argument("space", f"{space!r:.40}; model {info.name} has: {', '.join(shapes)}")
        layers = shapes[space][0] if len(shapes[space]) == 2 else 0
        return common_pb2.ModelRef(name=info.name, version=info.version), space, layers

    # -- sources -----------------------------------------------------------------------------------------

    async def seed(self, model: str, space: str, seed: int | None) -> Source:
        """The face of a seed (None: a random one): its code, render and scores."""
        ref, space, _ = await self._space(model, space)
        seed = secrets.randbelow(2**31) if seed is None else integer(seed, "seed", low=0, high=MAX_SEED)
        key = ("seed", ref.name, space, seed)
        source = self._sources.get(key)
        if source is None:
            (reply,) = await self._edit(editor_pb2.EditRequest(
                model=ref, space=SPACES[space], seed=seed, include_original=True, rescore=True,
                format=common_pb2.IMAGE_FORMAT_PNG))
            source = Source(key, ref, space, reply.code, data_url(reply.image), scores_of(reply),
                            {"seed": seed, "extras": extras_of(reply)})
            self._sources.put(key, source)
        return source

    async def photo(self, model: str, space: str, data: bytes, face: int = 0) -> Source:
        """One face of a photo (0: the largest, then by size), inverted once; the same bytes and face again (by
        sha256) reuse it."""
        ref, space, _ = await self._space(model, space)
        face = integer(face, "face", low=0, high=MAX_FACE_INDEX)
        digest = hashlib.sha256(data).hexdigest()
        key = ("photo", ref.name, space, digest if face == 0 else f"{digest}:{face}")
        source = self._sources.get(key)
        if source is not None:
            return source
        pending = self._inverting.get(key)
        if pending is None:  # a second upload of the same photo waits for the first inversion
            pending = self._inverting[key] = asyncio.ensure_future(self._invert(key, ref, space, data, face))
            pending.add_done_callback(lambda _: self._inverting.pop(key, None))
        return await asyncio.shield(pending)

    async def _invert(self, key: tuple, ref: common_pb2.ModelRef, space: str, data: bytes, face: int) -> Source:
        started = time.monotonic()
        # The photo is inverted and its generator tuned once; the page then edits the code, and every render of
        # it names the tuned variant, so each slider move costs one synthesize + score and keeps the person.
        request = editor_pb2.EditRequest(
            model=ref, space=SPACES[space], photo=common_pb2.Image(encoded=data), include_original=True,
            rescore=True, format=common_pb2.IMAGE_FORMAT_PNG)
        if face:
            request.face_selection = inversion_pb2.FACE_SELECTION_INDICES
            request.face_indices.append(face)
        replies = await self._edit(request)
        reply = replies[0]
        details = {"photo": key[3], "face": face, "psnr": reply.inversion_psnr, "warnings": list(reply.warnings),
                   "extras": extras_of(reply), "inversion_seconds": round(time.monotonic() - started, 3)}
        details["variant"] = reply.variant
        source = Source(key, ref, space, reply.code, data_url(reply.image), scores_of(reply), details,
                        variant=reply.variant)
        self._sources.put(key, source)
        for stale in [k for k in self._codes if k[0] == key]:  # codes derived from a forgotten inversion
            del self._codes[stale]
        log.info("photo inverted", extra={"sha256": key[3][:16], "psnr": round(reply.inversion_psnr, 2),
                                          "seconds": details["inversion_seconds"]})
        return source

    async def source(self, body: dict) -> Source:
        """The source a request names: {"seed": n} (rendered again when forgotten) or {"photo": sha256}."""
        model, space = body.get("model", ""), body.get("space", "")
        given = body.get("source")
        if not isinstance(given, dict) or len(given) != 1 or not {"seed", "photo"} & set(given):
            raise invalid_argument("source", 'accepted: {"seed": N} or {"photo": the id /api/photo answered}')
        if "seed" in given:
            return await self.seed(model, space, given["seed"])
        digest = text(given["photo"], "source.photo", limit=70)
        ref, space, _ = await self._space(model, space)
        source = self._sources.get(("photo", ref.name, space, digest))
        if source is None:
            raise failed_precondition("the photo is no longer in the studio's memory (it keeps the "
                                      f"{self.settings.max_sources} most recent faces); upload it again")
        return source

    # -- edits -------------------------------------------------------------------------------------------

    def _moves(self, body: dict, layers: int, catalog: editor_pb2.Catalog) -> tuple[dict[str, Move], tuple[str, ...],
                                                                                  tuple[int, int]]:
        """The sliders' moves (attribute -> Move), the held attributes and the W+ layer range of a request."""
        values = body.get("values", {})
        if not isinstance(values, dict) or len(values) > MAX_SLIDERS:
            raise invalid_argument("values", f'accepted: an object {{"attribute": distance, ...}} of at most '
                                             f'{MAX_SLIDERS} sliders')
        hold = body.get("hold", [])
        if not isinstance(hold, list) or len(hold) > MAX_HOLD:
            raise invalid_argument("hold", f"accepted: a list of at most {MAX_HOLD} attribute names")
        held = tuple(sorted({text(h, "hold[]") for h in hold}))
        hold_auto, units = body.get("hold_auto", False), body.get("units", False)
        if not isinstance(hold_auto, bool) or not isinstance(units, bool):
            raise invalid_argument("hold_auto", "hold_auto and units must be true or false")
        start = integer(body.get("layer_start", 0), "layer_start", low=0, high=max(layers - 1, 0))
        end = integer(body.get("layer_end", 0), "layer_end", low=0, high=layers)
        if end and end <= start:
            raise invalid_argument("layer_end", f"{end} must be above layer_start {start} (0 = to the last layer)")
        scored = {a.name: a.unit for a in catalog.attributes}  # what the editor's searches and auto holds measure
        moves = {}
        for name, value in values.items():
            text(name, "values")
            unit = scored[name] if units and scored.get(name) in UNIT_SLIDERS else ""
            bound = 4 * UNIT_SLIDERS[unit][0] if unit else self.settings.max_distance
            moves[name] = Move(name, number(value, f"values.{name}", bound=bound),
                               tuple(h for h in held if h != name), start, end, unit, hold_auto and name in scored)
        return moves, held, (start, end)

    async def _code(self, source: Source, moves: list[Move]) -> common_pb2.LatentBatch:
        """The code of `source` with `moves` applied in order; every prefix is cached."""
        code = source.code
        for i in range(len(moves)):
            key = (source.key, tuple(moves[: i + 1]))
            cached = self._codes.get(key)
            if cached is None:
                (reply,) = await self._edit(editor_pb2.EditRequest(
                    model=source.model, code=code, variant=source.variant, edits=[moves[i].message()],
                    format=common_pb2.IMAGE_FORMAT_RAW))
                cached = reply.code
                self._codes.put(key, cached)
            code = cached
        return code

    def _base(self, moves: dict[str, Move], active: str) -> list[Move]:
        """Every other slider's non-zero move, in a fixed order (the cache key of the code they give)."""
        return [moves[name] for name in sorted(moves) if name != active and moves[name].value != 0]

    async def edit(self, body: dict) -> dict:
        """One slider move: the active attribute applied on top of the other sliders' code, re-scored."""
        source = await self.source(body)
        _, _, layers = await self._space(body.get("model", ""), body.get("space", ""))
        moves, _, _ = self._moves(body, layers, await self.catalog())
        active = text(body.get("active"), "active")
        if active not in moves:
            raise invalid_argument("active", f"{active!r:.40} has no value in `values`; name the moved slider")
        code = await self._code(source, self._base(moves, active))
        started = time.perf_counter()
        (reply,) = await self._edit(editor_pb2.EditRequest(
            model=source.model, code=code, variant=source.variant, edits=[moves[active].message()], rescore=True,
            format=common_pb2.IMAGE_FORMAT_PNG))
        return {"image": data_url(reply.image), "scores": scores_of(reply), "distance": reply.distance,
                "boundary": f"{reply.boundary.attribute} v{reply.boundary.version}", "warnings": list(reply.warnings),
                "extras": extras_of(reply), "editor_ms": round((time.perf_counter() - started) * 1000, 1)}

    async def grid(self, body: dict) -> dict:
        """One attribute over a range of distances, on top of the other sliders' code."""
        source = await self.source(body)
        _, _, layers = await self._space(body.get("model", ""), body.get("space", ""))
        moves, held, (first, last) = self._moves(body, layers, await self.catalog())
        attribute = text(body.get("attribute"), "attribute")
        bound = self.settings.max_distance
        start = number(body.get("start"), "start", bound=bound)
        end = number(body.get("end"), "end", bound=bound)
        steps = integer(body.get("steps"), "steps", low=2, high=self.settings.max_grid_steps)
        code = await self._code(source, self._base(moves, attribute))
        scored = {a.name for a in (await self.catalog()).attributes}
        move = Move(attribute, 0.0, tuple(h for h in held if h != attribute), first, last,
                    hold_auto=body.get("hold_auto") is True and attribute in scored)
        replies = await self._edit(editor_pb2.EditRequest(
            model=source.model, code=code, variant=source.variant, edits=[move.message(start, end, steps)],
            rescore=True, format=common_pb2.IMAGE_FORMAT_PNG))
        return {"attribute": attribute, "frames": [
            {"distance": r.distance, "image": data_url(r.image), "scores": scores_of(r), "extras": extras_of(r)}
            for r in replies]}


def http_status(error: ServiceError) -> int:
    """The HTTP status of an error from the workspace or the editor."""
    return {"INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404, "FAILED_PRECONDITION": 409,
            "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
            "CANCELLED": 499}.get(error.code.name, 502)
