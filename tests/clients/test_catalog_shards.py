"""The catalog across machines: three `ifgan catalog --shard I/3` processes over one folder against the real cluster,
one of them killed (SIGKILL) mid-run and restarted; every photo is edited and journaled exactly once, by the shard
that owns it, and `ifgan catalog-merge` (and the last shard itself) writes the whole report."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from interfacegan import Client
from interfacegan.catalog import output_key, shard_of
from services.common import assets

P = f"shard{uuid.uuid4().hex[:6]}"
IFGAN = Path(sys.executable).with_name("ifgan")
SHARDS = 3
#: Photos per shard: the one that is killed has three, so one is done, one in flight and one not started.
SHARE = (3, 2, 2)
#: Not an image (its shard records the failure; the merged failures.csv must name it).
BROKEN = "broken.png"


@pytest.fixture(scope="module")
def address(cluster):
    address = cluster.services["editor"].address
    with Client(address) as c:
        v = np.random.default_rng(4).standard_normal((1, 100))
        buf = io.BytesIO()
        np.save(buf, v / np.linalg.norm(v))
        c.import_boundary(buf.getvalue(), model="dcgan-digiface-64", attribute=P, space="Z")
    return address


def names_for(share: tuple[int, ...]) -> list[str]:
    """File names whose shards (a hash of the name) give each shard the photo count `share` asks for."""
    names, counts = [], [0] * len(share)
    for k in range(1000):
        name = f"photo {k:03d}.png" if k % 2 else f"sub/photo_{k:03d}.jpg"
        s = shard_of(name, len(share))
        if counts[s] < share[s]:
            counts[s] += 1
            names.append(name)
        if counts == list(share):
            return sorted(names)
    raise AssertionError("no names found")


def make_photos(folder: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    astronaut = Image.open(assets.path_of("astronaut.png")).convert("RGB")
    hopper = Image.open(assets.path_of("grace_hopper.jpg")).convert("RGB")
    sizes = {}
    for i, name in enumerate(names):
        base = astronaut if i % 2 else hopper
        image = (ImageOps.mirror(base) if i % 4 >= 2 else base).resize((288 + 8 * i, 300 + 8 * i))
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name, **({"quality": 90} if name.endswith(".jpg") else {}))
        sizes[name] = image.size
    return sizes


def journal(out: Path, index: int) -> list[dict]:
    """A shard's journal records, read as the tool reads it: whole lines only (a line cut by the kill is skipped)."""
    path = out / "shards" / f"{index}-of-{SHARDS}" / "journal.jsonl"
    records = []
    for line in (path.read_text().split("\n")[:-1] if path.exists() else []):
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def test_three_shards_one_killed_and_restarted_edit_every_photo_once(address, tmp_path):
    names = names_for(SHARE)
    sizes = make_photos(tmp_path / "in", names)
    (tmp_path / "in" / BROKEN).write_bytes(b"\x89PNG but not an image")
    broken_shard = shard_of(BROKEN, SHARDS)
    total = [n + (i == broken_shard) for i, n in enumerate(SHARE)]
    out = tmp_path / "out"

    def shard(index: int) -> list[str]:
        return [str(IFGAN), "--address", address, "-q", "catalog", str(tmp_path / "in"), "-o", str(out), "-e",
                f"{P}:1.5", "-j", "1", "--inversion-steps", "10", "--shard", f"{index}/{SHARDS}",
                "--lasting-failures-ok"]

    procs = [subprocess.Popen(shard(i), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(SHARDS)]
    try:
        deadline = time.monotonic() + 300
        while not journal(out, 0):
            assert procs[0].poll() is None and time.monotonic() < deadline, procs[0].communicate()[0]
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGKILL)  # no clean-up at all: as a lost node
        procs[0].wait(timeout=30)
        before_kill = [r["id"] for r in journal(out, 0)]
        assert 1 <= len(before_kill) < total[0]
        for p in procs[1:]:
            output, _ = p.communicate(timeout=600)
            assert p.returncode == 0, output
            assert "other shards are not finished yet" in output, output
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # With shard 0 dead, the merge says what is missing.
    partial = subprocess.run([str(IFGAN), "catalog-merge", str(out)], capture_output=True, text=True, timeout=120)
    assert partial.returncode == 1, partial.stdout + partial.stderr
    assert f"shard 0/{SHARDS}: {total[0] - len(before_kill)} of {total[0]} photos pending" in partial.stderr
    report = json.loads((out / "report.json").read_text())
    assert not report["complete"] and report["pending"] == total[0] - len(before_kill)

    restarted = subprocess.run(shard(0), capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert f"shard 0/{SHARDS}: {SHARE[0]} of {total[0]} photos done" in restarted.stdout
    assert "every shard is finished" in restarted.stdout  # the last shard to finish merged the reports

    records = [(i, r) for i in range(SHARDS) for r in journal(out, i)]
    ids = [r["id"] for _, r in records]
    assert sorted(ids) == sorted(names + [BROKEN])  # every photo once over all journals: none redone, none lost
    assert [r["id"] for r in journal(out, 0)][:len(before_kill)] == before_kill
    assert all(shard_of(r["id"], SHARDS) == i for i, r in records)
    assert [r["id"] for _, r in records if r["status"] != "done"] == [BROKEN]
    for _, r in records:
        if r["id"] == BROKEN:
            continue
        assert r["key"] == output_key(r["id"]) and all(o.startswith(r["key"] + "/") for o in r["outputs"])
        with Image.open(out / r["outputs"][0]) as original:
            assert original.size == sizes[r["id"]]
        for name in r["outputs"]:
            with Image.open(out / name) as im:
                im.load()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # the killed shard's leftovers are gone

    report = json.loads((out / "report.json").read_text())
    assert report["complete"] and (report["total"], report["done"], report["failed"], report["pending"]) == \
        (len(names) + 1, len(names), 1, 0)
    assert [(s["shard"], s["total"], s["done"], s["failed"]) for s in report["shards"]] == \
        [(f"{i}/{SHARDS}", total[i], n, int(i == broken_shard)) for i, n in enumerate(SHARE)]
    assert report["missing_shards"] == [] and report["misplaced"] == [] and report["mean_inversion_psnr"] > 10
    (row,) = list(csv.DictReader(io.StringIO((out / "failures.csv").read_text())))
    assert row["id"] == BROKEN and row["code"] == "INVALID_ARGUMENT" and row["file"].endswith(BROKEN)
    assert (out / "shards" / f"{broken_shard}-of-{SHARDS}" / "failures.csv").read_text() == \
        (out / "failures.csv").read_text()

    merged = subprocess.run([str(IFGAN), "catalog-merge", str(out)], capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0 and f"{len(names)} of {len(names) + 1} photos done, 1 failed" in merged.stdout, \
        merged.stdout + merged.stderr
    assert json.loads((out / "report.json").read_text()) == report
    # A shard run again finds its share done and calls nothing; a different shard count is refused.
    again = subprocess.run(shard(1), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"{total[1]} skipped as already handled" in again.stdout, again.stdout
    other = subprocess.run([a.replace(f"1/{SHARDS}", "1/2") for a in shard(1)], capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 2 and "other settings" in other.stderr
