"""Work and memory bounded by what was sent, exact statuses for absurd input, against real services.

Classes of input an outside tester used (issue: bounded memory per request and per service):
- thin images: every decode path refuses aspect ratios past MAX_ASPECT with INVALID_ARGUMENT, and the
  thinnest accepted images cost memory in proportion to their pixels (the scorer enlarged a 262144 x 16
  PNG of 12 KB whole: 3.3 GB);
- a burst of large valid images: a service's decoded pixels in flight stay within its budget, small
  requests keep being answered, refusals carry a retry hint, and the memory is returned afterwards;
- long requests: the scorer gives back each image (memory and budget) once it is scored or embedded;
- blends into a large photo: pixels outside the faces exactly the photo's, PNG and RAW answers alike;
- tensor shapes whose element count overflows 64 bits, undecodable protobuf: INVALID_ARGUMENT;
- past the concurrent-call limit, however far: RESOURCE_EXHAUSTED with a RetryInfo, counted in the metrics.
"""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,
                             generator_pb2, generator_pb2_grpc, inversion_pb2, inversion_pb2_grpc, scorer_pb2,
                             scorer_pb2_grpc)
from services.cluster import check_health, free_port
from services.common import errors
from services.common.images import MAX_ASPECT

C = grpc.StatusCode
Z = common_pb2.LATENT_SPACE_Z
FACES = Path(__file__).resolve().parents[1] / "fixtures" / "scorer"
OPTIONS = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20)]


def png(array: np.ndarray) -> common_pb2.Image:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=9)
    return common_pb2.Image(encoded=buf.getvalue())


def solid(h: int, w: int) -> common_pb2.Image:
    return png(np.full((h, w, 3), 128, np.uint8))


def face(i: int = 0, side: int = 64) -> common_pb2.Image:
    image = Image.open(FACES / f"dcgan_{i:03d}.png").convert("RGB")
    return png(np.asarray(image.resize((side, side), Image.BICUBIC) if side != 64 else image))


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def refused(fn) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


# -- thin images ------------------------------------------------------------------------------------------------

#: (w, h) past the aspect limit, each within the services' pixel limits: 12 KB and 4 MB of pixels.
THIN = [(262144, 16), (16, 262144), (4_000_000, 1), (MAX_ASPECT * 64 + 1, 64)]


@pytest.mark.parametrize("w,h", THIN, ids=[f"{w}x{h}" for w, h in THIN])
def test_thin_images_are_refused_by_every_decode_path(cluster, w, h):
    image = solid(h, w) if w * h <= 8_000_000 else common_pb2.Image(
        raw=common_pb2.RawImage(height=h, width=w, channels=1, data=bytes(w * h)))
    alignment = inversion_pb2.FaceAlignment(matrix=[1, 0, 0, 0, 1, 0], crop_size=64)
    addresses = {name: proc.address for name, proc in cluster.services.items()}
    with grpc.insecure_channel(addresses["scorer"], options=OPTIONS) as s, \
            grpc.insecure_channel(addresses["inversion"], options=OPTIONS) as i, \
            grpc.insecure_channel(addresses["editor"], options=OPTIONS) as e:
        scorer = scorer_pb2_grpc.ScorerServiceStub(s)
        inversion = inversion_pb2_grpc.InversionServiceStub(i)
        editor = editor_pb2_grpc.EditorServiceStub(e)
        calls = {
            "Score": lambda: list(scorer.Score(scorer_pb2.ScoreRequest(images=[image]), timeout=60)),
            "Invert aligned": lambda: list(inversion.Invert(inversion_pb2.InvertRequest(
                image=image, align_face=True), timeout=60)),
            "Invert framed": lambda: list(inversion.Invert(inversion_pb2.InvertRequest(image=image), timeout=60)),
            "Blend photo": lambda: inversion.Blend(inversion_pb2.BlendRequest(
                photo=image, face=face(), alignment=alignment), timeout=60),
            "Edit photo": lambda: list(editor.Edit(editor_pb2.EditRequest(photo=image, edits=[
                editor_pb2.AttributeEdit(attribute="age", end=1, steps=1)]), timeout=60)),
        }
        for name, fn in calls.items():
            err = refused(fn)
            assert err.code() == C.INVALID_ARGUMENT, (name, err.code(), err.details())
            assert re.search(rf"aspect ratio.*accepted: the longer side at most {MAX_ASPECT} times", err.details()), \
                (name, err.details())
    for name in ("scorer", "inversion", "editor"):
        assert check_health(addresses[name]) == "SERVING"


