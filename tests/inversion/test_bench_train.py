"""The benchmark's quick mode and the encoder training command, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from inversion_support import TINY_MODELS

from services.inversion import encoder as enc

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_times_the_served_invert_and_checks_every_reply(tmp_path, models_dir):
    out = tmp_path / "inversion.json"
    run = subprocess.run([sys.executable, "bench/inversion.py", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    # The server ran at its own defaults (the quick run only shortens the step budget).
    assert result["server"]["torch_threads"] == 2 and result["server"]["max_batch_size"] == 32
    assert result["concurrency"] == result["server"]["max_batch_size"]
    phases = {r["phase"]: r for r in result["table"]}
    assert list(phases) == ["encoder only", "one request at a time", "4 requests, 32 concurrent"]
    for row in [*phases.values(), *result["photos"]]:
        assert row["errors"] == 0 and row["ok"] == row["images"] > 0, row
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["server_cpu_s_per_image"] > 0
    assert phases["one request at a time"]["mean_steps"] == 5 and phases["encoder only"]["mean_steps"] == 0
    assert [p["photo"] for p in result["photos"]] == ["astronaut.png", "grace_hopper.jpg"]
    assert all(p["mean_psnr"] > 10 for p in result["photos"])
    assert set(result["targets"]) == {"mean_psnr_many_db", "min_photo_psnr_db", "wall_seconds_per_image_many",
                                      "server_cpu_seconds_per_image_many", "server_cpu_seconds_per_image_one_request",
                                      "p50_seconds_one_request", "errors"}
    for t in result["targets"].values():
        assert t["met"] == (t["value"] >= t["target"] if t["compare"] == ">=" else t["value"] <= t["target"])
    assert result["targets"]["errors"]["met"]
    assert "server_cpu_seconds_per_image_many" in run.stdout


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
