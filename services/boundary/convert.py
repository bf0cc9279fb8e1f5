"""Conversions between stored boundaries (dicts, numpy) and the API's messages."""

from __future__ import annotations

from interfacegan import codec
from interfacegan.v1 import boundary_pb2, common_pb2

from .store import StoredBoundary

_FLOAT = ("intercept", "validation_accuracy", "remaining_accuracy", "created_unix", "chosen_ratio",
          "train_accuracy", "threshold", "train_split", "svm_c")
_INT = ("dimension", "num_samples", "num_valid", "num_positive", "num_negative", "seed")
_STR = ("origin", "solver", "dataset", "model_version", "job_id", "file_name")


def ref_of(b: StoredBoundary) -> common_pb2.BoundaryRef:
    return common_pb2.BoundaryRef(model=b.model, attribute=b.attribute, space=b.space, version=b.version)


def info_of(b: StoredBoundary) -> boundary_pb2.BoundaryInfo:
    """BoundaryInfo of a stored version (fields the metadata lacks stay at their defaults)."""
    meta = b.meta
    info = boundary_pb2.BoundaryInfo(ref=ref_of(b), converged=bool(meta.get("converged", False)))
    for key in _FLOAT:
        if meta.get(key) is not None:
            setattr(info, key, float(meta[key]))
    for key in _INT:
        if meta.get(key) is not None:
            setattr(info, key, int(meta[key]))
    for key in _STR:
        if meta.get(key):
            setattr(info, key, str(meta[key]))
    for parent in meta.get("parents", []):
        info.parents.append(common_pb2.BoundaryRef(**parent))
    for stage, seconds in (meta.get("timings") or {}).items():
        info.timings[stage] = float(seconds)
    return info


def boundary_of(b: StoredBoundary) -> boundary_pb2.Boundary:
    return boundary_pb2.Boundary(info=info_of(b), normal=codec.tensor(b.normal))