def test_the_thinnest_accepted_images_cost_memory_in_proportion(launch_service):
    """16:1 images at the pixel limit, and with a 16 px short side (enlarged for landmarks), on a fresh scorer:
    its peak memory grows by less than 250 MiB (the whole-image enlargement took gigabytes)."""
    scorer = launch_service("scorer")
    with grpc.insecure_channel(scorer.address, options=OPTIONS) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        list(stub.Score(scorer_pb2.ScoreRequest(images=[face()]), timeout=120))  # models warm
        before = memory_mb(scorer.pid, "VmRSS")
        for h, w in ((512, 8192), (8192, 512), (16, 256), (256, 16)):
            (reply,) = list(stub.Score(scorer_pb2.ScoreRequest(images=[solid(h, w)]), timeout=120))
            assert len(reply.results) == 1 and not reply.results[0].face_found  # a grey bar holds no face
        assert memory_mb(scorer.pid, "VmHWM") - before < 250


# -- a budget of decoded pixels per service ---------------------------------------------------------------------

def test_a_burst_of_large_images_stays_within_the_scorer_budget_and_small_requests_flow(launch_service):
    """12 concurrent Score calls of 8 images of 1024 x 1024 (8 Mpx each) against a budget of 16 Mpx in flight:
    the large calls are admitted a few at a time (the others wait or are refused with a retry hint), every
    small call made meanwhile is answered, and the memory is returned after the burst."""
    scorer = launch_service("scorer", "--max-request-pixels", str(8 << 20), "--max-pixels-in-flight", str(16 << 20))
    large = scorer_pb2.ScoreRequest(images=[face(i, 1024) for i in range(8)])
    small = scorer_pb2.ScoreRequest(images=[face(20)])
    small_outcomes, stop = [], threading.Event()
    with grpc.insecure_channel(scorer.address, options=OPTIONS) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        list(stub.Score(large, timeout=300))  # every path warm
        list(stub.Score(small, timeout=60))
        time.sleep(1)
        before = memory_mb(scorer.pid, "VmRSS")
        peak = [before]

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], memory_mb(scorer.pid, "VmRSS"))
                time.sleep(0.05)

        def small_loop():
            while not stop.is_set():
                try:
                    (reply,) = list(stub.Score(small, timeout=120))
                    small_outcomes.append("OK" if len(reply.results) == 1 and reply.results[0].face_found else
                                          "wrong reply")
                except grpc.RpcError as e:
                    small_outcomes.append(e.code().name)
                time.sleep(0.1)

        def one(_):
            try:
                n = sum(len(r.results) for r in stub.Score(large, timeout=600))
                return "OK" if n == 8 else f"{n} results", None
            except grpc.RpcError as e:
                return e.code().name, errors.status_details(e).get("retry_after")

        threads = [threading.Thread(target=sample), threading.Thread(target=small_loop)]
        for t in threads:
            t.start()
        try:
            with ThreadPoolExecutor(12) as pool:
                results = list(pool.map(one, range(12)))
        finally:
            stop.set()
            for t in threads:
                t.join()
        time.sleep(2)
        after = memory_mb(scorer.pid, "VmRSS")
        assert check_health(scorer.address) == "SERVING"
    assert {code for code, _ in results} <= {"OK", "RESOURCE_EXHAUSTED"}, results
    assert sum(code == "OK" for code, _ in results) >= 2
    assert all(hint and hint > 0 for code, hint in results if code == "RESOURCE_EXHAUSTED"), results
    assert small_outcomes and set(small_outcomes) == {"OK"}, small_outcomes
    # Decoded, 12 x 8 Mpx would be 288 MiB of pixels at once (plus working copies); the budget holds 16 Mpx.
    assert peak[0] - before < 400, (before, peak[0])
    assert after - before < 150, (before, after)


