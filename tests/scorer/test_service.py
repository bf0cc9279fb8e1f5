"""The served scorer: listing, validity flags, input checks, any image size, streaming, concurrency."""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from interfacegan.v1 import common_pb2, scorer_pb2
from services.common.errors import status_details

BUILTIN = ["gender", "age", "yaw", "pitch", "roll", "smile", "mouth_open"]


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _error(scorer, images, attributes=()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        scorer.score(images, attributes)
    return info.value


# -- listing ------------------------------------------------------------------------------------------------


def test_list_attributes_gives_units_ranges_and_source_models(scorer):
    listed = {a.name: a for a in scorer.stub.ListAttributes(scorer_pb2.ListAttributesRequest()).attributes}
    assert list(listed) == BUILTIN
    assert (listed["gender"].unit, listed["gender"].min_value, listed["gender"].max_value) == ("probability", 0, 1)
    assert (listed["age"].unit, listed["age"].min_value, listed["age"].max_value) == ("years", 0.25, 80)
    assert listed["age"].source_model.startswith("age-v1.onnx sha256:4f9f0075200b")
    assert listed["gender"].source_model.startswith("gender-v1.onnx sha256:d4c4116cf720")
    for name in ("yaw", "pitch", "roll"):
        assert listed[name].unit == "degrees" and listed[name].group == "mesh"
        assert listed[name].source_model.startswith("face_landmark.tflite sha256:1055cb9d4a9c")
    assert listed["smile"].unit == "ratio" and listed["smile"].min_value == 0 and math.isinf(listed["smile"].max_value)
    assert all(a.description and not a.plugin for a in listed.values())


def test_get_info_reports_the_provider_actually_in_use_and_limits(scorer):
    info = scorer.stub.GetInfo(scorer_pb2.GetScorerInfoRequest())
    assert [a.name for a in info.attributes] == BUILTIN
    # onnxruntime-gpu falls back to CPU where CUDA is missing; the provider reported is the session's own.
    assert info.providers["age"] in ort.get_available_providers()
    assert info.providers["gender"] in ort.get_available_providers()
    assert info.providers["mesh"] and info.providers["landmarks"]
    assert info.max_batch_size == 64 and info.max_request_images == 300
    assert info.max_image_pixels == 2048 * 2048 and info.face_threshold == 0.5


# -- validity -----------------------------------------------------------------------------------------------


def test_no_face_means_every_score_invalid_never_invented(scorer, faces, img):
    rng = np.random.default_rng(0)
    not_faces = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.zeros((64, 64, 3), np.uint8),
                 np.full((80, 120, 3), 200, np.uint8)]
    images = [img.raw(not_faces[0]), img.encoded(faces[0][1]), img.raw(not_faces[1]), img.encoded(faces[1][1]),
              img.raw(not_faces[2])]
    results = scorer.score(images)
    assert [r.face_found for r in results] == [False, True, False, True, False]
    for r in results:
        assert [s.attribute for s in r.scores] == BUILTIN
        assert all(s.valid == r.face_found for s in r.scores)
        assert 0 <= r.face_score <= 1 and (r.face_score >= 0.5) == r.face_found
        if not r.face_found:
            assert all(math.isnan(s.value) for s in r.scores)  # no stand-in value a caller could mistake


def test_scores_lie_in_their_declared_ranges(scorer, faces, img):
    listed = {a.name: a for a in scorer.stub.ListAttributes(scorer_pb2.ListAttributesRequest()).attributes}
    results = scorer.score([img.encoded(d) for _, d, _ in faces])
    assert sum(r.face_found for r in results) >= 22  # the mesh finds ~95% of DCGAN faces
    for r in results:
        for s in r.scores:
            if s.valid:
                assert listed[s.attribute].min_value <= s.value <= listed[s.attribute].max_value


def test_attribute_subset_in_request_order(scorer, faces, img):
    (r,) = scorer.score([img.encoded(faces[0][1])], ["smile", "age"])
    assert [s.attribute for s in r.scores] == ["smile", "age"]


# -- pose semantics -----------------------------------------------------------------------------------------


def test_pose_angles_are_degrees_with_documented_signs(scorer, faces, img):
    big = [cv2.resize(a, (256, 256), interpolation=cv2.INTER_CUBIC) for _, _, a in faces[:8]]
    rotate = lambda a, deg: cv2.warpAffine(  # noqa: E731 - counter-clockwise by `deg`
        a, cv2.getRotationMatrix2D((128, 128), deg, 1.0), (256, 256), borderMode=cv2.BORDER_REPLICATE)
    base = scorer.score([img.raw(a) for a in big], ["roll", "yaw", "smile"])
    ccw = scorer.score([img.raw(rotate(a, 15)) for a in big], ["roll"])
    flipped = scorer.score([img.raw(a[:, ::-1]) for a in big], ["roll", "yaw", "smile"])
    roll, ok = scorer.table(base, "roll")
    roll_ccw, ok2 = scorer.table(ccw, "roll")
    keep = ok & ok2
    # Rotating the picture 15 degrees counter-clockwise lowers roll (positive = clockwise) by about 15.
    assert keep.sum() >= 6
    assert abs(np.median((roll_ccw - roll)[keep]) + 15) < 3
    # A mirror image turns the head the other way: yaw changes sign (where the turn is clear); smile stays.
    yaw, ok = scorer.table(base, "yaw")
    yaw_f, ok_f = scorer.table(flipped, "yaw")
    turned = ok & ok_f & (np.abs(yaw) > 12)
    assert turned.sum() >= 2 and (np.sign(yaw_f[turned]) == -np.sign(yaw[turned])).all()
    smile, _ = scorer.table(base, "smile")
    smile_f, _ = scorer.table(flipped, "smile")
    both = ok & ok_f
    assert np.median(np.abs(smile_f[both] / smile[both] - 1)) < 0.05


