"""deploy/k8s: every kustomization renders with `kubectl kustomize` and passes kubernetes-validate --strict."""

from __future__ import annotations

import base64
import copy
import os
import re
import subprocess
import sys
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from services.cluster import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, SERVICES
from services.common import metrics

OVERLAYS = ("overlays/cpu", "overlays/gpu")
EXAMPLES = ("examples/external-redis", "examples/keda", "examples/keda-gpu", "examples/ingress-nginx",
            "examples/gateway-api", "examples/pinned-digest", "examples/gpu-cluster")
HEALTH_PORT = 50050  # IFGAN_HEALTH_PORT: liveness, outside the concurrent-RPC limit
QUEUE_METRIC = metrics.QUEUE_DEPTH._name  # the gauge the services export: ifgan_batch_queue_depth


def by(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def only_container(docs, name):
    (c,) = by(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return c


def test_every_kustomization_is_tested(support):
    assert set(support.REQUIRED_KUSTOMIZATIONS) <= set(support.kustomization_dirs())


def test_renders_and_passes_strict_validation(support, kustomization):
    docs = support.render(kustomization)
    assert docs, f"{kustomization} renders nothing"
    for doc in docs:
        name = f"{kustomization}: {doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in support.CUSTOM_KINDS:
            assert not support.check_custom_resource(doc, docs), name
            continue
        for version in support.K8S_VERSIONS:
            try:
                support.validate(doc, version)
            except Exception as e:  # noqa: BLE001 - re-raised with the document named
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {e}")


def test_kubernetes_validate_command_line_accepts_an_overlay(support, tmp_path):
    """The command deploy/README.md shows, on a rendered overlay, exits 0."""
    out = tmp_path / "gpu.yaml"
    out.write_text(subprocess.run([support.kubectl(), "kustomize", str(support.K8S / "overlays/gpu")],
                                  capture_output=True, text=True, check=True).stdout)
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                             "-k", support.K8S_VERSIONS[-1], str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("mutate, error", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(grpcc={"port": 1}),
     "'grpcc' was unexpected"),
    (lambda d: d["spec"].update(replicas="two"), "'two' is not of type"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"].update(port="grpc"),
     "'grpc' is not of type 'integer'"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "'name' is a required property"),
], ids=["unknown-field", "wrong-type", "named-grpc-port", "missing-required"])
def test_a_broken_manifest_fails_validation(support, mutate, error):
    deployment = copy.deepcopy(by(support.render("overlays/gpu"), "Deployment", "generator"))
    support.validate(deployment, support.K8S_VERSIONS[0])  # valid as rendered
    mutate(deployment)
    for version in support.K8S_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError, match=error):
            support.validate(deployment, version)


def test_a_typo_in_an_overlay_fails_through_the_whole_pipeline(support, tmp_path):
    """kustomize renders a misspelt field without complaint; the strict validation step catches it."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(support.K8S / "overlays/cpu", tmp_path)],  # kustomize wants it relative
        "patches": [{"patch": yaml.safe_dump({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "generator"},
            "spec": {"template": {"spec": {"containers": [{"name": "generator", "resource": {"limits": {}}}]}}}})}],
    }))
    deployment = by(support.render(tmp_path), "Deployment", "generator")
    with pytest.raises(kubernetes_validate.ValidationError, match="'resource' was unexpected"):
        support.validate(deployment, support.K8S_VERSIONS[-1])


@pytest.mark.parametrize("overlay", OVERLAYS + EXAMPLES)
def test_settings_in_manifests_are_settings_of_the_services(support, overlay):
    """Every IFGAN_* variable or flag a pod gets is a real setting of the service it runs."""
    docs = support.render(overlay)
    seen = set()
    for workload in support.workloads(docs):
        for c in support.containers(workload):
            if not c.get("args") or c["args"][0] not in SERVICES:
                continue
            service = c["args"][0]
            seen.add(service)
            used = set(support.container_env(c, docs)) | {a for a in c["args"][1:] if a.startswith("--")}
            bad = support.unknown_settings(service, used)
            assert not bad, (f"{overlay}: {workload['metadata']['name']} passes {sorted(bad)}, which "
                             f"`python -m services.{service} --help` does not list")
    assert seen == set(SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS + EXAMPLES)
def test_every_peer_address_a_service_has_is_set(support, overlay):
    """A setting whose default is a loopback address (a peer service, Redis) must be set in the pod."""
    docs = support.render(overlay)
    for name in SERVICES:
        env = support.container_env(only_container(docs, name), docs)
        missing = support.loopback_settings(name) - set(env)
        assert not missing, (f"{name} has {sorted(missing)} (loopback defaults): set them in "
                             f"deploy/k8s/base/kustomization.yaml (ConfigMap ifgan-{name}) and docker-compose.yml")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_accepts_its_configured_values(support, overlay):
    """The ConfigMap values parse and validate as the services' settings (types, ranges)."""
    docs = support.render(overlay)
    for name in SERVICES:
        env = support.container_env(only_container(docs, name), docs)
        settings = support.load_settings(name, env)
        assert settings.port == DEFAULT_PORTS[name] and settings.metrics_port == DEFAULT_METRICS_PORTS[name]
        for key, value in env.items():
            field = key.removeprefix("IFGAN_").lower()
            if key.startswith("IFGAN_") and hasattr(settings, field) and value is not None:
                parsed = getattr(settings, field)
                assert parsed == type(parsed)(value), f"{name}: {key}={value!r} was read as {parsed!r}"
    generator = support.load_settings("generator", support.container_env(only_container(docs, "generator"), docs))
    assert generator.max_batch_size == (64 if overlay.endswith("gpu") else 32)


