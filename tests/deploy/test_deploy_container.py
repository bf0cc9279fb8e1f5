"""The service image, built and run with podman: every service's --help, each container SERVING from the host,
and docker-compose.yml brought up with podman-compose answering an Edit through the editor's published port.

Marked `container`; runs where podman is installed (make setup installs it). The first run builds the image
offline (deploy/docker/podman_build.py: debootstrapped base, host wheelhouse); later runs reuse the cached base,
wheelhouse and dependency layers and only copy the sources again.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import time
import uuid

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interfacegan import Client
from services.cluster import SERVICES, free_port

pytestmark = [pytest.mark.container, pytest.mark.timeout(3600)]

TOKEN = uuid.uuid4().hex
#: Seconds a container gets to load its models and say SERVING (2 shared cores, several loading at once).
START_SECONDS = 300


@pytest.fixture(scope="module")
def builder(support):
    for tool in ("podman", "debootstrap", "podman-compose"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup installs it from Debian)")
    spec = importlib.util.spec_from_file_location("podman_build", support.DOCKER / "podman_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cache(builder):
    return builder.cache_dir()


@pytest.fixture(scope="module")
def image(builder, cache):
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731 - progress on a long build
    return builder.build("cpu", tag=f"localhost/interfacegan/ifgan:test-cpu", cache=cache, log=log)


def podman(builder, cache, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=builder.podman_env(cache), capture_output=True, text=True,
                          timeout=timeout, check=check)


def health(address: str, port_timeout: float = 3.0) -> str:
    channel = grpc.insecure_channel(address)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=port_timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as e:
        return e.code().name
    finally:
        channel.close()


def wait_serving(address: str, what: str, logs) -> None:
    deadline = time.monotonic() + START_SECONDS
    status = ""
    while time.monotonic() < deadline:
        status = health(address)
        if status == "SERVING":
            return
        time.sleep(2)
    pytest.fail(f"{what} at {address} is {status} after {START_SECONDS} s; its log:\n{logs()[-4000:]}")


def test_every_service_answers_help_through_the_entrypoint(builder, cache, image):
    for name in (*SERVICES, "studio"):
        result = podman(builder, cache, "run", "--rm", image, name, "--help")
        assert result.returncode == 0, result.stderr
        assert f"python -m services.{name}" in result.stdout and "--health-port" in result.stdout
    usage = podman(builder, cache, "run", "--rm", image, check=False)
    assert usage.returncode == 0 and "generator|scorer|boundary|inversion|editor|studio" in usage.stderr
    # The SDK's CLI is installed too, under its own name: it no longer shadows the entry point.
    cli = podman(builder, cache, "run", "--rm", "--entrypoint", "ifgan", image, "--help")
    assert cli.returncode == 0 and "usage: ifgan" in cli.stdout
    user = podman(builder, cache, "run", "--rm", "--entrypoint", "id", image, "-u")
    assert user.stdout.strip() == "10001"


def test_each_service_container_serves_from_the_host(builder, cache, image, redis_url):
    """Every service in its own hardened container (read-only root, no capabilities, host network), wired
    to the others and to a real redis-server on the host: health SERVING on the serving and liveness ports."""
    ports = {name: free_port() for name in SERVICES}
    health_ports = {name: free_port() for name in SERVICES}
    run = uuid.uuid4().hex[:8]
    peers = {f"IFGAN_{n.upper()}_ADDRESS": f"127.0.0.1:{ports[n]}" for n in ("generator", "scorer", "boundary",
                                                                             "inversion")}
    names = []
    try:
        for name in SERVICES:
            env = {"IFGAN_PORT": ports[name], "IFGAN_HEALTH_PORT": health_ports[name], "IFGAN_AUTH_TOKEN": TOKEN,
                   "IFGAN_HOST": "127.0.0.1", "IFGAN_REDIS_URL": redis_url, "IFGAN_DATA_DIR": "/tmp/data",
                   "OMP_NUM_THREADS": "1", **peers}
            args = [f"--env={k}={v}" for k, v in env.items()]
            container = f"ifgan-test-{name}-{run}"
            names.append(container)
            podman(builder, cache, "run", "-d", "--name", container, "--network", "host", "--read-only",
                   "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *args, image, name)
        for name, container in zip(SERVICES, names):
            logs = lambda c=container: podman(builder, cache, "logs", c, check=False).stderr  # noqa: E731
            wait_serving(f"127.0.0.1:{ports[name]}", name, logs)
            assert health(f"127.0.0.1:{health_ports[name]}") == "SERVING", name
            print(f"{name}: SERVING on {ports[name]} (liveness {health_ports[name]})", file=sys.stderr)
        # The image's own healthcheck command, run inside the container, agrees.
        probe = podman(builder, cache, "exec", names[0], "ifgan-healthprobe", check=False)
        assert probe.returncode == 0 and "SERVING" in probe.stdout, probe.stdout + probe.stderr
    finally:
        for container in names:
            podman(builder, cache, "rm", "-f", "-t", "5", container, check=False)


def test_compose_file_runs_the_cluster_and_edits_through_the_published_port(builder, cache, image, support):
    redis_image = builder.ensure_redis_image(cache, builder.base_tag())
    project = f"ifgantest{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**builder.podman_env(cache), "IFGAN_AUTH_TOKEN": TOKEN, "IFGAN_IMAGE": image,
           "IFGAN_REDIS_IMAGE": redis_image, "IFGAN_EDITOR_PUBLISH": f"127.0.0.1:{port}",
           "IFGAN_STUDIO_PUBLISH": f"127.0.0.1:{free_port()}"}
    compose = ["podman-compose", "-p", project, "-f", str(support.ROOT / "docker-compose.yml")]

    def logs() -> str:
        out = subprocess.run(["podman", "logs", "--tail", "40", f"{project}_editor_1"], env=env, capture_output=True,
                             text=True, timeout=60)
        return out.stdout + out.stderr
    try:
        up = subprocess.run([*compose, "up", "-d", "--no-build"], env=env, capture_output=True, text=True,
                            timeout=600, cwd=support.ROOT)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        address = f"127.0.0.1:{port}"
        wait_serving(address, "editor (published port)", logs)
        # podman-compose starts services in order without waiting for health: wait here until every
        # container's own healthcheck command says SERVING.
        ps = subprocess.run(["podman", "ps", "--filter", f"label=io.podman.compose.project={project}",
                             "--format", "{{.Names}}"], env=env, capture_output=True, text=True, timeout=60)
        running = ps.stdout.split()
        deadline = time.monotonic() + START_SECONDS
        for name in [n for n in running if "_redis_" not in n]:
            while True:
                probe = subprocess.run(["podman", "exec", name, "ifgan-healthprobe"], env=env, capture_output=True,
                                       text=True, timeout=60)
                if probe.returncode == 0:
                    break
                assert time.monotonic() < deadline, f"{name}: {probe.stdout} {probe.stderr}"
                time.sleep(3)
        with Client(address, token=TOKEN, timeout=120) as client:
            v = np.random.default_rng(7).standard_normal((1, 100))
            buf = io.BytesIO()
            np.save(buf, v / np.linalg.norm(v))
            attribute = f"compose{uuid.uuid4().hex[:6]}"
            client.import_boundary(buf.getvalue(), model="dcgan-digiface-64", attribute=attribute, space="Z")
            result = client.edit(seed=3, edits=f"{attribute}:-2:2:3")
        images = [frame.image for frame in result.frames]
        assert len(images) == 3 and all(im.ndim == 3 and im.shape[2] == 3 for im in images)
        assert not np.array_equal(images[0], images[-1]), "the edit moved the face"
        assert sum(n.startswith(f"{project}_generator_") for n in running) == 3, running  # the replicas
        print(f"compose: {len(running)} containers; Edit of 3 frames through {address}", file=sys.stderr)
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "5"], env=env, capture_output=True, timeout=300,
                       cwd=support.ROOT)
        # podman-compose 1.0 leaves the network, and a container caught restarting, behind.
        left = subprocess.run(["podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={project}"],
                              env=env, capture_output=True, text=True, timeout=60).stdout.split()
        if left:
            subprocess.run(["podman", "rm", "-f", "-t", "2", *left], env=env, capture_output=True, timeout=120)
        subprocess.run(["podman", "network", "rm", "-f", f"{project}_default"], env=env, capture_output=True,
                       timeout=60)
        subprocess.run(["podman", "volume", "rm", "-f", f"{project}_redis-data", f"{project}_boundary-data"],
                       env=env, capture_output=True, timeout=60)
