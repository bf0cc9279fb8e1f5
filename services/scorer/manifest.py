"""Model manifests: how an ONNX attribute model's inputs are prepared and its outputs become scores.

Built-in models (age, gender) and users' plug-ins are described by the same manifest format, a small JSON or
YAML file next to the ONNX model. A plug-in folder holds `*.json`/`*.yaml`/`*.yml` manifests, at its top level
or one folder deep (`<folder>/<anything>/manifest.yaml`). Example::

    name: smile-cnn                 # model group name (default: the manifest's file stem)
    model: smile.onnx               # ONNX file, relative to the manifest
    description: CelebA smile classifier
    input:
      size: 64                      # or [height, width]
      aligned: true                 # dlib 5-point face chip (padding 0.2); false: whole image, letterboxed
      views: 1                      # aligned chips read and averaged per face (1 .. 16: shifted, mirrored)
      color: RGB                    # or BGR
      layout: NCHW                  # or NHWC
      scale: 0.00392156862745098    # x = (byte * scale - mean) / std, per channel
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
    runtime:                        # ONNX Runtime session settings (all optional)
      providers: [CUDAExecutionProvider, CPUExecutionProvider]
      graph_optimization_level: all # disable | basic | extended | all
      intra_op_num_threads: 0       # 0: ONNX Runtime's default
      allow_spinning: false         # idle ONNX Runtime threads spin (lower latency, CPU burnt); default off
      max_batch_size: 64
    attributes:
      - name: smiling
        kind: probability           # probability | expectation | regression
        output: 0                   # output name or position (default 0)
        index: 1                    # column of the output row
        activation: softmax         # none | softmax | sigmoid, applied to the output row first
        unit: probability
        range: [0, 1]
        description: probability that the face smiles

`kind: expectation` takes `weights` (one per output column: value = sum_k p_k w_k); `kind: regression` takes
`index`, `scale` and `offset` (value = raw[index] * scale + offset).

Check a folder before deploying it: `python -m services.scorer.check DIR`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")
KINDS = ("probability", "expectation", "regression")
ACTIVATIONS = ("none", "softmax", "sigmoid")
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
MAX_INPUT_SIDE = 1024
MAX_VIEWS = 16  # test-time views of an aligned chip (engine.VIEWS)


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the field and what is accepted."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input tensor."""

    height: int
    width: int
    aligned: bool = True
    padding: float = 0.2
    color: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    name: str = ""
    views: int = 1

    @property
    def chip_key(self) -> tuple:
        """Models sharing this key share one prepared uint8 image (or set of views) per face."""
        return ("chip", self.height, self.padding, self.views) if self.aligned else ("box", self.height, self.width)


@dataclasses.dataclass(frozen=True)
class AttributeSpec:
    """How one attribute's value is read from a model's output."""

    name: str
    kind: str
    unit: str
    min_value: float
    max_value: float
    description: str = ""
    output: str | int = 0
    index: int = 0
    activation: str = "none"
    weights: tuple[float, ...] = ()
    scale: float = 1.0
    offset: float = 0.0


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    """ONNX Runtime session settings."""

    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    graph_optimization_level: str = "ORT_ENABLE_ALL"
    intra_op_num_threads: int = 0
    inter_op_num_threads: int = 0
    max_batch_size: int = 64
    allow_spinning: bool = False


@dataclasses.dataclass(frozen=True)
class ModelManifest:
    """One ONNX model and the attributes it scores."""

    group: str
    model_path: Path
    input: InputSpec
    attributes: tuple[AttributeSpec, ...]
    runtime: RuntimeSpec
    description: str = ""
    plugin: bool = False
    origin: str = ""

    @property
    def source(self) -> str:
        """File name and sha256 prefix, as ListAttributes reports it."""
        return f"{self.model_path.name} sha256:{sha256_prefix(self.model_path)}"


_SHA_CACHE: dict[Path, str] = {}


def sha256_prefix(path: Path) -> str:
    if path not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[path] = digest.hexdigest()[:12]
    return _SHA_CACHE[path]


def read_document(path: Path) -> dict:
    """Parses a JSON or YAML manifest file into a dict."""
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from None
    else:
        try:
            import yaml
        except ImportError:  # pragma: no cover - pyyaml is a dependency
            raise ManifestError(f"{path}: YAML manifests need PyYAML; install it or use JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ManifestError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the manifest must be a mapping (JSON object), got {type(data).__name__}")
    return data


