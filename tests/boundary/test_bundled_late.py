"""A boundary service that started while Redis was down stores the shipped boundaries once Redis comes up."""

from __future__ import annotations

import time

import grpc

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc
from services.cluster import RedisProcess, free_port

SHIPPED = {"gender", "age", "yaw", "smile", "gender|age"}


def test_bundled_boundaries_arrive_when_redis_comes_up_after_the_service(launch_service, tmp_path):
    port = free_port()
    boundary = launch_service("boundary", "--redis-url", f"redis://127.0.0.1:{port}/0")
    redis = None
    try:
        with grpc.insecure_channel(boundary.address) as channel:
            stub = boundary_pb2_grpc.BoundaryServiceStub(channel)
            try:
                stub.ListBoundaries(boundary_pb2.ListBoundariesRequest(), timeout=10)
                raise AssertionError("ListBoundaries answered with no Redis behind it")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
            redis = RedisProcess.start(port, tmp_path / "redis")
            deadline, listed = time.monotonic() + 60, []
            while time.monotonic() < deadline:
                try:
                    listed = stub.ListBoundaries(boundary_pb2.ListBoundariesRequest(), timeout=10).boundaries
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE
                if {b.ref.attribute for b in listed} == SHIPPED:
                    break
                time.sleep(0.5)
            assert {b.ref.attribute for b in listed} == SHIPPED and {b.origin for b in listed} == {"bundled"}
    finally:
        if redis is not None:
            redis.stop()
