"""The photo benchmark's asked-direction count."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.photos import direction_rates  # noqa: E402


def _row(photo, face, attribute, d, score, before):
    return {"photo": photo, "face": face, "attribute": attribute, "d": d, "score": score, "unedited_score": before}


def test_each_asked_direction_is_judged_against_the_unedited_photo():
    rows = [
        _row("a", 0, "age", -3.0, 20.0, 30.0), _row("a", 0, "age", -1.0, 35.0, 30.0),  # -1 is not the largest
        _row("a", 0, "age", 3.0, 40.0, 30.0),  # both ways as asked
        _row("a", 0, "smile", -3.0, 0.7, 0.6), _row("a", 0, "smile", 3.0, 0.8, 0.6),  # up for -3: wrong way
        _row("b", 1, "gender", -3.0, None, 0.5), _row("b", 1, "gender", 3.0, 0.4, 0.5),  # one unread, one wrong
    ]
    moved = direction_rates(rows)
    assert moved["pairs"] == 5 and moved["unread"] == 1
    assert moved["rate"] == pytest.approx(3 / 5)
    assert moved["by_attribute"] == {"age": 1.0, "gender": 0.0, "smile": 0.5}
    # The first round's reading, +3 against -3, for comparison: age and smile go up; gender has no -3 reading.
    assert moved["endpoint_pairs"] == 2 and moved["endpoint_rate"] == 1.0
