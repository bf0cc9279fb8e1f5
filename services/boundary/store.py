"""Versioned boundary store in Redis: atomic Lua writes, metadata + float64 normals, job records.

Layout (prefix `ifgan:` by default; `{id}` is `model/space/attribute`, space one of z, w, wp):

- `{prefix}boundary:{id}:latest`  string: newest version number (INCR'd by the write script)
- `{prefix}boundary:{id}:v:{n}`   hash: `meta` (JSON), `normal` (little-endian float64 bytes), `version`
- `{prefix}boundaries`            set of every `{id}` (for listing)
- `{prefix}request:{request_id}`  string: the result of an idempotent request (expires)
- `{prefix}job:{job_id}`          string: a finished job's JSON record (expires)

A boundary is written by ONE Lua script (INCR + HSET + SADD + request record): Redis runs a script
atomically, so a reader sees either no new version or the whole of it, never a half-written boundary,
and `latest` never names a missing version. Nothing in the script can fail after its first write (its
inputs are validated before it runs), so no partial effect survives an error either. Redis must run with
AOF (appendonly yes; appendfsync always for zero loss on a crash) for the store to survive restarts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time

import numpy as np
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from interfacegan.codec import SPACE_KEYS  # the proto enum -> "z", "w", "wp", written once
SPACE_BY_KEY = {v: k for k, v in SPACE_KEYS.items()}
# Matched whole (fullmatch): with `^...$`, "gender\n" passed ($ matches before a final newline).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

_PUT = """
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {2, redis.call('GET', KEYS[1])} end
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
end
local v = redis.call('INCR', KEYS[1])
redis.call('HSET', ARGV[4] .. v, 'meta', ARGV[2], 'normal', ARGV[3], 'version', v)
redis.call('SADD', KEYS[2], ARGV[1])
if KEYS[3] ~= '' then redis.call('SET', KEYS[3], ARGV[1] .. '@' .. v, 'EX', ARGV[5]) end
return {1, v}
"""


class StoreError(Exception):
    """Base of the store's errors."""


