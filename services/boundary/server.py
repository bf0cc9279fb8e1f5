"""Boundary service: training jobs, storage, conditional boundaries, import/export, analysis, and EditLatents /
InterpolateLatents as thin RPCs over services/common/editing.py for clients in other languages."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
from pathlib import Path

import grpc
import numpy as np
import redis.exceptions

from interfacegan import codec
from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2
from services.common import editing, tensors
from services.common.errors import ServiceError, invalid_argument, not_found, unavailable
from services.common.runtime import redact
from services.common.settings import ServerSettings, setting
from services.common.upstream import CallContext

from . import analysis, bundled, convert, npyfiles, render, training
from .sampler import Sampler
from .jobs import Job, JobManager, JobRecords, fingerprint
from .store import SPACE_KEYS, BoundaryNotFound, BoundaryStore, StoredBoundary, check_name

log = logging.getLogger(__name__)

Z, W, WP = common_pb2.LATENT_SPACE_Z, common_pb2.LATENT_SPACE_W, common_pb2.LATENT_SPACE_WP
#: Which boundary spaces may edit codes of a space: W boundaries also edit W+ codes (every or some layers).
EDITABLE_BY = {Z: (Z,), W: (W,), WP: (W, WP)}


def default_data_dir() -> str:
    return str(Path.home() / ".cache" / "interfacegan" / "boundary-data")


@dataclasses.dataclass
class Settings(ServerSettings):
    """Boundary service settings."""

    redis_url: str = setting("redis://127.0.0.1:6380/0", "Redis holding the boundaries; run it with "
                                                          "appendonly yes (and appendfsync always) so restarts lose nothing")
    redis_prefix: str = setting("ifgan:", "prefix of every Redis key this service writes")
    data_dir: str = dataclasses.field(default_factory=default_data_dir, metadata={
        "help": "folder of the (code, score) dataset shards that training jobs write and reuse"})
    generator_address: str = setting("127.0.0.1:50052", "generator service host:port (training and analysis)")
    scorer_address: str = setting("127.0.0.1:50053", "scorer service host:port (training and analysis)")
    default_num_samples: int = setting(500_000, "samples a training job draws when the request says 0 (the paper's)")
    max_num_samples: int = setting(10_000_000, "largest num_samples a training job accepts")
    shard_size: int = setting(10_000, "samples per dataset shard file (a multiple of --sample-block)")
    sample_block: int = setting(500, "codes per sample/synthesize/score request of a job (capped by the services' limits)")
    pipeline_depth: int = setting(4, "blocks in flight at once through generator and scorer, per replica of the "
                                     "one with more (training sampling and analysis, in the bulk lane)")
    max_jobs: int = setting(1, "training jobs running at once; more wait QUEUED")
    max_queued_jobs: int = setting(16, "training jobs that may wait QUEUED; more are refused with RESOURCE_EXHAUSTED")
    svm_max_iter: int = setting(5000, "iteration cap of the liblinear solvers")
    score_all_attributes: bool = setting(True, "score every scorer attribute in the sampling pass, so later "
                                               "boundaries of other attributes reuse the dataset")
    job_ttl_hours: float = setting(168.0, "how long finished job records and request ids are kept in Redis")
    max_edit_codes: int = setting(4096, "largest number of codes per EditLatents / InterpolateLatents request")
    max_edits: int = setting(64, "largest number of edits per EditLatents request")
    max_rescore_samples: int = setting(10_000, "largest rescore_samples of AnalyzeBoundaries")
    bundled_boundaries: bool = setting(True, "at start, store the boundaries shipped with the project (gender, age, "
                                             "yaw, smile and the age-held gender of the default model) where the "
                                             "store has none of that name yet, so a fresh cluster edits at once")

    service_name = "boundary"

    def validate(self) -> None:
        super().validate()
        if self.sample_block < 1 or self.shard_size < self.sample_block or self.shard_size % self.sample_block:
            raise ValueError(f"shard_size ({self.shard_size}) must be a positive multiple of sample_block "
                             f"({self.sample_block})")
        if self.max_jobs < 1 or self.pipeline_depth < 1:
            raise ValueError("max_jobs and pipeline_depth must be at least 1")


def _handles_store_errors(fn):
    """Maps Redis outages to UNAVAILABLE (retryable) and bad names to INVALID_ARGUMENT, for any handler kind."""

    def translate(e: Exception, self) -> ServiceError:
        if isinstance(e, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return unavailable(f"the boundary store (Redis at {redact(self.settings.redis_url)}) is unreachable: {e}; "
                               f"retry later", retry_after=2.0)
        return ServiceError(grpc.StatusCode.INTERNAL, f"boundary store error: {type(e).__name__}: {e}")

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except redis.exceptions.RedisError as e:
                raise translate(e, self) from None
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            return await fn(self, request, context)
        except redis.exceptions.RedisError as e:
            raise translate(e, self) from None
    return unary


class BoundaryService(boundary_pb2_grpc.BoundaryServiceServicer):
    """The BoundaryService servicer (see protos/interfacegan/v1/boundary.proto)."""

    service_names = ("interfacegan.v1.BoundaryService",)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = BoundaryStore(settings.redis_url, settings.redis_prefix)
        self.sampler = Sampler(settings.generator_address, settings.scorer_address, settings)
        self.train_settings = training.TrainSettings(
            data_dir=Path(settings.data_dir).expanduser().resolve(), default_num_samples=settings.default_num_samples,
            max_num_samples=settings.max_num_samples, shard_size=settings.shard_size,
            sample_block=settings.sample_block, pipeline_depth=settings.pipeline_depth,
            svm_max_iter=settings.svm_max_iter, score_all_attributes=settings.score_all_attributes)
        self.jobs = JobManager(settings.max_jobs, JobRecords(self.store, int(settings.job_ttl_hours * 3600)),
                               max_queued=settings.max_queued_jobs)
        self._installing: asyncio.Future | None = None  # the bundled boundaries, waiting for Redis to come up

    def register(self, server: grpc.aio.Server) -> None:
        boundary_pb2_grpc.add_BoundaryServiceServicer_to_server(self, server)

    async def load(self) -> None:
        self.train_settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Redis being down must not keep the service NOT_SERVING: the edit math works without it, and the
        # store's RPCs answer UNAVAILABLE (retryable) until Redis is back.
        try:
            await self.store.ping()
            persistence = await self.store.persistence()
            if persistence and persistence.get("appendonly") != "yes":
                log.warning("Redis runs without AOF (appendonly=%s): a restart can lose boundaries; start it with "
                            "--appendonly yes --appendfsync always", persistence.get("appendonly"))
            log.info("store ready", extra={"redis": redact(self.settings.redis_url), **persistence})
            if self.settings.bundled_boundaries:
                await bundled.install(self.store)
        except redis.exceptions.RedisError as e:
            log.warning("Redis at %s unreachable at start (%s); store RPCs answer UNAVAILABLE until it is up",
                        redact(self.settings.redis_url), e)
            if self.settings.bundled_boundaries:
                # A cluster whose Redis comes up after this service must still edit at once once it does.
                self._installing = asyncio.ensure_future(self._install_when_reachable())

    async def _install_when_reachable(self, first: float = 0.5, longest: float = 10.0) -> None:
        """Stores the bundled boundaries as soon as Redis answers (retrying with a growing pause)."""
        pause = first
        while True:
            await asyncio.sleep(pause)
            try:
                await self.store.ping()
                installed = await bundled.install(self.store)
            except redis.exceptions.RedisError:
                pause = min(longest, pause * 2)
                continue
            log.info("Redis reachable: bundled boundaries checked", extra={"stored": len(installed)})
            return

    async def close(self) -> None:
        if self._installing is not None:
            self._installing.cancel()
        await self.jobs.close()
        await self.sampler.close()
        await self.store.close()

    # -- helpers -----------------------------------------------------------------------------------------

    async def _get(self, ref: common_pb2.BoundaryRef, field: str, *, with_normal: bool = True) -> StoredBoundary:
        if not ref.model or not ref.attribute:
            raise invalid_argument(field, "give model and attribute (and space; version 0 means the newest)")
        if ref.space not in SPACE_KEYS:
            raise invalid_argument(f"{field}.space", "give the boundary's latent space: Z, W or W+")
        try:
            check_name("model", ref.model)
            check_name("attribute", ref.attribute)
            return await self.store.get(ref.model, ref.space, ref.attribute, ref.version, with_normal=with_normal)
        except BoundaryNotFound as e:
            raise not_found(f"{field}: {e}; ListBoundaries shows what is stored") from None
        except ValueError as e:
            raise invalid_argument(field, str(e)) from None

    # -- training jobs -----------------------------------------------------------------------------------

    @_handles_store_errors
    async def TrainBoundaries(self, request, context):
        async def prepare():
            spec = await training.validate(request, self.sampler, self.train_settings,
                                           CallContext.of(context, request.request_id, 300.0))

            async def work(job: Job):
                return await training.train(job, spec, self.sampler, self.store, self.train_settings)
            return work

        job, record = await self.jobs.submit(request, prepare)
        if record is not None:
            yield JobManager.record_update(record)
            return
        # Disconnecting cancels only this stream, not the job: WatchJob re-attaches.
        async for update in job.watch():
            yield update

    @_handles_store_errors
    async def WatchJob(self, request, context):
        if not request.job_id:
            raise invalid_argument("job_id", "empty; give the id the TrainBoundaries stream reported")
        async for update in self.jobs.watch(request.job_id):
            yield update

    @_handles_store_errors
    async def CancelJob(self, request, context):
        if not request.job_id:
            raise invalid_argument("job_id", "empty; give the id the TrainBoundaries stream reported")
        return await self.jobs.cancel(request.job_id)

    # -- stored boundaries -------------------------------------------------------------------------------

    @_handles_store_errors
    async def ListBoundaries(self, request, context):
        if request.space and request.space not in SPACE_KEYS:
            raise invalid_argument("space", f"{request.space} is not a latent space; accepted: Z, W, W+ or unset")
        found = await self.store.list(model=request.model, attribute=request.attribute, space=request.space,
                                      all_versions=request.all_versions)
        return boundary_pb2.ListBoundariesResponse(boundaries=[convert.info_of(b) for b in found])

    @_handles_store_errors
    async def GetBoundary(self, request, context):
        return convert.boundary_of(await self._get(request.ref, "ref"))

    @property
    def _request_ttl(self) -> int:
        return int(self.settings.job_ttl_hours * 3600)

    @_handles_store_errors
    async def ConditionBoundary(self, request, context):
        if not 1 <= len(request.conditions) <= 16:
            raise invalid_argument("conditions", f"{len(request.conditions)} given; accepted 1 .. 16 boundaries")
        target = await self._get(request.target, "target")
        conditions = [await self._get(c, f"conditions[{i}]") for i, c in enumerate(request.conditions)]
        for i, c in enumerate(conditions):
            if c.model != target.model or c.space != target.space or c.normal.shape != target.normal.shape:
                raise invalid_argument(f"conditions[{i}]", f"{c.model}/{SPACE_KEYS[c.space]} dimension "
                                                           f"{c.normal.shape[1]} differs from the target's "
                                                           f"{target.model}/{SPACE_KEYS[target.space]} dimension "
                                                           f"{target.normal.shape[1]}; conditions must share the "
                                                           f"target's model, space and dimension")
        try:
            normal = editing.project(target.normal, np.concatenate([c.normal for c in conditions]))
        except editing.DegenerateError as e:
            raise invalid_argument("conditions", f"cannot condition {target.attribute}: {e}") from None
        names = list(dict.fromkeys([target.attribute, *(c.attribute for c in conditions)]))
        meta = {"model": target.model, "model_version": target.meta.get("model_version", ""),
                "attribute": "|".join(names), "space": target.space, "origin": "conditional",
                "parents": [target.ref, *(c.ref for c in conditions)], "seed": target.meta.get("seed", 0),
                "num_samples": target.meta.get("num_samples", 0),
                "intercept": 0.0, "timings": {}}
        if len(names) > 17 or len(meta["attribute"]) > 1024:
            raise invalid_argument("conditions", "the derived name is too long")
        if request.request_id:
            # Claimed with the request's fingerprint (SET NX) once the request is known to be valid (a refused
            # one stores nothing): a reused id carrying another target or other conditions is refused, instead of
            # answered with the first request's boundary.
            mine = fingerprint(request)
            first = await self.store.claim_request(f"condition-request:{request.request_id}", mine, self._request_ttl)
            if first != mine:
                raise invalid_argument("request_id", f"{request.request_id!r} was already used by ConditionBoundary "
                                                     f"for a different request (target or conditions); use a new "
                                                     f"request_id for a new request")
        stored, _ = await self.store.put(meta, normal, request_id=f"condition:{request.request_id}"
                                         if request.request_id else "", request_ttl=self._request_ttl)
        return convert.boundary_of(stored)

    @_handles_store_errors
    async def ImportBoundary(self, request, context):
        try:
            normal = npyfiles.load_npy(request.npy)
        except ValueError as e:
            raise invalid_argument("npy", str(e)) from None
        model, attribute, space = request.model, request.attribute, request.space
        if not (model and attribute and space):
            if not request.file_name:
                raise invalid_argument("file_name", "empty; give the reference file name (e.g. "
                                                    "stylegan_ffhq_age_w_boundary.npy) or model, attribute and space")
            try:
                parsed = npyfiles.parse_file_name(request.file_name, await self.store.models())
            except ValueError as e:
                raise invalid_argument("file_name", str(e)) from None
            model, attribute, space = model or parsed[0], attribute or parsed[1], space or parsed[2]
        if space not in SPACE_KEYS:
            raise invalid_argument("space", f"{space} is not a latent space; accepted: Z, W, W+")
        try:
            check_name("model", model)
            check_name("attribute", attribute)
        except ValueError as e:
            raise invalid_argument("file_name" if request.file_name else "model", str(e)) from None
        dimension, whose = await self._dimension(model, space, CallContext.of(context, "", 10.0))
        if dimension and normal.shape[1] != dimension:
            raise invalid_argument("npy", f"the normal has {normal.shape[1]} values; {whose} has dimension "
                                          f"{dimension} in {SPACE_KEYS[space].upper()}: accepted a (1, {dimension}) "
                                          f"or ({dimension},) array")
        norm = float(np.linalg.norm(normal))
        meta = {"model": model, "attribute": attribute, "space": space, "origin": "imported", "parents": [],
                "file_name": request.file_name, "intercept": 0.0, "original_norm": norm, "timings": {}}
        # Reference files are unit normals already; keep them bit-exact so an export gives the same file.
        stored, _ = await self.store.put(meta, normal if abs(norm - 1) < 1e-9 else normal / norm)
        return convert.boundary_of(stored)

    async def _dimension(self, model: str, space: int, call: CallContext) -> tuple[int, str]:
        """The dimension a boundary of `model` in `space` must have, and whose it is: the generator's when it
        serves the model, else that of the boundaries already stored for it ((0, "") for the first one)."""
        try:
            info = await self.sampler.model_info(model, call=call)
        except ServiceError:  # not a model of the generator (or the generator is away): what is stored decides
            info = None
        if info is not None:
            shapes = {s.space: tuple(s.shape) for s in info.latent_spaces}
            if space not in shapes:
                raise invalid_argument("space", f"model {model} has no {SPACE_KEYS[space].upper()} space; accepted: "
                                                f"{', '.join(SPACE_KEYS[s].upper() for s in shapes)}")
            return shapes[space][-1], f"model {model}"
        stored = await self.store.list(model=model, space=space)
        return (int(stored[0].meta["dimension"]), f"{model} (its stored boundaries)") if stored else (0, "")

    @_handles_store_errors
    async def ExportBoundary(self, request, context):
        b = await self._get(request.ref, "ref")
        return boundary_pb2.ExportBoundaryResponse(file_name=npyfiles.file_name(b.model, b.attribute, b.space),
                                                   npy=npyfiles.dump_npy(b.normal))

    # -- edit math ---------------------------------------------------------------------------------------

    def _codes(self, batch: common_pb2.LatentBatch, field: str) -> np.ndarray:
        if batch.space not in SPACE_KEYS:
            raise invalid_argument(f"{field}.space", "give the codes' latent space: Z, W or W+")
        if not batch.HasField("codes"):
            raise invalid_argument(f"{field}.codes", "missing; give a Tensor (N, d), or (N, L, d) for W+")
        codes = tensors.to_numpy(batch.codes, f"{field}.codes")
        rank = 3 if batch.space == WP else 2
        if codes.ndim != rank:
            raise invalid_argument(f"{field}.codes.shape", f"got {list(codes.shape)}; {SPACE_KEYS[batch.space].upper()} "
                                                           f"codes have shape {'(N, L, d)' if rank == 3 else '(N, d)'}")
        if codes.shape[0] > self.settings.max_edit_codes:
            raise invalid_argument(f"{field}.codes.shape", f"{codes.shape[0]} codes exceed the limit of "
                                                           f"{self.settings.max_edit_codes} per request")
        return codes

    def _check_output(self, shape: tuple[int, ...], field: str) -> None:
        size = int(np.prod(shape, dtype=np.int64)) * 4
        limit = self.settings.max_message_bytes - (64 << 10)
        if size > limit:
            raise invalid_argument(field, f"the result {list(shape)} would be {size / 2**20:.1f} MiB, over the "
                                          f"{limit / 2**20:.1f} MiB message limit; send fewer codes, edits or steps")

    @_handles_store_errors
    async def EditLatents(self, request, context):
        codes = self._codes(request.codes, "codes")
        space, d = request.codes.space, codes.shape[-1]
        if not 1 <= len(request.edits) <= self.settings.max_edits:
            raise invalid_argument("edits", f"{len(request.edits)} given; accepted 1 .. {self.settings.max_edits}")
        normals, table, absolute, layers = [], [], [], []
        for i, e in enumerate(request.edits):
            field = f"edits[{i}]"
            kind = e.WhichOneof("direction")
            if kind == "boundary":
                b = await self._get(e.boundary, f"{field}.boundary")
                if b.space not in EDITABLE_BY[space]:
                    raise invalid_argument(f"{field}.boundary", f"a {SPACE_KEYS[b.space].upper()} boundary cannot edit "
                                                                f"{SPACE_KEYS[space].upper()} codes; accepted boundary "
                                                                f"spaces: {[SPACE_KEYS[s].upper() for s in EDITABLE_BY[space]]}")
                normal = b.normal[0]
            elif kind == "vector":
                normal = tensors.to_numpy(e.vector, f"{field}.vector").reshape(-1).astype(np.float64)
                if not np.linalg.norm(normal) > 0:
                    raise invalid_argument(f"{field}.vector", "zero vector; a direction needs a non-zero vector")
            else:
                raise invalid_argument(f"{field}.direction", "missing; give a stored boundary or an explicit vector")
            if normal.size != d:
                raise invalid_argument(f"{field}", f"direction has dimension {normal.size}, the codes {d}")
            is_absolute = e.mode == boundary_pb2.DISTANCE_MODE_ABSOLUTE
            try:
                start, end, steps, layer_range = editing.check_edit(
                    e.start, e.end, e.steps, absolute=is_absolute, layer_start=e.layer_start, layer_end=e.layer_end,
                    num_layers=codes.shape[1] if space == WP else None)
            except editing.EditError as err:
                raise invalid_argument(f"{field}.{err.field}", str(err)) from None
            if layer_range is not None:
                layers.append(layer_range)
            normals.append(normal)
            table.append((start, end, steps))
            absolute.append(is_absolute)
        dist = editing.distance_table(table)
        out_shape = (len(codes), len(normals), dist.shape[1], *codes.shape[1:])
        self._check_output(out_shape, "edits")
        edited = await asyncio.to_thread(editing.edit, codes, np.stack(normals), dist, absolute=np.array(absolute),
                                         layers=np.array(layers) if layers else None)
        return boundary_pb2.EditLatentsResponse(codes=codec.latents(edited, space),
                                                distances=codec.tensor(dist))

    async def InterpolateLatents(self, request, context):
        start = self._codes(request.start, "start")
        end = self._codes(request.end, "end")
        if request.start.space != request.end.space or start.shape != end.shape:
            raise invalid_argument("end", f"{SPACE_KEYS[request.end.space].upper()} {list(end.shape)} must match start "
                                          f"{SPACE_KEYS[request.start.space].upper()} {list(start.shape)}")
        if not 2 <= request.steps <= 256:
            raise invalid_argument("steps", f"{request.steps}; accepted 2 .. 256 (both ends included)")
        self._check_output((len(start), request.steps, *start.shape[1:]), "steps")
        out = editing.interpolate(start, end, request.steps)
        return boundary_pb2.InterpolateLatentsResponse(codes=codec.latents(out, request.start.space))

    # -- analysis ----------------------------------------------------------------------------------------

    @_handles_store_errors
    async def AnalyzeBoundaries(self, request, context):
        if not 2 <= len(request.boundaries) <= 32:
            raise invalid_argument("boundaries", f"{len(request.boundaries)} given; accepted 2 .. 32")
        found = [await self._get(r, f"boundaries[{i}]") for i, r in enumerate(request.boundaries)]
        dims = {b.normal.shape[1] for b in found}
        if len(dims) != 1:
            raise invalid_argument("boundaries", f"normals of different dimensions {sorted(dims)} cannot be compared")
        normals = np.concatenate([b.normal for b in found])
        labels = [convert.ref_of(b) for b in found]
        names = [render.label_of(b.attribute, SPACE_KEYS[b.space], b.version) for b in found]
        cosine = editing.cosine_matrix(normals)
        png = render.heatmap_png(cosine, names, names, title="cosine of boundary normals")
        yield boundary_pb2.AnalyzeBoundariesResponse(
            labels=labels, cosine=codec.tensor(cosine), cosine_image=common_pb2.Image(encoded=png),
            progress=common_pb2.Progress(stage="cosine", done=1, total=1, eta_seconds=-1 if request.rescore_samples else 0))
        if not request.rescore_samples:
            return
        if request.rescore_samples > self.settings.max_rescore_samples:
            raise invalid_argument("rescore_samples", f"{request.rescore_samples}; accepted 0 .. "
                                                      f"{self.settings.max_rescore_samples}")
        if len({(b.model, b.space) for b in found}) != 1:
            raise invalid_argument("boundaries", "the re-scoring study edits one model's codes: every boundary must "
                                                 "belong to the same model and space")
        distance = request.rescore_distance or 3.0
        if not 0 < distance <= 100:
            raise invalid_argument("rescore_distance", f"{distance}; accepted (0, 100] (0 means 3)")
        call = CallContext.of(context, request.request_id, 300.0)
        scorer = await self.sampler.scorer_info(call)
        known = [a.name for a in scorer.attributes]
        attributes = list(request.rescore_attributes) or known
        unknown = [a for a in attributes if a not in known]
        if unknown:
            raise invalid_argument("rescore_attributes", f"{unknown} not computed by the scorer; accepted: {known}")
        model = common_pb2.ModelRef(name=found[0].model, version=found[0].meta.get("model_version", ""))
        try:
            info = await self.sampler.model_info(model.name, model.version, call)
        except ServiceError as e:
            raise invalid_argument("boundaries", f"the generator cannot synthesize model {model.name!r} ({e.message}); "
                                                 f"the re-scoring study needs the boundaries' model") from None
        space = found[0].space
        if space == W and any(s.space == WP for s in info.latent_spaces) and not any(
                s.space == W for s in info.latent_spaces):
            space = WP
        block = max(1, min(self.settings.sample_block, info.max_request_codes or 512,
                           scorer.max_request_images or 512))
        started = time.monotonic()
        queue: asyncio.Queue = asyncio.Queue()

        async def on_progress(done: int, total: int):
            rate = done / max(1e-9, time.monotonic() - started)
            queue.put_nowait(common_pb2.Progress(stage="rescoring", done=done, total=total,
                                                 eta_seconds=(total - done) / rate,
                                                 elapsed_seconds=time.monotonic() - started))

        task = asyncio.create_task(analysis.rescore(
            self.sampler, model, space, normals, attributes, request.rescore_samples, distance, request.seed,
            block, on_progress, request.request_id, await self.sampler.depth(self.settings.pipeline_depth), call))
        try:
            while not task.done() or not queue.empty():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield boundary_pb2.AnalyzeBoundariesResponse(progress=getter.result())
                else:
                    getter.cancel()
            result = task.result()
        finally:
            if not task.done():
                task.cancel()
        scaled = analysis.column_scaled(result.mean)
        png = render.heatmap_png(result.mean, names, attributes, colour_matrix=scaled, fmt="{:+.3f}",
                                 title=f"score change per unit edit (d={distance:g}, n={request.rescore_samples})")
        yield boundary_pb2.AnalyzeBoundariesResponse(
            labels=labels, cosine=codec.tensor(cosine), scored_attributes=attributes,
            rescore=codec.tensor(result.mean), rescore_stderr=codec.tensor(result.stderr),
            rescore_counts=codec.tensor(result.counts.astype(np.float32)),
            rescore_image=common_pb2.Image(encoded=png),
            progress=common_pb2.Progress(stage="done", done=1, total=1, eta_seconds=0,
                                         elapsed_seconds=time.monotonic() - started))

