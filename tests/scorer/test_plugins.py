"""Plug-in attributes: ONNX models + manifests in a folder, no code change; built here with onnx.helper."""

from __future__ import annotations

import json
import math

import cv2
import dlib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from interfacegan.v1 import scorer_pb2
from services.common import assets
from services.scorer import manifest as mf
from services.scorer.engine import Engine


def _save(model: onnx.ModelProto, path) -> None:
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tone_model(path) -> None:
    """[N, 3, 16, 16] -> "means" [N, 3]: each channel's mean (dynamic batch, NCHW)."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["means"], axis=1)],
        "tone", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("means", TensorProto.FLOAT, ["N", 3])])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def chip_model(path) -> None:
    """[1, 32, 32, 3] (fixed batch 1, NHWC, as torch.onnx.export without dynamic axes) -> two outputs."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["channel_means"], axes=[1, 2], keepdims=0),
         helper.make_node("ReduceMax", ["x"], ["peak"], axes=[1, 2, 3], keepdims=1)],
        "chip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 32, 3])],
        [helper.make_tensor_value_info("peak", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("channel_means", TensorProto.FLOAT, [1, 3])])
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


TONE = {
    "model": "tone.onnx", "description": "mean colour of the whole image",
    "input": {"size": 16, "aligned": False, "color": "RGB", "layout": "NCHW", "scale": 1 / 255,
              "mean": 0, "std": 1},
    "runtime": {"providers": ["CPUExecutionProvider"], "graph_optimization_level": "basic", "max_batch_size": 8},
    "attributes": [
        {"name": "red_level", "kind": "regression", "output": "means", "index": 0, "scale": 255, "offset": -100,
         "unit": "byte", "range": [-100, 155], "description": "mean red byte minus 100"},
        {"name": "blue_share", "kind": "probability", "index": 2, "activation": "softmax",
         "range": [0, 1], "description": "softmax share of blue"},
        {"name": "tone_index", "kind": "expectation", "activation": "softmax", "weights": [0, 50, 100],
         "unit": "tone", "range": [0, 100], "description": "expected tone over 3 bins"},
    ],
}

CHIPPER_YAML = """\
# aligned 32 px chip, BGR, NHWC, fixed batch 1
name: chipper
model: chip.onnx
description: colour statistics of the aligned face chip
input:
  size: 32
  aligned: true
  padding: 0.2
  color: BGR
  layout: NHWC
  scale: 0.00392156862745098
  mean: [0, 0, 0]
  std: [1, 1, 1]
runtime:
  graph_optimization_level: all
attributes:
  - name: chip_blue
    kind: regression
    output: channel_means
    index: 0
    scale: 255
    unit: byte
    range: [0, 255]
    description: mean blue byte of the aligned chip
  - name: chip_green_odds
    kind: probability
    output: channel_means
    index: 1
    activation: sigmoid
    range: [0, 1]
    description: sigmoid of the chip's mean green (0..1)
  - name: chip_peak
    kind: regression
    output: 0
    unit: fraction
    range: [0, 1]
    description: brightest channel value of the chip
"""


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    tone_model(folder / "tone.onnx")
    (folder / "tone.json").write_text(json.dumps(TONE))
    (folder / "chipper").mkdir()
    chip_model(folder / "chipper" / "chip.onnx")
    (folder / "chipper" / "manifest.yaml").write_text(CHIPPER_YAML)
    (folder / "README.txt").write_text("not a manifest; ignored")
    return folder


@pytest.fixture(scope="module")
def served(plugins_dir, launch_service, client_for):
    # The folder comes from the environment variable here (the flag --plugins-dir works the same).
    return client_for(launch_service("scorer", env={"IFGAN_PLUGINS_DIR": str(plugins_dir)}).address)


