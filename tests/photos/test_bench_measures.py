"""The photo benchmark's measuring instruments: identity as dlib runs it, and the asked-direction count."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common import assets
from services.inversion.faces import FaceFinder, similarity_transform, warp_crop
from services.inversion.framing import template_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.photos import DetectedIdentity, direction_rates  # noqa: E402


def _row(photo, face, attribute, d, score, before):
    return {"photo": photo, "face": face, "attribute": attribute, "d": d, "score": score, "unedited_score": before}


def test_each_asked_direction_is_judged_against_the_unedited_photo():
    rows = [
        _row("a", 0, "age", -3.0, 20.0, 30.0), _row("a", 0, "age", -1.0, 35.0, 30.0),  # -1 is not the largest
        _row("a", 0, "age", 3.0, 40.0, 30.0),  # both ways as asked
        _row("a", 0, "smile", -3.0, 0.7, 0.6), _row("a", 0, "smile", 3.0, 0.8, 0.6),  # up for -3: wrong way
        _row("b", 1, "gender", -3.0, None, 0.5), _row("b", 1, "gender", 3.0, 0.4, 0.5),  # one unread, one wrong
    ]
    moved = direction_rates(rows)
    assert moved["pairs"] == 5 and moved["unread"] == 1
    assert moved["rate"] == pytest.approx(3 / 5)
    assert moved["by_attribute"] == {"age": 1.0, "gender": 0.0, "smile": 0.5}
    # The first round's reading, +3 against -3, for comparison: age and smile go up; gender has no -3 reading.
    assert moved["endpoint_pairs"] == 2 and moved["endpoint_rate"] == 1.0


def test_detected_identity_keeps_one_person_under_grey_level_noise(models_dir):
    """Crops a few grey levels apart are one person to dlib's model run on detector boxes, every time."""
    predictor = assets.path_of("shape_predictor_5_face_landmarks.dat", models_dir)
    identity = DetectedIdentity(predictor, assets.path_of("dlib_face_recognition_resnet_model_v1.dat", models_dir))
    import cv2
    image = np.asarray(Image.open(assets.path_of("astronaut.png", models_dir)).convert("RGB"))
    image = cv2.warpAffine(image, cv2.getRotationMatrix2D((256, 256), 10, 1.0), (512, 512), flags=cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT)
    face = FaceFinder(predictor).find(image, 1)[0]
    crop = warp_crop(image, similarity_transform(face.landmarks, template_for("dcgan-digiface-64", 64)), 64)
    rng = np.random.default_rng(0)
    noisy = [np.clip(crop.astype(int) + rng.integers(-3, 4, crop.shape), 0, 255).astype(np.uint8) for _ in range(6)]
    emb = identity.embed([crop] + noisy)
    dist = np.linalg.norm(emb[1:] - emb[0], axis=1)
    assert dist.max() < 0.25, dist.round(3)
    assert identity.fallbacks == 0  # the detector found the face in every crop
