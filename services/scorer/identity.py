"""Identity embeddings: dlib's face-recognition ResNet (128-d; two faces under distance 0.6 are one person)."""

from __future__ import annotations

import collections
import hashlib
import math
import threading
from pathlib import Path
from typing import Sequence

import cv2
import dlib
import numpy as np

#: Euclidean distance under which dlib's model calls two faces the same person (99.38% on LFW).
SAME_PERSON = 0.6
#: Side and padding of the chip the ResNet was trained on (dlib's own example values).
CHIP_SIZE, CHIP_PADDING = 150, 0.25
#: Longest side a crop is searched for its face at (the HOG detector finds faces from about 80 px).
DETECT_SIDE = 512


class IdentityModel:
    """Embeds face crops: 5-point landmarks on the whole frame, a 150 px dlib face chip, the ResNet.

    Inputs are face crops (the face fills the frame, as an aligned crop or a generated image does); small
    ones are upsampled (bicubic, integer factor) to at least `min_side` first, because the landmark model
    is unreliable on tiny faces. The landmarks are predicted in the HOG face detector's box, as dlib's own
    pipeline does: the shape predictor was trained on detector boxes, and in the whole frame of an aligned
    crop (larger and lower than a detector box) its eyes jumped up to 14 px between images a few grey levels
    apart (a 36.7 dB reconstruction at distance 0.69 from its source, 0.13 in the detector's box). Where the
    detector finds no face the whole frame is the box (counted in `fallbacks`). dlib objects are not
    thread-safe, so calls are serialised.

    The ResNet costs about 75 ms per face on one CPU core, and an interactive edit sends the same reference
    face (the unedited render, the photo's source crop) with every slider move, so embeddings are kept in a
    bounded LRU keyed by a digest of the pixels: a repeated face costs a hash instead of a forward pass.

    Args:
        predictor_path: shape_predictor_5_face_landmarks.dat.
        model_path: dlib_face_recognition_resnet_model_v1.dat.
        min_side: Smaller crops are upsampled to about this side before landmarks.
        cache_size: Embeddings kept (512 bytes each); 0 turns the cache off.
    """

    def __init__(self, predictor_path: str | Path, model_path: str | Path, min_side: int = 256,
                 cache_size: int = 4096):
        self.predictor = dlib.shape_predictor(str(predictor_path))
        self.net = dlib.face_recognition_model_v1(str(model_path))
        self.detector = dlib.get_frontal_face_detector()
        self.fallbacks = 0
        self.min_side = min_side
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[bytes, np.ndarray] = collections.OrderedDict()
        self.cache_hits = 0
        self._lock = threading.Lock()

    def chip(self, image: np.ndarray) -> np.ndarray:
        """The aligned (150, 150, 3) uint8 chip of an (H, W, 3) uint8 RGB face crop."""
        h, w = image.shape[:2]
        side = min(h, w)
        k = math.ceil(self.min_side / side) if side < self.min_side else 1
        if k > 1:
            image = cv2.resize(image, (w * k, h * k), interpolation=cv2.INTER_CUBIC)
            h, w, side = h * k, w * k, side * k
        image = np.ascontiguousarray(image)
        # The detector's time grows with the pixels: a large crop is searched at about DETECT_SIDE px.
        f = min(1.0, DETECT_SIDE / max(h, w))
        small = image if f == 1.0 else cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        with self._lock:
            found = list(self.detector(small, 0))
            if found:
                r = max(found, key=lambda r: r.area())
                box = dlib.rectangle(round(r.left() / f), round(r.top() / f), round(r.right() / f),
                                     round(r.bottom() / f))
            else:
                self.fallbacks += 1
                top, left = (h - side) // 2, (w - side) // 2
                box = dlib.rectangle(left, top, left + side - 1, top + side - 1)
            shape = self.predictor(image, box)
            return np.asarray(dlib.get_face_chip(image, shape, CHIP_SIZE, CHIP_PADDING))

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 128) float32 embeddings of N face crops (one batched ResNet call for those not cached)."""
        out = np.zeros((len(images), 128), np.float32)
        keys = [_digest(im) for im in images]
        missing: dict[bytes, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    out[i] = hit
                    self.cache_hits += 1
                else:
                    missing.setdefault(key, []).append(i)
        if not missing:
            return out
        chips = [self.chip(images[rows[0]]) for rows in missing.values()]
        with self._lock:
            vectors = self.net.compute_face_descriptor(chips)
            for (key, rows), v in zip(missing.items(), vectors):
                out[rows] = np.asarray(v, np.float32)
                if self.cache_size:
                    self._cache[key] = out[rows[0]].copy()
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return out


def _digest(image: np.ndarray) -> bytes:
    """Cache key of a crop: its shape and pixels (the same face encoded twice hashes the same)."""
    image = np.ascontiguousarray(image)
    h = hashlib.blake2b(repr((image.shape, image.dtype.str)).encode(), digest_size=16)
    h.update(memoryview(image).cast("B"))
    return h.digest()


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between embeddings (broadcasting over leading axes)."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def compare(model: IdentityModel, references: Sequence[np.ndarray], images: Sequence[np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances, image embeddings, reference embeddings): image i against reference i, or against the one
    reference when a single one is given. The caller checks the counts."""
    embedded = model.embed(list(references) + list(images))
    refs, imgs = embedded[:len(references)], embedded[len(references):]
    pairs = refs if len(refs) == len(imgs) else np.repeat(refs[:1], len(imgs), axis=0)
    return distance(imgs, pairs), imgs, refs
