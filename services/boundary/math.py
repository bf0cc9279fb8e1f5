"""InterFaceGAN math in numpy: boundary training, subspace projection, edits, interpolation, cosines."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
# Imported here, not at first use: the import takes seconds and would be billed to the first SVM fit.
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import SVC, LinearSVC

#: Linear SVM solvers. "hinge" minimises the reference's objective (SVC(kernel='linear'): hinge loss, C)
#: with liblinear's dual coordinate descent; "squared_hinge" is liblinear's primal solver (fastest,
#: dual=False since n > d), a slightly different loss; "svc" is the reference's libsvm solver (slow, O(n²)).
SOLVERS = ("hinge", "squared_hinge", "svc")
DEFAULT_SOLVER = "hinge"


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


# ----------------------------------------------------------------------------------------------------------
# Boundary training.


def chosen_count(num_valid: int, chosen: float) -> int:
    """How many samples each end contributes: a ratio in (0, 1] or an absolute count, at most half."""
    if chosen <= 0:
        raise ValueError(f"chosen ratio must be positive, got {chosen}")
    count = int(num_valid * chosen) if chosen <= 1 else int(chosen)
    return min(count, num_valid // 2)


def select_extremes(scores: np.ndarray, chosen: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Picks the top and bottom samples by score (the reference's sort-and-slice, in O(n)).

    Args:
        scores: (n,) valid scores.
        chosen: ratio in (0, 1] of n taken from each end, or an absolute count (> 1).
    Returns:
        (positive indices, negative indices, threshold) with indices sorted ascending (so a pass over
        shards can gather them in order) and threshold = (max + min) / 2, the reference's label of the
        remaining samples.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = scores.size
    k = chosen_count(n, chosen)
    if k < 2:
        raise ValueError(f"{n} valid samples with chosen={chosen} give {k} per side; at least 2 are needed "
                         f"(sample more or raise the ratio)")
    # A stable argsort would be O(n log n); argpartition finds the same sets (ties broken arbitrarily).
    top = np.argpartition(-scores, k - 1)[:k]
    bottom = np.argpartition(scores, k - 1)[:k]
    threshold = float((scores.max() + scores.min()) / 2)
    return np.sort(top), np.sort(bottom), threshold


def split_indices(count: int, train_split: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffles range(count) and splits it train/validation as the reference does (int(count * split))."""
    if not 0 < train_split <= 1:
        raise ValueError(f"train split must be in (0, 1], got {train_split}")
    order = rng.permutation(count)
    cut = int(count * train_split)
    return order[:cut], order[cut:]


def fit_linear_svm(x: np.ndarray, y: np.ndarray, *, c: float = 1.0, solver: str = DEFAULT_SOLVER,
                   seed: int = 0, max_iter: int = 5000) -> tuple[np.ndarray, float, bool]:
    """Fits a linear SVM; returns (coef (d,), intercept, converged)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; accepted: {', '.join(SOLVERS)}")
    if c <= 0:
        raise ValueError(f"SVM C must be positive, got {c}")
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.asarray(y)
    if solver == "svc":
        model = SVC(kernel="linear", C=c)
    elif solver == "hinge":
        # The hinge loss has no primal liblinear solver: dual coordinate descent. Capped iterations still
        # land within 1e-3 (cosine) of the exact optimum on noisy labels (tests check against SVC).
        model = LinearSVC(loss="hinge", dual=True, C=c, max_iter=max_iter, random_state=seed)
    else:
        model = LinearSVC(loss="squared_hinge", dual=x.shape[0] <= x.shape[1], C=c, max_iter=max_iter,
                          random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model.coef_.reshape(-1).astype(np.float64), float(np.ravel(model.intercept_)[0]), converged


@dataclasses.dataclass
class SvmFit:
    """A fitted boundary: unit normal, intercept in the normal's scale, accuracies, counts, timing."""

    normal: np.ndarray  # (1, d) float64, unit length
    intercept: float  # of the unit normal: decision = x . normal + intercept
    train_accuracy: float
    validation_accuracy: float
    num_train: int
    num_validation: int
    seconds: float
    converged: bool
    solver: str

    def decision(self, codes: np.ndarray) -> np.ndarray:
        """Signed distance of codes (n, d) to the fitted hyperplane (with intercept)."""
        return np.asarray(codes, dtype=np.float64) @ self.normal[0] + self.intercept


def fit_extremes(positives: np.ndarray, negatives: np.ndarray, *, train_split: float = 0.7, seed: int = 0,
                 c: float = 1.0, solver: str = DEFAULT_SOLVER, max_iter: int = 5000) -> SvmFit:
    """Shuffles each side, splits it train/validation, fits the SVM and scores the validation part.

    Args:
        positives: (p, d) codes of the top-scored samples; negatives: (q, d) of the bottom ones.
    """
    rng = np.random.default_rng(seed)
    pos_train, pos_val = split_indices(len(positives), train_split, rng)
    neg_train, neg_val = split_indices(len(negatives), train_split, rng)
    if len(pos_train) == 0 or len(neg_train) == 0:
        raise ValueError("no training samples on one side; sample more or raise the chosen ratio")
    x = np.concatenate([positives[pos_train], negatives[neg_train]])
    y = np.concatenate([np.ones(len(pos_train), np.int8), np.zeros(len(neg_train), np.int8)])
    started = time.perf_counter()
    coef, intercept, converged = fit_linear_svm(x, y, c=c, solver=solver, seed=seed, max_iter=max_iter)
    seconds = time.perf_counter() - started
    norm = float(np.linalg.norm(coef))
    if norm < 1e-12:
        raise DegenerateError("the SVM found no direction (zero normal): the two sides are not separable at all")
    fit = SvmFit(normal=(coef / norm)[None, :], intercept=intercept / norm, train_accuracy=0.0,
                 validation_accuracy=float("nan"), num_train=len(x), num_validation=len(pos_val) + len(neg_val),
                 seconds=seconds, converged=converged, solver=solver)
    fit.train_accuracy = float(np.mean((fit.decision(x) > 0) == (y == 1)))
    if fit.num_validation:
        xv = np.concatenate([positives[pos_val], negatives[neg_val]])
        yv = np.concatenate([np.ones(len(pos_val), bool), np.zeros(len(neg_val), bool)])
        fit.validation_accuracy = float(np.mean((fit.decision(xv) > 0) == yv))
    return fit


