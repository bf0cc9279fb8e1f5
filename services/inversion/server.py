"""Inversion service: images and photos to latent codes (encoder first guess, then batched Adam refinement)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time

import cv2
import grpc
import numpy as np
import torch

from interfacegan import codec
from interfacegan.codec import SPACE_ENUMS, SPACE_KEYS, space_name
from interfacegan.v1 import common_pb2, inversion_pb2, inversion_pb2_grpc
from services.common import assets, images, variants
from services.common.admission import PixelBudget
from services.common.batching import batch_settings, request_lane
from services.common.errors import ServiceError, invalid_argument, not_found, resource_exhausted
from services.common.settings import ServerSettings, setting

from . import blending
from . import encoder as enc
from .faces import FaceFinder
from .framing import template_for
from .quality import psnr as psnr_of
from .quality import ssim as ssim_of
from .refine import STOP_ENCODER, Inverter, Options, invertible_spaces
from .photo import FaceVerifier
from .photo_flow import invert_photo
from .tuned import PhotoTuner
from .tuning import TuningOptions
from .worker import Job, RefineWorker

log = logging.getLogger(__name__)

#: Largest aligned crop a Blend accepts (twice the largest generator's side: an upscaled edit may be pasted).
MAX_CROP_SIZE = 2048


@dataclasses.dataclass
class Settings(batch_settings(max_batch_size=32, max_queue_size=64,
                              max_batch_size_help="images refined together at most (continuous batching: requests "
                                                  "join and leave the running batch at every step)"),
               ServerSettings):
    """Inversion service settings."""

    default_model: str = setting("dcgan-digiface-64", "model loaded at start and used when a request names none")
    models_json: str = setting("", "extra registry entries (JSON list of name, architecture, weights, resolution)")
    default_steps: int = setting(80, "refinement step budget when a request gives none")
    max_steps_limit: int = setting(2000, "largest step budget a request may ask for")
    default_target_psnr: float = setting(38.0, "early-stop PSNR in dB when a request gives none")
    learning_rate: float = setting(0.15, "peak Adam step in units of the space's per-dimension spread")
    feature_weight: float = setting(1.0, "weight of the feature loss (encoder features) next to the pixel MSE")
    encoder_iterations: int = setting(3, "fixed-point corrections of the encoder's guess (one G and one E pass each)")
    progress_every: int = setting(10, "steps between streamed progress messages")
    max_image_pixels: int = setting(4096 * 4096, "largest photo accepted, in pixels")
    max_pixels_in_flight: int = setting(64 * 1024 * 1024, "most decoded photo pixels all Invert and Blend calls "
                                                          "together may hold (bounds the service's memory); calls "
                                                          "wait for their share, a quarter is kept for small images")
    min_photo_side: int = setting(32, "smallest photo side accepted for face alignment, in pixels")
    detect_upsample: int = setting(1, "dlib detector upsampling passes (1 finds faces down to about 40 px)")
    torch_threads: int = setting(2, "torch CPU threads")
    redis_url: str = setting("", "Redis holding the tuned generator variants of photos (every generator replica "
                                 "loads them from there); empty: photos are not tuned")
    tuning_steps: int = setting(TuningOptions.steps, "pivotal tuning step budget for a photo when a request gives "
                                                     "none (early stop at --tuning-target-psnr)")
    max_tuning_steps: int = setting(1000, "largest tuning step budget a request may ask for")
    tuning_target_psnr: float = setting(TuningOptions.target_psnr, "tuning stops once every face reaches this PSNR")
    photo_refine_steps: int = setting(0, "Adam steps on a photo's code before tuning (0: the encoder's corrected "
                                         "guess is the pivot; tuning does the rest, see bench/photos.py)")
    tuning_concurrency: int = setting(1, "tuning runs at once (each keeps a core busy for one to three seconds)")
    variant_ttl_seconds: int = setting(3600, "how long a tuned variant stays in the store")
    max_variant_mb: float = setting(16.0, "largest variant stored, in MiB (bigger ones are refused)")
    blend_cache_mb: float = setting(128.0, "photos' bands kept for the Blend calls that follow (an Edit blends every "
                                           "step into the same photo: it is decoded and encoded once), in MiB")
    blend_cache_seconds: float = setting(10.0, "a photo's band unused this long is dropped")
    max_faces: int = setting(20, "most faces one photo may invert")
    min_face_score: float = setting(0.0, "detections under this HOG detector confidence are dropped")
    trusted_face_score: float = setting(1.0, "detections under this confidence must be confirmed by dlib's CNN face "
                                             "detector (real faces score about 0.7-1.4; a patch on a shirt 0.1-0.45)")
    min_face_side: int = setting(16, "detections narrower than this, in pixels, are dropped")

    service_name = "inversion"

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.default_steps <= self.max_steps_limit:
            raise ValueError("default_steps must be within 1..max_steps_limit")
        if not 0 < self.default_target_psnr <= 100:
            raise ValueError("default_target_psnr must be within (0, 100] dB")
        if self.max_pixels_in_flight < self.max_image_pixels:
            raise ValueError("max_pixels_in_flight must be at least max_image_pixels")
        if self.blend_cache_mb < 0 or self.blend_cache_seconds <= 0:
            raise ValueError("blend_cache_mb must be at least 0 and blend_cache_seconds positive")


@dataclasses.dataclass
class Loaded:
    """A generator with its inverter and encoder facts."""

    model: object
    inverter: Inverter
    encoder_sha256: str
    encoder_psnr: float


class InversionService(inversion_pb2_grpc.InversionServiceServicer):
    """Invert (streaming), Blend and GetInfo over the generator zoo, one refinement worker for all."""

    service_names = ("interfacegan.v1.InversionService",)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = None
        self.loaded: dict[str, Loaded] = {}
        self._load_lock = threading.Lock()
        self.faces: FaceFinder | None = None
        self.worker: RefineWorker | None = None
        self.budget = PixelBudget("inversion", settings.max_pixels_in_flight)
        self.bands = blending.BandCache(int(settings.blend_cache_mb * (1 << 20)), settings.blend_cache_seconds)
        self.tuner: PhotoTuner | None = None
        self.verifier: FaceVerifier | None = None

    def register(self, server: grpc.aio.Server) -> None:
        inversion_pb2_grpc.add_InversionServiceServicer_to_server(self, server)

    async def load(self) -> None:
        from models import Registry

        torch.set_num_threads(self.settings.torch_threads)
        self.registry = Registry()
        if self.settings.models_json:
            self.registry.register_json(self.settings.models_json)
        await asyncio.to_thread(self._model, self.settings.default_model)
        self.faces = FaceFinder(assets.path_of("shape_predictor_5_face_landmarks.dat", self.settings.models_dir))
        self.verifier = FaceVerifier(assets.path_of("mmod_human_face_detector.dat", self.settings.models_dir))
        s = self.settings
        store = variants.VariantStore(s.redis_url, s.variant_ttl_seconds, int(s.max_variant_mb * (1 << 20))) \
            if s.redis_url else None
        self.tuner = PhotoTuner(store, TuningOptions(steps=s.tuning_steps, target_psnr=s.tuning_target_psnr),
                                s.tuning_concurrency)
        self.worker = RefineWorker(self.settings.max_batch_size, self.settings.max_queue_size,
                                   lanes=self.settings.lane_config())

    async def close(self) -> None:
        if self.worker is not None:
            await asyncio.to_thread(self.worker.close)

    # --- models ------------------------------------------------------------------------------------
    def _model(self, name: str) -> Loaded:
        with self._load_lock:
            if name in self.loaded:
                return self.loaded[name]
            try:
                spec_ok = self.registry.get(name)
            except KeyError:
                raise not_found(f"unknown model {name!r}; known: {', '.join(sorted(self.registry.names()))}") from None
            model = self.registry.load(spec_ok.name, "cpu", models_dir=self.settings.models_dir)
            found = enc.load_for(name, self.settings.models_dir)
            encoder, manifest = found if found else (None, {})
            inverter = Inverter(model, encoder, feature_weight=self.settings.feature_weight,
                                encoder_iterations=self.settings.encoder_iterations)
            loaded = Loaded(model, inverter, manifest.get("sha256", ""),
                            float(manifest.get("held_out", manifest).get("psnr", 0.0)))
            self.loaded[name] = loaded
            log.info("model ready", extra={"model": name, "encoder": bool(encoder), "spaces": inverter.spaces})
            return loaded

    async def _get(self, ref: common_pb2.ModelRef) -> Loaded:
        name = ref.name or self.settings.default_model
        return await asyncio.to_thread(self._model, name)

    def _info(self, name: str, loaded: Loaded) -> inversion_pb2.InvertibleModel:
        inv = loaded.inverter
        return inversion_pb2.InvertibleModel(
            model=common_pb2.ModelRef(name=name, version=loaded.model.spec.version),
            spaces=[SPACE_ENUMS[s] for s in inv.spaces], has_encoder=inv.encoder is not None,
            default_steps=self.settings.default_steps, resolution=inv.resolution,
            default_target_psnr=self.settings.default_target_psnr, max_steps_limit=self.settings.max_steps_limit,
            default_space=SPACE_ENUMS[inv.spaces[-1]], encoder_sha256=loaded.encoder_sha256,
            encoder_psnr=loaded.encoder_psnr,
            template_landmarks=template_for(name, inv.resolution).reshape(-1).tolist(),
            tuning=self.tuner is not None and self.tuner.enabled, default_tuning_steps=self.settings.tuning_steps,
            max_faces=self.settings.max_faces, variant_ttl_seconds=self.settings.variant_ttl_seconds)

    async def GetInfo(self, request, context):
        out = inversion_pb2.InversionInfo()
        for name in self.registry.names():
            if name in self.loaded:
                out.models.append(self._info(name, self.loaded[name]))
            else:  # not loaded yet: describe from the registry without loading
                spec = self.registry.get(name)
                spaces = [SPACE_ENUMS[k] for k in invertible_spaces(spec.architecture in ("stylegan", "stylegan2"))]
                out.models.append(inversion_pb2.InvertibleModel(
                    model=common_pb2.ModelRef(name=name, version=spec.version),
                    spaces=spaces,
                    has_encoder=enc.find(name, self.settings.models_dir) is not None,
                    default_steps=self.settings.default_steps, resolution=spec.resolution,
                    default_target_psnr=self.settings.default_target_psnr,
                    max_steps_limit=self.settings.max_steps_limit,
                    default_space=spaces[-1],
                    template_landmarks=template_for(name, spec.resolution).reshape(-1).tolist()))
        return out

    # --- request checks ----------------------------------------------------------------------------
    def _space(self, request, inv: Inverter) -> str:
        if request.space == common_pb2.LATENT_SPACE_UNSPECIFIED:
            return inv.spaces[-1]
        key = SPACE_KEYS.get(request.space)
        if key not in inv.spaces:
            accepted = ", ".join(space_name(SPACE_ENUMS[s]) for s in inv.spaces)
            raise invalid_argument("space", f"{space_name(request.space)} is not invertible for "
                                            f"{inv.model.name}; accepted: {accepted}")
        return key

    def _options(self, request) -> Options:
        s = self.settings
        if request.max_steps > s.max_steps_limit:
            raise invalid_argument("max_steps", f"{request.max_steps} exceeds the limit of {s.max_steps_limit}; "
                                                f"accepted: 0 (default {s.default_steps}) to {s.max_steps_limit}")
        target = request.target_psnr or s.default_target_psnr
        if not math.isfinite(target) or not 0 < target <= 100:
            raise invalid_argument("target_psnr", f"{request.target_psnr} dB; accepted: 0 (default "
                                                  f"{s.default_target_psnr}) or a value in (0, 100]")
        return Options(max_steps=request.max_steps or s.default_steps, target_psnr=target,
                       lr=s.learning_rate, progress_every=s.progress_every if request.stream_progress else 0)

    def _prepare(self, request, inv: Inverter) -> tuple[np.ndarray, inversion_pb2.FaceAlignment | None, list[str]]:
        """Decodes the image and frames it like the generator: (R, R, 3) target, alignment, warnings."""
        res = inv.resolution
        warnings: list[str] = []
        if not request.HasField("image"):
            raise invalid_argument("image", f"missing; accepted: {images.ACCEPTED}")
        image = images.decode(request.image, "image", max_pixels=self.settings.max_image_pixels)
        h, w = image.shape[:2]
        if h != w:
            raise invalid_argument("image", f"{w}x{h} is not square; without align_face the image must be framed "
                                            f"like the generator's output ({res}x{res}, other square sizes are "
                                            f"resized); set align_face=true for a photo")
        if h != res:
            warnings.append(f"image resized from {w}x{h} to the model's {res}x{res}")
            image = cv2.resize(image, (res, res), interpolation=cv2.INTER_AREA if h > res else cv2.INTER_CUBIC)
        return image, None, warnings

    # --- Invert ------------------------------------------------------------------------------------
    async def Invert(self, request, context):
        started = time.perf_counter()
        loaded = await self._get(request.model)
        inv = loaded.inverter
        space = self._space(request, inv)
        options = self._options(request)
        fmt = request.format or common_pb2.IMAGE_FORMAT_PNG
        if fmt not in (common_pb2.IMAGE_FORMAT_PNG, common_pb2.IMAGE_FORMAT_JPEG, common_pb2.IMAGE_FORMAT_RAW):
            raise invalid_argument("format", f"{fmt} is not an ImageFormat; accepted: PNG, JPEG, RAW")
        if request.align_face:
            if not request.HasField("image"):
                raise invalid_argument("image", f"missing; accepted: {images.ACCEPTED}")
            async for message in invert_photo(self, request, context, loaded, space, fmt, started):
                yield message
            return
        h, w = images.size_of(request.image, "image", max_pixels=self.settings.max_image_pixels)
        async with self.budget.hold(h * w, timeout=context.time_remaining()) as held:  # the photo, until cropped
            target_pixels, alignment, warnings = await held.to_thread(self._prepare, request, inv)
        target = inv.targets(target_pixels[None])[0]
        guess = (await asyncio.to_thread(inv.first_guess, target[None], space))[0]
        row = inv.new_row(target, guess, options)
        base = inversion_pb2.InvertResponse(warnings=warnings, aligned_target=images.encode(target_pixels, fmt))
        if alignment is not None:
            base.alignment.CopyFrom(alignment)

        def message(code, image, step, stage, final, stop=""):
            score_psnr = float(psnr_of(image[None], target[None])[0])
            score_ssim = float(ssim_of(image[None], target[None])[0])
            pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            out = inversion_pb2.InvertResponse()
            out.CopyFrom(base)
            shape = (1, *code.shape)
            out.code.CopyFrom(codec.latents(code.numpy().reshape(shape), SPACE_ENUMS[space]))
            out.reconstruction.CopyFrom(images.encode(pixels, fmt))
            out.psnr, out.ssim, out.steps, out.final, out.stop_reason = score_psnr, score_ssim, step, final, stop
            out.first_psnr = row.first_psnr if not math.isnan(row.first_psnr) else score_psnr
            out.progress.CopyFrom(common_pb2.Progress(
                stage=stage, done=step, total=options.max_steps, elapsed_seconds=time.perf_counter() - started,
                eta_seconds=-1.0, message=f"{score_psnr:.2f} dB after {step} steps"))
            return out

        if request.encoder_only or request.stream_progress:
            first = await asyncio.to_thread(lambda: inv.render(guess[None], space)[0].detach())
            row.first_psnr = float(psnr_of(first[None], target[None])[0])
            if request.encoder_only:
                yield message(guess, first, 0, "done", True, STOP_ENCODER)
                return
            yield message(guess, first, 0, "encoding", False)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_progress(r):
            if r.best_image is not None:
                snapshot = (r.best_code.clone(), r.best_image.clone(), r.step)
                loop.call_soon_threadsafe(queue.put_nowait, ("progress", snapshot))

        def on_done(job):
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

        row.on_progress = on_progress if request.stream_progress else None
        remaining = context.time_remaining()
        if remaining is not None:
            # Leave time to encode and send the answer: stop refining at 85% of the remaining time.
            row.deadline = time.monotonic() + 0.85 * remaining - 0.05
        if not self.worker.submit(Job(inv, space, row, on_done), request_lane(context)):
            active, queued = self.worker.load()
            raise resource_exhausted(f"{queued} refinements are queued (limit {self.settings.max_queue_size}) and "
                                     f"{active} running; retry later", retry_after=1.0)
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "done":
                    break
                code, image, step = payload
                yield message(code, image, step, "refining", False)
        finally:
            row.cancelled = True  # a cancelled call frees its place at the next step
        if row.stopped == "error":
            raise ServiceError(grpc.StatusCode.INTERNAL, "refinement failed; see the server log")
        result_image = row.best_image if row.best_image is not None else \
            await asyncio.to_thread(lambda: inv.render(row.best_code[None], space)[0].detach())
        if row.stopped == "deadline":
            row_warn = f"the call's deadline stopped refinement after {row.step} of {options.max_steps} steps"
            base.warnings.append(row_warn)
        yield message(row.best_code, result_image, row.step, "done", True, row.stopped or "max_steps")

    # --- Blend -------------------------------------------------------------------------------------
    async def Blend(self, request, context):
        return await blending.blend(request, context, self.budget, self.bands, self.settings.max_image_pixels,
                                    MAX_CROP_SIZE, self.settings.max_faces)
