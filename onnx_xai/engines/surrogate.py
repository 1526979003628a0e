"""Surrogate engine shared by ``LIME``, ``KernelSHAP`` and MATLAB's ``image_lime``.

A run, item by item: the input's elements are grouped into M interpretable features
(``feature_labels``); coalitions z ∈ {0, 1}^M are drawn (``lime_coalitions``,
``shap_coalitions``); each coalition becomes a perturbed copy of the item — feature present:
the input's values, absent: the baseline's — written in place by a numba kernel (one
contiguous copy per run of equal labels) into one preallocated batch buffer, scored through
the model's one ONNX Runtime session ``n_batch`` at a time; then a weighted surrogate is fitted to (z, score): Lasso / ridge /
least squares (``fit_linear``), Shapley-kernel least squares under the efficiency constraint
(``fit_shapley``) or a regression tree's predictor importance (``fit_tree``). Only the
explained classes' scores are kept: memory is the buffer, ``(n_samples, M)`` coalitions and
``(n_samples, k)`` scores, whatever the number of classes.

Fits use NumPy / SciPy (``scipy.linalg.lstsq``, the solver scikit-learn's LinearRegression
calls) and a numba coordinate descent for the Lasso (scikit-learn's objective, solved to
1e-10), not scikit-learn: it would add ~40 MB (and joblib, threadpoolctl) to an edge install
for a 40-line solver.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import scipy.linalg
from scipy.special import comb
from tqdm.auto import tqdm

from ..errors import TOKEN_HINT, NonFiniteError
from ..finite import check_finite_array, check_finite_output, finite_rows, positive_int, warn_nonfinite
from ..kernels import surrogate as kern
from .. import layout, targets
from ..runtime import Model
from .segmentation import grid_labels, superpixel_labels

SEGMENTATIONS = ("grid", "superpixels")
MAX_EXHAUSTIVE = 20  # KernelSHAP enumerates all 2^M coalitions only up to this M


@dataclass
class Item:
    """One input of a batch, flattened: values ``x`` and ``base`` ``(E,)`` float32, the feature
    of every element ``labels`` ``(E,)`` int32 in [0, M), and its extra inputs."""

    x: np.ndarray
    base: np.ndarray
    labels: np.ndarray
    n_features: int
    extra: dict

    def __post_init__(self) -> None:
        """Runs of equal labels: ``starts`` ``(R + 1,)`` (ending with E) and their ``feats`` ``(R,)``."""
        cut = np.flatnonzero(np.diff(self.labels)) + 1
        self.starts = np.concatenate([[0], cut, [len(self.labels)]]).astype(np.int64)
        self.feats = np.ascontiguousarray(self.labels[self.starts[:-1]])

    def sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per feature Σ x², Σ x·b, Σ b² (float64, ``(M,)`` each)."""
        x, b = self.x.astype(np.float64), self.base.astype(np.float64)
        return tuple(np.bincount(self.labels, weights=v, minlength=self.n_features)
                     for v in (x * x, x * b, b * b))


# ----------------------------------------------------------------------------- features
def feature_labels(mask: Any, x: np.ndarray, n_features: int = 49) -> list[np.ndarray]:
    """Captum's ``feature_mask`` for ``x`` ``(N, C, *spatial)`` → per item ``(E,)`` int32 labels.

    None: every element its own feature (Captum's default). An integer array broadcastable to
    ``x`` (Captum: shifted to start at 0 with a warning when its minimum is not 0; M = max + 1,
    the same for every item). ``"grid"`` / ``"superpixels"``: about ``n_features`` cells /
    SLIC superpixels per item, shared by its channels (superpixels: 2D or 3D only).
    """
    n, elements = x.shape[0], int(np.prod(x.shape[1:]))
    if mask is None:
        return [np.arange(elements, dtype=np.int32)] * n
    if isinstance(mask, str):
        if mask not in SEGMENTATIONS:
            raise ValueError(f"feature_mask must be None, an integer array, 'grid' or 'superpixels', got {mask!r}")
        spatial = x.shape[2:]
        if mask == "grid":
            if not 1 <= len(spatial) <= 3:
                raise ValueError(f"a grid needs 1 to 3 spatial axes, got input shape {x.shape}")
            cells = grid_labels(spatial, n_features).ravel()
            return [np.tile(cells, x.shape[1])] * n
        return [np.tile(superpixel_labels(xi, n_features).ravel(), x.shape[1]) for xi in x]
    m = np.asarray(mask)
    if m.dtype.kind not in "iu" or m.dtype == np.bool_:
        raise ValueError(f"feature_mask must hold integers (feature indices), got dtype {m.dtype}")
    try:
        m = np.broadcast_to(m, x.shape)
    except ValueError:
        raise ValueError(f"feature_mask of shape {m.shape} does not broadcast to the input "
                         f"{x.shape}") from None
    low = int(m.min())
    if low != 0:
        warnings.warn("Minimum element in feature mask is not 0, shifting indices to start at 0.",
                      stacklevel=3)
    if int(m.max()) - low >= 2 ** 31 - 1:
        raise ValueError("feature_mask holds too many features")
    return [np.ascontiguousarray(mi - low, np.int32).ravel() for mi in m]


