"""Bad input over every RPC of every service, table-driven, against a real cluster.

Each case expects one status code and a message that says what is accepted; after each case the service is
still SERVING, and nothing stored changed (every Redis key's DUMP and the boundary data folder are identical).
RPCs without request fields (ListModels, ListAttributes, GetInfo, GetCatalog) have no bad input to send.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import re
import struct
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
import pytest
import redis
from PIL import Image

from interfacegan import codec
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,
                             generator_pb2, generator_pb2_grpc, inversion_pb2, inversion_pb2_grpc, scorer_pb2,
                             scorer_pb2_grpc)
from services.cluster import Cluster, check_health, free_port

REFERENCE = Path(os.environ["IFGAN_REFERENCE_BOUNDARIES"])  # set by tests/conftest.py
Z, W, WP = common_pb2.LATENT_SPACE_Z, common_pb2.LATENT_SPACE_W, common_pb2.LATENT_SPACE_WP
C = grpc.StatusCode
MODEL = "dcgan-digiface-64"
D = 100  # the default model's latent dimension
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]

STUBS = {"generator": (generator_pb2_grpc.GeneratorServiceStub, generator_pb2.DESCRIPTOR, "GeneratorService"),
         "scorer": (scorer_pb2_grpc.ScorerServiceStub, scorer_pb2.DESCRIPTOR, "ScorerService"),
         "boundary": (boundary_pb2_grpc.BoundaryServiceStub, boundary_pb2.DESCRIPTOR, "BoundaryService"),
         "inversion": (inversion_pb2_grpc.InversionServiceStub, inversion_pb2.DESCRIPTOR, "InversionService"),
         "editor": (editor_pb2_grpc.EditorServiceStub, editor_pb2.DESCRIPTOR, "EditorService")}


# -- inputs ---------------------------------------------------------------------------------------------------

def tensor(shape, fill=None, data: bytes | None = None) -> common_pb2.Tensor:
    if data is not None:
        return common_pb2.Tensor(shape=list(shape), data=data)
    array = np.random.default_rng(0).standard_normal(shape).astype("<f4")
    if fill is not None:
        array.flat[len(array.flat) // 2] = fill
    return codec.tensor(array)


def codes(n=1, d=D, fill=None, space=Z) -> common_pb2.LatentBatch:
    return common_pb2.LatentBatch(space=space, codes=tensor((n, d), fill))


def png(h=64, w=64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb's calling card)."""
    data = bytearray(png(1, 1))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def corrupt_png() -> bytes:
    data = bytearray(png())
    start = data.index(b"IDAT") + 8
    for i in range(start, start + 64):
        data[i] ^= 0x5A
    return bytes(data)


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


def image(data: bytes) -> common_pb2.Image:
    return common_pb2.Image(encoded=data)


def raw(h, w, c=3, size=None) -> common_pb2.Image:
    n = h * w * c if size is None else size
    return common_pb2.Image(raw=common_pb2.RawImage(height=h, width=w, channels=c, data=bytes(n)))


def ref(attribute, model="relia-stylegan", space=Z, version=0) -> common_pb2.BoundaryRef:
    return common_pb2.BoundaryRef(model=model, attribute=attribute, space=space, version=version)


def npy(array: np.ndarray, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def edit(start=0.0, end=3.0, steps=3, vector=True, **kw) -> boundary_pb2.Edit:
    direction = {"vector": tensor((1, D))} if vector else {}
    return boundary_pb2.Edit(start=start, end=end, steps=steps, **direction, **kw)


def attr_edit(attribute="rel-age", **kw) -> editor_pb2.AttributeEdit:
    return editor_pb2.AttributeEdit(**{"attribute": attribute, "end": 2.0, "steps": 1, **kw})


LONG = "x" * 20_000
UNICODE = "âge-年齢-😀"
#: The phrase of the accepted values every message promises ("accepted: ...", "accepted 1 .. 256").
ACCEPTS = r"accepted[: ]"


@dataclasses.dataclass
class Case:
    id: str
    service: str
    method: str
    request: Callable[[], object]
    code: grpc.StatusCode | tuple
    says: str = ACCEPTS
    timeout: float = 60.0


CASES = [
    # -- generator ----------------------------------------------------------------------------------------
    Case("gen-info-unknown-model", "generator", "GetModelInfo",
         lambda: generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name="no-such-model")), C.NOT_FOUND,
         "known: dcgan-digiface-64"),
    Case("gen-info-unknown-version", "generator", "GetModelInfo",
         lambda: generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name=MODEL, version="99")),
         C.NOT_FOUND, "available: '1'"),
    Case("gen-info-overlong-name", "generator", "GetModelInfo",
         lambda: generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name=LONG)), C.NOT_FOUND,
         "known: dcgan-digiface-64"),
    Case("gen-info-non-ascii-name", "generator", "GetModelInfo",
         lambda: generator_pb2.GetModelInfoRequest(model=common_pb2.ModelRef(name=UNICODE)), C.NOT_FOUND,
         "known: dcgan-digiface-64"),
    Case("gen-sample-no-space", "generator", "SampleLatents",
         lambda: generator_pb2.SampleLatentsRequest(count=2), C.INVALID_ARGUMENT, "accepted: Z"),
    Case("gen-sample-zero-count", "generator", "SampleLatents",
         lambda: generator_pb2.SampleLatentsRequest(space=Z, count=0), C.INVALID_ARGUMENT, "accepted 1"),
    Case("gen-sample-huge-count", "generator", "SampleLatents",
         lambda: generator_pb2.SampleLatentsRequest(space=Z, count=4_000_000_000), C.INVALID_ARGUMENT, "accepted 1"),
    Case("gen-sample-unsupported-space", "generator", "SampleLatents",
         lambda: generator_pb2.SampleLatentsRequest(space=WP, count=1), C.INVALID_ARGUMENT, r"accepted: Z \[100\]"),
    Case("gen-sample-nan-truncation", "generator", "SampleLatents",
         lambda: generator_pb2.SampleLatentsRequest(space=Z, count=1, truncation_psi=math.nan), C.INVALID_ARGUMENT,
         r"\(0, 1\]"),
    Case("gen-sample-unknown-model", "generator", "SampleLatents",
         lambda: generator_pb2.SampleLatentsRequest(model=common_pb2.ModelRef(name="stylegan-ffhq-9"), space=Z,
                                                    count=1), C.NOT_FOUND, "known: dcgan-digiface-64"),
    Case("gen-synth-empty-request", "generator", "Synthesize", lambda: generator_pb2.SynthesizeRequest(),
         C.INVALID_ARGUMENT, r"give a Tensor"),
    Case("gen-synth-wrong-dimension", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=codes(2, 99)), C.INVALID_ARGUMENT, r"\[N, 100\]"),
    Case("gen-synth-wrong-rank", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=common_pb2.LatentBatch(space=Z, codes=tensor((1, 2, D)))),
         C.INVALID_ARGUMENT, r"\[N, 100\]"),
    Case("gen-synth-nan", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=codes(3, fill=math.nan)), C.INVALID_ARGUMENT, "finite"),
    Case("gen-synth-inf", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=codes(3, fill=-math.inf)), C.INVALID_ARGUMENT, "finite"),
    Case("gen-synth-truncated-tensor", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=common_pb2.LatentBatch(
             space=Z, codes=tensor((2, D), data=bytes(2 * D * 4 - 3)))), C.INVALID_ARGUMENT, "needs 800"),
    Case("gen-synth-negative-shape", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=common_pb2.LatentBatch(
             space=Z, codes=tensor((-1, D), data=b""))), C.INVALID_ARGUMENT, "zero or negative"),
    Case("gen-synth-float64-dtype", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=common_pb2.LatentBatch(space=Z, codes=common_pb2.Tensor(
             shape=[1, D], dtype=7, data=bytes(8 * D)))), C.INVALID_ARGUMENT, "FLOAT32"),
    Case("gen-synth-huge-batch", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=codes(5000)), C.INVALID_ARGUMENT, "limit of 4096"),
    Case("gen-synth-unknown-format", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=codes(1), format=9), C.INVALID_ARGUMENT, "PNG, JPEG, RAW"),
    Case("gen-synth-oversize-message", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=common_pb2.LatentBatch(space=Z, codes=tensor(
             (1, 5_000_000), data=bytes(20_000_000)))), C.RESOURCE_EXHAUSTED, "larger than max"),
    Case("gen-synth-deadline-too-short", "generator", "Synthesize",
         lambda: generator_pb2.SynthesizeRequest(codes=codes(2048)), C.DEADLINE_EXCEEDED, "(?i)deadline",
         timeout=0.02),
    # -- scorer -------------------------------------------------------------------------------------------
    Case("score-empty-request", "scorer", "Score", lambda: scorer_pb2.ScoreRequest(), C.INVALID_ARGUMENT,
         "accepted: 1 to"),
    Case("identity-no-images", "scorer", "CompareIdentity",
         lambda: scorer_pb2.IdentityRequest(references=[image(png())]), C.INVALID_ARGUMENT, "accepted: 1 to"),
    Case("identity-references-mismatch", "scorer", "CompareIdentity",
         lambda: scorer_pb2.IdentityRequest(references=[image(png())] * 2, images=[image(png())] * 3),
         C.INVALID_ARGUMENT, "accepted: one reference"),
    Case("identity-non-image-reference", "scorer", "CompareIdentity",
         lambda: scorer_pb2.IdentityRequest(references=[image(b"%PDF-1.4 not an image")], images=[image(png())]),
         C.INVALID_ARGUMENT, "PNG or JPEG"),
    Case("score-empty-image", "scorer", "Score", lambda: scorer_pb2.ScoreRequest(images=[common_pb2.Image()]),
         C.INVALID_ARGUMENT, "PNG or JPEG"),
    Case("score-non-image-bytes", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(b"%PDF-1.4 definitely not an image")]), C.INVALID_ARGUMENT,
         "PNG or JPEG"),
    Case("score-truncated-png", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(png()[:200])]), C.INVALID_ARGUMENT, "PNG or JPEG"),
    Case("score-corrupt-png", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(corrupt_png())]), C.INVALID_ARGUMENT, "PNG or JPEG"),
    Case("score-truncated-jpeg", "scorer", "Score", lambda: scorer_pb2.ScoreRequest(images=[image(
         (lambda b: b[:len(b) // 3])(_jpeg()))]), C.INVALID_ARGUMENT, "PNG or JPEG"),
    Case("score-gif-not-accepted", "scorer", "Score", lambda: scorer_pb2.ScoreRequest(images=[image(gif())]),
         C.INVALID_ARGUMENT, "PNG or JPEG"),
    Case("score-zero-size-raw", "scorer", "Score", lambda: scorer_pb2.ScoreRequest(images=[raw(0, 0)]),
         C.INVALID_ARGUMENT, "at least 1"),
    Case("score-raw-wrong-length", "scorer", "Score", lambda: scorer_pb2.ScoreRequest(images=[raw(8, 8, size=100)]),
         C.INVALID_ARGUMENT, "needs 192"),
    Case("score-raw-two-channels", "scorer", "Score", lambda: scorer_pb2.ScoreRequest(images=[raw(8, 8, c=2)]),
         C.INVALID_ARGUMENT, "1, 3 or 4"),
    Case("score-decompression-bomb", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(png_claiming(30000, 30000))]), C.INVALID_ARGUMENT,
         "accepted: PNG or JPEG"),
    Case("score-too-many-pixels-raw", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[raw(2100, 2100, c=1)]), C.INVALID_ARGUMENT, "limit of"),
    Case("score-huge-batch", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[raw(1, 1)] * 2049), C.INVALID_ARGUMENT, "accepted: 1 to 2048"),
    Case("score-bad-image-among-good", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(png()), image(png()), image(b"\x89PNG\r\n\x1a\nxx")]),
         C.INVALID_ARGUMENT, r"images\[2\]"),
    Case("score-unknown-attribute", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(png())], attributes=["beauty"]), C.INVALID_ARGUMENT,
         "accepted: gender, age, yaw"),
    Case("score-non-ascii-attribute", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(png())], attributes=[UNICODE]), C.INVALID_ARGUMENT,
         "accepted: gender, age, yaw"),
    Case("score-attribute-twice", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(png())], attributes=["age", "age"]), C.INVALID_ARGUMENT,
         "at most once"),
    Case("score-deadline-too-short", "scorer", "Score",
         lambda: scorer_pb2.ScoreRequest(images=[image(png())] * 256), C.DEADLINE_EXCEEDED, "(?i)deadline",
         timeout=0.05),
    # -- boundary -----------------------------------------------------------------------------------------
    Case("bnd-get-unknown", "boundary", "GetBoundary", lambda: boundary_pb2.GetBoundaryRequest(ref=ref("beauty")),
         C.NOT_FOUND, "ListBoundaries"),
    Case("bnd-get-unknown-version", "boundary", "GetBoundary",
         lambda: boundary_pb2.GetBoundaryRequest(ref=ref("age", version=99)), C.NOT_FOUND, r"versions 1\.\.\d+ exist"),
    Case("bnd-get-empty-ref", "boundary", "GetBoundary", lambda: boundary_pb2.GetBoundaryRequest(), C.INVALID_ARGUMENT,
         "give model and attribute"),
    Case("bnd-get-no-space", "boundary", "GetBoundary",
         lambda: boundary_pb2.GetBoundaryRequest(ref=ref("age", space=0)), C.INVALID_ARGUMENT, "Z, W or W\\+"),
    Case("bnd-get-overlong-model", "boundary", "GetBoundary",
         lambda: boundary_pb2.GetBoundaryRequest(ref=ref("age", model=LONG)), C.INVALID_ARGUMENT, "1..128 characters"),
    Case("bnd-get-non-ascii-attribute", "boundary", "GetBoundary",
         lambda: boundary_pb2.GetBoundaryRequest(ref=ref(UNICODE)), C.INVALID_ARGUMENT, "letters, digits"),
    Case("bnd-list-bad-space", "boundary", "ListBoundaries", lambda: boundary_pb2.ListBoundariesRequest(space=9),
         C.INVALID_ARGUMENT, "accepted: Z, W"),
    Case("bnd-export-unknown", "boundary", "ExportBoundary",
         lambda: boundary_pb2.ExportBoundaryRequest(ref=ref("age", model="nobody")), C.NOT_FOUND, "ListBoundaries"),
    Case("bnd-condition-none", "boundary", "ConditionBoundary",
         lambda: boundary_pb2.ConditionBoundaryRequest(target=ref("age")), C.INVALID_ARGUMENT, "accepted 1 .. 16"),
    Case("bnd-condition-too-many", "boundary", "ConditionBoundary",
         lambda: boundary_pb2.ConditionBoundaryRequest(target=ref("age"), conditions=[ref("gender")] * 17),
         C.INVALID_ARGUMENT, "accepted 1 .. 16"),
    Case("bnd-condition-parallel", "boundary", "ConditionBoundary",
         lambda: boundary_pb2.ConditionBoundaryRequest(target=ref("age"), conditions=[ref("age-twin")]),
         C.INVALID_ARGUMENT, "(?i)parallel|degenerate|dependent"),
    Case("bnd-condition-on-itself", "boundary", "ConditionBoundary",
         lambda: boundary_pb2.ConditionBoundaryRequest(target=ref("age"), conditions=[ref("gender"), ref("age")]),
         C.INVALID_ARGUMENT, "(?i)parallel|degenerate|dependent"),
    Case("bnd-condition-other-dimension", "boundary", "ConditionBoundary",
         lambda: boundary_pb2.ConditionBoundaryRequest(target=ref("age"), conditions=[ref("rel-age", model=MODEL)]),
         C.INVALID_ARGUMENT, "must share"),
    Case("bnd-condition-unknown", "boundary", "ConditionBoundary",
         lambda: boundary_pb2.ConditionBoundaryRequest(target=ref("age"), conditions=[ref("beauty")]),
         C.NOT_FOUND, "ListBoundaries"),
    Case("bnd-edit-no-edits", "boundary", "EditLatents", lambda: boundary_pb2.EditLatentsRequest(codes=codes()),
         C.INVALID_ARGUMENT, "accepted 1 .. 64"),
    Case("bnd-edit-nan-codes", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(2, fill=math.nan), edits=[edit()]), C.INVALID_ARGUMENT,
         "finite"),
    Case("bnd-edit-absurd-distance", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[edit(end=1e12)]), C.INVALID_ARGUMENT,
         "<= 10000"),
    Case("bnd-edit-inf-distance", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[edit(start=-math.inf)]), C.INVALID_ARGUMENT,
         "finite"),
    Case("bnd-edit-too-many-steps", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[edit(steps=100_000)]), C.INVALID_ARGUMENT,
         "accepted 1 .. 256"),
    Case("bnd-edit-zero-vector", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[boundary_pb2.Edit(
             vector=codec.tensor(np.zeros((1, D), np.float32)), end=1, steps=1)]), C.INVALID_ARGUMENT,
         "non-zero"),
    Case("bnd-edit-dimension-mismatch", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(d=512), edits=[edit()]), C.INVALID_ARGUMENT,
         "dimension 100, the codes 512"),
    Case("bnd-edit-no-direction", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[edit(vector=False)]), C.INVALID_ARGUMENT,
         "give a stored boundary"),
    Case("bnd-edit-unknown-boundary", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[boundary_pb2.Edit(boundary=ref("beauty"))]),
         C.NOT_FOUND, "ListBoundaries"),
    Case("bnd-edit-too-many-edits", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[edit()] * 65), C.INVALID_ARGUMENT,
         "accepted 1 .. 64"),
    Case("bnd-edit-result-too-large", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(4096), edits=[edit(steps=256)] * 8), C.INVALID_ARGUMENT,
         "message limit"),
    Case("bnd-edit-layers-on-z", "boundary", "EditLatents",
         lambda: boundary_pb2.EditLatentsRequest(codes=codes(), edits=[edit(layer_start=2)]), C.INVALID_ARGUMENT,
         "W\\+ codes only"),
    Case("bnd-interpolate-one-step", "boundary", "InterpolateLatents",
         lambda: boundary_pb2.InterpolateLatentsRequest(start=codes(), end=codes(), steps=1), C.INVALID_ARGUMENT,
         "accepted 2 .. 256"),
    Case("bnd-interpolate-shape-mismatch", "boundary", "InterpolateLatents",
         lambda: boundary_pb2.InterpolateLatentsRequest(start=codes(2), end=codes(3), steps=5), C.INVALID_ARGUMENT,
         "must match"),
    Case("bnd-import-not-npy", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(file_name="stylegan_ffhq_age_boundary.npy", npy=b"hello"),
         C.INVALID_ARGUMENT, "expected float32 or float64"),
    Case("bnd-import-pickled-object", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(file_name="stylegan_ffhq_age_boundary.npy",
                                                    npy=npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)),
         C.INVALID_ARGUMENT, "expected float32 or float64"),
    Case("bnd-import-nan-normal", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(file_name="stylegan_ffhq_age_boundary.npy",
                                                    npy=npy(np.full((1, 512), np.nan))), C.INVALID_ARGUMENT,
         "finite and non-zero"),
    Case("bnd-import-zero-normal", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(file_name="stylegan_ffhq_age_boundary.npy",
                                                    npy=npy(np.zeros((1, 512)))), C.INVALID_ARGUMENT,
         "finite and non-zero"),
    Case("bnd-import-bad-shape", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(file_name="stylegan_ffhq_age_boundary.npy",
                                                    npy=npy(np.ones((3, 512)))), C.INVALID_ARGUMENT,
         r"expected \(1, d\)"),
    Case("bnd-import-bad-file-name", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(file_name="holiday.jpg", npy=npy(np.ones((1, 512)))),
         C.INVALID_ARGUMENT, "boundary.npy|e\\.g\\."),
    Case("bnd-import-non-ascii-name", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(model="relia-stylegan", attribute=UNICODE, space=Z,
                                                    npy=npy(np.ones((1, 512)))), C.INVALID_ARGUMENT, "letters, digits"),
    Case("bnd-import-overlong-name", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(model="relia-stylegan", attribute=LONG, space=Z,
                                                    npy=npy(np.ones((1, 512)))), C.INVALID_ARGUMENT, "1..128"),
    Case("bnd-import-oversize-message", "boundary", "ImportBoundary",
         lambda: boundary_pb2.ImportBoundaryRequest(file_name="stylegan_ffhq_age_boundary.npy", npy=bytes(40 << 20)),
         C.RESOURCE_EXHAUSTED, "larger than max"),
    Case("bnd-train-no-attributes", "boundary", "TrainBoundaries",
         lambda: boundary_pb2.TrainBoundariesRequest(num_samples=1000), C.INVALID_ARGUMENT, "name at least one"),
    Case("bnd-train-unknown-attribute", "boundary", "TrainBoundaries",
         lambda: boundary_pb2.TrainBoundariesRequest(attributes=["beauty"], num_samples=1000), C.INVALID_ARGUMENT,
         "accepted: gender, age, yaw"),
    Case("bnd-train-unknown-model", "boundary", "TrainBoundaries",
         lambda: boundary_pb2.TrainBoundariesRequest(model=common_pb2.ModelRef(name="no-such-model"),
                                                     attributes=["age"], num_samples=1000), C.NOT_FOUND,
         "known: dcgan-digiface-64"),
    Case("bnd-train-absurd-samples", "boundary", "TrainBoundaries",
         lambda: boundary_pb2.TrainBoundariesRequest(attributes=["age"], num_samples=10**15), C.INVALID_ARGUMENT,
         "accepted 100"),
    Case("bnd-train-nan-ratio", "boundary", "TrainBoundaries",
         lambda: boundary_pb2.TrainBoundariesRequest(attributes=["age"], num_samples=1000, chosen_ratio=math.nan),
         C.INVALID_ARGUMENT, r"accepted \(0, 0.5\]"),
    Case("bnd-train-unknown-solver", "boundary", "TrainBoundaries",
         lambda: boundary_pb2.TrainBoundariesRequest(attributes=["age"], num_samples=1000, solver="rbf"),
         C.INVALID_ARGUMENT, "accepted: hinge, squared_hinge, svc"),
    Case("bnd-watch-empty-id", "boundary", "WatchJob", lambda: boundary_pb2.WatchJobRequest(), C.INVALID_ARGUMENT,
         "give the id"),
    Case("bnd-watch-unknown-job", "boundary", "WatchJob", lambda: boundary_pb2.WatchJobRequest(job_id="job-nope"),
         C.NOT_FOUND, "TrainBoundaries"),
    Case("bnd-cancel-unknown-job", "boundary", "CancelJob", lambda: boundary_pb2.CancelJobRequest(job_id=LONG),
         C.NOT_FOUND, "no job"),
    Case("bnd-analyze-one-boundary", "boundary", "AnalyzeBoundaries",
         lambda: boundary_pb2.AnalyzeBoundariesRequest(boundaries=[ref("age")]), C.INVALID_ARGUMENT,
         "accepted 2 .. 32"),
    Case("bnd-analyze-mixed-dimensions", "boundary", "AnalyzeBoundaries",
         lambda: boundary_pb2.AnalyzeBoundariesRequest(boundaries=[ref("age"), ref("rel-age", model=MODEL)]),
         C.INVALID_ARGUMENT, "different dimensions"),
    # -- inversion ----------------------------------------------------------------------------------------
    Case("inv-empty-request", "inversion", "Invert", lambda: inversion_pb2.InvertRequest(), C.INVALID_ARGUMENT,
         "PNG or JPEG"),
    Case("inv-non-image", "inversion", "Invert",
         lambda: inversion_pb2.InvertRequest(image=image(b"GIF89a-not-really")), C.INVALID_ARGUMENT, "PNG or JPEG"),
    Case("inv-zero-size", "inversion", "Invert", lambda: inversion_pb2.InvertRequest(image=raw(0, 64)),
         C.INVALID_ARGUMENT, "must be at least 1"),
    Case("inv-bomb", "inversion", "Invert",
         lambda: inversion_pb2.InvertRequest(image=image(png_claiming(40000, 40000)), align_face=True),
         C.INVALID_ARGUMENT, "accepted: PNG or JPEG"),
    Case("inv-unknown-model", "inversion", "Invert",
         lambda: inversion_pb2.InvertRequest(model=common_pb2.ModelRef(name="no-such-model"), image=image(png())),
         C.NOT_FOUND, "known: dcgan-digiface-64"),
    Case("inv-blend-no-alignment", "inversion", "Blend",
         lambda: inversion_pb2.BlendRequest(photo=image(png(128, 128)), face=image(png())), C.INVALID_ARGUMENT,
         "accepted: the 6 finite values"),
    Case("inv-blend-corrupt-face", "inversion", "Blend",
         lambda: inversion_pb2.BlendRequest(photo=image(png(128, 128)), face=image(corrupt_png()),
                                            alignment=inversion_pb2.FaceAlignment(matrix=[1, 0, 0, 0, 1, 0],
                                                                                  crop_size=64)),
         C.INVALID_ARGUMENT, "PNG or JPEG"),
    # -- editor -------------------------------------------------------------------------------------------
    Case("edit-no-source", "editor", "Edit", lambda: editor_pb2.EditRequest(edits=[attr_edit()]), C.INVALID_ARGUMENT,
         "set one of seed, code or photo"),
    Case("edit-unknown-model", "editor", "Edit",
         lambda: editor_pb2.EditRequest(model=common_pb2.ModelRef(name="no-such-model"), seed=1, edits=[attr_edit()]),
         C.NOT_FOUND, "known: dcgan-digiface-64"),
    Case("edit-unknown-attribute", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit("beauty")]), (C.NOT_FOUND, C.FAILED_PRECONDITION),
         "stored: .+train one with"),
    Case("edit-non-ascii-attribute", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit(UNICODE)]), (C.INVALID_ARGUMENT, C.NOT_FOUND),
         r"use letters, digits, '\.', '_' or '-'"),
    Case("edit-code-wrong-shape", "editor", "Edit",
         lambda: editor_pb2.EditRequest(code=codes(1, 99), edits=[attr_edit()]), C.INVALID_ARGUMENT,
         r"shape \[N, 100\]"),
    Case("edit-code-nan", "editor", "Edit",
         lambda: editor_pb2.EditRequest(code=codes(1, fill=math.nan), edits=[attr_edit()]), C.INVALID_ARGUMENT,
         "finite"),
    Case("edit-absurd-distance", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit(end=1e300)]), C.INVALID_ARGUMENT,
         r"finite numbers with \|value\| <= 10000"),
    Case("edit-too-many-steps", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit(steps=1_000_000)]), C.INVALID_ARGUMENT,
         r"accepted 1 \.\. 256"),
    Case("edit-hold-parallel", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit(hold=["rel-age-twin"])]), C.INVALID_ARGUMENT,
         "(?i)parallel|degenerate|dependent"),
    Case("edit-too-many-holds", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit(hold=[f"h{i}" for i in range(40)])]),
         C.INVALID_ARGUMENT, r"accepted 0 \.\. 16"),
    Case("edit-too-many-edits", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit()] * 33), C.INVALID_ARGUMENT, "accepted 1 .. 32"),
    Case("edit-too-many-images", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit(steps=256)] * 5), C.INVALID_ARGUMENT, "at most 1024"),
    Case("edit-deadline-too-short", "editor", "Edit",
         lambda: editor_pb2.EditRequest(seed=1, edits=[attr_edit(steps=256, start=-3, end=3)] * 4),
         C.DEADLINE_EXCEEDED, "(?i)deadline", timeout=0.05),
    Case("edit-photo-not-image", "editor", "Edit",
         lambda: editor_pb2.EditRequest(photo=image(b"not a photo"), edits=[attr_edit()]), C.INVALID_ARGUMENT,
         "PNG or JPEG"),
]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(png())).save(buf, format="JPEG")
    return buf.getvalue()


# -- fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def relia_cluster(cluster) -> Cluster:
    """The session cluster, with the boundaries the cases refer to (names of their own, as other tests do):
    512-d reference normals (with a twin of age: parallel) and 100-d ones of the default model."""
    c = cluster
    with grpc.insecure_channel(c.services["boundary"].address) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(channel)
        age = (REFERENCE / "stylegan_ffhq_age_boundary.npy").read_bytes()
        for attribute, data in (("age", age), ("age-twin", age),
                                ("gender", (REFERENCE / "stylegan_ffhq_gender_boundary.npy").read_bytes())):
            stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(model="relia-stylegan", attribute=attribute,
                                                                   space=Z, npy=data), timeout=30)
        rng = np.random.default_rng(7)
        age100 = rng.standard_normal((1, D))
        for attribute, normal in (("rel-age", age100), ("rel-age-twin", -2 * age100),
                                  ("rel-gender", rng.standard_normal((1, D)))):
            stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(model=MODEL, attribute=attribute, space=Z,
                                                                   npy=npy(normal)), timeout=30)
    return c


@pytest.fixture(scope="module")
def channels(relia_cluster):
    opened = {name: grpc.insecure_channel(proc.address, options=OPTIONS)
              for name, proc in relia_cluster.services.items()}
    yield opened
    for channel in opened.values():
        channel.close()


def store_snapshot(cluster: Cluster) -> dict:
    r = redis.Redis.from_url(cluster.redis.url)
    try:
        state = {key: r.dump(key) for key in sorted(r.keys("*"))}
    finally:
        r.close()
    data = cluster.directory / "data"
    files = sorted((str(p.relative_to(data)), hashlib.sha256(p.read_bytes()).hexdigest())
                   for p in data.rglob("*") if p.is_file()) if data.exists() else []
    return {"redis": state, "files": files}


def call(channel, service: str, method: str, request, timeout: float):
    stub_cls, descriptor, name = STUBS[service]
    fn = getattr(stub_cls(channel), method)
    if descriptor.services_by_name[name].methods_by_name[method].server_streaming:
        return list(fn(request, timeout=timeout))
    return fn(request, timeout=timeout)


def test_the_table_covers_every_rpc_with_input_and_has_enough_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    no_input = {"ListModels", "ListAttributes", "GetInfo", "GetCatalog"}
    for service, (_, descriptor, name) in STUBS.items():
        methods = set(descriptor.services_by_name[name].methods_by_name) - no_input
        covered = {c.method for c in CASES if c.service == service}
        assert methods <= covered, f"{service}: no bad-input case for {sorted(methods - covered)}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, relia_cluster, channels):
    before = store_snapshot(relia_cluster)
    request = case.request()
    with pytest.raises(grpc.RpcError) as err:
        call(channels[case.service], case.service, case.method, request, case.timeout)
    codes_ = case.code if isinstance(case.code, tuple) else (case.code,)
    details = err.value.details() or ""
    assert err.value.code() in codes_, f"{case.id}: {err.value.code().name}: {details}"
    assert re.search(case.says, details), f"{case.id}: message does not say what is accepted: {details!r}"
    assert len(details) < 4096, f"{case.id}: overlong message ({len(details)} characters)"
    proc = relia_cluster.services[case.service]
    assert proc.proc.poll() is None, f"{case.service} died"
    assert check_health(proc.address, timeout=10) == "SERVING"
    assert store_snapshot(relia_cluster) == before, f"{case.id} changed what is stored"


