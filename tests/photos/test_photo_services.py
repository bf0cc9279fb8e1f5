"""Real photos through real services: identity scores, pivotal tuning into a stored variant served by two
generator replicas, every face, the change pasted back, identity on every Edit, and the failure cases."""

from __future__ import annotations

import concurrent.futures
import io
import uuid

import grpc
import numpy as np
import pytest
import redis
from PIL import Image

from interfacegan.v1 import (boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc,
                             generator_pb2, generator_pb2_grpc, inversion_pb2, inversion_pb2_grpc, scorer_pb2,
                             scorer_pb2_grpc)
from interfacegan import codec
from services.common import assets, images, tensors, variants

C = grpc.StatusCode
RAW = common_pb2.IMAGE_FORMAT_RAW
Z = common_pb2.LATENT_SPACE_Z
MODEL = "dcgan-digiface-64"
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
P = f"ph{uuid.uuid4().hex[:6]}"


def png(array: np.ndarray) -> common_pb2.Image:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return common_pb2.Image(encoded=buf.getvalue())


def pixels(image: common_pb2.Image) -> np.ndarray:
    return images.decode(image, "image", max_pixels=1 << 30)


def portrait(name: str) -> np.ndarray:
    return np.asarray(Image.open(assets.path_of(name)).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


@pytest.fixture(scope="module")
def stack(launch_service, redis_url):
    """Redis, scorer, two generator replicas, inversion, boundary and an editor over them."""
    env = {"IFGAN_REDIS_URL": redis_url}
    scorer = launch_service("scorer")
    g1 = launch_service("generator", "--drain-seconds", "0", "--variant-cache-entries", "4", env=env)
    g2 = launch_service("generator", "--drain-seconds", "0", "--variant-cache-entries", "4", env=env)
    inversion = launch_service("inversion", "--tuning-steps", "40", env=env)
    boundary = launch_service("boundary", env=env)
    # Small chunks: a photo edit spreads over both replicas (the kill test needs chunks in flight on each).
    editor = launch_service("editor", "--drain-seconds", "0", "--chunk-size", "2", "--parallel-chunks", "2", env={
        "IFGAN_GENERATOR_ADDRESS": f"{g1.address},{g2.address}", "IFGAN_SCORER_ADDRESS": scorer.address,
        "IFGAN_BOUNDARY_ADDRESS": boundary.address, "IFGAN_INVERSION_ADDRESS": inversion.address})
    channels = {name: grpc.insecure_channel(p.address, options=OPTIONS) for name, p in
                {"scorer": scorer, "g1": g1, "g2": g2, "inversion": inversion, "editor": editor}.items()}
    normal = np.random.default_rng(5).standard_normal((1, 100))
    buf = io.BytesIO()
    np.save(buf, normal / np.linalg.norm(normal))
    boundary_pb2_grpc.BoundaryServiceStub(channels["editor"]).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
        model=MODEL, attribute=f"{P}-a", space=Z, npy=buf.getvalue()), timeout=30)
    yield {"scorer": scorer_pb2_grpc.ScorerServiceStub(channels["scorer"]),
           "g1": generator_pb2_grpc.GeneratorServiceStub(channels["g1"]),
           "g2": generator_pb2_grpc.GeneratorServiceStub(channels["g2"]),
           "inversion": inversion_pb2_grpc.InversionServiceStub(channels["inversion"]),
           "editor": editor_pb2_grpc.EditorServiceStub(channels["editor"]),
           "procs": {"g1": g1, "g2": g2, "inversion": inversion, "editor": editor},
           "redis": redis.Redis.from_url(redis_url)}
    for ch in channels.values():
        ch.close()


def invert(stack, photo: np.ndarray, **fields) -> inversion_pb2.InvertResponse:
    replies = list(stack["inversion"].Invert(inversion_pb2.InvertRequest(
        image=png(photo), align_face=True, format=RAW, **fields), timeout=300))
    assert replies[-1].final
    return replies[-1]