def parse(data: dict, origin: Path, *, model_path: Path | None = None, plugin: bool = True) -> ModelManifest:
    """Validates a manifest document; `model_path` overrides its `model` field (built-in assets)."""
    where = str(origin)
    _known(data, {"name", "model", "asset", "description", "input", "runtime", "attributes", "attribute",
                  "schema_version"}, where)
    group = data.get("name", origin.stem if origin.stem != "manifest" else origin.parent.name)
    _check_name(group, f"{where}: name")
    if model_path is None:
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise ManifestError(f"{where}: model: missing; give the ONNX file name, relative to the manifest")
        model_path = (origin.parent / model).resolve()
        if not model_path.is_file():
            raise ManifestError(f"{where}: model: {model_path} does not exist")
    inp = _input(_mapping(data, "input", where), f"{where}: input")
    runtime = _runtime(data.get("runtime") or {}, f"{where}: runtime")
    raw_attrs = data.get("attributes")
    if raw_attrs is None and "attribute" in data:
        raw_attrs = [data["attribute"]]
    if not isinstance(raw_attrs, list) or not raw_attrs:
        raise ManifestError(f"{where}: attributes: give a non-empty list of attributes (or one `attribute` mapping)")
    attrs = tuple(_attribute(a, f"{where}: attributes[{i}]") for i, a in enumerate(raw_attrs))
    names = [a.name for a in attrs]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: attributes: names repeat ({names}); each must be unique")
    return ModelManifest(group=group, model_path=model_path, input=inp, attributes=attrs, runtime=runtime,
                         description=str(data.get("description", "")), plugin=plugin, origin=where)


def load(path: Path, *, plugin: bool = True) -> ModelManifest:
    return parse(read_document(path), path, plugin=plugin)


def discover(folder: Path) -> list[Path]:
    """Manifest files in a plug-in folder: top level and one folder deep, sorted."""
    if not folder.is_dir():
        raise ManifestError(f"plug-ins folder {folder} does not exist or is not a folder")
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES]
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            found += [p for p in sub.iterdir() if p.is_file() and p.suffix in MANIFEST_SUFFIXES]
    return sorted(p for p in found if not p.name.startswith("."))


def load_folder(folder: Path) -> list[ModelManifest]:
    """Loads every manifest of a plug-in folder; group and attribute names must not repeat."""
    manifests = [load(p) for p in discover(folder)]
    seen: dict[str, str] = {}
    for m in manifests:
        for key in [f"group {m.group}"] + [f"attribute {a.name}" for a in m.attributes]:
            if key in seen:
                raise ManifestError(f"{m.origin}: {key} is also defined by {seen[key]}; names must be unique")
            seen[key] = m.origin
    return manifests


# -- field validation -----------------------------------------------------------------------------------------


