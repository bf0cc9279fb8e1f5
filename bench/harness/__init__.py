"""Helpers every benchmark shares: process CPU and memory from /proc, targets, percentiles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory line of /proc/PID/status in MiB: VmRSS (now) or VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


def at_least(value: float, threshold: float) -> dict:
    """A target met when value >= threshold."""
    return {"value": round(float(value), 4), "target": threshold, "compare": ">=", "met": bool(value >= threshold)}


def at_most(value: float, threshold: float) -> dict:
    """A target met when value <= threshold."""
    return {"value": round(float(value), 4), "target": threshold, "compare": "<=", "met": bool(value <= threshold)}


def print_targets(targets: dict, say=print) -> None:
    """One line per target: name, value, comparison, threshold, met."""
    for name, t in targets.items():
        say(f"  target {name:38s} {t['value']:>10.4g} {t.get('compare', '>='):2s} {t['target']:<8g} "
            f"{'met' if t['met'] else 'NOT MET'}")


def percentile_ms(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(seconds) * 1000, q)), 1) if seconds else None


def write_result(path: Path, result: dict, say=print) -> None:
    """Writes a benchmark's results file (JSON, parents created) and says where."""
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {path}")
