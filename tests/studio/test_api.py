"""The studio's page API on the real cluster: sources, slider moves that add up, holds, grids, photos once per
content, limits with clear messages, token access, security headers, health, info and metrics."""

from __future__ import annotations

import base64
import io
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, common_pb2, studio_pb2, studio_pb2_grpc
from services.cluster import free_port
from services.common import assets

from .conftest import call

TOKEN = "page-token-for-tests"


def pixels(data_url: str) -> np.ndarray:
    head, payload = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"), dtype=np.int16)


def score(reply: dict, attribute: str) -> float:
    (found,) = [s for s in reply["scores"] if s["attribute"] == attribute]
    assert found["valid"]
    return found["value"]


def edit(url: str, values: dict, active: str, **extra) -> dict:
    status, reply, _ = call(url + "api/edit", {"source": {"seed": 3}, "values": values, "active": active, **extra})
    assert status == 200, reply
    return reply


@pytest.fixture(scope="module")
def guarded(studio, launch_service):
    """A second studio on the same editor: a page token, tiny upload limits, metrics on a port."""
    metrics_port = free_port()
    proc = launch_service("studio", "--page-token", TOKEN, "--max-upload-mb", "0.2", "--max-upload-megapixels",
                          "0.05", "--metrics-port", str(metrics_port), "--http-port", "0",
                          env={"IFGAN_EDITOR_ADDRESS": studio["editor"]})
    with grpc.insecure_channel(proc.address) as channel:
        info = studio_pb2_grpc.StudioServiceStub(channel).GetStudioInfo(studio_pb2.GetStudioInfoRequest(), timeout=10)
    return {"url": info.url, "info": info, "metrics_port": metrics_port, "proc": proc}


def test_catalog_has_a_slider_per_boundary_with_its_metadata(studio):
    status, catalog, headers = call(studio["url"] + "api/catalog")
    assert status == 200
    sliders = {s["attribute"]: s for s in catalog["sliders"]}
    assert {"yaw", "smile"} <= set(sliders)
    yaw = sliders["yaw"]
    assert yaw["min"] == -3 and yaw["max"] == 3 and yaw["space"] == "Z" and yaw["score_unit"] == "degrees"
    meta = yaw["boundary"]
    assert meta["origin"] == "trained" and int(meta["num_samples"]) == 1000 and meta["validation_accuracy"] > 0.8
    assert catalog["model"] == "dcgan-digiface-64" and catalog["spaces"] == {"Z": [100]} and catalog["layers"] == 0
    assert not any("|" in s for s in sliders)  # derived (held) boundaries are no sliders
    status, linked, _ = call(studio["url"] + "api/boundary?attribute=yaw")
    assert status == 200 and linked == meta
    status, missing, _ = call(studio["url"] + "api/boundary?attribute=nose")
    assert status == 404 and "'nose'" in missing["error"] and "yaw" in missing["error"]
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"


def test_a_slider_move_edits_the_face_the_asked_way(studio):
    url = studio["url"]
    status, original, _ = call(url + "api/source", {"seed": 3})
    assert status == 200 and original["source"] == {"seed": 3} and original["space"] == "Z"
    status, chance, _ = call(url + "api/source", {"seed": None})  # the page's "Random"
    assert status == 200 and isinstance(chance["seed"], int) and chance["source"] == {"seed": chance["seed"]}
    right = edit(url, {"yaw": 2.5, "smile": 0}, "yaw")
    left = edit(url, {"yaw": -2.5, "smile": 0}, "yaw")
    assert right["distance"] == 2.5 and right["boundary"].startswith("yaw v")
    assert score(right, "yaw") > score(original, "yaw") > score(left, "yaw")
    assert np.abs(pixels(right["image"]) - pixels(original["image"])).mean() > 2
    # Distance 0 is the unedited face.
    still = edit(url, {"yaw": 0}, "yaw")
    assert np.abs(pixels(still["image"]) - pixels(original["image"])).max() <= 1


def test_sliders_add_up_whichever_moved_last(studio):
    url = studio["url"]
    values = {"yaw": 1.5, "smile": 2.0}
    by_smile = edit(url, values, "smile")  # yaw's code first, then smile on top
    by_yaw = edit(url, values, "yaw")  # smile's code first, then yaw
    assert np.abs(pixels(by_smile["image"]) - pixels(by_yaw["image"])).max() <= 2
    assert score(by_smile, "yaw") == pytest.approx(score(by_yaw, "yaw"), abs=0.5)
    only_yaw = edit(url, {"yaw": 1.5, "smile": 0}, "yaw")
    assert np.abs(pixels(by_yaw["image"]) - pixels(only_yaw["image"])).mean() > 0.5  # smile's move is in it


def test_hold_uses_the_conditional_boundary(studio):
    reply = edit(studio["url"], {"yaw": 2.0, "smile": 0}, "yaw", hold=["smile"])
    assert reply["boundary"].startswith("yaw|smile v")
    assert not edit(studio["url"], {"yaw": 2.0, "smile": 0}, "yaw")["boundary"].startswith("yaw|")


def test_sliders_in_units_and_automatic_holds(studio):
    url = studio["url"]
    status, catalog, _ = call(url + "api/catalog")
    yaw = next(s for s in catalog["sliders"] if s["attribute"] == "yaw")
    assert yaw["unit_range"] == {"min": -30.0, "max": 30.0, "step": 1.0}
    turned = edit(url, {"yaw": 15, "smile": 0}, "yaw", units=True)  # +15 degrees: the editor finds the distance
    target = turned["extras"]["target"]
    assert target["attribute"] == "yaw" and target["unit"] == "degrees" and target["goal"] == \
        pytest.approx(target["before"] + 15)
    assert turned["distance"] == target["distance"] != 0 and "receipt" in turned["extras"]
    assert "replay" not in turned["extras"]["receipt"]
    assert target["met"] == (abs(target["after"] - target["goal"]) <= target["tolerance"])
    status, reply, _ = call(url + "api/edit", {"source": {"seed": 3}, "values": {"yaw": 200}, "active": "yaw",
                                               "units": True})
    assert status == 400 and "-120 .. 120" in reply["error"]
    held = edit(url, {"yaw": 2.0, "smile": 0}, "yaw", hold_auto=True)
    reports = {h["attribute"]: h for h in held["extras"]["holds"]}
    assert "smile" in reports and "yaw" not in reports
    assert all("drift" in h for h in reports.values())
    # An attribute the scorer does not measure keeps moving by distance, without a search or automatic holds.
    normal = np.random.default_rng(9).standard_normal((1, 100))
    buf = io.BytesIO()
    np.save(buf, normal / np.linalg.norm(normal))
    with grpc.insecure_channel(studio["editor"]) as channel:
        boundary_pb2_grpc.BoundaryServiceStub(channel).ImportBoundary(boundary_pb2.ImportBoundaryRequest(
            model="dcgan-digiface-64", attribute="studio-unscored", space=common_pb2.LATENT_SPACE_Z,
            npy=buf.getvalue()), timeout=30)
    plain = edit(url, {"studio-unscored": 2.0, "yaw": 0}, "studio-unscored", units=True, hold_auto=True)
    assert plain["distance"] == 2.0 and "target" not in plain["extras"] and "holds" not in plain["extras"]
    chosen = {a for a, h in reports.items() if h.get("held")}
    assert set(held["extras"]["receipt"].get("held", [])) == chosen
    assert held["boundary"] == "yaw v" + held["boundary"].split(" v")[1] if not chosen else "|" in held["boundary"]


def test_grid_spans_the_range(studio):
    status, grid, _ = call(studio["url"] + "api/grid", {"source": {"seed": 3}, "values": {"yaw": 0, "smile": 1.0},
                                                       "attribute": "yaw", "start": -3, "end": 3, "steps": 5})
    assert status == 200 and grid["attribute"] == "yaw"
    assert [f["distance"] for f in grid["frames"]] == [-3, -1.5, 0, 1.5, 3]
    yaws = [score(f, "yaw") for f in grid["frames"]]
    assert yaws[-1] > yaws[0]
    status, reply, _ = call(studio["url"] + "api/grid", {"source": {"seed": 3}, "attribute": "yaw", "start": -1,
                                                        "end": 1, "steps": 99})
    assert status == 400 and "steps" in reply["error"] and "2 .. 9" in reply["error"]


def test_a_photo_is_inverted_once_then_edited_by_its_hash(studio):
    url = studio["url"]
    data = assets.path_of("grace_hopper.jpg").read_bytes()
    status, first, _ = call(url + "api/photo", data, content_type="image/jpeg")
    assert status == 200, first
    assert len(first["photo"]) == 64 and first["source"] == {"photo": first["photo"]}
    # Inverted and tuned once: the face the page edits is the photo's person, rendered by its own variant.
    assert first["variant"].startswith("v") and first["psnr"] > 25, first
    status, again, _ = call(url + "api/photo", data, content_type="image/jpeg")
    assert status == 200 and again["photo"] == first["photo"]
    assert again["inversion_seconds"] == first["inversion_seconds"]  # the remembered inversion, not a second one
    status, edited, _ = call(url + "api/edit", {"source": {"photo": first["photo"]}, "values": {"smile": 2.5},
                                                "active": "smile"})
    assert status == 200, edited
    assert np.abs(pixels(edited["image"]) - pixels(first["image"])).mean() > 1
    assert edited["extras"]["receipt"]["variant"] == first["variant"]
    status, unmoved, _ = call(url + "api/edit", {"source": {"photo": first["photo"]}, "values": {"smile": 0},
                                                 "active": "smile"})
    np.testing.assert_array_equal(pixels(unmoved["image"]), pixels(first["image"]))  # the same tuned weights
    status, gone, _ = call(url + "api/edit", {"source": {"photo": "0" * 64}, "values": {"smile": 1}, "active": "smile"})
    assert status == 409 and "upload it again" in gone["error"]


