"""MONAI-compatible occlusion sensitivity (``monai.visualize.OcclusionSensitivity``, MONAI 1.6).

Windows slide as MONAI's sliding-window inference places them; each window's class scores
are painted over the window and overlapping windows are averaged (gaussian importance
weights in ``"gaussian"`` mode, plain average otherwise).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
from scipy.special import erf

from .. import targets
from ..engines.occlusion import Occluder, blend, occlusion_scores
from ..errors import TOKEN_HINT
from ..finite import check_number
from ..kernels.occlusion import argmax_first_axis
from ..layout import channel_first, to_channel_first
from ..registry import method
from ..runtime import ModelSource

Mode = Union[str, float, Callable]


def window_starts(size: int, mask: int, overlap: float) -> np.ndarray:
    """Window starts along one axis as MONAI's sliding window places them.

    step = int(mask·(1 − overlap)) (at least 1; ``mask`` when mask == size); starts 0, step,
    2·step, … until a window reaches the end, the last one shifted back to end at ``size``.
    """
    step = mask if mask == size else max(int(mask * (1 - overlap)), 1)
    count = next(d for d in range(-(-size // step)) if d * step + mask >= size) + 1
    return np.array([min(i * step, size - mask) for i in range(count)], np.int64)


def gaussian_multiplier(mask: Sequence[int], channels: int) -> np.ndarray:
    """MONAI's gaussian occlusion factor ``(C, *mask)``: 0 at the centre, 1 at the far corner.

    A unit impulse at index ``m // 2`` smoothed by the "erf" discrete gaussian (σ = m/4,
    taps 0.5·(erf((t+½)/(σ√2)) − erf((t−½)/(σ√2))) for |t| ≤ int(max(4σ, ½) + ½), zero
    outside), negated and rescaled to [0, 1] (all zeros if constant).
    """
    smooth = np.ones(())
    for m in mask:
        sigma = 0.25 * m
        tail = int(max(4.0 * sigma, 0.5) + 0.5)
        t = np.arange(m) - m // 2
        taps = 0.5 * (erf((t + 0.5) / (sigma * np.sqrt(2))) - erf((t - 0.5) / (sigma * np.sqrt(2))))
        taps = np.where(np.abs(t) <= tail, np.clip(taps, 0, None), 0.0)
        smooth = np.multiply.outer(smooth, taps)
    flipped = -smooth
    span = flipped.max() - flipped.min()
    mul = (flipped - flipped.min()) / span if span > 0 else np.zeros_like(flipped)
    return np.broadcast_to(mul.astype(np.float32), (channels,) + tuple(mask))


def importance_map(mask: Sequence[int], gaussian: bool) -> np.ndarray:
    """Sliding-window blending weights ``mask``-shaped: ones, or MONAI's gaussian importance
    map (σ = 0.125·m per axis, product of exp(−d²/2σ²) over d = −(m−1)/2 … (m−1)/2),
    clamped below at max(its minimum, 1e-3)."""
    if not gaussian:
        return np.ones(tuple(mask), np.float32)
    weight = np.ones((), np.float32)
    for m in mask:
        d = np.arange(m, dtype=np.float32) - np.float32((m - 1) / 2)
        weight = np.multiply.outer(weight, np.exp(d ** 2 / np.float32(-2 * (0.125 * m) ** 2)))
    return np.maximum(weight, max(float(weight.min()), 1e-3)).astype(np.float32)


@method("occlusion", kind="occlusion", summary="MONAI-style occlusion sensitivity (score drop when a window is hidden)",
        flags={"mask_size": "mask_size", "overlap": "overlap", "batch": "n_batch"},
        defaults={"mask_size": 32, "overlap": 0.5, "n_batch": 16}, signed=True, score="softmax")
class OcclusionSensitivity:
    """Occlusion sensitivity with MONAI's arguments and numbers, on an ONNX model.

    Args:
        model: anything ``Model`` accepts (path, bytes, ModelProto, InferenceSession, Model);
            a classifier whose first output is ``(B, K)``. ``nn_module=`` (MONAI's name) is
            the same argument.
        mask_size: window size, int or one per spatial dimension.
        n_batch: occluded images per inference batch.
        verbose: progress bar over windows.
        mode: ``"gaussian"`` (patch × (1 − gaussian), windows blended with gaussian weights),
            ``"mean_patch"`` (patch replaced by its mean over all channels), ``"mean_img"``
            (replaced by the mean of the whole image), a number (replaced by it), or a callable
            ``(x, patch) -> patch`` on ``(1, C, *spatial)`` / ``(1, C, *mask)`` arrays.
        overlap: window overlap in [0, 1).
        layout: the input's layout, ``"nchw"``, ``"nhwc"`` or ``"auto"`` (None: the Model's;
            see ``onnx_xai.layout``).
        activate: True → softmax over classes when the model has more than one output
            channel, else sigmoid; False → raw outputs; or a callable on the ``(b, K)`` outputs.

    Non-finite numbers (see ``onnx_xai.finite``): a NaN / inf in ``x`` raises ``ValueError``
    (count and first index); a non-finite output on the unoccluded ``x`` (run once more for
    this check) raises ``NonFiniteError``. Windows whose occluded copy scores NaN / inf are
    left out of the blend with a ``NonFiniteWarning`` giving their count; points that only
    such windows cover take the value of the nearest point that finite windows cover
    (``NonFiniteError`` if no window is finite). A NaN / inf numeric ``mode`` or ``overlap``,
    or a callable ``mode`` returning one, is a ``ValueError``.

    Differences from MONAI 1.6, on purpose:
        * ``activate=True`` follows MONAI's documentation (the *output's* channel count picks
          sigmoid or softmax); MONAI's code looks at the *input's* channel count instead.
        * ``mode="mean_patch"`` replaces the patch by its mean, as documented; MONAI 1.6
          multiplies the patch by its mean (its predictor unpacks the ``(mul, add)`` pair the
          wrong way round).
        * a callable ``mode`` works (MONAI 1.6 raises "Shouldn't be here" for one: its
          predictor checks the unset ``(mul, add)`` pair even when a callable replaced it).
        * an integer ``mode`` is taken as that constant (MONAI accepts only floats).
    """

    def __init__(self, model: ModelSource = None, mask_size: int | Sequence[int] = 16, n_batch: int = 16,
                 verbose: bool = True, mode: Mode = "gaussian", overlap: float = 0.6,
                 activate: bool | Callable = True, *, nn_module: ModelSource = None,
                 layout: str | None = None) -> None:
        model = targets.model_argument(model, nn_module, "OcclusionSensitivity")  # MONAI's name: nn_module
        if isinstance(mode, str) and mode not in ("gaussian", "mean_patch", "mean_img"):
            raise ValueError(f"mode must be 'gaussian', 'mean_patch', 'mean_img', a number or a "
                             f"callable, got {mode!r}")
        if not (isinstance(mode, (str, int, float, np.number)) or callable(mode)) or isinstance(
                mode, (bool, np.bool_)):
            raise ValueError(f"mode must be a string, a number or a callable, got {mode!r}")
        if isinstance(mode, (int, float, np.number)):
            check_number("mode (the occlusion value)", mode)
        overlap = check_number("overlap", overlap, 0.0, 1.0, open_max=True)
        self.model = channel_first(targets.as_model(model), layout)
        self.mask_size, self.verbose = mask_size, verbose
        self.n_batch = targets.positive_int("n_batch", n_batch)
        self.mode, self.overlap, self.activate = mode, float(overlap), activate
        self._scores = targets.class_scorer(activate)

    def __call__(self, x: np.ndarray, b_box: Sequence[int] | None = None, *,
                 target: targets.Target | None = None, **extra_inputs) -> tuple[np.ndarray, np.ndarray]:
        """Occlusion map and most probable class.

        Args:
            x: ``(1, C, H, W)`` or ``(1, C, H, W, D)`` (``(1, H, W, C)`` for a channel-last
                model, see ``layout`` and ``onnx_xai.layout``; the map is channel-first).
            b_box: ``[min0, max0, min1, max1, ...]`` limits the analysis and the output to
                ``min ≤ i < max`` per axis (max *exclusive*, as MONAI behaves; its docstring
                says inclusive); −1 means the full extent. Windows may reach (mask−1)//2
                beyond the box.
            target: an ``onnx_xai.targets`` target (a class through its activation, a region
                of a dense output, any output tensor): the map is then its score, ``K = 1``
                (``activate`` is not used); None: every class, as MONAI.
            extra_inputs: the model's other inputs, passed with every batch.
        Returns:
            ``occ_map`` ``(1, K, *spatial)`` float32 — the activated class scores with each
            region occluded (the layout MONAI 1.6 really returns; its docstring's ``BCHW(D)N``
            is stale), cropped to ``b_box``; and ``most_probable_class`` ``(1, 1, *spatial)``
            int64, the argmax over classes.
        """
        x = self.model.check_input(to_channel_first(self.model, x))
        if x.shape[0] != 1:
            raise ValueError(f"OcclusionSensitivity expects a batch of 1, got {x.shape[0]}")
        if x.ndim < 3:
            raise ValueError(f"OcclusionSensitivity takes (1, C, *spatial) inputs, got shape {x.shape}"
                             + (f"; {TOKEN_HINT}" if x.dtype.kind in "iu" else ""))
        spatial = x.shape[2:]
        mask = self._mask_size(len(spatial))
        crop_lo, crop_hi, final = self._crop(spatial, mask, b_box)
        region = tuple(h - l for l, h in zip(crop_lo, crop_hi))
        if b_box is not None:
            mask = tuple(min(m, r) for m, r in zip(mask, region))
        if any(m > r for m, r in zip(mask, region)):
            raise ValueError(f"mask_size {mask} is larger than the image (spatial shape {region})")
        axes = [window_starts(r, m, self.overlap) for r, m in zip(region, mask)]
        starts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(spatial))
        lo = starts + np.asarray(crop_lo)
        if target is not None:  # resolved on the unoccluded input (its class, its region)
            target = targets.target(target)
            raw = self.model.predict(x, outputs=self.model.check_outputs(target.output)[0],
                                     extra_inputs=extra_inputs, verbose=False)
            score = targets.item_scorers(target, None, raw)[0][0]
        scores = occlusion_scores(
            self.model, x, lo, lo + np.asarray(mask), self._occluder(x, mask),
            self._scores if target is None else score, output=None if target is None else target.output,
            n_batch=self.n_batch, extra_inputs=extra_inputs, verbose=self.verbose,
            desc="OcclusionSensitivity",
            nonfinite_rule="they are left out of the blend (points only they cover take the "
                           "nearest covered point's value)")
        occ = blend(scores, starts, importance_map(mask, self.mode == "gaussian"), region)
        if b_box is not None:  # the analysed region covers the box: cut the box out of it
            occ = np.ascontiguousarray(occ[(slice(None),) + tuple(
                slice(f.start - l, f.stop - l) for f, l in zip(final, crop_lo))])
        classes = argmax_first_axis(occ.reshape(occ.shape[0], -1)).reshape((1, 1) + occ.shape[1:])
        return occ[None], classes

    def explain(self, x: np.ndarray, target: targets.Target, **extra_inputs) -> np.ndarray:
        """The registry's protocol: ``(1, 1, *spatial)`` drop of ``target``'s score when each
        region is hidden (its score on ``x`` minus the blended occluded scores)."""
        target = targets.target(target)
        raw = self.model.predict(to_channel_first(self.model, x), extra_inputs=extra_inputs,
                                 outputs=self.model.check_outputs(target.output)[0], verbose=False)
        target = target.resolve(raw)
        base = target(raw)
        occ, _ = self(x, target=target, **extra_inputs)
        return (base.reshape((-1,) + (1,) * (occ.ndim - 1)) - occ).astype(np.float32)

    # ------------------------------------------------------------------ pieces
    def _mask_size(self, sd: int) -> tuple[int, ...]:
        mask = (self.mask_size,) * sd if np.ndim(self.mask_size) == 0 else tuple(self.mask_size)
        if len(mask) != sd or any(not isinstance(m, (int, np.integer)) or m < 1 for m in mask):
            raise ValueError(f"mask_size must be a positive int or {sd} of them, got {self.mask_size!r}")
        return tuple(int(m) for m in mask)

    @staticmethod
    def _crop(spatial, mask, b_box):
        """Analysed region (box widened by (m−1)//2, clipped) and the final output slices."""
        full = tuple(slice(0, s) for s in spatial)
        if b_box is None:
            return (0,) * len(spatial), tuple(spatial), full
        box = list(b_box)
        if len(box) != 2 * len(spatial) or not all(isinstance(b, (int, np.integer)) for b in box):
            raise ValueError(f"b_box must hold {2 * len(spatial)} ints [min0, max0, min1, max1, ...], got {b_box!r}")
        lo, hi, final = [], [], []
        for d, (s, m) in enumerate(zip(spatial, mask)):
            bmin, bmax = box[2 * d], box[2 * d + 1]
            start = 0 if bmin == -1 else bmin
            stop = s if bmax == -1 else bmax
            if not (0 <= start < s and start < stop <= s):
                raise ValueError(f"b_box axis {d}: [{bmin}, {bmax}) is not inside the image size {s} "
                                 "(use -1 for the full extent; max is exclusive)")
            edge = (m - 1) // 2
            lo.append(max(start - edge, 0))
            hi.append(s if bmax == -1 else min(stop + edge, s))
            final.append(slice(start, stop))
        return tuple(lo), tuple(hi), tuple(final)

    def _occluder(self, x: np.ndarray, mask: tuple[int, ...]) -> Occluder:
        if callable(self.mode):
            return Occluder.call(self.mode)
        if self.mode == "gaussian":
            return Occluder.multiply(gaussian_multiplier(mask, x.shape[1]))
        if self.mode == "mean_patch":
            return Occluder.patch_mean()
        value = float(x.mean(dtype=np.float64)) if self.mode == "mean_img" else float(self.mode)
        return Occluder.constant(np.full(x.shape[1], value, np.float32))
