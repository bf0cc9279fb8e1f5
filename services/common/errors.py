"""Errors that become precise gRPC statuses with google.rpc rich details."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class ServiceError(Exception):
    """Raised anywhere in a handler; the runtime turns it into a gRPC status.

    Args:
        code: The gRPC status code.
        message: What was wrong and what is accepted.
        field: For INVALID_ARGUMENT, the request field at fault (adds a BadRequest detail).
        retry_after: For RESOURCE_EXHAUSTED/UNAVAILABLE, seconds after which a retry may succeed
            (adds a RetryInfo detail and `retry-after-ms` trailing metadata).
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, field: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def to_status(self) -> grpc.Status:
        details = []
        if self.field is not None:
            bad = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)])
            details.append(bad)
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(self.retry_after * 1000))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        for d in details:
            status.details.add().Pack(d)
        rich = rpc_status.to_status(status)
        if self.retry_after is not None:
            ms = str(int(self.retry_after * 1000))
            # retry-after-ms for people and other languages; grpc-retry-pushback-ms is what gRPC's own retry
            # policy obeys, so a caller retrying by service config waits as long as the server asked.
            rich = _StatusWithMetadata(rich, (("retry-after-ms", ms), ("grpc-retry-pushback-ms", ms)))
        return rich

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class _StatusWithMetadata(grpc.Status):
    def __init__(self, base: grpc.Status, extra):
        self.code = base.code
        self.details = base.details
        self.trailing_metadata = tuple(base.trailing_metadata) + tuple(extra)


def invalid_argument(field: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field=field)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


def resource_exhausted(message: str, retry_after: float) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after=retry_after)


def unavailable(message: str, retry_after: float = 1.0) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message, retry_after=retry_after)


def deadline_exceeded(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, message)


def status_details(error: grpc.RpcError) -> dict:
    """Client side: the rich details of a failed call as a dict (field, retry_after)."""
    out: dict = {}
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out["fields"] = [v.field for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            out["retry_after"] = info.retry_delay.ToMilliseconds() / 1000
    return out
