"""Catalog tool: a folder or CSV of photos -> edited images for a list of edits, resumable, shardable, with reports.

Every face of each photo is edited by default (`face_selection`: "all"; "largest", or given `face_indices`).

Layout of the output folder:
    catalog.json     the settings of the run (every resumed run and every shard must use the same ones)
    <key>/           per photo: original.png (the real input, upright), reconstruction.png (the generator's
                     reconstruction: the largest face's render when the edit's change is pasted, the whole
                     reconstructed faces pasted with paste_whole_face, the face render without blend),
                     reconstruction_face<i>.png (each other face's render, when the change is pasted),
                     <edit>_<k>.png (the edited photo, or face crop without blend), grid.png (the input, the
                     reconstruction, then the edits with each image's identity distance); the key is
                     the photo's id made file-name safe plus a hash of the exact id ("a b.png" ->
                     "a_b.png-3f2a9c1d0e"), so two photos never share a folder and a key never changes
    journal.jsonl    one line per finished photo (done or failed, a done one with its faces), fsync'ed: the resume
                     point, and the only source of the reports below
    failures.csv     id, file, status code, reason: one row per photo that failed (spreadsheet-safe)
    faces.csv        one row per edited face and edited image: the face's index and box, its reconstruction
                     PSNR, the image, its edit, step and distance, and the face's identity distance in it
    faces.json       the same per photo: [{id, key, faces: [{index, box, reconstruction_psnr, reconstruction (its
                     file), edits: [...]}]}]
    report.json      counts, timings, mean inversion PSNR, faces edited, mean reconstruction PSNR and identity
                     distance, the share of edited faces that stay the same person

A sharded run (`shard=Shard(i, n)`, `ifgan catalog --shard I/N`) edits the photos whose id hashes to shard i
(a share that depends on the id alone: the same under any listing order and on every re-run) and keeps its
journal, failures.csv and report.json in shards/<i>-of-<n>/; `merge_catalog` (`ifgan catalog-merge`) joins
the shards' records into the top-level failures.csv and report.json, and the last shard to finish does so too.

Every output file is written to a temporary name and renamed into place (os.replace), and a photo is
journaled only after all its files are in place: after an interruption (Ctrl-C, a crash, a killed
process) the same command goes on where it stopped, and no photo is edited twice or skipped.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import codec
from ._requests import ApiError
from .defaults import SAME_PERSON
from .edits import EditResult, EditSpec, edit_specs, face_selection_of
from .progress import ProgressBar

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: Failures worth another try when the run is resumed; others (no face, not an image) would fail again.
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN", "CANCELLED"}
#: Priority lane of every catalog request (the `ifgan-priority` metadata): bulk work yields to interactive edits.
LANE = "bulk"
#: Version of the output layout (keys of the photo folders); a folder made with another one is not resumed.
LAYOUT = 3
#: Largest photo file read (the editor refuses far smaller messages; this only keeps a stray file out of memory).
MAX_PHOTO_BYTES = 256 << 20
#: Most shards of one catalog.
MAX_SHARDS = 100_000
#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


@dataclasses.dataclass(frozen=True)
class Photo:
    """One input: a stable id (its relative path, or the CSV's id column) and where the file is.

    Attributes:
        root: When set, the file's real path (after links) must lie inside this folder to be read.
        refused: Why the photo is not read (e.g. a link out of the catalog's folder); empty when it is.
    """

    id: str
    path: Path
    root: Path | None = None
    refused: str = ""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based, as a Kubernetes Indexed Job numbers its pods)."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: give I/N with 0 <= I < N <= {MAX_SHARDS}")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'2/8' -> Shard(2, 8)."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match:
            raise ValueError(f"shard {text!r}: give I/N, e.g. 0/4 (shards are numbered 0 .. N-1)")
        return cls(int(match[1]), int(match[2]))

    def owns(self, photo_id: str) -> bool:
        return shard_of(photo_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclasses.dataclass
class Summary:
    """What a run did. `failed` maps photo id -> (status code, reason); counts are of this shard's share."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    out: Path | None = None
    shard: Shard = dataclasses.field(default_factory=Shard)
    warnings: list[str] = dataclasses.field(default_factory=list)
    merged: dict | None = None
    report: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted

    @property
    def transient_failures(self) -> int:
        return sum(1 for code, _ in self.failed.values() if code in TRANSIENT)


def _hash(domain: bytes, photo_id: str) -> bytes:
    # surrogateescape: ids of files whose names are not UTF-8 still hash (and differ).
    return hashlib.sha256(domain + b"\0" + photo_id.encode("utf-8", "surrogateescape")).digest()


def shard_of(photo_id: str, count: int) -> int:
    """The shard (0 .. count-1) that edits a photo: a hash of its id alone, so the share of every shard is the
    same whatever the order of the listing, on every re-run, and adding photos moves none of the others."""
    return int.from_bytes(_hash(b"ifgan-catalog-shard", photo_id)[:8], "big") % count


def output_key(photo_id: str) -> str:
    """The folder (relative to the output folder) of a photo's outputs: the id's folders and name made
    file-name safe, plus 10 hex digits of a hash of the exact id. Distinct ids get distinct keys even where
    their safe forms meet ("face.jpg" / "face.png", "a b.png" / "a_b.png", "Face.png" / "face.png" on a
    case-insensitive disk), and a key depends on nothing but its id."""
    parts = [p for p in photo_id.replace("\\", "/").split("/") if p not in ("", ".")]
    folders = [safe_name(p)[:80] for p in parts[:-1]]
    leaf = safe_name(parts[-1] if parts else "")[:80]
    return "/".join(folders + [f"{leaf}-{_hash(b'ifgan-catalog-key', photo_id).hex()[:10]}"])


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def discover(source: str | Path, *, follow_links: bool = False, warnings: list[str] | None = None) -> list[Photo]:
    """The photos of a folder (PNG/JPEG, recursive, sorted by id) or of a CSV file (column path|file|image|photo,
    optional id).

    Symbolic links that lead out of the catalog's folder (the folder itself, or the CSV's folder for a link a
    CSV names) are not followed unless `follow_links`: such a file is listed with `refused` set (it ends up in
    failures.csv, unread), such a folder is skipped with a line in `warnings`.
    """
    source = Path(source).expanduser()
    warnings = [] if warnings is None else warnings
    if source.is_dir():
        return _discover_folder(source, follow_links, warnings)
    if source.suffix.lower() == ".csv":
        return _discover_csv(source, follow_links)
    raise ValueError(f"{source}: give a folder of PNG/JPEG photos or a .csv file with a path column")


def _discover_folder(source: Path, follow_links: bool, warnings: list[str]) -> list[Photo]:
    root = source.resolve()
    photos = []
    seen = {root}
    # os.walk with followlinks, pruned by hand: links inside the root are followed once each (no loops), links
    # out of it only when asked.
    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            real = (here / name).resolve()
            if real in seen:
                continue
            if not follow_links and not _inside(real, root):
                warnings.append(f"{(here / name).relative_to(source).as_posix()}/: skipped, a link to a folder "
                                f"outside the catalog folder (pass --follow-links to read it)")
                continue
            seen.add(real)
            keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not path.is_symlink() and not path.is_file():
                continue  # a FIFO or device named like a photo
            pid = path.relative_to(source).as_posix()
            refused = ""
            if not follow_links and not _inside(path.resolve(), root):
                refused = "a symbolic link that leads outside the catalog folder; pass --follow-links to read it"
            photos.append(Photo(pid, path, None if follow_links else root, refused))
    return sorted(photos, key=lambda p: p.id)


def _discover_csv(source: Path, follow_links: bool) -> list[Photo]:
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    columns = {c.lower().strip(): c for c in rows[0] if c}
    column = next((columns[c] for c in ("path", "file", "image", "photo") if c in columns), None)
    if column is None:
        raise ValueError(f"{source}: no path column; name one of path, file, image, photo (and optionally id)")
    root = source.parent.resolve()
    photos, seen = [], set()
    for line, row in enumerate(rows, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            raise ValueError(f"{source}:{line}: empty {column}")
        path = Path(value).expanduser()
        path = path if path.is_absolute() else source.parent / path
        pid = (row.get(columns.get("id", ""), "") or "").strip() or value
        if pid in seen:
            raise ValueError(f"{source}:{line}: id {pid!r} repeats; ids must be unique")
        seen.add(pid)
        # A path the CSV names is read as written; a link there is followed only into the CSV's folder.
        checked = path.is_symlink() and not follow_links
        refused = ""
        if checked and not _inside(path.resolve(), root):
            refused = "a symbolic link that leads outside the CSV's folder; pass --follow-links to read it"
        photos.append(Photo(pid, path, root if checked else None, refused))
    return photos


def _check_keys(photos: Sequence[Photo]) -> None:
    seen: dict[str, str] = {}
    for photo in photos:
        key = output_key(photo.id).casefold()
        if key in seen:  # two ids with the same safe form and the same 40-bit hash: never silently merged
            raise ValueError(f"photos {seen[key]!r} and {photo.id!r} would share the output folder "
                             f"{output_key(photo.id)}; rename one of them")
        seen[key] = photo.id


class Refused(Exception):
    """A photo the catalog will not read (a link out of its folder); the message says why and what to do."""


def read_photo(photo: Photo) -> bytes:
    """The bytes of a photo, refusing what discovery refused, a link that now leads out of `photo.root`, a file
    that is not a regular file, and one over MAX_PHOTO_BYTES. Raises Refused or OSError."""
    if photo.refused:
        raise Refused(photo.refused)
    real = photo.path.resolve()
    if photo.root is not None and not _inside(real, photo.root):
        raise Refused("a symbolic link that leads outside the catalog folder; pass --follow-links to read it")
    # O_NOFOLLOW: a link swapped in after the check above is not followed; O_NONBLOCK: a FIFO does not hang us.
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{photo.path} is not a regular file")
        if info.st_size > MAX_PHOTO_BYTES:
            raise OSError(f"{photo.path} has {info.st_size} bytes; photos up to {MAX_PHOTO_BYTES >> 20} MiB are read")
        return f.read(MAX_PHOTO_BYTES + 1)


def atomic_write(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create_once(path: Path, data: bytes) -> None:
    """Creates `path` whole unless it exists: of shards starting at once, one writes it and all compare with it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        atomic_write(tmp, data)
        try:
            os.link(tmp, path)  # fails if another process created it first
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links (some bucket mounts): last writer wins
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def safe_name(text: str) -> str:
    """A file-name-safe form of an id or edit label ('gender|age' -> 'gender-hold-age')."""
    text = text.replace("|", "-hold-", 1).replace("|", "+")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "item"


def csv_cell(value) -> str:
    """A CSV cell a spreadsheet shows as text: a value that would start a formula (=, +, -, @, tab, CR, LF)
    gets a leading apostrophe, so `=cmd|calc!A1.jpg` is shown, never run."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class Journal:
    """Append-only JSON-lines record of finished photos; the last line of an id wins. Thread-safe."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._cut = False
        if path.exists():
            data = path.read_bytes()
            # A line cut by a crash mid-write: that photo was not finished; the next line starts on its own.
            self._cut = bool(data) and not data.endswith(b"\n")
            for raw in data.splitlines():
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    self.records[record["id"]] = record

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(b"\n" + line if self._cut else line)
                f.flush()
                os.fsync(f.fileno())
            self._cut = False
            self.records[record["id"]] = record


def _outputs_of(photo: Photo, specs: Sequence[EditSpec], fmt: str) -> list[str]:
    """The photo's files: original, grid, reconstruction, then each edit's images by step."""
    key = output_key(photo.id)
    ext = "jpg" if fmt in ("jpg", "jpeg") else "png"
    names = [f"{key}/original.{ext}", f"{key}/grid.png", f"{key}/reconstruction.{ext}"]
    for spec in specs:
        names += [f"{key}/{safe_name(spec.label)}_{k:02d}.{ext}" for k in range(spec.steps)]
    return names


def _faces_of(result: EditResult, specs: Sequence[EditSpec], edit_names: Sequence[str]) -> list[dict]:
    """Per edited face: its box, reconstruction PSNR, and its identity distance in each edited image."""
    images = iter(edit_names)
    frames = [(spec.label, f, next(images)) for i, spec in enumerate(specs) for f in result.edit(i)]
    faces = []
    for face in result.faces:
        edits = []
        for label, frame, image in frames:
            seen = next((g for g in frame.faces if g.index == face.index), None)
            d = seen.identity_distance if seen is not None else -1.0
            edits.append({"image": image, "edit": label, "step": frame.step_index,
                          "distance": round(frame.distance, 6), "identity_distance": round(d, 4) if d >= 0 else None})
        faces.append({"index": face.index, "box": [round(v, 1) for v in face.box],
                      "reconstruction_psnr": round(face.reconstruction_psnr, 3), "edits": edits})
    return faces


def shard_dir(out: Path, shard: Shard) -> Path:
    """Where a shard keeps its journal and reports: the output folder itself for an unsharded run."""
    return out if shard.count == 1 else out / "shards" / f"{shard.index}-of-{shard.count}"


def _finished(record: dict | None, photo: Photo, out: Path, retry_failed: bool) -> bool:
    """Whether a journal record settles a photo: done with its outputs in place under the photo's key, or failed
    for a lasting reason (unless retry_failed)."""
    if not record:
        return False
    if record["status"] == "done":
        key = output_key(photo.id) + "/"
        return all(o.startswith(key) and (out / o).exists() for o in record.get("outputs", ()))
    return not retry_failed and record.get("code") not in TRANSIENT


def _request_options(specs: Sequence[EditSpec], blend: bool, image_format: str, inversion_steps: int,
                     timeout: float | None, photo: dict) -> dict:
    # The one place that sets the catalog's request options, its lane (LANE) included. include_face: with the
    # change pasted, the original frame is the input itself and its face crop is the reconstruction.
    return dict(edits=specs, blend=blend, include_original=True, image_format=image_format,
                inversion_steps=inversion_steps, timeout=timeout, output="numpy", priority=LANE,
                include_face=blend and not photo["paste_whole_face"], **photo)


def run_catalog(client, source: str | Path, out: str | Path, edits: Sequence[EditSpec | str], *,
                concurrency: int = 2, blend: bool = True, image_format: str = "png", inversion_steps: int = 0,
                retry_failed: bool = False, timeout: float | None = None, progress: bool = True,
                stop: threading.Event | None = None, shard: Shard | str | None = None, follow_links: bool = False,
                face_selection: str | None = None, face_indices: Sequence[int] = (), skip_tuning: bool = False,
                paste_whole_face: bool = False, change_smoothing: float | None = None,
                edit_fn: Callable[..., EditResult] | None = None) -> Summary:
    """Edits every face of every photo of `source` (or of one shard's share) with every edit; resumes a previous
    run into `out`.

    Args:
        client: an interfacegan.Client (thread-safe; calls run on `concurrency` threads).
        edits: EditSpec objects or strings such as "age:-3:3:5".
        concurrency: Photos in flight at once.
        blend: Paste each edited face back into the photo (else the outputs are the aligned face crops).
        retry_failed: Also retry photos that failed for a lasting reason (by default only transient failures
            such as UNAVAILABLE are retried on resume).
        stop: Set it to stop starting new photos (the ones in flight finish and are journaled).
        shard: Edit only this shard's share (Shard or "I/N"); several shards, on as many machines, fill one
            output folder, each with its own journal, and the last to finish writes the merged report.
        follow_links: Also read photos through symbolic links that lead out of the catalog's folder.
        face_selection: "all" (every face found, up to the server's limit), "largest" or "indices"; None:
            "indices" when `face_indices` are given, else "all".
        face_indices: The faces to edit in each photo, numbered largest first.
        skip_tuning: Skip pivotal tuning (faster; faces usually become other people's).
        paste_whole_face: Paste the whole edited faces instead of only the edits' change.
        change_smoothing: Gaussian sigma of the pasted change as a fraction of the face crop (0: none); None:
            the server's default.
        edit_fn: Replaces client.edit (tests).
    """
    started = time.monotonic()
    specs = edit_specs(edits)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard or Shard()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    face_selection = face_selection or ("indices" if face_indices else "all")
    face_selection_of(face_selection, face_indices)  # refused before any folder is written
    photo_options = {"face_selection": face_selection.strip().lower(), "face_indices": [int(i) for i in face_indices],
                     "skip_tuning": bool(skip_tuning), "paste_whole_face": bool(paste_whole_face)}
    if change_smoothing is not None:  # only when given: catalogs begun before the option existed still resume
        photo_options["change_smoothing"] = float(change_smoothing)
    summary = Summary(out=out, shard=shard)
    photos = discover(source, follow_links=follow_links, warnings=summary.warnings)
    _check_keys(photos)
    settings = {"source": str(Path(source).expanduser().resolve()), "edits": [dataclasses.asdict(s) for s in specs],
                "blend": blend, "format": image_format, "inversion_steps": inversion_steps, "layout": LAYOUT,
                "shards": shard.count, "follow_links": follow_links, **photo_options}
    settings_path = out / "catalog.json"
    if not settings_path.exists():
        _create_once(settings_path, json.dumps(settings, indent=2).encode())
    if json.loads(json.dumps(settings)) != json.loads(settings_path.read_text()):
        raise ValueError(f"{out} holds a catalog made with other settings ({settings_path}); resume (or run "
                         f"every shard) with the same source, edits, options and shard count, or choose "
                         f"another output folder")
    mine = [p for p in photos if shard.owns(p.id)]
    journal = Journal(shard_dir(out, shard) / "journal.jsonl")
    summary.total = len(mine)

    todo = []
    for photo in mine:
        record = journal.records.get(photo.id)
        if _finished(record, photo, out, retry_failed):
            if record["status"] == "failed":
                summary.failed[photo.id] = (record["code"], record["error"])
            summary.skipped += 1
        else:
            todo.append(photo)

    edit = edit_fn or client.edit
    stop = stop or threading.Event()
    options = _request_options(specs, blend, image_format, inversion_steps, timeout, photo_options)

    def work(photo: Photo) -> dict:
        t = time.monotonic()
        base = {"id": photo.id, "file": str(photo.path), "key": output_key(photo.id)}
        try:
            data = read_photo(photo)
        except Refused as e:
            return {**base, "status": "failed", "code": "REFUSED", "error": str(e)}
        except OSError as e:
            return {**base, "status": "failed", "code": "UNREADABLE", "error": f"{type(e).__name__}: {e.strerror or e}"}
        try:
            result = edit(photo=data, **options)
        except ApiError as e:
            return {**base, "status": "failed", "code": e.code.name, "error": e.details, "request_id": e.request_id}
        names = _outputs_of(photo, specs, image_format)
        # Leftovers of a process killed while writing this photo (its folder is this photo's alone).
        for stale in (out / base["key"]).glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        ext = names[0].rsplit(".", 1)[1]
        atomic_write(out / names[0], codec.array_bytes(result.photo, ext))
        reconstruction = result.reconstruction
        if reconstruction is None:  # a server that sent no face crop: the original frame is the closest
            reconstruction = result.original.image
        atomic_write(out / names[2], codec.array_bytes(reconstruction, ext))
        # The other faces' reconstructions (the largest face's is reconstruction.<ext>).
        recon = {}
        for index, face in result.other_reconstructions.items():
            recon[index] = f"{base['key']}/reconstruction_face{index}.{ext}"
            atomic_write(out / recon[index], codec.array_bytes(face, ext))
        frames = [f for i in range(len(specs)) for f in result.edit(i)]
        for name, frame in zip(names[3:], frames):
            atomic_write(out / name, _encode(frame.message.image, frame.image, image_format))
        small = max(np.asarray(frames[0].image).shape[:2]) < 256 if frames else True
        atomic_write(out / names[1], _png(result.grid(scale=2 if small else 1, identity=True)))
        faces = _faces_of(result, specs, names[3:])
        for face in faces:
            face["reconstruction"] = recon.get(face["index"], names[2])
        return {**base, "status": "done", "outputs": names + list(recon.values()),
                "psnr": round(result.inversion_psnr, 3), "faces": faces, "warnings": result.warnings,
                "request_id": result.request_id, "seconds": round(time.monotonic() - t, 3)}

    bar = ProgressBar(len(todo), "catalog" if shard.count == 1 else f"catalog {shard}", "photo",
                      disable=not progress)
    done = failed = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
            pending: set[concurrent.futures.Future] = set()
            queue = iter(todo)
            try:
                while True:
                    while not stop.is_set() and len(pending) < max(1, concurrency):
                        photo = next(queue, None)
                        if photo is None:
                            break
                        pending.add(pool.submit(work, photo))
                    if not pending:
                        break
                    finished, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                                return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        record = future.result()
                        journal.append(record)
                        if record["status"] == "done":
                            done += 1
                            summary.failed.pop(record["id"], None)
                        else:
                            failed += 1
                            summary.failed[record["id"]] = (record["code"], record["error"])
                        bar.update()
                        bar.set_postfix(f"done {done}, failed {failed}")
            except KeyboardInterrupt:
                stop.set()
                summary.interrupted = True
                # Let the photos in flight finish and be journaled; start nothing new.
                for future in concurrent.futures.as_completed(pending):
                    journal.append(future.result())
                pending = set()
    finally:
        bar.close()
    summary.done = sum(1 for p in mine if journal.records.get(p.id, {}).get("status") == "done")
    summary.interrupted = summary.interrupted or stop.is_set() and summary.done + len(summary.failed) < len(mine)
    summary.seconds = time.monotonic() - started
    summary.report = _write_reports(out, shard, mine, journal.records, interrupted=summary.interrupted,
                                    seconds=summary.seconds)
    if shard.count > 1 and not summary.interrupted:
        # Whichever shard finishes last sees every journal complete and writes the merged report (the same
        # bytes, should two finish at once).
        merged, records = _merge(out, shard.count, photos)
        if merged["complete"]:
            _write_merged(out, photos, records, merged)
            summary.merged = merged
    return summary


def merge_catalog(out: str | Path, *, source: str | Path | None = None) -> dict:
    """Joins the shards of a catalog: reads every shard's journal, checks that each photo of the source is
    recorded by the shard that owns it and by no other, and writes the top-level report.json and failures.csv.

    Args:
        out: The catalog's output folder (catalog.json names the source and the shard count).
        source: Read the photos here instead of where catalog.json says (the same photos, mounted elsewhere).

    Returns:
        The merged report: totals, per-shard counts, `complete` (every photo done or failed, every shard
        started, nothing misplaced), `missing_shards` (shards with no journal yet) and `misplaced` (ids recorded
        by a shard that does not own them, or by two: always empty unless the folder was tampered with).
    """
    out = Path(out).expanduser()
    settings_path = out / "catalog.json"
    if not settings_path.exists():
        raise FileNotFoundError(f"{out} holds no catalog (no catalog.json)")
    settings = json.loads(settings_path.read_text())
    source = Path(source or settings["source"])
    if not source.exists():
        raise FileNotFoundError(f"{source}: the catalog's photos are not there; pass --source where they are")
    photos = discover(source, follow_links=settings.get("follow_links", False))
    report, records = _merge(out, int(settings.get("shards", 1)), photos)
    _write_merged(out, photos, records, report)
    return report


def _merge(out: Path, count: int, photos: Sequence[Photo]) -> tuple[dict, dict[str, dict]]:
    records: dict[str, dict] = {}
    owner: dict[str, int] = {}
    misplaced, missing, shards = [], [], []
    for index in range(count):
        shard = Shard(index, count)
        path = shard_dir(out, shard) / "journal.jsonl"
        if not path.exists():
            missing.append(index)
        for pid, record in Journal(path).records.items():
            if not shard.owns(pid) or pid in owner:
                misplaced.append(pid)
                continue
            owner[pid] = index
            records[pid] = record
    for index in range(count):
        shards.append({"shard": f"{index}/{count}",
                       **_counts([p for p in photos if shard_of(p.id, count) == index], records, out)})
    totals = _counts(photos, records, out)
    report = {**totals, "complete": totals["pending"] == 0 and not missing and not misplaced,
              "shards": shards, "missing_shards": missing, "misplaced": sorted(set(misplaced))}
    return report, records


def _write_merged(out: Path, photos: Sequence[Photo], records: dict[str, dict], report: dict) -> None:
    _write_failures(out, photos, records)
    _write_faces(out, photos, records)
    atomic_write(out / "report.json", json.dumps(report, indent=2).encode())


def _mean(values: Sequence[float], digits: int = 3) -> float | None:
    return round(sum(values) / len(values), digits) if values else None


def _counts(photos: Sequence[Photo], records: dict[str, dict], out: Path) -> dict:
    done, failed = [], 0
    for photo in photos:
        record = records.get(photo.id)
        if record and record["status"] == "done" and _finished(record, photo, out, False):
            done.append(record)
        elif record and record["status"] == "failed":
            failed += 1
    psnrs = [r["psnr"] for r in done if r.get("psnr")]
    faces = [face for r in done for face in r.get("faces", ())]
    ids = [e["identity_distance"] for face in faces for e in face["edits"] if e["identity_distance"] is not None]
    return {"total": len(photos), "done": len(done), "failed": failed, "pending": len(photos) - len(done) - failed,
            "mean_inversion_psnr": _mean(psnrs),
            "mean_seconds_per_photo": _mean([r["seconds"] for r in done]),
            "faces": len(faces), "mean_reconstruction_psnr": _mean([f["reconstruction_psnr"] for f in faces]),
            "mean_identity_distance": _mean(ids, 4),
            "same_person_share": _mean([float(d < SAME_PERSON) for d in ids], 4)}


def _encode(message, pixels, fmt: str) -> bytes:
    if message.WhichOneof("payload") == "encoded":
        return message.encoded
    from PIL import Image
    return _png(Image.fromarray(pixels), "JPEG" if fmt in ("jpg", "jpeg") else "PNG")


def _png(image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _write_failures(folder: Path, photos: Sequence[Photo], records: dict[str, dict]) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "file", "code", "reason"])
    for photo in photos:
        record = records.get(photo.id)
        if record and record["status"] == "failed":
            writer.writerow([csv_cell(v) for v in (photo.id, record.get("file", str(photo.path)), record["code"],
                                                   record["error"])])
    atomic_write(folder / "failures.csv", rows.getvalue().encode())


def _write_faces(folder: Path, photos: Sequence[Photo], records: dict[str, dict]) -> None:
    """faces.csv (one row per face and edited image) and faces.json (per photo) from the journal's records."""
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "face_index", "x", "y", "width", "height", "reconstruction_psnr", "image", "edit", "step",
                     "distance", "identity_distance", "same_person"])
    listing = []
    for photo in photos:
        record = records.get(photo.id)
        if not record or record["status"] != "done":
            continue
        listing.append({"id": photo.id, "key": record["key"], "faces": record.get("faces", [])})
        for face in record.get("faces", ()):
            for e in face["edits"]:
                d = e["identity_distance"]
                # Only the text cells go through csv_cell: a negative distance stays a number.
                writer.writerow([csv_cell(photo.id), face["index"], *face["box"], face["reconstruction_psnr"],
                                 csv_cell(e["image"]), csv_cell(e["edit"]), e["step"], e["distance"],
                                 "" if d is None else d, "" if d is None else d < SAME_PERSON])
    atomic_write(folder / "faces.csv", rows.getvalue().encode())
    atomic_write(folder / "faces.json", json.dumps(listing, indent=2).encode())


def _write_reports(out: Path, shard: Shard, photos: Sequence[Photo], records: dict[str, dict], *,
                   interrupted: bool, seconds: float) -> dict:
    folder = shard_dir(out, shard)
    _write_failures(folder, photos, records)
    _write_faces(folder, photos, records)
    counts = _counts(photos, records, out)
    report = {**({"shard": str(shard)} if shard.count > 1 else {}), **counts, "interrupted": interrupted,
              "seconds_this_run": round(seconds, 3)}
    atomic_write(folder / "report.json", json.dumps(report, indent=2).encode())
    return report
