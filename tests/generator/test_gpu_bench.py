"""bench/gpu.sh without a GPU: its plan (the flags the CUDA run passes) and a tiny CPU model sweep."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_dry_run_plans_the_cuda_run_and_sweeps_a_random_stylegan2(tmp_path):
    script = ROOT / "bench" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    run = subprocess.run(["bash", str(script), "--dry-run"], cwd=ROOT, env={**os.environ, "OUT": str(tmp_path)},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    plan = json.loads((tmp_path / "generator-plan.json").read_text())
    assert plan["target_clients"] == 64 and plan["clients"] == [1, 64, 256]
    assert max(plan["raw_batch_sizes"]) == 1024
    flags = plan["server_flags"]
    assert flags[flags.index("--cuda-graphs") + 1] == "1,2,4,8,16,32,64,128,256"
    assert flags[flags.index("--max-batch-size") + 1] == "256"
    sweep = json.loads((tmp_path / "model-sweep.json").read_text())
    rows = sweep["resolutions"]["8"]["rows"]
    assert [r["batch"] for r in rows] == [1, 2] and all(r["images_per_s"] > 0 for r in rows)
    assert all(t["met"] for t in sweep["targets"].values())
