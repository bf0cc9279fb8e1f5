"""Blend: edited faces pasted into a photo in the rows they cover; a PNG answer reuses the photo's other rows."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import math
import struct
import time
import zlib

import numpy as np

from interfacegan.v1 import common_pb2, inversion_pb2
from services.common import images
from services.common.admission import PixelBudget, release_memory
from services.common.errors import invalid_argument

from . import photo
from .faces import footprint, invert_affine, warp_crop

#: Rows filtered and compressed at once (a strip of a 4096 px wide photo is 3 MiB).
STRIP_ROWS = 256
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- PNG in row segments ----------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings one after the other, from each one's checksum (zlib's adler32_combine)."""
    base = 65521
    rem = second_length % base
    low = first & 0xFFFF
    high = (rem * low) % base
    low += (second & 0xFFFF) + base - 1
    high += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + base - rem
    return (low % base) | ((high % base) << 16)


@dataclasses.dataclass
class Deflated:
    """Rows of an image as PNG scanlines, filtered and deflated on their own (a raw deflate segment)."""

    data: bytes
    adler: int = 1  # Adler-32 of the filtered scanlines (1: none)
    length: int = 0  # bytes of filtered scanlines


def deflate_rows(rows: np.ndarray, last: bool) -> Deflated:
    """PNG scanlines of (n, W, 3) uint8 rows, deflated as a segment that needs nothing before or after it.

    The first row uses the Sub filter (its own pixels only) and the others Up, so a segment's bytes do not
    depend on the rows above it; a fresh compressor has no dictionary, and a full flush ends the segment on
    a byte boundary: segments concatenate into one valid zlib stream (the last one ends it). Up then run
    length deflate at level 1: smaller and about twice as fast as PIL's adaptive filters on photos.
    """
    n, w = rows.shape[:2]
    if n == 0:
        return Deflated(b"")
    flat = np.ascontiguousarray(rows).reshape(n, w * 3)
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    parts, adler, length = [], 1, 0
    strip = np.empty((min(n, STRIP_ROWS), w * 3 + 1), np.uint8)
    for start in range(0, n, STRIP_ROWS):
        stop = min(n, start + STRIP_ROWS)
        out = strip[:stop - start]
        out[:, 0] = 2  # Up
        if start == 0:
            out[0, 0] = 1  # Sub: the first row does not look above the segment
            out[0, 1:4] = flat[0, :3]
            np.subtract(flat[0, 3:], flat[0, :-3], out=out[0, 4:])
            np.subtract(flat[1:stop], flat[:stop - 1], out=out[1:, 1:])
        else:
            np.subtract(flat[start:stop], flat[start - 1:stop - 1], out=out[:, 1:])
        view = memoryview(out).cast("B")
        adler = zlib.adler32(view, adler)
        length += len(view)
        parts.append(compressor.compress(view))
    parts.append(compressor.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH))
    return Deflated(b"".join(parts), adler, length)


@dataclasses.dataclass
class PngFrame:
    """A photo's PNG encoding outside rows [y0, y1): what every Blend answer of that photo and band shares."""

    head: bytes  # signature, IHDR, and an IDAT with the zlib header and the rows above the band
    above: Deflated
    below: Deflated
    tail: bytes  # an IDAT with the rows below the band (or nothing)

    @classmethod
    def of(cls, photo_pixels: np.ndarray, y0: int, y1: int) -> PngFrame:
        h, w = photo_pixels.shape[:2]
        above = deflate_rows(photo_pixels[:y0], last=y0 == y1 == h)  # ends the stream when nothing follows it
        below = deflate_rows(photo_pixels[y1:], last=True)
        head = _PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
            _chunk(b"IDAT", b"\x78\x01" + above.data)
        return cls(head, above, below, _chunk(b"IDAT", below.data) if below.data else b"")

    def encode(self, band: np.ndarray, last: bool) -> bytes:
        """The whole PNG with `band` as rows [y0, y1) (`last`: no rows below it)."""
        middle = deflate_rows(band, last=last)
        adler = _adler32_combine(_adler32_combine(self.above.adler, middle.adler, middle.length),
                                 self.below.adler, self.below.length)
        return b"".join((self.head, _chunk(b"IDAT", middle.data) if middle.data else b"", self.tail,
                         _chunk(b"IDAT", struct.pack(">I", adler)), _chunk(b"IEND", b"")))


