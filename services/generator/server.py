"""Generator service: the model zoo served over gRPC behind one dynamic batcher per model."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Hashable

import grpc
import numpy as np
import torch

from interfacegan import codec
from interfacegan.codec import SPACE_ENUMS, SPACE_KEYS, space_name
from interfacegan.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from services.common import images, tensors, variants
from services.common.batching import DynamicBatcher, batch_settings, request_lane
from services.common.errors import failed_precondition, invalid_argument, not_found
from services.common.settings import ServerSettings, setting

from . import backends
from .tuned import VariantModels
from models import DEFAULT_MODEL, GeneratorModel, ModelSpec, Registry, build_net

log = logging.getLogger(__name__)

RETRY_LOAD_SECONDS = 30.0
INLINE_ENCODE_PIXELS = 256 * 256  # slices up to this many pixels are PNG/JPEG-encoded on the event loop
FORMATS = {common_pb2.IMAGE_FORMAT_UNSPECIFIED: common_pb2.IMAGE_FORMAT_PNG, common_pb2.IMAGE_FORMAT_PNG:
           common_pb2.IMAGE_FORMAT_PNG, common_pb2.IMAGE_FORMAT_JPEG: common_pb2.IMAGE_FORMAT_JPEG,
           common_pb2.IMAGE_FORMAT_RAW: common_pb2.IMAGE_FORMAT_RAW}


@dataclasses.dataclass
class Settings(batch_settings(max_batch_size=0, max_queue_size=512, max_queue_delay_microseconds=2000,
                              instances=1, prefetch_batches=1, max_batch_size_help="most codes run in one batch",
                              zero_batch_size_means="auto: 16 on CPU (the measured DCGAN optimum: bigger batches "
                                                    "fall out of cache), 256 on CUDA",
                              instances_help="batches that may run at once per model (worker threads)",
                              auto_bulk_fill_means="auto: none on CPU, where a batch's time grows with its size; "
                                                   "up to max_batch_size on CUDA"),
               ServerSettings):
    """Generator service settings."""

    default_model: str = setting(DEFAULT_MODEL, "model used when a request names none")
    model: str = setting("", "extra models, 'name=architecture:path:resolution', several separated by ';' "
                             "(architectures: dcgan, pggan, stylegan, stylegan2)")
    models_json: str = setting("", "JSON file of extra models: [{name, architecture, weights, resolution, "
                                   "version?, description?, options?}]")
    preload: str = setting("", "models to load at start besides the default, comma separated, or 'all'; "
                               "others load on first use")
    device: str = setting("auto", "auto (cuda:0 if present, else cpu), cpu, cuda, cuda:N")
    precision: str = setting("auto", "auto (float16 on CUDA, float32 on CPU), float32 or float16")
    backend: str = setting("auto", "auto (torchscript on CPU, torch on CUDA), torch (eager), torchscript (traced, "
                                   "runs without the GIL) or onnxruntime (the synthesis network exported to ONNX)")
    torch_threads: int = setting(1, "torch intra-op threads; 1 leaves the other core of a 2-core machine to "
                                    "gRPC and clients (0 = torch default)")
    cuda_graphs: str = setting("", "CUDA only: batch sizes to capture as CUDA graphs, e.g. '1,2,4,8'")
    batching: bool = setting(True, "dynamic batching; --no-batching runs each code alone (max_batch_size 1)")
    max_request_codes: int = setting(4096, "most codes one SampleLatents or Synthesize request may carry")
    redis_url: str = setting("", "Redis holding the tuned variants photos are edited with (the inversion service "
                                 "stores them); empty: Synthesize refuses variants")
    max_variant_mb: float = setting(16.0, "largest variant loaded from the store, in MiB")
    variant_cache_entries: int = setting(8, "tuned variants kept in this replica's memory at most (LRU)")
    variant_cache_mb: float = setting(64.0, "their tuned tensors' MiB kept at most (untuned tensors are shared "
                                            "with the base model)")

    service_name = "generator"


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(s) for s in text.replace(" ", "").split(",") if s}))


def _encode_all(pixels: list[np.ndarray], fmt: int) -> list[common_pb2.Image]:
    return [images.encode(p, fmt) for p in pixels]


class _Entry:
    """A registry model, its loaded GeneratorModel and batcher, or why it failed to load."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model: GeneratorModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.error = ""
        self.failed_at = -1e9  # loop time of the last failed load; retried after RETRY_LOAD_SECONDS
        self.lock = asyncio.Lock()
        self.shapes: dict[str, tuple[int, ...]] | None = None
        self.truncation = (1.0, 0)
        self.expected: dict[int, tuple[int, ...]] = {}  # proto space -> code shape, once loaded


