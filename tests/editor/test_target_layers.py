"""A target edit of a W+ code on a layer range, through real services: a small random-weight StyleGAN of the zoo,
a scorer that scores every image (face threshold 0: these renders are textures, not faces), and a boundary
imported for it. The search moves only the asked layers, reports what it measured, and the receipt replays it."""

from __future__ import annotations

import io
import json
import uuid

import grpc
import numpy as np
import pytest

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc

MODEL = {"name": "stylegan-tiny", "architecture": "stylegan", "resolution": 16, "weights": "random:3",
         "options": {"max_channels": 32, "w_dim": 64, "mapping_layers": 4}}
WP = common_pb2.LATENT_SPACE_WP
RAW = common_pb2.IMAGE_FORMAT_RAW


@pytest.fixture(scope="module")
def stub(cluster, launch_service, redis_url, tmp_path_factory):
    models = tmp_path_factory.mktemp("tiny") / "models.json"
    models.write_text(json.dumps([MODEL]))
    generator = launch_service("generator", "--models-json", str(models))
    scorer = launch_service("scorer", "--face-threshold", "0")
    boundary = launch_service("boundary", "--redis-url", redis_url, "--redis-prefix", f"wp{uuid.uuid4().hex[:8]}:",
                              "--generator-address", generator.address, "--scorer-address", scorer.address)
    editor = launch_service("editor", "--generator-address", generator.address, "--scorer-address", scorer.address,
                            "--boundary-address", boundary.address,
                            "--inversion-address", cluster.services["inversion"].address)
    normal = np.random.default_rng(11).standard_normal((1, 64))
    buf = io.BytesIO()
    np.save(buf, normal / np.linalg.norm(normal))
    with grpc.insecure_channel(editor.address) as channel:
        boundary_pb2_grpc.BoundaryServiceStub(channel).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
            file_name="stylegan-tiny_smile_w_boundary.npy", npy=buf.getvalue(), model=MODEL["name"],
            attribute="smile", space=common_pb2.LATENT_SPACE_W), timeout=60)
        yield editor_pb2_grpc.EditorServiceStub(channel)


def codes(frame) -> np.ndarray:
    c = frame.code.codes
    return np.frombuffer(c.data, np.float32).reshape(tuple(c.shape))


def test_a_target_edit_on_a_w_plus_layer_range_moves_only_those_layers(stub):
    request = editor_pb2.EditRequest(
        seed=3, model=common_pb2.ModelRef(name=MODEL["name"]), space=WP, format=RAW, include_original=True,
        rescore=True, edits=[editor_pb2.AttributeEdit(attribute="smile", delta=0.02, tolerance=0.01, layer_start=1,
                                                      layer_end=3, max_distance=6, max_rounds=4)])
    original, frame = list(stub.Edit(request, timeout=300))
    t = frame.target
    assert t.attribute == "smile" and t.unit == "ratio" and t.stop in ("met", "rounds", "unreachable", "wrong_way")
    assert t.distance == frame.distance and abs(t.distance) <= 6 and 1 <= t.rounds <= 4 and t.evaluations > 1
    after = next(s.value for s in frame.scores if s.attribute == "smile" and s.valid)
    assert t.after == pytest.approx(after) and t.met == (abs(after - t.goal) <= 0.01)
    before, moved = codes(original), codes(frame)
    assert before.shape == moved.shape and before.shape[1] > 3
    changed = np.flatnonzero(np.any(before != moved, axis=(0, 2)))
    assert t.distance != 0 and list(changed) == [1, 2]  # the layer range [1, 3) and nothing else
    receipt = frame.receipt
    assert (receipt.layer_start, receipt.layer_end, receipt.space) == (1, 3, WP)
    assert (receipt.replay.edits[0].layer_start, receipt.replay.edits[0].layer_end) == (1, 3)
    (again,) = list(stub.Edit(receipt.replay, timeout=300))
    assert again.image.raw.data == frame.image.raw.data and np.array_equal(codes(again), moved)
