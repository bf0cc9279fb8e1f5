"""The Redis boundary store against a real redis-server: versions, atomic writes, idempotency, AOF restarts."""

from __future__ import annotations

import asyncio
import signal
import uuid

import numpy as np
import pytest

from services.boundary.store import BoundaryNotFound, BoundaryStore, check_name
from services.cluster import RedisProcess, free_port


def run(coro):
    return asyncio.run(coro)


def meta(attribute="gender", model="dcgan-digiface-64", space=1, **extra):
    return {"model": model, "attribute": attribute, "space": space, "origin": "trained", "parents": [], **extra}


def fresh_store(url: str) -> BoundaryStore:
    return BoundaryStore(url, prefix=f"test-{uuid.uuid4().hex[:8]}:")


def test_versions_accumulate_and_old_ones_stay_addressable(redis_url):
    async def scenario():
        store = fresh_store(redis_url)
        rng = np.random.default_rng(0)
        normals = [rng.standard_normal((1, 100)) for _ in range(3)]
        for i, n in enumerate(normals):
            stored, created = await store.put(meta(validation_accuracy=0.9 + i / 100), n)
            assert created and stored.version == i + 1
        await store.put(meta("age"), normals[0])
        newest = await store.get("dcgan-digiface-64", 1, "gender")
        assert newest.version == 3 and newest.meta["validation_accuracy"] == pytest.approx(0.92)
        np.testing.assert_array_equal(newest.normal, normals[2])  # float64, bit-exact
        first = await store.get("dcgan-digiface-64", 1, "gender", 1)
        np.testing.assert_array_equal(first.normal, normals[0])
        assert first.meta["dimension"] == 100 and first.meta["created_unix"] > 0
        listed = await store.list()
        assert [(b.attribute, b.version) for b in listed] == [("age", 1), ("gender", 3)]
        every = await store.list(attribute="gender", all_versions=True)
        assert [b.version for b in every] == [1, 2, 3]
        assert await store.list(space=2) == []
        with pytest.raises(BoundaryNotFound, match="versions 1..3 exist"):
            await store.get("dcgan-digiface-64", 1, "gender", 7)
        with pytest.raises(BoundaryNotFound, match="no boundary"):
            await store.get("dcgan-digiface-64", 2, "gender")
        await store.close()

    run(scenario())


def test_concurrent_writers_get_distinct_versions_and_readers_never_see_half_a_boundary(redis_url):
    async def scenario():
        writer_store, reader_store = fresh_store(redis_url), None
        reader_store = BoundaryStore(redis_url, prefix=writer_store.prefix)
        rng = np.random.default_rng(1)
        normals = rng.standard_normal((40, 1, 512))
        seen_incomplete = []
        stop = asyncio.Event()

        async def reader():
            while not stop.is_set():
                try:
                    b = await reader_store.get("m", 1, "smile")
                except BoundaryNotFound:
                    await asyncio.sleep(0)
                    continue
                # Metadata and normal always belong together: the normal's first entry is recorded in meta.
                if b.normal is None or b.normal.shape != (1, 512) or b.meta["first"] != b.normal[0, 0]:
                    seen_incomplete.append(b.version)
                await asyncio.sleep(0)

        readers = [asyncio.create_task(reader()) for _ in range(3)]
        results = await asyncio.gather(*(writer_store.put(meta("smile", model="m", first=float(n[0, 0])), n)
                                         for n in normals))
        stop.set()
        await asyncio.gather(*readers)
        assert sorted(b.version for b, _ in results) == list(range(1, 41))
        assert not seen_incomplete
        for b, _ in results:
            again = await writer_store.get("m", 1, "smile", b.version)
            np.testing.assert_array_equal(again.normal, b.normal)
        await writer_store.close()
        await reader_store.close()

    run(scenario())


def test_request_id_makes_a_write_idempotent(redis_url):
    async def scenario():
        store = fresh_store(redis_url)
        n = np.ones((1, 8))
        first, created = await store.put(meta("yaw"), n, request_id="r-1")
        again, created_again = await store.put(meta("yaw"), 2 * n, request_id="r-1")
        assert created and not created_again and again.version == first.version
        np.testing.assert_array_equal(again.normal, n)
        assert await store.latest_version("dcgan-digiface-64", 1, "yaw") == 1
        await store.close()

    run(scenario())


def test_names_are_validated():
    assert check_name("attribute", "gender|age") == "gender|age"
    for bad in ("", "a/b", "a:b", "x" * 200, "-x"):
        with pytest.raises(ValueError, match="not a valid name"):
            check_name("model", bad)
    with pytest.raises(ValueError, match="not a valid name"):
        check_name("attribute", "gender||age")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_boundaries_survive_a_redis_restart_through_the_aof(tmp_path, how):
    """AOF (appendonly yes, appendfsync always): a clean stop and even a crash right after a write lose nothing."""
    port = free_port()
    server = RedisProcess.start(port, tmp_path)
    normal = np.random.default_rng(2).standard_normal((1, 100))

    async def write():
        store = BoundaryStore(server.url)
        assert (await store.persistence())["appendonly"] == "yes"
        for _ in range(3):
            await store.put(meta("age", seed=7), normal)
        await store.close()

    run(write())
    if how == "SIGKILL":
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    else:
        server.stop()
    assert (tmp_path / "appendonlydir").is_dir()
    server = RedisProcess.start(port, tmp_path)
    try:
        async def read():
            store = BoundaryStore(server.url)
            b = await store.get("dcgan-digiface-64", 1, "age")
            listed = await store.list(all_versions=True)
            await store.close()
            return b, listed

        b, listed = run(read())
        assert b.version == 3 and b.meta["seed"] == 7
        np.testing.assert_array_equal(b.normal, normal)
        assert len(listed) == 3
    finally:
        server.stop()
