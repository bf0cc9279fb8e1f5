"""Request builders and error mapping shared by the sync and asyncio clients."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import grpc

from interfacegan.v1 import boundary_pb2, common_pb2

from . import codec
from .edits import new_request_id


class ApiError(Exception):
    """A failed call: the gRPC status code, the server's message, and where it applies.

    Attributes:
        code: grpc.StatusCode, e.g. INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE.
        details: The server's message (what was wrong and what is accepted).
        method: The RPC, e.g. "Edit".
        request_id: The request id of the call, for the server logs.
        retry_after: Seconds the server asked to wait before a retry (RESOURCE_EXHAUSTED, UNAVAILABLE), if any.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, method: str = "", request_id: str = "",
                 retry_after: float | None = None):
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        self.method = method
        self.request_id = request_id
        self.retry_after = retry_after

    @classmethod
    def of(cls, error: grpc.RpcError, method: str = "", request_id: str = "") -> "ApiError":
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        retry_after = None
        trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
        for key, value in trailing or ():
            if key == "retry-after-ms":
                try:
                    retry_after = int(value) / 1000
                except ValueError:
                    pass
        return cls(code, details or "", method=method, request_id=request_id, retry_after=retry_after)


def boundary_ref(attribute: str, *, model: str, space: str | int | None = "Z", version: int = 0) -> common_pb2.BoundaryRef:
    return common_pb2.BoundaryRef(model=model, attribute=attribute, space=codec.space_of(space or "Z"), version=version)


def train_request(attributes: Sequence[str], *, model: str, space: str | int | None, num_samples: int,
                  chosen_ratio: float, train_split: float, seed: int, svm_c: float, reuse_dataset: bool,
                  solver: str, request_id: str | None) -> boundary_pb2.TrainBoundariesRequest:
    return boundary_pb2.TrainBoundariesRequest(
        request_id=request_id or new_request_id(), model=common_pb2.ModelRef(name=model),
        space=codec.space_of(space), attributes=list(attributes), num_samples=num_samples, chosen_ratio=chosen_ratio,
        train_split=train_split, seed=seed, svm_c=svm_c, reuse_dataset=reuse_dataset, solver=solver)


def import_request(npy: bytes | str | Path, *, file_name: str | None, model: str, attribute: str,
                   space: str | int | None) -> boundary_pb2.ImportBoundaryRequest:
    if not isinstance(npy, bytes):
        path = Path(npy).expanduser()
        file_name = file_name or path.name
        npy = path.read_bytes()
    return boundary_pb2.ImportBoundaryRequest(file_name=file_name or "", npy=npy, model=model, attribute=attribute,
                                              space=codec.space_of(space))


def parse_ref(text: str, *, model: str, space: str | int | None = "Z") -> common_pb2.BoundaryRef:
    """'gender', 'gender@2' or 'gender|age' -> BoundaryRef of `model` (version after '@')."""
    name, _, version = text.partition("@")
    return boundary_ref(name, model=model, space=space, version=int(version or 0))


#: Request metadata naming a call's priority lane; the servers carry it on to the services they call.
PRIORITY_METADATA = "ifgan-priority"
#: Priority lanes: interactive (low latency, served first) and bulk (throughput, a guaranteed share).
PRIORITIES = ("interactive", "bulk")


def check_priority(priority: str | None) -> str:
    """`priority` if it names a lane ("" or None = each RPC's default lane); ValueError otherwise."""
    if priority and priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r}; accepted: {', '.join(PRIORITIES)} or empty (each RPC's default)")
    return priority or ""


def metadata(token: str | None, request_id: str = "", priority: str = "") -> tuple[tuple[str, str], ...]:
    out = (("authorization", f"Bearer {token}"),) if token else ()
    out += (((PRIORITY_METADATA, priority),) if priority else ())
    return out + ((("x-request-id", request_id),) if request_id else ())
