"""Faults on real processes: a generator replica killed (-9) under load behind the editor, the scorer down, and
Redis killed and restarted while a training job runs. Nothing hangs past its deadline, nothing stored is lost."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2, editor_pb2, editor_pb2_grpc
from services.cluster import RedisProcess, check_health, free_port
from services.common import errors

REFERENCE = Path(os.environ["IFGAN_REFERENCE_BOUNDARIES"])  # set by tests/conftest.py
MODEL = "dcgan-digiface-64"
Z = common_pb2.LATENT_SPACE_Z
C = grpc.StatusCode
TERMINAL = (boundary_pb2.JOB_STATE_SUCCEEDED, boundary_pb2.JOB_STATE_FAILED, boundary_pb2.JOB_STATE_CANCELLED)


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float64))
    return buf.getvalue()


@pytest.fixture(scope="module")
def redis_proc(tmp_path_factory):
    """A Redis of this module only (it gets killed), AOF with appendfsync always like the cluster's."""
    server = RedisProcess.start(free_port(), tmp_path_factory.mktemp("fault-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faulty(launch_service, cluster, redis_proc, tmp_path_factory):
    """Two generator replicas; a boundary service on them (and the shared scorer); an editor balancing over both
    replicas whose scorer and inversion addresses lead nowhere (the scorer is 'down')."""
    nowhere = f"127.0.0.1:{free_port()}"
    g1 = launch_service("generator", "--drain-seconds", "0")
    g2 = launch_service("generator", "--drain-seconds", "0")
    replicas = f"{g1.address},{g2.address}"
    # No shipped boundaries: the Redis fault test counts exactly the versions it stores.
    boundary = launch_service("boundary", "--redis-url", redis_proc.url, "--data-dir",
                              str(tmp_path_factory.mktemp("fault-data")), "--drain-seconds", "0",
                              "--no-bundled-boundaries",
                              env={"IFGAN_GENERATOR_ADDRESS": replicas,
                                   "IFGAN_SCORER_ADDRESS": cluster.services["scorer"].address})
    editor = launch_service("editor", "--drain-seconds", "0", "--chunk-size", "4",
                            env={"IFGAN_GENERATOR_ADDRESS": replicas, "IFGAN_BOUNDARY_ADDRESS": boundary.address,
                                 "IFGAN_SCORER_ADDRESS": nowhere, "IFGAN_INVERSION_ADDRESS": nowhere})
    with grpc.insecure_channel(boundary.address) as channel:
        boundary_pb2_grpc.BoundaryServiceStub(channel).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
            model=MODEL, attribute="fault-age", space=Z, npy=npy(np.random.default_rng(5).standard_normal((1, 100)))),
            timeout=30)
    return {"g1": g1, "g2": g2, "boundary": boundary, "editor": editor, "nowhere": nowhere}


def edit_request(seed: int, steps: int = 8, rescore: bool = False) -> editor_pb2.EditRequest:
    return editor_pb2.EditRequest(seed=seed, rescore=rescore, format=common_pb2.IMAGE_FORMAT_RAW, edits=[
        editor_pb2.AttributeEdit(attribute="fault-age", start=-3, end=3, steps=steps)])


# -- the scorer down ------------------------------------------------------------------------------------------

def test_scorer_down_editor_answers_unavailable_with_retry_information_in_time(faulty):
    with grpc.insecure_channel(faulty["editor"].address) as channel:
        stub = editor_pb2_grpc.EditorServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Edit(edit_request(1, rescore=True), timeout=30))
        took = time.monotonic() - started
        assert err.value.code() == C.UNAVAILABLE and "scorer" in err.value.details(), err.value.details()
        assert errors.status_details(err.value).get("retry_after", 0) > 0
        assert took < 15
        # A short deadline is kept even while the editor retries.
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Edit(edit_request(2, rescore=True), timeout=1.5))
        assert err.value.code() in (C.DEADLINE_EXCEEDED, C.UNAVAILABLE)
        assert time.monotonic() - started < 3.0
        # What does not need the scorer still works, and the catalog says what is missing.
        assert len(list(stub.Edit(edit_request(3), timeout=60))) == 8
        catalog = stub.GetCatalog(editor_pb2.GetCatalogRequest(), timeout=30)
        assert catalog.models and any("scorer" in w for w in catalog.warnings)
    assert check_health(faulty["editor"].address) == "SERVING"


def test_scorer_down_training_answers_unavailable_with_retry_information_in_time(launch_service, redis_url, faulty,
                                                                                 tmp_path):
    boundary = launch_service("boundary", "--redis-url", redis_url, "--redis-prefix", f"sd{uuid.uuid4().hex[:6]}:",
                              "--data-dir", str(tmp_path), "--drain-seconds", "0",
                              env={"IFGAN_GENERATOR_ADDRESS": faulty["g2"].address,
                                   "IFGAN_SCORER_ADDRESS": faulty["nowhere"]})
    request = boundary_pb2.TrainBoundariesRequest(attributes=["gender"], num_samples=1000)
    with grpc.insecure_channel(boundary.address) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.TrainBoundaries(request, timeout=60))
        assert err.value.code() == C.UNAVAILABLE and "scorer" in err.value.details()
        assert errors.status_details(err.value).get("retry_after", 0) > 0
        assert time.monotonic() - started < 30
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.TrainBoundaries(request, timeout=2))
        assert err.value.code() in (C.DEADLINE_EXCEEDED, C.UNAVAILABLE)
        assert time.monotonic() - started < 3.5
        assert not list(tmp_path.iterdir()) or not any(tmp_path.rglob("*.npy"))
    assert check_health(boundary.address) == "SERVING"


