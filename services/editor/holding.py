"""hold=auto with the scorer in the loop: a target search whose candidates also correct the held attributes' drift."""

from __future__ import annotations

import dataclasses
import math
from typing import Awaitable, Callable, Sequence

import numpy as np

from . import search

#: Corrections tried at each candidate distance, as multiples of the predicted one (0: the held direction alone).
#: The spread absorbs a wrong slope or a drift that is not linear in the distance.
SPREAD = (0.0, 0.5, 1.0, 1.5)
#: Distance of the slope probes along each correction direction, on the unedited face (one image each side).
PROBE = 1.5
#: A probed slope counts when one unit of distance moves the attribute by at least this share of its threshold;
#: flatter (or reversed: the boundaries point towards more of their attribute) is the scorer's noise.
MIN_SLOPE = 0.25
#: Extra rounds (within max_rounds) that refine the corrections of the best points meeting the target, on how
#: many points, with which fractions of the Newton step; and the held drift (in thresholds) that needs none.
POLISH_ROUNDS = 2
POLISH_POINTS = 2
POLISH_STEPS = (0.5, 1.0, 1.5)
GOOD_ENOUGH = 1 / 3

Row = dict  # attribute -> value (valid scores only)
Point = tuple  # (t, (c_1, ..., c_H)): distance along the held direction, corrections along each held attribute's
#: measure(points) -> every attribute measured on the image of each point (one generator + one scorer batch).
Measure = Callable[[Sequence[Point]], Awaitable[Sequence[Row]]]


@dataclasses.dataclass(frozen=True)
class Held:
    """An attribute held automatically: its value on the unedited face and the drift it may keep."""

    name: str
    base: float
    threshold: float


@dataclasses.dataclass
class HeldResult:
    """What the held search returned.

    Attributes:
        outcome: The target search along the held direction, with distance / after / met of the returned point.
        point: (t, corrections) of the returned image.
        row: Every attribute measured on it.
        images: Images measured (the probes included).
        slopes: Per held attribute, the slope used (attribute unit per unit distance) and whether it was probed.
    """

    outcome: search.Outcome
    point: Point
    row: Row
    images: int
    slopes: list[tuple[float, bool]]


def correction_directions(edited: np.ndarray, held: Sequence[np.ndarray]) -> np.ndarray:
    """(H, d): each held attribute's normal projected off the edited normal and off the earlier ones, unit length.

    Moving along them changes the held attributes (to take back their drift) and, to first order, not the
    edited one. A normal inside the span of the others is left at zero: nothing to correct along it.
    """
    basis = [np.asarray(edited, np.float64).reshape(-1)]
    basis[0] = basis[0] / np.linalg.norm(basis[0])
    out = []
    for n in held:
        u = np.asarray(n, np.float64).reshape(-1).copy()
        for b in basis:
            u -= (u @ b) * b
        norm = np.linalg.norm(u)
        u = u / norm if norm > 1e-6 else np.zeros_like(u)
        if norm > 1e-6:
            basis.append(u)
        out.append(u)
    return np.stack(out)


def shifted(codes: np.ndarray, offset: np.ndarray, layers: tuple[int, int] | None = None) -> np.ndarray:
    """codes (N, d) or W+ (N, L, d) moved by `offset` (d,) (on the layer range only), as float32.

    The corrected codes are the start of a plain relative edit: a second call that starts from them renders the
    same image bit for bit.
    """
    codes = np.asarray(codes)
    moved = codes.astype(np.float64)
    if codes.ndim == 3:
        lo, hi = layers or (0, codes.shape[1])
        moved[:, lo:hi] += offset
    else:
        moved += offset
    return moved.astype(np.float32)


def _cost(row: Row, held: Sequence[Held]) -> float:
    """The worst drift in thresholds (inf where an attribute has no valid score)."""
    return max((abs(row[h.name] - h.base) / h.threshold if h.name in row else math.inf) for h in held)


