"""Priority lanes through a real generator process: the ifgan-priority metadata, per-lane limits and metrics."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import numpy as np
import pytest

from interfacegan import codec
from interfacegan.v1 import common_pb2, editor_pb2, editor_pb2_grpc, generator_pb2, generator_pb2_grpc
from services.cluster import free_port
from services.common.batching import LANE_METADATA

RAW = common_pb2.IMAGE_FORMAT_RAW


@pytest.fixture(scope="module")
def server(launch_service):
    metrics_port = free_port()
    proc = launch_service("generator", "--metrics-port", str(metrics_port), "--log-format", "text",
                          "--max-batch-size", "4", "--bulk-max-queue-size", "2", "--prefetch-batches", "1")
    proc.metrics_port = metrics_port
    yield proc
    proc.stop()


def metric(server, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    wanted = {"queue": "dcgan-digiface-64", **labels}
    total = 0.0
    for found, value in re.findall(rf"^{re.escape(name)}\{{([^}}]*)\}} ([0-9.e+-]+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found))
        if all(have.get(k) == v for k, v in wanted.items()):
            total += float(value)
    return total


def request(codes: np.ndarray) -> generator_pb2.SynthesizeRequest:
    return generator_pb2.SynthesizeRequest(codes=codec.latents(codes, common_pb2.LATENT_SPACE_Z), format=RAW)


def test_lanes_from_metadata_with_their_own_limits_and_metrics(server):
    rng = np.random.default_rng(0)
    bulk_codes = [rng.standard_normal((48, 100)).astype(np.float32) for _ in range(8)]
    lone = rng.standard_normal((1, 100)).astype(np.float32)

    async def main():
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = generator_pb2_grpc.GeneratorServiceStub(channel)

            async def bulk(codes):
                try:
                    replies = [r async for r in stub.Synthesize(request(codes), timeout=120,
                                                                metadata=((LANE_METADATA, "bulk"),))]
                    return sum(len(r.images) for r in replies)
                except grpc.aio.AioRpcError as e:
                    return e.code()

            loads = [asyncio.create_task(bulk(c)) for c in bulk_codes]
            await asyncio.sleep(0.3)
            # No metadata: the generator's default lane (interactive), admitted past the full bulk lane.
            replies = [r async for r in stub.Synthesize(request(lone), timeout=60)]
            outcomes = await asyncio.gather(*loads)
            return replies, outcomes

    replies, outcomes = asyncio.run(main())
    assert sum(len(r.images) for r in replies) == 1
    served = [o for o in outcomes if o == 48]
    refused = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert served and refused and len(served) + len(refused) == len(outcomes), outcomes
    assert metric(server, "ifgan_batch_rejected_total", lane="bulk", reason="queue_full") == len(refused)
    assert metric(server, "ifgan_batch_rejected_total", lane="interactive", reason="queue_full") == 0
    assert metric(server, "ifgan_batch_queue_seconds_count", lane="bulk") >= len(served)
    assert metric(server, "ifgan_batch_queue_seconds_count", lane="interactive") >= 1
    assert metric(server, "ifgan_batch_lane_queue_depth", lane="bulk") == 0
    assert metric(server, "ifgan_batch_queue_depth") == 0


def test_an_unknown_lane_is_refused_with_the_accepted_ones(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Synthesize(request(np.zeros((1, 100), np.float32)), timeout=30,
                                 metadata=((LANE_METADATA, "urgent"),)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "interactive, bulk" in err.value.details()
        # The server stays up and serves the next call.
        assert len(list(stub.Synthesize(request(np.zeros((1, 100), np.float32)), timeout=30))) == 1


def test_the_lane_travels_from_an_edit_through_the_editor_to_the_generator(server, launch_service, redis_url,
                                                                           tmp_path):
    import io

    from interfacegan import Client
    from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc

    boundary = launch_service("boundary", "--redis-url", redis_url, "--redis-prefix", "lanes:", "--data-dir",
                              str(tmp_path / "data"), "--generator-address", server.address)
    editor = launch_service("editor", "--generator-address", server.address, "--boundary-address", boundary.address,
                            "--scorer-address", "127.0.0.1:1", "--inversion-address", "127.0.0.1:1")
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(3).standard_normal((1, 100)))
    with grpc.insecure_channel(boundary.address) as channel:
        boundary_pb2_grpc.BoundaryServiceStub(channel).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
            model="dcgan-digiface-64", attribute="lanes-test", space=common_pb2.LATENT_SPACE_Z, npy=buf.getvalue()),
            timeout=30)

    def queued(lane: str) -> float:
        return metric(server, "ifgan_batch_queue_seconds_count", lane=lane)

    with Client(editor.address) as client:
        before = queued("bulk"), queued("interactive")
        client.edit(seed=1, edits=["lanes-test:-1:1:2"])  # Edit's default lane
        assert (queued("bulk"), queued("interactive") - before[1]) == (before[0], 1)
        client.edit(seed=2, edits=["lanes-test:-1:1:2"], priority="bulk")  # as the catalog sends its edits
        assert (queued("bulk") - before[0], queued("interactive") - before[1]) == (1, 1)
    with grpc.insecure_channel(editor.address) as channel:  # a lane the servers do not know: refused at the gateway
        request = editor_pb2.EditRequest(seed=3, edits=[editor_pb2.AttributeEdit(attribute="lanes-test", start=-1,
                                                                                 end=1, steps=2)])
        with pytest.raises(grpc.RpcError) as err:
            list(editor_pb2_grpc.EditorServiceStub(channel).Edit(request, timeout=30,
                                                                 metadata=((LANE_METADATA, "fast"),)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "interactive, bulk" in err.value.details()