# --- the request ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Face:
    """One face of a Blend request, decoded and checked."""

    field: str  # "" or "more_faces[i]."
    face: np.ndarray
    reconstruction: np.ndarray | None
    matrix: np.ndarray  # photo -> crop of the request's crop_size
    crop_size: int

    @property
    def scaled(self) -> np.ndarray:
        """photo -> crop of the face image's own size."""
        return _rescaled(self.matrix, self.face.shape[0] / self.crop_size)


@dataclasses.dataclass
class Plan:
    """What a Blend request asks, checked; its photo not decoded yet."""

    mode: int
    feather: float
    faces: list[Face]
    crop_size: int
    format: int
    smoothing: float  # of the change (BLEND_MODE_CHANGE); 0 for BLEND_MODE_FACE

    def key(self, digest: bytes) -> tuple:
        """What decides the band: the photo and where the faces go."""
        return digest, tuple((tuple(f.scaled.reshape(-1)), f.face.shape[0]) for f in self.faces)


def plan(request: inversion_pb2.BlendRequest, max_crop: int) -> Plan:
    """Checks a Blend request and decodes its faces (small): INVALID_ARGUMENT naming the field otherwise."""
    feather = request.feather or 0.08
    if not math.isfinite(feather) or not 0 <= feather <= 0.5:
        raise invalid_argument("feather", f"{request.feather}; accepted: 0 (default 0.08) to 0.5")
    if request.mode not in (inversion_pb2.BLEND_MODE_UNSPECIFIED, inversion_pb2.BLEND_MODE_CHANGE,
                            inversion_pb2.BLEND_MODE_FACE):
        raise invalid_argument("mode", f"{request.mode}; accepted: UNSPECIFIED, CHANGE, FACE")
    if not request.HasField("photo"):
        raise invalid_argument("photo", f"missing; accepted: {images.ACCEPTED}")
    if not request.HasField("face"):
        raise invalid_argument("face", f"missing; accepted: {images.ACCEPTED}")
    if request.crop_size > max_crop:
        raise invalid_argument("crop_size", f"{request.crop_size}; accepted: 0 (no crops) to {max_crop}")
    fmt = request.format or common_pb2.IMAGE_FORMAT_PNG
    if fmt not in (common_pb2.IMAGE_FORMAT_PNG, common_pb2.IMAGE_FORMAT_JPEG, common_pb2.IMAGE_FORMAT_RAW):
        raise invalid_argument("format", f"{request.format}; accepted: PNG, JPEG, RAW (unspecified = PNG)")
    given = [("", request.face, request.reconstruction if request.HasField("reconstruction") else None,
              request.alignment)]
    given += [(f"more_faces[{i}].", f.face, f.reconstruction if f.HasField("reconstruction") else None,
               f.alignment) for i, f in enumerate(request.more_faces)]
    mode = request.mode or (inversion_pb2.BLEND_MODE_CHANGE if given[0][2] is not None
                            else inversion_pb2.BLEND_MODE_FACE)
    smoothing = request.change_smoothing if request.HasField("change_smoothing") else photo.CHANGE_SMOOTHING
    if not math.isfinite(smoothing) or not 0 <= smoothing <= photo.MAX_CHANGE_SMOOTHING:
        raise invalid_argument("change_smoothing", f"{request.change_smoothing}; accepted: 0 (none) to "
                                                   f"{photo.MAX_CHANGE_SMOOTHING:g}, unset for the default "
                                                   f"{photo.CHANGE_SMOOTHING:.4g}")
    if mode != inversion_pb2.BLEND_MODE_CHANGE:
        if request.HasField("change_smoothing") and smoothing > 0:
            raise invalid_argument("change_smoothing", "set for BLEND_MODE_FACE, which pastes the whole face; "
                                                       "accepted only with BLEND_MODE_CHANGE")
        smoothing = 0.0
    faces = []
    for prefix, face_im, recon_im, alignment in given:
        matrix = _matrix(alignment, f"{prefix}alignment", max_crop)
        face = _square(face_im, f"{prefix}face", max_crop * max_crop)
        recon = None
        if mode == inversion_pb2.BLEND_MODE_CHANGE:
            if recon_im is None:
                raise invalid_argument(f"{prefix}reconstruction", "missing; BLEND_MODE_CHANGE adds (face - "
                                                                  "reconstruction): give the reconstruction Invert "
                                                                  "returned, or mode=BLEND_MODE_FACE")
            recon = _square(recon_im, f"{prefix}reconstruction", max_crop * max_crop)
            if recon.shape != face.shape:
                raise invalid_argument(f"{prefix}reconstruction", f"{recon.shape[1]}x{recon.shape[0]}; accepted: "
                                                                  f"the face's size, {face.shape[0]}x{face.shape[0]}")
        faces.append(Face(prefix, face, recon, matrix, alignment.crop_size))
    return Plan(mode, feather, faces, request.crop_size, fmt, smoothing)


