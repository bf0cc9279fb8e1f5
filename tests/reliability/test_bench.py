"""bench/reliability.py --quick against the session cluster: every target computed and met, the table complete."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_load_test_meets_its_targets(cluster, tmp_path):
    out = tmp_path / "reliability.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "reliability.py"), "--quick", "--attach",
                          str(cluster.directory), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert out.exists(), run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert {row["rpc"] for row in result["table"] if row["phase"] == "steady"} == \
        {"synthesize", "score", "edit_latents", "edit"}
    for row in result["table"]:
        assert row["requests"] > 0 and (row["ok"] == 0 or row["p50_ms"] <= row["p99_ms"])
    assert set(result["memory"]) == {"generator", "scorer", "boundary", "inversion", "editor"}
    failed = {k: v for k, v in result["targets"].items() if not v["met"]}
    assert not failed, (failed, run.stdout[-3000:])
    assert run.returncode == 0
