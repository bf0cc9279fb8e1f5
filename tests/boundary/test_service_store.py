"""The boundary server over gRPC with a real Redis: import/export of the published files, versions,
conditional boundaries, the edit math, interpolation, the cosine study, and behaviour without Redis."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from interfacegan import codec
from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2
from services.common import editing, tensors

REFERENCE = Path(os.environ["IFGAN_REFERENCE_BOUNDARIES"])  # set by tests/conftest.py
Z, W, WP = common_pb2.LATENT_SPACE_Z, common_pb2.LATENT_SPACE_W, common_pb2.LATENT_SPACE_WP


@pytest.fixture(scope="module")
def stub(launch_service, redis_url, tmp_path_factory):
    proc = launch_service("boundary", "--redis-url", redis_url, "--redis-prefix", f"t{uuid.uuid4().hex[:8]}:",
                          "--data-dir", str(tmp_path_factory.mktemp("boundary-data")))
    with grpc.insecure_channel(proc.address) as channel:
        yield boundary_pb2_grpc.BoundaryServiceStub(channel)


def ref(model, attribute, space=Z, version=0):
    return common_pb2.BoundaryRef(model=model, attribute=attribute, space=space, version=version)


def import_file(stub, name):
    return stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(file_name=name, npy=(REFERENCE / name).read_bytes()))


def normal_of(boundary):
    return tensors.to_numpy(boundary.normal, "normal").astype(np.float64)


def test_every_published_file_imports_and_exports_identically(stub):
    files = sorted(REFERENCE.glob("*_boundary.npy"))
    for f in files:
        b = import_file(stub, f.name)
        assert b.info.origin == "imported" and b.info.file_name == f.name and b.info.dimension == 512
        exported = stub.ExportBoundary(boundary_pb2.ExportBoundaryRequest(ref=b.info.ref))
        assert exported.file_name == f.name
        np.testing.assert_array_equal(np.load(io.BytesIO(exported.npy)), np.load(f))  # float64 bit-exact
        assert np.load(io.BytesIO(exported.npy)).dtype == np.float64
    listed = stub.ListBoundaries(boundary_pb2.ListBoundariesRequest(model="stylegan_ffhq")).boundaries
    assert {(b.ref.attribute, b.ref.space) for b in listed} == \
        {(a, s) for a in ("age", "eyeglasses", "gender", "pose", "smile") for s in (Z, W)}
    only_w = stub.ListBoundaries(boundary_pb2.ListBoundariesRequest(model="stylegan_ffhq", space=W)).boundaries
    assert len(only_w) == 5 and all(b.ref.space == W for b in only_w)


def test_a_second_import_adds_a_version_and_the_first_stays_addressable(stub):
    first = import_file(stub, "pggan_celebahq_quality_boundary.npy")
    # The same name with other content (here, another attribute's normal) makes a new version.
    other = (REFERENCE / "pggan_celebahq_smile_boundary.npy").read_bytes()
    second = stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(
        file_name="pggan_celebahq_quality_boundary.npy", npy=other))
    assert second.info.ref.version == first.info.ref.version + 1
    newest = stub.GetBoundary(boundary_pb2.GetBoundaryRequest(ref=ref("pggan_celebahq", "quality")))
    old = stub.GetBoundary(boundary_pb2.GetBoundaryRequest(ref=first.info.ref))
    assert newest.info.ref.version == second.info.ref.version
    np.testing.assert_array_equal(normal_of(old), normal_of(first))
    # The API's Tensor is float32; ExportBoundary gives the stored float64 exactly.
    np.testing.assert_allclose(normal_of(newest), np.load(REFERENCE / "pggan_celebahq_smile_boundary.npy"), atol=1e-7)
    versions = stub.ListBoundaries(boundary_pb2.ListBoundariesRequest(
        model="pggan_celebahq", attribute="quality", all_versions=True)).boundaries
    assert [b.ref.version for b in versions] == list(range(1, second.info.ref.version + 1))


def test_import_overrides_and_errors(stub):
    data = (REFERENCE / "stylegan_ffhq_age_w_boundary.npy").read_bytes()
    b = stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(
        file_name="stylegan_ffhq_age_w_boundary.npy", npy=data, model="my-stylegan", attribute="oldness"))
    assert (b.info.ref.model, b.info.ref.attribute, b.info.ref.space) == ("my-stylegan", "oldness", W)
    with pytest.raises(grpc.RpcError) as e:
        stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(file_name="age.npy", npy=data))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "_boundary.npy" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(file_name="x_y_boundary.npy", npy=b"junk"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "npy" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.GetBoundary(boundary_pb2.GetBoundaryRequest(ref=ref("nobody", "nothing")))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "ListBoundaries" in e.value.details()


def test_conditional_boundaries_match_closed_forms_and_name_their_parents(stub):
    for attr in ("age", "gender", "eyeglasses"):
        import_file(stub, f"stylegan_ffhq_{attr}_boundary.npy")
    n, c1, c2 = (np.load(REFERENCE / f"stylegan_ffhq_{a}_boundary.npy")[0] for a in ("age", "gender", "eyeglasses"))
    one = stub.ConditionBoundary(boundary_pb2.ConditionBoundaryRequest(
        target=ref("stylegan_ffhq", "age"), conditions=[ref("stylegan_ffhq", "gender")]))
    assert one.info.ref.attribute == "age|gender" and one.info.origin == "conditional"
    assert [p.attribute for p in one.info.parents] == ["age", "gender"] and all(p.version for p in one.info.parents)
    assert np.max(np.abs(normal_of(one)[0] - editing.project(n, c1[None]))) < 1e-6
    two = stub.ConditionBoundary(boundary_pb2.ConditionBoundaryRequest(
        target=ref("stylegan_ffhq", "age"), conditions=[ref("stylegan_ffhq", "gender"), ref("stylegan_ffhq", "eyeglasses")]))
    assert np.max(np.abs(normal_of(two)[0] - editing.project(n, np.stack([c1, c2])))) < 1e-6
    assert abs(normal_of(two)[0] @ c1) < 1e-6 and abs(normal_of(two)[0] @ c2) < 1e-6
    exported = stub.ExportBoundary(boundary_pb2.ExportBoundaryRequest(ref=two.info.ref))
    assert exported.file_name == "stylegan_ffhq_age_c_gender_eyeglasses_boundary.npy"


def test_degenerate_conditions_are_refused_clearly(stub):
    import_file(stub, "stylegan_ffhq_smile_boundary.npy")
    with pytest.raises(grpc.RpcError) as e:
        stub.ConditionBoundary(boundary_pb2.ConditionBoundaryRequest(
            target=ref("stylegan_ffhq", "smile"), conditions=[ref("stylegan_ffhq", "smile")]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "parallel to the target" in e.value.details()
    import_file(stub, "stylegan_ffhq_pose_boundary.npy")
    with pytest.raises(grpc.RpcError) as e:
        stub.ConditionBoundary(boundary_pb2.ConditionBoundaryRequest(
            target=ref("stylegan_ffhq", "smile"), conditions=[ref("stylegan_ffhq", "pose")] * 2))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "linearly dependent" in e.value.details()
    import_file(stub, "stylegan_ffhq_pose_w_boundary.npy")
    with pytest.raises(grpc.RpcError) as e:
        stub.ConditionBoundary(boundary_pb2.ConditionBoundaryRequest(
            target=ref("stylegan_ffhq", "smile"), conditions=[ref("stylegan_ffhq", "pose", W)]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "share the target" in e.value.details()


def test_condition_request_id_is_idempotent(stub):
    import_file(stub, "pggan_celebahq_age_boundary.npy")
    import_file(stub, "pggan_celebahq_gender_boundary.npy")
    request = boundary_pb2.ConditionBoundaryRequest(request_id=f"cond-{uuid.uuid4().hex}",
                                                    target=ref("pggan_celebahq", "age"),
                                                    conditions=[ref("pggan_celebahq", "gender")])
    first, again = stub.ConditionBoundary(request), stub.ConditionBoundary(request)
    assert first.info.ref == again.info.ref
    fresh = stub.ConditionBoundary(boundary_pb2.ConditionBoundaryRequest(
        target=request.target, conditions=request.conditions))
    assert fresh.info.ref.version == first.info.ref.version + 1


def test_edit_latents_many_codes_many_edits_absolute_and_relative(stub):
    import_file(stub, "stylegan_ffhq_gender_boundary.npy")
    gender = np.load(REFERENCE / "stylegan_ffhq_gender_boundary.npy")[0]
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((6, 512)).astype(np.float32)
    vector = rng.standard_normal(512).astype(np.float32)
    reply = stub.EditLatents(boundary_pb2.EditLatentsRequest(
        codes=codec.latents(codes, Z),
        edits=[boundary_pb2.Edit(boundary=ref("stylegan_ffhq", "gender"), mode=boundary_pb2.DISTANCE_MODE_ABSOLUTE),
               boundary_pb2.Edit(vector=codec.tensor(vector), start=0, end=2, steps=3)]))
    out = tensors.to_numpy(reply.codes.codes, "codes")
    dist = tensors.to_numpy(reply.distances, "distances")
    assert out.shape == (6, 2, 10, 512)
    np.testing.assert_allclose(dist[0], np.linspace(-3, 3, 10), atol=1e-6)  # the reference's default edit
    np.testing.assert_allclose(dist[1], [0, 1, 2, 2, 2, 2, 2, 2, 2, 2], atol=1e-6)  # shorter edits repeat
    # Reference semantics for (1, d) codes: z + (t - z.n) n.
    for i in range(6):
        z = codes[i].astype(np.float64)
        for s, t in enumerate(np.linspace(-3, 3, 10)):
            np.testing.assert_allclose(out[i, 0, s], z + (t - z @ gender) * gender, atol=1e-4)
    unit_vector = vector / np.linalg.norm(vector)
    np.testing.assert_allclose(out[:, 1, 2], codes + 2 * unit_vector, atol=1e-5)


def test_edit_wplus_layer_ranges_and_space_rules(stub):
    import_file(stub, "stylegan_ffhq_smile_w_boundary.npy")
    smile_w = np.load(REFERENCE / "stylegan_ffhq_smile_w_boundary.npy")[0].astype(np.float32)
    codes = np.random.default_rng(1).standard_normal((2, 18, 512)).astype(np.float32)
    reply = stub.EditLatents(boundary_pb2.EditLatentsRequest(
        codes=codec.latents(codes, WP),
        edits=[boundary_pb2.Edit(boundary=ref("stylegan_ffhq", "smile", W), start=1, end=1, steps=1,
                                 layer_start=4, layer_end=8)]))
    out = tensors.to_numpy(reply.codes.codes, "codes")
    assert out.shape == (2, 1, 1, 18, 512)
    np.testing.assert_allclose(out[:, 0, 0, 4:8], codes[:, 4:8] + smile_w, atol=1e-5)
    np.testing.assert_array_equal(out[:, 0, 0, :4], codes[:, :4])
    np.testing.assert_array_equal(out[:, 0, 0, 8:], codes[:, 8:])
    bad = {
        "Z boundary on W+ codes": (WP, codes, boundary_pb2.Edit(boundary=ref("stylegan_ffhq", "gender"))),
        "W boundary on Z codes": (Z, codes[:, 0], boundary_pb2.Edit(boundary=ref("stylegan_ffhq", "smile", W))),
        "absolute with a layer range": (WP, codes, boundary_pb2.Edit(
            boundary=ref("stylegan_ffhq", "smile", W), mode=boundary_pb2.DISTANCE_MODE_ABSOLUTE, layer_end=4)),
        "layer range on Z": (Z, codes[:, 0], boundary_pb2.Edit(vector=codec.tensor(smile_w), layer_end=3)),
        "dimension": (Z, codes[:, 0, :100], boundary_pb2.Edit(vector=codec.tensor(smile_w))),
        "steps": (Z, codes[:, 0], boundary_pb2.Edit(vector=codec.tensor(smile_w), steps=1000)),
    }
    for what, (space, c, edit) in bad.items():
        with pytest.raises(grpc.RpcError) as e:
            stub.EditLatents(boundary_pb2.EditLatentsRequest(codes=codec.latents(c, space), edits=[edit]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
    # A result larger than a message is refused up front, saying what to shrink.
    many = np.zeros((4096, 512), np.float32)
    with pytest.raises(grpc.RpcError) as e:
        stub.EditLatents(boundary_pb2.EditLatentsRequest(codes=codec.latents(many, Z), edits=[
            boundary_pb2.Edit(vector=codec.tensor(smile_w), start=-3, end=3, steps=50)]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fewer codes" in e.value.details()


def test_interpolate(stub):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3, 100)).astype(np.float32)
    reply = stub.InterpolateLatents(boundary_pb2.InterpolateLatentsRequest(
        start=codec.latents(a, Z), end=codec.latents(b, Z), steps=5))
    out = tensors.to_numpy(reply.codes.codes, "codes")
    assert out.shape == (3, 5, 100)
    np.testing.assert_allclose(out[:, 2], (a + b) / 2, atol=1e-6)
    with pytest.raises(grpc.RpcError) as e:
        stub.InterpolateLatents(boundary_pb2.InterpolateLatentsRequest(
            start=codec.latents(a, Z), end=codec.latents(b[:2], Z), steps=5))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cosine_matrix_as_data_and_picture(stub):
    names = [f"stylegan_ffhq_{a}_boundary.npy" for a in ("age", "gender", "smile", "pose")]
    refs = [import_file(stub, n).info.ref for n in names]
    replies = list(stub.AnalyzeBoundaries(boundary_pb2.AnalyzeBoundariesRequest(boundaries=refs)))
    assert len(replies) == 1
    cos = tensors.to_numpy(replies[0].cosine, "cosine")
    normals = np.stack([np.load(REFERENCE / n)[0] for n in names])
    np.testing.assert_allclose(cos, normals @ normals.T, atol=1e-6)
    assert list(replies[0].labels) == refs
    picture = Image.open(io.BytesIO(replies[0].cosine_image.encoded))
    assert picture.format == "PNG" and picture.size[0] > 4 * 40
    with pytest.raises(grpc.RpcError) as e:
        list(stub.AnalyzeBoundaries(boundary_pb2.AnalyzeBoundariesRequest(boundaries=refs[:1])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_without_redis_the_math_serves_and_the_store_says_unavailable(launch_service, tmp_path):
    from services.cluster import free_port

    proc = launch_service("boundary", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
                          "--data-dir", str(tmp_path))
    with grpc.insecure_channel(proc.address) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.ListBoundaries(boundary_pb2.ListBoundariesRequest(), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "Redis" in e.value.details()
        codes = np.zeros((1, 4), np.float32)
        reply = stub.EditLatents(boundary_pb2.EditLatentsRequest(
            codes=codec.latents(codes, Z),
            edits=[boundary_pb2.Edit(vector=codec.tensor(np.array([1, 0, 0, 0], np.float32)), start=2, end=2,
                                    steps=1)]),
            timeout=30)
        np.testing.assert_allclose(tensors.to_numpy(reply.codes.codes, "c")[0, 0, 0], [2, 0, 0, 0])
    proc.stop()
