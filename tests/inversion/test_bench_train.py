"""The benchmark's quick mode and the encoder training command, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from inversion_support import TINY_MODELS

from services.inversion import encoder as enc

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_writes_the_table_and_targets(tmp_path, models_dir):
    out = tmp_path / "inversion.json"
    run = subprocess.run([sys.executable, "bench/inversion.py", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["stage"] for r in result["table"]] == ["encoder, one pass", "encoder + 3 corrections",
                                                     "encoder + refinement"]
    assert set(result["targets"]) == {"mean_psnr_after_refinement_db", "cpu_seconds_per_image"}
    assert all({"value", "target", "met"} <= set(t) for t in result["targets"].values())
    psnrs = [r["mean_psnr"] for r in result["table"]]
    assert psnrs == sorted(psnrs) and psnrs[0] > 12
    assert [p["photo"] for p in result["photos"]] == ["astronaut.png", "grace_hopper.jpg"]
    assert "encoder + refinement" in run.stdout


def test_train_encoder_writes_a_checked_encoder_the_server_would_find(tmp_path, models_dir):
    models_json = tmp_path / "models.json"
    models_json.write_text(json.dumps(TINY_MODELS))
    run = subprocess.run([sys.executable, "-m", "services.inversion.train_encoder", "--model", "stylegan-tiny",
                          "--models-json", str(models_json), "--models-dir", str(tmp_path), "--steps", "6",
                          "--batch-size", "16", "--log-every", "3", "--eval-samples", "16", "--threads", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert enc.find("stylegan-tiny", tmp_path) == tmp_path / "encoder-stylegan-tiny.pt"
    net, manifest = enc.load_for("stylegan-tiny", tmp_path)
    assert manifest["steps"] == 6 and manifest["space"] == "w" and tuple(net.code_shape) == (64,)
    assert manifest["sha256"] == enc.sha256_of(tmp_path / "encoder-stylegan-tiny.pt")
    assert "--help" not in run.stdout and json.loads(run.stdout.strip().splitlines()[-1])["steps"] == 6
