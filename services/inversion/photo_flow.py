"""Invert for photos: every selected face aligned and refined in the shared worker, then tuned into one variant."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time

import grpc
import numpy as np
import torch

from interfacegan import codec
from interfacegan.codec import SPACE_ENUMS
from interfacegan.v1 import common_pb2, inversion_pb2
from services.common import images, variants
from services.common.batching import request_lane
from services.common.errors import ServiceError, failed_precondition, invalid_argument, resource_exhausted

from . import photo
from .faces import similarity_transform, warp_crop
from .framing import template_for
from .quality import psnr as psnr_of
from .quality import ssim as ssim_of
from .refine import Options
from .tuning import to_uint8
from .worker import Job

SELECTIONS = {inversion_pb2.FACE_SELECTION_UNSPECIFIED: photo.LARGEST,
              inversion_pb2.FACE_SELECTION_LARGEST: photo.LARGEST,
              inversion_pb2.FACE_SELECTION_ALL: photo.ALL, inversion_pb2.FACE_SELECTION_INDICES: photo.INDICES}


def find_faces(svc, request, resolution: int, model_name: str):
    """Decodes the photo and picks its faces: (photo, [(index, face, matrix, crop)], dropped, warnings)."""
    s = svc.settings
    if request.face_selection not in SELECTIONS:
        raise invalid_argument("face_selection", f"{request.face_selection}; accepted: LARGEST, ALL, INDICES")
    if request.face_selection != inversion_pb2.FACE_SELECTION_INDICES and request.face_indices:
        raise invalid_argument("face_indices", "given without face_selection=FACE_SELECTION_INDICES; set both")
    image = images.decode(request.image, "image", max_pixels=s.max_image_pixels, min_side=s.min_photo_side)
    h, w = image.shape[:2]
    found = svc.faces.find(image, s.detect_upsample)
    kept, dropped = photo.plausible(found, s.min_face_score, s.min_face_side, image, svc.verifier,
                                    s.trusted_face_score, 3 * s.max_faces)
    try:
        chosen = photo.select(kept, SELECTIONS[request.face_selection], list(request.face_indices), s.max_faces)
    except photo.FaceSelectionError as e:
        field = "face_indices" if request.face_selection == inversion_pb2.FACE_SELECTION_INDICES and kept \
            else "image"
        extra = f" ({len(dropped)} implausible detections dropped)" if dropped else ""
        raise invalid_argument(field, f"{e} in the {w}x{h} photo{extra}; accepted: a photo with frontal faces at "
                                      f"least about {max(40, s.min_face_side)} px wide, or align_face=false for an "
                                      f"image already framed like the generator's {resolution}x{resolution} "
                                      f"output") from None
    template = template_for(model_name, resolution)
    picked = []
    for i in chosen:
        matrix = similarity_transform(kept[i].landmarks, template)
        picked.append((i, kept[i], matrix, warp_crop(image, matrix, resolution)))
    warnings = []
    if dropped:
        warnings.append(f"{len(dropped)} detection(s) dropped as implausible (narrower than {s.min_face_side} px, "
                        f"or not confirmed by the second face detector)")
    if request.face_selection in (inversion_pb2.FACE_SELECTION_UNSPECIFIED, inversion_pb2.FACE_SELECTION_LARGEST) \
            and len(kept) > 1:
        x, y, bw, bh = kept[0].box
        warnings.append(f"{len(kept)} faces found; the largest was used (box x={x:.0f} y={y:.0f} w={bw:.0f} "
                        f"h={bh:.0f}); face_selection=ALL edits every face")
    return image, picked, len(kept), len(dropped), warnings


async def refine_all(svc, context, inv, space: str, targets: torch.Tensor, guesses: torch.Tensor,
                     options: Options) -> list:
    """Refines every face's code in the shared continuous-batching worker; returns the finished rows."""
    loop = asyncio.get_running_loop()
    rows = [inv.new_row(t, g, options) for t, g in zip(targets, guesses)]
    if options.max_steps <= 0:
        return rows
    done = asyncio.Event()
    left = [len(rows)]

    def on_done(job):
        left[0] -= 1
        if left[0] == 0:
            loop.call_soon_threadsafe(done.set)

    remaining = context.time_remaining()
    deadline = None if remaining is None else time.monotonic() + 0.5 * remaining
    jobs = []
    try:
        for row in rows:
            row.deadline = deadline  # half the time is left for tuning and the answer
            job = Job(inv, space, row, on_done)
            if not svc.worker.submit(job, request_lane(context)):
                active, queued = svc.worker.load()
                raise resource_exhausted(f"{queued} refinements are queued (limit {svc.settings.max_queue_size}) "
                                         f"and {active} running; retry later", retry_after=1.0)
            jobs.append(job)
        await done.wait()
    finally:
        for row in rows:
            row.cancelled = True
    if any(r.stopped == "error" for r in rows):
        raise ServiceError(grpc.StatusCode.INTERNAL, "refinement failed; see the server log")
    return rows