class BoundaryNotFound(StoreError, KeyError):
    """No boundary (or version) under that reference."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "boundary not found"


def check_name(kind: str, value: str) -> str:
    """Validates a model or attribute name (conditional attributes join names with '|')."""
    parts = value.split("|") if kind == "attribute" else [value]
    if not value or not all(NAME_RE.fullmatch(p) for p in parts):
        raise ValueError(f"{kind} {value!r} is not a valid name: use letters, digits, '.', '_' or '-' "
                         f"(1..128 characters, starting with a letter or digit; no spaces or control characters)"
                         + ("; conditional attributes join names with '|'" if kind == "attribute" else ""))
    return value


def boundary_id(model: str, space: int, attribute: str) -> str:
    if space not in SPACE_KEYS:
        raise ValueError(f"space {space} is not a latent space; accepted: Z (1), W (2), W+ (3)")
    return f"{check_name('model', model)}/{SPACE_KEYS[space]}/{check_name('attribute', attribute)}"


@dataclasses.dataclass
class StoredBoundary:
    """One stored version: its metadata (BoundaryInfo fields as a dict) and, when loaded, the normal."""

    meta: dict
    version: int
    normal: np.ndarray | None = None  # (1, d) float64

    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def attribute(self) -> str:
        return self.meta["attribute"]

    @property
    def space(self) -> int:
        return int(self.meta["space"])

    @property
    def ref(self) -> dict:
        return {"model": self.model, "attribute": self.attribute, "space": self.space, "version": self.version}


class BoundaryStore:
    """Async Redis store of versioned boundaries and job records.

    Args:
        url: redis:// URL (redis-py asyncio).
        prefix: key prefix, so several deployments can share one Redis.
    """

    def __init__(self, url: str, prefix: str = "ifgan:", *, socket_timeout: float = 10.0):
        self.url = url
        self.prefix = prefix
        # After a Redis restart every pooled connection is stale: without retries the first command on each
        # fails ("Connection closed by server") although Redis is back, and a training job would lose its result.
        # A command is retried on a fresh connection; the write script runs at most once per connection it
        # reached, and the rare retry after a lost reply stores one more version, never half a boundary.
        self.redis = aioredis.from_url(url, decode_responses=False, socket_timeout=socket_timeout,
                                       socket_connect_timeout=5.0, health_check_interval=30,
                                       retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), 4),
                                       retry_on_error=[redis_errors.ConnectionError, redis_errors.TimeoutError])
        self._put = self.redis.register_script(_PUT)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def persistence(self) -> dict:
        """The server's AOF settings ({} when CONFIG is not allowed, e.g. on managed Redis)."""
        try:
            config = await self.redis.config_get("append*")
        except aioredis.ResponseError:
            return {}
        text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
        return {text(k): text(v) for k, v in config.items() if text(k) in ("appendonly", "appendfsync")}

    # -- boundaries -------------------------------------------------------------------------------------

    def _key(self, bid: str, suffix: str) -> str:
        return f"{self.prefix}boundary:{bid}:{suffix}"

    async def put(self, meta: dict, normal: np.ndarray, *, request_id: str = "", request_ttl: int = 7 * 86400,
                  if_empty: bool = False) -> tuple[StoredBoundary, bool]:
        """Stores a new version atomically.

        Args:
            meta: BoundaryInfo fields; must hold model, attribute, space.
            normal: (d,) or (1, d) finite, non-zero.
            request_id: idempotency key; a repeated id returns the version the first call stored.
            if_empty: store only when the boundary has no version yet (checked inside the write script, so a
                version written meanwhile by anyone else is never shadowed); else return the newest.
        Returns:
            (the stored boundary, True if this call created it).
        """
        normal = np.asarray(normal, dtype="<f8").reshape(1, -1)
        if not np.isfinite(normal).all() or not np.linalg.norm(normal) > 0:
            raise ValueError("normal must be finite and non-zero")
        bid = boundary_id(meta["model"], int(meta["space"]), meta["attribute"])
        meta = {**meta, "dimension": int(normal.shape[1]), "created_unix": meta.get("created_unix") or time.time()}
        meta.pop("version", None)
        request_key = f"{self.prefix}request:{request_id}" if request_id else ""
        created, value = await self._put(
            keys=[self._key(bid, "latest"), f"{self.prefix}boundaries", request_key],
            args=[bid, json.dumps(meta, sort_keys=True), normal.tobytes(), self._key(bid, "v:"), request_ttl,
                  "1" if if_empty else "0"])
        if created == 2:
            return await self.get(meta["model"], int(meta["space"]), meta["attribute"], int(value)), False
        if not created:
            ref_id, _, version = value.decode().rpartition("@")
            model, space, attribute = ref_id.split("/", 2)
            return await self.get(model, SPACE_BY_KEY[space], attribute, int(version)), False
        return StoredBoundary(meta=meta, version=int(value), normal=normal), True

    async def latest_version(self, model: str, space: int, attribute: str) -> int:
        value = await self.redis.get(self._key(boundary_id(model, space, attribute), "latest"))
        return int(value) if value else 0

    async def get(self, model: str, space: int, attribute: str, version: int = 0, *,
                  with_normal: bool = True) -> StoredBoundary:
        """One version (0 = newest); raises BoundaryNotFound."""
        bid = boundary_id(model, space, attribute)
        if version <= 0:
            version = await self.latest_version(model, space, attribute)
            if not version:
                raise BoundaryNotFound(f"no boundary {bid}")
        fields = ("meta", "normal") if with_normal else ("meta",)
        values = await self.redis.hmget(self._key(bid, f"v:{version}"), fields)
        if values[0] is None:
            latest = await self.latest_version(model, space, attribute)
            raise BoundaryNotFound(f"no version {version} of boundary {bid}"
                                   + (f"; versions 1..{latest} exist" if latest else ""))
        meta = json.loads(values[0])
        normal = np.frombuffer(values[1], dtype="<f8").reshape(1, -1).copy() if with_normal else None
        return StoredBoundary(meta=meta, version=version, normal=normal)

    async def list(self, *, model: str = "", attribute: str = "", space: int = 0,
                   all_versions: bool = False) -> list[StoredBoundary]:
        """Metadata of matching boundaries (newest versions, or all), sorted by model, attribute, space, version."""
        ids = sorted(m.decode() for m in await self.redis.smembers(f"{self.prefix}boundaries"))
        chosen = []
        for bid in ids:
            m, s, a = bid.split("/", 2)
            if (model and m != model) or (attribute and a != attribute) or (space and SPACE_BY_KEY[s] != space):
                continue
            chosen.append(bid)
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in chosen:
                pipe.get(self._key(bid, "latest"))
            latest = await pipe.execute()
        wanted = []
        for bid, top in zip(chosen, latest):
            if not top:
                continue
            versions = range(1, int(top) + 1) if all_versions else [int(top)]
            wanted.extend((bid, v) for v in versions)
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid, v in wanted:
                pipe.hget(self._key(bid, f"v:{v}"), "meta")
            metas = await pipe.execute()
        out = [StoredBoundary(meta=json.loads(meta), version=v) for (bid, v), meta in zip(wanted, metas) if meta]
        out.sort(key=lambda b: (b.model, b.attribute, b.space, b.version))
        return out

    async def models(self) -> set[str]:
        return {m.decode().split("/", 1)[0] for m in await self.redis.smembers(f"{self.prefix}boundaries")}

    # -- idempotency records and jobs -------------------------------------------------------------------

    async def claim_request(self, request_id: str, value: str, ttl: int) -> str:
        """Records request_id -> value unless already recorded; returns the recorded value."""
        key = f"{self.prefix}request:{request_id}"
        if await self.redis.set(key, value, nx=True, ex=ttl):
            return value
        existing = await self.redis.get(key)
        return existing.decode() if existing is not None else value

    async def set_request(self, request_id: str, value: str, ttl: int) -> None:
        await self.redis.set(f"{self.prefix}request:{request_id}", value, ex=ttl)

    async def request_value(self, request_id: str) -> str | None:
        value = await self.redis.get(f"{self.prefix}request:{request_id}")
        return value.decode() if value is not None else None

    async def save_job(self, job_id: str, record: dict, ttl: int) -> None:
        await self.redis.set(f"{self.prefix}job:{job_id}", json.dumps(record, sort_keys=True), ex=ttl)

    async def load_job(self, job_id: str) -> dict | None:
        value = await self.redis.get(f"{self.prefix}job:{job_id}")
        return json.loads(value) if value else None