def _known(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {unknown}; accepted: {sorted(allowed)}")


def _mapping(data: dict, key: str, where: str) -> dict:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: {key}: missing or not a mapping")
    return value


def _check_name(name: Any, where: str) -> None:
    if not isinstance(name, str) or not name or len(name) > 64 or not all(c.isalnum() or c in "_-." for c in name):
        raise ManifestError(f"{where}: {name!r} is not a valid name; use 1-64 letters, digits, '_', '-' or '.'")


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{where}: {value!r} is not a finite number")
    if positive and value <= 0:
        raise ManifestError(f"{where}: {value!r} must be greater than 0")
    return float(value)


def _integer(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ManifestError(f"{where}: {value!r} is not an integer within {lo}..{hi}")
    return value


def _triple(value: Any, where: str, *, positive: bool = False) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if not isinstance(value, list) or len(value) != 3:
        raise ManifestError(f"{where}: {value!r}; give one number or a list of 3 (one per channel, in `color` order)")
    return tuple(_number(v, where, positive=positive) for v in value)  # type: ignore[return-value]


def _choice(value: Any, choices, where: str) -> str:
    if value not in choices:
        raise ManifestError(f"{where}: {value!r}; accepted: {', '.join(choices)}")
    return value


def _input(d: dict, where: str) -> InputSpec:
    _known(d, {"size", "aligned", "padding", "views", "color", "layout", "scale", "mean", "std", "name", "dtype"},
           where)
    size = d.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not isinstance(size, list) or len(size) != 2:
        raise ManifestError(f"{where}: size: {size!r}; give an integer or [height, width]")
    h, w = (_integer(s, f"{where}: size", 1, MAX_INPUT_SIDE) for s in size)
    aligned = d.get("aligned", True)
    if not isinstance(aligned, bool):
        raise ManifestError(f"{where}: aligned: {aligned!r}; give true (dlib face chip) or false (whole image)")
    if aligned and h != w:
        raise ManifestError(f"{where}: size: aligned face chips are square; got {h}x{w}")
    padding = _number(d.get("padding", 0.2), f"{where}: padding")
    if not 0 <= padding <= 2:
        raise ManifestError(f"{where}: padding: {padding}; accepted 0..2 (dlib's default is 0.2)")
    views = _integer(d.get("views", 1), f"{where}: views", 1, MAX_VIEWS)
    if views > 1 and not aligned:
        raise ManifestError(f"{where}: views: {views}; views are of aligned face chips: give aligned: true or views 1")
    if d.get("dtype", "float32") != "float32":
        raise ManifestError(f"{where}: dtype: {d.get('dtype')!r}; only float32 inputs are accepted")
    return InputSpec(height=h, width=w, aligned=aligned, padding=padding,
                     color=_choice(d.get("color", "RGB"), ("RGB", "BGR"), f"{where}: color"),
                     layout=_choice(d.get("layout", "NCHW"), ("NCHW", "NHWC"), f"{where}: layout"),
                     scale=_number(d.get("scale", 1.0), f"{where}: scale", positive=True),
                     mean=_triple(d.get("mean", 0.0), f"{where}: mean"),
                     std=_triple(d.get("std", 1.0), f"{where}: std", positive=True),
                     name=str(d.get("name", "")), views=views)


def _runtime(d: Any, where: str) -> RuntimeSpec:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: not a mapping")
    _known(d, {"providers", "graph_optimization_level", "intra_op_num_threads", "inter_op_num_threads",
               "max_batch_size", "allow_spinning"}, where)
    spinning = d.get("allow_spinning", False)
    if not isinstance(spinning, bool):
        raise ManifestError(f"{where}: allow_spinning: {spinning!r}; give true or false")
    providers = d.get("providers", list(DEFAULT_PROVIDERS))
    if isinstance(providers, str):
        providers = [providers]
    if not isinstance(providers, list) or not providers or not all(isinstance(p, str) for p in providers):
        raise ManifestError(f"{where}: providers: {providers!r}; give a list such as {list(DEFAULT_PROVIDERS)}")
    level = d.get("graph_optimization_level", "all")
    level = OPT_LEVELS.get(level, level)
    if level not in OPT_LEVELS.values():
        raise ManifestError(f"{where}: graph_optimization_level: {level!r}; accepted: {', '.join(OPT_LEVELS)} "
                            f"(or {', '.join(OPT_LEVELS.values())})")
    threads = {k: _integer(d.get(k, 0), f"{where}: {k}", 0, 256)
               for k in ("intra_op_num_threads", "inter_op_num_threads")}
    return RuntimeSpec(providers=tuple(providers), graph_optimization_level=level, **threads,
                       max_batch_size=_integer(d.get("max_batch_size", 64), f"{where}: max_batch_size", 1, 4096),
                       allow_spinning=spinning)


def _attribute(d: Any, where: str) -> AttributeSpec:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: not a mapping")
    _known(d, {"name", "kind", "unit", "range", "description", "output", "index", "activation", "weights",
               "scale", "offset"}, where)
    _check_name(d.get("name"), f"{where}: name")
    kind = _choice(d.get("kind"), KINDS, f"{where}: kind")
    rng = d.get("range")
    if not isinstance(rng, list) or len(rng) != 2:
        raise ManifestError(f"{where}: range: {rng!r}; give [min, max] of the value (may be -.inf/.inf)")
    lo, hi = (_bound(v, f"{where}: range") for v in rng)
    if not lo < hi:
        raise ManifestError(f"{where}: range: min {lo} must be below max {hi}")
    output = d.get("output", 0)
    if not (isinstance(output, str) and output) and not (isinstance(output, int) and not isinstance(output, bool)
                                                         and output >= 0):
        raise ManifestError(f"{where}: output: {output!r}; give an output name or a position (0, 1, ...)")
    weights: tuple[float, ...] = ()
    if kind == "expectation":
        raw = d.get("weights")
        if not isinstance(raw, list) or not raw:
            raise ManifestError(f"{where}: weights: an expectation needs one weight per output column")
        weights = tuple(_number(w, f"{where}: weights") for w in raw)
    elif "weights" in d:
        raise ManifestError(f"{where}: weights: only kind expectation takes weights")
    unit = d.get("unit", "probability" if kind == "probability" else "")
    if not isinstance(unit, str) or not unit:
        raise ManifestError(f"{where}: unit: give the unit of the value, e.g. years, degrees, ratio")
    return AttributeSpec(
        name=d["name"], kind=kind, unit=unit, min_value=lo, max_value=hi, description=str(d.get("description", "")),
        output=output, index=_integer(d.get("index", 0), f"{where}: index", 0, 1 << 20),
        activation=_choice(d.get("activation", "none"), ACTIVATIONS, f"{where}: activation"), weights=weights,
        scale=_number(d.get("scale", 1.0), f"{where}: scale"), offset=_number(d.get("offset", 0.0), f"{where}: offset"))


def _bound(value: Any, where: str) -> float:
    if isinstance(value, str) and value.lower() in ("inf", "+inf", "-inf", ".inf", "-.inf", "infinity", "-infinity"):
        return -math.inf if value.startswith("-") else math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ManifestError(f"{where}: {value!r} is not a number")
    return float(value)