def baseline_values(baselines: Any, x: np.ndarray) -> np.ndarray:
    """Captum's ``baselines``: a number or an array broadcastable to ``x`` → ``x``-shaped float32."""
    return targets.broadcast_to_input("baselines", baselines, x)


def check_coalitions(coalitions: Any, m: int) -> np.ndarray:
    """User-given coalitions ``(n, M)`` of 0 / 1 → uint8."""
    z = np.asarray(coalitions)
    if z.ndim != 2 or z.shape[1] != m or z.shape[0] == 0 or z.dtype.kind not in "biuf":
        raise ValueError(f"coalitions must be a (n, {m}) array of 0 / 1 (one column per feature), "
                         f"got shape {z.shape}")
    if not np.isin(z, (0, 1)).all():
        raise ValueError("coalitions must hold only 0 and 1")
    return np.ascontiguousarray(z, np.uint8)


# ----------------------------------------------------------------------------- sampling
def lime_coalitions(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``n`` coalitions, each feature present with probability ½ (Captum's default perturbations)."""
    return (rng.random((n, m)) < 0.5).astype(np.uint8)


def shap_coalitions(rng: np.random.Generator, n: int, m: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """KernelSHAP coalitions: rows 0 and 1 are the full and the empty one (the constraint's
    ends), then, when ``n ≥ 2^M`` (M ≤ ``MAX_EXHAUSTIVE``), every other coalition weighted by
    the Shapley kernel (M − 1) / (C(M, k)·k·(M − k)) — exact Shapley values; else ``n − 2``
    coalitions drawn as Captum's KernelShap does (size k with probability ∝ (M − 1) / (k(M − k)),
    then k features uniformly), each of weight 1. Returns (z, weights, exhaustive)."""
    if m <= MAX_EXHAUSTIVE and n >= 2 ** m:
        codes = np.arange(1, 2 ** m - 1, dtype=np.int64)
        inner = ((codes[:, None] >> np.arange(m - 1, -1, -1)) & 1).astype(np.uint8)
        k = inner.sum(1).astype(np.float64)
        weights = (m - 1) / (comb(m, k) * k * (m - k))
        exhaustive = True
    else:
        sizes = np.arange(1, m, dtype=np.float64)
        p = (m - 1) / (sizes * (m - sizes))
        k = rng.choice(np.arange(1, m), size=n - 2, p=p / p.sum()) if m > 1 else np.zeros(0, int)
        ranks = np.argsort(np.argsort(rng.random((n - 2, m)), axis=1), axis=1)
        inner = (ranks < np.asarray(k)[:, None]).astype(np.uint8)
        weights = np.ones(len(inner))
        exhaustive = False
    z = np.concatenate([np.ones((1, m), np.uint8), np.zeros((1, m), np.uint8), inner])
    return z, np.concatenate([[0.0, 0.0], weights]), exhaustive


def exp_kernel(item: Item, kernel_width: float, distance_mode: str) -> Callable[[np.ndarray], np.ndarray]:
    """Captum's default similarity, exp(−d² / (2·width²)), d the cosine distance (1 − cos) or
    the Euclidean distance between the flattened input and its perturbed copy; computed from
    per-feature sums (no pass over the copies)."""
    xx, xb, bb = item.sums()
    norm_x = np.sqrt(xx.sum())

    def weigh(z: np.ndarray) -> np.ndarray:
        zf = z.astype(np.float64)
        if distance_mode == "euclidean":
            d2 = (1 - zf) @ (xx - 2 * xb + bb)
            d2 = np.maximum(d2, 0.0)
        else:
            dot = zf @ xx + (1 - zf) @ xb
            norm_p = np.sqrt(np.maximum(zf @ xx + (1 - zf) @ bb, 0.0))
            d2 = (1 - dot / (np.maximum(norm_x, 1e-8) * np.maximum(norm_p, 1e-8))) ** 2
        return np.exp(-d2 / (2 * kernel_width ** 2))
    return weigh


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """Perturbed copies of items through one model: a buffer of ``n_batch`` copies filled in
    place by ``kernels.surrogate.fill_coalitions``, scored by ``score`` (raw output batch →
    ``(b, K)``), only the ``columns`` asked kept."""

    def __init__(self, model: Model, shape: tuple[int, ...], n_batch: int, score: Callable,
                 output: str, to_model_layout: Callable | None = None, dtype: Any = np.float32) -> None:
        self.model, self.shape, self.score, self.output = model, shape, score, output
        self.to_model = to_model_layout
        self.buf = np.empty((n_batch, int(np.prod(shape))), dtype)

    def __call__(self, item: Item, z: np.ndarray, columns: Sequence[int], bar: tqdm | None = None,
                 weigh: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores ``(n, len(columns))`` float64 of the copies for coalitions ``z`` ``(n, M)``, and
        ``weigh(batch, z_batch)`` per batch when given (custom similarity functions)."""
        n, nb = len(z), len(self.buf)
        scores = np.empty((n, len(columns)), np.float64)
        weights = np.empty(n, np.float64) if weigh is not None else None
        for start in range(0, n, nb):
            zb = z[start:start + nb]
            kern.fill_runs(self.buf, item.x, item.base, item.starts, item.feats, zb)
            batch = self.buf[:len(zb)].reshape((len(zb),) + self.shape)
            fed = batch if self.to_model is None else self.to_model(batch)
            raw = self.model.run_batch(fed, [self.output], item.extra)[0]
            scores[start:start + len(zb)] = self.score(raw)[:, columns]
            if weights is not None:
                weights[start:start + len(zb)] = np.asarray(weigh(batch, zb), np.float64).reshape(len(zb))
            if bar is not None:
                bar.update(len(zb))
        return scores, weights


def item_extra(extra: dict, item: int, n: int) -> dict:
    """The extra inputs of item ``item`` of a batch of ``n`` (arrays split along a batch of n)."""
    return {k: (v[item:item + 1] if n > 1 and np.ndim(v) and np.shape(v)[0] == n else v)
            for k, v in extra.items()}


def run_items(model: Model, x: np.ndarray, baselines: np.ndarray, labels: list[np.ndarray],
              columns: np.ndarray, draw: Callable[[int, int], tuple[np.ndarray, np.ndarray | None]],
              fit: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray], *,
              score: Callable, output: str, n_batch: int, extra_inputs: dict | None,
              verbose: bool, desc: str, to_model_layout: Callable | None = None,
              similarity: Callable[[Item], Callable] | None = None,
              custom_similarity: Callable | None = None) -> list[np.ndarray]:
    """Coefficients ``(M_i, k)`` of every item's surrogate.

    x, baselines: ``(N, C, *spatial)`` channel-first; labels: per item ``(E,)``; columns:
    ``(N, k)`` class columns to explain; draw(item, M) → (z, weights or None); fit(z, y, w) →
    ``(M, k)`` (y ``(n, k)``, rows with non-finite scores left out first); similarity(item) →
    z ↦ weights (for draws without weights), or custom_similarity(x1, batch, z) per batch.
    """
    extra = model.check_extra_inputs(extra_inputs)
    x1 = x[:1] if to_model_layout is None else to_model_layout(x[:1])
    step = model.plan_batch(x1, n_batch, extra)
    draws = [draw(i, int(lab.max()) + 1 if lab.size else 0) for i, lab in enumerate(labels)]
    total = sum(len(z) for z, _ in draws)
    scorer = Scorer(model, x.shape[1:], min(step, max(len(z) for z, _ in draws)), score, output,
                    to_model_layout, x.dtype)
    results, dropped = [], 0
    with tqdm(total=total, desc=desc, unit="sample", disable=not verbose, delay=1.0, leave=False) as bar:
        for i, (z, w) in enumerate(draws):
            item = Item(np.ascontiguousarray(x[i]).ravel(), np.ascontiguousarray(baselines[i]).ravel(),
                        labels[i], z.shape[1], item_extra(extra, i, len(x)))
            weigh = None
            if custom_similarity is not None and w is None:
                xi = x[i:i + 1]
                weigh = lambda batch, zb: custom_similarity(xi, batch, zb.astype(np.float32))  # noqa: E731
            y, custom_w = scorer(item, z, columns[i], bar, weigh)
            if w is None:
                w = custom_w if custom_w is not None else similarity(item)(z)
            if not np.isfinite(w).all() or (w < 0).any():
                raise ValueError("the similarity function must return finite, non-negative weights")
            ok = finite_rows(y)
            if not ok.any():
                raise NonFiniteError(f"{desc}: the model's output is not finite (NaN or inf) for every "
                                     f"perturbed copy of item {i}; no explanation can be made")
            dropped += int((~ok).sum())
            results.append(fit(z[ok], y[ok], w[ok]))
    warn_nonfinite(desc, dropped, total, "perturbed copies", "the surrogate is fitted to the others")
    return results


def base_scores(model: Model, x: np.ndarray, score: Callable, output: str, n_batch: int,
                extra_inputs: dict | None, to_model_layout: Callable | None = None) -> np.ndarray:
    """Scores ``(N, K)`` of the unperturbed inputs, checked finite."""
    fed = x if to_model_layout is None else to_model_layout(x)
    raw = model.predict(fed, outputs=output, batch_size=n_batch, extra_inputs=extra_inputs, verbose=False)
    check_finite_output(raw, f"output {output!r}")
    got = score(raw)
    check_finite_output(got, f"the score (activated output {output!r})")
    return got


# ----------------------------------------------------------------------------- fits
def _centred(z: np.ndarray, y: np.ndarray, w: np.ndarray):
    wn = w / w.sum()
    zf = z.astype(np.float64)
    return zf - wn @ zf, y - wn @ y, wn


def _check_weights(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, np.float64)
    if not w.sum() > 0:
        raise ValueError("every sample weight is zero: no surrogate can be fitted (widen the kernel)")
    return w


def fit_linear(z: np.ndarray, y: np.ndarray, w: np.ndarray, surrogate: str, alpha: float) -> np.ndarray:
    """Weighted linear surrogate with an unpenalised intercept, as scikit-learn fits it with
    ``sample_weight=w`` (what Captum's SkLearn* models do): ``"lasso"`` minimises
    ½ Σ w̃_i r_i² + α‖β‖₁ with w̃ = w / Σw (sklearn ``Lasso``; MATLAB ``fitrlinear``'s lasso
    with λ = α); ``"ridge"`` Σ w_i r_i² + α‖β‖² (sklearn ``Ridge``); ``"linear"`` least
    squares, minimum-norm when under-determined (sklearn ``LinearRegression``). Returns
    ``(M, k)`` coefficients (y ``(n, k)``)."""
    w = _check_weights(w)
    zc, yc, wn = _centred(z, y, w)
    if surrogate == "lasso":
        zc = np.ascontiguousarray(zc)
        return np.stack([kern.lasso_cd(zc, np.ascontiguousarray(yc[:, j]), wn, float(alpha),
                                       100_000, 1e-10)[0] for j in range(y.shape[1])], 1)
    sw = np.sqrt(w)[:, None]
    a, b = zc * sw, yc * sw
    if surrogate == "ridge" and alpha > 0:
        m = a.shape[1]
        a = np.concatenate([a, np.sqrt(alpha) * np.eye(m)])
        b = np.concatenate([b, np.zeros((m, b.shape[1]))])
    return scipy.linalg.lstsq(a, b, lapack_driver="gelsd")[0]


def fit_shapley(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """KernelSHAP: Shapley-kernel weighted least squares of f(z) − f(∅) on z with the
    efficiency constraint Σφ = f(full) − f(∅) held exactly (not by a large weight, as Captum
    and DIANNA approximate it). f(full), f(∅): the first all-ones and all-zeros rows; the other
    rows with weights ``w``. φ = Δ/M·1 + a basis of 1^⊥ (a Householder reflector, no M × M
    matrix) times the minimum-norm least-squares solution. Returns ``(M, k)``."""
    n, m = z.shape
    size = z.sum(1, dtype=np.int64)
    full, empty = np.flatnonzero(size == m), np.flatnonzero(size == 0)
    if not len(full) or not len(empty):
        raise NonFiniteError("KernelSHAP needs finite scores for the input and for the baseline "
                             "(the efficiency constraint's ends)")
    f1, f0 = y[full[0]], y[empty[0]]
    delta = f1 - f0
    inner = (size > 0) & (size < m) & (w > 0)
    if m == 1 or not inner.any():
        return np.repeat((delta / m)[None], m, 0)
    zi, yi, sw = z[inner].astype(np.float64), y[inner] - f0, np.sqrt(w[inner])[:, None]
    u = np.full(m, 1 / np.sqrt(m))
    v = u.copy()
    v[0] -= 1.0  # H = I − 2vvᵀ/vᵀv swaps u and e_0
    vv = v @ v
    zh = zi - (2 / vv) * np.outer(zi @ v, v)          # z H: column 0 along u, the rest span 1^⊥
    a0 = delta / np.sqrt(m)                           # the component along u fixed by Σφ = Δ
    rhs = (yi - np.outer(zh[:, 0], a0)) * sw
    beta = scipy.linalg.lstsq(zh[:, 1:] * sw, rhs, lapack_driver="gelsd")[0]
    gamma = np.concatenate([a0[None], beta])          # (M, k) in the reflected basis
    return gamma - (2 / vv) * np.outer(v, v @ gamma)  # φ = H γ


def fit_tree(z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """MATLAB ``fitrtree`` (MinParentSize 10, MinLeafSize 1, QuadraticErrorTolerance 1e-6)
    and ``predictorImportance`` on (z, y) with weights w: ``(M, k)``, non-negative."""
    w = _check_weights(w)
    zu = np.ascontiguousarray(z, np.uint8)
    return np.stack([kern.tree_importance(zu, np.ascontiguousarray(y[:, j]), w, 10, 1, 1e-6)
                     for j in range(y.shape[1])], 1)


# ----------------------------------------------------------------------------- the call flow
def target_columns(index: Any, base: np.ndarray) -> np.ndarray:
    """Captum-style target: None (each item's top class), an int, or one int per item → ``(N, 1)``."""
    n, k = base.shape
    if index is None:
        return base.argmax(1)[:, None]
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu" or idx.ndim > 1 or idx.size not in (1, n):
        raise ValueError(f"index must be None, an int or {n} ints (one per sample), got {index!r}")
    idx = np.broadcast_to(idx.reshape(-1), (n,)).astype(np.int64)
    if ((idx < 0) | (idx >= k)).any():
        raise ValueError(f"index {idx.tolist()} out of range: the model scores {k} classes "
                         f"(0-based indices 0..{k - 1})")
    return idx[:, None]


class SurrogateExplainer:
    """What ``LIME`` and ``KernelSHAP`` share: arguments, input checks, the per-item run and the
    output layout. Subclasses say how coalitions are drawn (``_draw``) and fitted (``_fit``)."""

    desc = "surrogate"

    def __init__(self, model: Any, n_samples: int, perturbations_per_eval: int, feature_mask: Any,
                 baselines: Any, n_features: int, activate: Any, seed: int | None,
                 output: str | None, verbose: bool | None) -> None:
        self.model = model if isinstance(model, Model) else Model(model)
        self.n_samples = positive_int("n_samples", n_samples)
        self.perturbations_per_eval = positive_int("perturbations_per_eval", perturbations_per_eval)
        self.n_features = positive_int("n_features", n_features)
        if isinstance(feature_mask, str) and feature_mask not in SEGMENTATIONS:
            raise ValueError(f"feature_mask must be None, an integer array, 'grid' or 'superpixels', "
                             f"got {feature_mask!r}")
        self.feature_mask = feature_mask
        self.baselines = check_finite_array("baselines", baselines)
        self.score, self.activate = targets.class_scorer(activate), activate
        if seed is not None:
            positive_int("seed", seed, 0)
        self.seed, self.verbose = seed, verbose
        self.output = self.model.check_class_output(output)

    def explain(self, x: np.ndarray, target: Any, **extra_inputs) -> np.ndarray:
        """The registry's protocol: ``(N, C, *spatial)`` attributions of a class target of this
        method's output (its activation must be the one ``activate`` gives: "none" for False,
        "softmax" for True); other targets are refused with ``ValueError``."""
        target = targets.target(target)
        wanted = {False: "none", True: "softmax"}.get(self.activate) if not callable(self.activate) else None
        if (type(target) is not targets.ClassTarget or target.output not in (None, self.output)
                or target.activation != wanted):
            raise ValueError(f"{self.desc} explains a class of output {self.output!r} scored with "
                             f"activate={self.activate!r} (a ClassTarget with activation {wanted!r}); "
                             f"got {target!r}")
        return self(x, target.index, extra_inputs=extra_inputs or None)

    def __call__(self, x: Any, index: Any = None, *, feature_mask: Any = None, baselines: Any = None,
                 coalitions: Any = None, return_input_shape: bool = True,
                 extra_inputs: dict | None = None) -> np.ndarray:
        """Attributions of ``x`` ``(N, C, *spatial)`` for class ``index`` (None: each item's top
        class; an int; or one per item), one surrogate per item (as Captum does for a batch).

        Args:
            feature_mask, baselines: override the constructor's for this call.
            coalitions: ``(n, M)`` 0 / 1 rows to evaluate instead of drawing them (e.g. the ones
                Captum drew); needs the same M for every item.
            return_input_shape: True: ``(N, C, *spatial)`` float32, each element holding its
                feature's coefficient (Captum's layout); False: ``(N, M)`` coefficients.
            extra_inputs: the model's other inputs, passed with every batch.
        """
        x = self.model.check_input(layout.to_channel_first(self.model, x))
        if x.dtype.kind != "f":
            raise ValueError(f"{self.desc} mixes the input with a baseline, which needs a floating-point "
                             f"input; the model's input {self.model.input_name!r} is {x.dtype.name}; {TOKEN_HINT}")
        if x.ndim < 2:
            raise ValueError(f"{self.desc} takes (N, C, *spatial) inputs, got shape {x.shape}")
        mask = layout.argument_to_channel_first(self.model, self.feature_mask if feature_mask is None else feature_mask)
        labels = feature_labels(mask, x, self.n_features)
        base = baseline_values(layout.argument_to_channel_first(
            self.model, self.baselines if baselines is None else baselines), x)
        counts = [int(lab.max()) + 1 for lab in labels]
        if max(counts) > 10000:
            warnings.warn(f"{self.desc}: {max(counts)} interpretable features (every element its own "
                          "feature?): the fit is slow and the result noisy; group them with "
                          "feature_mask= (an integer array, 'grid' or 'superpixels')", stacklevel=2)
        given = None if coalitions is None else [check_coalitions(coalitions, c) for c in counts]
        scores = base_scores(self.model, x, self.score, self.output, self.perturbations_per_eval,
                             extra_inputs)
        columns = target_columns(index, scores)
        seeds = np.random.SeedSequence(self.seed)
        draw = (lambda i, m: self._draw(np.random.default_rng(seeds), m, given[i] if given else None))
        show = self.model.verbose if self.verbose is None else self.verbose
        coefs = run_items(self.model, x, base, labels, columns, draw, self._fit, score=self.score,
                          output=self.output, n_batch=self.perturbations_per_eval,
                          extra_inputs=extra_inputs, verbose=show, desc=self.desc,
                          **self._similarity())
        if not return_input_shape:
            if len(set(counts)) > 1:
                raise ValueError(f"the items have different numbers of features {counts}: use "
                                 "return_input_shape=True")
            return np.stack([c[:, 0] for c in coefs]).astype(np.float32)
        attributions = np.stack([c[lab, 0].reshape(x.shape[1:]) for c, lab in zip(coefs, labels)])
        return layout.to_input_layout(self.model, attributions.astype(np.float32))

    def _similarity(self) -> dict:
        return {}

    def _draw(self, rng: np.random.Generator, m: int, given: np.ndarray | None):
        raise NotImplementedError

    def _fit(self, z: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError
