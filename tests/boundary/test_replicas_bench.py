"""bench/boundary_replicas.py --quick: training over 1+1 and 2+2 generator/scorer replicas, every replica used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_replicas_bench_quick_spreads_training_over_every_replica_in_the_bulk_lane(tmp_path):
    out = tmp_path / "boundary-replicas.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "boundary_replicas.py"), "--quick", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [row["setup"] for row in result["table"]] == ["1+1", "2+2"]
    assert all(row["sampling_samples_per_s"] > 0 for row in result["table"])
    # Spreading and lanes do not depend on the machine's speed: these targets must hold in any run.
    for name in ("least_generator_replica_share_of_synthesize", "least_scorer_replica_share_of_score",
                 "training_batches_in_the_interactive_lane"):
        assert result["targets"][name]["met"], (name, result["targets"][name], result["replica_call_shares_2x2"])
    assert result["generator_requests_queued_by_lane"]["bulk"] > 0
