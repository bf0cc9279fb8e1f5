"""Every face of a photo through the SDK, the CLI and the catalog against real services (a Redis variant store,
scorer, generator, inversion with pivotal tuning, boundary, editor), and the editor tuning a photo again when the
store lost its variant between inversion and rendering."""

from __future__ import annotations

import collections
import csv
import io
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from PIL import Image

from interfacegan import ApiError, Client
from interfacegan.catalog import output_key, run_catalog
from services.cluster import RedisProcess, free_port
from services.common import assets, variants

P = f"ph{uuid.uuid4().hex[:6]}"
MODEL = "dcgan-digiface-64"
IFGAN = Path(sys.executable).with_name("ifgan")
EDIT = f"{P}:-2:2:2"


@pytest.fixture(scope="module")
def stack(launch_service, tmp_path_factory):
    """A Redis of its own (the tests watch its keyspace), and the five services over it."""
    store = RedisProcess.start(free_port(), tmp_path_factory.mktemp("photo-redis"))
    env = {"IFGAN_REDIS_URL": store.url}
    scorer = launch_service("scorer")
    generator = launch_service("generator", "--drain-seconds", "0", env=env)
    inversion = launch_service("inversion", "--tuning-steps", "40", env=env)
    boundary = launch_service("boundary", env=env)
    editor = launch_service("editor", "--drain-seconds", "0", env={
        "IFGAN_GENERATOR_ADDRESS": generator.address, "IFGAN_SCORER_ADDRESS": scorer.address,
        "IFGAN_BOUNDARY_ADDRESS": boundary.address, "IFGAN_INVERSION_ADDRESS": inversion.address})
    with Client(editor.address, timeout=600) as client:
        rng = np.random.default_rng(8)
        for name in (P, *(f"{P}-fresh{i}" for i in range(4))):
            v = rng.standard_normal((1, 100))
            buf = io.BytesIO()
            np.save(buf, v / np.linalg.norm(v))
            client.import_boundary(buf.getvalue(), model=MODEL, attribute=name, space="Z")
        yield {"client": client, "address": editor.address, "redis_url": store.url}
    store.stop()


def portrait(name: str) -> np.ndarray:
    return np.asarray(Image.open(assets.path_of(name)).convert("RGB"))


def resized(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width, round(h * width / w)), Image.LANCZOS))


@pytest.fixture(scope="module")
def group() -> np.ndarray:
    """Two real people in one photo: the public-domain astronaut and Grace Hopper, side by side at two scales
    (as bench/photos.py composes its group photo)."""
    canvas = np.full((340, 560, 3), 90, np.uint8)
    astronaut = resized(portrait("astronaut.png")[30:330, 120:420], 260)
    hopper = resized(portrait("grace_hopper.jpg")[60:420, 110:470], 200)
    canvas[20:20 + astronaut.shape[0], 20:20 + astronaut.shape[1]] = astronaut
    canvas[60:60 + hopper.shape[0], 320:320 + hopper.shape[1]] = hopper
    return canvas


def changed_in(image: np.ndarray, photo: np.ndarray, box) -> int:
    x, y, w, h = (int(round(v)) for v in box)
    return int(np.any(image[y:y + h, x:x + w] != photo[y:y + h, x:x + w], axis=-1).sum())


