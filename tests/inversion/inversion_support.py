"""Helpers of the inversion tests: a blocking client, image codecs, PSNR, synthetic photos."""

from __future__ import annotations

import io
import math

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from interfacegan.v1 import common_pb2, inversion_pb2, inversion_pb2_grpc

OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]

#: Small random-weight style-based generators of the zoo (the registry rebuilds the same weights from the seed).
TINY_MODELS = [
    {"name": "stylegan-tiny", "architecture": "stylegan", "resolution": 16, "weights": "random:3",
     "options": {"max_channels": 32, "w_dim": 64, "mapping_layers": 4}},
    {"name": "stylegan2-tiny", "architecture": "stylegan2", "resolution": 8, "weights": "random:4",
     "options": {"style_dim": 32, "n_mlp": 2, "channel_multiplier": 1}},
]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) mapped by a 2x3 affine matrix."""
    m = np.asarray(matrix, np.float64)
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def decode(image: common_pb2.Image) -> np.ndarray:
    if image.WhichOneof("payload") == "raw":
        r = image.raw
        return np.frombuffer(r.data, np.uint8).reshape(r.height, r.width, r.channels)
    return np.asarray(Image.open(io.BytesIO(image.encoded)).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255 ** 2 / max(mse, 1e-10))


class Client:
    """A blocking InversionService client."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address, options=OPTIONS)
        self.stub = inversion_pb2_grpc.InversionServiceStub(self.channel)

    def invert(self, image: np.ndarray | bytes | common_pb2.Image, timeout: float = 300,
               **fields) -> list[inversion_pb2.InvertResponse]:
        """Every message of one Invert call (the last is final)."""
        if isinstance(image, np.ndarray):
            image = common_pb2.Image(encoded=png(image))
        elif isinstance(image, bytes):
            image = common_pb2.Image(encoded=image)
        replies = list(self.stub.Invert(inversion_pb2.InvertRequest(image=image, **fields), timeout=timeout))
        assert replies and replies[-1].final and not any(r.final for r in replies[:-1])
        return replies

    def error(self, image, **fields) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            self.invert(image, **fields)
        return info.value

    def close(self):
        self.channel.close()


def paste_face(face: np.ndarray, canvas_size: tuple[int, int], scale: float, angle_deg: float,
               center: tuple[float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic photo: `face` scaled, rotated and placed at `center` on a textured background.

    Returns (photo, P) with P the 2x3 face -> photo transform (pixel-centre coordinates).
    """
    h, w = canvas_size
    rng = np.random.default_rng(seed)
    # A smooth coloured background with some texture, not a flat colour.
    small = rng.integers(40, 200, size=(6, 8, 3)).astype(np.uint8)
    canvas = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    canvas = np.clip(canvas.astype(np.int16) + rng.integers(-6, 7, size=canvas.shape), 0, 255).astype(np.uint8)
    size = face.shape[0]
    rot = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle_deg, scale)
    rot[:, 2] += np.array(center) - np.array([(size - 1) / 2, (size - 1) / 2])
    warped = cv2.warpAffine(face, rot, (w, h), flags=cv2.INTER_CUBIC)
    mask = cv2.warpAffine(np.full((size, size), 255, np.uint8), rot, (w, h), flags=cv2.INTER_LINEAR)[:, :, None] / 255
    photo = (canvas * (1 - mask) + warped * mask).round().astype(np.uint8)
    return photo, rot
