"""Target edits: the distance along a boundary that brings one face's measured attribute to a value."""

from __future__ import annotations

import dataclasses
import math
from typing import Awaitable, Callable, Sequence

#: Round 1's distances on each side, as fractions of the distance limit: dense near 0, where most targets lie.
FIRST_ROUND = (0.15, 0.35, 0.6, 1.0)
#: Candidate distances per refining round (one generator + scorer batch each).
PER_ROUND = 4

#: evaluate(distances) -> the measured value at each (None: no valid score, e.g. no face found).
Evaluate = Callable[[Sequence[float]], Awaitable[Sequence["float | None"]]]

STOPS = {
    "met": "reached the target within tolerance",
    "unreachable": "the attribute moves the asked way but not far enough within the distance limit",
    "wrong_way": "the attribute does not move the asked way along this boundary within the distance limit",
    "rounds": "bracketed the target but not within tolerance in the allowed rounds",
    "no_face": "the scorer found no valid value on the unedited face",
}


@dataclasses.dataclass
class Outcome:
    """What a search found for one face.

    Attributes:
        distance: Relative distance chosen (the measured point closest to the goal on the searched side).
        goal: Value asked for (before + delta, or `to`).
        before / after: Measured at distance 0 and at `distance`.
        met: |after - goal| <= tolerance.
        rounds / evaluations: Batches sent and candidate distances measured (the unedited face included).
        stop: A key of STOPS.
        measured: Every (distance, value) measured, in order.
    """

    distance: float
    goal: float
    before: float
    after: float
    met: bool
    rounds: int
    evaluations: int
    stop: str
    measured: list[tuple[float, float | None]]

    @property
    def message(self) -> str:
        return STOPS[self.stop]


def _crossing(points: list[tuple[float, float]], goal: float, tolerance: float) -> int | None:
    """Index i of the first point, walking outward from distance 0, that reaches or passes the goal."""
    side = math.copysign(1.0, points[0][1] - goal)
    for i, (_, v) in enumerate(points):
        if abs(v - goal) <= tolerance or math.copysign(1.0, v - goal) != side:
            return i
    return None


async def search(evaluate: Evaluate, *, tolerance: float, max_distance: float, max_rounds: int,
                 goal: float | None = None, delta: float | None = None, per_round: int = PER_ROUND,
                 side: float = 0.0) -> Outcome:
    """Finds the distance that brings the measured attribute to a goal, by bracketing.

    Round 1 measures distance 0 and a grid out to `max_distance` (on the side of `delta`'s sign, or on both
    sides for an absolute goal); every later round measures `per_round` distances inside the bracket (the
    secant estimate and an even spread), all as one batch. Only the first crossing walking outward from 0
    is refined, so a non-monotone response never makes the search jump past a bump; when no measured
    distance on the searched side passes the goal the search stops at once and says why.

    Args:
        evaluate: Measures the attribute at a batch of relative distances.
        tolerance: How close counts as reached, in the attribute's unit.
        max_distance: Largest |distance| tried.
        max_rounds: Most batches (round 1 included), >= 1.
        goal / delta: Exactly one: the value to reach, or the change from the unedited value.
        per_round: Candidates per refining round.
        side: An absolute goal's side when it is known (its sign; 0: both), e.g. from an earlier search of the
            same face along a nearly parallel direction: half the first round's images.
    """
    if (goal is None) == (delta is None):
        raise ValueError("give exactly one of goal and delta")
    grid = [f * max_distance for f in FIRST_ROUND]
    if delta is not None:
        sides = [1.0 if delta >= 0 else -1.0] if delta else []
    else:
        sides = [math.copysign(1.0, side)] if side else [1.0, -1.0]
    distances = [0.0] + [s * g for s in sides for g in grid]
    values = list(await evaluate(distances))
    measured = list(zip(distances, values))
    rounds, before = 1, values[0]
    if before is None:
        return Outcome(0.0, math.nan, math.nan, math.nan, False, rounds, len(measured), "no_face", measured)
    goal = before + delta if delta is not None else goal

    def side_points(sign: float) -> list[tuple[float, float]]:
        pts = [(t, v) for t, v in measured if v is not None and (t == 0 or math.copysign(1.0, t) == sign)]
        return sorted(pts, key=lambda p: abs(p[0]))

    def best_of(points: list[tuple[float, float]], end: int | None) -> tuple[float, float]:
        upto = points if end is None else points[:end + 1]
        return min(upto, key=lambda p: (abs(p[1] - goal), abs(p[0])))

    def outcome(t: float, v: float, stop: str) -> Outcome:
        return Outcome(t, goal, before, v, abs(v - goal) <= tolerance, rounds, len(measured), stop, measured)

    if abs(before - goal) <= tolerance:
        return outcome(0.0, before, "met")
    # The side to refine: the one whose first crossing is nearest 0 (an absolute goal measured both sides).
    choices = []
    for s in sides:
        pts = side_points(s)
        i = _crossing(pts, goal, tolerance)
        closest = min(abs(v - goal) for _, v in pts)
        choices.append((i is None, abs(pts[i][0]) if i is not None else closest, s))
    if not choices:
        return outcome(0.0, before, "met")
    _, _, sign = min(choices)
    while True:
        pts = side_points(sign)
        i = _crossing(pts, goal, tolerance)
        t, v = best_of(pts, i)
        if abs(v - goal) <= tolerance:
            return outcome(t, v, "met")
        if i is None:
            moved = abs(v - goal) < abs(before - goal) - tolerance * 1e-3
            return outcome(t, v, "unreachable" if moved else "wrong_way")
        if rounds >= max_rounds:
            return outcome(t, v, "rounds")
        (a, fa), (b, fb) = pts[i - 1], pts[i]
        secant = a + (goal - fa) * (b - a) / (fb - fa) if fb != fa else (a + b) / 2
        spread = [a + (b - a) * k / per_round for k in range(1, per_round)]
        candidates = sorted({round(c, 9) for c in [secant, *spread] if min(a, b) < c < max(a, b)})
        if not candidates or abs(b - a) < 1e-6:
            return outcome(t, v, "rounds")
        new = list(await evaluate(candidates))
        measured.extend(zip(candidates, new))
        rounds += 1