def band_rows(faces: list[Face], h: int, w: int) -> tuple[int, int]:
    """Rows [y0, y1) of an h x w photo that the faces' pastes may change ((0, 0): none)."""
    boxes = [b for b in (footprint(invert_affine(f.scaled), f.face.shape[0], h, w) for f in faces) if b]
    if not boxes:
        return 0, 0
    return min(b[1] for b in boxes), max(b[3] for b in boxes)


@dataclasses.dataclass
class Band:
    """A photo's rows [y0, y1) as decoded, and (for PNG answers) the encoding of the rest."""

    height: int
    width: int
    y0: int
    y1: int
    pixels: np.ndarray  # (y1 - y0, width, 3) uint8, read-only
    frame: PngFrame | None

    @property
    def nbytes(self) -> int:
        frame = self.frame
        return self.pixels.nbytes + (len(frame.head) + len(frame.tail) if frame else 0)


def cut(photo_pixels: np.ndarray, the_plan: Plan, with_frame: bool) -> Band:
    """The band of a decoded photo the plan's faces change, with its PNG frame when asked."""
    h, w = photo_pixels.shape[:2]
    y0, y1 = band_rows(the_plan.faces, h, w)
    pixels = photo_pixels[y0:y1].copy()
    pixels.flags.writeable = False
    return Band(h, w, y0, y1, pixels, PngFrame.of(photo_pixels, y0, y1) if with_frame else None)


def _in_band(matrix: np.ndarray, y0: int) -> np.ndarray:
    """photo -> crop as band -> crop: band row r is photo row r + y0."""
    out = np.array(matrix, np.float64)
    out[:, 2] += out[:, 1] * y0
    return out


def paste(band: Band, the_plan: Plan) -> tuple[np.ndarray, int, list[np.ndarray], list[np.ndarray]]:
    """Pastes every face into a copy of the band: (new band, pixels changed outside the masks, source crops,
    result crops). Rows outside the band are the photo's own by construction."""
    original = band.pixels
    out = original
    union = np.zeros(original.shape[:2], bool)
    left, right = band.width, 0
    for f in the_plan.faces:
        size = f.face.shape[0]
        matrix = _in_band(f.scaled, band.y0)
        mask = photo.face_mask(size, the_plan.feather)
        box = footprint(invert_affine(matrix), size, *original.shape[:2])
        if box is not None:
            left, right = min(left, box[0]), max(right, box[2])
        if the_plan.mode == inversion_pb2.BLEND_MODE_CHANGE:
            out, alpha = photo.paste_change(out, f.face, f.reconstruction, matrix, mask, the_plan.smoothing)
        else:
            out, alpha = photo.paste_face(out, f.face, matrix, mask)
        union |= alpha > 0
    if out is original:  # no face given
        out = original.copy()
    # The pastes write in the faces' boxes only: the columns they span hold every pixel that may have changed.
    span = slice(left, max(left, right))
    differs = np.any(out[:, span] != original[:, span], axis=-1)
    changed = int(np.count_nonzero(differs & ~union[:, span]))
    sources, results = [], []
    if the_plan.crop_size:
        for f in the_plan.faces:
            matrix = _in_band(_rescaled(f.matrix, the_plan.crop_size / f.crop_size), band.y0)
            sources.append(warp_crop(original, matrix, the_plan.crop_size))
            results.append(warp_crop(out, matrix, the_plan.crop_size))
    return out, changed, sources, results


