"""bench/calibration.py --quick runs against the session's cluster and writes its table and targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_benchmark_writes_table_and_targets(cluster, tmp_path):
    out = tmp_path / "calibration.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "calibration.py"), "--quick", "--attach",
                           str(cluster.directory), "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["faces"] == 6
    rows = {r["edit"]: r for r in result["table"]}
    assert set(rows) == {"age:+10y", "age:-10y", "smile:to=0.8", "yaw:to=20", "yaw:to=-20", "gender:to=0.9"}
    for r in rows.values():
        assert r["faces"] == 6 and 0 <= r["hit_rate"] <= 1 and 1 <= r["mean_rounds"] <= 5
        assert abs(r["mean_calls"] - 2 * (r["mean_rounds"] + 1)) < 1e-9 and r["mean_images_measured"] > r["mean_rounds"]
        assert sum(r["misses_by_stop"].values()) == round(6 * (1 - r["hit_rate"]))
    assert rows["age:+10y"]["unit"] == "years" and rows["yaw:to=20"]["tolerance"] == 3.0
    for r in rows.values():  # the reach scan: every 4th face along each boundary
        x = r["reach"]
        assert x["scanned_faces"] >= 1 and 0 <= x["reachable_within_limit"] <= x["reachable_within_twice_limit"] <= 1
    assert rows["smile:to=0.8"]["reach"]["highest_within_limit"] > rows["smile:to=0.8"]["reach"]["median_lowest_within_limit"]
    hold = result["hold_auto"]
    assert hold["faces"] == 6 and {"age", "yaw", "smile"} <= set(hold["attributes"])
    for a in hold["attributes"].values():
        if a["held"]:
            assert 1 <= a["checked"] <= a["held"] and 0 <= a["base_stable"] <= a["checked"]
    photos = result["photos"]
    assert photos["photos"] == ["astronaut.png", "grace_hopper.jpg"] and len(photos["rows"]) == 2 * 7
    assert all(r["variant"] and r["stop"] for r in photos["rows"])  # tuned, and every search said why it stopped
    targets = result["targets"]
    assert {"hit_rate yaw:to=20", "mean_rounds", "held_age_drift_cut_in_gender_edit"} <= set(targets)
    for t in targets.values():
        assert t["met"] == (t["value"] >= t["target"] if t["compare"] == ">=" else t["value"] <= t["target"])
    assert "target mean_rounds" in done.stdout
