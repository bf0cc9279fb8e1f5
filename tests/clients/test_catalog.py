"""The catalog tool on the real cluster: every photo edited once, resumed after an interruption (in-process stop and
a SIGTERM'd `ifgan catalog`), a failure report naming each bad file and why, outputs written atomically; names
that meet once made file-name safe keep their own outputs, links out of the folder are not read, and the CSV
report is safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from interfacegan import Client
from interfacegan.catalog import discover, output_key, read_photo, run_catalog
from services.cluster import free_port
from services.common import assets

P = f"cat{uuid.uuid4().hex[:6]}"
IFGAN = Path(sys.executable).with_name("ifgan")


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.services["editor"].address) as c:
        v = np.random.default_rng(1).standard_normal((1, 100))
        buf = io.BytesIO()
        np.save(buf, v / np.linalg.norm(v))
        c.import_boundary(buf.getvalue(), model="dcgan-digiface-64", attribute=P, space="Z")
        yield c


def photos(folder: Path, *, bad: bool) -> list[str]:
    """Four real photos (two public-domain portraits, a mirrored one, a small JPEG); with `bad`, a file that is
    not an image and a picture without a face."""
    (folder / "more").mkdir(parents=True)
    astronaut = Image.open(assets.path_of("astronaut.png")).convert("RGB")
    hopper = Image.open(assets.path_of("grace_hopper.jpg")).convert("RGB")
    astronaut.save(folder / "astronaut.png")
    hopper.save(folder / "hopper.jpg", quality=92)
    ImageOps.mirror(astronaut).save(folder / "more" / "mirrored.png")
    hopper.resize((300, 352)).save(folder / "more" / "small.jpeg", quality=85)
    names = ["astronaut.png", "hopper.jpg", "more/mirrored.png", "more/small.jpeg"]
    if bad:
        (folder / "broken.png").write_bytes(b"\x89PNG but not really an image")
        Image.new("RGB", (320, 240), (128, 128, 128)).save(folder / "blank.png")
        names += ["broken.png", "blank.png"]
    return sorted(names)


EDITS = [f"{P}:-2:2:2"]
OPTIONS = dict(concurrency=2, inversion_steps=15, timeout=240, progress=False)


def test_interrupted_catalog_resumes_without_redoing_or_skipping_and_reports_failures(client, tmp_path):
    names = photos(tmp_path / "in", bad=True)
    out = tmp_path / "out"
    calls: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def counting(stop_after: int | None):
        def edit(**kwargs):
            with lock:
                calls.append(kwargs["photo"][:64])
                if stop_after is not None and len(calls) >= stop_after:
                    stop.set()  # as Ctrl-C does: start nothing new, finish and journal what is in flight
            return client.edit(**kwargs)
        return edit

    first = run_catalog(client, tmp_path / "in", out, EDITS, stop=stop, edit_fn=counting(2), **OPTIONS)
    assert first.interrupted and 2 <= len(calls) <= 3
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    first_ids = [r["id"] for r in journal]
    assert len(first_ids) == len(calls) and len(set(first_ids)) == len(first_ids)

    calls.clear()
    second = run_catalog(client, tmp_path / "in", out, EDITS, edit_fn=counting(None), **OPTIONS)
    assert not second.interrupted and len(calls) == len(names) - len(first_ids)
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in journal]
    assert sorted(ids) == names  # every photo exactly once: none redone, none skipped
    assert second.done == 4 and set(second.failed) == {"broken.png", "blank.png"}
    code, reason = second.failed["broken.png"]
    assert code == "INVALID_ARGUMENT" and "image" in reason
    assert "face" in second.failed["blank.png"][1]

    with open(out / "failures.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"broken.png", "blank.png"}
    assert rows["broken.png"]["file"].endswith("broken.png") and rows["broken.png"]["reason"]
    report = json.loads((out / "report.json").read_text())
    assert (report["total"], report["done"], report["failed"], report["pending"]) == (6, 4, 2, 0)
    assert report["mean_inversion_psnr"] > 10

    for record in journal:
        if record["status"] != "done":
            continue
        for name in record["outputs"]:
            with Image.open(out / name) as im:
                im.load()
        source = Image.open(tmp_path / "in" / record["id"])
        assert Image.open(out / record["outputs"][0]).size == source.size  # blended back into the photo
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    grid = Image.open(out / output_key("more/small.jpeg") / "grid.png")
    assert grid.width > 3 * 64

    # Nothing left: a third run calls nothing; asking to retry the failures calls exactly those two.
    calls.clear()
    third = run_catalog(client, tmp_path / "in", out, EDITS, edit_fn=counting(None), **OPTIONS)
    assert calls == [] and third.skipped == 6
    run_catalog(client, tmp_path / "in", out, EDITS, edit_fn=counting(None), retry_failed=True, **OPTIONS)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="other settings"):
        run_catalog(client, tmp_path / "in", out, [f"{P}:1"], **OPTIONS)


def test_ifgan_catalog_stopped_by_sigterm_resumes_where_it_stopped(cluster, client, tmp_path):
    names = photos(tmp_path / "in", bad=False)
    listing = tmp_path / "photos.csv"
    listing.write_text("id,path\n" + "".join(f"p{i},in/{n}\n" for i, n in enumerate(names)))
    out = tmp_path / "out"
    command = [str(IFGAN), "--address", cluster.services["editor"].address, "-q", "catalog", str(listing), "-o",
               str(out), "-e", f"{P}:1.5", "-j", "1", "--inversion-steps", "15"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 240
    while not (journal.exists() and journal.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=240)
    stopped = [json.loads(line)["id"] for line in journal.read_text().splitlines()]
    assert proc.returncode == 130 and "run the same command again" in output, output
    assert 1 <= len(stopped) < len(names)

    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(names)} of {len(names)} photos done" in done.stdout
    ids = [json.loads(line)["id"] for line in journal.read_text().splitlines()]
    assert sorted(ids) == [f"p{i}" for i in range(len(names))] and ids[:len(stopped)] == stopped
    assert all((out / output_key(f"p{i}") / "original.png").exists() for i in range(len(names)))
    assert (out / "failures.csv").read_text().strip() == "id,file,code,reason"
    assert os.listdir(out / output_key("p0")) and not [p for p in out.rglob("*.tmp")]


def test_colliding_names_links_out_of_the_folder_and_formula_names_lose_nothing(client, tmp_path):
    """face.jpg / face.png and "a b.png" / "a_b.jpg" meet once made file-name safe: each keeps its own outputs and
    the journal names them; a link out of the folder is refused unread (one inside it is followed); a file named
    like a spreadsheet formula is reported in failures.csv as text."""
    src, outside = tmp_path / "in", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    astronaut = Image.open(assets.path_of("astronaut.png")).convert("RGB").resize((320, 320))
    hopper = Image.open(assets.path_of("grace_hopper.jpg")).convert("RGB").resize((300, 352))
    hopper.save(src / "face.jpg", quality=90)
    astronaut.save(src / "face.png")
    ImageOps.mirror(astronaut).resize((288, 288)).save(src / "a b.png")
    ImageOps.mirror(hopper).resize((270, 317)).save(src / "a_b.jpg", quality=90)
    formula = "=cmd|calc!A1.jpg"
    (src / formula).write_bytes(b"not an image at all")
    hopper.resize((256, 300)).save(outside / "secret.png")
    (src / "link.png").symlink_to(outside / "secret.png")  # out of the folder: never read
    (src / "inner.png").symlink_to(formula)  # inside the folder: followed, read and sent
    (src / "elsewhere").symlink_to(outside, target_is_directory=True)
    secret = (outside / "secret.png").read_bytes()
    sizes = {"face.jpg": (300, 352), "face.png": (320, 320), "a b.png": (288, 288), "a_b.jpg": (270, 317)}

    sent: list[bytes] = []
    lock = threading.Lock()

    def edit(**kwargs):
        with lock:
            sent.append(kwargs["photo"])
        return client.edit(**kwargs)

    out = tmp_path / "out"
    stale = out / output_key("face.png") / ".original.png.4242.1.tmp"  # as a process killed mid-write leaves it
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    first = run_catalog(client, src, out, EDITS, edit_fn=edit, **OPTIONS)
    assert not stale.exists()
    assert secret not in sent and len(sent) == 6  # four photos, the formula-named file and the link to it
    assert any("elsewhere/" in w and "--follow-links" in w for w in first.warnings)
    assert first.done == 4 and set(first.failed) == {formula, "inner.png", "link.png"}
    assert first.failed["link.png"][0] == "REFUSED" and "--follow-links" in first.failed["link.png"][1]
    assert first.failed[formula][0] == first.failed["inner.png"][0] == "INVALID_ARGUMENT"

    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in journal) == sorted([*sizes, formula, "inner.png", "link.png"])
    done = {r["id"]: r for r in journal if r["status"] == "done"}
    keys = {r["key"] for r in journal}
    assert len(keys) == len(journal) and len({k.casefold() for k in keys}) == len(keys)
    folders = {p.parent for r in done.values() for p in map(Path, r["outputs"])}
    assert len(folders) == 4 and len({f.parent for f in folders}) == 1  # four sibling folders, one per photo
    for pid, record in done.items():
        assert record["key"] == output_key(pid) and all(o.startswith(record["key"] + "/") for o in record["outputs"])
        assert Image.open(out / record["outputs"][0]).size == sizes[pid]  # its own photo, blended back

    text = (out / "failures.csv").read_text()
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert {r[0] for r in rows} == {"'" + formula, "inner.png", "link.png"}
    assert not [cell for row in rows for cell in row if cell[:1] in ("=", "+", "-", "@")]

    sent.clear()
    again = run_catalog(client, src, out, EDITS, edit_fn=edit, **OPTIONS)
    assert sent == [] and again.skipped == 7 and again.done == 4  # the journal agrees with the outputs

    # Asked to, the catalog follows links out of its folder.
    followed = {p.id: p for p in discover(src, follow_links=True)}
    assert not followed["link.png"].refused and read_photo(followed["link.png"]) == secret
    assert "elsewhere/secret.png" in followed
    assert "elsewhere/secret.png" not in {p.id for p in discover(src)}


def test_exit_status_tells_a_scheduler_whether_a_rerun_can_help(tmp_path):
    """75 when photos failed for reasons that may pass (here: no server at the address), 1 for lasting failures
    only (a link out of the folder), 0 for those with --lasting-failures-ok (what the Kubernetes Job passes)."""
    photos = tmp_path / "in"
    photos.mkdir()
    Image.open(assets.path_of("astronaut.png")).convert("RGB").resize((64, 64)).save(photos / "face.png")
    address = f"127.0.0.1:{free_port()}"

    def ifgan(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(IFGAN), "--address", address, "--timeout", "3", "-q", "catalog", *args],
                              capture_output=True, text=True, timeout=120)

    down = ifgan(str(photos), "-o", str(tmp_path / "down"))
    assert down.returncode == 75 and "face.png: UNAVAILABLE" in down.stdout, down.stdout + down.stderr

    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "face.png").symlink_to(photos / "face.png")
    lasting = ifgan(str(tmp_path / "links"), "-o", str(tmp_path / "lasting"))
    assert lasting.returncode == 1 and "face.png: REFUSED" in lasting.stdout, lasting.stdout + lasting.stderr
    accepted = ifgan(str(tmp_path / "links"), "-o", str(tmp_path / "lasting"), "--lasting-failures-ok")
    assert accepted.returncode == 0 and "1 skipped as already handled" in accepted.stdout, accepted.stdout
