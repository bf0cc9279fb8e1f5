"""Dataset shards on disk and the reference .npy format, read from the real published files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from services.boundary import npyfiles
from services.boundary.dataset import Dataset, dataset_path, shard_seed

REFERENCE = Path(os.environ["IFGAN_REFERENCE_BOUNDARIES"])  # set by tests/conftest.py


def make(tmp_path, shard_size=100, attributes=("age", "gender")):
    path = dataset_path(tmp_path, "dcgan-digiface-64", "1", "z", 5)
    return Dataset.open_or_create(path, model="dcgan-digiface-64", model_version="1", space="z", seed=5,
                                  dimension=4, shard_size=shard_size, attributes=list(attributes))


def columns(n, offset, attributes=("age", "gender")):
    idx = np.arange(offset, offset + n)
    return ({a: (idx * (j + 1)).astype(np.float32) for j, a in enumerate(attributes)},
            {a: idx % 7 != 0 for a in attributes})


def test_shards_stream_back_in_order_and_gather_by_global_index(tmp_path):
    ds = make(tmp_path)
    codes = np.arange(250 * 4, dtype=np.float32).reshape(250, 4)
    for i, lo in enumerate(range(0, 250, 100)):
        ds.write_shard(i, codes[lo:lo + 100], *columns(min(100, 250 - lo), lo))
    assert ds.num_samples == 250 and [s.count for s in ds.shards] == [100, 100, 50]
    reopened = make(tmp_path)
    assert reopened.num_samples == 250 and reopened.attributes == ["age", "gender"]
    scores, valid = reopened.scores("gender")
    np.testing.assert_array_equal(scores, np.arange(250) * 2)
    np.testing.assert_array_equal(valid, np.arange(250) % 7 != 0)
    assert len(reopened.scores("age", limit=120)[0]) == 120
    picked = reopened.gather({"a": np.array([0, 99, 100, 249]), "b": np.array([5])})
    np.testing.assert_array_equal(picked["a"], codes[[0, 99, 100, 249]])
    np.testing.assert_array_equal(picked["b"], codes[[5]])
    # Only the shards' own files, written atomically (no temporaries left).
    assert sorted(p.name for p in ds.path.iterdir() if p.suffix != ".lock" and p.name != ".lock") == \
        ["manifest.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]


def test_partial_shard_is_replaced_in_place_and_attributes_can_be_added(tmp_path):
    ds = make(tmp_path)
    codes = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    ds.write_shard(0, codes[:40], *columns(40, 0))
    ds.write_shard(0, codes, *columns(100, 0))
    assert ds.num_samples == 100
    with pytest.raises(ValueError, match="gap"):
        ds.write_shard(2, codes, *columns(100, 0))
    with pytest.raises(ValueError, match="attributes"):
        ds.write_shard(1, codes, *columns(100, 0, ("age",)))
    ds.add_attributes(0, {"yaw": np.ones(100)}, {"yaw": np.ones(100, bool)})
    assert ds.shard_attributes(0) == {"age", "gender", "yaw"}
    ds.declare_attributes(["yaw"])
    assert make(tmp_path).attributes == ["age", "gender", "yaw"]
    np.testing.assert_array_equal(ds.scores("yaw")[0], np.ones(100))


def test_shard_seeds_are_distinct_and_stable():
    seeds = {shard_seed(s, i) for s in range(5) for i in range(200)}
    assert len(seeds) == 1000 and all(0 <= x < 2**63 for x in seeds)
    assert shard_seed(3, 4) == shard_seed(3, 4)


def test_reference_files_parse_load_and_round_trip():
    files = sorted(REFERENCE.glob("*_boundary.npy"))
    assert len(files) >= 20
    for f in files:
        model, attribute, space = npyfiles.parse_file_name(f.name)
        assert model.split("_")[0] in ("pggan", "stylegan") and "_" not in attribute
        assert space == (2 if f.name.endswith("_w_boundary.npy") else 1)
        data = f.read_bytes()
        normal = npyfiles.load_npy(data)
        assert normal.shape == (1, 512) and abs(np.linalg.norm(normal) - 1) < 1e-6
        assert npyfiles.file_name(model, attribute, space) == f.name
        np.testing.assert_array_equal(np.load(io.BytesIO(npyfiles.dump_npy(normal))), np.load(f))


def test_file_name_convention_for_conditions_spaces_and_registry_models():
    assert npyfiles.file_name("dcgan-digiface-64", "gender|age|yaw", 1) == \
        "dcgan-digiface-64_gender_c_age_yaw_boundary.npy"
    assert npyfiles.file_name("stylegan_ffhq", "age|gender", 2) == "stylegan_ffhq_age_c_gender_w_boundary.npy"
    assert npyfiles.parse_file_name("stylegan_ffhq_age_c_gender_w_boundary.npy") == ("stylegan_ffhq", "age|gender", 2)
    assert npyfiles.parse_file_name("dcgan-digiface-64_gender_c_age_boundary.npy") == \
        ("dcgan-digiface-64", "gender|age", 1)
    assert npyfiles.parse_file_name("stylegan2_ffhq_smile_wp_boundary.npy") == ("stylegan2_ffhq", "smile", 3)
    assert npyfiles.parse_file_name("my_model_mouth_open_boundary.npy", {"my_model"}) == ("my_model", "mouth_open", 1)
    assert npyfiles.parse_file_name("/tmp/x/pggan_celebahq_pose_boundary.npy")[1] == "pose"
    for bad in ("pggan_celebahq_pose.npy", "_boundary.npy", "pggan_boundary.npy", "m_x_c__boundary.npy"):
        with pytest.raises(ValueError, match="e.g."):
            npyfiles.parse_file_name(bad)


def test_npy_reader_refuses_what_is_not_a_boundary():
    def npy(array, **kw):
        buf = io.BytesIO()
        np.save(buf, array, **kw)
        return buf.getvalue()

    assert npyfiles.load_npy(npy(np.ones(8, np.float32))).shape == (1, 8)
    cases = {b"not an npy": "not a readable", npy(np.ones((2, 8))): "shape", npy(np.ones(8, np.int64)): "dtype",
             npy(np.zeros(8)): "non-zero", npy(np.array([1.0, np.nan])): "finite",
             npy(np.array([{"a": 1}], dtype=object), allow_pickle=True): "not a readable"}
    for data, message in cases.items():
        with pytest.raises(ValueError, match=message):
            npyfiles.load_npy(data)
