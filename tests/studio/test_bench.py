"""bench/studio.py --quick runs against the session's cluster and writes its table and target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_table_and_target(cluster, tmp_path):
    out = tmp_path / "studio.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "studio.py"), "--quick", "--attach",
                           str(cluster.directory), "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["moves_per_drag"] == 8
    rows = {r["scenario"]: r for r in result["table"]}
    assert set(rows) == {"drag one slider, seed", "drag with another slider set, seed", "drag holding bench-b, seed",
                         "grid of 7 images, seed"}
    for row in result["table"]:
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["calls"] >= 2
    first = rows["drag one slider, seed"]
    assert 0 < first["editor_median_ms"] < first["median_ms"]
    target = result["targets"]["slider_move_median_ms_seed"]
    assert target["target"] == 150 and target["value"] == first["median_ms"]
    assert target["met"] == (target["value"] <= 150)
    assert "slider_move_median_ms_seed" in done.stdout