def test_a_large_photo_is_blended_in_the_face_region_only(cluster):
    """A Blend into a 4096 x 4096 photo works on the face's box: the photo outside it comes back unchanged."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:4096, 0:4096]
    photo = np.repeat((((xx // 8 + yy // 8) % 2) * 200 + 20).astype(np.uint8)[:, :, None], 3, axis=2)  # small PNG
    face_pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    matrix = [0.5, 0, -1000, 0, 0.5, -1000]  # the crop covers photo pixels 2000..2128
    with grpc.insecure_channel(cluster.services["inversion"].address, options=OPTIONS) as channel:
        stub = inversion_pb2_grpc.InversionServiceStub(channel)
        reply = stub.Blend(inversion_pb2.BlendRequest(
            photo=png(photo), face=png(face_pixels), alignment=inversion_pb2.FaceAlignment(matrix=matrix, crop_size=64),
            format=common_pb2.IMAGE_FORMAT_PNG), timeout=120)
        out = np.asarray(Image.open(io.BytesIO(reply.image.encoded)).convert("RGB"))
        changed = np.argwhere((out != photo).any(axis=2))
        assert len(changed) > 1000
        assert changed.min() >= 1990 and changed.max() <= 2140
        err = refused(lambda: stub.Blend(inversion_pb2.BlendRequest(
            photo=png(photo[:64, :64]), face=png(face_pixels),
            alignment=inversion_pb2.FaceAlignment(matrix=[1, 0, 0, 0, 1, 0], crop_size=4096)), timeout=60))
        assert err.code() == C.INVALID_ARGUMENT and "accepted: 8 to 2048" in err.details()


# -- exact statuses ---------------------------------------------------------------------------------------------

OVERFLOWING = [[2**32, 2**32], [3, 6148914691236517206], [2**63 - 1, 2], [2**62, 4, 4]]


def _overflow_calls(cluster, shape, data: bytes):
    bad = common_pb2.Tensor(shape=shape, data=data)
    batch = common_pb2.LatentBatch(space=Z, codes=bad)
    good = common_pb2.LatentBatch(space=Z, codes=common_pb2.Tensor(shape=[1, 100], data=bytes(400)))
    vector = boundary_pb2.Edit(vector=bad, end=1, steps=1)
    addresses = {name: proc.address for name, proc in cluster.services.items()}
    return {
        "Synthesize": ("generator", lambda ch: list(generator_pb2_grpc.GeneratorServiceStub(ch).Synthesize(
            generator_pb2.SynthesizeRequest(codes=batch), timeout=30))),
        "EditLatents codes": ("boundary", lambda ch: boundary_pb2_grpc.BoundaryServiceStub(ch).EditLatents(
            boundary_pb2.EditLatentsRequest(codes=batch, edits=[boundary_pb2.Edit(
                vector=good.codes, end=1, steps=1)]), timeout=30)),
        "EditLatents vector": ("boundary", lambda ch: boundary_pb2_grpc.BoundaryServiceStub(ch).EditLatents(
            boundary_pb2.EditLatentsRequest(codes=good, edits=[vector]), timeout=30)),
        "InterpolateLatents": ("boundary", lambda ch: boundary_pb2_grpc.BoundaryServiceStub(ch).InterpolateLatents(
            boundary_pb2.InterpolateLatentsRequest(start=batch, end=batch, steps=2), timeout=30)),
        "Edit": ("editor", lambda ch: list(editor_pb2_grpc.EditorServiceStub(ch).Edit(editor_pb2.EditRequest(
            code=batch, edits=[editor_pb2.AttributeEdit(attribute="age", end=1, steps=1)]), timeout=30))),
    }, addresses


@pytest.mark.parametrize("shape", OVERFLOWING, ids=["x".join(map(str, s)) for s in OVERFLOWING])
def test_tensor_shapes_whose_element_count_overflows_are_invalid_arguments(cluster, shape):
    # The data matching the count wrapped to 64 bits (0 or 2 elements for some shapes) got INTERNAL, other data
    # a message saying such a shape "needs 0" or "needs -8" bytes.
    wrapped = (int(np.prod(shape, dtype=np.int64)) * 4) % 2**64
    for data in {b"", bytes(16), bytes(wrapped) if wrapped < 1024 else b""}:
        calls, addresses = _overflow_calls(cluster, shape, data)
        for name, (service, fn) in calls.items():
            with grpc.insecure_channel(addresses[service]) as channel:
                err = refused(lambda: fn(channel))
            assert err.code() == C.INVALID_ARGUMENT, (name, len(data), err.code(), err.details())
            assert "limit" in err.details() and "accepted" in err.details(), (name, err.details())
            assert not re.search(r"needs -?\d", err.details()), (name, err.details())


METHODS = [("generator", "/interfacegan.v1.GeneratorService/Synthesize", True),
           ("scorer", "/interfacegan.v1.ScorerService/Score", True),
           ("boundary", "/interfacegan.v1.BoundaryService/GetBoundary", False),
           ("inversion", "/interfacegan.v1.InversionService/Blend", False),
           ("editor", "/interfacegan.v1.EditorService/Edit", True)]


@pytest.mark.parametrize("service,method,streaming", METHODS, ids=[m[0] for m in METHODS])
def test_undecodable_protobuf_is_an_invalid_argument(cluster, service, method, streaming):
    address = cluster.services[service].address
    with grpc.insecure_channel(address) as channel:
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x80\x80\x80\x80\x10", b"\x08"):
            if streaming:
                err = refused(lambda: list(channel.unary_stream(method)(garbage, timeout=30)))
            else:
                err = refused(lambda: channel.unary_unary(method)(garbage, timeout=30))
            assert err.code() == C.INVALID_ARGUMENT, (method, garbage, err.code(), err.details())
            assert "not a valid interfacegan.v1." in err.details() and "accepted" in err.details()
    assert check_health(address) == "SERVING"


def _hold_the_limit(channel, timeout: float) -> list:
    """Two Watch streams that keep a server started with --max-concurrent-rpcs 2 at its limit until cancelled."""
    health = health_pb2_grpc.HealthStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=timeout) for _ in range(2)]
    for w in watches:
        assert next(w).status == health_pb2.HealthCheckResponse.SERVING
    return watches


def test_calls_past_the_concurrent_call_limit_get_a_retry_hint_and_are_counted(launch_service):
    metrics_port = free_port()
    generator = launch_service("generator", "--max-concurrent-rpcs", "2", "--metrics-port", str(metrics_port))
    with grpc.insecure_channel(generator.address) as channel:
        watches = _hold_the_limit(channel, 60)
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        for _ in range(3):
            err = refused(lambda: stub.ListModels(generator_pb2.ListModelsRequest(), timeout=10))
            assert err.code() == C.RESOURCE_EXHAUSTED, err.details()
            assert errors.status_details(err).get("retry_after", 0) > 0, err.details()
            assert "max_concurrent_rpcs 2" in err.details()
        for w in watches:
            w.cancel()
        for _ in range(100):
            try:
                stub.ListModels(generator_pb2.ListModelsRequest(), timeout=10)
                break
            except grpc.RpcError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not take calls again after the streams ended")
    assert _requests_counted(metrics_port, "ListModels", "RESOURCE_EXHAUSTED") >= 3


def _requests_counted(metrics_port: int, method: str, code: str) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    total = 0.0
    for labels, value in re.findall(r'ifgan_requests_total\{([^}]*)\} (\S+)', text):
        if f'method="{method}"' in labels and f'code="{code}"' in labels:
            total += float(value)
    return int(total)


def test_a_flood_far_past_the_concurrent_call_limit_gets_the_same_rich_refusal_every_time(launch_service):
    # gRPC's core limit (maximum_concurrent_rpcs) refused with a bare "Concurrent RPC limit exceeded!": no
    # RetryInfo, no grpc-retry-pushback-ms, and never in the metrics. A flood reaches it as soon as the calls
    # being refused and the calls held together pass it.
    metrics_port = free_port()
    generator = launch_service("generator", "--max-concurrent-rpcs", "2", "--metrics-port", str(metrics_port))
    with grpc.insecure_channel(generator.address) as channel:
        watches = _hold_the_limit(channel, 120)
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        flood = [stub.ListModels.future(generator_pb2.ListModelsRequest(), timeout=60) for _ in range(400)]
        outcomes = []
        for call in flood:
            try:
                call.result()
                outcomes.append(("OK", None, {}))
            except grpc.RpcError as e:
                trailing = dict(e.trailing_metadata() or ())
                outcomes.append((e.code().name, errors.status_details(e).get("retry_after"), trailing))
        for w in watches:
            w.cancel()
    codes = {code for code, _, _ in outcomes}
    assert codes == {"RESOURCE_EXHAUSTED"}, codes
    bare = [o for o in outcomes if not o[1] or "grpc-retry-pushback-ms" not in o[2]]
    assert not bare, f"{len(bare)} of {len(outcomes)} refusals carry no retry hint"
    assert _requests_counted(metrics_port, "ListModels", "RESOURCE_EXHAUSTED") == len(outcomes)


def _gauge(metrics_port: int, name: str, service: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    found = re.search(r'%s\{service="%s"\} (\S+)' % (name, service), text)
    assert found, text[-2000:]
    return float(found.group(1))


def test_the_scorer_gives_back_each_image_once_it_is_scored_or_embedded(launch_service):
    # A Score request held all its decoded images (and their share of the pixel budget) until its last result
    # was sent, CompareIdentity until every crop was embedded: a long request kept memory it no longer used.
    metrics_port = free_port()
    scorer = launch_service("scorer", "--max-batch-size", "4", "--metrics-port", str(metrics_port))
    side, n = 512, 32
    images = [face(i % 24, side) for i in range(n)]
    per_image = side * side
    with grpc.insecure_channel(scorer.address, options=OPTIONS) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        received, seen = 0, []
        for reply in stub.Score(scorer_pb2.ScoreRequest(images=images), timeout=600):
            received += len(reply.results)
            if received < n:  # the stream is still open: what it holds is what is left to score, at most
                seen.append((received, _gauge(metrics_port, "ifgan_pixel_budget_used", "scorer")))
        assert received == n
        assert seen and all(used <= (n - got) * per_image for got, used in seen), seen
        assert _gauge(metrics_port, "ifgan_pixel_budget_used", "scorer") == 0

        # 48 distinct crops, embedded a chunk at a time: the budget falls while the call runs.
        crops = [face(i % 24, 128 + 64 * (i // 24)) for i in range(48)]
        total = sum(128 * 128 if i < 24 else 192 * 192 for i in range(48))
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(_gauge(metrics_port, "ifgan_pixel_budget_used", "scorer"))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            reply = stub.CompareIdentity(scorer_pb2.IdentityRequest(references=crops[:1], images=crops[1:]),
                                         timeout=600)
        finally:
            stop.set()
            sampler.join()
        assert len(reply.distances) == 47 and reply.distances[23] < 0.6  # the same face at another size
        assert any(0 < used < total for used in samples), sorted(set(samples))
        assert _gauge(metrics_port, "ifgan_pixel_budget_used", "scorer") == 0
    assert check_health(scorer.address) == "SERVING"


def _footprint_rows_cols(matrix: list[float], size: int) -> tuple[float, float, float, float]:
    m = np.vstack([np.array(matrix).reshape(2, 3), [0, 0, 1]])
    inv = np.linalg.inv(m)[:2]
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    pts = corners @ inv.T
    return pts[:, 0].min() - 4, pts[:, 0].max() + 4, pts[:, 1].min() - 4, pts[:, 1].max() + 4


def test_blends_of_one_photo_are_exact_whatever_the_format_and_repeat_byte_for_byte(cluster):
    """The PNG answer is assembled from the photo's rows outside the faces' band (encoded once per photo) and
    the band of each call: it must decode to the very pixels of the RAW answer, leave every pixel outside the
    faces' footprints as the photo had it, and not depend on which call encoded the rest."""
    rng = np.random.default_rng(11)
    side = 1536
    yy, xx = np.mgrid[0:side, 0:side]
    photo = np.stack([(xx * 255 // side), (yy * 255 // side), ((xx + yy) % 256)], axis=2).astype(np.uint8)
    photo = np.clip(photo.astype(int) + rng.integers(-6, 7, photo.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=92)
    photo_msg = common_pb2.Image(encoded=buf.getvalue())
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    recon = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    steps = [np.clip(recon.astype(int) + d, 0, 255).astype(np.uint8) for d in (-40, 25)]
    # One face across the top edge, one across the bottom edge and rotated: the band spans the whole photo's
    # height at its edges, and the pastes' boxes are clipped by them.
    top = [0.25, 0, -100, 0, 0.25, 8]  # crop covers photo x 400..656, y -32..224
    c, s = np.cos(0.4) * 0.3, np.sin(0.4) * 0.3
    bottom = [c, s, -c * 900 - s * 1450 + 32, -s, c, s * 900 - c * 1450 + 32]  # centred on (900, 1450)
    alignments = [inversion_pb2.FaceAlignment(matrix=m, crop_size=64) for m in (top, bottom)]
    with grpc.insecure_channel(cluster.services["inversion"].address, options=OPTIONS) as channel:
        stub = inversion_pb2_grpc.InversionServiceStub(channel)

        def blend(face, fmt):
            return stub.Blend(inversion_pb2.BlendRequest(
                photo=photo_msg, face=png(face), reconstruction=png(recon), alignment=alignments[0],
                more_faces=[inversion_pb2.BlendFace(face=png(face), reconstruction=png(recon),
                                                    alignment=alignments[1])],
                crop_size=96, format=fmt), timeout=300)

        answers = {}
        for k, face_pixels in enumerate(steps):
            first = blend(face_pixels, common_pb2.IMAGE_FORMAT_PNG)
            again = blend(face_pixels, common_pb2.IMAGE_FORMAT_PNG)
            raw = blend(face_pixels, common_pb2.IMAGE_FORMAT_RAW)
            assert first.image.encoded == again.image.encoded
            assert first.changed_outside_mask == 0 and raw.changed_outside_mask == 0
            assert list(first.source_crops) == list(raw.source_crops)
            assert list(first.result_crops) == list(raw.result_crops)
            out = np.asarray(Image.open(io.BytesIO(first.image.encoded)).convert("RGB"))
            raw_pixels = np.frombuffer(raw.image.raw.data, np.uint8).reshape(side, side, 3)
            np.testing.assert_array_equal(out, raw_pixels)
            inside = np.zeros((side, side), bool)
            for m in (top, bottom):
                x0, x1, y0, y1 = _footprint_rows_cols(m, 64)
                inside[max(0, int(y0)):int(np.ceil(y1)), max(0, int(x0)):int(np.ceil(x1))] = True
            changed = (out != decoded).any(axis=2)
            assert changed[inside].sum() > 1000 and not changed[~inside].any()
            assert changed[:32].any() and changed[1300:].any()  # both faces were pasted
            answers[k] = out
        assert (answers[0] != answers[1]).any()
        # Faces are decoded before the photo: their number is bounded like Invert's faces per photo.
        err = refused(lambda: stub.Blend(inversion_pb2.BlendRequest(
            photo=photo_msg, face=png(recon), alignment=alignments[0],
            more_faces=[inversion_pb2.BlendFace(face=png(recon), alignment=alignments[0])] * 20), timeout=60))
        assert err.code() == C.INVALID_ARGUMENT and "at most 20 faces" in err.details(), err.details()
    assert check_health(cluster.services["inversion"].address) == "SERVING"


def test_photos_as_large_as_the_reserve_leave_it_to_small_calls(launch_service):
    # The reserve of the inversion budget is one largest photo: photos of exactly that size counted as small, so
    # four aligned Inverts of the largest photos took the whole budget and a 64 px Invert waited 6 s behind them.
    from services.common import assets

    metrics_port = free_port()
    side = 1024
    inversion = launch_service("inversion", "--max-image-pixels", str(side * side), "--max-pixels-in-flight",
                               str(4 * side * side), "--metrics-port", str(metrics_port))
    portrait = Image.open(assets.path_of("astronaut.png")).convert("RGB").resize((side, side), Image.BICUBIC)
    buf = io.BytesIO()
    portrait.save(buf, format="JPEG", quality=90)
    photo = common_pb2.Image(encoded=buf.getvalue())
    with grpc.insecure_channel(inversion.address, options=OPTIONS) as channel:
        stub = inversion_pb2_grpc.InversionServiceStub(channel)
        large = inversion_pb2.InvertRequest(image=photo, align_face=True, encoder_only=True)
        small = inversion_pb2.InvertRequest(image=face(0), encoder_only=True)
        list(stub.Invert(large, timeout=120))
        used, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                used.append(_gauge(metrics_port, "ifgan_pixel_budget_used", "inversion"))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(16) as pool:
                calls = [pool.submit(lambda: list(stub.Invert(large, timeout=300))) for _ in range(16)]
                small_seconds = []
                while not all(c.done() for c in calls):
                    t = time.perf_counter()
                    list(stub.Invert(small, timeout=60))
                    small_seconds.append(time.perf_counter() - t)
                for c in calls:
                    c.result()
        finally:
            stop.set()
            sampler.join()
    # Large calls leave the reserve (a quarter) free; small ones may use it.
    assert max(used) <= 3 * side * side + 64 * 64 * len(small_seconds), max(used)
    assert max(used) > 2 * side * side  # several photos were held at once
    assert small_seconds and max(small_seconds) < 5, small_seconds
