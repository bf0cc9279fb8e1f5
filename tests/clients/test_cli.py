"""The `ifgan` command line against the real cluster: help with defaults, info, boundaries, training with a
progress bar, edits with a grid, and remote commands with only the SDK importable."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

P = f"cli{uuid.uuid4().hex[:6]}"
IFGAN = Path(sys.executable).with_name("ifgan")


@pytest.fixture(scope="module")
def ifgan(cluster, tmp_path_factory):
    address = cluster.services["editor"].address
    folder = tmp_path_factory.mktemp("cli")
    v = np.random.default_rng(2).standard_normal((1, 100))
    np.save(folder / f"dcgan-digiface-64_{P}_boundary.npy", v / np.linalg.norm(v))

    def run(*args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([str(IFGAN), "--address", address, *args], capture_output=True, text=True,
                                timeout=timeout, cwd=folder)
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result
    run.folder = folder
    run.address = address
    return run


def test_help_shows_every_command_and_the_defaults(ifgan):
    top = ifgan("--help").stdout
    for command in ("info", "train-boundary", "boundaries", "edit", "catalog"):
        assert command in top
    assert "(default: 127.0.0.1:50051)" in top.replace("\n", " ").replace("  ", " ") or "default:" in top
    edit = ifgan("edit", "--help").stdout
    assert "(default: 2)" in edit and "(default: edits)" in edit and "hold=" in edit
    assert "(default: 2)" in ifgan("catalog", "--help").stdout


def test_boundaries_commands(ifgan):
    folder = ifgan.folder
    out = ifgan("boundaries", "import", f"dcgan-digiface-64_{P}_boundary.npy").stdout
    assert f"dcgan-digiface-64/{P}/Z v1" in out
    ifgan("boundaries", "import", f"dcgan-digiface-64_{P}_boundary.npy", "--attribute", f"{P}-twin")
    v = np.random.default_rng(3).standard_normal((1, 100))
    np.save(folder / "other.npy", v / np.linalg.norm(v))
    ifgan("--model", "dcgan-digiface-64", "boundaries", "import", "other.npy", "--attribute", f"{P}-other",
          "--space", "Z")
    listed = ifgan("boundaries", "list", "--attribute", P).stdout
    assert P in listed and "imported" in listed
    as_json = json.loads(ifgan("boundaries", "list", "--json").stdout)
    assert {f"{P}", f"{P}-twin", f"{P}-other"} <= {b["ref"]["attribute"] for b in as_json}
    shown = ifgan("boundaries", "show", P).stdout
    assert '"origin": "imported"' in shown and "norm 1.0000" in shown
    exported = ifgan("boundaries", "export", P, f"{P}-other", "-o", "exported").stdout.split()
    assert np.allclose(np.load(folder / exported[0]), np.load(folder / f"dcgan-digiface-64_{P}_boundary.npy"))
    condition = ifgan("boundaries", "condition", P, "--hold", f"{P}-other").stdout
    assert f"{P}|{P}-other v" in condition
    analysis = ifgan("boundaries", "analyze", P, f"{P}-other", f"{P}-twin", "-o", "cos.png").stdout
    assert "1.000" in analysis and (folder / "cos.png").read_bytes()[:4] == b"\x89PNG"
    missing = ifgan("boundaries", "show", f"{P}-missing", ok=False)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_edit_writes_images_scores_and_a_grid(ifgan):
    result = ifgan("edit", "--seed", "3", "-e", f"{P}:-2:2:3", "-e", f"{P}-twin:1", "--rescore", "--grid", "g.png",
                   "-o", "edited")
    folder = ifgan.folder / "edited"
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(["original.png", "scores.json", f"{P}_00_-2.00.png", f"{P}_01_+0.00.png",
                            f"{P}_02_+2.00.png", f"{P}-twin_00_+1.00.png"])
    scores = json.loads((folder / "scores.json").read_text())
    assert len(scores) == 5 and "age" in scores[0]["scores"]
    assert "gender" in result.stdout and "grid: g.png" in result.stdout
    grid = Image.open(ifgan.folder / "g.png")
    assert grid.width >= 4 * 128 and grid.height >= 2 * 128
    code = ifgan.folder / "code.npy"
    np.save(code, np.random.default_rng(0).standard_normal((1, 100)).astype(np.float32))
    ifgan("edit", "--code", str(code), "-e", f"{P}:1", "-o", "from-code", "--format", "jpeg")
    assert Image.open(ifgan.folder / "from-code" / "original.jpg").format == "JPEG"
    bad = ifgan("edit", "--seed", "1", "-e", "age:1:2:3:4", ok=False)
    assert bad.returncode == 2 and "expected ATTR" in bad.stderr


def test_train_boundary_draws_progress_and_prints_the_boundaries(ifgan):
    result = ifgan("train-boundary", "yaw", "--num-samples", "300", "--ratio", "0.1", "--seed", "4242",
                   "--no-reuse-dataset", timeout=600)
    assert "sampling" in result.stderr and "300/300" in result.stderr.replace("\r", "\n")
    assert "succeeded" in result.stdout and "yaw" in result.stdout and "trained" in result.stdout


SDK_ONLY = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "services" or name.startswith("services."):
            raise ImportError("services is not installed (SDK-only machine)")
sys.meta_path.insert(0, Block())
from interfacegan.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_remote_commands_need_only_the_sdk(ifgan, tmp_path):
    def sdk_only(*args):
        return subprocess.run([sys.executable, "-c", SDK_ONLY, *args], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
    info = sdk_only("--address", ifgan.address, "info")
    assert info.returncode == 0 and "dcgan-digiface-64" in info.stdout and "gender" in info.stdout, info.stderr
    edit = sdk_only("--address", ifgan.address, "-q", "edit", "--seed", "1", "-e", f"{P}:1", "-o", "e")
    assert edit.returncode == 0 and (tmp_path / "e" / "original.png").exists(), edit.stderr
    cluster = sdk_only("cluster", "status")
    assert cluster.returncode == 2 and "invalid choice: 'cluster'" in cluster.stderr


def test_the_sdk_imports_no_server_code():
    import ast
    root = Path(__file__).resolve().parents[2] / "clients" / "python" / "interfacegan"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in {"services", "models", "examples"}]
    assert not offenders, offenders


def test_cluster_status_without_a_cluster(tmp_path):
    result = subprocess.run([str(IFGAN.with_name("ifgan-cluster")), "status", "--dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "no cluster running" in result.stdout
