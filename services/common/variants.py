"""Generator variants: tuned weights of a base model, addressed by a content hash, stored fp16 in Redis with a TTL.

A variant is the set of tensors pivotal tuning changed, stored as deltas (tuned minus base) in float16: the
deltas are small, so half precision keeps them to about 1e-3 of their size. The blob is a JSON header plus
raw little-endian float16 bytes (no pickle), with the payload's sha256 in the header, so a corrupted or
truncated entry is refused instead of rendering with wrong weights. Every replica of the generator loads
a variant from the store and keeps a bounded LRU of built networks (`VariantCache`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

MAGIC = b"IFGVAR1\n"
KEY_PREFIX = "ifgan:variant:"
#: A variant id: "v1-" and 40 hex digits of a sha256.
ID_PREFIX, ID_HEX = "v1-", 40


class VariantError(ValueError):
    """A variant blob that is corrupted, oversized or does not fit its base model."""


def variant_id(base_model: str, version: str, image_sha256: str, settings: str) -> str:
    """The content address of a variant: the same base model, version, photo and settings give the same id."""
    text = json.dumps([base_model, version, image_sha256, settings], separators=(",", ":"))
    return ID_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:ID_HEX]


def is_variant_id(text: str) -> bool:
    """True for a well-formed variant id (checked before it is used in a Redis key)."""
    hexpart = text[len(ID_PREFIX):]
    return (text.startswith(ID_PREFIX) and len(hexpart) == ID_HEX
            and all(c in "0123456789abcdef" for c in hexpart))


def encode(base_model: str, version: str, delta: dict[str, np.ndarray], meta: dict[str, Any] | None = None
           ) -> bytes:
    """Serialises deltas (float arrays by state-dict key) as float16 with a checksummed JSON header."""
    tensors, chunks, offset = [], [], 0
    for key in sorted(delta):
        data = np.ascontiguousarray(np.asarray(delta[key], np.float32).astype("<f2")).tobytes()
        tensors.append({"key": key, "shape": list(np.shape(delta[key])), "offset": offset, "nbytes": len(data)})
        chunks.append(data)
        offset += len(data)
    payload = b"".join(chunks)
    header = json.dumps({"base_model": base_model, "version": version, "dtype": "float16", "tensors": tensors,
                         "sha256": hashlib.sha256(payload).hexdigest(), "meta": meta or {}}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def decode(blob: bytes, max_bytes: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, float32 deltas) of a blob; raises VariantError when it is oversized, truncated or altered."""
    if len(blob) > max_bytes:
        raise VariantError(f"the stored variant holds {len(blob)} bytes, over the limit of {max_bytes}")
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise VariantError("the stored variant is not a variant blob (bad magic)")
    (size,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(blob[start:start + size])
        payload = blob[start + size:]
        if hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise VariantError("the stored variant's payload does not match its sha256 (corrupted)")
        out = {}
        for t in header["tensors"]:
            raw = payload[t["offset"]:t["offset"] + t["nbytes"]]
            out[t["key"]] = np.frombuffer(raw, "<f2").astype(np.float32).reshape(t["shape"])
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, VariantError):
            raise
        raise VariantError(f"the stored variant's header is unreadable ({type(e).__name__}: {e})") from None
    return header, out


def apply(net: "torch.nn.Module", delta: dict[str, "np.ndarray | torch.Tensor"]) -> "torch.nn.Module":
    """A copy of `net` with `delta` added to its tensors (the tuned generator of a variant), in eval mode.

    The base network is left untouched; the tensors the variant does not change are shared with it.
    """
    import copy

    import torch

    # Tensors the variant does not change are shared with the base network, not copied: a variant costs
    # the memory of its tuned tensors only (a DCGAN tuned from its 16 px block: 2.6 of 14 MB).
    shared = {id(t): t for name, t in [*net.named_parameters(), *net.named_buffers()] if name not in delta}
    out = copy.deepcopy(net, memo=shared)
    state = out.state_dict()
    unknown = sorted(set(delta) - set(state))
    if unknown:
        raise VariantError(f"variant tensors {unknown[:4]} are not in the {type(net).__name__} network")
    with torch.no_grad():
        for key, value in delta.items():
            value = torch.as_tensor(value)
            if tuple(state[key].shape) != tuple(value.shape):
                raise VariantError(f"variant tensor {key} has shape {list(value.shape)}, the network's has "
                                   f"{list(state[key].shape)}")
            state[key].add_(value.to(state[key].device, state[key].dtype))
    return out.eval()


class VariantStore:
    """Variants in Redis, one key each, with a TTL and a size limit (shared by every replica).

    Args:
        url: redis:// URL.
        ttl_seconds: How long a variant lives after it was stored (or last refreshed by `get`).
        max_bytes: Largest blob stored or loaded.
    """

    def __init__(self, url: str, ttl_seconds: int = 3600, max_bytes: int = 16 << 20):
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url, decode_responses=False, socket_timeout=10)
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes

    async def put(self, vid: str, blob: bytes) -> None:
        """Stores a blob; raises VariantError when it is over the size limit."""
        if len(blob) > self.max_bytes:
            raise VariantError(f"the tuned variant holds {len(blob)} bytes, over the store's limit of "
                               f"{self.max_bytes}")
        await self.redis.set(KEY_PREFIX + vid, blob, ex=self.ttl_seconds)

    async def get(self, vid: str) -> bytes | None:
        """The blob of a variant (its TTL refreshed), or None when the store does not hold it."""
        key = KEY_PREFIX + vid
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.expire(key, self.ttl_seconds)
            blob, _ = await pipe.execute()
        return blob

    async def exists(self, vid: str) -> bool:
        return bool(await self.redis.exists(KEY_PREFIX + vid))

    async def close(self) -> None:
        await self.redis.aclose()


T = TypeVar("T")


class VariantCache(Generic[T]):
    """A per-replica LRU of built variants, bounded by entry count and by bytes (thread-safe).

    Args:
        max_entries: Variants kept at most.
        max_bytes: Sum of the entries' sizes kept at most (the newest entry is always kept).
    """

    def __init__(self, max_entries: int = 8, max_bytes: int = 256 << 20):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, tuple[T, int]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: T, size: int) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > 1 and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= dropped

    def get_or_build(self, key: str, build: Callable[[], tuple[T, int]]) -> T:
        """The cached value, or `build()`'s (value, size), cached."""
        found = self.get(key)
        if found is not None:
            return found
        value, size = build()
        self.put(key, value, size)
        return value

    def stats(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        with self._lock:
            return len(self._items), self._bytes
