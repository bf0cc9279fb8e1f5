"""Server-side decoding of Tensor and LatentBatch messages with checks (sizes, finiteness, shapes); encoding is the SDK's codec."""

from __future__ import annotations

import math

import numpy as np

from interfacegan import codec
from interfacegan.codec import space_name
from interfacegan.v1 import common_pb2

from .errors import invalid_argument

__all__ = ["space_name", "to_numpy", "latents_to_numpy"]

def to_numpy(tensor: common_pb2.Tensor, field: str, *, max_elements: int = 64 * 1024 * 1024,
             allow_empty: bool = False) -> np.ndarray:
    """Decodes a float32 Tensor; refuses bad shapes, sizes and non-finite values with INVALID_ARGUMENT."""
    if tensor.dtype not in (common_pb2.DATA_TYPE_UNSPECIFIED, common_pb2.DATA_TYPE_FLOAT32):
        raise invalid_argument(f"{field}.dtype", f"unsupported dtype {tensor.dtype}; only DATA_TYPE_FLOAT32 is accepted")
    shape = tuple(int(s) for s in tensor.shape)
    if not shape:
        raise invalid_argument(f"{field}.shape", "shape is empty; give at least one dimension, e.g. [N, d]")
    if any(s < 0 for s in shape) or (not allow_empty and any(s == 0 for s in shape)):
        raise invalid_argument(f"{field}.shape", f"shape {list(shape)} has a zero or negative dimension")
    # Python integers: a product in int64 wraps (2^32 x 2^32 is 0, (2^63 - 1) x 2 is -2) and let absurd shapes
    # through to fail later as INTERNAL.
    count = math.prod(shape)
    if count > max_elements:
        raise invalid_argument(f"{field}.shape", f"shape {_shown(shape)} holds {_shown([count])[1:-1]} elements, over "
                                                 f"the limit of {max_elements}; accepted: at most {max_elements} "
                                                 f"elements")
    if len(tensor.data) != count * 4:
        raise invalid_argument(f"{field}.data", f"holds {len(tensor.data)} bytes; shape {list(shape)} of float32 "
                                                f"needs {count * 4} (little-endian, row-major)")
    array = codec.array(tensor)
    if not np.isfinite(array).all():
        raise invalid_argument(f"{field}.data", "contains NaN or Inf; every element must be finite")
    return array


def _shown(values) -> str:
    """A shape for a message, each huge number shortened (a 2^200 dimension is 61 digits)."""
    return "[" + ", ".join(str(v) if v < 10**12 else f"{v:.3g}" for v in values) + "]"


def latents_to_numpy(batch: common_pb2.LatentBatch, field: str, *, expected: dict[int, tuple[int, ...]],
                     max_codes: int) -> tuple[int, np.ndarray]:
    """Decodes a LatentBatch and checks it against the shapes a model accepts per space.

    Args:
        expected: space -> shape of one code, e.g. {LATENT_SPACE_Z: (100,)}.
        max_codes: largest batch dimension accepted.
    Returns:
        (space, codes) with codes of shape (N, *expected[space]).
    """
    if not batch.HasField("codes"):
        raise invalid_argument(f"{field}.codes", "missing; give a Tensor of shape (N, d) or (N, L, d)")
    if batch.space not in expected:
        accepted = ", ".join(f"{space_name(s)} {list(v)}" for s, v in expected.items())
        raise invalid_argument(f"{field}.space", f"space {space_name(batch.space)} is not supported by this model; "
                                                 f"accepted: {accepted}")
    array = to_numpy(batch.codes, f"{field}.codes")
    want = expected[batch.space]
    if array.ndim != len(want) + 1 or tuple(array.shape[1:]) != tuple(want):
        raise invalid_argument(f"{field}.codes.shape", f"got {list(array.shape)}; {space_name(batch.space)} codes "
                                                       f"of this model have shape [N, {', '.join(map(str, want))}]")
    if array.shape[0] > max_codes:
        raise invalid_argument(f"{field}.codes.shape", f"{array.shape[0]} codes exceed the limit of {max_codes} per request")
    return batch.space, array
