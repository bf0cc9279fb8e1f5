"""bench/priority.py --quick runs end to end: both modes, all three phases, the table and computed targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_priority_bench_quick(tmp_path):
    out = tmp_path / "priority.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "priority.py"), "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    for mode in ("on", "off"):
        row = result["table"][mode]
        assert row["idle"]["edits"] > 0 and row["mixed"]["edits"] > 0
        assert row["bulk"]["bulk_images_per_s"] > 0 and row["mixed"]["bulk_images_per_s"] > 0
        assert row["idle"]["p99_ms"] >= row["idle"]["p50_ms"] > 0
    assert set(result["targets"]) == {"lanes_on_mixed_p99_over_idle_p99", "lanes_on_over_off_mixed_bulk_throughput",
                                      "errors"}
    for target in result["targets"].values():
        assert isinstance(target["met"], bool) and target["value"] >= 0
    assert run.returncode == (0 if all(t["met"] for t in result["targets"].values()) else 1)
