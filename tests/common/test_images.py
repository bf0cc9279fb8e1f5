"""Image codec: photos stored sideways with an EXIF Orientation tag decode upright."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from interfacegan.v1 import common_pb2
from services.common import assets, images


def test_exif_orientation_is_applied_so_faces_are_upright(models_dir):
    upright = np.asarray(Image.open(assets.path_of("astronaut.png", models_dir)).convert("RGB"))
    stored = Image.fromarray(np.rot90(upright, k=1))  # as a phone held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    decoded = images.decode(common_pb2.Image(encoded=buffer.getvalue()), "image")
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright.astype(int)).mean() < 4  # JPEG loss only, not a rotation


def test_images_without_orientation_are_unchanged():
    array = np.random.default_rng(0).integers(0, 255, (20, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    assert np.array_equal(images.decode(common_pb2.Image(encoded=buffer.getvalue()), "image"), array)
