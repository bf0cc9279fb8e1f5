"""hold=auto's held search on known faces: a target met while a drifting attribute is corrected back, a flat
slope, watched attributes, the corrections' directions and the start codes a replay renders from."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.editor import holding


class Face:
    """A face along the held direction t with corrections c: the target rises with t; the held attribute drifts
    with t (quadratically: not what the boundary's linear model predicts) and follows c with its own slope."""

    def __init__(self, drift=lambda t: 1.5 * t + 0.6 * t * t, slope=3.0, base=30.0, leak=0.0):
        self.drift, self.slope, self.base, self.leak, self.batches = drift, slope, base, leak, []

    def row(self, t, c):
        return {"gender": 0.5 + 0.12 * t + self.leak * c[0],
                "age": self.base + self.drift(t) + self.slope * c[0], "yaw": 2.0 + 0.1 * c[0]}

    async def __call__(self, points):
        self.batches.append(list(points))
        return [self.row(t, c) for t, c in points]


def run(face, **kw):
    kw.setdefault("held", [holding.Held("age", face.base, 3.0)])
    kw.setdefault("watched", [holding.Held("yaw", 2.0, 5.0)])
    prior = [(t, face.row(t, (0.0,))) for t in (0.0, 1.0, 2.0, 3.5)]
    return asyncio.run(holding.held_search(face, name="gender", prior=prior, tolerance=0.05, max_distance=8.0,
                                           max_rounds=5, **kw))


def test_the_target_is_met_and_the_held_drift_is_taken_back():
    face = Face()
    result = run(face, goal=0.9)
    t, (c,) = result.point
    assert result.outcome.met and abs(result.row["gender"] - 0.9) <= 0.05
    raw = face.drift(t)  # what the held direction alone leaves at that distance: over 10 years
    assert raw > 10 and abs(result.row["age"] - face.base) < 0.1 * raw and c < 0
    assert result.outcome.rounds <= 5 + holding.POLISH_ROUNDS and result.images == sum(map(len, face.batches))
    assert result.slopes == [(pytest.approx(3.0), True)]  # probed on the unedited face
    assert all(len(set(map(tuple, b))) == len(b) for b in face.batches)  # no point measured twice in a batch


def test_a_flat_probe_falls_back_to_the_threshold_slope():
    face = Face(slope=0.1)  # the held attribute barely follows its own direction: nothing can take the drift back
    result = run(face, goal=0.9)
    assert result.slopes == [(3.0, False)]
    assert result.outcome.met  # the target still is, with the least drift the measured points offer
    assert abs(result.row["age"] - face.base) <= min(abs(face.row(t, c)["age"] - face.base)
                                                     for batch in face.batches for t, c in batch
                                                     if t and abs(face.row(t, c)["gender"] - 0.9) <= 0.05)


def test_corrections_do_not_trade_the_target_or_watched_attributes():
    face = Face(leak=0.02)  # correcting age moves gender a little
    result = run(face, goal=0.9)
    assert result.outcome.met and abs(result.row["yaw"] - 2.0) <= 5.0


def test_no_face_and_unreachable_are_passed_through():
    class Blank(Face):
        def row(self, t, c):
            return {}
    result = run(Blank(), delta=0.3)
    assert result.outcome.stop == "no_face" and result.point == (0.0, (0.0,))
    slow = Face()
    result = run(slow, goal=0.5 + 0.12 * 12)  # beyond the distance limit
    assert not result.outcome.met and result.outcome.stop == "unreachable"


def test_correction_directions_and_shifted_start_codes():
    rng = np.random.default_rng(0)
    edited, a, b = rng.standard_normal((3, 16))
    u = holding.correction_directions(edited, [a, b, a])
    assert u.shape == (3, 16) and abs(u[0] @ edited) < 1e-9 and abs(u[1] @ edited) < 1e-9
    assert u[0] @ a > 0 and abs(u[0] @ u[1]) < 1e-9 and not u[2].any()  # a repeated normal: nothing left
    assert np.linalg.norm(u[:2], axis=1) == pytest.approx([1, 1])
    codes = rng.standard_normal((2, 4, 16)).astype(np.float32)
    moved = holding.shifted(codes, u[0], (1, 3))
    assert moved.dtype == np.float32 and np.array_equal(moved[:, [0, 3]], codes[:, [0, 3]])
    assert np.allclose(moved[:, 1:3], codes[:, 1:3] + u[0], atol=1e-6)
    flat = codes[:, 0]
    assert np.array_equal(holding.shifted(flat, np.zeros(16), None), flat)  # no correction: the same bits


def test_local_rounds_part_attributes_no_boundary_direction_parts():
    """The held attribute ignores its own correction direction and follows another direction of the code space:
    the boundary corrections cannot take its drift back, the local rounds' probes find that direction."""
    d = 16
    along, correction, hidden = np.eye(d)[0], np.eye(d)[1], np.eye(d)[5] + np.eye(d)[9]

    def row(x):
        return {"gender": 0.5 + 0.12 * x @ along, "age": 30.0 + 6.0 * x @ along + 4.0 * x @ hidden,
                "yaw": 2.0 + 0.5 * x @ correction}

    def run_with(basis):
        batches = []

        async def measure(points):
            batches.append(points)
            out = []
            for t, c in points:
                extra = np.asarray(c) @ np.stack(basis[:len(c)]) if basis is not None else c[0] * correction
                out.append(row(t * along + extra))
            return out
        prior = [(t, row(t * along)) for t in (0.0, 1.0, 2.0, 3.5)]
        result = asyncio.run(holding.held_search(
            measure, name="gender", held=[holding.Held("age", 30.0, 3.0)], watched=[holding.Held("yaw", 2.0, 5.0)],
            prior=prior, tolerance=0.05, max_distance=8.0, max_rounds=5, goal=0.9,
            basis=basis, along=along if basis is not None else None))
        return result, batches

    plain, _ = run_with(None)
    assert plain.outcome.met and plain.row["age"] - 30.0 > 10  # nothing along the boundaries holds it
    basis = [correction]
    local, batches = run_with(basis)
    t, c = local.point
    assert local.outcome.met and abs(local.row["age"] - 30.0) <= 3.0 and abs(local.row["yaw"] - 2.0) <= 5.0
    assert len(basis) >= len(c) > 1  # the probed directions joined the basis, the point moved along them
    assert all(abs(v @ along) < 1e-9 for v in basis[1:])  # never along the held direction itself
    # The returned point renders from its corrections along basis[:len(c)], as the editor's replay does.
    assert row(t * along + np.asarray(c) @ np.stack(basis[:len(c)])) == local.row
    assert local.outcome.rounds - plain.outcome.rounds <= 2 * holding.LOCAL_ROUNDS
    assert all(len(set(b)) == len(b) for b in batches)
