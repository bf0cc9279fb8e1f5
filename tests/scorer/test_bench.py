"""bench/scorer.py --quick runs end to end (engine in process, a real server) and writes its table and targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_table_and_targets(tmp_path, models_dir):
    out = tmp_path / "scorer.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "scorer.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True
    cells = {(r["group"], r["batch"]) for r in result["table"]}
    assert cells == {(g, b) for g in ("gender", "age", "mesh", "all") for b in (1, 64)}
    for row in result["table"]:
        assert row["in_process_img_s"] > 0 and row["served_img_s"] > 0
        assert abs(row["served_over_in_process"] - row["served_img_s"] / row["in_process_img_s"]) < 0.01
    for name in ("gender", "age", "mesh", "all"):
        target = result["targets"][f"served_over_in_process_b64_{name}"]
        assert target["target"] == 0.85 and target["met"] == (target["value"] >= 0.85)
    assert "served_over_in_process_b64_all" in done.stdout
