"""Photos with several faces: which faces to edit, and pasting an edit's change back under a feathered mask."""

from __future__ import annotations

import cv2
import numpy as np

from .faces import Face, feather_mask, footprint, invert_affine, paste_back

#: The change's default smoothing (Gaussian sigma, fraction of the face crop's side: one pixel of a 64 px render)
#: and the most accepted. bench/photos.py's trade-off table: at +-3 on its real photos, 0 -> 1/64 takes the edits
#: kept the same person from 90% to 99% and the attribute moved as asked from 76% to 80%, for weaker edits.
CHANGE_SMOOTHING, MAX_CHANGE_SMOOTHING = 1 / 64, 0.1

#: Face selection modes of a request.
LARGEST, ALL, INDICES = "largest", "all", "indices"


class FaceSelectionError(ValueError):
    """A face selection the photo cannot satisfy; the message says what was found and what is accepted."""


class FaceVerifier:
    """dlib's CNN face detector run on one detection's neighbourhood: the second check of uncertain detections.

    dlib's HOG detector finds real frontal faces with confidence about 0.7-1.4 but also textured objects (the
    astronaut photo's mission patch: 0.1-0.45, depending on rotation). The CNN detector, run on a 160 px
    window twice the detection's size, finds every real face of the test photos (confidence about 1.05) and
    none of those objects, at about 0.14 CPU-seconds a check.

    Args:
        model_path: mmod_human_face_detector.dat.
        window: Side of the window the neighbourhood is resampled to.
    """

    def __init__(self, model_path, window: int = 160):
        import dlib
        import threading

        self.net = dlib.cnn_face_detection_model_v1(str(model_path))
        self.window = window
        self._lock = threading.Lock()

    def confirms(self, image: np.ndarray, face: Face) -> bool:
        x, y, w, h = face.box
        cx, cy, side = x + w / 2, y + h / 2, 2.0 * max(w, h)
        k = self.window / side
        m = np.array([[k, 0, self.window / 2 - cx * k], [0, k, self.window / 2 - cy * k]])
        crop = cv2.warpAffine(image, m, (self.window, self.window), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_REPLICATE)
        with self._lock:
            return len(self.net(np.ascontiguousarray(crop), 0)) > 0


def plausible(faces: list[Face], min_score: float, min_side: float, image: np.ndarray | None = None,
              verifier: FaceVerifier | None = None, trusted_score: float = 1.0, max_checks: int = 64
              ) -> tuple[list[Face], list[Face]]:
    """(kept, dropped): detections under `min_score` confidence or `min_side` pixels wide are dropped, and
    those under `trusted_score` that the verifier does not confirm (at most `max_checks` are checked; the
    rest of the uncertain ones are dropped)."""
    kept, dropped, checks = [], [], 0
    for f in faces:
        ok = f.score >= min_score and min(f.box[2], f.box[3]) >= min_side
        if ok and verifier is not None and f.score < trusted_score:
            checks += 1
            ok = checks <= max_checks and verifier.confirms(image, f)
        (kept if ok else dropped).append(f)
    return kept, dropped


def select(faces: list[Face], mode: str, indices: list[int], max_faces: int) -> list[int]:
    """Indices (into `faces`, largest first) of the faces to edit.

    Args:
        faces: The plausible faces, largest first.
        mode: LARGEST, ALL or INDICES.
        indices: For INDICES: positions in `faces`.
        max_faces: Most faces one photo may edit.
    """
    if not faces:
        raise FaceSelectionError("no face found")
    if mode == LARGEST:
        return [0]
    if mode == ALL:
        if len(faces) > max_faces:
            raise FaceSelectionError(f"{len(faces)} faces found, over the limit of {max_faces} per photo; "
                                     f"accepted: select at most {max_faces} faces by index, or crop the photo")
        return list(range(len(faces)))
    if not indices:
        raise FaceSelectionError("no face index given; accepted: indices 0 to "
                                 f"{len(faces) - 1} (faces are numbered largest first)")
    bad = [i for i in indices if not 0 <= i < len(faces)]
    if bad:
        raise FaceSelectionError(f"face indices {bad} are out of range: {len(faces)} faces found; accepted: "
                                 f"0 to {len(faces) - 1} (largest first)")
    if len(set(indices)) != len(indices):
        raise FaceSelectionError(f"face indices {list(indices)} name a face twice; accepted: distinct indices")
    if len(indices) > max_faces:
        raise FaceSelectionError(f"{len(indices)} faces asked, over the limit of {max_faces} per photo")
    return list(indices)


def face_mask(size: int, feather: float) -> np.ndarray:
    """The (size, size) feathered elliptical mask of the face in the generator's aligned framing."""
    return feather_mask(size, (0.5 * size, 0.56 * size), (0.40 * size, 0.46 * size), feather * size)


def paste_change(photo: np.ndarray, edited: np.ndarray, reconstruction: np.ndarray, matrix: np.ndarray,
                 mask: np.ndarray, smoothing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Adds an edit's change (edited - reconstruction, in the crop's framing) to the photo under the mask.

    The change is warped back with the inverse alignment (bicubic) and added to the original pixels, so the
    photo keeps its own detail where the generator's resolution is lower than the photo's. Pixels where the
    warped mask is zero are returned exactly as they were.

    `smoothing` low-passes the change first: a pivotally tuned generator renders an edit's shape and shading
    but also, far from its pivot, texture noise of its own (its tail was fitted to the photo's detail), which
    the photo's detail does not need and which reads as another person and skews the attribute read
    (bench/photos.py's trade-off table measures both).

    Args:
        photo: (H, W, 3) uint8.
        edited: (S, S, 3) uint8 render of the edited code.
        reconstruction: (S, S, 3) uint8 render of the unedited code, by the same (tuned) generator.
        matrix: 2x3 photo -> crop transform for a crop of side S.
        mask: (S, S) float mask (1 = the face).
        smoothing: Gaussian sigma applied to the change, as a fraction of S (0: none; the service's Blend
            uses CHANGE_SMOOTHING unless asked otherwise).

    Returns:
        The new photo and the (H, W) float32 alpha the change was added under.
    """
    h, w = photo.shape[:2]
    inv = invert_affine(matrix)
    out = photo.copy()
    full_alpha = np.zeros((h, w), np.float32)
    box = footprint(inv, mask.shape[0], h, w)  # warps and blends within the face's box, not the whole photo
    if box is None:
        return out, full_alpha
    x0, y0, x1, y1 = box
    inv[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    change = edited.astype(np.float32) - reconstruction.astype(np.float32)
    if smoothing > 0:
        change = cv2.GaussianBlur(change, (0, 0), smoothing * change.shape[0], borderType=cv2.BORDER_REPLICATE)
    warped = cv2.warpAffine(change, inv, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(0.0, 0.0, 0.0))
    alpha = cv2.warpAffine(mask.astype(np.float32), inv, size, flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    alpha = np.where(alpha > 1e-4, alpha, 0.0).astype(np.float32)  # no stray float dust far from the face
    region = out[y0:y1, x0:x1]
    inside = alpha > 0
    blended = region[inside].astype(np.float32) + alpha[inside][:, None] * warped[inside]
    region[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    full_alpha[y0:y1, x0:x1] = alpha
    return out, full_alpha


def paste_face(photo: np.ndarray, face: np.ndarray, matrix: np.ndarray, mask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pastes the whole face (the generator's render) under the mask; returns the photo and the (H, W) alpha."""
    h, w = photo.shape[:2]
    out = paste_back(photo, face, matrix, mask)
    alpha = np.zeros((h, w), np.float32)
    inv = invert_affine(matrix)
    box = footprint(inv, mask.shape[0], h, w)
    if box is not None:
        x0, y0, x1, y1 = box
        inv[:, 2] -= (x0, y0)
        alpha[y0:y1, x0:x1] = cv2.warpAffine(mask.astype(np.float32), inv, (x1 - x0, y1 - y0),
                                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    return out, alpha
