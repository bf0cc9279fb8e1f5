"""The identity model: stable landmarks on aligned crops, and its embedding cache (exact, bounded, keyed by pixels)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.common import assets
from services.inversion.faces import FaceFinder, similarity_transform, warp_crop
from services.inversion.framing import template_for
from services.scorer.identity import IdentityModel, distance


@pytest.fixture(scope="module")
def faces(models_dir):
    """Two real faces and a slightly changed copy of the first, as 128 px crops."""
    astronaut = np.asarray(Image.open(assets.path_of("astronaut.png", models_dir)).convert("RGB"))
    hopper = np.asarray(Image.open(assets.path_of("grace_hopper.jpg", models_dir)).convert("RGB"))
    a = np.ascontiguousarray(np.asarray(Image.fromarray(astronaut[30:230, 130:330]).resize((128, 128))))
    b = np.ascontiguousarray(np.asarray(Image.fromarray(hopper[40:300, 80:340]).resize((128, 128))))
    a2 = a.copy()
    a2[60:70, 60:70] = 255 - a2[60:70, 60:70]
    return a, b, a2


def _model(models_dir, cache_size):
    return IdentityModel(assets.path_of("shape_predictor_5_face_landmarks.dat", models_dir),
                         assets.path_of("dlib_face_recognition_resnet_model_v1.dat", models_dir), cache_size=cache_size)


def test_cached_embeddings_equal_fresh_ones_and_the_cache_stays_bounded(models_dir, faces):
    a, b, a2 = faces
    cached, plain = _model(models_dir, 2), _model(models_dir, 0)
    fresh = plain.embed([a, b, a2])
    assert cached.embed([a, b, a]).tolist() == fresh[[0, 1, 0]].tolist()  # a repeat inside one call
    assert cached.cache_hits == 0 and len(cached._cache) == 2
    again = cached.embed([b, a])
    assert cached.cache_hits == 2
    np.testing.assert_array_equal(again, fresh[[1, 0]])
    # Changed pixels are another key: the edited copy is embedded, not served the original's vector.
    changed = cached.embed([a2])
    np.testing.assert_array_equal(changed[0], fresh[2])
    assert cached.cache_hits == 2 and len(cached._cache) == 2  # the least recently used entry (b) left
    cached.embed([b])
    assert cached.cache_hits == 2
    assert plain.cache_hits == 0 and not plain._cache
    assert distance(fresh[0], fresh[1]) > 0.6  # two people, so a key mix-up could not pass unnoticed


def test_identity_keeps_one_person_under_grey_level_noise(models_dir):
    """Crops a few grey levels apart are one person: the landmarks are found in the detector's box (in the
    whole frame of a 64 px aligned crop they jumped, and a 36.7 dB reconstruction measured 0.69)."""
    predictor = assets.path_of("shape_predictor_5_face_landmarks.dat", models_dir)
    identity = _model(models_dir, 0)
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
