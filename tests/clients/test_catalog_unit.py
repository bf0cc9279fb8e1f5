"""The catalog's bookkeeping in-process: the shard of a photo, output keys, CSV cells, the journal after a crash,
what discovery and reading refuse."""

from __future__ import annotations

import os
import random
import threading

import pytest

from interfacegan.catalog import (Journal, Photo, Refused, Shard, csv_cell, discover, merge_catalog, output_key,
                                  read_photo, run_catalog, shard_of)


PINNED = [2, 0, 3, 0, 2, 3, 2, 2]


def test_shards_partition_the_ids_by_id_alone():
    ids = [f"folder{k % 7}/photo {k}.jpg" for k in range(3000)]
    shards = {i: shard_of(i, 3) for i in ids}
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert {i: shard_of(i, 3) for i in shuffled} == shards  # the listing order plays no part
    more = ids + [f"new/{k}.png" for k in range(500)]
    assert all(shard_of(i, 3) == shards[i] for i in more[:len(ids)])  # new photos move none of the old
    counts = [sum(1 for s in shards.values() if s == k) for k in range(3)]
    assert sum(counts) == len(ids) and min(counts) > 0.9 * len(ids) / 3
    assert [Shard(k, 3).owns("x.png") for k in range(3)].count(True) == 1
    # Pinned: a change would move photos between the shards of a catalog that is half done.
    assert [shard_of(f"p{k}", 4) for k in range(8)] == PINNED


@pytest.mark.parametrize("text, expected", [("0/1", Shard(0, 1)), ("2/8", Shard(2, 8)), (" 3 / 4 ", Shard(3, 4))])
def test_shard_parse(text, expected):
    assert Shard.parse(text) == expected and str(expected) == f"{expected.index}/{expected.count}"


@pytest.mark.parametrize("text", ["", "1", "4/4", "-1/4", "1/0", "a/b", "1/2/3", "0/100001"])
def test_shard_parse_refuses(text):
    with pytest.raises(ValueError, match="I/N"):
        Shard.parse(text)


def test_output_keys_are_unique_safe_and_stable():
    ids = ["face.jpg", "face.png", "a b.png", "a_b.jpg", "a_b.png", "Face.png", "x/a b.png", "x_y/a.png", "x y/a.png",
           "../../etc/passwd", "=cmd|calc!A1.jpg", "\udcff.png", "dir/" + "n" * 300 + ".png"]
    keys = [output_key(i) for i in ids]
    assert len({k.casefold() for k in keys}) == len(ids)
    for key in keys:
        parts = key.split("/")
        assert all(p and p not in (".", "..") and len(p) <= 100 for p in parts), key
        assert all(c.isalnum() or c in "._+-/" for c in key), key
    assert output_key("a b.png") == "a_b.png-e2974a8c84"  # pinned: resumed runs find their outputs
    assert output_key("more/small.jpeg").startswith("more/small.jpeg-")


@pytest.mark.parametrize("value, cell", [("=cmd|calc!A1.jpg", "'=cmd|calc!A1.jpg"), ("+1.jpg", "'+1.jpg"),
                                         ("-2.png", "'-2.png"), ("@SUM(A1).png", "'@SUM(A1).png"),
                                         ("\t=1", "'\t=1"), ("face.jpg", "face.jpg"), ("a=b.png", "a=b.png"),
                                         (None, ""), ("INVALID_ARGUMENT", "INVALID_ARGUMENT")])
def test_csv_cells_never_start_a_formula(value, cell):
    assert csv_cell(value) == cell


def test_journal_survives_a_line_cut_by_a_crash(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"id": "a", "status": "done"}\n{"id": "b", "sta')
    journal = Journal(path)
    assert set(journal.records) == {"a"}
    journal.append({"id": "c", "status": "done"})
    assert set(Journal(path).records) == {"a", "c"}  # the new line is not glued to the cut one


def test_discovery_skips_what_is_not_a_file_and_reading_refuses_links_out(tmp_path):
    root, outside = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    outside.mkdir()
    (outside / "x.png").write_bytes(b"outside")
    (root / "ok.png").write_bytes(b"inside")
    os.mkfifo(root / "fifo.png")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "swap.png").symlink_to(root / "ok.png")
    photos = {p.id: p for p in discover(root)}
    assert set(photos) == {"ok.png", "swap.png"}  # no FIFO; the loop is walked once
    assert read_photo(photos["swap.png"]) == b"inside"
    # The link is pointed out of the folder after discovery: reading still refuses it.
    (root / "swap.png").unlink()
    (root / "swap.png").symlink_to(outside / "x.png")
    with pytest.raises(Refused, match="--follow-links"):
        read_photo(photos["swap.png"])
    with pytest.raises(OSError, match="regular file"):
        read_photo(Photo("fifo.png", root / "fifo.png"))


def test_csv_links_are_followed_only_into_its_folder(tmp_path):
    (tmp_path / "outside.png").write_bytes(b"x")
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / "in.png").write_bytes(b"y")
    (folder / "link-out.png").symlink_to(tmp_path / "outside.png")
    (folder / "link-in.png").symlink_to(folder / "in.png")
    listing = folder / "photos.csv"
    listing.write_text(f"path\nin.png\nlink-out.png\nlink-in.png\n{tmp_path / 'outside.png'}\n")
    photos = {p.path.name: p for p in discover(listing)}
    assert photos["link-out.png"].refused and not photos["link-in.png"].refused
    assert read_photo(photos["outside.png"]) == b"x"  # a path the CSV names as it is, not through a link


def test_merge_needs_a_catalog(tmp_path):
    with pytest.raises(FileNotFoundError, match="catalog.json"):
        merge_catalog(tmp_path)


def test_shards_starting_at_once_with_other_settings_cannot_both_claim_the_folder(tmp_path):
    (tmp_path / "in").mkdir()
    out = tmp_path / "out"
    errors, started, barrier = [], [], threading.Barrier(8)

    def never(**_):
        raise AssertionError("an empty folder needs no call")

    def start(k: int):
        barrier.wait()
        try:
            started.append(run_catalog(None, tmp_path / "in", out, [f"age:{k}"], shard=f"{k % 2}/2", progress=False,
                                       edit_fn=never))
        except ValueError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=start, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(started) == 1 and len(errors) == 7  # one catalog, one set of settings
    assert all("other settings" in e for e in errors)