def test_any_face_of_a_group_photo_is_picked_by_its_index(studio):
    """Two real portraits side by side: face 1 is the second one, tuned on its own; an index past them is refused."""
    url = studio["url"]
    left = Image.open(assets.path_of("astronaut.png")).convert("RGB").resize((256, 256))
    right = Image.open(assets.path_of("grace_hopper.jpg")).convert("RGB").resize((220, 256))
    group = Image.new("RGB", (476, 256))
    group.paste(left, (0, 0))
    group.paste(right, (256, 0))
    buf = io.BytesIO()
    group.save(buf, format="PNG")
    status, first, _ = call(url + "api/photo?face=0", buf.getvalue(), content_type="image/png")
    assert status == 200, first
    status, second, _ = call(url + "api/photo?face=1", buf.getvalue(), content_type="image/png")
    assert status == 200, second
    assert second["photo"] == f"{first['photo']}:1" and second["face"] == 1 and second["variant"] != first["variant"]
    assert np.abs(pixels(second["image"]) - pixels(first["image"])).mean() > 10  # another person
    status, edited, _ = call(url + "api/edit", {"source": {"photo": second["photo"]}, "values": {"smile": 2},
                                                "active": "smile"})
    assert status == 200 and edited["extras"]["receipt"]["variant"] == second["variant"], edited
    status, missing, _ = call(url + "api/photo?face=7", buf.getvalue(), content_type="image/png")
    assert status == 400 and "face" in missing["error"], missing
    status, bad, _ = call(url + "api/photo?face=-1", buf.getvalue(), content_type="image/png")
    assert status == 400 and "0 .. 63" in bad["error"], bad


@pytest.mark.parametrize("body, status, words", [
    ({"source": {"seed": 3}, "values": {"yaw": 99}, "active": "yaw"}, 400, "-10 .. 10"),
    ({"source": {"seed": 3}, "values": {"yaw": 1}, "active": "smile"}, 400, "name the moved slider"),
    ({"source": {"seed": -1}, "values": {"yaw": 1}, "active": "yaw"}, 400, "whole number"),
    ({"source": {"face": 1}, "values": {"yaw": 1}, "active": "yaw"}, 400, '{"seed": N}'),
    ({"source": {"seed": 3}, "values": {"no-such-attr": 1}, "active": "no-such-attr"}, 404, "no-such-attr"),
    ({"source": {"seed": 3}, "values": {"yaw": 1}, "active": "yaw", "model": "nope"}, 404, "not served"),
    ({"source": {"seed": 3}, "values": {"yaw": 1}, "active": "yaw", "layer_start": 3}, 400, "layer_start"),
    ({"source": {"seed": 3}, "values": {"yaw": 1}, "active": "yaw", "hold": "smile"}, 400, "list"),
])
def test_bad_requests_say_what_is_accepted(studio, body, status, words):
    got, reply, _ = call(studio["url"] + "api/edit", body)
    assert got == status and words in reply["error"], reply


def test_bad_bodies_are_refused_and_the_studio_stays_up(studio):
    url = studio["url"] + "api/edit"
    assert call(url, b"{not json", content_type="application/json")[0] == 400
    assert call(url, b"[1, 2]", content_type="application/json")[0] == 400
    assert call(url, b"seed=3", content_type="application/x-www-form-urlencoded")[0] == 415
    assert call(url, b"x" * 70_000, content_type="application/json")[0] == 413
    assert call(studio["url"] + "healthz")[:2] == (200, {"status": "SERVING"})