async def held_search(measure: Measure, *, name: str, held: Sequence[Held], prior: Sequence[tuple[float, Row]],
                      tolerance: float, max_distance: float, max_rounds: int, goal: float | None = None,
                      delta: float | None = None, side: float = 0.0, watched: Sequence[Held] = (),
                      spread: Sequence[float] = SPREAD, probe: float = PROBE) -> HeldResult:
    """Searches the distance along the held direction that reaches the target, holding `held` with the scorer.

    Every candidate distance t of the bracketing search (search.search) is measured with a few corrections
    c along the held attributes' own directions: the predicted one, -drift(t) / slope per held attribute,
    times each factor of `spread`, all in the round's one batch. The drift at t is predicted from the points
    measured so far along the held direction (`prior`, the edit's own direction measured before, until
    then); the slope comes from two probes per held attribute on the unedited face in the first batch. The
    search follows, per t, the target value of its point with the smallest held drift. Of every measured
    point up to the first crossing of the goal, the one returned meets the target and holds best; when none
    meets it, the search's own closest point.

    Args:
        measure: Renders and scores points (t, corrections).
        name: The edited attribute.
        held: The held attributes, in the order of the corrections.
        prior: (distance, row) measured along the edit's own direction (and the unedited face's at 0).
        tolerance / max_distance / max_rounds / goal / delta / side: As search.search.
        watched: Attributes not held, kept within their thresholds too where a choice allows (a correction
            must not push them past theirs).
        spread: Multiples of the predicted correction tried per candidate.
        probe: Distance of the slope probes.
    """
    zero = tuple(0.0 for _ in held)
    everything = [*held, *watched]
    rows: dict[Point, Row] = {}
    chosen: dict[float, Point] = {}
    slopes: list[tuple[float, bool]] = [(h.threshold, False) for h in held]
    probes = [(0.0, tuple((s * probe if k == j else 0.0) for k in range(len(held)))) for j in range(len(held))
              for s in (1.0, -1.0)]
    limit = max_distance / 2  # corrections stay a fraction of the edit itself

    def predicted(j: int, t: float) -> float:
        h, (slope, _) = held[j], slopes[j]
        own = [(p[0], r[h.name] - h.base - slope * p[1][j]) for p, r in rows.items()
               if p[0] != 0 and h.name in r]
        points = own or [(d, r[h.name] - h.base) for d, r in prior if d != 0 and h.name in r]
        by_t: dict[float, list[float]] = {0.0: [0.0]}
        for d, v in points:
            by_t.setdefault(d, []).append(v)
        ts = sorted(by_t)
        return float(np.interp(t, ts, [float(np.median(by_t[d])) for d in ts]))

    def correction(t: float) -> tuple[float, ...]:
        return tuple(float(np.clip(-predicted(j, t) / slopes[j][0], -limit, limit)) for j in range(len(held)))

    async def evaluate(ts: Sequence[float]) -> list[float | None]:
        wanted: list[Point] = [] if rows else list(probes)
        per_t: dict[float, list[Point]] = {}
        for t in ts:
            c = correction(t)
            pts = [(0.0, zero)] if t == 0 else list(dict.fromkeys(
                (t, tuple(round(f * x, 9) for x in c)) for f in spread))
            per_t[t] = pts
            wanted += [p for p in pts if p not in rows]
        wanted = list(dict.fromkeys(wanted))
        for p, r in zip(wanted, await measure(wanted)):
            rows[p] = r
        if any(p in rows for p in probes) and not any(probed for _, probed in slopes):
            for j, h in enumerate(held):
                up, down = rows.get(probes[2 * j], {}), rows.get(probes[2 * j + 1], {})
                if h.name in up and h.name in down:
                    s = (up[h.name] - down[h.name]) / (2 * probe)
                    if s >= MIN_SLOPE * h.threshold:
                        slopes[j] = (s, True)
        out = []
        for t in ts:
            valid = [p for p in per_t[t] if name in rows[p]]
            if not valid:
                out.append(None)
                continue
            best = min(valid, key=lambda p: (_cost(rows[p], everything), abs(p[1][0]) if p[1] else 0.0))
            chosen[t] = best
            out.append(rows[best][name])
        return out

    outcome = await search.search(evaluate, tolerance=tolerance, max_distance=max_distance, max_rounds=max_rounds,
                                  goal=goal, delta=delta, side=side)
    if outcome.stop == "no_face":
        return HeldResult(outcome, (0.0, zero), rows.get((0.0, zero), {}), len(rows), slopes)
    goal_value = outcome.goal
    sign = math.copysign(1.0, outcome.distance) if outcome.distance else 0.0
    # The first crossing along the searched side bounds the choice (a later one is another bump of the curve).
    line = sorted(((t, rows[p][name]) for t, p in chosen.items() if t != 0 and math.copysign(1.0, t) == sign),
                  key=lambda tv: abs(tv[0]))
    reach = next((abs(t) for t, v in line if abs(v - goal_value) <= tolerance
                  or math.copysign(1.0, v - goal_value) != math.copysign(1.0, outcome.before - goal_value)),
                 abs(outcome.distance))

    def meeting() -> list[Point]:
        return [p for p, r in rows.items() if p[0] != 0 and math.copysign(1.0, p[0]) == sign
                and abs(p[0]) <= reach + 1e-9 and name in r and abs(r[name] - goal_value) <= tolerance]

    rounds = outcome.rounds
    # Rounds the search left over polish the hold: a Newton step on the corrections from the best points that
    # meet the target, with the slope re-fitted on the points measured at the same distance.
    for _ in range(min(POLISH_ROUNDS, max_rounds - rounds)):
        ranked = sorted(meeting(), key=lambda p: _cost(rows[p], everything))
        if not ranked or _cost(rows[ranked[0]], everything) <= GOOD_ENOUGH:
            break
        wanted = []
        for p in list(dict.fromkeys(ranked))[:POLISH_POINTS]:
            step = []
            for j, h in enumerate(held):
                same = [(q[1][j], r[h.name]) for q, r in rows.items() if q[0] == p[0] and h.name in r]
                slope = slopes[j][0]
                if len({c for c, _ in same}) >= 2:
                    cs, vs = np.array(same).T
                    local = float(np.polyfit(cs, vs, 1)[0])
                    if local >= MIN_SLOPE * h.threshold:
                        slope = local
                step.append(-(rows[p][h.name] - h.base) / slope)
            wanted += [(p[0], tuple(round(float(np.clip(c + f * d, -limit, limit)), 9) for c, d in zip(p[1], step)))
                       for f in POLISH_STEPS]
        wanted = [q for q in dict.fromkeys(wanted) if q not in rows]
        if not wanted:
            break
        for q, r in zip(wanted, await measure(wanted)):
            rows[q] = r
        rounds += 1
    met = meeting()
    if met:
        point = min(met, key=lambda p: (_cost(rows[p], everything), abs(p[0])))
    else:
        point = chosen.get(outcome.distance, (outcome.distance, zero))
    row = rows.get(point, {})
    after = row.get(name, outcome.after)
    final = dataclasses.replace(outcome, distance=point[0], after=after, met=abs(after - goal_value) <= tolerance,
                                evaluations=len(rows), stop="met" if met else outcome.stop, rounds=rounds)
    return HeldResult(final, point, row, len(rows), slopes)
