"""Priority lanes through a real generator process: the ifgan-priority metadata, per-lane limits and metrics."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import grpc
import numpy as np
import pytest

from interfacegan import codec
from interfacegan.v1 import common_pb2, generator_pb2, generator_pb2_grpc
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