def test_upload_limits_say_the_limit(guarded):
    url, auth = guarded["url"] + "api/photo", {"Authorization": f"Bearer {TOKEN}"}
    big = Image.new("RGB", (300, 300), (200, 150, 120))  # 0.09 megapixels, a few KB
    buf = io.BytesIO()
    big.save(buf, "PNG")
    status, reply, _ = call(url, buf.getvalue(), content_type="image/png", headers=auth)
    assert status == 413 and "300 x 300" in reply["error"] and "0.05 megapixels" in reply["error"]
    status, reply, _ = call(url, b"\x89PNG" + bytes(250_000), content_type="image/png", headers=auth)
    assert status == 413 and "0.2 MB" in reply["error"]
    status, reply, _ = call(url, b"GIF89a" + bytes(100), content_type="image/gif", headers=auth)
    assert status in (400, 415) and "PNG or JPEG" in reply["error"]
    status, reply, _ = call(url, b"", content_type="image/png", headers=auth)
    assert status == 400 and "empty" in reply["error"]
    assert guarded["info"].max_upload_bytes == 200_000 and guarded["info"].max_upload_pixels == 50_000


def test_a_page_token_guards_the_page_and_the_api(guarded):
    url = guarded["url"]
    assert guarded["info"].token_required
    status, reply, _ = call(url + "api/catalog")
    assert status == 401 and "Bearer" in reply["error"]
    assert call(url + "api/catalog", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert call(url + "api/catalog", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    status, page, _ = call(url)
    assert status == 401 and "asks for a token" in page["text"] and "studio.js" not in page["text"]
    status, page, _ = call(url + "?token=%3Cscript%3Ealert(1)%3C/script%3E")
    assert status == 401 and "<script>" not in page["text"]  # nothing given is written into the page
    assert call(url + "healthz")[0] == 200  # probes need no token
    assert call(url + "static/studio.css")[0] == 200  # nor the login page's style
    assert call(url + "static/../server.py")[0] == 404

    class Keep(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    opener = urllib.request.build_opener(Keep)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(url + f"?token={TOKEN}", timeout=10)
    assert redirect.value.code == 303 and redirect.value.headers["Location"] == "/"
    cookie = redirect.value.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    session = cookie.split(";", 1)[0]
    status, page, headers = call(url, headers={"Cookie": session})
    assert status == 200 and "studio.js" in page["text"] and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert call(url + "api/catalog", headers={"Cookie": session})[0] == 200


def test_health_info_and_metrics(studio, guarded):
    with grpc.insecure_channel(studio["cluster"].services["studio"].address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "interfacegan.v1.StudioService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
    info = studio["info"]
    assert info.url.startswith("http://127.0.0.1:") and not info.token_required
    assert info.editor_address == studio["editor"]
    call(guarded["url"] + "api/catalog", headers={"Authorization": f"Bearer {TOKEN}"})
    text = urllib.request.urlopen(f"http://127.0.0.1:{guarded['metrics_port']}/metrics", timeout=5).read().decode()
    assert 'ifgan_requests_total{code="200",method="GET /api/catalog",service="studio"}' in text
    assert 'ifgan_requests_total{code="401",method="GET /api/catalog",service="studio"}' in text


def self_signed(folder) -> tuple[str, str]:
    """A throw-away certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "studio-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_with_a_certificate_and_the_cluster_token_the_page_is_https_and_asks_for_it(studio, launch_service, tmp_path):
    import ssl

    from services.cluster import HealthCredentials

    cert, key = self_signed(tmp_path)
    proc = launch_service("studio", "--tls-cert", cert, "--tls-key", key, "--auth-token", "cluster-token",
                          "--http-port", "0", env={"IFGAN_EDITOR_ADDRESS": studio["editor"]}, wait=False)
    proc.wait_serving(credentials=HealthCredentials(cert))
    with grpc.secure_channel(proc.address, grpc.ssl_channel_credentials(open(cert, "rb").read())) as channel:
        stub = studio_pb2_grpc.StudioServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:  # the cluster's token guards the gRPC side too
            stub.GetStudioInfo(studio_pb2.GetStudioInfoRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = stub.GetStudioInfo(studio_pb2.GetStudioInfoRequest(), timeout=10,
                                  metadata=(("authorization", "Bearer cluster-token"),))
    assert info.url.startswith("https://127.0.0.1:") and info.token_required
    tls = ssl.create_default_context(cafile=cert)
    with urllib.request.urlopen(info.url + "healthz", context=tls, timeout=10) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(info.url + "api/catalog", context=tls, timeout=10)
    assert denied.value.code == 401
    request = urllib.request.Request(info.url + "api/catalog", headers={"Authorization": "Bearer cluster-token"})
    with urllib.request.urlopen(request, context=tls, timeout=30) as response:
        assert response.status == 200  # the studio called the editor (plaintext here: no --tls-ca) with its token
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plaintext page on the same port
        urllib.request.urlopen(info.url.replace("https", "http") + "healthz", timeout=10)
