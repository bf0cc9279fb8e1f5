"""Conversions between API messages and numpy arrays / PIL images (client side, no server code needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image as PILImage

from interfacegan.v1 import common_pb2

#: What the SDK accepts as an image: a file path, encoded PNG/JPEG bytes, an (H, W, 3) uint8 array or a PIL image.
ImageLike = Union[str, Path, bytes, np.ndarray, PILImage.Image]

#: The latent spaces, written once: proto enum -> the short key code uses ("z", "w", "wp"; the model zoo's
#: names) and the label people read ("Z", "W", "W+"). Services and the SDK import these instead of
#: spelling the spaces again.
SPACE_KEYS = {common_pb2.LATENT_SPACE_Z: "z", common_pb2.LATENT_SPACE_W: "w", common_pb2.LATENT_SPACE_WP: "wp"}
SPACE_ENUMS = {key: enum for enum, key in SPACE_KEYS.items()}
SPACE_NAMES = {common_pb2.LATENT_SPACE_Z: "Z", common_pb2.LATENT_SPACE_W: "W", common_pb2.LATENT_SPACE_WP: "W+"}
FORMATS = {"png": common_pb2.IMAGE_FORMAT_PNG, "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
           "jpg": common_pb2.IMAGE_FORMAT_JPEG, "raw": common_pb2.IMAGE_FORMAT_RAW}


def space_of(space: str | int | None) -> int:
    """'Z', 'W', 'W+' / 'wp' (any case) or the enum value -> LatentSpace; None -> unspecified (the server's default)."""
    if space is None or space == "":
        return common_pb2.LATENT_SPACE_UNSPECIFIED
    if isinstance(space, int):
        return space
    key = space.lower().replace("+", "p")
    if key not in SPACE_ENUMS:
        raise ValueError(f"latent space {space!r}: accepted Z, W, W+")
    return SPACE_ENUMS[key]


def space_name(space: int) -> str:
    """The label of a LatentSpace value for messages: "Z", "W", "W+", "UNSPECIFIED" or the unknown number."""
    if space == common_pb2.LATENT_SPACE_UNSPECIFIED:
        return "UNSPECIFIED"
    return SPACE_NAMES.get(space, str(space))


def tensor(array: np.ndarray) -> common_pb2.Tensor:
    """A float32 little-endian Tensor of `array`."""
    array = np.ascontiguousarray(array, dtype="<f4")
    return common_pb2.Tensor(shape=list(array.shape), dtype=common_pb2.DATA_TYPE_FLOAT32, data=array.tobytes())


def array(t: common_pb2.Tensor) -> np.ndarray:
    """The float32 array of a Tensor (a copy, writable)."""
    shape = tuple(int(s) for s in t.shape)
    return np.frombuffer(t.data, dtype="<f4").reshape(shape).astype(np.float32)


def latents(codes: np.ndarray, space: str | int | None = None) -> common_pb2.LatentBatch:
    """A LatentBatch; (d) becomes (1, d). The space defaults to Z for 2-D codes and W+ for 3-D ones."""
    codes = np.asarray(codes, dtype=np.float32)
    if codes.ndim == 1:
        codes = codes[None]
    resolved = space_of(space)
    if resolved == common_pb2.LATENT_SPACE_UNSPECIFIED:
        resolved = common_pb2.LATENT_SPACE_WP if codes.ndim == 3 else common_pb2.LATENT_SPACE_Z
    return common_pb2.LatentBatch(space=resolved, codes=tensor(codes))


def image_message(image: ImageLike) -> common_pb2.Image:
    """An Image message from a path, PNG/JPEG bytes, a uint8 array or a PIL image (arrays are sent as PNG)."""
    if isinstance(image, (str, Path)):
        return common_pb2.Image(encoded=Path(image).expanduser().read_bytes())
    if isinstance(image, bytes):
        return common_pb2.Image(encoded=image)
    if isinstance(image, PILImage.Image):
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"image array must be uint8 (H, W) or (H, W, C), got {a.dtype} {a.shape}")
    buf = io.BytesIO()
    PILImage.fromarray(a).save(buf, format="PNG", compress_level=1)
    return common_pb2.Image(encoded=buf.getvalue())


def image_array(image: common_pb2.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of an Image message."""
    if image.WhichOneof("payload") == "raw":
        r = image.raw
        a = np.frombuffer(r.data, dtype=np.uint8).reshape(r.height, r.width, r.channels)
        if r.channels == 1:
            a = np.repeat(a, 3, axis=2)
        return np.ascontiguousarray(a[:, :, :3])
    with PILImage.open(io.BytesIO(image.encoded)) as pil:
        return np.asarray(pil.convert("RGB"))


def photo_array(image: common_pb2.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of a photo, turned upright by its EXIF orientation as the servers read it."""
    if image.WhichOneof("payload") == "raw":
        return image_array(image)
    from PIL import ImageOps
    with PILImage.open(io.BytesIO(image.encoded)) as pil:
        return np.asarray(ImageOps.exif_transpose(pil).convert("RGB"))


def image_bytes(image: common_pb2.Image, fmt: str = "png") -> bytes:
    """Encoded file bytes of an Image message (re-encoded only when it is raw)."""
    if image.WhichOneof("payload") == "encoded":
        return image.encoded
    return array_bytes(image_array(image), fmt)


def array_bytes(image: np.ndarray | PILImage.Image, fmt: str = "png") -> bytes:
    """PNG (or, for fmt "jpeg"/"jpg", JPEG) file bytes of a uint8 array or a PIL image."""
    pil = image if isinstance(image, PILImage.Image) else PILImage.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    pil.convert("RGB").save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else "PNG")
    return buf.getvalue()
