"""Boundary training in numpy: the reference's select-extremes, split and linear SVM fit, streamed or in memory."""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
# Imported here, not at first use: the import takes seconds and would be billed to the first SVM fit.
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import SVC, LinearSVC

from services.common.editing import DegenerateError

#: Linear SVM solvers. "hinge" minimises the reference's objective (SVC(kernel='linear'): hinge loss, C)
#: with liblinear's dual coordinate descent; "squared_hinge" is liblinear's primal solver (fastest,
#: dual=False since n > d), a slightly different loss; "svc" is the reference's libsvm solver (slow, O(n²)).
SOLVERS = ("hinge", "squared_hinge", "svc")
DEFAULT_SOLVER = "hinge"


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
    # k <= n // 2, so the bottom k and the top k of one partition never share a sample, even with ties.
    order = np.argpartition(scores, (k - 1, n - k))
    bottom = order[:k]
    top = order[n - k:]
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
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    # liblinear penalises the intercept like a weight (the reference's libsvm SVC does not): on off-centre
    # codes (W codes, offset means) that bends the normal towards the mean. Fitting centred codes and
    # shifting the intercept back solves the unpenalised problem.
    mean = x.mean(axis=0)
    x = np.ascontiguousarray(x - mean)
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
    coef = model.coef_.reshape(-1).astype(np.float64)
    return coef, float(np.ravel(model.intercept_)[0] - coef @ mean), converged


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