def answer(band: Band, the_plan: Plan, photo_pixels: np.ndarray | None = None) -> inversion_pb2.BlendResponse:
    """The BlendResponse: PNG from the band's frame, or JPEG / RAW of the whole photo (`photo_pixels`, which is
    written into)."""
    out, changed, sources, results = paste(band, the_plan)
    if the_plan.format == common_pb2.IMAGE_FORMAT_PNG and band.frame is not None:
        image = common_pb2.Image(encoded=band.frame.encode(out, last=band.y1 == band.height))
    else:
        if not photo_pixels.flags.writeable:  # decoded straight from PIL's buffer
            photo_pixels = photo_pixels.copy()
        photo_pixels[band.y0:band.y1] = out
        image = images.encode(photo_pixels, the_plan.format)
    reply = inversion_pb2.BlendResponse(image=image, mode=the_plan.mode, changed_outside_mask=changed,
                                        change_smoothing=the_plan.smoothing)
    for source, result in zip(sources, results):
        reply.source_crops.append(images.encode(source, common_pb2.IMAGE_FORMAT_PNG))
        reply.result_crops.append(images.encode(result, common_pb2.IMAGE_FORMAT_PNG))
    return reply


# --- the service side ----------------------------------------------------------------------------------------

class BandCache:
    """Bands of recent photos, so the many Blend calls of one Edit (one per step, same photo, same faces) decode
    and encode the photo once: the rest costs the face's rows.

    Bounded by bytes; an entry unused for `ttl` seconds is dropped and memory returned to the OS. One call
    builds a missing band while the others of the same photo wait for it.
    """

    def __init__(self, max_bytes: int, ttl: float):
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.bytes = 0
        self._entries: collections.OrderedDict[tuple, tuple[Band, float]] = collections.OrderedDict()
        self._building: dict[tuple, asyncio.Future] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, key: tuple) -> Band | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries[key] = (found[0], time.monotonic())
        self._entries.move_to_end(key)
        return found[0]

    async def get_or_build(self, key: tuple, build) -> Band:
        """The cached band of `key`, or the one `build()` (a coroutine function) makes; one build per key."""
        band = self.get(key)
        if band is not None:
            return band
        task = self._building.get(key)
        if task is None:
            task = self._building[key] = asyncio.ensure_future(self._build(key, build))
        # Shielded: a caller that leaves does not cancel what the others wait for.
        return await asyncio.shield(task)

    async def _build(self, key: tuple, build) -> Band:
        # The task caches its band and leaves `_building` before it completes, never in a callback after it: a
        # finished build still listed would be awaited without yielding, and its waiter would spin forever.
        try:
            band = await build()
            self._put(key, band)
            return band
        finally:
            self._building.pop(key, None)

    def _put(self, key: tuple, band: Band) -> None:
        if band.nbytes > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (band, time.monotonic())
        self.bytes += band.nbytes
        while self.bytes > self.max_bytes:
            _, (old, _) = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.ttl, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now, dropped = time.monotonic(), False
        for key, (band, used) in list(self._entries.items()):
            if now - used >= self.ttl:
                del self._entries[key]
                self.bytes -= band.nbytes
                dropped = True
        if self._entries:
            oldest = min(used for _, used in self._entries.values())
            self._sweeper = asyncio.get_running_loop().call_later(max(0.1, oldest + self.ttl - now), self._sweep)
        if dropped:  # the bands were freed into the heap: hand the pages back
            asyncio.get_running_loop().run_in_executor(None, release_memory)


async def blend(request: inversion_pb2.BlendRequest, context, budget: PixelBudget, cache: BandCache,
                max_image_pixels: int, max_crop: int, max_faces: int) -> inversion_pb2.BlendResponse:
    """Serves one Blend call.

    The call is admitted for its photo's pixels and its faces' (read from the headers). A PNG answer (the
    default) takes the photo's band from the cache, or builds it (decoding the photo once) while other calls
    of that photo wait; then it gives back all but about four band-sized buffers (copy, alpha, scanlines,
    answer). JPEG and RAW answers decode and encode the whole photo.
    """
    h, w = images.size_of(request.photo, "photo", max_pixels=max_image_pixels)
    if len(request.more_faces) >= max_faces:
        raise invalid_argument("more_faces", f"{len(request.more_faces) + 1} faces in all; accepted: at most "
                                             f"{max_faces} faces per photo")
    face_pixels = 0
    for field, image in _face_images(request):
        fh, fw = images.size_of(image, field, max_pixels=max_crop * max_crop)
        face_pixels += fh * fw
    async with budget.hold(h * w + face_pixels, timeout=context.time_remaining()) as held:
        the_plan = await held.to_thread(plan, request, max_crop)
        if the_plan.format != common_pb2.IMAGE_FORMAT_PNG:
            def whole() -> inversion_pb2.BlendResponse:
                pixels = images.decode(request.photo, "photo", max_pixels=max_image_pixels)
                return answer(cut(pixels, the_plan, with_frame=False), the_plan, pixels)
            return await held.to_thread(whole)

        def digest_of() -> bytes:
            return hashlib.blake2b(request.photo.SerializeToString(deterministic=True), digest_size=20).digest()

        # A RAW photo is tens of MB: hashed off the event loop.
        digest = await held.to_thread(digest_of) if request.photo.ByteSize() > 1 << 22 else digest_of()

        async def build() -> Band:
            return await held.to_thread(lambda: cut(images.decode(request.photo, "photo",
                                                                  max_pixels=max_image_pixels),
                                                    the_plan, with_frame=True))

        band = await cache.get_or_build(the_plan.key(digest), build)
        await held.release(max(0, h * w - 4 * band.pixels.size // 3))
        return await held.to_thread(answer, band, the_plan)


def _face_images(request: inversion_pb2.BlendRequest):
    yield "face", request.face
    if request.HasField("reconstruction"):
        yield "reconstruction", request.reconstruction
    for i, f in enumerate(request.more_faces):
        yield f"more_faces[{i}].face", f.face
        if f.HasField("reconstruction"):
            yield f"more_faces[{i}].reconstruction", f.reconstruction


# --- field checks --------------------------------------------------------------------------------------------

def _matrix(a: inversion_pb2.FaceAlignment, field: str, max_crop: int) -> np.ndarray:
    if len(a.matrix) != 6 or not all(math.isfinite(v) for v in a.matrix):
        raise invalid_argument(f"{field}.matrix", f"{len(a.matrix)} values; accepted: the 6 finite values of the "
                                                  f"2x3 matrix Invert returned")
    matrix = np.array(a.matrix, np.float64).reshape(2, 3)
    det = float(np.linalg.det(matrix[:, :2]))
    if not 1e-8 < abs(det) < 1e8:
        raise invalid_argument(f"{field}.matrix", f"is not invertible (determinant {det:g}); accepted: the matrix "
                                                  f"Invert returned")
    if not 8 <= a.crop_size <= max_crop:
        raise invalid_argument(f"{field}.crop_size", f"{a.crop_size}; accepted: 8 to {max_crop} (the crop_size "
                                                     f"Invert returned)")
    return matrix


def _square(image: common_pb2.Image, field: str, max_pixels: int) -> np.ndarray:
    out = images.decode(image, field, max_pixels=max_pixels)
    if out.shape[0] != out.shape[1]:
        raise invalid_argument(field, f"{out.shape[1]}x{out.shape[0]} is not square; accepted: the aligned crop "
                                      f"(crop_size x crop_size, or any square size)")
    return out


def _rescaled(matrix: np.ndarray, k: float) -> np.ndarray:
    """The photo -> crop transform of a crop k times larger (pixel-centre convention)."""
    if k == 1:
        return matrix
    up = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2]])
    return up @ np.vstack([matrix, [0, 0, 1]])
