"""Image codecs between protobuf `Image` messages and uint8 RGB arrays, with limits."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

from interfacegan.v1 import common_pb2

from .errors import ServiceError, invalid_argument

DEFAULT_MAX_PIXELS = 4096 * 4096
#: Longest side over shortest side accepted. Every service frames a face in a square, so an image far thinner
#: than any photo only makes resizing and padding work out of proportion to what was sent.
MAX_ASPECT = 16
ACCEPTED = "PNG or JPEG bytes in Image.encoded, or Image.raw with height, width, channels (1, 3 or 4) and HWC uint8 data"


def size_of(image: common_pb2.Image, field: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
            min_side: int = 1) -> tuple[int, int]:
    """(height, width) the image declares, read from its header without decoding the pixels.

    Lets a service refuse, or admit against its memory budget, what an image will cost before it is decoded.
    Refuses sizes `decode` would refuse; an image whose header cannot be read counts as 0 x 0 here and is
    refused by `decode` with the reason.
    """
    kind = image.WhichOneof("payload")
    if kind == "raw":
        h, w = image.raw.height, image.raw.width
    elif kind == "encoded" and image.encoded:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                w, h = PILImage.open(io.BytesIO(image.encoded)).size
        except Exception:  # noqa: BLE001 - decode() says what is wrong with it
            return 0, 0
    else:
        return 0, 0
    if h and w:
        _check_size(h, w, field, max_pixels, min_side)
    return h, w


def decode(image: common_pb2.Image, field: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
           min_side: int = 1) -> np.ndarray:
    """Returns an (H, W, 3) uint8 RGB array, upright per its EXIF orientation; refuses what is not a valid,
    bounded image (pixels, sides, aspect ratio at most MAX_ASPECT)."""
    kind = image.WhichOneof("payload")
    if kind is None:
        raise invalid_argument(field, f"empty image; accepted: {ACCEPTED}")
    if kind == "raw":
        raw = image.raw
        h, w, c = raw.height, raw.width, raw.channels
        if h == 0 or w == 0:
            raise invalid_argument(f"{field}.raw", f"zero-size image {h}x{w}; height and width must be at least 1")
        if c not in (1, 3, 4):
            raise invalid_argument(f"{field}.raw.channels", f"{c} channels; accepted: 1, 3 or 4")
        _check_size(h, w, field, max_pixels, min_side)
        if len(raw.data) != h * w * c:
            raise invalid_argument(f"{field}.raw.data", f"holds {len(raw.data)} bytes; {h}x{w}x{c} needs {h * w * c}")
        array = np.frombuffer(raw.data, dtype=np.uint8).reshape(h, w, c)
        return _to_rgb(array)
    data = image.encoded
    if not data:
        raise invalid_argument(f"{field}.encoded", f"zero bytes; accepted: {ACCEPTED}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            pil = PILImage.open(io.BytesIO(data))
            if pil.format not in ("PNG", "JPEG"):
                raise invalid_argument(f"{field}.encoded", f"format {pil.format} is not accepted; accepted: {ACCEPTED}")
            w, h = pil.size
            _check_size(h, w, field, max_pixels, min_side)
            pil.load()
    except ServiceError:
        raise
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as e:
        raise invalid_argument(f"{field}.encoded", f"not a decodable image ({type(e).__name__}: {e}); "
                                                   f"accepted: {ACCEPTED}") from None
    # Phones store photos sideways with an EXIF Orientation tag; faces are found, and edits blended back,
    # in the photo as people see it.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": the pixels are still good
            pil = ImageOps.exif_transpose(pil)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not refuse a decodable image
        pass
    if pil.mode not in ("RGB", "L", "RGBA"):
        pil = pil.convert("RGB")
    return _to_rgb(np.asarray(pil))


def _check_size(h: int, w: int, field: str, max_pixels: int, min_side: int) -> None:
    if h * w > max_pixels:
        raise invalid_argument(field, f"{w}x{h} = {w * h} pixels exceed the limit of {max_pixels}")
    if min(h, w) < min_side:
        raise invalid_argument(field, f"{w}x{h} is too small; each side must be at least {min_side} pixels")
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise invalid_argument(field, f"{w}x{h} has an aspect ratio of {max(h, w) / min(h, w):.0f}:1; accepted: "
                                      f"the longer side at most {MAX_ASPECT} times the shorter")


def _to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array, dtype=np.uint8)


def encode(array: np.ndarray, fmt: int = common_pb2.IMAGE_FORMAT_PNG) -> common_pb2.Image:
    """Encodes an (H, W, 3) uint8 array in the requested ImageFormat."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if fmt == common_pb2.IMAGE_FORMAT_RAW:
        h, w = array.shape[:2]
        c = array.shape[2] if array.ndim == 3 else 1
        return common_pb2.Image(raw=common_pb2.RawImage(height=h, width=w, channels=c, data=array.tobytes()))
    buf = io.BytesIO()
    pil = PILImage.fromarray(array)
    if fmt == common_pb2.IMAGE_FORMAT_JPEG:
        pil.save(buf, format="JPEG", quality=95)
    else:
        pil.save(buf, format="PNG", compress_level=1)
    return common_pb2.Image(encoded=buf.getvalue())

