"""hold=auto with the scorer in the loop: a target search whose candidates also correct the held attributes' drift."""

from __future__ import annotations

import dataclasses
import hashlib
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
#: Rounds after the search (beyond its max_rounds) that refine the distance and corrections of the points nearest
#: done, from how many points, with which fractions of the Newton step; and the held drift (in thresholds) that
#: needs none.
POLISH_ROUNDS = 5
POLISH_POINTS = 3
POLISH_STEPS = (0.5, 1.0, 1.5)
GOOD_ENOUGH = 1 / 3
#: Measured points a Newton step fits its slopes on (the nearest to its start), at least.
NEAREST = 8
#: Local rounds, when the polished hold still leaves an attribute past its threshold: on some faces the held
#: attribute follows the edited one along every boundary direction (the age reading rises with P(male) whatever
#: the age correction), yet other directions of the code space part them. Each round probes LOCAL_PROBES random
#: orthonormal directions (+-LOCAL_STEP, one batch), fits every attribute's local gradient on them and measures
#: the least-norm step that takes the target and the drifted attributes back, at LOCAL_FACTORS of it (a batch).
LOCAL_ROUNDS = 2
LOCAL_PROBES = 12
LOCAL_STEP = 1.0
LOCAL_FACTORS = (0.5, 1.0, 1.5)

Row = dict  # attribute -> value (valid scores only)
Point = tuple  # (t, (c_1, ..., c_H, ...)): distance along the held direction, corrections along each held attribute's
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


def cost(row: Row, held: Sequence[Held]) -> float:
    """The worst drift in thresholds (inf where an attribute has no valid score)."""
    return max((abs(row[h.name] - h.base) / h.threshold if h.name in row else math.inf) for h in held)


def joint_step(rows: dict[Point, Row], start: Point, name: str, goal: float,
               held: Sequence[Held]) -> np.ndarray | None:
    """A Newton step (dt, dc_1, ..., dc_H) from `start` towards the goal and every held attribute's base.

    The edited and held attributes are fitted as linear in (t, c) by least squares on the measured points
    nearest `start`, weighted by nearness: one reading's noise (years, for age) averages out over them, and
    the fit's value at `start` stands for its reading. None when the points do not pin every slope down.
    """
    names = [name, *(h.name for h in held)]
    points = [p for p, r in rows.items() if all(a in r for a in names)]
    if len(points) < len(names) + 2:
        return None
    x0 = np.array([start[0], *start[1]], np.float64)
    xs = np.array([[p[0], *p[1]] for p in points], np.float64) - x0
    near = np.argsort(np.linalg.norm(xs, axis=1))[:max(NEAREST, 2 * len(names) + 2)]
    xs = xs[near]
    ys = np.array([[rows[points[i]][a] for a in names] for i in near], np.float64)
    design = np.hstack([np.ones((len(xs), 1)), xs])
    weights = 1.0 / (1.0 + np.linalg.norm(xs, axis=1) ** 2)
    if np.linalg.matrix_rank(design * weights[:, None]) < design.shape[1]:
        return None
    coef = np.linalg.lstsq(design * weights[:, None], ys * weights[:, None], rcond=None)[0]
    value, jacobian = coef[0], coef[1:].T  # (outputs,), (outputs, inputs)
    want = np.array([goal, *(h.base for h in held)]) - value
    if np.linalg.cond(jacobian) > 1e6:
        return None
    return np.linalg.solve(jacobian, want)


