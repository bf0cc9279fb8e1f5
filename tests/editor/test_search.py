"""The target-edit search on known response curves: monotone, noisy, unreachable, wrong-way, non-monotone."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from services.editor.search import search


class Curve:
    """A face's response along a boundary, f(t), recording every batch it was asked for."""

    def __init__(self, f):
        self.f, self.batches = f, []

    async def __call__(self, distances):
        self.batches.append(list(distances))
        return [self.f(t) for t in distances]


def run(curve, **kw):
    kw.setdefault("tolerance", 2.0)
    kw.setdefault("max_distance", 8.0)
    kw.setdefault("max_rounds", 5)
    return asyncio.run(search(curve, **kw))


def test_delta_on_a_linear_response_is_met_with_one_batch_per_round():
    curve = Curve(lambda t: 30 + 2.5 * t)  # 2.5 years per unit
    out = run(curve, delta=10.0)
    assert out.met and out.stop == "met" and abs(out.after - 40) <= 2 and out.before == 30
    assert out.rounds == len(curve.batches) and out.evaluations == sum(map(len, curve.batches))
    assert all(t >= 0 for batch in curve.batches for t in batch)  # delta > 0: one side only
    assert out.distance == pytest.approx((out.after - 30) / 2.5)


def test_absolute_goal_measures_both_sides_then_refines_the_crossing():
    curve = Curve(lambda t: 0.5 + 0.45 * math.tanh(t / 3))  # a probability
    out = run(curve, goal=0.1, tolerance=0.01)
    assert out.met and out.distance < 0 and abs(out.after - 0.1) <= 0.01
    assert any(t > 0 for t in curve.batches[0]) and any(t < 0 for t in curve.batches[0])
    assert out.rounds <= 4


def test_tight_tolerance_bounded_by_rounds():
    curve = Curve(lambda t: t ** 3)
    out = run(curve, goal=5.0, tolerance=1e-9, max_rounds=3)
    assert out.rounds == 3 and out.stop == "rounds" and not out.met
    assert abs(out.after - 5.0) < 1.0  # still the closest measured point


def test_unreachable_target_stops_after_the_grid_with_the_closest_point():
    curve = Curve(lambda t: 30 + 1.0 * t)
    out = run(curve, delta=20.0, max_distance=4.0)
    assert out.stop == "unreachable" and not out.met and out.rounds == 1
    assert out.distance == pytest.approx(4.0) and out.after == pytest.approx(34.0)


def test_wrong_way_returns_the_unedited_face():
    curve = Curve(lambda t: 30 - 1.0 * t)  # the boundary points the other way
    out = run(curve, delta=10.0)
    assert out.stop == "wrong_way" and out.distance == 0 and out.after == 30 and out.rounds == 1


def test_non_monotone_response_refines_the_first_crossing_only():
    # Rises past the goal near t = 1.5, falls back below it (4.2 at t = 4.8), rises again: the refined distance
    # is the crossing nearest the face, not one beyond the dip.
    curve = Curve(lambda t: 6 * math.sin(math.pi * t / 5) + 0.15 * t * t)
    out = run(curve, delta=5.0, tolerance=0.2)
    first, second = sorted(curve.batches[0])[1:3]  # the grid's first two distances
    assert out.met and first < out.distance < second and curve.f(4.8) < 5
    assert all(first <= t <= second for batch in curve.batches[1:] for t in batch)
    # A bump that never reaches the goal: unreachable, at the top of the bump, not at the far end.
    bump = Curve(lambda t: 5 * math.exp(-((t - 2) ** 2)))
    out = run(bump, delta=8.0, tolerance=0.5)
    assert out.stop == "unreachable" and out.distance == pytest.approx(2.0, abs=1.0)


def test_noisy_response_is_met_and_invalid_scores_are_skipped():
    rng = np.random.default_rng(0)
    table = {}

    def f(t):
        if abs(t - 0.8) < 1e-9:
            return None  # no face at this distance
        return table.setdefault(round(t, 9), 30 + 2 * t + rng.normal(0, 0.7))

    out = run(Curve(f), delta=-10.0)
    assert out.met and out.distance < 0
    assert run(Curve(lambda t: None), delta=1.0).stop == "no_face"


def test_zero_change_needs_one_measurement():
    curve = Curve(lambda t: 0.3)
    out = run(curve, delta=0.0)
    assert out.met and curve.batches == [[0.0]]
    with pytest.raises(ValueError):
        run(curve)


def test_an_absolute_goal_with_a_known_side_measures_that_side_only():
    curve = Curve(lambda t: 0.5 + 0.45 * math.tanh(t / 3))
    out = run(curve, goal=0.9, tolerance=0.02, side=1.0)
    assert out.met and out.distance > 0 and all(t >= 0 for batch in curve.batches for t in batch)
    assert len(curve.batches[0]) == 5  # distance 0 and the four grid distances of one side
