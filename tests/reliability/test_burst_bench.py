"""bench/burst.py --quick against the session cluster: every image-decoding service burst, every figure written
into the results file beside what was there, no large call failing and no small call lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("scorer", "inversion", "editor")


def test_quick_burst_writes_its_figures_and_keeps_the_rest_of_the_file(cluster, tmp_path):
    out = tmp_path / "reliability.json"
    out.write_text(json.dumps({"load": {"kept": True}, "targets": {"load_errors": {"value": 0, "met": True}}}))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "burst.py"), "--quick", "--attach",
                          str(cluster.directory), "--out", str(out)], capture_output=True, text=True, timeout=1200)
    result = json.loads(out.read_text())
    assert result["load"] == {"kept": True} and "load_errors" in result["targets"], run.stdout[-2000:]
    assert not {"out", "attach"} & set(result["burst"]["config"])  # no machine paths in results
    results = result["burst"]["results"]
    assert set(results) == set(SERVICES), run.stdout[-3000:] + run.stderr[-3000:]
    for name, r in results.items():
        memory = r["memory_mb"][name]
        assert 0 < memory["before"] <= memory["peak"] and memory["after"] > 0
        assert r["small_calls"] > 0 and r["small_p50_s"] <= r["small_p99_s"]
        for target in ("large_ok", "refusals_without_retry_hint", "small_errors"):
            assert result["targets"][f"burst_{name}_{target}"]["met"], (name, target, r, run.stdout[-2000:])
    assert result["targets"]["burst_all_serving_after"]["met"]
