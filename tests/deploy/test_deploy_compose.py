"""docker-compose.yml: valid for the compose-spec schema and for `docker-compose config -q`, wired like the
local cluster, every IFGAN_* name a real setting of the service that gets it."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess

import jsonschema
import pytest
import yaml

from services.cluster import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, FRONTENDS, SERVICES

TOKEN = {"IFGAN_AUTH_TOKEN": "test-token"}


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is not installed: apt-get install -y docker-compose (Debian's package)"
    return found


def compose_config(support, *files, env=TOKEN, quiet=True) -> subprocess.CompletedProcess:
    """`docker-compose config` of `files` from the repository root, in a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "IFGAN_"))}
    args = [docker_compose(), "--project-directory", str(support.ROOT)]
    for f in files:
        args += ["-f", str(f)]
    return subprocess.run([*args, "config", *(["-q"] if quiet else [])], capture_output=True, text=True,
                          env={**clean, **env}, cwd=support.ROOT, timeout=60)


def schema_errors(support, doc) -> list[str]:
    validator = jsonschema.Draft7Validator(support.compose_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


_MERGED: list[dict] = []


def merged(support) -> dict:
    """docker-compose.yml with the GPU override applied, as docker-compose resolves it (computed once)."""
    if not _MERGED:
        result = compose_config(support, *support.COMPOSE_FILES, quiet=False)
        assert result.returncode == 0, result.stderr
        _MERGED.append(yaml.safe_load(result.stdout))
    return copy.deepcopy(_MERGED[0])


@pytest.mark.parametrize("index", [0, 1], ids=["docker-compose.yml", "compose.gpu.yml"])
def test_compose_files_match_the_compose_spec_schema(support, index):
    path = support.COMPOSE_FILES[index]
    assert schema_errors(support, support.load_compose(path)) == []


def test_docker_compose_config_accepts_the_files(support):
    result = compose_config(support, support.COMPOSE_FILES[0])
    assert result.returncode == 0, result.stderr
    assert merged(support)["services"]  # and with the GPU override


def test_the_auth_token_is_required(support):
    result = compose_config(support, support.COMPOSE_FILES[0], env={})
    assert result.returncode != 0 and "IFGAN_AUTH_TOKEN" in result.stderr


@pytest.mark.parametrize("mutate, schema_error, compose_error", [
    (lambda c: c["services"]["generator"]["healthcheck"].update(intervall="10s"),
     "'intervall' does not match", "'intervall' does not match"),
    (lambda c: c["services"]["editor"]["depends_on"]["generator"].update(condition="service_ready"),
     "editor.depends_on", "service_ready"),
    (lambda c: c["services"]["redis"].update(volumes="redis-data:/data"),
     "is not of type 'array'", "volumes"),
], ids=["unknown-key", "bad-condition", "wrong-type"])
def test_a_broken_compose_file_fails_both_checks(support, tmp_path, mutate, schema_error, compose_error):
    doc = copy.deepcopy(support.load_compose(support.COMPOSE_FILES[0]))
    mutate(doc)
    assert any(schema_error in e for e in schema_errors(support, doc)), schema_errors(support, doc)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    result = compose_config(support, broken)
    assert result.returncode != 0 and compose_error in result.stderr, result.stderr


def test_services_are_wired_like_the_local_cluster(support):
    config = merged(support)
    services = config["services"]
    assert set(services) == {*SERVICES, *FRONTENDS, "redis", "prometheus"}
    assert services["prometheus"]["profiles"] == ["monitoring"]  # only with --profile monitoring
    for name in SERVICES:
        service = services[name]
        env = service["environment"]
        assert service["command"][0] == name
        assert env["IFGAN_PORT"] == str(DEFAULT_PORTS[name])
        assert env["IFGAN_METRICS_PORT"] == str(DEFAULT_METRICS_PORTS[name])
        assert env["IFGAN_HOST"] == "0.0.0.0" and env["IFGAN_AUTH_TOKEN"] == TOKEN["IFGAN_AUTH_TOKEN"]
        assert service["healthcheck"]["test"] in ("ifgan-healthprobe", ["CMD-SHELL", "ifgan-healthprobe"])
        assert service["read_only"] and service["cap_drop"] == ["ALL"]
        shutdown = float(env["IFGAN_DRAIN_SECONDS"]) + float(env["IFGAN_GRACE_SECONDS"])
        assert shutdown + 5 <= float(service["stop_grace_period"].removesuffix("s")), name
        assert env["IFGAN_HEALTH_PORT"] == "50050"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency], dependency
        for other in SERVICES:
            address = env.get(f"IFGAN_{other.upper()}_ADDRESS")
            if address:
                assert address == f"dns:///{other}:{DEFAULT_PORTS[other]}"
                assert other in service["depends_on"], f"{name} calls {other} but does not wait for it"
    assert services["editor"]["ports"] == [f"127.0.0.1:{DEFAULT_PORTS['editor']}:{DEFAULT_PORTS['editor']}/tcp"]
    assert services["boundary"]["environment"]["IFGAN_REDIS_URL"] == "redis://redis:6379/0"
    assert services["boundary"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_generator_runs_several_replicas_and_the_gpu_override_reserves_gpus(support):
    plain = support.load_compose(support.COMPOSE_FILES[0])["services"]
    assert plain["generator"]["deploy"]["replicas"] >= 2
    config = merged(support)["services"]
    for name in ("generator", "scorer"):
        (device,) = config[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert config[name]["build"]["args"]["VARIANT"] == "cuda"
    assert plain["generator"]["build"]["args"]["VARIANT"] == "cpu"


def test_redis_keeps_an_append_only_file_on_a_volume(support):
    redis = support.load_compose(support.COMPOSE_FILES[0])["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--appendfsync always" in command and "--dir /data" in command
    # Bounded memory; boundaries carry no expiry, so a volatile-* policy never evicts one.
    assert "--maxmemory 640mb" in command and "--maxmemory-policy volatile-lru" in command
    assert redis["volumes"] == ["redis-data:/data"]
    assert "redis-data" in support.load_compose(support.COMPOSE_FILES[0])["volumes"]


@pytest.mark.parametrize("index", [0, 1], ids=["docker-compose.yml", "compose.gpu.yml"])
def test_settings_in_compose_are_settings_of_the_services(support, index):
    services = support.load_compose(support.COMPOSE_FILES[index])["services"]
    for name in SERVICES:
        service = services.get(name, {})
        used = set(service.get("environment", {})) | {a for a in service.get("command", [])[1:] if a.startswith("--")}
        bad = support.unknown_settings(name, used)
        assert not bad, f"compose service {name} passes {sorted(bad)}, which python -m services.{name} lacks"


def test_every_service_accepts_its_configured_values(support):
    services = merged(support)["services"]
    for name in SERVICES:
        settings = support.load_settings(name, services[name]["environment"])
        assert settings.port == DEFAULT_PORTS[name] and settings.auth_token == TOKEN["IFGAN_AUTH_TOKEN"]


def test_every_peer_address_a_service_has_is_set(support):
    services = support.load_compose(support.COMPOSE_FILES[0])["services"]
    for name in SERVICES:
        missing = support.loopback_settings(name) - set(services[name]["environment"])
        assert not missing, f"{name} has {sorted(missing)} (loopback defaults): set them in docker-compose.yml"


def test_prometheus_scrapes_every_service_on_its_metrics_port(support):
    config = yaml.safe_load((support.DOCKER / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = {sd["names"][0]: sd["port"] for sd in job["dns_sd_configs"]}
    assert targets == DEFAULT_METRICS_PORTS
