"""InterFaceGAN's edit math in pure numpy: distances, edits, W+ layer ranges, conditional projection, interpolation.

The editor runs these in-process on cached normals; the boundary service's ConditionBoundary, EditLatents,
InterpolateLatents and AnalyzeBoundaries wrap the same functions.
"""

from __future__ import annotations

import numpy as np

from interfacegan import defaults


class DegenerateError(ValueError):
    """A projection has no meaningful answer (a condition parallel to the target, dependent conditions)."""


def unit(vectors: np.ndarray, *, what: str = "vector") -> np.ndarray:
    """Normalises the last axis to unit length (float64); refuses zero or non-finite vectors."""
    v = np.asarray(vectors, dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"{what} has NaN or Inf entries; every entry must be finite")
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    if (norm < 1e-12).any():
        raise ValueError(f"{what} has zero length; a direction needs a non-zero vector")
    return v / norm



def sample_z(seed: int, count: int, shape: tuple[int, ...]) -> np.ndarray:
    """Seeded Z codes, bit-identical to the generator's SampleLatents in Z: N(0, I) rows from numpy's PCG64.

    The codes of (seed, n) are a prefix of those of (seed, n + k). W and W+ codes need the mapping network
    and come from the generator.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((count, *shape), dtype=np.float64).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Conditional boundaries (subspace projection).


def project(target: np.ndarray, conditions: np.ndarray, *, tol: float = 1e-6) -> np.ndarray:
    """Projects a boundary off condition boundaries with the least-squares formula.

    Returns n' = (n − xᵀ C) / ‖n − xᵀ C‖ with (C Cᵀ) x = C n, the unit direction orthogonal to every
    condition: the reference's closed forms for one and two conditions, the linear solve for more.

    Args:
        target: (d,) or (1, d) normal n.
        conditions: (k, d) normals C (rows); normalised here.
        tol: degeneracy tolerance.
    Returns:
        (d,) float64 unit normal.
    Raises:
        DegenerateError: a condition parallel to the target, linearly dependent conditions, or a target
            inside the span of the conditions (nothing left to edit).
    """
    n = unit(np.ravel(target), what="target")
    cond = unit(np.atleast_2d(conditions), what="condition")
    if cond.shape[1] != n.size:
        raise ValueError(f"conditions have dimension {cond.shape[1]}, the target {n.size}; they must match")
    cos = cond @ n
    for i, value in enumerate(cos):
        if abs(value) > 1 - tol:
            raise DegenerateError(f"condition {i} is parallel to the target (cosine {value:+.6f}); projecting it "
                                  f"out leaves no direction. Conditions must differ from the target")
    gram = cond @ cond.T
    eig = np.linalg.eigvalsh(gram)
    if eig.min() < tol * max(1.0, eig.max()):
        raise DegenerateError(f"the {len(cond)} conditions are linearly dependent (smallest Gram eigenvalue "
                              f"{eig.min():.2e}); drop the redundant ones (e.g. a duplicate or a derived one)")
    if len(cond) == 1:
        out = project_one(n, cond[0])
    elif len(cond) == 2:
        out = project_two(n, cond[0], cond[1])
    else:
        out = n - np.linalg.solve(gram, cos) @ cond
    norm = np.linalg.norm(out)
    if norm < np.sqrt(tol):
        raise DegenerateError(f"the target lies in the span of the conditions (residual {norm:.2e}); "
                              f"nothing is left to edit once they are held fixed")
    return out / norm


def project_one(n: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The reference's closed form for one condition: n − (n·c) c (unit inputs; not normalised)."""
    return n - (n @ c) * c


def project_two(n: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """The reference's closed form for two conditions: n − α c1 − β c2 (unit inputs; not normalised).

    The reference adds 1e-8 to the denominators; `project` refuses parallel conditions first instead.
    """
    n1, n2, cc = n @ c1, n @ c2, c1 @ c2
    alpha = (n1 - n2 * cc) / (1 - cc ** 2)
    beta = (n2 - n1 * cc) / (1 - cc ** 2)
    return n - alpha * c1 - beta * c2


# ----------------------------------------------------------------------------------------------------------
# Editing and interpolation.

def distances(start: float, end: float, steps: int) -> np.ndarray:
    """The distances of one edit: np.linspace(start, end, steps), as the reference (steps = 1 gives `start`)."""
    return defaults.distances(start, end, steps)


def distance_table(edits: list[tuple[float, float, int]]) -> np.ndarray:
    """(E, S) distances of several edits, S the largest step count; shorter rows repeat their last value."""
    rows = [distances(*e) for e in edits]
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), mode="edge") for r in rows])


