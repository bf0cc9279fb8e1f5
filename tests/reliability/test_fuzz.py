"""The decoders every request goes through, fuzzed with hypothesis: only INVALID_ARGUMENT, never a crash.

Images (PNG, JPEG, raw, random bytes, mutated and truncated files), tensors and latent batches, and the
boundary .npy reader (whose ValueError becomes INVALID_ARGUMENT).
"""

from __future__ import annotations

import io

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from interfacegan.v1 import common_pb2
from services.boundary import npyfiles
from services.common import images, tensors
from services.common.errors import ServiceError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
MAX_PIXELS = 512 * 512


def _encoded(fmt: str, h: int = 24, w: int = 20, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(h * w)
    pil = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    pil.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_encoded("PNG"), _encoded("JPEG"), _encoded("PNG", mode="L"), _encoded("PNG", mode="RGBA"),
         _encoded("PNG", mode="P"), _encoded("JPEG", 9, 300, "L"), _encoded("GIF"), _encoded("BMP"),
         _encoded("WEBP"), _encoded("TIFF")]


def _decode_or_refuse(image: common_pb2.Image, valid: bool = False) -> None:
    """Decoded to HxWx3 uint8 or refused with INVALID_ARGUMENT; `valid` input must decode."""
    try:
        array = images.decode(image, "image", max_pixels=MAX_PIXELS)
    except ServiceError as e:
        assert not valid, f"a valid image was refused: {e.message}"
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.message and e.field
        return
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert 1 <= array.shape[0] * array.shape[1] <= MAX_PIXELS


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:  # header fields (dimensions, bit depth, colour type) are the dangerous bytes
            at = draw(st.integers(0, min(len(data), 40) - 1))
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


@settings(FUZZ, max_examples=1000)
@given(mutated())
def test_mutated_png_jpeg_and_other_files(data):
    _decode_or_refuse(common_pb2.Image(encoded=data))


@FUZZ
@given(st.one_of(st.binary(max_size=2048),
                 st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                 st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff\xe0" + b)))
def test_random_bytes(data):
    _decode_or_refuse(common_pb2.Image(encoded=data))


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.one_of(st.integers(0, 4096), st.just(-1)))
def test_raw_images(height, width, channels, size):
    size = height * width * channels if size == -1 and height * width * channels <= 1 << 16 else max(size, 0)
    valid = channels in (1, 3, 4) and 1 <= height * width <= MAX_PIXELS and size == height * width * channels
    _decode_or_refuse(common_pb2.Image(raw=common_pb2.RawImage(height=height, width=width, channels=channels,
                                                               data=bytes(size))), valid)


def test_valid_images_still_decode():
    """The fuzz tests above would pass against a decoder that refuses everything: this one would not."""
    for fmt, mode in (("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB"), ("JPEG", "L")):
        data = _encoded(fmt, mode=mode)
        _decode_or_refuse(common_pb2.Image(encoded=data), valid=True)
        array = images.decode(common_pb2.Image(encoded=data), "image", max_pixels=MAX_PIXELS)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert array.shape == (24, 20, 3) and (np.abs(array.astype(int) - expected).max() <= (0 if fmt == "PNG" else 2))
    pixels = np.random.default_rng(3).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    raw = common_pb2.Image(raw=common_pb2.RawImage(height=5, width=7, channels=3, data=pixels.tobytes()))
    assert np.array_equal(images.decode(raw, "image", max_pixels=MAX_PIXELS), pixels)
    for fmt in ("GIF", "BMP", "WEBP", "TIFF"):  # decodable files of formats the API does not accept
        _decode_or_refuse(common_pb2.Image(encoded=_encoded(fmt)))


@FUZZ
@given(st.lists(st.integers(-2**63, 2**63 - 1), max_size=6) | st.lists(st.integers(-2, 40), max_size=4),
       st.integers(0, 10),
       st.binary(max_size=4096) | st.sampled_from([b"\x00\x00\xc0\x7f" * 16, b"\x00\x00\x80\x7f" * 16]))
def test_tensors(shape, dtype, data):
    message = common_pb2.Tensor(shape=shape, dtype=dtype, data=data)
    try:
        array = tensors.to_numpy(message, "t", max_elements=1 << 20)
    except ServiceError as e:
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.field.startswith("t")
        return
    assert array.dtype == np.float32 and list(array.shape) == list(shape) and np.isfinite(array).all()


@FUZZ
@given(st.integers(-1, 5), st.lists(st.integers(-3, 120), max_size=4), st.floats(width=32),
       st.booleans())
def test_latent_batches(space, shape, value, with_codes):
    count = int(np.prod(shape)) if shape and all(s > 0 for s in shape) and np.prod(shape) < 1 << 16 else 0
    codes = common_pb2.Tensor(shape=shape, data=np.full(count, value, "<f4").tobytes()) if with_codes else None
    batch = common_pb2.LatentBatch(space=max(space, 0), codes=codes)
    valid = (with_codes and space == common_pb2.LATENT_SPACE_Z and len(shape) == 2 and 1 <= shape[0] <= 64
             and shape[1] == 100 and np.isfinite(value))
    try:
        got_space, array = tensors.latents_to_numpy(batch, "codes", expected={common_pb2.LATENT_SPACE_Z: (100,),
                                                                              common_pb2.LATENT_SPACE_WP: (4, 8)},
                                                    max_codes=64)
    except ServiceError as e:
        assert not valid, f"valid Z codes of shape {shape} were refused: {e.message}"
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT
        return
    assert array.shape[1:] == {common_pb2.LATENT_SPACE_Z: (100,), common_pb2.LATENT_SPACE_WP: (4, 8)}[got_space]


def _npy_seed() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ones((1, 16)))
    return buf.getvalue()


@FUZZ
@given(st.binary(max_size=256).map(lambda b: _npy_seed()[:10] + b) | st.binary(max_size=512),
       st.integers(0, 127), st.integers(0, 255))
def test_boundary_npy_reader(tail, at, value):
    data = bytearray(_npy_seed())
    data[at] = value
    for blob in (bytes(data), tail):
        try:
            normal = npyfiles.load_npy(blob)
        except ValueError:
            continue
        assert normal.dtype == np.float64 and normal.shape[0] == 1 and np.isfinite(normal).all()
