"""EditorService on the real cluster: streamed edits of seeds, codes and photos, held attributes, rescoring,
request ids, deadlines, errors, the catalog, the BoundaryService relay, and balancing over generator replicas."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
import uuid

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from interfacegan import codec
from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,
                             generator_pb2, generator_pb2_grpc, scorer_pb2, scorer_pb2_grpc)
from services.cluster import free_port
from services.common import assets, errors, images, tensors

MODEL = "dcgan-digiface-64"
Z = common_pb2.LATENT_SPACE_Z
RAW = common_pb2.IMAGE_FORMAT_RAW
C = grpc.StatusCode
P = f"ed{uuid.uuid4().hex[:6]}"


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float64))
    return buf.getvalue()


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((1, 100))
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def editor(cluster):
    address = cluster.services["editor"].address
    channel = grpc.insecure_channel(address)
    boundary = boundary_pb2_grpc.BoundaryServiceStub(channel)  # through the editor's relay
    normals = {"a": unit(1), "b": unit(2)}
    for name, normal in normals.items():
        boundary.ImportBoundary(boundary_pb2.ImportBoundaryRequest(model=MODEL, attribute=f"{P}-{name}", space=Z,
                                                                   npy=npy(normal)), timeout=30)
    yield {"address": address, "channel": channel, "stub": editor_pb2_grpc.EditorServiceStub(channel),
           "boundary": boundary, "normals": normals, "cluster": cluster}
    channel.close()


def edit(attribute: str, start=-2.0, end=2.0, steps=3, **kw) -> editor_pb2.AttributeEdit:
    return editor_pb2.AttributeEdit(attribute=attribute, start=start, end=end, steps=steps, **kw)


def run(stub, request, timeout=120, metadata=()):
    call = stub.Edit(request, timeout=timeout, metadata=metadata)
    replies = list(call)
    return replies, dict(call.initial_metadata())


def pixels(image: common_pb2.Image) -> np.ndarray:
    return images.decode(image, "image", max_pixels=1 << 30)


def test_edit_streams_every_step_in_order_with_codes_scores_and_progress(editor, cluster):
    stub = editor["stub"]
    request = editor_pb2.EditRequest(seed=11, include_original=True, rescore=True, format=RAW,
                                     edits=[edit(f"{P}-a", -2, 2, 3), edit(f"{P}-b", -1, 1, 5)])
    replies, md = run(stub, request)
    assert [(r.edit_index, r.step_index) for r in replies] == [(-1, 0)] + [(0, s) for s in range(3)] + \
        [(1, s) for s in range(5)]
    assert [r.progress.done for r in replies] == list(range(1, 10)) and {r.progress.total for r in replies} == {9}
    rid = replies[0].request_id
    assert rid and md["x-request-id"] == rid and {r.request_id for r in replies} == {rid}
    original = tensors.to_numpy(replies[0].code.codes, "code")
    with grpc.insecure_channel(cluster.services["generator"].address) as ch:
        sampled = generator_pb2_grpc.GeneratorServiceStub(ch).SampleLatents(generator_pb2.SampleLatentsRequest(
            model=common_pb2.ModelRef(name=MODEL), space=Z, count=1, seed=11), timeout=30)
    assert np.array_equal(original, tensors.to_numpy(sampled.codes.codes, "codes"))
    # Relative offsets: code + t n, with the stored unit normal.
    for r, t in zip(replies[1:4], (-2, 0, 2)):
        assert r.distance == pytest.approx(t) and r.boundary.attribute == f"{P}-a" and r.boundary.version >= 1
        assert np.allclose(tensors.to_numpy(r.code.codes, "code"), original + t * editor["normals"]["a"], atol=1e-5)
    assert np.allclose([r.distance for r in replies[4:]], np.linspace(-1, 1, 5))
    for r in replies:
        img = pixels(r.image)
        assert img.shape == (64, 64, 3)
    # The unedited step is the original image; the ends differ from it.
    assert np.array_equal(pixels(replies[2].image), pixels(replies[0].image))
    assert not np.array_equal(pixels(replies[1].image), pixels(replies[0].image))
    with grpc.insecure_channel(cluster.services["scorer"].address) as ch:
        names = [a.name for a in scorer_pb2_grpc.ScorerServiceStub(ch).ListAttributes(
            scorer_pb2.ListAttributesRequest(), timeout=30).attributes]
    for r in replies:
        assert [s.attribute for s in r.scores] == names


def test_single_absolute_step_png_and_code_source(editor):
    stub = editor["stub"]
    code = np.random.default_rng(3).standard_normal((1, 100)).astype(np.float32)
    n = editor["normals"]["a"][0]
    replies, _ = run(stub, editor_pb2.EditRequest(
        code=codec.latents(code, Z), edits=[edit(f"{P}-a", 1.5, 1.5, 1, mode=boundary_pb2.DISTANCE_MODE_ABSOLUTE)]))
    assert len(replies) == 1 and replies[0].distance == pytest.approx(1.5)  # one distance: start = end, steps 1
    edited = tensors.to_numpy(replies[0].code.codes, "code")[0]
    assert float(edited @ n) == pytest.approx(1.5, abs=1e-4)  # absolute: signed distance from the hyperplane
    assert Image.open(io.BytesIO(replies[0].image.encoded)).format == "PNG"
    # The same code given explicitly or reached through its seed gives the same image.
    seeded, _ = run(stub, editor_pb2.EditRequest(seed=5, format=RAW, edits=[edit(f"{P}-a", 1, 1, 1)]))
    code5 = tensors.to_numpy(seeded[0].code.codes, "code") - editor["normals"]["a"].astype(np.float32)
    coded, _ = run(stub, editor_pb2.EditRequest(code=codec.latents(code5, Z), format=RAW,
                                                edits=[edit(f"{P}-a", 1, 1, 1)]))
    assert np.abs(pixels(coded[0].image).astype(int) - pixels(seeded[0].image).astype(int)).max() <= 1


def test_hold_uses_a_conditional_boundary_cached_per_parent_versions(editor):
    stub, boundary = editor["stub"], editor["boundary"]
    request = editor_pb2.EditRequest(seed=2, format=RAW, edits=[edit(f"{P}-a", -2, 2, 3, hold=[f"{P}-b"])])
    first, _ = run(stub, request)
    second, _ = run(stub, request)
    ref = first[0].boundary
    assert ref.attribute == f"{P}-a|{P}-b" and second[0].boundary == ref
    codes = [tensors.to_numpy(r.code.codes, "code")[0] for r in first]
    step = (codes[2] - codes[0]) / 4
    b = editor["normals"]["b"][0]
    assert abs(step @ b) < 1e-5 and np.linalg.norm(step) == pytest.approx(1, abs=1e-4)
    # A new version of a held boundary gives a new derived boundary; the old parents keep theirs.
    boundary.ImportBoundary(boundary_pb2.ImportBoundaryRequest(model=MODEL, attribute=f"{P}-b", space=Z,
                                                               npy=npy(unit(9))), timeout=30)
    third, _ = run(stub, request)
    assert third[0].boundary.attribute == ref.attribute and third[0].boundary.version > ref.version
    step = (tensors.to_numpy(third[2].code.codes, "code")[0] - tensors.to_numpy(third[0].code.codes, "code")[0]) / 4
    assert abs(step @ unit(9)[0]) < 1e-5


def test_request_id_from_metadata_and_deadlines(editor):
    stub = editor["stub"]
    replies, md = run(stub, editor_pb2.EditRequest(seed=1, edits=[edit(f"{P}-a")]),
                      metadata=(("x-request-id", "trace-me-42"),))
    assert md["x-request-id"] == "trace-me-42" and {r.request_id for r in replies} == {"trace-me-42"}
    log = editor["cluster"].services["editor"].log_path.read_text()
    assert any('"request_id": "trace-me-42"' in line and '"edited"' in line for line in log.splitlines())
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Edit(editor_pb2.EditRequest(seed=1, rescore=True, edits=[edit(f"{P}-a", steps=200)]), timeout=0.3))
    assert err.value.code() == C.DEADLINE_EXCEEDED and time.monotonic() - started < 2


@pytest.mark.parametrize("request_, code, words", [
    (editor_pb2.EditRequest(edits=[edit("x")]), C.INVALID_ARGUMENT, "source"),
    (editor_pb2.EditRequest(seed=1), C.INVALID_ARGUMENT, "include_original"),
    (editor_pb2.EditRequest(seed=1, edits=[edit(f"{P}-nothing")]), C.NOT_FOUND, "stored"),
    (editor_pb2.EditRequest(seed=1, edits=[edit("q", hold=["q"])]), C.INVALID_ARGUMENT, "hold"),
    (editor_pb2.EditRequest(seed=1, edits=[edit("q", steps=300)]), C.INVALID_ARGUMENT, "256"),
    (editor_pb2.EditRequest(seed=1, edits=[edit("q", steps=256)] * 5), C.INVALID_ARGUMENT, "1024"),
    (editor_pb2.EditRequest(seed=1, edits=[edit("q")] * 33), C.INVALID_ARGUMENT, "32"),
    (editor_pb2.EditRequest(seed=1, edits=[edit("")]), C.INVALID_ARGUMENT, "attribute"),
    (editor_pb2.EditRequest(seed=1, blend_into_photo=True, edits=[edit("q")]), C.INVALID_ARGUMENT, "photo"),
    (editor_pb2.EditRequest(seed=1, change_smoothing=0.0, edits=[edit("q")]), C.INVALID_ARGUMENT, "change_smoothing"),
    (editor_pb2.EditRequest(photo=common_pb2.Image(encoded=b"x"), blend_into_photo=True, paste_whole_face=True,
                            change_smoothing=0.01, edits=[edit("q")]), C.INVALID_ARGUMENT, "change_smoothing"),
    (editor_pb2.EditRequest(seed=1, space=common_pb2.LATENT_SPACE_WP, edits=[edit("q")]), C.INVALID_ARGUMENT, "Z"),
    (editor_pb2.EditRequest(photo=common_pb2.Image(encoded=b"nope"), edits=[edit("q")]), C.INVALID_ARGUMENT, "image"),
])
def test_bad_requests_get_precise_errors(editor, request_, code, words):
    with pytest.raises(grpc.RpcError) as err:
        list(editor["stub"].Edit(request_, timeout=60))
    assert err.value.code() == code and words in err.value.details(), err.value.details()


def test_photo_is_inverted_edited_and_blended_back(editor):
    photo = assets.path_of("astronaut.png").read_bytes()
    replies, _ = run(editor["stub"], editor_pb2.EditRequest(
        photo=common_pb2.Image(encoded=photo), blend_into_photo=True, include_face=True, include_original=True,
        inversion_steps=30, rescore=True, edits=[edit(f"{P}-a", -2, 2, 2)]), timeout=180)
    assert [r.edit_index for r in replies] == [-1, 0, 0]
    assert all(r.inversion_psnr > 10 for r in replies)
    for r in replies:
        assert pixels(r.image).shape == (512, 512, 3) and pixels(r.face).shape == (64, 64, 3)
        assert r.scores
    # Away from the face the photo is untouched; the face changed between the two edits.
    a, b = pixels(replies[1].image).astype(int), pixels(replies[2].image).astype(int)
    original = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")).astype(int)
    assert np.abs(a[:40, :40] - original[:40, :40]).max() <= 2
    assert np.abs(a - b).max() > 30


def test_catalog_lists_the_default_model_first_and_everything_editable(editor):
    catalog = editor["stub"].GetCatalog(editor_pb2.GetCatalogRequest(), timeout=60)
    assert catalog.models[0].name == MODEL
    assert {"gender", "age", "yaw", "smile"} <= {a.name for a in catalog.attributes}
    assert {f"{P}-a", f"{P}-b"} <= {b.ref.attribute for b in catalog.boundaries}
    assert any(m.model.name == MODEL for m in catalog.invertible_models)
    assert not catalog.warnings


def test_boundary_service_is_relayed_with_its_rich_errors_and_listed_by_reflection(editor):
    boundary = editor["boundary"]
    info = boundary.GetBoundary(boundary_pb2.GetBoundaryRequest(ref=common_pb2.BoundaryRef(
        model=MODEL, attribute=f"{P}-a", space=Z)), timeout=30)
    assert np.allclose(tensors.to_numpy(info.normal, "normal"), editor["normals"]["a"], atol=1e-6)
    exported = boundary.ExportBoundary(boundary_pb2.ExportBoundaryRequest(ref=info.info.ref), timeout=30)
    assert exported.file_name == f"{MODEL}_{P}-a_boundary.npy"
    with pytest.raises(grpc.RpcError) as err:
        boundary.ImportBoundary(boundary_pb2.ImportBoundaryRequest(file_name="x_y_boundary.npy", npy=b"junk"),
                                timeout=30)
    assert err.value.code() == C.INVALID_ARGUMENT and errors.status_details(err.value).get("fields") == ["npy"]
    stub = reflection_pb2_grpc.ServerReflectionStub(editor["channel"])
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                           timeout=30))
    names = {s.name for s in reply.list_services_response.service}
    assert {"interfacegan.v1.EditorService", "interfacegan.v1.BoundaryService"} <= names


def _metrics(proc) -> str:
    port = None
    for line in proc.log_path.read_text().splitlines():
        if '"listening"' in line:
            port = json.loads(line).get("metrics_port")
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def _synthesize_count(proc) -> float:
    found = re.findall(r'ifgan_requests_total\{[^}]*method="Synthesize"[^}]*\} ([0-9.e+]+)', _metrics(proc))
    return sum(float(x) for x in found)


def _upstream_calls(proc) -> dict[tuple[str, str], float]:
    """The editor's own count of its calls to other services, by (service, method)."""
    found = re.findall(r'ifgan_upstream_calls_total\{method="(\w+)",target="(\w+)"\} ([0-9.e+]+)', _metrics(proc))
    return {(target, method): float(n) for method, target, n in found}