def test_plugins_are_listed_with_units_ranges_and_source(served, plugins_dir):
    listed = {a.name: a for a in served.stub.ListAttributes(scorer_pb2.ListAttributesRequest()).attributes}
    assert list(listed)[:7] == ["gender", "age", "yaw", "pitch", "roll", "smile", "mouth_open"]
    assert sorted(list(listed)[7:]) == sorted(["red_level", "blue_share", "tone_index", "chip_blue",
                                               "chip_green_odds", "chip_peak"])
    red = listed["red_level"]
    assert red.plugin and red.group == "tone" and red.unit == "byte" and (red.min_value, red.max_value) == (-100, 155)
    assert red.source_model == f"tone.onnx sha256:{mf.sha256_prefix(plugins_dir / 'tone.onnx')}"
    assert red.description == "mean red byte minus 100"
    assert listed["blue_share"].unit == "probability"  # the default unit of a probability
    assert listed["chip_blue"].group == "chipper" and listed["chip_blue"].source_model.startswith("chip.onnx sha256:")
    info = served.stub.GetInfo(scorer_pb2.GetScorerInfoRequest())
    assert info.providers["tone"] == "CPUExecutionProvider" and info.providers["chipper"]


def test_unaligned_plugin_scores_follow_the_manifest(served, faces, img):
    names = ["red_level", "blue_share", "tone_index"]
    results = served.score([img.encoded(d) for _, d, _ in faces[:10]], names)
    for (_, _, array), r in zip(faces, results):
        if not r.face_found:
            assert not any(s.valid for s in r.scores)
            continue
        small = cv2.resize(array, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float64) / 255
        means = small.reshape(-1, 3).mean(0)
        share = np.exp(means) / np.exp(means).sum()
        got = {s.attribute: s.value for s in r.scores}
        assert all(s.valid for s in r.scores)
        assert got["red_level"] == pytest.approx(means[0] * 255 - 100, abs=1e-3)
        assert got["blue_share"] == pytest.approx(share[2], abs=1e-6)
        assert got["tone_index"] == pytest.approx(share @ [0, 50, 100], abs=1e-4)


def test_aligned_bgr_nhwc_fixed_batch_plugin(served, faces, img):
    # 10 images through a fixed-batch-1 model; the chip is dlib's aligned 32 px chip (4x bicubic first).
    predictor = dlib.shape_predictor(str(assets.path_of("shape_predictor_5_face_landmarks.dat")))
    results = served.score([img.encoded(d) for _, d, _ in faces[:10]], ["chip_blue", "chip_green_odds", "chip_peak"])
    checked = 0
    for (_, _, array), r in zip(faces, results):
        if not r.face_found:
            continue
        big = cv2.resize(array, (256, 256), interpolation=cv2.INTER_CUBIC)
        shape = predictor(big, dlib.rectangle(0, 0, 255, 255))
        chip = np.asarray(dlib.extract_image_chip(big, dlib.get_face_chip_details(shape, 32, 0.2))).astype(np.float64)
        got = {s.attribute: s.value for s in r.scores}
        assert got["chip_blue"] == pytest.approx(chip[..., 2].mean(), abs=1e-3)
        assert got["chip_green_odds"] == pytest.approx(1 / (1 + math.exp(-chip[..., 1].mean() / 255)), abs=1e-6)
        assert got["chip_peak"] == pytest.approx(chip.max() / 255, abs=1e-6)
        checked += 1
    assert checked >= 8


def test_plugins_and_builtins_mix_in_one_request(served, faces, img):
    (r,) = served.score([img.encoded(faces[0][1])], ["tone_index", "age", "chip_blue", "yaw"])
    assert [s.attribute for s in r.scores] == ["tone_index", "age", "chip_blue", "yaw"]
    assert all(s.valid for s in r.scores)


def test_a_broken_manifest_stops_start_up_naming_file_and_field(tmp_path, launch_service):
    tone_model(tmp_path / "tone.onnx")
    (tmp_path / "tone.json").write_text(json.dumps({**TONE, "attributes": [{**TONE["attributes"][0],
                                                                             "kind": "median"}]}))
    with pytest.raises(RuntimeError) as info:
        launch_service("scorer", "--plugins-dir", str(tmp_path))
    message = str(info.value)
    assert "tone.json" in message and "kind" in message and "probability, expectation, regression" in message


