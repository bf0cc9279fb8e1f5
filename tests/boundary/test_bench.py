"""The boundary benchmark's quick mode runs end to end and writes its table and targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_table_and_targets(tmp_path, models_dir):
    out = tmp_path / "boundary.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "boundary.py"), "--quick", "--out", str(out),
                          "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "IFGAN_MODELS_DIR": str(models_dir)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["ours"]["num_samples"] == 600 and result["ours"]["samples_per_second"] > 0
    rows = {r["attribute"]: r for r in result["attributes"]}
    assert set(rows) == {"gender", "age", "yaw", "smile"}
    for row in rows.values():  # the 20K-scale check, at the quick run's 400 samples
        assert row["samples_20k"] == 400 and row["svc_check_samples"] == row["samples_20k"] * 7 // 10
        assert isinstance(row["converged_20k"], bool) and -1 <= row["cosine_vs_svc_20k"] <= 1
    # Both sides of the comparison: the same round size, the same scorer processes, the same timer.
    comparison = result["comparison"]
    assert comparison["rounds"] == 1 and comparison["samples_per_round"] == 200
    assert comparison["scorer_processes"] == result["scorer_replicas"] and "wall clock" in comparison["timer"]
    targets = result["targets"]
    assert set(targets) == {"svm_cosine_vs_svc", "svm_20k_converged", "svm_seconds_20k", "gender_validation_accuracy",
                            "age_validation_accuracy", "yaw_validation_accuracy", "smile_validation_accuracy",
                            "boundary_peak_rss_mb", "speedup_per_sample_vs_baseline"}
    for t in targets.values():
        assert t["met"] == (t["value"] >= t["target"] if t["compare"] == ">=" else t["value"] <= t["target"])
    # Our solver agrees with the reference SVC on the same samples whatever the load of the machine.
    assert targets["svm_cosine_vs_svc"]["met"]
    assert "target speedup_per_sample_vs_baseline" in run.stdout
