"""Catalog tool: a folder or CSV of photos -> edited images for a list of edits, resumable, with a failure report.

Layout of the output folder:
    catalog.json     the settings of the run (a resumed run must use the same ones)
    journal.jsonl    one line per finished photo (done or failed), fsync'ed: the resume point
    <id>/            per photo: original.png (the inverted reconstruction), <edit>_<k>.png, grid.png
    failures.csv     file, status code, reason: one row per photo that failed
    report.json      counts, timings, mean inversion PSNR

Every output file is written to a temporary name and renamed into place (os.replace), and a photo is
journaled only after all its files are in place: after an interruption (Ctrl-C, a crash, a killed
process) the same command goes on where it stopped, and no photo is edited twice or skipped.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from ._requests import ApiError
from .edits import EditResult, EditSpec, edit_specs
from .progress import ProgressBar

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: Failures worth another try when the run is resumed; others (no face, not an image) would fail again.
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN", "CANCELLED"}


@dataclasses.dataclass(frozen=True)
class Photo:
    """One input: a stable id (its relative path, or the CSV's id column) and where the file is."""

    id: str
    path: Path


@dataclasses.dataclass
class Summary:
    """What a run did. `failed` maps photo id -> (status code, reason)."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    out: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def discover(source: str | Path) -> list[Photo]:
    """The photos of a folder (PNG/JPEG, recursive, sorted) or of a CSV file (column path|file|image, optional id)."""
    source = Path(source).expanduser()
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(source).parts))
        return [Photo(p.relative_to(source).as_posix(), p) for p in files]
    if source.suffix.lower() == ".csv":
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return []
        columns = {c.lower().strip(): c for c in rows[0] if c}
        column = next((columns[c] for c in ("path", "file", "image", "photo") if c in columns), None)
        if column is None:
            raise ValueError(f"{source}: no path column; name one of path, file, image, photo (and optionally id)")
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
            photos.append(Photo(pid, path))
        return photos
    raise ValueError(f"{source}: give a folder of PNG/JPEG photos or a .csv file with a path column")


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


def safe_name(text: str) -> str:
    """A file-name-safe form of an id or edit label ('gender|age' -> 'gender-hold-age')."""
    text = text.replace("|", "-hold-", 1).replace("|", "+")
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._") or "item"


class Journal:
    """Append-only JSON-lines record of finished photos; the last line of an id wins. Thread-safe."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        if path.exists():
            with open(path, "rb") as f:
                for raw in f:
                    try:
                        record = json.loads(raw)
                    except ValueError:  # a line cut by a crash mid-write: that photo was not finished
                        continue
                    self.records[record["id"]] = record

    def append(self, record: dict) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock:
            with open(self.path, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[record["id"]] = record


def _outputs_of(photo: Photo, specs: Sequence[EditSpec], fmt: str) -> list[str]:
    # The id's folders are kept (each part made file-name safe, so no id can write outside the output folder).
    base = "/".join(safe_name(part) for part in os.path.splitext(photo.id)[0].replace("\\", "/").split("/") if part)
    ext = "jpg" if fmt in ("jpg", "jpeg") else "png"
    names = [f"{base}/original.{ext}", f"{base}/grid.png"]
    for spec in specs:
        names += [f"{base}/{safe_name(spec.label)}_{k:02d}.{ext}" for k in range(spec.steps)]
    return names


def run_catalog(client, source: str | Path, out: str | Path, edits: Sequence[EditSpec | str], *,
                concurrency: int = 2, blend: bool = True, image_format: str = "png", inversion_steps: int = 0,
                retry_failed: bool = False, timeout: float | None = None, progress: bool = True,
                stop: threading.Event | None = None,
                edit_fn: Callable[..., EditResult] | None = None) -> Summary:
    """Edits every photo of `source` with every edit; resumes a previous run into the same `out`.

    Args:
        client: an interfacegan.Client (thread-safe; calls run on `concurrency` threads).
        edits: EditSpec objects or strings such as "age:-3:3:5".
        concurrency: Photos in flight at once.
        blend: Paste each edited face back into the photo (else the outputs are the aligned face crops).
        retry_failed: Also retry photos that failed for a lasting reason (by default only transient failures
            such as UNAVAILABLE are retried on resume).
        stop: Set it to stop starting new photos (the ones in flight finish and are journaled).
        edit_fn: Replaces client.edit (tests).
    """
    started = time.monotonic()
    specs = edit_specs(edits)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    photos = discover(source)
    settings = {"source": str(Path(source).expanduser().resolve()), "edits": [dataclasses.asdict(s) for s in specs],
                "blend": blend, "format": image_format, "inversion_steps": inversion_steps}
    settings_path = out / "catalog.json"
    if settings_path.exists():
        previous = json.loads(settings_path.read_text())
        if json.loads(json.dumps(settings)) != previous:
            raise ValueError(f"{out} holds a catalog made with other settings ({settings_path}); resume with the same "
                             f"source and edits, or choose another output folder")
    else:
        atomic_write(settings_path, json.dumps(settings, indent=2).encode())
    journal = Journal(out / "journal.jsonl")
    summary = Summary(total=len(photos), out=out)

    todo = []
    for photo in photos:
        record = journal.records.get(photo.id)
        if record and record["status"] == "done" and all((out / o).exists() for o in record["outputs"]):
            summary.skipped += 1
            continue
        if record and record["status"] == "failed" and not retry_failed and record.get("code") not in TRANSIENT:
            summary.failed[photo.id] = (record["code"], record["error"])
            summary.skipped += 1
            continue
        todo.append(photo)

    edit = edit_fn or client.edit
    stop = stop or threading.Event()

    def work(photo: Photo) -> dict:
        t = time.monotonic()
        try:
            data = photo.path.read_bytes()
        except OSError as e:
            return {"id": photo.id, "file": str(photo.path), "status": "failed", "code": "UNREADABLE",
                    "error": f"{type(e).__name__}: {e.strerror or e}"}
        try:
            result = edit(photo=data, edits=specs, blend=blend, include_original=True, image_format=image_format,
                          inversion_steps=inversion_steps, timeout=timeout, output="numpy")
        except ApiError as e:
            return {"id": photo.id, "file": str(photo.path), "status": "failed", "code": e.code.name,
                    "error": e.details, "request_id": e.request_id}
        names = _outputs_of(photo, specs, image_format)
        frames = [result.original] + [f for i in range(len(specs)) for f in result.edit(i)]
        files = [names[0]] + names[2:]
        for name, frame in zip(files, frames):
            atomic_write(out / name, _encode(frame.message.image, frame.image, image_format))
        atomic_write(out / names[1], _png(result.grid(scale=2)))
        return {"id": photo.id, "file": str(photo.path), "status": "done", "outputs": names,
                "psnr": round(result.inversion_psnr, 3), "warnings": result.warnings,
                "request_id": result.request_id, "seconds": round(time.monotonic() - t, 3)}

    bar = ProgressBar(len(todo), "catalog", "photo", disable=not progress)
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
    summary.done = sum(1 for p in photos if journal.records.get(p.id, {}).get("status") == "done")
    summary.interrupted = summary.interrupted or stop.is_set() and summary.done + len(summary.failed) < len(photos)
    summary.seconds = time.monotonic() - started
    _write_reports(out, photos, journal, summary)
    return summary


def _encode(message, pixels, fmt: str) -> bytes:
    if message.WhichOneof("payload") == "encoded":
        return message.encoded
    from PIL import Image
    return _png(Image.fromarray(pixels), "JPEG" if fmt in ("jpg", "jpeg") else "PNG")


def _png(image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _write_reports(out: Path, photos: list[Photo], journal: Journal, summary: Summary) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "file", "code", "reason"])
    for photo in photos:
        record = journal.records.get(photo.id)
        if record and record["status"] == "failed":
            writer.writerow([photo.id, record.get("file", str(photo.path)), record["code"], record["error"]])
    atomic_write(out / "failures.csv", rows.getvalue().encode())
    done = [journal.records[p.id] for p in photos if journal.records.get(p.id, {}).get("status") == "done"]
    psnrs = [r["psnr"] for r in done if r.get("psnr")]
    report = {"total": len(photos), "done": len(done), "failed": len(summary.failed),
              "pending": len(photos) - len(done) - len(summary.failed), "interrupted": summary.interrupted,
              "seconds_this_run": round(summary.seconds, 3),
              "mean_inversion_psnr": round(sum(psnrs) / len(psnrs), 3) if psnrs else None,
              "mean_seconds_per_photo": round(sum(r["seconds"] for r in done) / len(done), 3) if done else None}
    atomic_write(out / "report.json", json.dumps(report, indent=2).encode())