async def invert_photo(svc, request, context, loaded, space: str, fmt: int, started: float):
    """The Invert stream of a photo: progress messages, then the final one with every face and the variant."""
    s = svc.settings
    inv, model = loaded.inverter, loaded.model
    res = inv.resolution
    tune = svc.tuner.enabled and not request.skip_tuning and not request.encoder_only
    if request.tuning_steps > s.max_tuning_steps:
        raise invalid_argument("tuning_steps", f"{request.tuning_steps}; accepted: 0 (default {s.tuning_steps}) "
                                               f"to {s.max_tuning_steps}")
    steps = 0 if request.encoder_only else request.max_steps or (s.photo_refine_steps if tune else s.default_steps)
    options = svc._options(request)
    options.max_steps = steps
    h, w = images.size_of(request.image, "image", max_pixels=s.max_image_pixels)
    async with svc.budget.hold(h * w, timeout=context.time_remaining()) as held:  # the photo, until cropped
        _, picked, kept, dropped, warnings = await held.to_thread(find_faces, svc, request, res, model.name)
    if not svc.tuner.enabled and not request.skip_tuning and not request.encoder_only:
        warnings.append("pivotal tuning is off on this server (no variant store: --redis-url); the base "
                        "generator's reconstruction is returned")
    crops = np.stack([p[3] for p in picked])
    targets = inv.targets(crops)
    cpu_started = time.process_time()
    guesses = await asyncio.to_thread(inv.first_guess, targets, space)
    if request.stream_progress:
        yield _progress("refining", 0, steps, started, f"{len(picked)} face(s) aligned; refining their codes")
    rows = await refine_all(svc, context, inv, space, targets, guesses, options)
    codes = torch.stack([r.best_code for r in rows])
    with torch.no_grad():
        untuned = inv.render(codes, space).detach()
    untuned_psnr = psnr_of(untuned, targets).tolist()
    images_out, vid, tuned_steps = untuned, "", 0
    if tune:
        if request.stream_progress:
            yield _progress("tuning", 0, request.tuning_steps or s.tuning_steps, started,
                            f"tuning a generator variant around {len(picked)} face(s)")
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + 0.85 * remaining - 0.1
        pivots = inv.net.synthesis_input(codes, space) if space != "z" else codes
        digest = hashlib.sha256(request.image.SerializeToString(deterministic=True)).hexdigest()
        selection = f"{request.face_selection}:{list(request.face_indices)}:{space}:{steps}"
        gone = [False]  # set when the call ends early: the tuning thread stops at its next step
        try:
            vid, tuned = await svc.tuner.run(model, pivots.detach().numpy(), targets, digest, selection,
                                             request.tuning_steps, deadline, lambda: gone[0])
        except variants.VariantError as e:
            raise failed_precondition(f"{e}; ask fewer faces per photo, or raise the store's limit "
                                      f"(--max-variant-mb)") from None
        except Exception as e:  # noqa: BLE001 - a store that cannot be written is the store's problem
            import redis.exceptions
            if isinstance(e, redis.exceptions.RedisError):
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"the variant store is unreachable "
                                                                f"({type(e).__name__}: {e}); retry later") from None
            raise
        finally:
            gone[0] = True
        images_out, tuned_steps = tuned.images, tuned.steps
        if tuned.stopped == "deadline":
            warnings.append(f"the call's deadline stopped tuning after {tuned.steps} steps")
    cpu = (time.process_time() - cpu_started) / len(picked)  # this process's CPU: the call's own work dominates
    recon = to_uint8(images_out)
    final_psnr = psnr_of(images_out, targets).tolist()
    out = inversion_pb2.InvertResponse(warnings=warnings, final=True, steps=max(r.step for r in rows),
                                       stop_reason="encoder_only" if request.encoder_only else
                                       rows[0].stopped or "max_steps", variant=vid,
                                       faces_dropped=dropped, cpu_seconds_per_face=cpu, tuning_steps=tuned_steps)
    for k, (index, face, matrix, crop) in enumerate(picked):
        alignment = inversion_pb2.FaceAlignment(
            matrix=matrix.reshape(-1).tolist(), crop_size=res, face_box=list(face.box), faces_found=kept,
            landmarks=face.landmarks.reshape(-1).tolist(), detection_score=face.score)
        out.faces.append(inversion_pb2.InvertedFace(
            index=index, code=codec.latents(codes[k:k + 1].numpy(), SPACE_ENUMS[space]), alignment=alignment,
            aligned_target=images.encode(crop, fmt), reconstruction=images.encode(recon[k], fmt),
            psnr=final_psnr[k], untuned_psnr=untuned_psnr[k]))
    first = out.faces[0]
    out.code.CopyFrom(first.code)
    out.alignment.CopyFrom(first.alignment)
    out.aligned_target.CopyFrom(first.aligned_target)
    out.reconstruction.CopyFrom(first.reconstruction)
    out.psnr, out.untuned_psnr = first.psnr, first.untuned_psnr
    out.ssim = float(ssim_of(images_out[:1], targets[:1])[0])
    out.first_psnr = rows[0].first_psnr if not math.isnan(rows[0].first_psnr) else untuned_psnr[0]
    out.progress.CopyFrom(common_pb2.Progress(stage="done", done=1, total=1,
                                              elapsed_seconds=time.perf_counter() - started, eta_seconds=0.0,
                                              message=f"{len(picked)} face(s): " + ", ".join(
                                                  f"{p:.1f} dB" for p in final_psnr)))
    yield out


def _progress(stage: str, done: int, total: int, started: float, message: str) -> inversion_pb2.InvertResponse:
    return inversion_pb2.InvertResponse(progress=common_pb2.Progress(
        stage=stage, done=done, total=total, elapsed_seconds=time.perf_counter() - started, eta_seconds=-1.0,
        message=message))
