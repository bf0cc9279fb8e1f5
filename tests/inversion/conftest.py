"""Inversion test fixtures: one real inversion server (default model + tiny random StyleGANs), photos."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common import assets

sys.path.insert(0, str(Path(__file__).parent))  # the helpers module beside this file
from inversion_support import TINY_MODELS, Client  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("inversion-models") / "models.json"
    path.write_text(json.dumps(TINY_MODELS))
    return path


@pytest.fixture(scope="session")
def inversion(launch_service, tiny_models_json) -> Client:
    proc = launch_service("inversion", "--models-json", str(tiny_models_json))
    client = Client(proc.address)
    yield client
    client.close()


@pytest.fixture(scope="session")
def dcgan(models_dir):
    from models import load_model
    return load_model("dcgan-digiface-64", "cpu")


@pytest.fixture(scope="session")
def tiny_registry(tiny_models_json):
    from models import Registry
    registry = Registry()
    registry.register_json(tiny_models_json)
    return registry


@pytest.fixture(scope="session")
def photos(models_dir) -> dict[str, np.ndarray]:
    """Real photos of faces shipped inside PyPI wheels (see services.common.assets)."""
    return {name: np.asarray(Image.open(assets.path_of(name)).convert("RGB"))
            for name in ("astronaut.png", "grace_hopper.jpg")}
