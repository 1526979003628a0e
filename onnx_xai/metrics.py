"""Faithfulness and localisation metrics for saliency maps.

- ``deletion`` / ``insertion`` (Petsiuk et al., "RISE", BMVC 2018): remove (insert) input pixels
  in the order the map ranks them, all channels of a pixel at once, and follow the class score;
  the area under that curve over the removed (inserted) fraction is the metric — lower is better
  for deletion, higher for insertion. Deletion starts from the image and ends at a constant
  baseline (0 by default); insertion starts from a blurred copy and ends at the image.
- ``pointing_game`` (Zhang et al., ECCV 2016): is the map's maximum on the object?
- ``energy_in_box`` (Wang et al., Score-CAM 2020): share of the map's positive mass on the object.

Maps are ``(B, 1, *spatial)`` (what the methods return); deletion / insertion also take ``(B, *spatial)``.

Non-finite numbers (see ``onnx_xai.finite``): a map, input or numeric baseline holding NaN / inf
is a ``ValueError`` (count, first index); a non-finite model output on the unperturbed input a
``NonFiniteError``. Deletion / insertion steps whose perturbed input scores NaN / inf are
interpolated linearly from the neighbouring finite steps (held constant past the last one) in
``scores`` and the AUC, with a ``NonFiniteWarning`` giving their count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.ndimage
from tqdm.auto import tqdm

from .errors import NonFiniteError
from .finite import check_finite_array, check_finite_input, check_finite_output, check_number, warn_nonfinite
from .runtime import Model, ModelSource
from . import targets


@dataclass
class Curve:
    """A deletion or insertion curve: ``fractions`` ``(S+1,)`` of pixels removed / inserted,
    ``scores`` ``(B, S+1)`` class scores along them, ``auc`` ``(B,)`` trapezoid area, ``index`` ``(B,)``."""

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    index: np.ndarray


def auc(y: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """Trapezoid area under ``y`` ``(..., S+1)`` over ``x`` (default: ``linspace(0, 1, S+1)``)."""
    y = np.asarray(y, np.float64)
    x = np.linspace(0.0, 1.0, y.shape[-1]) if x is None else np.asarray(x, np.float64)
    return np.sum((y[..., 1:] + y[..., :-1]) * np.diff(x) / 2.0, axis=-1)


def _flat_maps(saliency: Any, batch: int, n_pixels: int, what: str) -> np.ndarray:
    sal = np.asarray(saliency, dtype=np.float64)
    if sal.size == batch * n_pixels:
        check_finite_input(sal, f"{what}: the saliency map")
        return sal.reshape(batch, n_pixels)
    raise ValueError(f"{what}: saliency of shape {sal.shape} does not hold one map of {n_pixels} "
                     f"pixels per item for {batch} item(s); pass (B, 1, *spatial) or (B, *spatial) "
                     "(sum a per-channel map over its channels first)")


def _baseline(x: np.ndarray, baseline: Any, sigma: float) -> np.ndarray:
    if isinstance(baseline, str):
        if baseline == "blur":
            return scipy.ndimage.gaussian_filter(x, sigma=[0, 0] + [sigma] * (x.ndim - 2), mode="nearest")
        if baseline == "mean":
            return np.broadcast_to(x.mean(axis=tuple(range(2, x.ndim)), keepdims=True), x.shape)
        raise ValueError(f"baseline must be 'blur', 'mean', a number or an array, got {baseline!r}")
    base = check_finite_array("baseline", baseline).astype(x.dtype)
    if not np.isfinite(base).all():
        raise ValueError(f"baseline overflows {x.dtype.name}")
    try:
        return np.broadcast_to(base, x.shape)
    except ValueError:
        raise ValueError(f"baseline of shape {base.shape} does not broadcast to the input {x.shape}") from None


@dataclass(frozen=True)
class _CurveOptions:
    """The keyword arguments of ``deletion`` / ``insertion`` (see there)."""

    n_steps: int
    baseline: Any
    blur_sigma: float
    activate: Any
    batch_size: int
    extra_inputs: dict | None
    verbose: bool | None


def _curve(kind: str, model: ModelSource, x: Any, saliency: Any, index: Any, opt: _CurveOptions) -> Curve:
    model = model if isinstance(model, Model) else Model(model)
    x = model.check_input(x)
    n_steps, batch_size, extra_inputs = opt.n_steps, opt.batch_size, opt.extra_inputs
    if x.ndim < 3:
        raise ValueError(f"{kind} needs a (B, C, *spatial) input, got shape {x.shape}")
    n_steps, batch_size = targets.positive_int("n_steps", n_steps), targets.positive_int("batch_size", batch_size)
    b, c = x.shape[:2]
    n_pix = int(np.prod(x.shape[2:]))
    sal = _flat_maps(saliency, b, n_pix, kind)
    blur_sigma = check_number("blur_sigma", opt.blur_sigma, 0.0)
    base = _baseline(x, opt.baseline, blur_sigma).reshape(b, c, n_pix)
    output = model.check_outputs(index.output if isinstance(index, targets.Target) else None)[0]
    raw = model.predict(x, outputs=output, extra_inputs=extra_inputs, verbose=False)
    check_finite_output(raw, f"output {output!r}")
    scorers, classes = targets.item_scorers(index, opt.activate, raw)
    for i, score in enumerate(scorers):
        check_finite_output(score(raw[i:i + 1]), f"the score (of output {output!r})")
    counts = np.round(np.linspace(0, n_pix, n_steps + 1)).astype(np.int64)
    flat = x.reshape(b, c, n_pix)
    out = np.empty((b, n_steps + 1))
    show = model.verbose if opt.verbose is None else opt.verbose
    with tqdm(total=b * (n_steps + 1), desc=kind, unit="image", delay=1.0, leave=False,
              disable=not show) as bar:
        for i in range(b):
            rank = np.empty(n_pix, np.int64)  # rank[p] = when pixel p is removed / inserted
            rank[np.argsort(-sal[i], kind="stable")] = np.arange(n_pix)
            start, end = (flat[i], base[i]) if kind == "deletion" else (base[i], flat[i])
            extra = None if extra_inputs is None else {
                k: (v[i:i + 1] if b > 1 and np.ndim(v) and np.shape(v)[0] == b else v)
                for k, v in extra_inputs.items()}
            for lo in range(0, n_steps + 1, batch_size):
                k = counts[lo:lo + batch_size]
                changed = rank[None, None, :] < k[:, None, None]  # (n, 1, P)
                imgs = np.where(changed, end[None], start[None]).reshape(len(k), *x.shape[1:])
                raw = model.predict(imgs, outputs=output, extra_inputs=extra, verbose=False)
                out[i, lo:lo + len(k)] = scorers[i](raw)[:, 0]
                bar.update(len(k))
    fractions = counts / n_pix
    ok = np.isfinite(out)
    if not ok.all():
        for i in np.flatnonzero(~ok.all(1)):
            if not ok[i].any():
                raise NonFiniteError(f"{kind}: the model's output is not finite (NaN or inf) at "
                                     f"every step of item {i}; no curve can be made")
            out[i] = np.interp(fractions, fractions[ok[i]], out[i, ok[i]])
        warn_nonfinite(kind, int((~ok).sum()), ok.size, "steps (perturbed inputs)",
                       "their scores are interpolated from the neighbouring finite steps",
                       stacklevel=4)
    return Curve(fractions, out, auc(out, fractions), np.array([c[0] for c in classes]))


def deletion(model: ModelSource, x: Any, saliency: Any, index: Any = None, *, n_steps: int = 100,
             baseline: Any = 0.0, blur_sigma: float = 5.0, activate: Any = True,
             batch_size: int = 32, extra_inputs: dict | None = None,
             verbose: bool | None = None) -> Curve:
    """Deletion curve of ``saliency`` for ``x`` ``(B, C, *spatial)``: the most salient pixels are
    replaced by ``baseline`` first, ``n_steps`` equal steps; lower AUC = more faithful map.

    Args:
        index: class per item (None: the top class of ``x``), an int or one per item, or an
            ``onnx_xai.targets`` target (scored with its own activation; ``activate`` unused).
        baseline: a number, an array broadcastable to ``x``, ``"blur"`` (Gaussian, ``blur_sigma``
            pixels) or ``"mean"`` (per-channel mean).
        activate: score = softmax probability (True), raw output (False) or a callable ``(B, K) → (B, K)``.
        batch_size: perturbed inputs per forward pass.
    """
    return _curve("deletion", model, x, saliency, index,
                  _CurveOptions(n_steps, baseline, blur_sigma, activate, batch_size, extra_inputs, verbose))


def insertion(model: ModelSource, x: Any, saliency: Any, index: Any = None, *, n_steps: int = 100,
              baseline: Any = "blur", blur_sigma: float = 5.0, activate: Any = True,
              batch_size: int = 32, extra_inputs: dict | None = None,
              verbose: bool | None = None) -> Curve:
    """Insertion curve: start from ``baseline`` (default a blurred ``x``) and put the most salient
    pixels of ``x`` back first; higher AUC = more faithful map. Arguments as :func:`deletion`."""
    return _curve("insertion", model, x, saliency, index,
                  _CurveOptions(n_steps, baseline, blur_sigma, activate, batch_size, extra_inputs, verbose))


def _maps_and_targets(saliency: Any, target: Any) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``(B, 1, *spatial)`` maps and a boolean mask ``(*spatial)`` / ``(B, [1,] *spatial)`` or boxes
    ``(start0, stop0, start1, stop1, ...)`` (half-open; one, or ``(B, 2d)``) → ``(B, P)`` maps and
    ``(B, P)`` bool targets, and the spatial shape."""
    sal = np.asarray(saliency, np.float64)
    if sal.ndim not in (4, 5) or sal.shape[1] != 1:
        raise ValueError(f"saliency must be (B, 1, H, W) or (B, 1, H, W, D), got shape {sal.shape} "
                         "(one map: smap[None, None])")
    check_finite_input(sal, "the saliency map")
    batch, spatial = sal.shape[0], sal.shape[2:]
    n_pix = int(np.prod(spatial))
    t = np.asarray(target)
    if t.dtype == bool:
        if t.shape not in (spatial, (batch, *spatial), (batch, 1, *spatial)):
            raise ValueError(f"mask of shape {t.shape} does not match the maps {sal.shape}: pass "
                             f"{spatial}, ({batch}, *spatial) or ({batch}, 1, *spatial)")
        return sal.reshape(batch, n_pix), np.broadcast_to(t.reshape(-1, n_pix), (batch, n_pix)), spatial
    boxes = np.atleast_2d(t)
    if boxes.ndim != 2 or boxes.shape[1] != 2 * len(spatial) or boxes.shape[0] not in (1, batch) \
            or boxes.dtype.kind not in "iu":
        raise ValueError(f"target must be a boolean mask of shape {spatial} or integer boxes "
                         f"(start0, stop0, start1, stop1, ...) with {2 * len(spatial)} values, one "
                         f"or one per item; got {t.dtype} of shape {t.shape}")
    out = np.zeros((batch, *spatial), bool)
    for i, box in enumerate(np.broadcast_to(boxes, (batch, boxes.shape[1]))):
        out[(i, *(slice(int(box[2 * a]), int(box[2 * a + 1])) for a in range(len(spatial))))] = True
    return sal.reshape(batch, n_pix), out.reshape(batch, n_pix), spatial