def _counter(port: int, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples carrying `labels`, read from a service's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()))


@pytest.mark.parametrize("case_id", ["gen-synth-deadline-too-short", "score-deadline-too-short"])
def test_expired_work_is_dropped_by_the_server(case_id, launch_service):
    """The deadline cases above see the client's own timer; here the server must record that it dropped the work
    whose deadline passed, not compute it for nobody: its batcher's rejections (`deadline` when its own timer
    fired first, `cancelled` when gRPC's did), or, when the deadline passed before the work reached the batcher
    (still decoding on a loaded machine), the call counted as cancelled or expired by the server."""
    case = next(c for c in CASES if c.id == case_id)
    port = free_port()
    proc = launch_service(case.service, "--metrics-port", str(port))

    def dropped() -> float:
        return (sum(_counter(port, "ifgan_batch_rejected_total", reason=r) for r in ("deadline", "cancelled"))
                + sum(_counter(port, "ifgan_requests_total", method=case.method, code=c)
                      for c in ("CANCELLED", "DEADLINE_EXCEEDED")))

    before = dropped()
    with grpc.insecure_channel(proc.address, options=OPTIONS) as channel:
        # Long enough to reach the server's queue on a loaded machine, far too short for the work asked.
        with pytest.raises(grpc.RpcError) as err:
            call(channel, case.service, case.method, case.request(), timeout=0.5)
    assert err.value.code() == C.DEADLINE_EXCEEDED
    waited = time.monotonic() + 30
    while dropped() <= before:
        assert time.monotonic() < waited, f"{case.service} never recorded dropping the expired request"
        time.sleep(0.2)
    assert check_health(proc.address, timeout=10) == "SERVING"
