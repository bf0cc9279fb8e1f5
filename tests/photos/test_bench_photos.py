"""The photo benchmark's quick mode, run as a user would: every number it reports comes from real models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_reports_every_target_from_a_real_portrait(tmp_path, models_dir):
    out = tmp_path / "photos.json"
    run = subprocess.run([sys.executable, "bench/photos.py", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["targets"]) == {"mean_reconstruction_identity_tuned", "mean_reconstruction_psnr_tuned_db",
                                      "edited_same_person_rate", "attribute_moves_asked_way_rate",
                                      "cpu_seconds_per_face", "changed_pixels_outside_mask"}
    for t in result["targets"].values():
        assert t["met"] == ((t["value"] >= t["target"]) if t["compare"] == ">=" else (t["value"] <= t["target"]))
    (face,) = result["faces"]
    assert face["photo"] == "grace_hopper.jpg" and face["cpu_s"] > 0
    assert face["psnr_tuned"] > face["psnr_untuned"] - 1  # 20 tuning steps from the encoder's pivot
    assert result["summary"]["changed_pixels_outside_mask"] == 0 and result["summary"]["pixels_outside_mask"] > 0
    assert len(result["edits"]) == 3 * 2 and {e["attribute"] for e in result["edits"]} == {"age", "gender", "smile"}
    for e in result["edits"]:  # every edit is read on the result and on the unedited photo, with one framing
        assert e["score"] is not None and e["unedited_score"] is not None and 0 <= e["identity"] < 2
    summary = result["summary"]
    assert summary["attribute_pairs"] + summary["attribute_pairs_unread"] == 6
    assert set(summary["attribute_moves_asked_way_by_attribute"]) == {"age", "gender", "smile"}
    assert result["targets"]["attribute_moves_asked_way_rate"]["value"] == pytest.approx(
        summary["attribute_moves_asked_way_rate"], abs=1e-3)
    assert [(r["tune_from"], r["steps"]) for r in result["tradeoff"]] == [(9, 0), (9, 20)]
    untuned, tuned = result["tradeoff"]
    assert untuned["change_kept"] == pytest.approx(1.0)  # the base generator renders its own change
    assert 0 < tuned["change_kept"] < 1.5 and tuned["cpu_s_per_face"] > 0
    assert "trade-off" in run.stdout and "target" in run.stdout
