"""deploy/docker: the Dockerfile's pins and user, the entry point and the gRPC health probe on a real server."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ENTRYPOINT_CODES = {"placeholder-token": 78, "bad-models": 66, "no-cuda": 69}


def dockerfile(support) -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/docker/Dockerfile, continuation lines joined, comments dropped."""
    text = (support.DOCKER / "Dockerfile").read_text()
    logical, out = "", []
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        logical += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = logical.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            logical = ""
    return out


def stages(instructions) -> dict[str, list[tuple[str, str]]]:
    result, current = {}, None
    for word, rest in instructions:
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[current] = []
        elif current is not None:
            result[current].append((word, rest))
    return result


def pin(requirement: str, support) -> str:
    deps = tomllib.loads((support.ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (found,) = [d for d in deps if re.split(r"[^A-Za-z0-9._-]", d)[0] == requirement]
    return found


def lock_pins(support, variant: str) -> dict[str, str]:
    text = (support.DOCKER / f"requirements-{variant}.lock").read_text()
    return dict(re.findall(r"^([a-z0-9._-]+)==(\S+) \\$", text, re.M))


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_the_lock_is_current_hashed_and_pins_what_pyproject_pins(support, variant):
    lock = support.DOCKER / f"requirements-{variant}.lock"
    result = subprocess.run([sys.executable, str(support.DOCKER / "lock.py"), "--variant", variant, "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pins = lock_pins(support, variant)
    entries = re.findall(r"^[a-z0-9._-]+==\S+ \\\n    --hash=sha256:[0-9a-f]{64}$", lock.read_text(), re.M)
    assert len(entries) == len(pins) > 20, "every package pinned with its sha256"
    torch = pin("torch", support).split("==")[1]
    assert pins["torch"] == (f"{torch}+cpu" if variant == "cpu" else torch)
    assert pins["onnxruntime-gpu"] == pin("onnxruntime-gpu", support).split("==")[1]
    assert "onnxruntime" not in pins, "never install plain onnxruntime"
    assert any(name.startswith("nvidia-") for name in pins) == (variant == "cuda")


def test_the_image_installs_from_the_lock_alone(support):
    parts = stages(dockerfile(support))
    deps = " ".join(rest for word, rest in parts["deps"] if word in ("RUN", "COPY"))
    assert "deploy/docker/requirements-${VARIANT}.lock" in deps
    assert "pip install --require-hashes --no-deps --only-binary=:all: -r /src/requirements.lock" in deps
    # The CPU torch comes from PyTorch's CPU index; offline builds get every wheel from the wheelhouse.
    assert "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in " ".join(r for _, r in parts["torch-cpu"])
    assert "--mount=type=bind,from=wheelhouse,target=/wheelhouse" in deps
    runtime = " ".join(rest for word, rest in parts["runtime"] if word == "RUN")
    assert runtime.count("pip install --no-deps") == 2, "the project's own packages only, nothing resolved"
    assert {"wheelhouse", "base"} <= set(parts)
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in (support.DOCKER / "Dockerfile").read_text()


def test_one_image_per_variant_with_a_non_root_user_and_a_grpc_healthcheck(support):
    instructions = dockerfile(support)
    parts = stages(instructions)
    assert "FROM torch-${VARIANT} AS deps" in [f"FROM {r}" for w, r in instructions if w == "FROM"]
    assert "FROM ${BASE_IMAGE} AS base" in [f"FROM {r}" for w, r in instructions if w == "FROM"]
    assert {"torch-cpu", "torch-cuda", "deps", "models", "runtime"} <= set(parts)
    assert list(parts)[-1] == "runtime"
    final = dict(parts["runtime"])  # the last occurrence of each instruction wins
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "numeric non-root user (runAsNonRoot needs a numeric uid)"
    assert final["HEALTHCHECK"].endswith('CMD ["/usr/local/bin/ifgan-healthprobe"]')
    # An absolute path under a name the client package does not install (its console script `ifgan`
    # sits first on PATH, in the venv).
    assert final["ENTRYPOINT"] == '["/usr/local/bin/ifgan-service"]' and final["WORKDIR"] == "/home/ifgan"
    client = tomllib.loads((support.ROOT / "clients/python/pyproject.toml").read_text())["project"]["scripts"]
    assert "ifgan-service" not in client and "ifgan-healthprobe" not in client
    # Models are fetched at build time by the project's checksumming command.
    models = " ".join(rest for word, rest in parts["models"] if word == "RUN")
    assert "python -m services.common.assets fetch --models-dir /models" in models
    envs = dict(re.findall(r"(IFGAN_[A-Z_]+)=(\S+)", " ".join(r for w, r in parts["runtime"] if w == "ENV")))
    assert envs["IFGAN_MODELS_DIR"] == "/models" and envs["IFGAN_HOST"] == "0.0.0.0"
    assert set(envs) <= support.common_settings().envs, "ENV names a setting that does not exist"


def test_every_copied_path_exists_and_is_in_the_build_context(support):
    patterns = [p for p in (support.DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if p and not p.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for p in patterns:
            negate = p.startswith("!")
            pattern = p.lstrip("!")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.rstrip("*").rstrip("/") + "/*") \
                    or path == pattern.rstrip("/*"):
                keep = negate
        return keep

    copies = [rest for word, rest in dockerfile(support) if word == "COPY" and "--from=" not in rest]
    assert copies
    for rest in copies:
        sources = rest.split()[:-1]
        for source in sources:
            paths = [support.ROOT / source.replace("${VARIANT}", v) for v in ("cpu", "cuda")]
            for path in paths:
                assert path.exists(), f"COPY {source}: no such path {path}"
            files = [p for path in paths for p in ([path] if path.is_file() else path.rglob("*.py"))]
            for f in files:
                rel = str(f.relative_to(support.ROOT))
                assert included(rel), f"{rel} is copied but excluded by Dockerfile.dockerignore"


def test_the_models_stage_fetches_with_only_the_files_it_copies(support, tmp_path, models_dir):
    """The `models` stage copies three modules of services/ and runs the assets command from them."""
    parts = stages(dockerfile(support))
    (copy,) = [rest for word, rest in parts["models"] if word == "COPY" and "services/common/" in rest]
    *sources, target = copy.split()
    assert target == "/fetch/services/common/"
    package = tmp_path / "services"
    (package / "common").mkdir(parents=True)
    (package / "__init__.py").write_bytes((support.ROOT / "services/__init__.py").read_bytes())
    for source in sources:
        (package / "common" / Path(source).name).write_bytes((support.ROOT / source).read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", "import runpy, services.common.assets as a; print(a.__file__); "
                             "runpy.run_module('services.common.assets', run_name='__main__')", "verify",
                             "--models-dir", str(models_dir)], capture_output=True, text=True, cwd=tmp_path,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(tmp_path)), "imported the installed package instead"


def probe(support, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(support.DOCKER / "healthprobe.py"), *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


def test_health_probe_against_a_real_server(support, launch_service, tmp_path):
    server = launch_service("generator")
    ok = probe(support, "--address", server.address)
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    # As the image runs it: the port comes from the server's port file.
    port_file = tmp_path / "port"
    port_file.write_text(str(server.port))
    assert probe(support, env={"IFGAN_PORT_FILE": str(port_file), "IFGAN_PORT": "1"}).returncode == 0
    assert probe(support, "--address", server.address, "--service", "interfacegan.v1.GeneratorService"
                 ).returncode == 0
    unknown = probe(support, "--address", server.address, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout


def test_health_probe_fails_when_nothing_listens(support):
    from services.cluster import free_port
    result = probe(support, "--address", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stdout


def entrypoint(support, *args, env) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `python` is the project's interpreter
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IFGAN_")}
    return subprocess.run(["sh", str(support.DOCKER / "entrypoint.sh"), *args], capture_output=True, text=True,
                          timeout=120, env={**clean, "PATH": path, **env})


def test_entrypoint_refuses_the_placeholder_token(support):
    result = entrypoint(support, "generator", env={"IFGAN_AUTH_TOKEN": support.placeholder_token()})
    assert result.returncode == ENTRYPOINT_CODES["placeholder-token"] and "placeholder" in result.stderr


def test_entrypoint_refuses_the_placeholder_redis_password(support):
    url = f"redis://:{support.placeholder_token()}@redis:6379/0"
    result = entrypoint(support, "boundary", env={"IFGAN_AUTH_TOKEN": "t", "IFGAN_REDIS_URL": url})
    assert result.returncode == ENTRYPOINT_CODES["placeholder-token"] and "ifgan-redis Secret" in result.stderr


@pytest.mark.parametrize("env", [{"IFGAN_DEVICE": "cuda"}, {"IFGAN_DEVICE": "cuda:1"},
                                 {"IFGAN_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider"}],
                         ids=["device", "device-index", "providers"])
def test_entrypoint_refuses_cuda_where_there_is_none(support, models_dir, env):
    """Without a GPU a pod asked for CUDA stops with a clear line instead of serving from CPU."""
    import torch
    if torch.cuda.is_available():  # a GPU machine: the check passes and the service runs
        result = entrypoint(support, "scorer", "--help", env={"IFGAN_MODELS_DIR": str(models_dir), **env})
        assert result.returncode == 0, result.stderr
    else:
        result = entrypoint(support, "scorer", env={"IFGAN_MODELS_DIR": str(models_dir), **env})
        assert result.returncode == ENTRYPOINT_CODES["no-cuda"] and "no CUDA device is usable" in result.stderr
    cpu = entrypoint(support, "scorer", "--help", env={"IFGAN_MODELS_DIR": str(models_dir), "IFGAN_DEVICE": "cpu",
                                                       "IFGAN_PROVIDERS": "CPUExecutionProvider"})
    assert cpu.returncode == 0, cpu.stderr


def test_entrypoint_refuses_missing_or_altered_models(support, tmp_path, models_dir):
    result = entrypoint(support, "generator", env={"IFGAN_MODELS_DIR": str(tmp_path)})
    assert result.returncode == ENTRYPOINT_CODES["bad-models"] and "is missing" in result.stderr
    for f in models_dir.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    altered = tmp_path / "gender-v1.onnx"
    altered.write_bytes(altered.read_bytes()[:-1] + b"\0")
    result = entrypoint(support, "generator", env={"IFGAN_MODELS_DIR": str(tmp_path)})
    assert result.returncode == ENTRYPOINT_CODES["bad-models"] and "sha256" in result.stderr


def test_entrypoint_runs_the_named_service(support, models_dir):
    result = entrypoint(support, "generator", "--help", env={"IFGAN_MODELS_DIR": str(models_dir)})
    assert result.returncode == 0, result.stderr
    assert "python -m services.generator" in result.stdout and "--port" in result.stdout
    listing = entrypoint(support, "models", "list", env={})
    assert listing.returncode == 0 and "dcgan-digiface-64.pt" in listing.stdout
    assert entrypoint(support, "nonsense-service", env={}).returncode != 0


@pytest.mark.parametrize("name", ["entrypoint.sh", "healthprobe.py"])
def test_image_scripts_are_executable(support, name):
    assert os.access(support.DOCKER / name, os.X_OK)