async def held_search(measure: Measure, *, name: str, held: Sequence[Held], prior: Sequence[tuple[float, Row]],
                      tolerance: float, max_distance: float, max_rounds: int, goal: float | None = None,
                      delta: float | None = None, side: float = 0.0, watched: Sequence[Held] = (),
                      spread: Sequence[float] = SPREAD, probe: float = PROBE,
                      basis: list[np.ndarray] | None = None, along: np.ndarray | None = None) -> HeldResult:
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
        basis: The code-space direction of each correction coordinate, the held attributes' first (their
            correction_directions). Given, the local rounds run where the hold still misses, and append the
            directions they probe: a point's c then has more coordinates than `held`, and `measure` maps c to
            the code with basis[:len(c)]. None: no local rounds.
        along: The held direction's unit normal (probes are orthogonal to it); needed with `basis`.
    """
    if basis is not None and along is None:
        raise ValueError("local rounds need the held direction (along) with the basis")
    zero = tuple(0.0 for _ in held)
    everything = [*held, *watched]
    rows: dict[Point, Row] = {}
    chosen: dict[float, Point] = {}
    slopes: list[tuple[float, bool]] = [(h.threshold, False) for h in held]
    probes = [(0.0, tuple((s * probe if k == j else 0.0) for k in range(len(held)))) for j in range(len(held))
              for s in (1.0, -1.0)]
    limit = max_distance  # a correction is an edit of its own: the same bound

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
                (t, tuple(round(float(np.clip(f * x, -limit, limit)), 9) for x in c)) for f in spread))
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
            best = min(valid, key=lambda p: (cost(rows[p], everything), abs(p[1][0]) if p[1] else 0.0))
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

    polished: set[Point] = set()

    def meeting() -> list[Point]:
        # Polished points may sit past the first crossing: their corrections moved the target's curve.
        return [p for p, r in rows.items() if p[0] != 0 and math.copysign(1.0, p[0]) == sign
                and (abs(p[0]) <= reach + 1e-9 or p in polished) and name in r
                and abs(r[name] - goal_value) <= tolerance]

    def joint(p: Point) -> float:
        """How far a point is from done, in tolerances / thresholds: the target and every held attribute."""
        r = rows[p]
        return max(abs(r[name] - goal_value) / tolerance if name in r else math.inf, cost(r, everything))

    rounds = outcome.rounds
    # Polish rounds: a Newton step on the distance and the corrections together,
    # from the points nearest done, on slopes fitted to the points measured around each (joint_step).
    for _ in range(POLISH_ROUNDS):
        met_now = sorted(meeting(), key=lambda p: cost(rows[p], everything))
        if met_now and cost(rows[met_now[0]], everything) <= GOOD_ENOUGH:
            break
        side_points = [p for p in rows if p[0] != 0 and math.copysign(1.0, p[0]) == sign and name in rows[p]]
        anchors = list(dict.fromkeys([*met_now[:1], *sorted(side_points, key=joint)]))[:POLISH_POINTS]
        wanted = []
        for p in anchors:
            step = joint_step(rows, p, name, goal_value, held)
            if step is None:  # too few points around it: correct the held attributes at this distance alone
                step = np.array([0.0, *(-(rows[p][h.name] - h.base) / slopes[j][0] if h.name in rows[p] else 0.0
                                        for j, h in enumerate(held))])
            for f in POLISH_STEPS:
                t = p[0] + f * step[0]
                if math.copysign(1.0, t) != sign or t == 0:  # never past the unedited face: halfway to it
                    t = p[0] / 2
                t = math.copysign(min(abs(t), max_distance), t)
                wanted.append((round(t, 9), tuple(round(float(np.clip(c + f * d, -limit, limit)), 9)
                                                  for c, d in zip(p[1], step[1:]))))
        wanted = [q for q in dict.fromkeys(wanted) if q not in rows]
        if not wanted:
            break
        for q, r in zip(wanted, await measure(wanted)):
            rows[q] = r
        polished.update(wanted)
        rounds += 1
    if basis is not None:
        rounds += await _local_rounds(measure, rows, polished, meeting, basis, along, name=name, goal=goal_value,
                                      tolerance=tolerance, held=held, everything=everything, sign=sign,
                                      limit=max_distance)
    met = meeting()
    if met:
        point = min(met, key=lambda p: (cost(rows[p], everything), abs(p[0])))
    else:
        point = chosen.get(outcome.distance, (outcome.distance, zero))
    row = rows.get(point, {})
    after = row.get(name, outcome.after)
    final = dataclasses.replace(outcome, distance=point[0], after=after, met=abs(after - goal_value) <= tolerance,
                                evaluations=len(rows), stop="met" if met else outcome.stop, rounds=rounds)
    return HeldResult(final, point, row, len(rows), slopes)


async def _local_rounds(measure: Measure, rows: dict[Point, Row], polished: set, meeting, basis: list[np.ndarray],
                        along: np.ndarray, *, name: str, goal: float, tolerance: float, held: Sequence[Held],
                        everything: Sequence[Held], sign: float, limit: float) -> int:
    """The local rounds (LOCAL_ROUNDS): probes around the point nearest done, then a least-norm step on the
    fitted local gradients. New points join `rows` and `polished`; returns the batches measured."""
    if not held:
        return 0
    seed = hashlib.sha256(repr(sorted((h.name, round(h.base, 6)) for h in everything)).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(seed[:8], "little"))
    unit = np.asarray(along, np.float64).reshape(-1)
    unit = unit / np.linalg.norm(unit)
    batches = 0

    def nearest_done() -> Point | None:
        met_now = sorted(meeting(), key=lambda p: cost(rows[p], everything))
        if met_now:
            return met_now[0]
        side = [p for p, r in rows.items() if p[0] != 0 and math.copysign(1.0, p[0]) == sign and name in r]
        return min(side, key=lambda p: abs(rows[p][name] - goal) / tolerance, default=None)

    for _ in range(LOCAL_ROUNDS):
        anchor = nearest_done()
        if anchor is None or cost(rows[anchor], everything) <= 1.0:
            break
        # Orthonormal probes, orthogonal to the held direction (moving along it is the search's own business).
        raw = rng.standard_normal((LOCAL_PROBES, unit.size))
        raw -= np.outer(raw @ unit, unit)
        probes = np.linalg.qr(raw.T)[0].T
        first = len(basis)
        basis.extend(probes)
        width = len(basis)

        def at(point: Point, offsets: dict[int, float]) -> Point:
            c = list(point[1]) + [0.0] * (width - len(point[1]))
            for k, v in offsets.items():
                c[k] += v
            return point[0], tuple(round(x, 9) for x in c)

        pairs = [(at(anchor, {first + k: LOCAL_STEP}), at(anchor, {first + k: -LOCAL_STEP}))
                 for k in range(LOCAL_PROBES)]
        wanted = [q for pair in pairs for q in pair if q not in rows]
        for q, r in zip(wanted, await measure(wanted)):
            rows[q] = r
        polished.update(wanted)
        batches += 1
        base_row = rows[anchor]
        # The target, the held attributes and any other past its threshold: take each back to where it belongs.
        aims = [(name, goal), *((h.name, h.base) for h in everything
                                if h.name in base_row and (h in held or abs(base_row[h.name] - h.base) > h.threshold))]
        grads, want = [], []
        for a, value in aims:
            slopes = [(rows[up][a] - rows[down][a]) / (2 * LOCAL_STEP) if a in rows[up] and a in rows[down] else None
                      for up, down in pairs]
            if a not in base_row or any(v is None for v in slopes):
                continue
            grads.append(slopes)
            want.append(value - base_row[a])
        if len(grads) < 2:
            continue
        step = np.linalg.lstsq(np.array(grads), np.array(want), rcond=None)[0]
        norm = np.linalg.norm(step)
        if not np.isfinite(norm) or norm == 0:
            continue
        step *= min(1.0, limit / norm)
        wanted = [q for q in dict.fromkeys(at(anchor, {first + k: f * float(step[k]) for k in range(LOCAL_PROBES)})
                                           for f in LOCAL_FACTORS) if q not in rows]
        for q, r in zip(wanted, await measure(wanted)):
            rows[q] = r
        polished.update(wanted)
        batches += 1
    return batches
