"""RISE kernels: random binary masks upsampled (bi/tri)linearly with a random shift, written
in place into a preallocated batch, and their score-weighted sum (numba, no per-mask allocation).

Everything is 3-axis: a 2D input ``(H, W)`` is seen as ``(1, H, W)`` (the singleton axis first,
so inner loops run along W). Grids are ``(n, g0, g1, g2)`` uint8 (0/1), one grid step per
``cells[a]`` pixels along axis ``a``; a mask's value at pixel ``i`` is the linear interpolation
of the grid at grid coordinate ``(i + 0.5 + shift) / cell - 0.5``, clamped to the grid (edges
replicate). Separable: interpolate along axis 2, then 1, then 0.

Serial on purpose: measured next to ONNX Runtime, parallel numba threads contend with ORT's
spinning workers (benchmarks/rise.py; numbers in benchmarks/RESULTS.md).
"""
from __future__ import annotations

import numpy as np
from numba import njit

_BLOCK = 4096  # pixels per chunk of the accumulation (the chunk of sal stays in cache)


@njit(cache=True, inline="always")
def _coord(i, shift, cell, g):
    """Lower grid index, upper grid index and weight of the upper one for pixel ``i``."""
    t = (i + 0.5 + shift) / cell - 0.5
    if t < 0.0:
        t = 0.0
    elif t > g - 1:
        t = g - 1.0
    i0 = int(t)
    return i0, min(i0 + 1, g - 1), np.float32(t - i0)


@njit(cache=True, nogil=True)
def fill_masked_batch(x, grids, shifts, cells, masks, out, work):
    """Write ``n = len(grids)`` masks into ``masks[:n]`` and ``x * mask`` into ``out[:n]``.

    Args:
        x: ``(C, P)`` float32, the input flattened over ``(s0, s1, s2)``.
        grids: ``(n, g0, g1, g2)`` uint8 binary grids.
        shifts: ``(n, 3)`` float64 shifts in pixels, ``[0, cell)`` per axis.
        cells: ``(3,)`` float64 cell sizes in pixels.
        masks: ``(N >= n, s0, s1, s2)`` float32, written.
        out: ``(N >= n, C, P)`` float32, written (``P = s0·s1·s2``).
        work: scratch, ``((N, g0, g1, s2), (N, g0, s1, s2))`` float32 (``MaskBatch.work``).
    """
    n, g0, g1, g2 = grids.shape
    s0, s1, s2 = masks.shape[1:]
    nc, p_ = x.shape
    work2, work1 = work
    for b in range(n):
        g, t2, t1, m = grids[b], work2[b], work1[b], masks[b]
        for k in range(s2):  # along axis 2, on the grid's rows
            k0, k1, wk = _coord(k, shifts[b, 2], cells[2], g2)
            for a in range(g0):
                for c in range(g1):
                    t2[a, c, k] = (1 - wk) * g[a, c, k0] + wk * g[a, c, k1]
        for a in range(g0):  # along axis 1
            for j in range(s1):
                j0, j1, wj = _coord(j, shifts[b, 1], cells[1], g1)
                for k in range(s2):
                    t1[a, j, k] = (1 - wj) * t2[a, j0, k] + wj * t2[a, j1, k]
        for i in range(s0):  # along axis 0
            i0, i1, wi = _coord(i, shifts[b, 0], cells[0], g0)
            for j in range(s1):
                for k in range(s2):
                    m[i, j, k] = (1 - wi) * t1[i0, j, k] + wi * t1[i1, j, k]
        mf = m.reshape(p_)
        for c in range(nc):
            xc, oc = x[c], out[b, c]
            for p in range(p_):
                oc[p] = xc[p] * mf[p]


@njit(cache=True, nogil=True)
def accumulate(masks, weights, sal):
    """``sal[k, p] += Σ_b weights[b, k] · masks[b, p]`` for ``b < len(weights)``.

    Args:
        masks: ``(N, P)`` float32 (flattened masks; only the first ``len(weights)`` rows are read).
        weights: ``(n, K)`` float64 scores.
        sal: ``(K, P)`` float64 accumulator, updated in place.
    """
    n, k_ = weights.shape
    p_ = sal.shape[1]
    for blk in range((p_ + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, p_)
        for k in range(k_):
            row = sal[k]
            for b in range(n):
                wb = weights[b, k]
                mb = masks[b]
                for p in range(lo, hi):
                    row[p] += wb * mb[p]


class MaskBatch:
    """Preallocated buffers and geometry for RISE masks over a ``spatial`` (2D or 3D) input.

    ``fill(x, n)`` draws the next ``n`` masks (grids from one stream, shifts from another, so
    the masks do not depend on the batch size) and returns ``x * mask`` as ``(n, C, *spatial)``;
    ``accumulate(scores, sal)`` adds ``scores.T @ masks`` to ``sal``. Memory: about
    ``(C + 1) · n_batch`` inputs.
    """

    def __init__(self, spatial: tuple[int, ...], channels: int, cells_per_dim: tuple[int, ...],
                 p1: float, n_batch: int) -> None:
        pad = 3 - len(spatial)  # 2D runs as (1, H, W)
        self.spatial, self.p1 = tuple(spatial), p1
        shape3 = (1,) * pad + self.spatial
        self.grid = (1,) * pad + tuple(int(g) + 1 for g in cells_per_dim)
        self.cells = np.asarray(shape3, np.float64) / np.asarray((1,) * pad + tuple(cells_per_dim))
        self.masks = np.empty((n_batch, *shape3), np.float32)
        self.batch = np.empty((n_batch, channels, self.masks[0].size), np.float32)
        self.work = (np.empty((n_batch, self.grid[0], self.grid[1], shape3[2]), np.float32),
                     np.empty((n_batch, self.grid[0], shape3[1], shape3[2]), np.float32))
        self.reset(None)

    def reset(self, seed: int | None) -> None:
        """Restart the mask stream from ``seed`` (None: fresh randomness)."""
        self._rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)]

    def fill(self, x: np.ndarray, n: int) -> np.ndarray:
        """``x`` ``(C, *spatial)`` float32 times the next ``n`` masks → ``(n, C, *spatial)`` view."""
        grids, shifts = random_grids(self._rngs, n, self.grid, self.p1, self.cells)
        xf = np.ascontiguousarray(x.reshape(x.shape[0], -1))
        fill_masked_batch(xf, grids, shifts, self.cells, self.masks, self.batch, self.work)
        return self.batch[:n].reshape(n, x.shape[0], *self.spatial)

    def accumulate(self, scores: np.ndarray, sal: np.ndarray) -> None:
        """``sal`` ``(K, P)`` += ``scores.T`` ``(K, n)`` @ the last ``n`` masks ``(n, P)``."""
        accumulate(self.masks.reshape(len(self.masks), -1), np.ascontiguousarray(scores, np.float64), sal)


def random_grids(rngs: list[np.random.Generator], n: int, grid: tuple[int, int, int], p1: float,
                 cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``n`` binary grids ``(n, *grid)`` uint8 with P(1) = p1 (from ``rngs[0]``) and shifts ``(n, 3)``
    in ``[0, cell)``, zero along a size-1 axis (from ``rngs[1]``)."""
    grids = (rngs[0].random((n, *grid)) < p1).astype(np.uint8)
    shifts = rngs[1].random((n, 3)) * np.where(np.asarray(grid) > 1, cells, 0.0)
    return grids, shifts
