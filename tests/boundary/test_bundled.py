"""Shipped boundaries: the bundled files, their loading into an empty store only, and a fresh cluster that edits
at once without training."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import numpy as np
import pytest

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc
from services.boundary import bundled, npyfiles
from services.boundary.store import BoundaryStore

MODEL = "dcgan-digiface-64"
Z = common_pb2.LATENT_SPACE_Z
SHIPPED = {"gender", "age", "yaw", "smile", "gender|age"}


def run(coro):
    return asyncio.run(coro)


def test_the_bundle_holds_the_default_models_boundaries_with_their_metadata():
    shipped = bundled.read()
    assert {b.meta["attribute"] for b in shipped} == SHIPPED
    assert [b.meta["attribute"] for b in shipped][-1] == "gender|age"  # derived ones after their parents
    for b in shipped:
        m = b.meta
        assert m["model"] == MODEL and m["space"] == Z and m["origin"] == "bundled"
        assert b.normal.shape == (1, 100) and np.linalg.norm(b.normal) == pytest.approx(1, abs=1e-9)
        assert b.file_name == npyfiles.file_name(MODEL, m["attribute"], Z)
        if "|" in m["attribute"]:
            assert [p["attribute"] for p in m["parents"]] == ["gender", "age"]
            continue
        assert m["num_samples"] >= 100_000 and m["chosen_ratio"] == pytest.approx(0.02) and m["seed"] == 0
        assert m["solver"] and m["model_version"] and 0.7 < m["validation_accuracy"] <= 1
    # The held gender is the gender normal projected off the age normal.
    by = {b.meta["attribute"]: b.normal[0] for b in shipped}
    held = by["gender|age"]
    assert abs(held @ by["age"]) < 1e-6 and held @ by["gender"] > 0.5


def test_install_fills_only_boundaries_the_store_lacks(redis_url, tmp_path):
    async def scenario():
        store = BoundaryStore(redis_url, prefix=f"bundle-{uuid.uuid4().hex[:8]}:")
        try:
            # A user's own yaw boundary is there first: it stays the only (and newest) yaw.
            mine = np.random.default_rng(3).standard_normal((1, 100))
            await store.put({"model": MODEL, "attribute": "yaw", "space": Z, "origin": "imported", "parents": []},
                            mine / np.linalg.norm(mine))
            first = await bundled.install(store)
            assert {b.attribute for b in first} == SHIPPED - {"yaw"}
            yaw = await store.list(attribute="yaw", all_versions=True)
            assert [(b.version, b.meta["origin"]) for b in yaw] == [(1, "imported")]
            again = await bundled.install(store)  # a restart, or a second replica: nothing new
            assert again == []
            assert len(await store.list(all_versions=True)) == len(SHIPPED)
            gender = await store.get(MODEL, Z, "gender")
            assert gender.version == 1 and gender.meta["origin"] == "bundled" and gender.meta["num_samples"] > 0
            held = await store.get(MODEL, Z, "gender|age")
            assert held.meta["parents"][0] == gender.ref  # parents point at the versions stored here
            # A boundary trained later is the newer version; the bundled one stays addressable.
            await store.put({"model": MODEL, "attribute": "gender", "space": Z, "origin": "trained", "parents": []},
                            mine / np.linalg.norm(mine))
            newest = await store.get(MODEL, Z, "gender")
            assert newest.version == 2 and newest.meta["origin"] == "trained"
            assert (await store.get(MODEL, Z, "gender", 1)).meta["origin"] == "bundled"
        finally:
            await store.close()

    run(scenario())


def test_a_broken_bundle_fails_loudly(tmp_path):
    (tmp_path / "m_x.json").write_text('{"ref": {"model": "m", "attribute": "x", "space": "LATENT_SPACE_Z"}}')
    with pytest.raises(ValueError, match="m_x_boundary.npy"):
        bundled.read(tmp_path)


def test_a_fresh_cluster_on_an_empty_store_edits_at_once(cluster, redis_url, launch_service):
    """A boundary service on an empty Redis namespace and an editor in front of it: the first Edit works."""
    gen, scorer = cluster.services["generator"].address, cluster.services["scorer"].address
    boundary = launch_service("boundary", "--redis-url", redis_url, "--redis-prefix", f"fresh{uuid.uuid4().hex[:8]}:",
                              "--generator-address", gen, "--scorer-address", scorer)
    editor = launch_service("editor", "--generator-address", gen, "--scorer-address", scorer,
                            "--boundary-address", boundary.address,
                            "--inversion-address", cluster.services["inversion"].address)
    with grpc.insecure_channel(editor.address) as channel:
        listed = boundary_pb2_grpc.BoundaryServiceStub(channel).ListBoundaries(
            boundary_pb2.ListBoundariesRequest(model=MODEL), timeout=30).boundaries
        assert {b.ref.attribute for b in listed} == SHIPPED and {b.origin for b in listed} == {"bundled"}
        request = editor_pb2.EditRequest(seed=7, rescore=True, edits=[
            editor_pb2.AttributeEdit(attribute="age", start=-3, end=3, steps=3),
            editor_pb2.AttributeEdit(attribute="gender", start=0, end=3, steps=2, hold=["age"])])
        frames = list(editor_pb2_grpc.EditorServiceStub(channel).Edit(request, timeout=120))
    assert len(frames) == 5 and all(f.image.encoded for f in frames)
    ages = [next(s.value for s in f.scores if s.attribute == "age") for f in frames[:3]]
    assert ages[0] < ages[2]  # the shipped age boundary ages the face
    assert frames[0].boundary.attribute == "age" and frames[0].boundary.version == 1
