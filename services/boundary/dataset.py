"""(code, scores) datasets on disk: .npz shards of at most `shard_size` samples, read back in bounded memory.

A dataset is the folder `{root}/{model}/{model_version}/{space}/seed-{seed}/` with `manifest.json` and
`shard-00000.npz`, ... Shard i holds the first `count` codes the generator draws with the shard's own
seed (`shard_seed(seed, i)`), so a dataset of N samples is a prefix of one of N + k samples: growing it
resamples nothing, and a partial last shard is extended in place. Each shard has `codes` (n, d) float32
and, per attribute, `score/{name}` (n,) float32 and `valid/{name}` (n,) bool; attributes can be added
later (re-synthesizing the stored codes, not resampling). Files are written to a temporary name and
renamed, and the manifest only lists complete shards, so a crash never leaves a corrupt dataset.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

FORMAT = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def shard_seed(seed: int, index: int) -> int:
    """Seed of shard `index` of a dataset seeded `seed`: a SeedSequence hash, below 2**63."""
    return int(np.random.SeedSequence([seed & (2**64 - 1), index]).generate_state(1, np.uint64)[0] >> 1)


def dataset_path(root: Path, model: str, model_version: str, space_key: str, seed: int) -> Path:
    safe = lambda s: _SAFE.sub("_", s) or "_"  # noqa: E731
    return Path(root) / safe(model) / safe(model_version or "default") / space_key / f"seed-{seed}"


@dataclasses.dataclass
class ShardInfo:
    file: str
    count: int


class Dataset:
    """One dataset folder. Not thread-safe: one writer at a time (see `lock`)."""

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # -- creation and metadata ---------------------------------------------------------------------------

    @classmethod
    def open_or_create(cls, path: Path, *, model: str, model_version: str, space: str, seed: int,
                       dimension: int, shard_size: int, attributes: list[str]) -> "Dataset":
        path = Path(path)
        manifest_file = path / "manifest.json"
        if manifest_file.exists():
            manifest = json.loads(manifest_file.read_text())
            if manifest.get("format") != FORMAT or manifest["dimension"] != dimension:
                raise ValueError(f"dataset {path} has format {manifest.get('format')} / dimension "
                                 f"{manifest.get('dimension')}; expected {FORMAT} / {dimension}")
            return cls(path, manifest)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "model": model, "model_version": model_version, "space": space,
                    "seed": seed, "dimension": dimension, "shard_size": shard_size, "attributes": sorted(attributes),
                    "shards": []}
        ds = cls(path, manifest)
        ds._write_manifest()
        return ds

    @property
    def shard_size(self) -> int:
        return int(self.manifest["shard_size"])

    @property
    def attributes(self) -> list[str]:
        return list(self.manifest["attributes"])

    @property
    def shards(self) -> list[ShardInfo]:
        return [ShardInfo(**s) for s in self.manifest["shards"]]

    @property
    def num_samples(self) -> int:
        return sum(s["count"] for s in self.manifest["shards"])

    def _write_manifest(self) -> None:
        tmp = self.path / "manifest.json.tmp"
        tmp.write_text(json.dumps(self.manifest, indent=1))
        os.replace(tmp, self.path / "manifest.json")

    def reset(self, attributes: list[str], *, shard_size: int | None = None, block: int | None = None) -> None:
        """Forgets every shard (a rebuild); files are overwritten as shards are written again."""
        self.manifest["shards"] = []
        self.manifest["attributes"] = sorted(attributes)
        if shard_size:
            self.manifest["shard_size"] = int(shard_size)
        if block:
            self.manifest["block"] = int(block)
        self._write_manifest()

    # -- writing -----------------------------------------------------------------------------------------

    def write_shard(self, index: int, codes: np.ndarray, scores: dict[str, np.ndarray],
                    valid: dict[str, np.ndarray]) -> None:
        """Writes (or replaces) shard `index` atomically; index may be the next one or an existing one."""
        shards = self.manifest["shards"]
        if index > len(shards):
            raise ValueError(f"shard {index} would leave a gap after {len(shards)} shards")
        if len(codes) > self.shard_size:
            raise ValueError(f"{len(codes)} samples exceed the shard size {self.shard_size}")
        if set(scores) != set(valid):
            raise ValueError("scores and valid must name the same attributes")
        if set(scores) != set(self.attributes):
            raise ValueError(f"shard has attributes {sorted(scores)}; the dataset has {self.attributes}")
        name = f"shard-{index:05d}.npz"
        arrays = {"codes": np.asarray(codes, np.float32)}
        for attr in scores:
            arrays[f"score/{attr}"] = np.asarray(scores[attr], np.float32)
            arrays[f"valid/{attr}"] = np.asarray(valid[attr], bool)
        _save_npz(self.path / name, arrays)
        entry = {"file": name, "count": int(len(codes))}
        if index == len(shards):
            shards.append(entry)
        else:
            shards[index] = entry
        self._write_manifest()

    def add_attributes(self, index: int, scores: dict[str, np.ndarray], valid: dict[str, np.ndarray]) -> None:
        """Adds score columns to shard `index` (all shards must get them before the manifest lists them)."""
        shard = self.shards[index]
        with np.load(self.path / shard.file) as data:
            arrays = {k: data[k] for k in data.files}
        for attr in scores:
            if len(scores[attr]) != shard.count:
                raise ValueError(f"{len(scores[attr])} scores for {shard.count} samples")
            arrays[f"score/{attr}"] = np.asarray(scores[attr], np.float32)
            arrays[f"valid/{attr}"] = np.asarray(valid[attr], bool)
        _save_npz(self.path / shard.file, arrays)

    def shard_attributes(self, index: int) -> set[str]:
        with np.load(self.path / self.shards[index].file) as data:
            return {k.split("/", 1)[1] for k in data.files if k.startswith("score/")}

    def declare_attributes(self, attributes: list[str]) -> None:
        self.manifest["attributes"] = sorted(set(self.manifest["attributes"]) | set(attributes))
        self._write_manifest()

    # -- reading (one shard in memory at a time) ---------------------------------------------------------

    def iter_shards(self, *, codes: bool = True, attributes: list[str] = (), limit: int | None = None
                    ) -> Iterator[tuple[int, np.ndarray | None, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """Yields (offset, codes or None, scores, valid) per shard for the first `limit` samples."""
        offset = 0
        limit = self.num_samples if limit is None else limit
        for shard in self.shards:
            if offset >= limit:
                return
            take = min(shard.count, limit - offset)
            with np.load(self.path / shard.file) as data:
                c = data["codes"][:take] if codes else None
                s = {a: data[f"score/{a}"][:take] for a in attributes}
                v = {a: data[f"valid/{a}"][:take] for a in attributes}
            yield offset, c, s, v
            offset += take

    def shard_codes(self, index: int) -> np.ndarray:
        with np.load(self.path / self.shards[index].file) as data:
            return data["codes"]

    def scores(self, attribute: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All (scores, valid) of one attribute: 5 bytes a sample, the only O(N) arrays a job holds."""
        parts = list(self.iter_shards(codes=False, attributes=[attribute], limit=limit))
        if not parts:
            return np.zeros(0, np.float32), np.zeros(0, bool)
        return (np.concatenate([p[2][attribute] for p in parts]), np.concatenate([p[3][attribute] for p in parts]))

    def gather(self, indices: dict[str, np.ndarray], limit: int | None = None) -> dict[str, np.ndarray]:
        """Codes at sorted global indices, per key, in one pass over the shards."""
        out = {k: [] for k in indices}
        for offset, codes, _, _ in self.iter_shards(limit=limit):
            end = offset + len(codes)
            for key, idx in indices.items():
                lo, hi = np.searchsorted(idx, [offset, end])
                if hi > lo:
                    out[key].append(codes[idx[lo:hi] - offset])
        d = int(self.manifest["dimension"])
        return {k: (np.concatenate(v) if v else np.zeros((0, d), np.float32)) for k, v in out.items()}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FolderLock:
    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
