"""Numba kernels for LIME / KernelSHAP: perturbed batches written in place from feature
coalitions, the weighted Lasso's coordinate descent, and a weighted regression tree's
predictor importance (MATLAB ``fitrtree`` + ``predictorImportance``).

An input item is flattened to ``(E,)`` elements (channels × spatial), each with the
interpretable feature it belongs to (``labels``, ``(E,)`` int32). A coalition ``z`` is a
``(M,)`` uint8 row: feature ``m`` present (1, the input's values) or absent (0, the
baseline's values).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def fill_coalitions(buf, x, base, labels, z):  # pragma: no cover - jitted
    """``buf[b, e] = x[e] if z[b, labels[e]] else base[e]`` for ``b < len(z)``.

    buf: (N >= n, E), written; x, base: (E,) of buf's dtype; labels: (E,) int32 in
    ``[0, M)``; z: (n, M) uint8. Serial on purpose (as the occlusion and RISE kernels):
    parallel numba threads would contend with ONNX Runtime's.
    """
    n_elements = x.shape[0]
    for b in range(z.shape[0]):
        row, zb = buf[b], z[b]
        for e in range(n_elements):
            row[e] = x[e] if zb[labels[e]] else base[e]


@njit(cache=True, nogil=True)
def fill_runs(buf, x, base, starts, feats, z):  # pragma: no cover - jitted
    """``fill_coalitions`` over runs of equal labels: run r covers elements
    ``[starts[r], starts[r + 1])`` (``starts`` ends with E), all of feature ``feats[r]``; each
    run is one contiguous copy from ``x`` or ``base`` (images: rows of a superpixel or cell)."""
    for b in range(z.shape[0]):
        row, zb = buf[b], z[b]
        for r in range(feats.shape[0]):
            src = x if zb[feats[r]] else base
            for e in range(starts[r], starts[r + 1]):  # a plain loop: faster than slice copies
                row[e] = src[e]


@njit(cache=True, nogil=True)
def lasso_cd(xc, yc, w, alpha, max_sweeps, tol):  # pragma: no cover - jitted
    """Coordinate descent for ``min_β ½ Σ_i w_i (yc_i − xc_i·β)² + α ‖β‖₁``.

    xc: (n, M) float64, columns centred with the weights; yc: (n,) float64 centred; w: (n,)
    float64 summing to 1. Stops when a sweep changes no coefficient by more than
    ``tol · max(1, max|β|)``. Returns (β (M,), sweeps done).
    """
    n, m = xc.shape
    beta = np.zeros(m)
    resid = yc.copy()
    norms = np.zeros(m)
    for j in range(m):
        s = 0.0
        for i in range(n):
            s += w[i] * xc[i, j] * xc[i, j]
        norms[j] = s
    sweeps = 0
    while sweeps < max_sweeps:
        sweeps += 1
        biggest_change = 0.0
        biggest = 0.0
        for j in range(m):
            if norms[j] <= 0.0:
                continue
            old = beta[j]
            rho = 0.0
            for i in range(n):
                rho += w[i] * xc[i, j] * resid[i]
            rho += norms[j] * old
            if rho > alpha:
                new = (rho - alpha) / norms[j]
            elif rho < -alpha:
                new = (rho + alpha) / norms[j]
            else:
                new = 0.0
            delta = new - old
            if delta != 0.0:
                for i in range(n):
                    resid[i] -= xc[i, j] * delta
                beta[j] = new
            biggest_change = max(biggest_change, abs(delta))
            biggest = max(biggest, abs(new))
        if biggest_change <= tol * max(1.0, biggest):
            break
    return beta, sweeps


@njit(cache=True, nogil=True)
def tree_importance(z, y, w, min_parent, min_leaf, tolerance):  # pragma: no cover - jitted
    """Predictor importance of a CART regression tree on binary predictors (MATLAB's
    ``fitrtree`` defaults and ``predictorImportance``).

    z: (n, M) uint8 predictors; y: (n,) float64 responses; w: (n,) float64 weights.
    A node is split when it holds at least ``min_parent`` observations and its weighted MSE
    is above ``tolerance`` × the root's; the split is the predictor (0 | 1) that lowers the
    weighted squared error most (the first on ties), with at least ``min_leaf`` observations
    on each side and a strictly positive gain. Importance of predictor m: Σ over the splits
    on m of risk(parent) − risk(left) − risk(right), risk = the node's weighted squared error
    ÷ the total weight (node probability × node MSE), divided by the number of splits.
    Returns (M,) float64 (zeros when the root is not split).
    """
    n, m = z.shape
    total_w = 0.0
    for i in range(n):
        total_w += w[i]
    importance = np.zeros(m)
    if total_w <= 0.0:
        return importance
    order = np.arange(n)  # node members are contiguous ranges of ``order``
    stack_lo = np.empty(2 * n + 2, np.int64)
    stack_hi = np.empty(2 * n + 2, np.int64)
    stack_lo[0], stack_hi[0] = 0, n
    top = 1
    root_mse = -1.0
    branches = 0
    scratch = np.empty(n, np.int64)
    while top > 0:
        top -= 1
        lo, hi = stack_lo[top], stack_hi[top]
        count = hi - lo
        sw, sy, syy = 0.0, 0.0, 0.0
        for t in range(lo, hi):
            i = order[t]
            sw += w[i]
            sy += w[i] * y[i]
            syy += w[i] * y[i] * y[i]
        if sw <= 0.0:
            continue
        sse = max(syy - sy * sy / sw, 0.0)
        mse = sse / sw
        if root_mse < 0.0:
            root_mse = mse
        if count < min_parent or mse <= tolerance * root_mse or sse <= 0.0:
            continue
        best_gain, best_j = 0.0, -1
        for j in range(m):
            w1, s1, q1, c1 = 0.0, 0.0, 0.0, 0
            for t in range(lo, hi):
                i = order[t]
                if z[i, j]:
                    w1 += w[i]
                    s1 += w[i] * y[i]
                    q1 += w[i] * y[i] * y[i]
                    c1 += 1
            c0 = count - c1
            if c1 < min_leaf or c0 < min_leaf:
                continue
            w0, s0, q0 = sw - w1, sy - s1, syy - q1
            sse1 = max(q1 - s1 * s1 / w1, 0.0) if w1 > 0.0 else 0.0
            sse0 = max(q0 - s0 * s0 / w0, 0.0) if w0 > 0.0 else 0.0
            gain = sse - sse0 - sse1
            if gain > best_gain * (1.0 + 1e-12) + 1e-300:
                best_gain, best_j = gain, j
        if best_j < 0:
            continue
        importance[best_j] += best_gain / total_w
        branches += 1
        left = lo  # partition order[lo:hi]: z == 0 first
        k = 0
        for t in range(lo, hi):
            i = order[t]
            if z[i, best_j]:
                scratch[k] = i
                k += 1
            else:
                order[left] = i
                left += 1
        for t in range(k):
            order[left + t] = scratch[t]
        stack_lo[top], stack_hi[top] = lo, left
        stack_lo[top + 1], stack_hi[top + 1] = left, hi
        top += 2
    if branches:
        importance /= branches
    return importance