def synthesize(stub, final, variant: str | None = None) -> list[np.ndarray]:
    data = np.concatenate([tensors.to_numpy(f.code.codes, "code") for f in final.faces])
    batch = codec.latents(data.astype(np.float32), Z)
    out = []
    for reply in stub.Synthesize(generator_pb2.SynthesizeRequest(
            codes=batch, format=RAW, variant=final.variant if variant is None else variant), timeout=60):
        out += [pixels(im) for im in reply.images]
    return out


@pytest.fixture(scope="module")
def hopper(stack):
    return invert(stack, portrait("grace_hopper.jpg"))


def test_identity_rpc_tells_the_same_person_from_another(stack):
    hopper, astronaut = portrait("grace_hopper.jpg"), portrait("astronaut.png")
    faces = [hopper[130:340, 170:380], hopper[130:340, 170:380][:, ::-1], astronaut[60:190, 160:290]]
    reply = stack["scorer"].CompareIdentity(scorer_pb2.IdentityRequest(
        references=[png(faces[0])], images=[png(f) for f in faces], include_embeddings=True), timeout=60)
    d = list(reply.distances)
    assert d[0] == pytest.approx(0, abs=1e-6) and d[1] < 0.6 < d[2]
    assert reply.same_person_threshold == 0.6 and len(reply.embeddings) == 3 * 128
    with pytest.raises(grpc.RpcError) as e:
        stack["scorer"].CompareIdentity(scorer_pb2.IdentityRequest(references=[png(faces[0])] * 2,
                                                                  images=[png(f) for f in faces]), timeout=30)
    assert e.value.code() == C.INVALID_ARGUMENT and "one reference" in e.value.details()


def test_a_photo_is_tuned_into_a_variant_that_both_replicas_render(stack, hopper):
    face = hopper.faces[0]
    assert hopper.variant and variants.is_variant_id(hopper.variant) and hopper.tuning_steps > 0
    assert face.psnr > face.untuned_psnr + 6 and hopper.untuned_psnr == face.untuned_psnr
    assert hopper.cpu_seconds_per_face > 0
    recon = pixels(face.reconstruction)
    for replica in ("g1", "g2"):
        (image,) = synthesize(stack[replica], hopper)
        assert psnr(image, recon) > 40  # the generator serves the tuned weights, not the base ones
    (base,) = synthesize(stack["g1"], hopper, variant="")
    assert psnr(base, recon) < 30
    ttl = stack["redis"].ttl(variants.KEY_PREFIX + hopper.variant)
    assert ttl > 0  # stored once, with a TTL


def test_false_detections_are_dropped_and_every_face_is_inverted(stack):
    astronaut = invert(stack, portrait("astronaut.png"), face_selection=inversion_pb2.FACE_SELECTION_ALL,
                       skip_tuning=True)
    assert len(astronaut.faces) == 1 and astronaut.faces_dropped == 1  # the mission patch
    assert not astronaut.variant and astronaut.tuning_steps == 0
    hopper = portrait("grace_hopper.jpg")[100:400, 140:420]
    group = np.full((300, 700, 3), 120, np.uint8)
    group[:, :280] = hopper
    group[60:60 + 200, 400:400 + 200] = np.asarray(Image.fromarray(hopper).resize((200, 214)))[:200]
    both = invert(stack, group, face_selection=inversion_pb2.FACE_SELECTION_ALL, tuning_steps=10)
    assert [f.index for f in both.faces] == [0, 1] and both.variant
    boxes = [f.alignment.face_box for f in both.faces]
    assert boxes[0][2] > boxes[1][2] and boxes[1][0] > 350  # largest first; the second is the small copy
    second = invert(stack, group, face_selection=inversion_pb2.FACE_SELECTION_INDICES, face_indices=[1],
                    skip_tuning=True)
    assert [f.index for f in second.faces] == [1]
    assert second.faces[0].alignment.face_box == pytest.approx(boxes[1])


@pytest.mark.parametrize("case, words", [
    ("no_face", "no face found"), ("tiny", "no face found"), ("index", "out of range"), ("crowd", "limit of 20"),
    ("50mp", "pixels")])
