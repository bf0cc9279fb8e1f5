"""Engine math in process: face box, letterbox, upsampling factor, pose and mouth formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.scorer.engine import FaceAligner, FaceMesh, face_box, letterbox


def test_face_box_is_the_centred_square():
    assert face_box(64, 64) == (0, 0, 63, 63)  # square: the whole frame, as predict_face takes it
    assert face_box(64, 96) == (0, 16, 63, 79)
    assert face_box(100, 60) == (20, 0, 79, 59)


def test_letterbox_keeps_the_aspect_ratio():
    image = np.full((40, 80, 3), 255, np.uint8)
    out = letterbox(image, 16, 16)
    assert out.shape == (16, 16, 3)
    assert (out[:4] == 0).all() and (out[12:] == 0).all() and (out[4:12] == 255).all()
    same = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)
    assert letterbox(same, 16, 16) is same


@pytest.mark.parametrize("h, w, k", [(64, 64, 4), (64, 96, 4), (100, 100, 3), (200, 300, 2), (256, 256, 1),
                                     (1024, 768, 1)])
def test_small_faces_are_upsampled_by_an_integer_factor(h, w, k):
    aligner = FaceAligner.__new__(FaceAligner)
    aligner.min_side = 256
    assert aligner.upsample_factor(h, w) == k


def _mesh(yaw=0.0, pitch=0.0, roll=0.0, mouth=40.0, gap=0.0) -> np.ndarray:
    """Synthetic landmarks at the indices the formulas read, rotated by the given angles (degrees)."""
    p = np.zeros((468, 3))
    p[33], p[263] = (-30, 0, 0), (30, 0, 0)  # outer eye corners: 60 apart
    p[234], p[454] = (-45, 10, 0), (45, 10, 0)  # face sides
    p[10], p[152] = (0, -50, 0), (0, 60, 0)  # forehead, chin
    p[61], p[291] = (-mouth / 2, 35, 0), (mouth / 2, 35, 0)
    p[13], p[14] = (0, 33, 0), (0, 33 + gap, 0)
    y, x, r = (math.radians(a) for a in (yaw, pitch, roll))
    # Image axes: x right, y down, z away from the camera. Yaw about y, pitch about x, roll about z.
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return (p @ (rz @ rx @ ry).T)[None]


def test_pose_formulas_recover_known_angles():
    for yaw in (-30, 0, 25):
        assert FaceMesh.attributes(_mesh(yaw=yaw))["yaw"][0] == pytest.approx(yaw, abs=1e-6)
    for pitch in (-20, 15):
        assert FaceMesh.attributes(_mesh(pitch=pitch))["pitch"][0] == pytest.approx(pitch, abs=1e-6)
    for roll in (-40, 10):
        assert FaceMesh.attributes(_mesh(roll=roll))["roll"][0] == pytest.approx(roll, abs=1e-6)


def test_mouth_ratios_are_scale_and_pose_free():
    a = FaceMesh.attributes(_mesh(mouth=48, gap=12))
    assert a["smile"][0] == pytest.approx(48 / 60) and a["mouth_open"][0] == pytest.approx(12 / 60)
    b = FaceMesh.attributes(_mesh(mouth=48, gap=12, yaw=20, roll=10) * 3.5)
    assert b["smile"][0] == pytest.approx(48 / 60) and b["mouth_open"][0] == pytest.approx(12 / 60)


def test_degenerate_landmarks_give_nan_not_a_number():
    a = FaceMesh.attributes(np.zeros((1, 468, 3)))
    assert math.isnan(a["smile"][0]) and math.isnan(a["mouth_open"][0])


# -- the face mesh on ONNX Runtime (converted from TFLite) equals OpenCV's TFLite importer ---------------------


def test_converted_face_mesh_equals_opencvs_tflite_importer(faces, models_dir):
    import cv2

    from services.common import assets
    from services.scorer.engine import MESH_SIZE

    path = assets.path_of("face_landmark.tflite")
    crops = np.stack([cv2.resize(a, (MESH_SIZE, MESH_SIZE)) for _, _, a in faces])
    p_cv, pts_cv = FaceMesh(path, "opencv").run(crops)
    mesh = FaceMesh(path, "onnxruntime", ["CPUExecutionProvider"])
    assert mesh.provider == "CPUExecutionProvider"
    p_ort, pts_ort = mesh.run(crops)
    np.testing.assert_allclose(p_ort, p_cv, atol=1e-5)
    np.testing.assert_allclose(pts_ort, pts_cv, atol=2e-3)  # 192 px units
    a, b = FaceMesh.attributes(pts_ort), FaceMesh.attributes(pts_cv)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-3)

