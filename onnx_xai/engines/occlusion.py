"""Occlusion engine shared by ``OcclusionSensitivity`` (MONAI) and ``occlusion_sensitivity`` (MATLAB).

A run is: a list of windows ``[lo, hi)``, a rule for what replaces the occluded patch, and
a score function on the model's outputs. Windows go through the model ``n_batch`` at a
time from one preallocated buffer that the numba kernel edits in place, so peak memory is
``n_batch`` × input size whatever the number of windows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.ndimage
from tqdm.auto import tqdm

from ..errors import NonFiniteError
from ..finite import check_finite_output, finite_rows, warn_nonfinite
from ..kernels import occlusion as kern
from ..runtime import Model


@dataclass(frozen=True)
class Occluder:
    """What replaces a window's patch: ``patch * mul``, a per-channel constant, the patch
    mean, or ``fn(x, patch) -> patch`` (MONAI's callable mode; runs in Python)."""

    kind: int | None = None
    mul: np.ndarray | None = None     # (C, *mask) float32, MULTIPLY
    value: np.ndarray | None = None   # (C,) float32, CONSTANT
    fn: Callable | None = None

    @classmethod
    def multiply(cls, mul: np.ndarray) -> "Occluder":
        return cls(kern.MULTIPLY, mul=np.asarray(mul, np.float32))

    @classmethod
    def constant(cls, value: np.ndarray) -> "Occluder":
        return cls(kern.CONSTANT, value=np.ascontiguousarray(np.ravel(value), np.float32))

    @classmethod
    def patch_mean(cls) -> "Occluder":
        return cls(kern.PATCH_MEAN)

    @classmethod
    def call(cls, fn: Callable) -> "Occluder":
        return cls(None, fn=fn)


def as_3d(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Pad 1D/2D spatial shapes with leading ones: the kernels work on 3D."""
    if not 1 <= len(shape) <= 3:
        raise ValueError(f"occlusion supports 1 to 3 spatial dimensions, got {len(shape)}")
    return (1,) * (3 - len(shape)) + tuple(shape)  # type: ignore[return-value]


def _pad_windows(bounds: np.ndarray, fill: int) -> np.ndarray:
    """``(n, sd)`` window bounds as ``(n, 3)``, leading axes filled with ``fill``."""
    out = np.full((bounds.shape[0], 3), fill, np.int64)
    out[:, 3 - bounds.shape[1]:] = bounds
    return out


def occlusion_scores(model: Model, x: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     occluder: Occluder, score: Callable[[np.ndarray], np.ndarray], *,
                     output: str | None = None, n_batch: int = 16,
                     extra_inputs: dict | None = None, verbose: bool = True,
                     to_model_layout: Callable[[np.ndarray], np.ndarray] | None = None,
                     desc: str = "occlusion", check_unoccluded: bool = True,
                     nonfinite_rule: str = "the map is made from the other windows") -> np.ndarray:
    """Scores of the model on ``x`` occluded at every window.

    Args:
        x: ``(1, C, *spatial)`` channel-first input (1 to 3 spatial dimensions).
        lo, hi: ``(n, sd)`` int window bounds, ``hi`` exclusive.
        score: model output batch ``(b, ...)`` → ``(b, K)`` scores.
        output: model output to score (default: the first).
        to_model_layout: applied to each channel-first batch before it is fed (for
            channel-last models); default: fed as it is.
        check_unoccluded: also run ``x`` itself once: a non-finite output or score there
            raises ``NonFiniteError`` naming the output (False: the caller checked it).
        nonfinite_rule: how the caller makes its map without non-finite windows (the
            ``NonFiniteWarning``'s text).
    Returns:
        ``(n, K)`` float64 scores, one row per window. Rows where the occluded copy scored
        NaN or ±inf are kept as they are, with one ``NonFiniteWarning`` giving their count;
        ``NonFiniteError`` when no window is finite.
    """
    output = output or model.output_names[0]
    extra = model.check_extra_inputs(extra_inputs)
    channels, spatial = x.shape[1], x.shape[2:]
    x3 = np.ascontiguousarray(x[0]).reshape((channels,) + as_3d(spatial))
    lo3, hi3 = _pad_windows(np.asarray(lo), 0), _pad_windows(np.asarray(hi), 1)
    n = lo3.shape[0]
    x_fed = x if to_model_layout is None else to_model_layout(x)
    step = model.plan_batch(x_fed, n_batch, extra)
    if check_unoccluded:
        raw = model.run_batch(np.ascontiguousarray(x_fed), [output], extra)[0]
        check_finite_output(raw, f"output {output!r}", "the unoccluded input")
        check_finite_output(score(raw), f"the score (activated output {output!r})",
                            "the unoccluded input")
    buf = np.repeat(x3[None], min(step, n), axis=0)
    windows = np.stack([lo3, hi3], axis=1)  # (n, 2, 3): lower and upper corners
    prev = np.zeros((buf.shape[0], 2, 3), np.int64)
    prev[:, 1] = -1  # a clean copy
    mul = np.zeros((1, 1, 1, 1), np.float32) if occluder.mul is None else np.array(
        occluder.mul, np.float32).reshape((occluder.mul.shape[0],) + as_3d(occluder.mul.shape[1:]))
    value = occluder.value if occluder.value is not None else np.zeros(1, np.float32)
    if occluder.kind == kern.CONSTANT and value.size == 1:
        value = np.repeat(value, channels)
    scores = None
    with tqdm(total=n, desc=desc, unit="window", disable=not verbose, leave=False) as bar:
        for start in range(0, n, buf.shape[0]):
            nb = min(buf.shape[0], n - start)
            win = slice(start, start + nb)
            if occluder.fn is None:
                kern.fill_occluded(buf[:nb], x3, prev[:nb], windows[win], occluder.kind, mul, value)
            else:
                _fill_with_callable(buf[:nb], x, prev[:nb], windows[win], occluder.fn)
            prev[:nb] = windows[win]
            batch = buf[:nb].reshape((nb, channels) + tuple(spatial))
            if to_model_layout is not None:
                batch = to_model_layout(batch)
            got = score(model.run_batch(batch, [output], extra)[0])
            if scores is None:
                scores = np.empty((n,) + got.shape[1:], np.float64)
            scores[win] = got
            bar.update(nb)
    ok = finite_rows(scores)
    if not ok.any():
        raise NonFiniteError(f"{desc}: the model's output {output!r} is not finite (NaN or inf) "
                             f"for every one of the {n} occluded copies; no map can be made "
                             "(try another occlusion value or mode)")
    warn_nonfinite(desc, int(n - ok.sum()), n, "occluded copies (windows)", nonfinite_rule)
    return scores


def _fill_with_callable(buf, x, prev, windows, fn) -> None:
    """Python twin of ``fill_occluded`` for a user callable ``fn(x, patch) -> patch``."""
    sd = x.ndim - 2
    x3 = x[0].reshape(buf.shape[1:])
    lo, hi = windows[:, 0], windows[:, 1]
    for b in range(lo.shape[0]):
        if prev[b, 1, 0] >= 0:
            old = (b, slice(None)) + tuple(slice(prev[b, 0, d], prev[b, 1, d]) for d in range(3))
            buf[old] = x3[old[1:]]
        box = tuple(slice(lo[b, d], hi[b, d]) for d in range(3 - sd, 3))
        patch = np.asarray(fn(x, x[(slice(0, 1), slice(None)) + box].copy()))
        if patch.dtype.kind not in "biuf":
            raise ValueError(f"the occlusion callable must return a numeric patch, got dtype {patch.dtype}")
        if not np.isfinite(patch).all():
            raise ValueError("the occlusion callable returned a patch with non-finite values "
                             f"(NaN or inf) for the window at {tuple(int(v) for v in lo[b])}")
        window = (b, slice(None)) + tuple(slice(lo[b, d], hi[b, d]) for d in range(3))
        try:
            buf[window] = patch.reshape(buf[window].shape)
        except ValueError as exc:
            raise ValueError(f"the occlusion callable must return a patch shaped like its input "
                             f"{(1, x.shape[1]) + tuple(s.stop - s.start for s in box)}, "
                             f"got {patch.shape}") from exc


def blend(scores: np.ndarray, lo: np.ndarray, weight: np.ndarray,
          spatial: tuple[int, ...]) -> np.ndarray:
    """Weighted average of window scores painted over their windows.

    Args:
        scores: ``(n, K)``; lo: ``(n, sd)`` starts of equal-sized windows shaped like
        ``weight`` ``(m0[, m1[, m2]])``; spatial: the map's spatial shape.
    Returns:
        ``(K, *spatial)`` float32: at each point, Σ weight·score / Σ weight over the windows
        that cover it (every point must be covered). Windows with a non-finite score are
        left out; a point that only such windows cover takes the value of the nearest point
        that finite windows cover (``fill_nearest``).
    """
    shape3 = as_3d(tuple(spatial))
    ok = finite_rows(scores)
    scores, lo = np.asarray(scores)[ok], np.asarray(lo)[ok]
    lo3 = _pad_windows(lo.reshape(len(lo), -1), 0)
    w3 = np.ascontiguousarray(weight, np.float32).reshape(as_3d(weight.shape))
    total = kern.window_weight_sum(np.array(shape3, np.int64), lo3, w3)
    missing = total <= 0
    if missing.any() and ok.all():
        raise ValueError("the windows do not cover every point of the map")
    if missing.all():
        raise NonFiniteError("no window with a finite score: no map can be made")
    out = np.empty((scores.shape[1],) + shape3, np.float32)
    kern.blend_windows(out, np.ascontiguousarray(scores, np.float32), lo3, w3,
                       np.where(missing, 0.0, 1.0 / np.where(missing, 1.0, total)).astype(np.float32))
    if missing.any():
        out = fill_nearest(out, missing)
    return out.reshape((scores.shape[1],) + tuple(spatial))


def fill_nearest(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """``values`` ``(K, *spatial)`` with the points where ``missing`` ``(*spatial)`` is True
    replaced by the values at the nearest point (Euclidean, first in C order on ties) where
    it is False. Some point must not be missing."""
    idx = scipy.ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    return values[(slice(None),) + tuple(idx)]