def test_photos_that_cannot_be_edited_get_precise_errors(stack, case, words):
    hopper = portrait("grace_hopper.jpg")
    fields = {}
    if case == "no_face":
        photo = np.full((200, 300, 3), 128, np.uint8)
    elif case == "tiny":
        photo = np.asarray(Image.fromarray(hopper).resize((40, 47)))
    elif case == "50mp":  # 8000 x 6250: refused from its header, before anything is decoded
        photo = np.zeros((6250, 8000, 3), np.uint8)
    elif case == "index":
        photo, fields = hopper, {"face_selection": inversion_pb2.FACE_SELECTION_INDICES, "face_indices": [3]}
    else:  # 21 faces in one photo: over the per-photo limit
        face = np.asarray(Image.fromarray(hopper[110:410, 150:400]).resize((100, 120)))
        photo = np.tile(face, (3, 7, 1))
        fields = {"face_selection": inversion_pb2.FACE_SELECTION_ALL}
    with pytest.raises(grpc.RpcError) as e:
        invert(stack, photo, skip_tuning=True, **fields)
    assert e.value.code() == C.INVALID_ARGUMENT and words in e.value.details(), e.value.details()


def test_blend_adds_the_change_and_leaves_the_rest_of_the_photo_exactly(stack, hopper):
    photo = portrait("grace_hopper.jpg")
    face = hopper.faces[0]
    recon = pixels(face.reconstruction)
    edited = np.clip(recon.astype(int) + 30, 0, 255).astype(np.uint8)
    reply = stack["inversion"].Blend(inversion_pb2.BlendRequest(
        photo=png(photo), face=png(edited), reconstruction=face.reconstruction, alignment=face.alignment,
        format=RAW, crop_size=128), timeout=60)
    out = pixels(reply.image)
    assert reply.mode == inversion_pb2.BLEND_MODE_CHANGE and reply.changed_outside_mask == 0
    changed = np.any(out != photo, axis=-1)
    x, y, w, h = face.alignment.face_box
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 0.3 * w * h and ys.min() > y - h and xs.max() < x + 2 * w
    assert len(reply.source_crops) == len(reply.result_crops) == 1
    assert pixels(reply.result_crops[0]).shape == (128, 128, 3)
    whole = stack["inversion"].Blend(inversion_pb2.BlendRequest(
        photo=png(photo), face=png(edited), alignment=face.alignment, format=RAW), timeout=60)
    assert whole.mode == inversion_pb2.BLEND_MODE_FACE and whole.change_smoothing == 0


def test_blend_smooths_the_change_by_default_and_as_asked(stack, hopper):
    photo = portrait("grace_hopper.jpg")
    face = hopper.faces[0]
    recon = pixels(face.reconstruction)
    # A change of texture only (a +-40 checkerboard): smoothing takes most of it away, and only under the mask.
    board = np.where((np.indices((64, 64)).sum(axis=0) % 2)[..., None] == 0, 40, -40)
    edited = np.clip(recon.astype(int) + board, 0, 255).astype(np.uint8)

    def blend(**fields):
        reply = stack["inversion"].Blend(inversion_pb2.BlendRequest(
            photo=png(photo), face=png(edited), reconstruction=face.reconstruction, alignment=face.alignment,
            format=RAW, **fields), timeout=60)
        assert reply.changed_outside_mask == 0
        return reply, np.abs(pixels(reply.image).astype(int) - photo).sum()

    default, smoothed = blend()
    assert default.change_smoothing == pytest.approx(1 / 64)
    sharp_reply, sharp = blend(change_smoothing=0.0)
    assert sharp_reply.change_smoothing == 0 and sharp > 3 * smoothed
    assert blend(change_smoothing=0.05)[0].change_smoothing == pytest.approx(0.05)
    for fields, words in [({"change_smoothing": -0.01}, "accepted: 0 (none) to 0.1"),
                          ({"change_smoothing": 0.2}, "accepted: 0 (none) to 0.1"),
                          ({"change_smoothing": float("nan")}, "change_smoothing"),
                          ({"change_smoothing": 0.01, "mode": inversion_pb2.BLEND_MODE_FACE}, "BLEND_MODE_FACE")]:
        with pytest.raises(grpc.RpcError) as e:
            blend(**fields)
        assert e.value.code() == C.INVALID_ARGUMENT and words in e.value.details(), e.value.details()