class GeneratorService(generator_pb2_grpc.GeneratorServiceServicer):
    """GeneratorService: ListModels, GetModelInfo, SampleLatents, Synthesize (streamed, batched)."""

    service_names = ("interfacegan.v1.GeneratorService",)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = Registry()
        if settings.models_json:
            self.registry.register_json(settings.models_json)
        for flag in filter(None, (f.strip() for f in settings.model.split(";"))):
            self.registry.register_flag(flag)
        self.registry.get(settings.default_model)  # an unknown default fails at start, loudly
        self.entries = {spec.name: _Entry(spec) for spec in self.registry.specs()}
        self.device = backends.resolve_device(settings.device)
        self.dtype = backends.resolve_dtype(settings.precision, self.device)
        self.backend = backends.resolve_backend(settings.backend, self.device)
        max_batch = settings.max_batch_size or (256 if self.device.type == "cuda" else 16)
        lanes = settings.lane_config()
        if lanes.bulk_fill < 0 and self.device.type != "cuda":
            # On a CPU a batch's time grows with its size, and the shared worker (niced) keeps the bulk lane
            # busy beside it: an interactive batch carries no bulk items, so it ends as soon as it can.
            lanes = dataclasses.replace(lanes, bulk_fill=0)
        if settings.batching:
            self.batching = settings.batching_config(max_batch_size=max_batch, lanes=lanes)
        else:
            self.batching = settings.batching_config(max_batch_size=1, max_queue_delay_microseconds=0,
                                                     preferred_batch_sizes=())
        # Message budget for streamed responses: stay well under the send limit.
        self.response_bytes = max(1 << 20, settings.max_message_bytes // 2)
        self._encoders = ThreadPoolExecutor(2, thread_name_prefix="encode")
        store = variants.VariantStore(settings.redis_url, max_bytes=int(settings.max_variant_mb * (1 << 20))) \
            if settings.redis_url else None
        self.variants = VariantModels(store, settings.variant_cache_entries, int(settings.variant_cache_mb * (1 << 20)))

    def register(self, server: grpc.aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(self, server)

    async def load(self) -> None:
        threads = backends.configure_threads(self.settings.torch_threads, 1)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes per batch size: let cuDNN pick kernels once
        log.info("torch settings", extra={"threads": threads[0], "interop_threads": threads[1],
                                          "device": str(self.device), "dtype": str(self.dtype)})
        names = [self.settings.default_model]
        if self.settings.preload == "all":
            names += self.registry.names()
        else:
            names += [n.strip() for n in self.settings.preload.split(",") if n.strip()]
        for name in dict.fromkeys(names):
            if name not in self.entries:
                raise ValueError(f"--preload names unknown model {name!r}; known: {', '.join(self.entries)}")
            entry = await self._ensure_loaded(self.entries[name])
            if entry.model is None and name == self.settings.default_model:
                raise RuntimeError(f"default model {name} failed to load: {entry.error}")

    async def close(self) -> None:
        for entry in self.entries.values():
            if entry.batcher is not None:
                await entry.batcher.close()
        self._encoders.shutdown(wait=True)

    # --- models ------------------------------------------------------------------------------------
    def _load_sync(self, spec: ModelSpec) -> GeneratorModel:
        model = self.registry.load(spec.name, self.device, dtype=self.dtype, models_dir=self.settings.models_dir)
        backends.attach(model, self.backend, self.settings.torch_threads, _sizes(self.settings.cuda_graphs))
        with torch.inference_mode():  # warm up: first-call allocations stay out of request latencies
            model.synthesize(model.sample(2, 0, "z"), "z", output="uint8")
        return model

    async def _ensure_loaded(self, entry: _Entry) -> _Entry:
        if entry.model is not None:
            return entry
        loop = asyncio.get_running_loop()
        async with entry.lock:
            # A broken file is not re-read on every request, but a fixed one is picked up after a while.
            if entry.model is None and loop.time() - entry.failed_at >= RETRY_LOAD_SECONDS:
                try:
                    model = await asyncio.to_thread(self._load_sync, entry.spec)
                except Exception as e:  # noqa: BLE001 - reported per model, the server keeps serving others
                    entry.error = f"{type(e).__name__}: {e}"
                    entry.failed_at = loop.time()
                    log.error("model failed to load", extra={"model": entry.spec.name, "error": entry.error})
                    return entry
                batcher = DynamicBatcher(self._runner(model), self.batching, service="generator",
                                         queue=entry.spec.name)
                await batcher.start()
                entry.model, entry.batcher, entry.error = model, batcher, ""
                entry.expected = {SPACE_ENUMS[s]: v for s, v in model.latent_shapes.items()}
                log.info("model loaded", extra={"model": entry.spec.name, "device": str(model.device),
                                                "precision": model.precision, "backend": model.backend})
        return entry

    async def _model(self, ref: common_pb2.ModelRef) -> _Entry:
        name = ref.name or self.settings.default_model
        entry = self.entries.get(name)
        if entry is None:
            raise not_found(f"model {name!r} is not in the registry; known: {', '.join(sorted(self.entries))}")
        if ref.version and ref.version != entry.spec.version:
            raise not_found(f"model {name!r} has no version {ref.version!r}; available: {entry.spec.version!r}")
        await self._ensure_loaded(entry)
        if entry.model is None:
            raise failed_precondition(f"model {name!r} could not be loaded: {entry.error}")
        return entry

    def _describe(self, entry: _Entry) -> generator_pb2.ModelInfo:
        spec, model = entry.spec, entry.model
        if model is not None:
            shapes = model.latent_shapes
            truncation = (model.default_truncation_psi, model.default_truncation_layers)
            arch, resolution = model.architecture, model.resolution
        else:
            if entry.shapes is None:
                try:  # shapes without weights or memory: build on the meta device
                    with torch.device("meta"):
                        net = build_net(spec.architecture, spec.resolution, **spec.kwargs)
                    entry.shapes = dict(net.latent_shapes)
                    entry.truncation = (net.default_truncation_psi, net.default_truncation_layers)
                except Exception as e:  # noqa: BLE001
                    entry.shapes, entry.error = {}, entry.error or f"{type(e).__name__}: {e}"
            shapes, truncation = entry.shapes, entry.truncation
            arch, resolution = spec.architecture, spec.resolution
        precision = model.precision if model else ("float16" if self.dtype == torch.float16 else "float32")
        return generator_pb2.ModelInfo(
            name=spec.name, version=spec.version, architecture=arch, resolution=resolution,
            latent_spaces=[generator_pb2.LatentSpaceInfo(space=SPACE_ENUMS[s], shape=list(v),
                                                         truncated_at_synthesis=s != "wp" and "w" in shapes)
                           for s, v in shapes.items()],
            device=str(model.device if model else self.device), backend=model.backend if model else self.backend,
            precision=precision, max_batch_size=self.batching.max_batch_size,
            max_request_codes=self.settings.max_request_codes, loaded=model is not None,
            description=spec.description, default_truncation_psi=truncation[0],
            default_truncation_layers=truncation[1], load_error=entry.error,
            max_queue_delay_microseconds=self.batching.max_queue_delay_microseconds,
            max_queue_size=self.batching.max_queue_size)

    # --- batch execution (worker thread) -----------------------------------------------------------
    def _runner(self, model: GeneratorModel):
        def run_batch(items: list, key: Hashable) -> list:
            space, psi, layers, variant = key
            # A batch holds the codes of one variant only (its key): tuned weights never render another's codes.
            runner = variant.model if variant is not None else model
            pixels = runner.synthesize(np.stack(items), space, truncation_psi=psi, truncation_layers=layers,
                                      output="uint8").numpy()
            return list(pixels)  # (H, W, 3) uint8 views; encoded off the batch thread (see _encode)
        return run_batch

    async def _encode(self, pixels: list[np.ndarray], fmt: int) -> list[common_pb2.Image]:
        if fmt == common_pb2.IMAGE_FORMAT_RAW or sum(p.shape[0] * p.shape[1] for p in pixels) <= INLINE_ENCODE_PIXELS:
            return _encode_all(pixels, fmt)  # a few small images: a thread hop would cost more than encoding
        # Big PNG/JPEG compression (Pillow releases the GIL) runs in a thread, keeping the event loop responsive.
        return await asyncio.get_running_loop().run_in_executor(self._encoders, _encode_all, pixels, fmt)

    # --- RPCs --------------------------------------------------------------------------------------
    async def ListModels(self, request, context):
        return generator_pb2.ListModelsResponse(models=[self._describe(e) for e in self.entries.values()])

    async def GetModelInfo(self, request, context):
        name = request.model.name or self.settings.default_model
        entry = self.entries.get(name)
        if entry is None:
            raise not_found(f"model {name!r} is not in the registry; known: {', '.join(sorted(self.entries))}")
        if request.model.version and request.model.version != entry.spec.version:
            raise not_found(f"model {name!r} has no version {request.model.version!r}; "
                            f"available: {entry.spec.version!r}")
        return self._describe(entry)

    def _space(self, value: int, model: GeneratorModel, field: str) -> str:
        space = SPACE_KEYS.get(value)
        if space in model.latent_shapes:
            return space
        accepted = ", ".join(f"{space_name(SPACE_ENUMS[s])} {list(v)}" for s, v in model.latent_shapes.items())
        if space is None:
            raise invalid_argument(field, f"{value} is not a latent space; accepted for {model.name}: {accepted}")
        raise invalid_argument(field, f"space {space_name(value)} is not supported by {model.name} "
                                      f"({model.architecture}); accepted: {accepted}")

    @staticmethod
    def _truncation(psi: float, layers: int, model: GeneratorModel) -> tuple[float | None, int | None]:
        if not math.isfinite(psi) or psi < 0 or psi > 1:
            raise invalid_argument("truncation_psi", f"{psi} is outside (0, 1]; 0 selects the model default "
                                                     f"({model.default_truncation_psi}), 1 means no truncation")
        if "wp" in model.latent_shapes:
            total = model.latent_shapes["wp"][0]
            if layers > total:
                raise invalid_argument("truncation_layers", f"{layers} exceeds the {total} W+ layers of {model.name}; "
                                                            f"accepted 0 (model default) .. {total}")
        return (psi or None), (layers or None)

    async def SampleLatents(self, request, context):
        entry = await self._model(request.model)
        model = entry.model
        if request.space == common_pb2.LATENT_SPACE_UNSPECIFIED:
            raise invalid_argument("space", "required; accepted: " + ", ".join(
                space_name(SPACE_ENUMS[s]) for s in model.latent_shapes))
        space = self._space(request.space, model, "space")
        limit = self.settings.max_request_codes
        if not 1 <= request.count <= limit:
            raise invalid_argument("count", f"{request.count} codes requested; accepted 1 .. {limit}")
        per_code = int(np.prod(model.latent_shapes[space])) * 4
        fit = max(1, (self.settings.max_message_bytes - 4096) // per_code)
        if request.count > fit:
            raise invalid_argument("count", f"{request.count} {space_name(request.space)} codes "
                                            f"({per_code} bytes each) exceed the {self.settings.max_message_mb} MiB "
                                            f"message limit; ask at most {fit} per request")
        psi, layers = self._truncation(request.truncation_psi, request.truncation_layers, model)
        if space == "w" and (psi not in (None, 1.0) or layers):
            raise invalid_argument("truncation_psi" if psi not in (None, 1.0) else "truncation_layers",
                                   "W codes are the untruncated mapping output (as in genforce/interfacegan); "
                                   "Synthesize truncates them: give truncation_psi/truncation_layers to Synthesize, "
                                   "or sample W+ codes, which hold their truncation; accepted with W: 0 or 1")
        if space == "z":
            codes = model.sample(request.count, request.seed, space)
        else:  # the mapping network runs off the event loop
            codes = await asyncio.to_thread(model.sample, request.count, request.seed, space, psi, layers)
        return generator_pb2.SampleLatentsResponse(codes=codec.latents(codes, request.space))

    async def Synthesize(self, request, context):
        entry = await self._model(request.model)
        model, batcher, expected = entry.model, entry.batcher, entry.expected
        if request.codes.space != common_pb2.LATENT_SPACE_UNSPECIFIED:
            self._space(request.codes.space, model, "codes.space")
        proto_space, codes = tensors.latents_to_numpy(request.codes, "codes", expected=expected,
                                                      max_codes=self.settings.max_request_codes)
        space = SPACE_KEYS[proto_space]
        if request.format not in FORMATS:
            raise invalid_argument("format", f"{request.format} is not an ImageFormat; accepted: PNG, JPEG, RAW")
        fmt = FORMATS[request.format]
        psi, layers = (None, None)
        if space in ("z", "w") and "w" in model.latent_shapes:  # W codes are truncated here (see ModelInfo)
            psi, layers = self._truncation(request.truncation_psi, request.truncation_layers, model)
        elif not math.isfinite(request.truncation_psi) or not 0 <= request.truncation_psi <= 1:
            raise invalid_argument("truncation_psi", f"{request.truncation_psi} is outside (0, 1]")
        items = list(codes)
        variant = await self.variants.get(model, request.variant) if request.variant else None
        timeout, lane = context.time_remaining(), request_lane(context)
        async with contextlib.aclosing(batcher.stream(items, key=(space, psi, layers, variant), timeout=timeout,
                                                      lane=lane)) as chunks:
            async for offset, pixels in chunks:
                encoded = await self._encode(pixels, fmt)
                for start, part in self._split(encoded):
                    yield generator_pb2.SynthesizeResponse(offset=offset + start, images=part)

    def _split(self, encoded: list[common_pb2.Image]):
        """Groups images into responses under the message budget, keeping their order."""
        start, size, part = 0, 0, []
        for i, image in enumerate(encoded):
            n = image.ByteSize()
            if part and size + n > self.response_bytes:
                yield start, part
                start, size, part = i, 0, []
            part.append(image)
            size += n
        if part:
            yield start, part
