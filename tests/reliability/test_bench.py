"""bench/reliability.py --quick against the session cluster: every phase measured, every reply checked, every
service overloaded, the error and overload targets met (the rate and memory targets need the full run's minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIX = {"synthesize", "score", "edit_latents", "edit", "invert"}
SERVICES = ("generator", "scorer", "boundary", "inversion", "editor")
#: Judged by the full run: a few seconds on a shared machine say little about rates and memory growth.
TIMED = {"load_achieved_over_offered_min", "memory_growth_max_pct"}


def test_quick_load_test_meets_its_targets(cluster, tmp_path):
    out = tmp_path / "reliability.json"
    # bench/burst.py's section and targets share the file: the load test replaces only its own.
    burst = {"burst": {"results": {"kept": True}}, "targets": {"burst_scorer_large_ok": {"value": 1, "met": True},
                                                               "load_errors": {"value": -1, "met": False}}}
    out.write_text(json.dumps(burst))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "reliability.py"), "--quick", "--attach",
                          str(cluster.directory), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert out.exists(), run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["burst"] == burst["burst"] and result["targets"]["burst_scorer_large_ok"]["met"]
    assert "config" in result and "load" in result and "out" not in result["config"]
    for phase in ("warm-up", "capacity", "load"):
        assert {row["rpc"] for row in result["table"] if row["phase"] == phase} == MIX, phase
    for row in result["table"]:
        assert row["requests"] > 0 and (row["ok"] == 0 or row["p50_ms"] <= row["p99_ms"])
    # The load is offered at 80% of the capacity the same run measured, RPC by RPC.
    for rpc in MIX:
        assert abs(result["offered_rps"][rpc] - 0.8 * result["capacity"]["per_rpc"][rpc]["rps"]) < 1e-6
    # Every service was overloaded through its own capacity-limited replica.
    assert set(result["overload"]) == set(SERVICES)
    assert {f"overload_{s}_refused" for s in SERVICES} <= set(result["targets"])
    assert all(m["end_mb"] > 0 for name, m in result["memory"].items() if name in SERVICES)
    assert TIMED <= set(result["targets"])
    failed = {k: v for k, v in result["targets"].items() if not v["met"] and k not in TIMED}
    assert not failed, (failed, run.stdout[-3000:])
