"""Unit tests of the edit math (services/common/editing.py) against the reference's formulas, and the one
table of edit defaults that the protos' comments, the servers and the SDK share."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from interfacegan import defaults
from interfacegan.edits import EditSpec
from services.common import editing

ROOT = Path(__file__).resolve().parents[2]


def unit(v):
    v = np.ravel(v)
    return v / np.linalg.norm(v)


def reference_project(primal, *args):
    """genforce/interfacegan utils/manipulator.py project_boundary, as published (with its 1e-8)."""
    if len(args) == 1:
        cond = args[0]
        new = primal - primal.dot(cond.T) * cond
        return new / np.linalg.norm(new)
    if len(args) == 2:
        cond_1, cond_2 = args
        primal_cond_1 = primal.dot(cond_1.T)
        primal_cond_2 = primal.dot(cond_2.T)
        cond_1_cond_2 = cond_1.dot(cond_2.T)
        alpha = (primal_cond_1 - primal_cond_2 * cond_1_cond_2) / (1 - cond_1_cond_2 ** 2 + 1e-8)
        beta = (primal_cond_2 - primal_cond_1 * cond_1_cond_2) / (1 - cond_1_cond_2 ** 2 + 1e-8)
        new = primal - alpha * cond_1 - beta * cond_2
        return new / np.linalg.norm(new)
    cond_boundaries = np.squeeze(np.asarray(args))
    a = np.matmul(cond_boundaries, cond_boundaries.T)
    b = np.matmul(cond_boundaries, primal.T)
    x = np.linalg.solve(a, b)
    new = primal - np.matmul(x.T, cond_boundaries)
    return new / np.linalg.norm(new)


def reference_linear_interpolate(latent_code, boundary, start_distance=-3.0, end_distance=3.0, steps=10):
    """genforce/interfacegan utils/manipulator.py linear_interpolate, as published."""
    linspace = np.linspace(start_distance, end_distance, steps)
    if len(latent_code.shape) == 2:
        linspace = linspace - latent_code.dot(boundary.T)
        linspace = linspace.reshape(-1, 1).astype(np.float32)
        return latent_code + linspace * boundary
    linspace = linspace.reshape(-1, 1, 1).astype(np.float32)
    return latent_code + linspace * boundary.reshape(1, 1, -1)


def test_projection_equals_closed_forms():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n, c1, c2 = (unit(rng.standard_normal(512)) for _ in range(3))
        # Correlated conditions make the two-condition case non-trivial.
        c2 = unit(c2 + 0.6 * c1)
        one = editing.project(n, c1[None])
        two = editing.project(n, np.stack([c1, c2]))
        assert np.max(np.abs(one - reference_project(n[None], c1[None])[0])) < 1e-6
        assert np.max(np.abs(two - reference_project(n[None], c1[None], c2[None])[0])) < 1e-6
        assert abs(two @ c1) < 1e-9 and abs(two @ c2) < 1e-9 and np.linalg.norm(two) == pytest.approx(1.0)


def test_projection_many_conditions_is_orthogonal_and_closest():
    rng = np.random.default_rng(5)
    n = unit(rng.standard_normal(100))
    conds = editing.unit(rng.standard_normal((7, 100)))
    out = editing.project(n, conds)
    assert np.max(np.abs(conds @ out)) < 1e-9
    # Least squares: the residual of n is orthogonal to the span, so out is the closest unit vector to n.
    q, _ = np.linalg.qr(conds.T)
    expected = unit(n - q @ (q.T @ n))
    assert np.max(np.abs(out - expected)) < 1e-9


def test_degenerate_projections_are_refused_clearly():
    rng = np.random.default_rng(6)
    n, c = unit(rng.standard_normal(64)), unit(rng.standard_normal(64))
    with pytest.raises(editing.DegenerateError, match="parallel to the target"):
        editing.project(n, n[None])
    with pytest.raises(editing.DegenerateError, match="parallel to the target"):
        editing.project(n, -n[None])
    with pytest.raises(editing.DegenerateError, match="linearly dependent"):
        editing.project(n, np.stack([c, c]))
    d = unit(rng.standard_normal(64))
    with pytest.raises(editing.DegenerateError, match="linearly dependent"):
        editing.project(n, np.stack([c, d, unit(c + d)]))
    with pytest.raises(editing.DegenerateError, match="span of the conditions"):
        editing.project(unit(c + d), np.stack([c, d]))
    with pytest.raises(ValueError, match="dimension"):
        editing.project(n, np.ones((1, 32)))
    with pytest.raises(ValueError, match="zero length"):
        editing.project(n, np.zeros((1, 64)))


def test_distances_and_step_table():
    np.testing.assert_allclose(editing.distances(-3, 3, 10), np.linspace(-3, 3, 10))
    # steps = 1 is the reference's linspace: `start` alone (defaults.distances documents it).
    np.testing.assert_allclose(editing.distances(-3, 2, 1), [-3.0])
    np.testing.assert_allclose(editing.distances(1.5, 1.5, 1), [1.5])
    with pytest.raises(ValueError, match="1 .. 256"):
        editing.distances(-3, 3, 0)
    table = editing.distance_table([(-3, 3, 4), (0, 1, 2)])
    np.testing.assert_allclose(table, [[-3, -1, 1, 3], [0, 1, 1, 1]])


def test_absolute_edit_puts_codes_at_signed_distance_reference_semantics():
    rng = np.random.default_rng(7)
    codes = rng.standard_normal((5, 100)).astype(np.float32)
    normals = editing.unit(rng.standard_normal((3, 100)))
    dist = editing.distance_table([(-3, 3, 10)] * 3)
    out = editing.edit(codes, normals, dist, absolute=True)
    assert out.shape == (5, 3, 10, 100) and out.dtype == np.float32
    # The reference: z + (t - z.n) n, per code, per boundary, per step.
    for i in range(5):
        for e in range(3):
            for s, t in enumerate(dist[e]):
                z = codes[i].astype(np.float64)
                expected = z + (t - z @ normals[e]) * normals[e]
                np.testing.assert_allclose(out[i, e, s], expected, atol=1e-5)
    np.testing.assert_allclose(np.einsum("nesd,ed->nes", out.astype(np.float64), normals),
                               np.broadcast_to(dist, (5, 3, 10)), atol=1e-5)


def test_relative_edit_and_mixed_modes_in_one_call():
    rng = np.random.default_rng(8)
    codes = rng.standard_normal((4, 16)).astype(np.float32)
    normals = editing.unit(rng.standard_normal((2, 16)))
    dist = editing.distance_table([(-1, 1, 3), (0, 2, 3)])
    out = editing.edit(codes, normals, dist, absolute=np.array([False, True]))
    np.testing.assert_allclose(out[:, 0], codes[:, None] + dist[0][None, :, None] * normals[0], atol=1e-6)
    np.testing.assert_allclose(out[:, 1] @ normals[1], np.broadcast_to(dist[1], (4, 3)), atol=1e-5)


def test_wplus_layer_ranges():
    rng = np.random.default_rng(9)
    codes = rng.standard_normal((2, 8, 32)).astype(np.float32)
    normals = editing.unit(rng.standard_normal((2, 32)))
    dist = editing.distance_table([(0, 2, 2), (0, 2, 2)])
    out = editing.edit(codes, normals, dist, layers=np.array([[0, 8], [2, 5]]))
    assert out.shape == (2, 2, 2, 8, 32)
    np.testing.assert_allclose(out[:, 0, 1], codes + 2 * normals[0].astype(np.float32), atol=1e-6)
    edited = out[:, 1, 1]
    np.testing.assert_allclose(edited[:, 2:5], codes[:, 2:5] + 2 * normals[1].astype(np.float32), atol=1e-6)
    np.testing.assert_array_equal(edited[:, :2], codes[:, :2])
    np.testing.assert_array_equal(edited[:, 5:], codes[:, 5:])
    # Absolute on W+: every layer placed at distance t.
    absolute = editing.edit(codes, normals[:1], np.array([[1.5]]), absolute=True)
    np.testing.assert_allclose(absolute[:, 0, 0] @ normals[0], np.full((2, 8), 1.5), atol=1e-5)


def test_many_codes_times_many_edits_in_one_vectorised_call():
    rng = np.random.default_rng(10)
    codes = rng.standard_normal((256, 512)).astype(np.float32)
    normals = editing.unit(rng.standard_normal((8, 512)))
    dist = editing.distance_table([(-3, 3, 10)] * 8)
    out = editing.edit(codes, normals, dist, absolute=True)
    assert out.shape == (256, 8, 10, 512)
    # Every (code, edit, step) sits at its asked signed distance, as the one-at-a-time reference formula puts it.
    for i, k, t in ((0, 0, 0), (17, 3, 4), (255, 7, 9)):
        n = normals[k].astype(np.float64)
        expected = codes[i] + (dist[k, t] - codes[i] @ n) * n
        np.testing.assert_allclose(out[i, k, t], expected, atol=1e-4)


def test_interpolation_and_cosine_matrix():
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((3, 2, 4, 8)).astype(np.float32)[:2]
    out = editing.interpolate(a, b, 5)
    assert out.shape == (2, 5, 4, 8)
    np.testing.assert_allclose(out[:, 0], a)
    np.testing.assert_allclose(out[:, -1], b, atol=1e-6)
    np.testing.assert_allclose(out[:, 2], (a + b) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        editing.interpolate(a, b, 1)
    normals = rng.standard_normal((4, 10))
    cos = editing.cosine_matrix(normals)
    np.testing.assert_allclose(np.diag(cos), 1.0)
    np.testing.assert_allclose(cos, cos.T)
    assert cos[0, 1] == pytest.approx(unit(normals[0]) @ unit(normals[1]))


def test_many_conditions_match_the_reference_solve():
    rng = np.random.default_rng(12)
    n = unit(rng.standard_normal(64))
    conds = [unit(rng.standard_normal(64))[None] for _ in range(4)]
    np.testing.assert_allclose(editing.project(n, np.concatenate(conds)), reference_project(n[None], *conds)[0],
                               atol=1e-9)


def test_edits_match_the_reference_linear_interpolate_with_the_default_table():
    rng = np.random.default_rng(13)
    z = rng.standard_normal((1, 100)).astype(np.float32)
    n = unit(rng.standard_normal(100))[None]
    start, end, steps = defaults.resolve(0, 0, 0)
    assert (start, end, steps) == (-3.0, 3.0, 10)  # the reference's edit.py defaults
    ours = editing.edit(z, n, editing.distance_table([(start, end, steps)]), absolute=True)[0, 0]
    np.testing.assert_allclose(ours, reference_linear_interpolate(z, n), atol=1e-5)
    # W+ codes: the reference adds offsets (relative mode here).
    wp = rng.standard_normal((1, 6, 100)).astype(np.float32)
    ours = editing.edit(wp, n, editing.distance_table([(start, end, steps)]), absolute=False)[0, 0]
    np.testing.assert_allclose(ours, reference_linear_interpolate(wp, n), atol=1e-5)
    # One step: `start`, in the library, the SDK and the reference alike.
    one = editing.edit(z, n, editing.distance_table([(-2.0, 2.0, 1)]), absolute=True)[0, 0]
    np.testing.assert_allclose(one, reference_linear_interpolate(z, n, -2.0, 2.0, 1), atol=1e-5)
    np.testing.assert_allclose(EditSpec("a", -2.0, 2.0, 1).distances, [-2.0])


def test_check_edit_fills_defaults_and_names_the_field_at_fault():
    assert editing.check_edit(0, 0, 0, absolute=False) == (-3.0, 3.0, 10, None)
    assert editing.check_edit(0, 1.5, 0, absolute=True) == (0.0, 1.5, 10, None)
    assert editing.check_edit(1, 2, 3, absolute=False, num_layers=8) == (1.0, 2.0, 3, (0, 8))
    assert editing.check_edit(1, 2, 3, absolute=False, layer_start=2, layer_end=5, num_layers=8)[3] == (2, 5)
    cases = [(dict(steps=257), "steps"), (dict(start=float("nan")), "start"), (dict(end=1e5), "start"),
             (dict(layer_start=1), "layer_start"), (dict(layer_start=3, layer_end=2, num_layers=8), "layer_start"),
             (dict(layer_start=1, absolute=True, num_layers=8), "mode")]
    for overrides, field in cases:
        args = {"start": 0.0, "end": 1.0, "steps": 2, "absolute": False, **overrides}
        with pytest.raises(editing.EditError) as err:
            editing.check_edit(args.pop("start"), args.pop("end"), args.pop("steps"), **args)
        assert err.value.field == field and re.search("accepted|must|apply to|use RELATIVE", str(err.value)), (field, err.value)


def test_seeded_z_codes_are_prefix_stable():
    a = editing.sample_z(5, 3, (100,))
    assert a.shape == (3, 100) and a.dtype == np.float32
    np.testing.assert_array_equal(editing.sample_z(5, 1, (100,)), a[:1])
    assert not np.array_equal(editing.sample_z(6, 1, (100,)), a[:1])


def _comment_before(proto: str, message: str, field: str) -> str:
    text = (ROOT / "protos" / "interfacegan" / "v1" / proto).read_text()
    body = text[text.index(f"message {message} {{"):]
    lines = body[:body.index("\n}")].splitlines()
    index = next(i for i, line in enumerate(lines) if re.match(rf"\s*\w+ {field} = \d+;", line))
    comment = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("//"):
            break
        comment.insert(0, line.strip()[2:].strip())
    return " ".join(comment)


def test_proto_comments_servers_and_sdk_quote_one_table_of_defaults():
    """editor.proto, boundary.proto, both servers (editing.check_edit) and the SDK (EditSpec) agree."""
    for proto, message in (("editor.proto", "AttributeEdit"), ("boundary.proto", "Edit")):
        steps = _comment_before(proto, message, "steps")
        assert f"1 .. {defaults.MAX_STEPS}" in steps, (proto, steps)
        assert f"0 means {defaults.STEPS}" in steps, (proto, steps)
        assert f"{defaults.START:+g} .. {defaults.END:+g}" in steps, (proto, steps)
        assert "1 gives `start`" in steps, (proto, steps)
        mode = _comment_before(proto, message, "mode")
        assert f"unspecified = {defaults.MODE}" in mode.lower(), (proto, mode)
    spec = EditSpec("age")
    assert (spec.start, spec.end, spec.steps, spec.mode) == (defaults.START, defaults.END, defaults.STEPS,
                                                             defaults.MODE)
    assert editing.check_edit(0, 0, 0, absolute=False)[:3] == (spec.start, spec.end, spec.steps)
    np.testing.assert_allclose(spec.distances, editing.distances(spec.start, spec.end, spec.steps))