def remaining_hits(codes: np.ndarray, scores: np.ndarray, normal: np.ndarray, intercept: float,
                   threshold: float) -> int:
    """Correct predictions among remaining samples: label = score >= threshold, prediction = side of the plane.

    Summed shard by shard this gives the reference's accuracy on the remaining samples in bounded memory.
    """
    predicted = np.asarray(codes, dtype=np.float64) @ np.ravel(normal) + intercept > 0
    return int(np.sum(predicted == (np.asarray(scores) >= threshold)))


@dataclasses.dataclass
class BoundaryFit(SvmFit):
    """An SvmFit plus what the whole dataset says: counts and accuracy on the remaining samples."""

    num_samples: int = 0
    num_valid: int = 0
    num_positive: int = 0
    num_negative: int = 0
    remaining_accuracy: float = float("nan")
    threshold: float = 0.0


def train_boundary(codes: np.ndarray, scores: np.ndarray, valid: np.ndarray | None = None, *,
                   chosen_ratio: float = 0.02, train_split: float = 0.7, seed: int = 0, c: float = 1.0,
                   solver: str = DEFAULT_SOLVER) -> BoundaryFit:
    """The reference's train_boundary on in-memory data (the service streams the same steps over shards).

    Args:
        codes: (n, d) latent codes.
        scores: (n,) attribute scores.
        valid: (n,) bool; samples with invalid scores are dropped first.
        chosen_ratio: fraction (or count, if > 1) of valid samples taken from each end.
        train_split: fraction of each side used for training.
    """
    codes = np.asarray(codes)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if codes.ndim != 2 or len(codes) != len(scores):
        raise ValueError(f"codes must be (n, d) and scores (n,); got {codes.shape} and {scores.shape}")
    keep = np.isfinite(scores) if valid is None else (np.asarray(valid, bool).ravel() & np.isfinite(scores))
    idx = np.flatnonzero(keep)
    pos, neg, threshold = select_extremes(scores[idx], chosen_ratio)
    fit = fit_extremes(codes[idx[pos]], codes[idx[neg]], train_split=train_split, seed=seed, c=c, solver=solver)
    rest = np.ones(len(idx), bool)
    rest[pos] = rest[neg] = False
    rest_idx = idx[rest]
    out = BoundaryFit(**dataclasses.asdict(fit), num_samples=len(codes), num_valid=len(idx),
                      num_positive=len(pos), num_negative=len(neg), threshold=threshold)
    if len(rest_idx):
        hits = remaining_hits(codes[rest_idx], scores[rest_idx], fit.normal, fit.intercept, threshold)
        out.remaining_accuracy = hits / len(rest_idx)
    return out


# ----------------------------------------------------------------------------------------------------------
# Conditional boundaries (subspace projection).


def project(target: np.ndarray, conditions: np.ndarray, *, tol: float = 1e-6) -> np.ndarray:
    """Projects a boundary off condition boundaries with the least-squares formula.

    Solves (C Cᵀ) x = C n and returns n' = (n − xᵀ C) / ‖n − xᵀ C‖, the unit direction orthogonal to
    every condition; any number of conditions.

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
    x = np.linalg.solve(gram, cos)
    out = n - x @ cond
    norm = np.linalg.norm(out)
    if norm < np.sqrt(tol):
        raise DegenerateError(f"the target lies in the span of the conditions (residual {norm:.2e}); "
                              f"nothing is left to edit once they are held fixed")
    return out / norm


def project_one(n: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closed form for one condition: n − (n·c) c, normalised (unit inputs)."""
    n, c = unit(np.ravel(n)), unit(np.ravel(c))
    return unit(n - (n @ c) * c)


def project_two(n: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Closed form for two conditions: n − α c1 − β c2 (the reference's formula without its epsilon)."""
    n, c1, c2 = unit(np.ravel(n)), unit(np.ravel(c1)), unit(np.ravel(c2))
    n1, n2, cc = n @ c1, n @ c2, c1 @ c2
    alpha = (n1 - n2 * cc) / (1 - cc ** 2)
    beta = (n2 - n1 * cc) / (1 - cc ** 2)
    return unit(n - alpha * c1 - beta * c2)


# ----------------------------------------------------------------------------------------------------------
# Editing and interpolation.

DEFAULT_START, DEFAULT_END, DEFAULT_STEPS = -3.0, 3.0, 10


def distances(start: float, end: float, steps: int) -> np.ndarray:
    """The distances of one edit: `steps` values evenly spaced from start to end (1 step gives `end`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if steps == 1:
        return np.array([end], np.float64)
    return np.linspace(start, end, steps, dtype=np.float64)


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