# -- any size: aligned, not squashed ------------------------------------------------------------------------


def test_images_of_any_size_and_aspect_are_scored(scorer, faces, img):
    face = faces[2][2]
    wide = cv2.copyMakeBorder(face, 0, 0, 16, 16, cv2.BORDER_CONSTANT, value=(0, 0, 0))   # 64 x 96
    large = cv2.resize(face, (640, 640), interpolation=cv2.INTER_CUBIC)
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([face, np.full((64, 64), 255, np.uint8)])
    images = [img.raw(face), img.raw(wide), img.encoded(_png(large, "JPEG")), img.raw(grey), img.raw(rgba)]
    results = scorer.score(images, ["yaw", "roll", "smile", "gender"])
    assert all(r.face_found for r in results[:3])
    yaw = scorer.table(results, "yaw")[0]
    # The face box of a non-square image is its centred square: the mesh sees the very same face, unsquashed.
    assert abs(yaw[1] - yaw[0]) < 1e-3
    assert abs(yaw[2] - yaw[0]) < 6
    np.testing.assert_allclose([s.value for s in results[4].scores], [s.value for s in results[0].scores],
                               atol=1e-6)  # alpha dropped


# -- input checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["garbage", "gif", "empty", "zero_size", "bad_channels", "short_data",
                                  "oversize", "no_payload"])
def test_bad_images_are_invalid_argument_saying_what_is_accepted(scorer, faces, img, case):
    face = faces[0][2]
    bad = {
        "garbage": common_pb2.Image(encoded=b"this is not an image at all"),
        "gif": common_pb2.Image(encoded=_png(face, "GIF")),
        "empty": common_pb2.Image(encoded=b""),
        "zero_size": common_pb2.Image(raw=common_pb2.RawImage(height=0, width=64, channels=3)),
        "bad_channels": common_pb2.Image(raw=common_pb2.RawImage(height=2, width=2, channels=2, data=bytes(8))),
        "short_data": common_pb2.Image(raw=common_pb2.RawImage(height=64, width=64, channels=3, data=bytes(100))),
        "oversize": common_pb2.Image(raw=common_pb2.RawImage(height=4096, width=4096, channels=3, data=bytes(3))),
        "no_payload": common_pb2.Image(),
    }[case]
    error = _error(scorer, [img.encoded(faces[0][1]), bad])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = error.details()
    assert "images[1]" in message
    assert any(word in message for word in ("accepted", "needs", "limit", "must be")), message
    assert status_details(error)["fields"][0].startswith("images[1]")


def test_decoded_size_of_a_request_is_bounded(scorer, img):
    # A flat 2048 x 2048 PNG is a few kB but 12 MiB decoded: 20 of them exceed the 64 Mpixel request limit.
    flat = img.encoded(_png(np.zeros((2048, 2048, 3), np.uint8)))
    assert len(flat.encoded) < 100_000
    error = _error(scorer, [flat] * 20)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "pixels in all" in error.details()


def test_request_limits_and_attribute_names(scorer, faces, img):
    error = _error(scorer, [])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to 300" in error.details()
    error = _error(scorer, [img.raw(np.zeros((2, 2, 3), np.uint8))] * 301)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to 300" in error.details()
    error = _error(scorer, [img.encoded(faces[0][1])], ["age", "eyeglasses"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "eyeglasses" in error.details() and "gender" in error.details()
    error = _error(scorer, [img.encoded(faces[0][1])], ["age", "age"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- streaming, batching, deadlines -------------------------------------------------------------------------


def test_large_requests_stream_in_batch_sized_slices_in_order(scorer, faces, img):
    images = [img.raw(faces[i % 24][2]) for i in range(150)]
    request = scorer_pb2.ScoreRequest(images=images, attributes=["gender"])
    responses = list(scorer.stub.Score(request, timeout=120))
    assert [r.offset for r in responses] == [0, 64, 128]
    values = np.concatenate([scorer.table(r.results, "gender")[0] for r in responses])
    np.testing.assert_allclose(values[24:48], values[:24], atol=1e-5, equal_nan=True)


def test_concurrent_requests_get_their_own_answers(scorer, faces, img):
    sets = [["gender"], ["age", "yaw"], ["smile"], ["gender", "age", "mouth_open"]]
    alone = [scorer.score([img.encoded(d) for _, d, _ in faces[:8]], s) for s in sets]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: scorer.score([img.encoded(d) for _, d, _ in faces[:8]], s), sets * 2))
    for got, want in zip(together, alone * 2):
        for g, w in zip(got, want):
            assert [s.attribute for s in g.scores] == [s.attribute for s in w.scores]
            np.testing.assert_allclose([s.value for s in g.scores], [s.value for s in w.scores], atol=1e-4)


def test_a_passed_deadline_is_deadline_exceeded(scorer, faces, img):
    request = scorer_pb2.ScoreRequest(images=[img.raw(faces[i % 24][2]) for i in range(256)])
    with pytest.raises(grpc.RpcError) as info:
        list(scorer.stub.Score(request, timeout=0.05))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert scorer.score([img.encoded(faces[0][1])], ["age"])[0].face_found  # and the server is fine after
