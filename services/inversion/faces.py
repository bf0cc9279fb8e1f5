"""Face detection, 5-point landmarks, similarity alignment to a template, and pasting a crop back (dlib, OpenCV)."""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import cv2
import dlib
import numpy as np

@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face in image pixel coordinates.

    Attributes:
        box: (x, y, width, height) of the detector's rectangle.
        score: The detector's confidence (higher is surer).
        landmarks: (5, 2) float array of (x, y) in dlib's 5-point order: the image-right eye's outer and
            inner corners, the image-left eye's outer and inner corners, the nose.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


class FaceFinder:
    """dlib's HOG frontal face detector plus the 5-point shape predictor.

    Small images are upsampled before detection (the detector misses faces under about 80 px) and large
    ones downsampled (its cost grows with the pixel count); landmarks are always predicted on an image of
    at least `min_side` pixels so that they are equally precise for a 64 px crop and a 4000 px photo.
    dlib objects are not thread-safe, so calls are serialised.

    Args:
        predictor_path: shape_predictor_5_face_landmarks.dat.
        min_side: Smaller images are upsampled (bicubic) to about this side before detection.
        max_side: Larger images are downsampled to about this side for detection only.
    """

    def __init__(self, predictor_path: str | Path, min_side: int = 256, max_side: int = 1024):
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_path))
        self.min_side = min_side
        self.max_side = max_side
        self._lock = threading.Lock()

    def find(self, image: np.ndarray, upsample: int = 0) -> list[Face]:
        """All faces of an (H, W, 3) uint8 RGB image, largest first (ties: higher score first)."""
        h, w = image.shape[:2]
        scale = 1.0
        if min(h, w) < self.min_side:
            # Enlarged at most to max_side^2 pixels: a thin image is not enlarged 16-fold whole.
            scale = max(1.0, min(4.0, self.min_side / min(h, w), self.max_side / math.sqrt(h * w)))
        elif max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
        work = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        # Landmarks on the larger of the detection image and the original.
        lm_image, lm_scale = (work, scale) if scale > 1 else (image, 1.0)
        with self._lock:
            rects, scores, _ = self.detector.run(np.ascontiguousarray(work), upsample, 0.0)
            faces = []
            for rect, score in zip(rects, scores):
                r = lm_scale / scale
                lm_rect = dlib.rectangle(round(rect.left() * r), round(rect.top() * r),
                                         round(rect.right() * r), round(rect.bottom() * r))
                shape = self.predictor(np.ascontiguousarray(lm_image), lm_rect)
                pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
                # dlib pixel centres are integers; +0.5 puts them in continuous coordinates, then back.
                pts = (pts + 0.5) / lm_scale - 0.5
                box = (rect.left() / scale, rect.top() / scale, rect.width() / scale, rect.height() / scale)
                faces.append(Face(box, float(score), pts))
        faces.sort(key=lambda f: (-f.area, -f.score))
        return faces


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src -> dst.

    Umeyama's closed form. Returns a 2x3 float64 matrix M with dst ~ M @ [x, y, 1].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s ** 2).sum() / len(src)
    if var <= 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / var
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix."""
    full = np.vstack([np.asarray(matrix, np.float64).reshape(2, 3), [0, 0, 1]])
    return np.linalg.inv(full)[:2]


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int, supersample: int = 4) -> np.ndarray:
    """The size x size crop of `image` under `matrix` (image -> crop coordinates), anti-aliased.

    When the crop shrinks the photo, warping straight to `size` would alias; the crop is rendered
    `supersample` times larger and reduced by area averaging. Outside the photo, edge pixels are replicated.
    """
    m = np.asarray(matrix, np.float64).reshape(2, 3)
    shrink = 1.0 / max(1e-9, np.sqrt(abs(np.linalg.det(m[:, :2]))))  # photo pixels per crop pixel
    k = int(min(supersample, max(1, np.ceil(shrink))))
    big = size * k
    # Pixel-centre convention: crop pixel c covers [c - 0.5, c + 0.5]; its k sub-pixels are at c + (j + 0.5)/k - 0.5.
    up = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2]], np.float64)
    m_big = up @ np.vstack([m, [0, 0, 1]])
    out = cv2.warpAffine(image, m_big, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if k > 1:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return out


def feather_mask(size: int, center: tuple[float, float], radii: tuple[float, float], feather: float) -> np.ndarray:
    """A (size, size) float32 elliptical mask: 1 inside, falling smoothly to 0 over `feather` crop pixels."""
    yy, xx = np.ogrid[0:size, 0:size]  # broadcast rows and columns: no two (size, size) float64 grids
    # Distance outside the ellipse, in pixels along the smaller radius (an approximation good enough for a fade).
    r = np.sqrt(((xx - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2)
    outside = (r - 1.0) * min(radii)
    t = np.clip(0.5 - outside / max(feather, 1e-6), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep


def paste_back(photo: np.ndarray, face: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pastes an aligned crop back into the photo: inverse affine of crop and mask, then alpha blending.

    Args:
        photo: (H, W, 3) uint8, the original photo.
        face: (S, S, 3) uint8 crop in the aligned framing (S may differ from the crop size of `matrix`:
            it is rescaled, so a higher-resolution edit can be pasted too).
        matrix: 2x3 photo -> crop transform for a crop of side mask.shape[0].
        mask: (S0, S0) float mask in the crop's framing (1 = take the face).
    """
    h, w = photo.shape[:2]
    size = mask.shape[0]
    if face.shape[0] != size or face.shape[1] != size:
        scale = face.shape[0] / size
        matrix = np.array([[scale, 0, (scale - 1) / 2], [0, scale, (scale - 1) / 2]]) @ np.vstack(
            [np.asarray(matrix, np.float64).reshape(2, 3), [0, 0, 1]])
        mask = cv2.resize(mask, (face.shape[1], face.shape[0]), interpolation=cv2.INTER_LINEAR)
    inv = invert_affine(matrix)
    out = photo.copy()
    box = footprint(inv, mask.shape[0], h, w)
    if box is None:
        return out
    x0, y0, x1, y1 = box
    inv[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, inv, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask.astype(np.float32), inv, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)[:, :, None]
    region = photo[y0:y1, x0:x1].astype(np.float32) * (1 - alpha) + warped.astype(np.float32) * alpha
    out[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out


def footprint(inv: np.ndarray, size: int, h: int, w: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive: the part of an h x w photo a size x size crop covers under `inv`
    (crop -> photo), with a margin for the interpolation kernels; None when it misses the photo.

    Pasting works in this box only: its cost follows the face, not the photo (whole-photo float32 copies
    took gigabytes for a large photo).
    """
    edge = size - 0.5
    corners = np.array([[-0.5, -0.5, 1], [edge, -0.5, 1], [-0.5, edge, 1], [edge, edge, 1]]) @ inv.T
    x0, y0 = np.floor(corners.min(axis=0)) - 3
    x1, y1 = np.ceil(corners.max(axis=0)) + 4
    x0, y0, x1, y1 = int(max(0, x0)), int(max(0, y0)), int(min(w, x1)), int(min(h, y1))
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None
