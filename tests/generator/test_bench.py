"""bench/generator.py --quick runs end to end and writes the table with computed targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_table_and_targets(tmp_path, models_dir):
    out = tmp_path / "generator.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "generator.py"), "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["settings"]["torch_threads"] == 1
    cases = [row["case"] for row in result["table"]]
    assert any(c.startswith("a raw batch 16") for c in cases)
    for mode in ("b batching on", "c batching off"):
        for clients in (1, 8):
            row = next(r for r in result["table"] if r["case"] == f"{mode}, {clients} clients")
            assert row["images_per_s"] > 0 and row["errors"] == 0 and row["p99_ms"] >= row["p50_ms"] > 0
            assert row["client_cpu_cores"] >= 0 and row["server_cpu_cores"] > 0
    assert any(c.startswith("a raw batch 16, 2 threads") for c in cases) and result["b8_over_raw_2_threads"] > 0
    assert set(result["targets"]) == {"b8_over_raw", "b8_over_c8", "b1_over_c1", "served_errors"}
    errors = result["targets"].pop("served_errors")
    assert errors == {"value": 0, "target": 0, "compare": "<=", "met": True}
    for target in result["targets"].values():
        assert set(target) == {"value", "target", "compare", "met"} and target["compare"] == ">="
        # no errors in this run, so each target is met exactly when its ratio reaches its threshold
        assert target["met"] == (target["value"] >= target["target"])
    assert "targets:" in run.stdout