def test_sdk_edits_every_face_of_a_group_photo_or_the_chosen_ones(stack, group):
    client = stack["client"]
    result = client.edit(photo=group, edits=[EDIT], blend=True, include_original=True, include_face=True,
                         face_selection="all")
    assert [f.index for f in result.faces] == [0, 1]
    boxes = [list(f.box) for f in result.faces]
    assert boxes[0][2] > boxes[1][2] and sorted(b[0] < 280 for b in boxes) == [False, True]  # one each, largest first
    assert all(f.reconstruction_psnr > 22 for f in result.faces)  # tuned: 40 steps in these tests
    for frame in result.frames:
        assert [g.index for g in frame.faces] == [0, 1] and frame.message.blend_mode == "change"
        # Measured on every face of every image: nothing for the untouched input, something for an edit.
        top = 0.05 if frame.edit_index < 0 else 2.0
        assert all(0 <= g.identity_distance < top for g in frame.faces), frame.faces
    # The real input is the original; the reconstruction is the generator's render, shown apart from it.
    assert np.array_equal(result.photo, group) and np.array_equal(result.original.image, group)
    assert result.reconstruction.shape == (64, 64, 3)
    # Every face's reconstruction, the largest's being the one above; the faces of the edits are other renders.
    recon = result.reconstructions
    assert sorted(recon) == [0, 1] and np.array_equal(recon[0], result.reconstruction)
    assert recon[1].shape == (64, 64, 3) and not np.array_equal(recon[0], recon[1])
    last = result.edit(0)[-1].message.faces
    assert all(g.HasField("face") for g in last) and last[1].face.encoded != result.original.message.faces[1].face.encoded
    edited = result.edit(0)[-1].image
    assert all(changed_in(edited, group, box) > 100 for box in boxes)  # both faces edited, in one photo
    grid = result.grid(scale=1, identity=True)
    assert grid.height >= group.shape[0] and grid.width >= 4 * group.shape[1]  # input, reconstruction, 2 edits

    second = client.edit(photo=group, edits=[EDIT], blend=True, face_indices=[1])
    assert [f.index for f in second.faces] == [1] and second.faces[0].box == pytest.approx(boxes[1], abs=1)
    image = second.edit(0)[-1].image
    assert changed_in(image, group, boxes[0]) == 0 and changed_in(image, group, boxes[1]) > 100

    fast = client.edit(photo=group, edits=[EDIT], blend=True, include_original=True, face_selection="largest",
                       skip_tuning=True, paste_whole_face=True)
    assert [f.index for f in fast.faces] == [0] and not fast.frames[0].message.variant
    assert fast.original.message.blend_mode == "face"
    # A whole-face paste of the reconstruction is not the input: the SDK shows it as the reconstruction.
    assert not np.array_equal(fast.reconstruction, group) and np.array_equal(fast.photo, group)


