"""Numba kernels for occlusion: occluded batches built in place, window scores blended.

Spatial data is handled as 3D everywhere: a 2D image ``(C, H, W)`` is viewed as
``(C, 1, H, W)`` (a free reshape, leading unit axes so that the innermost loops run along
the longest contiguous axis), so one kernel serves 1D, 2D and 3D. A window is the box
``[lo, hi)`` per spatial dimension.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# How a window's patch is replaced (the ``kind`` argument of ``fill_occluded``).
MULTIPLY = 0    # patch * mul                     (MONAI "gaussian")
CONSTANT = 1    # value[c] per channel            (a float, "mean_img", MATLAB mask values)
PATCH_MEAN = 2  # mean of the patch over all channels


@njit(cache=True)
def fill_occluded(buf, x, prev, windows, kind, mul, value):  # pragma: no cover - jitted
    """Turn ``buf[b]`` from "x occluded at window prev[b]" into "x occluded at window windows[b]".

    buf: (B, C, D0, D1, D2) float32, each slot a copy of ``x`` except inside its previous
    window; x: (C, D0, D1, D2); prev, windows: (B, 2, 3) int64 boxes, ``[b, 0]`` the lower
    corner and ``[b, 1]`` the upper one, exclusive (prev[b, 1, 0] < 0: the slot holds a clean
    copy); mul: (C, m0, m1, m2) indexed from the lower corner; value: (C,).
    Only the two windows of each slot are touched, never the whole image. Serial on
    purpose: the work is tiny, and a parallel region's spinning worker threads would steal
    the cores ONNX Runtime runs on next.
    """
    n_channels = x.shape[0]
    prev_lo, prev_hi = prev[:, 0], prev[:, 1]
    lo, hi = windows[:, 0], windows[:, 1]
    for b in range(lo.shape[0]):
        if prev_hi[b, 0] >= 0:
            for c in range(n_channels):
                for i in range(prev_lo[b, 0], prev_hi[b, 0]):
                    for j in range(prev_lo[b, 1], prev_hi[b, 1]):
                        for k in range(prev_lo[b, 2], prev_hi[b, 2]):
                            buf[b, c, i, j, k] = x[c, i, j, k]
        mean = 0.0
        if kind == PATCH_MEAN:
            total = 0.0
            count = 0
            for c in range(n_channels):
                for i in range(lo[b, 0], hi[b, 0]):
                    for j in range(lo[b, 1], hi[b, 1]):
                        for k in range(lo[b, 2], hi[b, 2]):
                            total += x[c, i, j, k]
                            count += 1
            mean = total / max(count, 1)
        for c in range(n_channels):
            for i in range(lo[b, 0], hi[b, 0]):
                for j in range(lo[b, 1], hi[b, 1]):
                    for k in range(lo[b, 2], hi[b, 2]):
                        if kind == MULTIPLY:
                            buf[b, c, i, j, k] = x[c, i, j, k] * mul[c, i - lo[b, 0], j - lo[b, 1], k - lo[b, 2]]
                        elif kind == CONSTANT:
                            buf[b, c, i, j, k] = value[c]
                        else:
                            buf[b, c, i, j, k] = mean


@njit(cache=True, parallel=True)
def blend_windows(out, scores, lo, weight, inv_count):  # pragma: no cover - jitted
    """``out[k, p] = inv_count[p] * Σ_w weight(p - lo[w]) * scores[w, k]`` over windows covering p.

    out: (K, D0, D1, D2) float32, overwritten; scores: (n, K) float32; lo: (n, 3) window
    starts (all windows have the shape of ``weight``, (m0, m1, m2)); inv_count: (D0, D1, D2),
    one over the summed weights. Parallel over the rows (i0, i1) of the map: each row is
    accumulated as ``(D2, K)`` so that the innermost loop runs over the contiguous classes,
    then written out class by class.
    """
    n_classes = out.shape[0]
    m0, m1, m2 = weight.shape
    d1, d2 = out.shape[2], out.shape[3]
    for r in prange(out.shape[1] * d1):
        i0, i1 = r // d1, r % d1
        acc = np.zeros((d2, n_classes), np.float32)
        for w in range(lo.shape[0]):
            a, b = i0 - lo[w, 0], i1 - lo[w, 1]
            if a < 0 or a >= m0 or b < 0 or b >= m1:
                continue
            row = scores[w]
            for t in range(m2):
                wt = weight[a, b, t]
                dst = acc[lo[w, 2] + t]
                for k in range(n_classes):
                    dst[k] += wt * row[k]
        for k in range(n_classes):
            for t in range(d2):
                out[k, i0, i1, t] = acc[t, k] * inv_count[i0, i1, t]


@njit(cache=True, parallel=True)
def argmax_first_axis(maps):  # pragma: no cover - jitted
    """``maps.argmax(axis=0)`` for ``(K, P)`` float32 (the first maximum; a NaN wins, as in
    NumPy): ``(P,)`` int64. Parallel over blocks of points, classes scanned in order."""
    n_classes, n_points = maps.shape
    block = 2048
    out = np.zeros(n_points, np.int64)
    for blk in prange((n_points + block - 1) // block):
        p0 = blk * block
        p1 = min(p0 + block, n_points)
        best = maps[0, p0:p1].copy()
        for k in range(1, n_classes):
            for p in range(p0, p1):
                b = best[p - p0]
                v = maps[k, p]
                if b == b and (v > b or v != v):
                    best[p - p0] = v
                    out[p] = k
    return out


@njit(cache=True)
def window_weight_sum(shape, lo, weight):  # pragma: no cover - jitted
    """Σ_w weight(p - lo[w]) over windows covering p: (D0, D1, D2) float64."""
    total = np.zeros((shape[0], shape[1], shape[2]))
    m0, m1, m2 = weight.shape
    for w in range(lo.shape[0]):
        for i in range(m0):
            for j in range(m1):
                for t in range(m2):
                    total[lo[w, 0] + i, lo[w, 1] + j, lo[w, 2] + t] += weight[i, j, t]
    return total