def test_an_edit_of_a_seed_makes_two_round_trips_on_a_warm_cache(editor, launch_service):
    """Counted by the editor's upstream client: Synthesize, then Score and CompareIdentity side by side, nothing
    before them.

    The code of a Z seed is sampled in-process, the normals come from the editor's cache (by versioned ref)
    and the edit math runs in-process; before this design the same Edit made five serial calls on a warm
    cache (SampleLatents, GetBoundary, EditLatents, Synthesize, Score) and six cold (GetModelInfo first).
    """
    cluster = editor["cluster"]
    env = {f"IFGAN_{name.upper()}_ADDRESS": cluster.services[name].address
           for name in ("generator", "scorer", "boundary", "inversion")}
    ed = launch_service("editor", "--metrics-port", "0", "--drain-seconds", "0", env=env)
    with grpc.insecure_channel(ed.address) as ch:
        stub = editor_pb2_grpc.EditorServiceStub(ch)

        def counted(request) -> tuple[list, dict]:
            before = _upstream_calls(ed)
            replies = list(stub.Edit(request, timeout=120))
            after = _upstream_calls(ed)
            return replies, {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}

        def seed_edit(seed: int, **kw):
            return editor_pb2.EditRequest(seed=seed, rescore=True, format=RAW, edits=[edit(f"{P}-a", -2, 2, 3, **kw)])

        _, cold = counted(seed_edit(40))
        assert ("boundary", "GetBoundary") in cold and ("generator", "GetModelInfo") in cold
        replies, warm = counted(seed_edit(41))  # another seed: nothing of it is cached
        warm_calls = {("generator", "Synthesize"): 1, ("scorer", "Score"): 1, ("scorer", "CompareIdentity"): 1}
        assert warm == warm_calls, warm
        assert len(replies) == 3 and all(r.scores for r in replies)
        counted(seed_edit(42, hold=[f"{P}-b"]))  # the conditional boundary is made once per parent versions
        _, held = counted(seed_edit(43, hold=[f"{P}-b"]))
        assert held == warm_calls, held
        # The in-process seed code is the generator's, and the in-process edit is EditLatents' (one library).
        with grpc.insecure_channel(cluster.services["generator"].address) as gch:
            sampled = generator_pb2_grpc.GeneratorServiceStub(gch).SampleLatents(generator_pb2.SampleLatentsRequest(
                model=common_pb2.ModelRef(name=MODEL), space=Z, count=1, seed=41), timeout=30)
        codes = np.stack([tensors.to_numpy(r.code.codes, "code")[0] for r in replies])
        latents = editor["boundary"].EditLatents(boundary_pb2.EditLatentsRequest(
            codes=sampled.codes, edits=[boundary_pb2.Edit(boundary=replies[0].boundary, start=-2, end=2, steps=3)]),
            timeout=30)
        np.testing.assert_array_equal(codes, tensors.to_numpy(latents.codes.codes, "codes")[0, 0])
    ed.stop()


def test_edits_are_balanced_over_generator_replicas_and_a_dead_replica_is_skipped(editor, launch_service):
    g1 = launch_service("generator", "--metrics-port", "0", "--drain-seconds", "0")
    g2 = launch_service("generator", "--metrics-port", "0", "--drain-seconds", "0")
    dead = f"127.0.0.1:{free_port()}"
    cluster = editor["cluster"]
    env = {"IFGAN_SCORER_ADDRESS": cluster.services["scorer"].address,
           "IFGAN_BOUNDARY_ADDRESS": cluster.services["boundary"].address,
           "IFGAN_INVERSION_ADDRESS": cluster.services["inversion"].address}
    targets = {"list": f"{g1.address},{dead},{g2.address}",  # the editor's own pool, one replica down
               "uri": f"ipv4:{g1.address},{g2.address}"}  # one gRPC target, round robin inside the channel
    for kind, target in targets.items():
        before = (_synthesize_count(g1), _synthesize_count(g2))
        ed = launch_service("editor", "--chunk-size", "2", "--drain-seconds", "0",
                            env={**env, "IFGAN_GENERATOR_ADDRESS": target})
        with grpc.insecure_channel(ed.address) as ch:
            stub = editor_pb2_grpc.EditorServiceStub(ch)
            for seed in range(4):
                assert len(list(stub.Edit(editor_pb2.EditRequest(seed=seed, format=RAW, edits=[
                    edit(f"{P}-a", -2, 2, 8)]), timeout=60))) == 8
        after = (_synthesize_count(g1), _synthesize_count(g2))
        assert after[0] - before[0] >= 4 and after[1] - before[1] >= 4, (kind, before, after)
        if kind == "list":
            # IP replicas share one round robin channel: gRPC's balancer skips the dead one (and its retry
            # policy redoes an idempotent call that met it on a live one).
            wiring = [json.loads(line) for line in ed.log_path.read_text().splitlines() if '"downstream"' in line]
            assert wiring[-1]["generator"] == [f"ipv4:{g1.address},{dead},{g2.address}"], wiring
        ed.stop()


def test_a_relayed_training_stream_without_a_deadline_outlives_the_editors_call_timeout(editor, launch_service):
    """A client following a training job through the editor sets no deadline (jobs take minutes); the relay then
    sets none either, instead of cutting the stream at --call-timeout."""
    cluster = editor["cluster"]
    env = {f"IFGAN_{name.upper()}_ADDRESS": cluster.services[name].address
           for name in ("generator", "scorer", "boundary", "inversion")}
    ed = launch_service("editor", "--call-timeout", "1", "--drain-seconds", "0", env=env)
    # A job of some seconds on 2 cores is enough to outlive the 1 s timeout.
    request = boundary_pb2.TrainBoundariesRequest(attributes=["yaw"], num_samples=600, chosen_ratio=0.1, seed=11)
    with grpc.insecure_channel(ed.address) as ch:
        started = time.monotonic()
        updates = list(boundary_pb2_grpc.BoundaryServiceStub(ch).TrainBoundaries(request))
    assert updates[-1].state == boundary_pb2.JOB_STATE_SUCCEEDED, updates[-1]
    assert time.monotonic() - started > 1.0  # the job outlived the relay's default timeout