def test_photo_options_are_checked_before_anything_is_sent(stack, group):
    client = stack["client"]
    with pytest.raises(ValueError, match="face_indices"):
        client.edit(photo=group, edits=[EDIT], face_selection="all", face_indices=[1])
    with pytest.raises(ValueError, match="photo options"):
        client.edit(seed=3, edits=[EDIT], skip_tuning=True)
    with pytest.raises(ApiError) as e:
        client.edit(photo=group, edits=[EDIT], face_indices=[5], skip_tuning=True)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in e.value.details


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_catalog_edits_every_face_and_reports_each_one(stack, group, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(group).save(src / "group.png")
    hopper = resized(portrait("grace_hopper.jpg"), 300)
    Image.fromarray(hopper).save(src / "hopper.jpg", quality=92)
    out = tmp_path / "out"
    calls = []

    def edit(**kwargs):
        calls.append(kwargs)
        return stack["client"].edit(**kwargs)

    summary = run_catalog(None, src, out, [EDIT], concurrency=1, progress=False, edit_fn=edit, timeout=600)
    assert summary.ok and summary.done == 2
    assert {c["face_selection"] for c in calls} == {"all"}  # every face by default
    journal = {r["id"]: r for r in map(json.loads, (out / "journal.jsonl").read_text().splitlines())}
    key = output_key("group.png")
    assert journal["group.png"]["outputs"][:3] == [f"{key}/original.png", f"{key}/grid.png",
                                                   f"{key}/reconstruction.png"]
    assert np.array_equal(np.asarray(Image.open(out / key / "original.png").convert("RGB")), group)
    assert Image.open(out / key / "reconstruction.png").size == (64, 64)
    assert journal["group.png"]["outputs"][-1] == f"{key}/reconstruction_face1.png"  # the second face's
    assert Image.open(out / key / "reconstruction_face1.png").size == (64, 64)

    rows = read_csv(out / "faces.csv")
    assert len(rows) == (2 + 1) * 2  # faces of both photos x two edited images each
    by_photo = collections.defaultdict(set)
    for row in rows:
        by_photo[row["id"]].add(row["face_index"])
        assert float(row["reconstruction_psnr"]) > 22 and float(row["width"]) > 40
        d = float(row["identity_distance"])
        assert 0 <= d < 2 and row["same_person"] == str(d < 0.6) and float(row["distance"]) in (-2, 2)
        assert row["image"].startswith(output_key(row["id"]) + "/") and (out / row["image"]).exists()
    assert by_photo == {"group.png": {"0", "1"}, "hopper.jpg": {"0"}}
    listing = json.loads((out / "faces.json").read_text())
    assert [p["id"] for p in listing] == ["group.png", "hopper.jpg"]
    assert [f["index"] for f in listing[0]["faces"]] == [0, 1]
    assert [f["reconstruction"] for f in listing[0]["faces"]] == [f"{key}/reconstruction.png",
                                                                  f"{key}/reconstruction_face1.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["faces"] == 3 and report["mean_reconstruction_psnr"] > 22
    ids = [float(r["identity_distance"]) for r in rows]
    assert report["mean_identity_distance"] == pytest.approx(np.mean(ids), abs=1e-3)
    assert report["same_person_share"] == pytest.approx(np.mean([d < 0.6 for d in ids]), abs=1e-3)

    calls.clear()
    again = run_catalog(None, src, out, [EDIT], concurrency=1, progress=False, edit_fn=edit, timeout=600)
    assert calls == [] and again.skipped == 2  # resumed: nothing redone
    assert read_csv(out / "faces.csv") == rows
    with pytest.raises(ValueError, match="other settings"):
        run_catalog(None, src, out, [EDIT], face_selection="largest", progress=False, edit_fn=edit)

    # Two shards by the command line, the second face of each photo only: the merged report lists it for the
    # group photo, and the portrait, which has one face, fails for a reason that says so.
    sharded, printed = tmp_path / "sharded", ""
    for index in range(2):
        run = subprocess.run([str(IFGAN), "--address", stack["address"], "--timeout", "600", "-q", "catalog",
                              str(src), "-o", str(sharded), "-e", EDIT, "--face-indices", "1", "--shard",
                              f"{index}/2", "--lasting-failures-ok"], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout + run.stderr
        printed += run.stdout
    assert "1 faces edited" in printed and "faces.csv" in printed
    merged = subprocess.run([str(IFGAN), "catalog-merge", str(sharded)], capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    rows = read_csv(sharded / "faces.csv")
    assert {(r["id"], r["face_index"]) for r in rows} == {("group.png", "1")}
    failures = read_csv(sharded / "failures.csv")
    assert [(f["id"], f["code"]) for f in failures] == [("hopper.jpg", "INVALID_ARGUMENT")]
    assert "out of range" in failures[0]["reason"]
    assert json.loads((sharded / "report.json").read_text())["faces"] == 1


def test_cli_edit_takes_the_photo_options_and_writes_input_and_reconstruction_apart(stack, group, tmp_path):
    photo = tmp_path / "group.png"
    Image.fromarray(group).save(photo)

    def ifgan(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(IFGAN), "--address", stack["address"], "--timeout", "600", "-q", "edit", *args],
                              capture_output=True, text=True, timeout=900, cwd=tmp_path)

    done = ifgan("--photo", str(photo), "-e", f"{P}:2", "--blend", "--face-selection", "all", "--skip-tuning",
                 "--grid", "grid.png", "-o", "out")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "face 0 at" in done.stdout and "face 1 at" in done.stdout
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted(["original.png", "reconstruction.png", "reconstruction_face1.png", f"{P}_00_+2.00.png"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "original.png").convert("RGB")), group)
    assert Image.open(tmp_path / "grid.png").width >= 3 * group.shape[1]
    for args, words in [(("--photo", str(photo), "--face-selection", "largest", "--face-indices", "1"), "face_indices"),
                        (("--seed", "1", "--paste-whole-face"), "--photo only"),
                        (("--seed", "1", "--change-smoothing", "0"), "--photo only"),
                        (("--photo", str(photo), "--face-indices", "one"), "face indices")]:
        refused = ifgan(*args, "-e", f"{P}:1")
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr


class VariantThief:
    """Deletes a tuned variant from the store as soon as it is written, its first `times` writes: the store
    flushed (or the key evicted) between the photo's inversion and its rendering, every time it can happen."""

    def __init__(self, url: str, times: int):
        self.times = times
        self.writes: collections.Counter[bytes] = collections.Counter()
        self.redis = redis.Redis.from_url(url)
        self.redis.config_set("notify-keyspace-events", "K$")  # keyspace events of string commands (SET)
        self.pubsub = self.redis.pubsub()
        self.pubsub.psubscribe(f"__keyspace@0__:{variants.KEY_PREFIX}*")
        while (m := self.pubsub.get_message(timeout=5)) is None or m["type"] != "psubscribe":
            pass
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            m = self.pubsub.get_message(timeout=0.1)
            if m and m["type"] == "pmessage" and m["data"] == b"set":
                key = m["channel"].split(b":", 1)[1]
                self.writes[key] += 1
                if self.writes[key] <= self.times:
                    self.redis.delete(key)

    def close(self) -> None:
        self.done.set()
        self.thread.join(5)
        self.pubsub.close()
        self.redis.close()


def test_a_variant_lost_between_inversion_and_edit_is_tuned_again_never_rendered_with_other_weights(stack):
    client = stack["client"]
    photo = resized(portrait("grace_hopper.jpg"), 320).copy()
    # The thief deletes the variant as soon as the inversion stores it; the generator may still have read it
    # first (a race on a busy machine). Then nothing was lost and the edit is right anyway: try again with
    # another photo (one no replica has cached) until the deletion came first.
    for attempt in range(4):
        photo[0, 0] = (1, 2, attempt)
        thief = VariantThief(stack["redis_url"], times=1)
        try:
            # A boundary the editor has not cached yet: its lookup widens the gap the thief deletes it in.
            lost = client.edit(photo=photo, edits=[f"{P}-fresh{attempt}:-2:2:2"], blend=True,
                               include_original=True)
        finally:
            thief.close()
        vid = lost.frames[0].message.variant
        key = (variants.KEY_PREFIX + vid).encode()
        assert thief.writes.get(key) in (1, 2) and len(thief.writes) == 1
        if thief.writes[key] == 2:  # deleted once, tuned again once
            break
    else:
        raise AssertionError("the generator read every variant before it was deleted: the lost path never ran")
    assert all(f.message.variant == vid for f in lost.frames)
    assert np.array_equal(lost.original.image, photo)
    assert lost.faces[0].reconstruction_psnr > 22 and lost.original.identity_distance < 0.05
    # The same call with the store intact renders the same images: the tuned weights, never the model's own.
    kept = client.edit(photo=photo, edits=[f"{P}-fresh{attempt}:-2:2:2"], blend=True, include_original=True)
    for a, b in zip(lost.frames, kept.frames):
        assert b.message.variant == vid and np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2

    # Every write deleted: one more tuning, then the clear refusal (again only once a deletion beat the read).
    for attempt in range(4):
        photo[0, 1] = (4, 5, attempt)
        thief = VariantThief(stack["redis_url"], times=1000)
        try:
            client.edit(photo=photo, edits=[f"{P}:1"], blend=True)
        except ApiError as e:
            error = e
            break
        finally:
            thief.close()
    else:
        raise AssertionError("the generator read every variant before it was deleted: the refusal never ran")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "again right after it was tuned anew" in error.details and "skip_tuning" in error.details
    assert list(thief.writes.values()) == [2]