def edit(codes: np.ndarray, normals: np.ndarray, dist: np.ndarray, *, absolute: np.ndarray | bool = False,
         layers: np.ndarray | None = None) -> np.ndarray:
    """Moves every code along every direction, all at once.

    Args:
        codes: (N, d) or W+ (N, L, d).
        normals: (E, d) directions (normalised here).
        dist: (E, S) distances per edit.
        absolute: per edit (E,) or one bool. True puts the code at signed distance t from the hyperplane
            through the origin: z + (t − z·n) n (the reference's semantics); for W+ each edited layer is
            placed at distance t. False adds relative offsets t·n.
        layers: W+ only, (E, 2) [start, end) layer range per edit; None edits every layer.
    Returns:
        (N, E, S, d) or (N, E, S, L, d) float32.
    """
    codes = np.asarray(codes, dtype=np.float32)
    n = unit(np.atleast_2d(normals), what="direction").astype(np.float32)
    dist = np.atleast_2d(np.asarray(dist, dtype=np.float32))
    e_count, steps = dist.shape
    if n.shape[0] != e_count:
        raise ValueError(f"{n.shape[0]} directions but {e_count} rows of distances")
    if codes.shape[-1] != n.shape[1]:
        raise ValueError(f"codes have dimension {codes.shape[-1]}, directions {n.shape[1]}; they must match")
    absolute = np.broadcast_to(np.asarray(absolute, bool), (e_count,))
    if codes.ndim == 2:
        proj = codes.astype(np.float64) @ n.T.astype(np.float64)  # (N, E)
        offset = np.broadcast_to(dist[None], (len(codes), e_count, steps)).astype(np.float32)
        offset = np.where(absolute[None, :, None], offset - proj[:, :, None].astype(np.float32), offset)
        return codes[:, None, None, :] + offset[..., None] * n[None, :, None, :]
    if codes.ndim != 3:
        raise ValueError(f"codes must be (N, d) or (N, L, d); got shape {codes.shape}")
    num_layers = codes.shape[1]
    mask = np.ones((e_count, num_layers), np.float32)
    if layers is not None:
        layers = np.asarray(layers, dtype=np.int64).reshape(e_count, 2)
        index = np.arange(num_layers)
        mask = ((index[None] >= layers[:, :1]) & (index[None] < layers[:, 1:])).astype(np.float32)
    proj = np.einsum("nld,ed->nel", codes.astype(np.float64), n.astype(np.float64)).astype(np.float32)
    offset = np.broadcast_to(dist[None, :, :, None], (len(codes), e_count, steps, num_layers))
    offset = np.where(absolute[None, :, None, None], offset - proj[:, :, None, :], offset)
    offset = offset * mask[None, :, None, :]
    return codes[:, None, None, :, :] + offset[..., None] * n[None, :, None, None, :]


def interpolate(start: np.ndarray, end: np.ndarray, steps: int) -> np.ndarray:
    """Linear interpolation between pairs of codes: (N, ...) twice -> (N, steps, ...), both ends included."""
    start = np.asarray(start, dtype=np.float32)
    end = np.asarray(end, dtype=np.float32)
    if start.shape != end.shape:
        raise ValueError(f"start {start.shape} and end {end.shape} must have the same shape")
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (both ends), got {steps}")
    alpha = np.linspace(0, 1, steps, dtype=np.float32).reshape((1, steps) + (1,) * (start.ndim - 1))
    return start[:, None] + alpha * (end - start)[:, None]


def cosine_matrix(normals: np.ndarray) -> np.ndarray:
    """(K, K) cosine similarities of K directions (K, d)."""
    u = unit(np.atleast_2d(normals), what="normal")
    return np.clip(u @ u.T, -1.0, 1.0)


class EditError(ValueError):
    """An edit request that cannot be run; `field` names the request field at fault (for INVALID_ARGUMENT)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_edit(start: float, end: float, steps: int, *, absolute: bool, layer_start: int = 0, layer_end: int = 0,
               num_layers: int | None = None) -> tuple[float, float, int, tuple[int, int] | None]:
    """Validates one edit of a request and fills its defaults (the table in interfacegan.defaults).

    Args:
        start, end, steps: as sent (proto3 zeros mean "unset").
        absolute: ABSOLUTE distances.
        layer_start, layer_end: W+ layer range [start, end); end 0 means every layer from start.
        num_layers: layers of the W+ codes edited; None for Z / W codes.
    Returns:
        (start, end, steps, layer range or None).
    Raises:
        EditError: with the field at fault and what is accepted.
    """
    start, end, steps = defaults.resolve(start, end, steps)
    if not 1 <= steps <= defaults.MAX_STEPS:
        raise EditError("steps", f"{steps}; accepted 1 .. {defaults.MAX_STEPS} (0 means {defaults.STEPS})")
    if not (np.isfinite(start) and np.isfinite(end)) or max(abs(start), abs(end)) > defaults.MAX_DISTANCE:
        raise EditError("start", f"start and end must be finite numbers with |value| <= {defaults.MAX_DISTANCE:g}")
    if num_layers is None:
        if layer_start or layer_end:
            raise EditError("layer_start", "layer ranges apply to W+ codes only")
        return start, end, steps, None
    lo, hi = layer_start, layer_end or num_layers
    if not 0 <= lo < hi <= num_layers:
        raise EditError("layer_start", f"layer range [{lo}, {hi}) is not within the {num_layers} layers; accepted "
                                       f"0 <= start < end <= {num_layers} (end 0 means every layer)")
    if absolute and (lo, hi) != (0, num_layers):
        raise EditError("mode", "ABSOLUTE distances are defined for whole codes; with a layer range use RELATIVE "
                                "offsets")
    return start, end, steps, (lo, hi)