def test_unknown_settings_are_caught(support):
    assert support.unknown_settings("generator", {"IFGAN_PORT", "--metrics-port", "--no-log-format"}) == set()
    assert support.unknown_settings("generator", {"IFGAN_PROT", "--metric-port"}) == {"IFGAN_PROT", "--metric-port"}
    # A setting one service has is still refused for a service that lacks it.
    assert support.unknown_settings("generator", {"IFGAN_INVERSION_ADDRESS"}) == {"IFGAN_INVERSION_ADDRESS"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_services_line_up(support, overlay):
    docs = support.render(overlay)
    for name in SERVICES:
        deployment = by(docs, "Deployment", name)
        c = only_container(docs, name)
        env = support.container_env(c, docs)
        port, metrics_port = DEFAULT_PORTS[name], DEFAULT_METRICS_PORTS[name]
        assert c["args"][0] == name
        assert (env["IFGAN_PORT"], env["IFGAN_METRICS_PORT"], env["IFGAN_HOST"]) == (str(port), str(metrics_port),
                                                                                      "0.0.0.0")
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": port, "metrics": metrics_port,
                                                                       "health": HEALTH_PORT}
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["grpc"]["port"] == port, f"{name} {probe} is not a native gRPC probe on {port}"
        # Liveness asks the health port, which the concurrent-RPC limit does not cover: busy is not dead.
        assert c["livenessProbe"]["grpc"]["port"] == HEALTH_PORT == int(env["IFGAN_HEALTH_PORT"])
        pod_meta = deployment["spec"]["template"]["metadata"]
        assert pod_meta["annotations"]["prometheus.io/port"] == str(metrics_port)
        service = by(docs, "Service", name)
        assert service["spec"]["ports"][0]["port"] == port
        assert service["spec"]["selector"].items() <= pod_meta["labels"].items()
        pdb = by(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_meta["labels"].items()
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        pod = deployment["spec"]["template"]["spec"]
        # Kubernetes kills the pod after terminationGracePeriodSeconds: drain and grace must fit in it.
        shutdown = float(env["IFGAN_DRAIN_SECONDS"]) + float(env["IFGAN_GRACE_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] >= shutdown + 5
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
        assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "the port file needs a writable /tmp"
        assert ":" in c["image"] and not c["image"].startswith("ifgan-"), f"{name}: image {c['image']} unresolved"
    # Callers reach the pool and the scorer through headless Services (client-side round robin).
    for name in ("generator", "scorer"):
        assert by(docs, "Service", name)["spec"]["clusterIP"] == "None"
    for name in ("editor", "boundary"):
        env = support.container_env(only_container(docs, name), docs)
        assert env["IFGAN_GENERATOR_ADDRESS"] == f"dns:///generator:{DEFAULT_PORTS['generator']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_generator_pool_scales_on_queue_depth_not_cpu(support, overlay):
    docs = support.render(overlay)
    hpa = by(docs, "HorizontalPodAutoscaler", "generator")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "generator"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == QUEUE_METRIC
    assert metric["pods"]["target"]["type"] == "AverageValue"
    # The Deployment leaves the count to the HPA; kubectl apply would otherwise reset it.
    assert "replicas" not in by(docs, "Deployment", "generator")["spec"]
    # Target: half a batch queued per pod.
    env = support.container_env(only_container(docs, "generator"), docs)
    assert int(metric["pods"]["target"]["averageValue"]) * 2 == int(env["IFGAN_MAX_BATCH_SIZE"])


def test_prometheus_adapter_rule_serves_the_hpa_metric(support):
    docs = support.render("monitoring")
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    # Never the name of an installed adapter's own ConfigMap (kube-prometheus: adapter-config).
    assert config["metadata"]["name"] not in ("adapter-config", "prometheus-adapter")
    rules = yaml.safe_load(config["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == QUEUE_METRIC]
    assert rule["seriesQuery"].startswith(QUEUE_METRIC + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    helm = yaml.safe_load((support.K8S / "monitoring/prometheus-adapter-values.yaml").read_text())
    assert helm["rules"]["custom"] == rules  # the Helm values carry the same rule
    assert helm["rules"]["default"] is True  # ... next to the chart's own rules, not instead of them
    (podmonitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    # kube-prometheus-stack's Prometheus selects PodMonitors by its Helm release label.
    assert podmonitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert podmonitor["spec"]["namespaceSelector"] == {"matchNames": ["interfacegan"]}


def test_keda_variant_replaces_the_hpa(support):
    docs = support.render("examples/keda")
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    (trigger,) = by(docs, "ScaledObject", "generator")["spec"]["triggers"]
    assert QUEUE_METRIC in trigger["metadata"]["query"] and 'service="generator"' in trigger["metadata"]["query"]
    podmonitor = yaml.safe_load((support.K8S / "monitoring/podmonitor.yaml").read_text())
    assert not support.check_custom_resource(podmonitor, docs)
    broken = copy.deepcopy(by(docs, "ScaledObject", "generator"))
    broken["spec"]["maxReplicas"] = 8
    broken["spec"]["scaleTargetRef"]["name"] = "generatr"
    assert len(support.check_custom_resource(broken, docs)) == 2


def test_gpu_overlay_puts_generator_and_scorer_on_gpus(support):
    gpu, cpu = support.render("overlays/gpu"), support.render("overlays/cpu")
    for name in SERVICES:
        c = only_container(gpu, name)
        on_gpu = name in ("generator", "scorer")
        assert (c["resources"]["limits"].get("nvidia.com/gpu") == 1) == on_gpu, name
        assert c["image"].endswith("-cuda" if on_gpu else "-cpu"), (name, c["image"])
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(cpu)


@pytest.mark.parametrize("overlay", OVERLAYS + ("examples/keda",))
def test_redis_is_a_statefulset_with_aof_on_a_volume(support, overlay):
    docs = support.render(overlay)
    redis = by(docs, "StatefulSet", "redis")
    (c,) = support.containers(redis)
    args = " ".join(c["args"])
    assert "--appendonly yes" in args and "--appendfsync always" in args and "--dir /data" in args
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert c["volumeMounts"] == [{"name": claim["metadata"]["name"], "mountPath": "/data"}]
    assert by(docs, "Service", "redis")["spec"]["clusterIP"] == "None"
    assert by(docs, "PodDisruptionBudget", "redis")
    env = support.container_env(only_container(docs, "boundary"), docs)
    url = urlparse(env["IFGAN_REDIS_URL"])
    assert (url.hostname, url.port) == ("redis", c["ports"][0]["containerPort"])


def secret_value(docs, prefix: str, key: str) -> str:
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    return base64.b64decode(secret["data"][key]).decode()


def test_external_redis_example_has_no_redis_in_cluster(support):
    docs = support.render("examples/external-redis")
    assert not [d for d in docs if d["metadata"]["name"] == "redis"]
    (ref,) = [e for e in only_container(docs, "boundary")["env"] if e["name"] == "IFGAN_REDIS_URL"]
    secret = ref["valueFrom"]["secretKeyRef"]
    url = urlparse(secret_value(docs, secret["name"].rsplit("-", 1)[0], secret["key"]))
    assert url.hostname not in ("redis", None) and url.password == support.placeholder_token()


@pytest.mark.parametrize("overlay", OVERLAYS + EXAMPLES)
def test_settings_and_token_come_from_configmaps_and_the_secret(support, overlay):
    docs = support.render(overlay)
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("ifgan-auth-")]
    # The shipped token is the placeholder the entry point refuses: no pod runs until it is replaced.
    assert base64.b64decode(secret["data"]["IFGAN_AUTH_TOKEN"]).decode() == support.placeholder_token()
    for name in SERVICES:
        c = only_container(docs, name)
        assert [s["configMapRef"]["name"].rsplit("-", 1)[0] for s in c["envFrom"]] == ["ifgan-common",
                                                                                      f"ifgan-{name}"]
        (token,) = [e for e in c["env"] if e["name"] == "IFGAN_AUTH_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "IFGAN_AUTH_TOKEN"}
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "interfacegan", doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "interfacegan", doc["metadata"]["name"]


def test_catalog_job_runs_one_shard_per_index_against_the_editor(support):
    """examples/catalog-job: an Indexed Job whose pod I runs `ifgan catalog --shard I/N` (N = completions), with
    arguments the SDK's own parser accepts, the auth Secret, the editor Service and one shared volume."""
    from interfacegan.catalog import Shard
    from interfacegan.cli import parser

    docs = support.render("examples/catalog-job")
    job = by(docs, "Job", "ifgan-catalog")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec  # retries count per shard
    rules = spec["podFailurePolicy"]["rules"]
    fail_index = {"action": "FailIndex", "onExitCodes": {"containerName": "catalog", "operator": "In", "values": [2]}}
    assert fail_index in rules  # bad arguments or settings: a retry cannot help
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    assert c["args"][:3] == ["python", "-m", "interfacegan.cli"] and ":" in c["image"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("ifgan-auth-")]
    assert env["IFGAN_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                                    "key": "IFGAN_AUTH_TOKEN"}
    for index in range(spec["completions"]):
        args = parser().parse_args([a.replace("$(SHARD_INDEX)", str(index)) for a in c["args"][3:]])
        assert args.command == "catalog" and Shard.parse(args.shard) == Shard(index, spec["completions"])
    host, port = args.address.removeprefix("dns:///").rsplit(":", 1)
    assert by(docs, "Service", host)["spec"]["ports"][0]["port"] == int(port) == DEFAULT_PORTS["editor"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (shared,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    claim = by(docs, "PersistentVolumeClaim", shared["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every shard writes to it at once
    for path in (args.source, args.out):
        assert path.is_relative_to(mounts[shared["name"]]), f"{path} is not on the shared volume"
    assert "/tmp" in mounts.values()
    for doc in (job, claim):
        assert doc["metadata"]["namespace"] == "interfacegan"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "interfacegan"
    # Where NetworkPolicies select the pods, they let the shards reach the editor's port and the editor admit them.
    shard_labels = spec["template"]["metadata"]["labels"]
    editor_labels = by(docs, "Deployment", "editor")["spec"]["template"]["metadata"]["labels"]
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]

    def selects(selector, labels):
        return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")

    def allows(policy, direction, peer_labels):
        return any(any("podSelector" in p and "namespaceSelector" not in p and selects(p["podSelector"], peer_labels)
                       for p in rule.get("to" if direction == "Egress" else "from", [{}]))
                   and any(p.get("port") == DEFAULT_PORTS["editor"] for p in rule.get("ports", [{}]))
                   for rule in policy.get(direction.lower(), []))

    for direction, own, peer in (("Egress", shard_labels, editor_labels), ("Ingress", editor_labels, shard_labels)):
        applying = [p for p in policies if direction in p.get("policyTypes", []) and selects(p["podSelector"], own)]
        assert not applying or any(allows(p, direction, peer) for p in applying), f"{direction} shards -> editor"


def _memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 1000, "mb": 10**6, "gb": 10**9}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(quantity[:-len(unit)]) * factor
    return int(quantity)


@pytest.mark.parametrize("overlay", OVERLAYS + ("examples/keda-gpu",))
def test_redis_has_a_password_from_a_secret_and_a_memory_limit_that_keeps_boundaries(support, overlay):
    docs = support.render(overlay)
    (c,) = support.containers(by(docs, "StatefulSet", "redis"))
    args = c["args"]
    option = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert option["--requirepass"] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e for e in c["env"]}
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):  # the server's password and the probe's redis-cli
        assert env[name]["valueFrom"]["secretKeyRef"]["name"].startswith("ifgan-redis-")
    assert secret_value(docs, "ifgan-redis", "REDIS_PASSWORD") == support.placeholder_token()
    # Boundaries carry no expiry: volatile-* policies never evict them (nor does noeviction).
    assert option["--maxmemory-policy"] in ("volatile-lru", "volatile-lfu", "volatile-ttl", "noeviction")
    assert _memory_bytes(option["--maxmemory"]) <= 0.75 * _memory_bytes(c["resources"]["limits"]["memory"])
    # The boundary service composes its URL from the same Secret; Kubernetes expands $(VAR) only from
    # variables defined before it in the list.
    boundary_env = only_container(docs, "boundary")["env"]
    names = [e["name"] for e in boundary_env]
    (url,) = [e for e in boundary_env if e["name"] == "IFGAN_REDIS_URL"]
    assert names.index("REDIS_PASSWORD") < names.index("IFGAN_REDIS_URL")
    assert urlparse(url["value"]).password == "$(REDIS_PASSWORD)"
    (password,) = [e for e in boundary_env if e["name"] == "REDIS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", []), "NotIn": value not in expr.get("values", []),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict, namespace: str, labels: dict, own_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != own_namespace:
        return False
    return _selects(peer.get("podSelector") or {}, labels)


def _port_matches(rule_ports, port: int) -> bool:
    return not rule_ports or any(p["port"] <= port <= p.get("endPort", p["port"]) for p in rule_ports)


def allowed(docs, source: tuple[str, dict], target: tuple[str, dict], port: int) -> bool:
    """Whether the NetworkPolicies let a pod (namespace, labels) open `port` on another one: the egress of
    the source's namespace and the ingress of the target's both have to allow it (policies add up)."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def side(kind: str, own: tuple[str, dict], peer: tuple[str, dict]) -> bool:
        relevant = [p for p in policies if p["metadata"]["namespace"] == own[0]
                    and kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], own[1])]
        if not relevant:
            return own[0] != "interfacegan"  # outside namespaces: no policies of ours
        key, peers = ("egress", "to") if kind == "Egress" else ("ingress", "from")
        return any(_port_matches(rule.get("ports"), port)
                   and (not rule.get(peers) or any(_peer_matches(x, peer[0], peer[1], own[0]) for x in rule[peers]))
                   for p in relevant for rule in p["spec"].get(key) or [])
    return side("Egress", source, target) and side("Ingress", target, source)


def _pod(docs, name: str) -> tuple[str, dict]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name:
            return d["metadata"]["namespace"], d["spec"]["template"]["metadata"]["labels"]
    raise KeyError(name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_calls_the_services_make(support, overlay):
    docs = support.render(overlay)
    pods = {name: _pod(docs, name) for name in (*SERVICES, "redis")}
    ingress = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
    monitoring = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    batch_job = ("interfacegan", {"interfacegan.io/editor-client": "true", "job-name": "catalog"})
    stranger = ("default", {"app": "curl"})
    port = {**DEFAULT_PORTS, "redis": 6379}
    expected = {("editor", t) for t in ("generator", "scorer", "boundary", "inversion")}
    expected |= {("boundary", t) for t in ("generator", "scorer", "redis")}
    for source in pods:
        for target in pods:
            if source != target:
                assert allowed(docs, pods[source], pods[target], port[target]) == ((source, target) in expected), \
                    (source, target)
    assert allowed(docs, ingress, pods["editor"], port["editor"])
    assert allowed(docs, batch_job, pods["editor"], port["editor"])
    for outsider in (ingress, batch_job, stranger):
        for target in ("generator", "scorer", "boundary", "inversion", "redis"):
            assert not allowed(docs, outsider, pods[target], port[target]), (outsider, target)
    assert not allowed(docs, stranger, pods["editor"], port["editor"])
    for name in SERVICES:
        assert allowed(docs, monitoring, pods[name], DEFAULT_METRICS_PORTS[name])
        assert not allowed(docs, monitoring, pods[name], DEFAULT_PORTS[name])
    # Every pod resolves names through the cluster DNS and reaches nothing else outside.
    dns = ("kube-system", {"k8s-app": "kube-dns"})
    for name in pods:
        assert allowed(docs, pods[name], dns, 53)
        assert not allowed(docs, pods[name], stranger, 443)


def test_network_policy_evaluator_sees_a_missing_rule(support):
    docs = copy.deepcopy(support.render("overlays/cpu"))
    boundary = by(docs, "NetworkPolicy", "boundary")
    boundary["spec"]["egress"] = [r for r in boundary["spec"]["egress"]
                                  if r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] != "redis"]
    assert not allowed(docs, _pod(docs, "boundary"), _pod(docs, "redis"), 6379)


def test_gpu_pods_ask_for_cuda_and_only_land_on_new_drivers(support):
    docs = support.render("overlays/gpu")
    generator = support.load_settings("generator", support.container_env(only_container(docs, "generator"), docs))
    assert generator.device == "cuda"  # no "auto": a pod without CUDA fails instead of serving from CPU
    scorer = support.container_env(only_container(docs, "scorer"), docs)
    assert scorer["IFGAN_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"
    for name in SERVICES:
        pod = by(docs, "Deployment", name)["spec"]["template"]["spec"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        expressions = [e for t in terms for e in t["matchExpressions"]]
        if name in ("generator", "scorer"):
            # CUDA 13 needs driver 580+: every term (they are ORed) requires it through a driver-version label.
            for term in terms:
                (expr,) = term["matchExpressions"]
                assert "driver" in expr["key"] and expr["operator"] == "Gt" and int(expr["values"][0]) >= 579
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert expressions == [{"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}], name
            assert "tolerations" not in pod
    (redis,) = [d for d in docs if d["kind"] == "StatefulSet"]
    assert redis["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    cpu = support.render("overlays/cpu")
    assert support.load_settings("generator", support.container_env(only_container(cpu, "generator"), cpu)).device \
        == "auto"


def test_keda_variant_renders_for_the_gpu_overlay(support):
    docs = support.render("examples/keda-gpu")
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    scaled = by(docs, "ScaledObject", "generator")
    (trigger,) = scaled["spec"]["triggers"]
    env = support.container_env(only_container(docs, "generator"), docs)
    assert int(trigger["metadata"]["threshold"]) * 2 == int(env["IFGAN_MAX_BATCH_SIZE"]) == 64
    assert only_container(docs, "generator")["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The query's namespace is the Deployment's, whatever the overlay sets.
    namespace = by(docs, "Deployment", "generator")["metadata"]["namespace"]
    assert f'namespace="{namespace}"' in trigger["metadata"]["query"]
    cpu = by(support.render("examples/keda"), "ScaledObject", "generator")
    assert int(cpu["spec"]["triggers"][0]["metadata"]["threshold"]) == 16


def test_pinned_digest_example_names_every_service_image_by_digest(support):
    docs = support.render("examples/pinned-digest")
    for name in SERVICES:
        image = only_container(docs, name)["image"]
        assert re.fullmatch(r"[\w./-]+@sha256:[0-9a-f]{64}", image), image


def test_shutdown_grace_fits_each_service(support):
    docs = support.render("overlays/cpu")
    grace = {name: float(support.container_env(only_container(docs, name), docs)["IFGAN_GRACE_SECONDS"])
             for name in SERVICES}
    # Refinements and training steps outlive 10 s; the editor waits for the inversion it proxies.
    assert grace["inversion"] >= 60 and grace["boundary"] >= 120 and grace["editor"] >= 30
    boundary = by(docs, "Deployment", "boundary")["spec"]["template"]["spec"]
    assert boundary["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
