"""Boundaries shipped with the project (the bundled/ folder beside this module), loaded into an empty store at start.

Each boundary is a reference-format `.npy` file ({model}_{attribute}[_c_{held}][_w]_boundary.npy) and a JSON file
of the same stem holding its BoundaryInfo as `ifgan boundaries show --json` prints it (accuracies, samples, seed,
model version, solver). A bundled boundary is stored with origin "bundled" only where the store has no version of
that boundary yet, so a user's trained or imported boundary is never shadowed, and one trained later is newer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from google.protobuf import json_format

from interfacegan.v1 import boundary_pb2

from . import npyfiles
from .store import BoundaryStore, StoredBoundary

log = logging.getLogger(__name__)

FOLDER = Path(__file__).resolve().parent / "bundled"
ORIGIN = "bundled"
_FIELDS = ("validation_accuracy", "remaining_accuracy", "created_unix", "chosen_ratio", "train_accuracy", "threshold",
           "train_split", "svm_c", "intercept", "num_samples", "num_valid", "num_positive", "num_negative", "seed",
           "solver", "model_version", "converged")


@dataclasses.dataclass(frozen=True)
class Bundled:
    """One shipped boundary: its metadata (store form) and its normal (1, d) float64."""

    file_name: str
    meta: dict
    normal: object
    digest: str


def read_info(text: str) -> boundary_pb2.BoundaryInfo:
    """A BoundaryInfo from `ifgan boundaries show --json` output (the lines after the JSON object are ignored)."""
    obj, _ = json.JSONDecoder().raw_decode(text.strip())
    return json_format.ParseDict(obj, boundary_pb2.BoundaryInfo(), ignore_unknown_fields=True)


def read(folder: Path = FOLDER) -> list[Bundled]:
    """Every bundled boundary of `folder`, plain ones before derived (held) ones.

    Raises:
        ValueError: a JSON file without its .npy, or a file that does not parse (the project's own data: fail loudly).
    """
    out = []
    for path in sorted(folder.glob("*.json")):
        info = read_info(path.read_text())
        ref = info.ref
        name = npyfiles.file_name(ref.model, ref.attribute, ref.space)
        npy = folder / name
        if not npy.is_file():
            raise ValueError(f"bundled boundary {path.name} has no {name} beside it")
        data = npy.read_bytes()
        meta = {"model": ref.model, "attribute": ref.attribute, "space": int(ref.space), "origin": ORIGIN,
                "file_name": name, "parents": [], "timings": dict(info.timings)}
        for key in _FIELDS:
            value = getattr(info, key)
            meta[key] = value if isinstance(value, (bool, str, float)) else int(value)
        meta["parents"] = [{"model": p.model, "attribute": p.attribute, "space": int(p.space), "version": p.version}
                           for p in info.parents]
        out.append(Bundled(name, meta, npyfiles.load_npy(data), hashlib.sha256(data).hexdigest()[:16]))
    out.sort(key=lambda b: ("|" in b.meta["attribute"], b.meta["attribute"]))
    return out


async def install(store: BoundaryStore, folder: Path = FOLDER) -> list[StoredBoundary]:
    """Stores each bundled boundary that has no version in `store` yet; returns the ones stored now.

    A derived boundary's parents are pointed at the versions its parents have in this store when they are
    bundled ones; its normal is the shipped one either way.
    """
    stored, installed = {}, []
    for b in read(folder):
        meta = dict(b.meta)
        meta["parents"] = [stored.get(p["attribute"], p) for p in meta["parents"]]
        result, created = await store.put(meta, b.normal, if_empty=True,
                                          request_id=f"bundled:{meta['model']}:{meta['attribute']}:{b.digest}")
        if result.meta.get("origin") == ORIGIN:
            stored[result.attribute] = result.ref
        if created:
            installed.append(result)
    if installed:
        log.info("bundled boundaries stored", extra={"boundaries": [f"{b.model}/{b.attribute} v{b.version}"
                                                                    for b in installed]})
    return installed