# -- manifest validation, in process ------------------------------------------------------------------------


@pytest.mark.parametrize("change, words", [
    ({"input": {**TONE["input"], "size": 0}}, ["size", "1..1024"]),
    ({"input": {**TONE["input"], "color": "YUV"}}, ["color", "RGB, BGR"]),
    ({"input": {**TONE["input"], "std": [1, 0, 1]}}, ["std", "greater than 0"]),
    ({"input": {**TONE["input"], "aligned": True, "size": [16, 24]}}, ["square"]),
    ({"input": {**TONE["input"], "aligned": True, "size": 16, "views": 17}}, ["views", "1..16"]),
    ({"input": {**TONE["input"], "aligned": False, "views": 2}}, ["views", "aligned: true"]),
    ({"runtime": {"graph_optimization_level": "max"}}, ["graph_optimization_level", "disable, basic, extended, all"]),
    ({"shape": 1}, ["unknown field", "shape"]),
    ({"model": "missing.onnx"}, ["missing.onnx", "does not exist"]),
    ({"attributes": []}, ["attributes", "non-empty"]),
    ({"attributes": [{**TONE["attributes"][2], "weights": []}]}, ["weights"]),
    ({"attributes": [{**TONE["attributes"][0], "range": [5, 1]}]}, ["range", "below"]),
    ({"attributes": [{**TONE["attributes"][0], "name": "bad name!"}]}, ["not a valid name"]),
    ({"attributes": [TONE["attributes"][0], TONE["attributes"][0]]}, ["repeat"]),
])
def test_manifest_mistakes_are_refused_with_what_is_accepted(tmp_path, change, words):
    tone_model(tmp_path / "tone.onnx")
    (tmp_path / "tone.json").write_text(json.dumps({**TONE, **change}))
    with pytest.raises(mf.ManifestError) as info:
        mf.load_folder(tmp_path)
    assert "tone.json" in str(info.value)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("change, words", [
    ({"input": {**TONE["input"], "size": 20}}, ["shape", "needs [N, 3, 20, 20]"]),
    ({"attributes": [{**TONE["attributes"][0], "index": 3}]}, ["index 3", "3 column"]),
    ({"attributes": [{**TONE["attributes"][2], "weights": [1, 2]}]}, ["2 weights", "3 columns"]),
    ({"attributes": [{**TONE["attributes"][0], "output": "logits"}]}, ["'logits' not found", "means"]),
    ({"attributes": [{**TONE["attributes"][0], "name": "age"}]}, ["'age' is already used"]),
])
def test_model_and_manifest_must_agree(tmp_path, models_dir, change, words):
    tone_model(tmp_path / "tone.onnx")
    (tmp_path / "tone.json").write_text(json.dumps({**TONE, **change}))
    with pytest.raises(mf.ManifestError) as info:
        Engine(plugins=mf.load_folder(tmp_path)).load()
    for word in words:
        assert word in str(info.value)


def test_names_must_be_unique_across_plugins(tmp_path):
    tone_model(tmp_path / "tone.onnx")
    (tmp_path / "tone.json").write_text(json.dumps(TONE))
    (tmp_path / "tone2.json").write_text(json.dumps(TONE))
    with pytest.raises(mf.ManifestError, match="red_level is also defined"):
        mf.load_folder(tmp_path)


def test_check_command_validates_a_folder_offline(plugins_dir, tmp_path, models_dir):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "services.scorer.check", str(plugins_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ok: 6 plug-in attribute(s)" in done.stdout and "tone_index" in done.stdout
    tone_model(tmp_path / "tone.onnx")
    (tmp_path / "tone.json").write_text(json.dumps({**TONE, "input": {**TONE["input"], "size": 20}}))
    done = subprocess.run([sys.executable, "-m", "services.scorer.check", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "needs [N, 3, 20, 20]" in done.stderr