# -- a generator replica killed under load --------------------------------------------------------------------

def test_killing_a_generator_replica_under_load_fails_no_request(faulty):
    editor, g1 = faulty["editor"], faulty["g1"]
    results, lock = [], threading.Lock()
    stop = threading.Event()
    killed_at: list[float] = []

    def client(k: int):
        with grpc.insecure_channel(editor.address) as channel:
            stub = editor_pb2_grpc.EditorServiceStub(channel)
            i = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    n = len(list(stub.Edit(edit_request(1000 * k + i, steps=12), timeout=60)))
                    outcome = ("OK", n)
                except grpc.RpcError as e:
                    outcome = (e.code().name, e.details())
                with lock:
                    results.append((started, time.monotonic(), *outcome))
                i += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(4)
    os.kill(g1.pid, signal.SIGKILL)
    killed_at.append(time.monotonic())
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(90)
    assert g1.proc.wait(10) == -signal.SIGKILL
    failed = [r for r in results if r[2] != "OK"]
    assert not failed, failed[:5]
    assert all(r[3] == 12 for r in results)
    in_flight = [r for r in results if r[0] < killed_at[0] < r[1]]
    after = [r for r in results if r[0] > killed_at[0]]
    assert in_flight and len(after) >= 6, (len(in_flight), len(after))
    # Calls in flight on the dead replica were redone on the other one by the channel's retry policy (the
    # service config retries idempotent methods on UNAVAILABLE), so none of them reached a client as an error.
    print(f"\n{len(results)} Edit calls, {len(in_flight)} in flight at the kill, {len(after)} after it, 0 failed")
    assert check_health(editor.address) == "SERVING"


# -- Redis killed and restarted during training ---------------------------------------------------------------

def _stored(stub) -> dict:
    listed = stub.ListBoundaries(boundary_pb2.ListBoundariesRequest(all_versions=True), timeout=30).boundaries
    return {(b.ref.model, b.ref.attribute, b.ref.space, b.ref.version):
            stub.ExportBoundary(boundary_pb2.ExportBoundaryRequest(ref=b.ref), timeout=30).npy for b in listed}


def _restart(redis_proc: RedisProcess, *, kill: bool) -> RedisProcess:
    if kill:
        redis_proc.proc.send_signal(signal.SIGKILL)
        redis_proc.proc.wait(10)
    else:
        redis_proc.stop()
    return RedisProcess.start(redis_proc.port, redis_proc.data_dir)


def test_redis_killed_mid_training_loses_no_boundary_and_the_job_goes_on(faulty, redis_proc):
    with grpc.insecure_channel(faulty["boundary"].address) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(channel)
        for name in ("stylegan_ffhq_age_boundary.npy", "stylegan_ffhq_smile_w_boundary.npy",
                     "pggan_celebahq_pose_boundary.npy", "pggan_celebahq_pose_boundary.npy"):
            stub.ImportBoundary(boundary_pb2.ImportBoundaryRequest(file_name=name, npy=(REFERENCE / name).read_bytes()),
                                timeout=30)
        before = _stored(stub)
        assert len(before) == 5
        job = stub.TrainBoundaries(boundary_pb2.TrainBoundariesRequest(attributes=["gender"], num_samples=600,
                                                                       chosen_ratio=0.05, seed=11), timeout=300)
        job_id = next(job).job_id
        for update in job:  # kill Redis -9 while the job samples (AOF with appendfsync always: nothing lost)
            if update.progress.stage not in ("queued", "starting"):
                break
        restarted = _restart(redis_proc, kill=True)
        try:
            final = None
            for update in stub.WatchJob(boundary_pb2.WatchJobRequest(job_id=job_id), timeout=300):
                final = update
            after = _stored(stub)
            for key, data in before.items():
                assert after.get(key) == data, f"boundary {key} lost or changed"
            print(f"\njob after Redis was killed and restarted: {boundary_pb2.JobState.Name(final.state)} "
                  f"{final.error}; {len(before)} boundaries intact")
            # Redis is back before the job stores its boundary: the job goes on and its boundary is stored.
            assert final.state == boundary_pb2.JOB_STATE_SUCCEEDED, final.error
            assert (MODEL, "gender", Z, 1) in after
            # Redis down while a job stores its result: the job fails with a message, the server stays up.
            restarted.proc.send_signal(signal.SIGKILL)
            restarted.proc.wait(10)
            with pytest.raises(grpc.RpcError) as err:
                stub.GetBoundary(boundary_pb2.GetBoundaryRequest(ref=common_pb2.BoundaryRef(
                    model="stylegan_ffhq", attribute="age", space=Z)), timeout=30)
            assert err.value.code() == C.UNAVAILABLE and errors.status_details(err.value).get("retry_after", 0) > 0
            states = [u for u in stub.TrainBoundaries(boundary_pb2.TrainBoundariesRequest(
                attributes=["gender"], num_samples=600, chosen_ratio=0.05, seed=11, reuse_dataset=True), timeout=120)]
            assert states[-1].state == boundary_pb2.JOB_STATE_FAILED and states[-1].error, states[-1]
            assert "redis" in states[-1].error.lower() or "connect" in states[-1].error.lower(), states[-1].error
            print(f"job while Redis is down: FAILED: {states[-1].error}")
            assert check_health(faulty["boundary"].address) == "SERVING"
        finally:
            redis_proc.proc = RedisProcess.start(redis_proc.port, redis_proc.data_dir).proc
        assert _stored(stub) == after
