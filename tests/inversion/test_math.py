"""In-process checks of the inversion math: alignment geometry, paste-back, PSNR/SSIM, encoder files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from services.inversion.faces import (feather_mask, invert_affine, paste_back, similarity_transform,
                                   warp_crop)
from services.inversion import encoder as enc
from services.inversion.framing import DCGAN_DIGIFACE_TEMPLATE, template_for
from services.inversion.quality import psnr, ssim

from inversion_support import apply_affine


def _similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, size=(5, 2))
    want = _similarity(0.37, 0.4, 12.5, -40.0)
    got = similarity_transform(src, apply_affine(want, src))
    np.testing.assert_allclose(got, want, atol=1e-9)
    np.testing.assert_allclose(apply_affine(invert_affine(got), apply_affine(got, src)), src, atol=1e-9)


def test_similarity_transform_never_reflects_and_refuses_degenerate_points():
    src = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 2]], float)
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), src)


def test_crop_then_paste_back_restores_the_photo_inside_the_mask():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 255, size=(12, 16, 3)).astype(np.uint8)
    import cv2
    photo = cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC)
    matrix = _similarity(64 / 150, 0.2, 0, 0)
    matrix[:, 2] = np.array([32, 32]) - matrix[:, :2] @ np.array([160, 120])
    crop = warp_crop(photo, matrix, 64)
    mask = feather_mask(64, (32, 32), (20, 20), 4)
    pasted = paste_back(photo, crop, matrix, mask)
    inside = apply_affine(invert_affine(matrix), np.array([[32.0, 32.0]]))[0].round().astype(int)
    region = (slice(inside[1] - 20, inside[1] + 20), slice(inside[0] - 20, inside[0] + 20))
    # A 64 px crop of a smooth photo pasted back at 2.3x: only resampling blur differs.
    assert np.abs(pasted[region].astype(int) - photo[region].astype(int)).mean() < 6
    # Far from the face nothing changes at all.
    assert np.array_equal(pasted[:20, :20], photo[:20, :20])
    # A larger edited face (e.g. 256 px) is pasted through the same alignment.
    big = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_CUBIC)
    assert np.abs(paste_back(photo, big, matrix, mask)[region].astype(int) - photo[region].astype(int)).mean() < 6


def test_psnr_and_ssim_follow_8_bit_images():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.all(psnr(x, x) >= 99) and torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    y = x + 4 / 255 * torch.randn_like(x)
    p = psnr(y, x)
    assert torch.all((p > 30) & (p < 45))
    assert torch.all(ssim(y, x) < 1) and torch.all(ssim(y, x) > ssim(torch.zeros_like(x), x))


def test_framing_template_is_a_face():
    t = template_for("dcgan-digiface-64", 64)
    right_outer, right_inner, left_outer, left_inner, nose = t
    assert left_outer[0] < left_inner[0] < nose[0] < right_inner[0] < right_outer[0]
    assert max(t[:4, 1]) < nose[1]
    assert abs(t[:4, 1].mean() - 30) < 2 and abs(nose[0] - 31.5) < 1  # eyes level at 30 px, nose centred
    assert np.allclose(template_for("any-other-model", 128), DCGAN_DIGIFACE_TEMPLATE * 128 - 0.5)


def test_encoder_file_is_checked_against_its_manifest(tmp_path):
    net = enc.Encoder(16, (8,), width=4, hidden=8)
    path = enc.save(net, tmp_path / "encoder-x.pt", {"model": "x"})
    manifest = json.loads((tmp_path / "encoder-x.pt.json").read_text())
    assert manifest["sha256"] == enc.sha256_of(path) and manifest["config"]["code_shape"] == [8]
    loaded, _ = enc.load(path)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(loaded(images), net.eval()(images), atol=1e-2)  # float16 storage
    with pytest.raises(enc.EncoderError, match="pinned checksum"):
        enc.load(path, expected_sha256="0" * 64)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(enc.EncoderError, match="refused") as err:
        enc.load(path)
    assert manifest["sha256"] in str(err.value)
    (tmp_path / "encoder-x.pt.json").unlink()
    with pytest.raises(enc.EncoderError, match="manifest"):
        enc.load(path)


def test_shipped_encoder_is_pinned_and_loads():
    path = enc.SHIPPED_DIR / enc.file_name("dcgan-digiface-64")
    assert path.exists() and enc.SHIPPED_SHA256["dcgan-digiface-64"] == enc.sha256_of(path)
    net, manifest = enc.load(path, enc.SHIPPED_SHA256["dcgan-digiface-64"])
    assert manifest["model"] == "dcgan-digiface-64" and tuple(net.code_shape) == (100,)
    assert path.stat().st_size < 8 << 20
