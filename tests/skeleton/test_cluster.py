"""The local cluster: every service healthy over gRPC, reflection, metrics, clean up/down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.cluster import FRONTENDS, SERVICES, ServiceProcess, check_health

V1_SERVICES = {f"interfacegan.v1.{n.capitalize()}Service" for n in SERVICES}


def test_every_service_reports_serving(cluster):
    for name, proc in cluster.services.items():
        with grpc.insecure_channel(proc.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", f"interfacegan.v1.{name.capitalize()}Service"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (name, service)
            with pytest.raises(grpc.RpcError) as err:
                stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5)
        return {s.name for r in replies for s in r.list_services_response.service}


def test_reflection_lists_all_five_v1_services(cluster):
    seen = set()
    for name, proc in cluster.services.items():
        services = _reflected_services(proc.address)
        assert f"interfacegan.v1.{name.capitalize()}Service" in services
        assert "grpc.health.v1.Health" in services
        seen |= services & V1_SERVICES
    assert seen == V1_SERVICES


def test_reflection_serves_file_descriptors_for_other_languages(cluster):
    """grpcurl and other-language clients need the full descriptors, imports included."""
    with grpc.insecure_channel(cluster.services["editor"].address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="interfacegan.v1.EditorService")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    assert reply.file_descriptor_response.file_descriptor_proto


def test_metrics_endpoint_counts_requests(launch_service):
    from services.cluster import free_port

    metrics_port = free_port()
    proc = launch_service("boundary", "--metrics-port", str(metrics_port))
    from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc

    with grpc.insecure_channel(proc.address) as channel:
        try:
            boundary_pb2_grpc.BoundaryServiceStub(channel).ListBoundaries(boundary_pb2.ListBoundariesRequest(), timeout=5)
        except grpc.RpcError:
            pass  # any status is counted
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    counted = [k for k in samples if k[0] == "ifgan_requests_total" and ("method", "ListBoundaries") in k[1]
               and ("service", "boundary") in k[1]]
    assert counted and samples[counted[0]] >= 1
    assert any(k[0] == "ifgan_request_seconds_bucket" and ("method", "ListBoundaries") in k[1] for k in samples)


def test_cluster_command_up_status_down_leaves_no_process(tmp_path, models_dir):
    env = {**os.environ, "IFGAN_MODELS_DIR": str(models_dir)}
    cmd = [sys.executable, "-m", "services.cluster"]
    up = subprocess.run([*cmd, "up", "--detach", "--free-ports", "--dir", str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((tmp_path / "cluster.json").read_text())
    pids = [info["pid"] for info in state["services"].values()] + [state["redis"]["pid"]]
    try:
        status = subprocess.run([*cmd, "status", "--dir", str(tmp_path)], env=env, capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("SERVING") == len(state["services"]) == len(SERVICES) + len(FRONTENDS)
        for name in SERVICES:
            assert (tmp_path / "logs" / f"{name}.log").stat().st_size > 0
    finally:
        down = subprocess.run([*cmd, "down", "--dir", str(tmp_path)], env=env, capture_output=True, text=True,
                              timeout=120)
    assert down.returncode == 0, down.stderr
    time.sleep(0.2)
    for pid in pids:
        assert not _alive(pid), f"process {pid} survived `down`"


def test_cluster_foreground_ctrl_c_stops_everything(tmp_path, models_dir):
    env = {**os.environ, "IFGAN_MODELS_DIR": str(models_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "services.cluster", "up", "--free-ports", "--dir", str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line:
                break
        else:
            pytest.fail("cluster did not come up:\n" + "".join(lines))
        state = json.loads((tmp_path / "cluster.json").read_text())
        pids = [i["pid"] for i in state["services"].values()] + [state["redis"]["pid"]]
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        assert proc.wait(120) == 0
    finally:
        proc.kill()
    time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_health_unreachable_when_nothing_listens():
    from services.cluster import free_port

    assert check_health(f"127.0.0.1:{free_port()}", timeout=0.5) == "UNREACHABLE"
