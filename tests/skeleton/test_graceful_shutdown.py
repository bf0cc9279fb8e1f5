"""SIGTERM to a real service process: the in-flight call finishes, then the process exits cleanly."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np

from interfacegan import codec
from interfacegan.v1 import common_pb2, generator_pb2, generator_pb2_grpc


def test_sigterm_lets_an_in_flight_synthesize_call_finish(launch_service):
    proc = launch_service("generator", "--grace-seconds", "60", "--drain-seconds", "0.2")
    count = 2000
    codes = np.random.default_rng(0).standard_normal((count, 100)).astype(np.float32)
    request = generator_pb2.SynthesizeRequest(request_id="sigterm-test", format=common_pb2.IMAGE_FORMAT_RAW,
                                              codes=codec.latents(codes, common_pb2.LATENT_SPACE_Z))
    received: list[int] = []
    first = threading.Event()
    with grpc.insecure_channel(proc.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stream = generator_pb2_grpc.GeneratorServiceStub(channel).Synthesize(request, timeout=120)

        def consume():
            for reply in stream:
                assert reply.offset == sum(received)  # in order, contiguous
                received.append(len(reply.images))
                first.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first.wait(60), "no image arrived"
        assert sum(received) < count, "the call finished before SIGTERM; make it longer"
        sent_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        reader.join(120)
    assert sum(received) == count
    assert proc.proc.wait(60) == 0
    assert time.monotonic() - sent_at < 60
    log = proc.log_path.read_text()
    assert '"shutting down"' in log and '"stopped"' in log