def pointing_game(saliency: Any, target: Any, *, tolerance: float = 0.0) -> np.ndarray:
    """Whether each map's maximum (first one in C order on ties) lies on the object → ``(B,)`` bool.

    Args:
        saliency: ``(B, 1, *spatial)``.
        target: boolean mask ``(*spatial)`` or ``(B, [1,] *spatial)``, or integer boxes
            ``(start0, stop0, start1, stop1[, start2, stop2])`` (half-open, pixels), one or ``(B, 2d)``.
        tolerance: also a hit when the maximum is within this many pixels of the object
            (Zhang et al. use 15 at 224 × 224).
    """
    sal, tgt, spatial = _maps_and_targets(saliency, target)
    tolerance = check_number("tolerance", tolerance, 0.0)
    peak = np.argmax(sal, axis=1)
    hits = np.empty(len(sal), bool)
    for i, p in enumerate(peak):
        if tolerance == 0:
            hits[i] = tgt[i, p]
        else:
            dist = scipy.ndimage.distance_transform_edt(~tgt[i].reshape(spatial))
            hits[i] = bool(tgt[i].any()) and dist.reshape(-1)[p] <= tolerance
    return hits


def energy_in_box(saliency: Any, target: Any) -> np.ndarray:
    """Share of the positive part of each map that falls on the object → ``(B,)`` in [0, 1]
    (0 for a map with no positive value). Arguments as :func:`pointing_game`."""
    sal, tgt, _ = _maps_and_targets(saliency, target)
    pos = np.clip(sal, 0.0, None)
    total = pos.sum(axis=1)
    inside = np.where(tgt, pos, 0.0).sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


__all__ = ["Curve", "auc", "deletion", "insertion", "pointing_game", "energy_in_box"]
