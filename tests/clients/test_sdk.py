"""The Python SDK against the real cluster: sync and asyncio clients, numpy and PIL results, grids, boundaries
through the editor, typed errors, bearer token and TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from PIL import Image

from interfacegan import ApiError, ChannelConfig, Client, EditSpec
from interfacegan.aio import AsyncClient
from services.common import assets

REFERENCE = Path(os.environ["IFGAN_REFERENCE_BOUNDARIES"])  # set by tests/conftest.py
P = f"sdk{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.services["editor"].address) as c:
        rng = np.random.default_rng(0)
        for name in ("a", "b"):
            v = rng.standard_normal(100)
            c.import_boundary(_npy(v / np.linalg.norm(v)), model="dcgan-digiface-64", attribute=f"{P}-{name}",
                              space="Z")
        yield c


def _npy(array) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float64).reshape(1, -1))
    return buf.getvalue()


def test_edit_returns_numpy_frames_in_order_and_a_grid(client):
    seen = []
    result = client.edit(seed=4, edits=[f"{P}-a:-2:2:5", EditSpec(f"{P}-b", -1, 1, 3, hold=(f"{P}-a",))],
                         rescore=True, include_original=True, on_frame=lambda f: seen.append(f.step_index))
    assert len(result.frames) == 9 == len(seen) and result.request_id
    assert result.original.edit_index == -1 and result.original.image.shape == (64, 64, 3)
    first = result.edit(0)
    assert [f.distance for f in first] == pytest.approx([-2, -1, 0, 1, 2])
    assert np.array_equal(first[2].image, result.original.image)
    assert first[0].image.dtype == np.uint8 and first[0].code.shape == (1, 100)
    assert {"gender", "age", "yaw", "smile"} <= set(first[0].scores)
    assert result.edit(1)[0].boundary.startswith(f"{P}-b|{P}-a v")
    grid = result.grid(score="age")
    assert isinstance(grid, Image.Image) and grid.width > 6 * 128 and grid.height > 2 * 128
    # The code of a frame, edited again at distance 0, gives the same image.
    again = client.edit(code=first[4].code, edits=[f"{P}-a:0"], output="pil")
    assert isinstance(again.frames[0].image, Image.Image)
    assert np.abs(np.asarray(again.frames[0].image, int) - first[4].image.astype(int)).max() <= 1


def test_edit_a_photo_from_a_path(client):
    result = client.edit(photo=assets.path_of("grace_hopper.jpg"), edits=[f"{P}-a:2"], blend=True,
                         include_original=True, inversion_steps=20, timeout=180)
    assert result.inversion_psnr > 10 and result.original.image.shape == (600, 512, 3)
    assert result.frames[-1].image.shape == (600, 512, 3)


def test_boundaries_through_the_editor(client):
    name = "stylegan_ffhq_age_w_boundary.npy"
    info = client.import_boundary(REFERENCE / name)
    assert (info.ref.model, info.ref.attribute, info.origin) == ("stylegan_ffhq", "age", "imported")
    file_name, data = client.export_boundary("age", model="stylegan_ffhq", space="W", version=info.ref.version)
    assert file_name == name and np.array_equal(np.load(__import__("io").BytesIO(data)), np.load(REFERENCE / name))
    listed = client.list_boundaries(model="dcgan-digiface-64", attribute=f"{P}-a")
    assert [b.ref.attribute for b in listed] == [f"{P}-a"]
    meta, normal = client.get_boundary(f"{P}-a")
    assert normal.shape == (1, 100) and np.linalg.norm(normal) == pytest.approx(1, abs=1e-6)
    derived = client.condition_boundary(f"{P}-a", [f"{P}-b"])
    assert derived.ref.attribute == f"{P}-a|{P}-b" and [p.attribute for p in derived.parents] == [f"{P}-a", f"{P}-b"]
    analysis = client.analyze_boundaries([f"{P}-a", f"{P}-b", f"{P}-a|{P}-b@{derived.ref.version}"])
    assert [r.attribute for r in analysis.labels] == [f"{P}-a", f"{P}-b", f"{P}-a|{P}-b"]
    assert analysis.cosine_image.encoded[:4] == b"\x89PNG"
    cos = np.frombuffer(analysis.cosine.data, "<f4").reshape(3, 3)
    assert abs(cos[1, 2]) < 1e-5 and cos[0, 0] == pytest.approx(1)


def test_errors_are_typed(client):
    with pytest.raises(ApiError) as err:
        client.edit(seed=1, edits=[f"{P}-missing"], request_id="my-id")
    e = err.value
    assert e.code == grpc.StatusCode.NOT_FOUND and e.method == "Edit" and e.request_id == "my-id"
    assert f"{P}-a" in e.details  # says what is stored
    with pytest.raises(ApiError) as err:
        client.get_boundary(f"{P}-missing")
    assert err.value.code == grpc.StatusCode.NOT_FOUND and err.value.method == "GetBoundary"
    with pytest.raises(ValueError):
        client.edit(seed=1, code=np.zeros(100), edits=["x"])


def test_async_client(cluster):
    async def main():
        async with AsyncClient(cluster.services["editor"].address) as c:
            results = await asyncio.gather(*(c.edit(seed=s, edits=[f"{P}-a:-1:1:3"], rescore=True) for s in range(3)))
            frames = [f async for f in c.edit_stream(seed=9, edits=f"{P}-b:1")]
            listed = await c.list_boundaries(attribute=f"{P}-b")
            info, normal = await c.get_boundary(f"{P}-b")
            with pytest.raises(ApiError) as err:
                await c.edit(seed=1, edits=[f"{P}-missing"])
            return results, frames, listed, normal, err.value
    results, frames, listed, normal, error = asyncio.run(main())
    assert [len(r.frames) for r in results] == [3, 3, 3] and results[0].frames[0].scores
    assert not np.array_equal(results[0].frames[0].image, results[1].frames[0].image)
    assert len(frames) == 1 and frames[0].distance == pytest.approx(1)
    assert len(listed) == 1 and normal.shape == (1, 100) and error.code == grpc.StatusCode.NOT_FOUND


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ifgan-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("editor.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_bearer_token_and_tls(cluster, launch_service, tmp_path):
    cert, key = _self_signed(tmp_path)
    token = uuid.uuid4().hex
    env = {f"IFGAN_{n.upper()}_ADDRESS": cluster.services[n].address
           for n in ("generator", "scorer", "boundary", "inversion")}
    editor = launch_service("editor", "--tls-cert", str(cert), "--tls-key", str(key), "--drain-seconds", "0",
                            env={**env, "IFGAN_AUTH_TOKEN": token}, wait=False)
    config = ChannelConfig(tls=True, root_certificates=cert, server_name="editor.test")
    deadline = time.monotonic() + 180
    with Client(editor.address, token=token, config=config) as c:
        while True:  # health is plaintext-free here: wait until the catalog answers
            try:
                catalog = c.catalog()
                break
            except ApiError as e:
                assert e.code in (grpc.StatusCode.UNAVAILABLE,) and time.monotonic() < deadline, e
                time.sleep(0.5)
        assert catalog.models
        assert len(c.edit(seed=1, edits=[f"{P}-a:1"]).frames) == 1
    with Client(editor.address, config=config) as c:
        with pytest.raises(ApiError) as err:
            c.catalog()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(editor.address, token=token) as c:  # plaintext against a TLS server
        with pytest.raises(ApiError) as err:
            c.catalog(timeout=5)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
