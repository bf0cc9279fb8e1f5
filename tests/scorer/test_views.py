"""Test-time views: the default scorer reads near-identical faces alike, and a face like its mirror image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import load_model
from services.scorer.engine import DEFAULT_VIEWS, VIEWS, Engine

BUNDLED = Path(__file__).resolve().parents[2] / "services" / "boundary" / "bundled"


@pytest.fixture(scope="module")
def renders() -> list[np.ndarray]:
    """40 sampled faces, each rendered 0.05 either side along the age boundary (alike to the eye)."""
    model = load_model("dcgan-digiface-64", "cpu")
    normal = np.load(BUNDLED / "dcgan-digiface-64_age_boundary.npy").reshape(-1)
    normal = normal / np.linalg.norm(normal)
    z = model.sample(40, seed=3000)
    codes = np.concatenate([z - 0.05 * normal, z + 0.05 * normal]).astype(np.float32)
    return list(model.synthesize(codes, "z", output="uint8").numpy())


@pytest.fixture(scope="module")
def engines() -> dict[int, Engine]:
    out = {}
    for views in (1, DEFAULT_VIEWS):
        out[views] = Engine(views=views)
        out[views].load()
    return out


def _jitter(engine: Engine, renders) -> np.ndarray:
    values = engine.score(renders, ["age", "gender"]).values
    half = len(renders) // 2
    return np.nanstd(values[half:] - values[:half], axis=0)


def test_default_views_read_neighbouring_renders_steadier(engines, renders):
    single, several = _jitter(engines[1], renders), _jitter(engines[DEFAULT_VIEWS], renders)
    # Measured on these faces (std of the two renders' difference): age 7.1 -> 1.3 years, gender 0.11 -> 0.04.
    assert several[0] < 0.4 * single[0], (single, several)
    assert several[1] < 0.6 * single[1], (single, several)


def test_views_do_not_shift_the_reading(engines, renders):
    single = engines[1].score(renders, ["age"]).values[:, 0]
    several = engines[DEFAULT_VIEWS].score(renders, ["age"]).values[:, 0]
    assert abs(np.nanmean(several) - np.nanmean(single)) < 2.0
    assert np.corrcoef(single, several)[0, 1] > 0.6


def test_a_face_reads_like_its_mirror_image(engines, renders):
    faces = renders[:20]
    mirrored = [np.ascontiguousarray(f[:, ::-1]) for f in faces]
    gaps = {}
    for views, engine in engines.items():
        a, b = engine.score(faces, ["age"]).values[:, 0], engine.score(mirrored, ["age"]).values[:, 0]
        gaps[views] = float(np.nanmean(np.abs(a - b)))
    assert gaps[DEFAULT_VIEWS] < 0.4 * gaps[1], gaps  # measured: 5.0 -> 1.1 years


def test_view_counts_are_bounded():
    for bad in (0, len(VIEWS) + 1):
        with pytest.raises(ValueError, match="views"):
            Engine(views=bad)
