"""Studio pieces in process: settings (no open page on a public address), request checks, caches, the JSON the
page reads, and the studio's settings in compose and the kustomize base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from interfacegan.v1 import common_pb2, editor_pb2
from services.common.errors import ServiceError
from services.common.settings import env_name
from services.studio.server import Settings, is_loopback
from services.studio.web import dumps
from services.studio.workspace import LRU, Move, extras_of, integer, number

ROOT = Path(__file__).resolve().parents[2]


def test_an_open_page_is_refused_on_a_public_address(monkeypatch):
    for name in ("IFGAN_AUTH_TOKEN", "IFGAN_PAGE_TOKEN", "IFGAN_OPEN_PAGE", "IFGAN_HOST"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="open to anyone on 0.0.0.0"):
        Settings.load([], host="0.0.0.0")
    assert Settings.load([], host="0.0.0.0", auth_token="t").token == "t"
    assert Settings.load([], host="0.0.0.0", page_token="p", auth_token="t").token == "p"
    assert Settings.load([], host="0.0.0.0", open_page=True).token == ""
    assert Settings.load([]).host == "127.0.0.1"
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1", "studio")] == \
        [True, True, True, False, False, False]


@pytest.mark.parametrize("overrides, words", [
    ({"http_port": 70000}, "http_port"), ({"max_upload_mb": 0}, "max_upload_mb"),
    ({"slider_range": 20}, "slider_range"), ({"max_grid_steps": 1}, "max_grid_steps"),
])
def test_bad_settings_are_refused(overrides, words):
    with pytest.raises(ValueError, match=words):
        Settings.load([], **overrides)


def test_a_move_is_one_attribute_edit_at_one_distance():
    edit = Move("age", 1.5, ("smile",), 2, 6).message()
    assert (edit.attribute, edit.start, edit.end, edit.steps, list(edit.hold), edit.layer_start, edit.layer_end) == \
        ("age", 1.5, 1.5, 1, ["smile"], 2, 6)
    target = Move("age", 10.0, ("smile",), unit="years", hold_auto=True).message()
    assert (target.WhichOneof("target"), target.delta, target.unit, target.steps, target.start, target.hold_auto) == \
        ("delta", 10.0, "years", 1, 0.0, True)
    grid = Move("age", 0.0).message(-3, 3, 7)
    assert (grid.start, grid.end, grid.steps) == (-3, 3, 7)
    assert Move("a", 1.0, ("b",)) == Move("a", 1.0, ("b",))  # a cache key
    assert hash(Move("a", 1.0, ("b",))) == hash(Move("a", 1.0, ("b",)))


def test_values_are_checked():
    assert number(2, "d", bound=3) == 2.0
    for bad in (4, float("nan"), float("inf"), "1", True, None):
        with pytest.raises(ServiceError, match="-3 .. 3"):
            number(bad, "d", bound=3)
    assert integer(5, "n", low=0, high=9) == 5
    for bad in (-1, 10, 2.0, "3", False):
        with pytest.raises(ServiceError, match="0 .. 9"):
            integer(bad, "n", low=0, high=9)


def test_lru_keeps_the_most_recently_used():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert list(cache) == ["a", "c"] and cache.get("b") is None


def test_fields_the_page_has_no_place_for_are_passed_on():
    reply = editor_pb2.EditResponse(edit_index=0, distance=1.5, inversion_psnr=31.0,
                                    image=common_pb2.Image(encoded=b"png"))
    assert extras_of(reply) == {}
    shown = {"edit_index", "distance", "image"}
    assert extras_of(reply, shown) == {"inversion_psnr": 31.0}


def test_json_has_no_nan():
    text = dumps({"max": float("inf"), "scores": [float("nan"), 1.5], "ok": "x"})
    assert json.loads(text) == {"max": None, "scores": [None, 1.5], "ok": "x"}


def test_deployments_pass_only_studio_settings(monkeypatch):
    """The IFGAN_* names compose and the kustomize base give the studio are settings it has."""
    known = {env_name(name) for name in Settings.__dataclass_fields__}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["studio"]
    assert compose["command"] == ["studio"]
    env = {k: v for k, v in compose["environment"].items() if k.startswith("IFGAN_")}
    assert set(env) <= known and env["IFGAN_EDITOR_ADDRESS"] == "dns:///editor:50051"
    assert compose["ports"] == ["${IFGAN_STUDIO_PUBLISH:-127.0.0.1:8080}:8080"]
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/base/kustomization.yaml").read_text())
    (studio,) = [c for c in kustomization["configMapGenerator"] if c["name"] == "ifgan-studio"]
    literals = dict(item.split("=", 1) for item in studio["literals"])
    assert set(literals) <= known and literals["IFGAN_HTTP_PORT"] == "8080"
    assert "studio.yaml" in kustomization["resources"]
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/base/studio.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["studio"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == int(literals["IFGAN_PORT"]) and ports["http"] == int(literals["IFGAN_HTTP_PORT"])
    # Loaded as the container would: a token from the Secret, every configured value accepted.
    for key, value in literals.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("IFGAN_HOST", "0.0.0.0")
    monkeypatch.setenv("IFGAN_AUTH_TOKEN", "from-the-secret")
    settings = Settings.load([])
    assert settings.http_port == 8080 and settings.token == "from-the-secret"