def test_edit_of_a_photo_keeps_the_person_and_reports_identity_per_face(stack):
    photo = portrait("grace_hopper.jpg")
    replies = list(stack["editor"].Edit(editor_pb2.EditRequest(
        photo=png(photo), blend_into_photo=True, include_original=True, format=RAW,
        edits=[editor_pb2.AttributeEdit(attribute=f"{P}-a", start=-3, end=3, steps=3)]), timeout=300))
    assert [r.edit_index for r in replies] == [-1, 0, 0, 0]
    original = replies[0]
    assert np.array_equal(pixels(original.image), photo)  # the real input, untouched, is the "original"
    for r in replies:
        assert r.blend_mode == "change" and r.variant and r.change_smoothing == pytest.approx(1 / 64)
        assert len(r.faces) == 1 and r.faces[0].reconstruction_psnr > 22  # 40 tuning steps in these tests
        assert 0 <= r.identity_distance < 0.6 and r.faces[0].identity_distance == r.identity_distance
    assert replies[0].identity_distance < 0.05
    assert np.abs(pixels(replies[1].image).astype(int) - pixels(replies[3].image)).max() > 20


def test_seed_edits_carry_identity_against_the_unedited_render(stack):
    replies = list(stack["editor"].Edit(editor_pb2.EditRequest(seed=11, format=RAW, edits=[
        editor_pb2.AttributeEdit(attribute=f"{P}-a", start=0, end=6, steps=2)]), timeout=120))
    assert replies[0].identity_distance < 0.05 < replies[1].identity_distance


def test_variant_flushed_or_corrupted_in_the_store_is_refused_never_rendered_with_other_weights(stack):
    final = invert(stack, portrait("astronaut.png"), tuning_steps=5)
    r = stack["redis"]
    key = variants.KEY_PREFIX + final.variant
    blob = r.get(key)
    r.set(key, blob[:-100] + bytes(100))  # corrupted payload
    for replica in ("g1", "g2"):
        with pytest.raises(grpc.RpcError) as e:
            synthesize(stack[replica], final)
        assert e.value.code() == C.FAILED_PRECONDITION and "unusable" in e.value.details()
    r.set(key, b"x" * (17 << 20))  # oversized (the limit is 16 MiB)
    with pytest.raises(grpc.RpcError) as e:
        synthesize(stack["g2"], final)
    assert e.value.code() == C.FAILED_PRECONDITION and "over the limit" in e.value.details()
    r.delete(key)  # flushed
    with pytest.raises(grpc.RpcError) as e:
        synthesize(stack["g1"], final)
    assert e.value.code() == C.FAILED_PRECONDITION and "invert the photo again" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        synthesize(stack["g1"], final, variant="v1-../../etc")
    assert e.value.code() == C.INVALID_ARGUMENT


def test_two_photos_variants_in_flight_at_once_are_never_mixed(stack, hopper):
    astronaut = invert(stack, portrait("astronaut.png"), tuning_steps=20)
    want = {hopper.variant: pixels(hopper.faces[0].reconstruction),
            astronaut.variant: pixels(astronaut.faces[0].reconstruction)}
    jobs = [(stack[g], f) for _ in range(6) for g in ("g1", "g2") for f in (hopper, astronaut)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: (job[1].variant, synthesize(*job)[0]), jobs))
    for vid, image in results:
        assert psnr(image, want[vid]) > 40


