"""The identity model's embedding cache: exact, bounded, keyed by pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.common import assets
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
