"""Edit specifications, the EditRequest builder, and the typed results of an edit (frames, grids)."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import uuid
from pathlib import Path
from typing import Iterable, Literal, Sequence, Union

import numpy as np
from PIL import Image as PILImage

from interfacegan.v1 import boundary_pb2, common_pb2, editor_pb2, inversion_pb2

from . import codec, defaults
from .grid import make_grid

Output = Literal["numpy", "pil"]
#: The face to edit: a seed (int), a latent code (numpy array), or a photo (path, bytes, PIL image).
Source = Union[int, np.ndarray, str, Path, bytes, PILImage.Image]

MODES = {"relative": boundary_pb2.DISTANCE_MODE_RELATIVE, "absolute": boundary_pb2.DISTANCE_MODE_ABSOLUTE}
#: The edit grammar, shown by `ifgan edit --help` and in parse errors.
GRAMMAR = ("ATTR[:START:END[:STEPS]] | ATTR:DISTANCE | ATTR:+CHANGE UNIT | ATTR:to=VALUE, then options "
           "[:hold=A+B|auto][:tol=T][:max=D][:rounds=N][:mode=absolute][:version=N][:layers=FIRST-END]. "
           "Units (y years, deg degrees, p probability, r ratio) make a target edit: the editor finds the "
           "distance with the scorer, e.g. age:+10y, age:to=70, yaw:to=20, smile:to=0.8, gender:to=0.9:hold=auto; "
           "plain numbers are distances, e.g. age:-3:3:7, gender:-2:2:5:hold=age, smile:1.5")
#: Which faces of a photo are edited (EditRequest.face_selection); "" = the server's default, the largest.
FACE_SELECTIONS = {"": inversion_pb2.FACE_SELECTION_UNSPECIFIED, "largest": inversion_pb2.FACE_SELECTION_LARGEST,
                   "all": inversion_pb2.FACE_SELECTION_ALL, "indices": inversion_pb2.FACE_SELECTION_INDICES}
_WITH_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*([^\d\s.+-][^\s]*)?\s*$", re.I)


def _number(text: str) -> tuple[float, str]:
    """'+10y' -> (10.0, 'years'); '0.8' -> (0.8, ''). Raises ValueError for other text or unknown units."""
    m = _WITH_UNIT.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a number")
    suffix = (m.group(2) or "").lower()
    if suffix and suffix not in defaults.UNIT_SUFFIXES:
        raise ValueError(f"unknown unit {m.group(2)!r} (accepted: {', '.join(sorted(set(defaults.UNIT_SUFFIXES)))})")
    return float(m.group(1)), defaults.UNIT_SUFFIXES.get(suffix, "")


@dataclasses.dataclass(frozen=True)
class EditSpec:
    """One attribute edit: move along `attribute`'s boundary through `steps` distances from `start` to `end`.

    Attributes:
        attribute: Boundary to follow, e.g. "age".
        start / end: First and last distance (relative offsets, or signed distances from the hyperplane).
        steps: Number of distances, 1 .. 256, np.linspace(start, end, steps) as the reference (1 gives `start`).
        mode: "relative" (code + t n) or "absolute" (the reference's code + (t - code . n) n).
        hold: Attributes kept fixed (the boundary is projected off theirs: a conditional boundary).
        version: Boundary version; 0 = newest.
        layers: W+ only: (first, end) layers to edit.
        delta / to: A target edit (at most one): change the attribute by `delta`, or bring it to `to`, in its own
            unit; the server searches the distance with the scorer and returns one image (steps 1).
        tolerance: Target edits: how close counts (0: the unit's default, interfacegan.defaults.TOLERANCE).
        unit: Target edits: the unit the value is in (checked by the server), e.g. "years"; "" = unchecked.
        max_distance / rounds: Target edits: the search's distance limit and rounds (0: server defaults).
        hold_auto: Hold every other attribute the edit moves by more than its unit's threshold on this face.
    """

    attribute: str
    start: float = defaults.START
    end: float = defaults.END
    steps: int = defaults.STEPS
    mode: str = defaults.MODE
    hold: tuple[str, ...] = ()
    version: int = 0
    layers: tuple[int, int] | None = None
    delta: float | None = None
    to: float | None = None
    tolerance: float = 0.0
    unit: str = ""
    max_distance: float = 0.0
    rounds: int = 0
    hold_auto: bool = False

    def __post_init__(self):
        if not self.attribute:
            raise ValueError("an edit needs an attribute name, e.g. 'age'")
        if not 1 <= self.steps <= defaults.MAX_STEPS:
            raise ValueError(f"steps {self.steps}: accepted 1 .. {defaults.MAX_STEPS}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: accepted {', '.join(MODES)}")
        if not (math.isfinite(self.start) and math.isfinite(self.end)):
            raise ValueError("start and end must be finite numbers")
        object.__setattr__(self, "hold", tuple(self.hold))
        if self.delta is not None and self.to is not None:
            raise ValueError("give delta or to, not both")
        if self.is_target:
            if not math.isfinite(self.target_value):
                raise ValueError("a target value must be a finite number")
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "start", 0.0)
            object.__setattr__(self, "end", 0.0)
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0 and self.max_distance >= 0
                and 0 <= self.rounds <= defaults.MAX_TARGET_ROUNDS):
            raise ValueError(f"tolerance and max_distance must be >= 0 and rounds within 0 .. "
                             f"{defaults.MAX_TARGET_ROUNDS}")

    @property
    def is_target(self) -> bool:
        """A target edit (delta or to) rather than distances."""
        return self.delta is not None or self.to is not None

    @property
    def target_value(self) -> float:
        return self.delta if self.delta is not None else self.to

    @property
    def label(self) -> str:
        """Short name for files and captions, e.g. 'gender', 'gender|age', 'age+10' or 'gender@0.9|auto'."""
        head = self.attribute
        if self.delta is not None:
            head += f"{self.delta:+g}"
        elif self.to is not None:
            head += f"@{self.to:g}"
        return "|".join((head, *self.hold, *(("auto",) if self.hold_auto else ())))

    @property
    def distances(self) -> np.ndarray:
        return defaults.distances(self.start, self.end, self.steps)

    @classmethod
    def parse(cls, text: str) -> "EditSpec":
        """Parses the edit grammar (GRAMMAR): distances, or a target in the attribute's unit.

        Keys: hold=age+yaw (or auto), to=VALUE, delta=CHANGE, tol=T, max=D, rounds=N, unit=years,
        mode=absolute|relative, version=N, layers=FIRST-END.
        Examples: "age" (-3..3, 10 steps), "age:2", "gender:-3:3:5:hold=age", "smile:-2:2:9:mode=absolute",
        "age:+10y", "age:to=70", "yaw:to=20", "smile:to=0.8", "gender:to=0.9:hold=auto".
        """
        head, *rest = text.strip().split(":")
        numbers, options = [], {}
        for part in rest:
            if "=" in part:
                key, _, value = part.partition("=")
                options[key.strip().lower()] = value.strip()
            else:
                numbers.append(part)
        kwargs: dict = {}
        try:
            if len(numbers) == 1 and _number(numbers[0])[1]:
                kwargs["delta"], kwargs["unit"] = _number(numbers[0])
            elif len(numbers) == 1:
                kwargs.update(start=float(numbers[0]), end=float(numbers[0]), steps=1)
            elif len(numbers) in (2, 3):
                kwargs.update(start=float(numbers[0]), end=float(numbers[1]))
                if len(numbers) == 3:
                    kwargs["steps"] = int(numbers[2])
            elif numbers:
                raise ValueError("too many numbers")
            for key, value in options.items():
                if key == "hold":
                    names = [h for h in value.replace(",", "+").split("+") if h]
                    kwargs["hold_auto"] = "auto" in names
                    kwargs["hold"] = tuple(h for h in names if h != "auto")
                elif key in ("to", "delta"):
                    kwargs[key], unit = _number(value)
                    if unit:
                        kwargs["unit"] = unit
                elif key in ("tol", "tolerance"):
                    kwargs["tolerance"] = _number(value)[0]
                elif key == "max":
                    kwargs["max_distance"] = float(value)
                elif key == "rounds":
                    kwargs["rounds"] = int(value)
                elif key == "unit":
                    kwargs["unit"] = defaults.UNIT_SUFFIXES.get(value.lower(), value)
                elif key == "mode":
                    kwargs["mode"] = value.lower()
                elif key == "version":
                    kwargs["version"] = int(value)
                elif key == "layers":
                    lo, _, hi = value.partition("-")
                    kwargs["layers"] = (int(lo), int(hi or 0))
                else:
                    raise ValueError(f"unknown key {key!r}")
            return cls(head.strip(), **kwargs)
        except ValueError as e:
            raise ValueError(f"edit {text!r}: {e}; expected {GRAMMAR}") from None

    def to_proto(self) -> editor_pb2.AttributeEdit:
        lo, hi = self.layers or (0, 0)
        edit = editor_pb2.AttributeEdit(attribute=self.attribute, boundary_version=self.version, hold=list(self.hold),
                                        layer_start=lo, layer_end=hi, hold_auto=self.hold_auto)
        if self.is_target:
            if self.delta is not None:
                edit.delta = self.delta
            else:
                edit.to = self.to
            edit.tolerance, edit.unit, edit.max_distance, edit.max_rounds = (self.tolerance, self.unit,
                                                                             self.max_distance, self.rounds)
        else:
            edit.mode, edit.start, edit.end, edit.steps = MODES[self.mode], self.start, self.end, self.steps
        return edit


EditLike = Union[EditSpec, str]


def edit_specs(edits: Iterable[EditLike] | EditLike) -> list[EditSpec]:
    if isinstance(edits, (str, EditSpec)):
        edits = [edits]
    out = [e if isinstance(e, EditSpec) else EditSpec.parse(e) for e in edits]
    if not out:
        raise ValueError("give at least one edit, e.g. 'age' or EditSpec('age', -3, 3, 7)")
    return out


def new_request_id() -> str:
    return uuid.uuid4().hex


def face_selection_of(face_selection: str | None, face_indices: Sequence[int] = ()) -> tuple[int, list[int]]:
    """('all', ()) -> (FACE_SELECTION_ALL, []); indices alone select those faces (numbered largest first).

    Raises:
        ValueError: An unknown selection, indices with "largest" or "all", "indices" without any, or a
            negative index.
    """
    name = (face_selection or "").strip().lower()
    if name not in FACE_SELECTIONS:
        raise ValueError(f"face_selection {face_selection!r}; accepted: largest, all, indices (or empty: the largest)")
    indices = [int(i) for i in face_indices]
    if any(i < 0 for i in indices):
        raise ValueError(f"face_indices {indices}: faces are numbered 0, 1, ... (largest first)")
    if indices and name in ("largest", "all"):
        raise ValueError(f"face_indices {indices} with face_selection {name!r}: give the indices alone (or "
                         f"face_selection 'indices')")
    if name == "indices" and not indices:
        raise ValueError("face_selection 'indices' needs face_indices, e.g. [0, 2] (faces numbered largest first)")
    return FACE_SELECTIONS["indices" if indices else name], indices


def parse_face_indices(text: str) -> list[int]:
    """'0,2' -> [0, 2] (the form the CLI takes)."""
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"face indices {text!r}: give numbers separated by commas, e.g. 0,2") from None


def build_edit_request(source: Source, edits: Iterable[EditLike] | EditLike, *, model: str = "",
                       model_version: str = "", space: str | int | None = None, rescore: bool = False,
                       include_original: bool = False, blend: bool = False, include_face: bool = False,
                       inversion_steps: int = 0, image_format: str = "png", face_selection: str | None = None,
                       face_indices: Sequence[int] = (), skip_tuning: bool = False, paste_whole_face: bool = False,
                       change_smoothing: float | None = None, request_id: str | None = None
                       ) -> editor_pb2.EditRequest:
    """The EditRequest for a seed (int), a code (array) or a photo (path, bytes, PIL image, uint8 array).

    A numpy array is a latent code when it is floating point and a photo when it is uint8. The photo options
    (face_selection, face_indices, skip_tuning, paste_whole_face, change_smoothing) are refused for seeds and
    codes; change_smoothing None leaves the server's default.
    """
    specs = edit_specs(edits)
    selection, indices = face_selection_of(face_selection, face_indices)
    request = editor_pb2.EditRequest(
        request_id=request_id or new_request_id(), model=common_pb2.ModelRef(name=model, version=model_version),
        space=codec.space_of(space), edits=[s.to_proto() for s in specs], rescore=rescore,
        format=codec.FORMATS[image_format.lower()], blend_into_photo=blend, inversion_steps=inversion_steps,
        include_original=include_original, include_face=include_face, face_selection=selection,
        face_indices=indices, skip_tuning=skip_tuning, paste_whole_face=paste_whole_face)
    if change_smoothing is not None:
        request.change_smoothing = float(change_smoothing)
    if isinstance(source, (bool, np.bool_)):
        raise TypeError("source must be a seed, a latent code or a photo, not a bool")
    if isinstance(source, (int, np.integer)):
        if source < 0:
            raise ValueError(f"seed {source} must be >= 0")
        request.seed = int(source)
    elif isinstance(source, np.ndarray) and source.dtype != np.uint8:
        request.code.CopyFrom(codec.latents(source, space))
    else:
        request.photo.CopyFrom(codec.image_message(source))
    if request.WhichOneof("source") != "photo":
        options = {"face_selection": selection, "face_indices": indices, "skip_tuning": skip_tuning,
                   "paste_whole_face": paste_whole_face, "change_smoothing": change_smoothing is not None}
        given = [name for name, value in options.items() if value]
        if given:
            raise ValueError(f"{', '.join(given)}: photo options; a seed or a code has no photo")
    return request


@dataclasses.dataclass
class EditFrame:
    """One streamed result: the image at one (edit, step), or the original (edit_index -1).

    Attributes:
        edit_index / step_index / distance: Where the frame sits in the request.
        image: The edited image (numpy (H, W, 3) uint8 or PIL, as asked); the blended photo for photos with blend.
        code: The edited latent code, (1, d) or (1, L, d).
        scores: Attribute -> value, when `rescore` was asked; None where the scorer found no valid value.
        boundary: The boundary used, e.g. "gender|age v1".
        face: Photos with blend and include_face: the edited face crop.
        done / total: Progress of the whole call.
        message: The EditResponse itself.
    """

    edit_index: int
    step_index: int
    distance: float
    image: np.ndarray | PILImage.Image
    code: np.ndarray | None
    scores: dict[str, float | None]
    boundary: str
    face: np.ndarray | PILImage.Image | None
    done: int
    total: int
    message: editor_pb2.EditResponse = dataclasses.field(repr=False)

    @property
    def target(self) -> editor_pb2.TargetOutcome | None:
        """Target edits: distance used, value before/after, goal, tolerance, met, rounds (else None)."""
        return self.message.target if self.message.HasField("target") else None

    @property
    def receipt(self) -> editor_pb2.EditReceipt | None:
        """What produced the image; `receipt.replay` is a request that renders it again."""
        return self.message.receipt if self.message.HasField("receipt") else None

    @property
    def holds(self) -> list[editor_pb2.HoldDrift]:
        """hold=auto: each attribute measured, its drift before and after holding, and whether it was held."""
        return list(self.message.holds)

    @property
    def identity_distance(self) -> float | None:
        """Identity distance between the source face and this result's (under SAME_PERSON: the same person);
        photos: the largest edited face's; None when it was not measured."""
        d = self.message.identity_distance
        return d if d >= 0 else None

    @property
    def faces(self) -> list[editor_pb2.EditedFace]:
        """Photos: every edited face with its box (x, y, width, height), reconstruction PSNR and identity
        distance on this image."""
        return list(self.message.faces)

    @classmethod
    def of(cls, m: editor_pb2.EditResponse, output: Output = "numpy") -> "EditFrame":
        def img(image):
            a = codec.image_array(image)
            return PILImage.fromarray(a) if output == "pil" else a
        boundary = f"{m.boundary.attribute} v{m.boundary.version}" if m.boundary.attribute else ""
        return cls(edit_index=m.edit_index, step_index=m.step_index, distance=m.distance, image=img(m.image),
                   code=codec.array(m.code.codes) if m.code.HasField("codes") else None,
                   scores={s.attribute: (s.value if s.valid else None) for s in m.scores}, boundary=boundary,
                   face=img(m.face) if m.HasField("face") else None, done=m.progress.done, total=m.progress.total,
                   message=m)


@dataclasses.dataclass
class EditResult:
    """Every frame of one Edit call, with accessors by edit.

    Attributes:
        specs: The edits asked for, in request order.
        frames: Frames in arrival (= request) order, the original first when asked.
        request_id: The id the server ran the call under.
        warnings: Notes about the source (e.g. several faces in a photo).
        inversion_psnr: Photos: reconstruction PSNR of the inverted code, dB.
        source_photo: Photos: the photo as sent (`photo` decodes it).
    """

    specs: list[EditSpec]
    frames: list[EditFrame]
    request_id: str = ""
    warnings: list[str] = dataclasses.field(default_factory=list)
    inversion_psnr: float = 0.0
    source_photo: common_pb2.Image | None = dataclasses.field(default=None, repr=False)

    @property
    def original(self) -> EditFrame | None:
        """The unedited frame (edit_index -1), when it was asked for. For a photo blended in "change" mode it is
        the input photo itself; `photo` and `reconstruction` tell the input and the reconstruction apart."""
        return next((f for f in self.frames if f.edit_index == -1), None)

    @functools.cached_property
    def photo(self) -> np.ndarray | None:
        """Photos: the real input, (H, W, 3) uint8, upright as the server reads it (EXIF orientation); None for
        seeds and codes."""
        return None if self.source_photo is None else codec.photo_array(self.source_photo)

    @property
    def reconstruction(self) -> np.ndarray | PILImage.Image | None:
        """The unedited face as the generator renders it: for seeds and codes the original frame; for photos
        the whole-face paste of the reconstruction, the largest face's render when the change was pasted (it
        needs `include_face`: the pasted change of an unedited face is nothing), or the render unblended.
        None when the call returned no original."""
        original = self.original
        if original is None:
            return None
        if self.source_photo is not None and original.message.blend_mode == "change":
            return original.face
        return original.image

    @property
    def reconstructions(self) -> dict[int, np.ndarray]:
        """Photos with blend and `include_face`: every edited face's reconstruction (the generator's render of its
        inverted code, in its aligned crop's framing) by face index, largest face first; else {}."""
        original = self.original
        if original is None or self.source_photo is None:
            return {}
        return {f.index: codec.image_array(f.face) for f in original.message.faces if f.HasField("face")}

    @property
    def other_reconstructions(self) -> dict[int, np.ndarray]:
        """`reconstructions` but the largest face's (that one is `reconstruction`), for writing them apart."""
        largest = self.faces[0].index if self.faces else None
        return {i: face for i, face in self.reconstructions.items() if i != largest}

    @property
    def faces(self) -> list[editor_pb2.EditedFace]:
        """Photos: the edited faces (index, box, reconstruction PSNR), as the first frame lists them."""
        return self.frames[0].faces if self.frames else []

    def edit(self, index: int) -> list[EditFrame]:
        """The frames of edit `index`, by step."""
        return sorted((f for f in self.frames if f.edit_index == index), key=lambda f: f.step_index)

    def images(self, index: int = 0) -> list:
        return [f.image for f in self.edit(index)]

    def grid(self, *, scale: int = 2, labels: bool = True, score: str | None = None,
             identity: bool = False) -> PILImage.Image:
        """One row per edit, one column per step. Photos start with the real input ("original") and the
        reconstruction, each fitted into the tiles' size; seeds and codes with their unedited render.

        Args:
            scale: Nearest-neighbour upscaling of each tile (64 px faces are small).
            labels: Write the edit and distance captions.
            score: Attribute whose re-scored value is written under each tile (needs `rescore`).
            identity: Write each edited image's identity distance under it ("id 0.31").
        """
        edited = [f for f in self.frames if f.edit_index >= 0]
        size = np.asarray((edited or self.frames)[0].image).shape[:2] if self.frames else None
        lead, lead_caps, lead_frames = [], [], []
        original = self.original
        if self.source_photo is not None:
            lead.append(_fit(self.photo, size))
            lead_caps.append("original")
            lead_frames.append(None)
            if self.reconstruction is not None:
                lead.append(_fit(np.asarray(self.reconstruction), size))
                lead_caps.append("reconstruction")
                lead_frames.append(original)
        elif original is not None:
            lead.append(np.asarray(original.image))
            lead_caps.append("original")
            lead_frames.append(original)
        rows, row_labels, captions = [], [], []
        for i, spec in enumerate(self.specs):
            frames = self.edit(i)
            tiles = lead + [np.asarray(f.image) for f in frames]
            caps = lead_caps + [f"{f.distance:+.1f}" for f in frames]
            all_frames = lead_frames + frames
            if score:
                caps = [f"{c} {_fmt(f.scores.get(score))}" if f is not None else c for c, f in zip(caps, all_frames)]
            if identity:
                caps = [f"{c} id {f.identity_distance:.2f}" if f is not None and f.edit_index >= 0
                        and f.identity_distance is not None else c for c, f in zip(caps, all_frames)]
            rows.append(tiles)
            row_labels.append(spec.label)
            captions.append(caps)
        return make_grid(rows, row_labels=row_labels if labels else None,
                         captions=captions if labels else None, scale=scale)


def _fit(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """`image` scaled to fit within `size` (height, width), its aspect kept: one grid shows a large photo beside
    64 px face renders."""
    image = np.asarray(image, dtype=np.uint8)
    if size is None or image.shape[:2] == tuple(size):
        return image
    h, w = image.shape[:2]
    k = min(size[0] / h, size[1] / w)
    pil = PILImage.fromarray(image).resize((max(1, round(w * k)), max(1, round(h * k))), PILImage.LANCZOS)
    return np.asarray(pil)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def collect(specs: Sequence[EditSpec], frames: Iterable[EditFrame],
            request: editor_pb2.EditRequest | None = None) -> EditResult:
    """The EditResult of a call's frames; `request` (its source photo) lets the result show the real input."""
    result = EditResult(list(specs), [])
    if request is not None and request.WhichOneof("source") == "photo":
        result.source_photo = request.photo
    for f in frames:
        if not result.frames:
            result.request_id = f.message.request_id
            result.warnings = list(f.message.warnings)
            result.inversion_psnr = f.message.inversion_psnr
        result.frames.append(f)
    return result