def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_variant_cache_memory_stays_bounded_under_many_distinct_photos(stack, hopper):
    """40 distinct variants (as 40 photos would make) through one replica whose LRU holds 4: RSS levels off."""
    r, g2 = stack["redis"], stack["g2"]
    header, delta = variants.decode(r.get(variants.KEY_PREFIX + hopper.variant), 64 << 20)
    rng = np.random.default_rng(0)
    pid = stack["procs"]["g2"].pid
    rss = []
    for k in range(40):
        noisy = {key: v + rng.normal(0, 1e-4, v.shape).astype(np.float32) for key, v in delta.items()}
        vid = variants.variant_id(MODEL, header["version"], f"{k:064x}", "memory-test")
        r.set(variants.KEY_PREFIX + vid, variants.encode(MODEL, header["version"], noisy), ex=600)
        (image,) = synthesize(g2, hopper, variant=vid)
        assert psnr(image, pixels(hopper.faces[0].reconstruction)) > 35
        rss.append(_rss_mb(pid))
    # Past the cache's 4 entries every new variant evicts one: the last 30 loads grow memory by little.
    assert rss[-1] - rss[9] < 40, rss


def test_variant_lost_in_the_middle_of_a_stream_is_tuned_again_and_the_stream_goes_on(stack):
    """After the first image of a photo edit, the variant leaves the store and both replicas' caches. The editor
    inverts and tunes the photo again: the same photo and settings give the same variant id and codes, so the
    rest of the stream is rendered with the very weights of the images already sent."""
    photo = portrait("astronaut.png")
    steps = 12
    call = stack["editor"].Edit(editor_pb2.EditRequest(
        photo=png(photo), blend_into_photo=True, format=RAW,
        edits=[editor_pb2.AttributeEdit(attribute=f"{P}-a", start=-3, end=3, steps=steps)]), timeout=600)
    # Raw photos fill the stream's flow-control window: the editor waits for this reader after a few images.
    replies = [next(call)]
    vid, r = replies[0].variant, stack["redis"]
    key = variants.KEY_PREFIX + vid
    header, delta = variants.decode(r.get(key), 64 << 20)
    rng = np.random.default_rng(1)
    for k in range(4):  # each replica's LRU holds 4: four other variants push this one out of both
        other = variants.variant_id(MODEL, header["version"], f"{k:064x}", "mid-stream-test")
        r.set(variants.KEY_PREFIX + other, variants.encode(MODEL, header["version"], {
            name: v + rng.normal(0, 1e-4, v.shape).astype(np.float32) for name, v in delta.items()}), ex=600)
        for replica in ("g1", "g2"):
            synthesize(stack[replica], invert_result_of(replies[0]), variant=other)
    r.delete(key)
    replies += list(call)
    assert len(replies) == steps and {x.variant for x in replies} == {vid}
    assert r.exists(key)  # stored again by the new tuning
    assert all(0 <= x.identity_distance < 0.6 for x in replies)
    # The images follow one another as one edit does: no jump where the weights were lost.
    frames = [pixels(x.image).astype(np.float64) for x in replies]
    steps_between = [np.abs(b - a).mean() for a, b in zip(frames, frames[1:])]
    assert max(steps_between) < 3 * np.median(steps_between) + 0.5, steps_between
    log = stack["procs"]["editor"].log_path.read_text()
    assert "tuned variant lost; tuning the photo again" in log


def invert_result_of(reply: editor_pb2.EditResponse) -> inversion_pb2.InvertResponse:
    """An InvertResponse-shaped holder of an Edit reply's code (what synthesize() renders)."""
    return inversion_pb2.InvertResponse(faces=[inversion_pb2.InvertedFace(code=reply.code)])


def test_a_generator_replica_killed_mid_photo_edit_the_edit_finishes_on_the_other(stack):
    """Runs last: it kills replica g1. The editor's retry sends g1's chunks to g2, which loads the variant."""
    photo = portrait("grace_hopper.jpg")
    call = stack["editor"].Edit(editor_pb2.EditRequest(
        photo=png(photo), blend_into_photo=True, format=RAW,
        edits=[editor_pb2.AttributeEdit(attribute=f"{P}-a", start=-3, end=3, steps=40)]), timeout=600)
    replies = [next(call)]
    stack["procs"]["g1"].proc.kill()
    replies += list(call)
    assert len(replies) == 40 and all(r.variant == replies[0].variant for r in replies)
    assert all(0 <= r.identity_distance < 0.6 for r in replies)
