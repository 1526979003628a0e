"""Captum's call style on ONNX models (``captum.attr`` 0.7–0.9, no torch).

Code written for Captum runs with the model swapped for anything ``onnx_xai.Model`` accepts
(a ``.onnx`` path, bytes, ``ModelProto``, ``InferenceSession``, ``Model``) and layers named
by string (ONNX node / tensor names or the PyTorch module path, e.g. ``"layer4"``)::

    from onnx_xai.adapters.captum import IntegratedGradients, Occlusion, NoiseTunnel, Saliency

    ig = IntegratedGradients("model.onnx")
    attr, delta = ig.attribute(x, target=3, baselines=0.0, n_steps=50,
                               return_convergence_delta=True)
    occ = Occlusion("model.onnx").attribute(x, sliding_window_shapes=(3, 15, 15),
                                            strides=(3, 8, 8), baselines=0, target=3)
    sg = NoiseTunnel(Saliency("model.onnx")).attribute(x, nt_type="smoothgrad", nt_samples=10,
                                                       stdevs=0.2, target=3)

The numbers are Captum's (checked against it in ``tests/test_adapters_captum.py``), with the
model's first output (``output=`` picks another) as Captum's ``forward_func`` result.

Differences, on purpose:
    * inputs and results are NumPy arrays (torch tensors given are read with
      ``.detach().cpu().numpy()``); one input tensor per call (no tuples of inputs);
    * ``target=None`` on an output with several classes explains each sample's top class
      (Captum needs one value per sample there); ``target`` may also be any
      ``onnx_xai.targets`` target (a softmax probability, a region of a dense output, ...);
    * ``additional_forward_args``: the model's other inputs, in the graph's order;
    * random noise (``NoiseTunnel``) is NumPy's (``seed=``), not torch's;
    * ``internal_batch_size`` / ``perturbations_per_eval`` only set batch sizes.

Also here: ``InputXGradient``, ``LayerGradCam`` (+ ``LayerAttribution.interpolate``) and
``visualization.visualize_image_attr`` (Captum's normalisation; an RGB image instead of a
figure, no matplotlib).
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from .. import graph
from ..engines.cam import gradient_taps, linear_resize
from ..engines.occlusion import Occluder, fill_nearest, occlusion_scores
from ..finite import check_finite_output, finite_rows
from ..methods.saliency import IntegratedGradients as _IG
from ..methods.saliency import VanillaGrad
from ..runtime import Model, ModelSource
from ..targets import ClassTarget, Target, target as as_target
from ..visualize import apply_colormap
from .pytorch_grad_cam import as_numpy

__all__ = ["Saliency", "InputXGradient", "IntegratedGradients", "NoiseTunnel", "Occlusion",
           "LayerGradCam", "LayerAttribution", "visualize_image_attr", "normalize_attr",
           "visualization", "as_numpy"]


# ---------------------------------------------------------------------------- shared
class _Attribution:
    """A model (``forward_func``) and the argument conversions every Captum method shares."""

    def __init__(self, forward_func: ModelSource, *, output: str | None = None) -> None:
        self.model = forward_func if isinstance(forward_func, Model) else Model(forward_func)
        self.output = self.model.check_outputs(output)[0]
        self.forward_func = self.model

    def _inputs(self, inputs: Any) -> np.ndarray:
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise NotImplementedError("one input tensor per call: pass the model's other inputs "
                                          "as additional_forward_args")
            inputs = inputs[0]
        return self.model.check_input(as_numpy(inputs))

    def _extra(self, additional_forward_args: Any) -> dict[str, np.ndarray]:
        """Captum's ``additional_forward_args`` → the model's other inputs by name (graph order)."""
        if additional_forward_args is None:
            return {}
        args = additional_forward_args if isinstance(additional_forward_args, tuple) else (
            additional_forward_args,)
        others = [i.name for i in self.model.inputs if i.name != self.model.input_name]
        if len(args) != len(others):
            raise ValueError(f"additional_forward_args gives {len(args)} value(s); the model's other "
                             f"inputs are {others}")
        return {name: as_numpy(a) for name, a in zip(others, args)}

    def _predict(self, x: np.ndarray, extra: dict) -> np.ndarray:
        return self.model.predict(x, outputs=self.output, extra_inputs=extra, verbose=False)

    def _target(self, target: Any, x: np.ndarray, extra: dict) -> Target:
        """Captum's ``target`` (None, an int, N ints, a tensor of them, or an ``onnx_xai``
        target) as a ``Target`` on ``self.output``; classes fixed per sample (None: argmax)."""
        if isinstance(target, tuple) or (isinstance(target, list) and target
                                         and isinstance(target[0], tuple)):
            raise NotImplementedError("tuple targets (elements of outputs with more than 2 "
                                      "dimensions): use onnx_xai.targets.OutputTarget / RegionTarget")
        if hasattr(target, "detach"):
            target = as_numpy(target)
        if isinstance(target, np.ndarray) and target.ndim == 0:
            target = int(target)
        t = target if isinstance(target, Target) else as_target(target, output=self.output)
        if isinstance(t, ClassTarget):
            k = next(o for o in self.model.outputs if o.name == (t.output or self.output)).shape
            k = k[1] if len(k) > 1 else None
            if t.index is None or not isinstance(k, int):
                out = self._predict(x, extra)
            else:  # only the shape is read: the classes' range is checked against it
                out = np.zeros((len(x), k), np.float32)
            t = replace(t, index=np.asarray(t.classes(out), np.int64))
        return t


# ---------------------------------------------------------------------------- gradients
class Saliency(_Attribution):
    """``captum.attr.Saliency``: ``|d score / d x|`` (``abs=False``: signed)."""

    def attribute(self, inputs: Any, target: Any = None, abs: bool = True,
                  additional_forward_args: Any = None) -> np.ndarray:
        x = self._inputs(inputs)
        extra = self._extra(additional_forward_args)
        g = VanillaGrad(self.model, output=self.output)(x, self._target(target, x, extra), **extra)
        return np.abs(g) if abs else g


class InputXGradient(_Attribution):
    """``captum.attr.InputXGradient``: ``x · d score / d x``."""

    def attribute(self, inputs: Any, target: Any = None,
                  additional_forward_args: Any = None) -> np.ndarray:
        x = self._inputs(inputs)
        extra = self._extra(additional_forward_args)
        return x * VanillaGrad(self.model, output=self.output)(x, self._target(target, x, extra), **extra)


class IntegratedGradients(_Attribution):
    """``captum.attr.IntegratedGradients``: ``(x − b) · Σ_i w_i ∇f(b + α_i (x − b))`` with
    Captum's quadratures (``method``: gausslegendre, riemann_trapezoid / left / right /
    middle). ``baselines``: None (zeros), a number, or an array broadcastable to ``inputs``.
    ``multiply_by_inputs=False`` is not supported."""

    def __init__(self, forward_func: ModelSource, multiply_by_inputs: bool = True, *,
                 output: str | None = None) -> None:
        if not multiply_by_inputs:
            raise NotImplementedError("multiply_by_inputs=False is not supported")
        super().__init__(forward_func, output=output)

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None,
                  additional_forward_args: Any = None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size: int | None = None,
                  return_convergence_delta: bool = False):
        """Attributions shaped like ``inputs``; with ``return_convergence_delta`` also the
        ``(N,)`` delta = Σ attributions − (f(x) − f(baseline))."""
        x = self._inputs(inputs)
        extra = self._extra(additional_forward_args)
        t = self._target(target, x, extra)
        base = 0.0 if baselines is None else baselines
        base = as_numpy(base) if not isinstance(base, (int, float)) else float(base)
        if np.ndim(base) == x.ndim:
            base = np.broadcast_to(np.asarray(base, x.dtype), x.shape)
        ig = _IG(self.model, baseline=base, n_steps=n_steps, method=method,
                 internal_batch_size=16 if internal_batch_size is None else internal_batch_size,
                 output=self.output)
        return ig(x, t, return_convergence_delta=return_convergence_delta, **extra)


class LayerGradCam(_Attribution):
    """``captum.attr.LayerGradCam``: ``Σ_k mean_p(dS/dA_k) · A_k`` at the layer's resolution
    ``(N, 1, *s)`` (``attr_dim_summation=False``: ``(N, C, *s)``, per channel), ReLU only with
    ``relu_attributions=True``; no upsampling (``LayerAttribution.interpolate`` does it)."""

    def __init__(self, forward_func: ModelSource, layer: str, device_ids: Any = None, *,
                 output: str | None = None, batch_size: int = 8) -> None:
        super().__init__(forward_func, output=output)
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"layer must be a layer name (ONNX node / tensor name or module path), "
                             f"got {layer!r}")
        graph.resolve_layer(self.model.require_proto("LayerGradCam"), layer)
        self.layer, self.batch_size = layer, batch_size

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True, grad_kwargs: Any = None) -> np.ndarray:
        if attribute_to_layer_input:
            raise NotImplementedError("attribute_to_layer_input=True: name the layer before instead")
        if additional_forward_args is not None:
            raise NotImplementedError("LayerGradCam takes models with one input")
        x = self._inputs(inputs)
        taps = gradient_taps(self.model, self.layer, x, self._target(target, x, {}),
                             batch_size=self.batch_size)
        g, a = taps.gradients, taps.activations
        w = g.mean(axis=tuple(range(2, g.ndim)), keepdims=True)
        cam = (w * a).sum(axis=1, keepdims=True) if attr_dim_summation else w * a
        return np.maximum(cam, 0).astype(np.float32) if relu_attributions else cam.astype(np.float32)


class LayerAttribution:
    """Captum's ``LayerAttribution.interpolate``."""

    @staticmethod
    def interpolate(layer_attribution: Any, interpolate_dims: int | Sequence[int],
                    interpolate_mode: str = "nearest") -> np.ndarray:
        """``(N, C, *s)`` → ``(N, C, *interpolate_dims)`` as ``F.interpolate``: ``"nearest"``
        (source index floor(o · in/out)), or ``"linear"`` / ``"bilinear"`` / ``"trilinear"``
        (``align_corners=False``)."""
        a = as_numpy(layer_attribution)
        dims = (interpolate_dims,) * (a.ndim - 2) if np.ndim(interpolate_dims) == 0 else tuple(interpolate_dims)
        if len(dims) != a.ndim - 2:
            raise ValueError(f"interpolate_dims {interpolate_dims!r} does not match the {a.ndim - 2} "
                             f"spatial dims of {a.shape}")
        if interpolate_mode in ("linear", "bilinear", "trilinear"):
            return linear_resize(a, dims)
        if interpolate_mode != "nearest":
            raise ValueError(f"interpolate_mode must be 'nearest', 'linear', 'bilinear' or "
                             f"'trilinear', got {interpolate_mode!r}")
        for axis, n in enumerate(dims, start=2):
            n_in = a.shape[axis]
            scale = np.float32(n_in) / np.float32(n)
            src = np.minimum(np.floor(np.arange(n, dtype=np.float32) * scale).astype(np.int64), n_in - 1)
            a = np.take(a, src, axis=axis)
        return a


# ---------------------------------------------------------------------------- noise tunnel
class NoiseTunnel:
    """``captum.attr.NoiseTunnel``: the wrapped method's attributions at ``nt_samples`` noisy
    copies of each input (``x + N(0, stdevs²)``, the copies of one input laid together, as
    ``repeat_interleave``), reduced by ``nt_type``: ``"smoothgrad"`` (mean), ``"smoothgrad_sq"``
    (mean of squares) or ``"vargrad"`` (mean of squares − square of the mean). The noise is
    ``np.random.default_rng(seed).standard_normal((N · nt_samples, ...), float32) · stdevs``.
    ``target=None`` is fixed to each input's top class (of the noise-free input) first;
    ``baselines`` and ``additional_forward_args`` with one row per input follow their copies."""

    NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")

    def __init__(self, attribution_method: Any) -> None:
        if not hasattr(attribution_method, "attribute") or not hasattr(attribution_method, "model"):
            raise TypeError("NoiseTunnel wraps an onnx_xai.adapters.captum method (Saliency, "
                            f"IntegratedGradients, ...), got {type(attribution_method).__name__}")
        self.attribution_method = attribution_method
        self.model = attribution_method.model

    def attribute(self, inputs: Any, nt_type: str = "smoothgrad", nt_samples: int = 5,
                  nt_samples_batch_size: int | None = None, stdevs: float = 1.0,
                  draw_baseline_from_distrib: bool = False, *, seed: int | None = None, **kwargs: Any):
        if nt_type not in self.NT_TYPES:
            raise ValueError(f"nt_type must be one of {self.NT_TYPES}, got {nt_type!r}")
        if draw_baseline_from_distrib:
            raise NotImplementedError("draw_baseline_from_distrib=True is not supported")
        if isinstance(nt_samples, bool) or not isinstance(nt_samples, (int, np.integer)) or nt_samples < 1:
            raise ValueError(f"nt_samples must be a positive integer, got {nt_samples!r}")
        if isinstance(stdevs, tuple):
            stdevs = stdevs[0] if len(stdevs) == 1 else None
        if not isinstance(stdevs, (int, float)) or not math.isfinite(stdevs) or stdevs < 0:
            raise ValueError(f"stdevs must be a non-negative number, got {stdevs!r}")
        method = self.attribution_method
        x = method._inputs(inputs)
        n, ns = x.shape[0], int(nt_samples)
        extra = method._extra(kwargs.get("additional_forward_args"))
        t = method._target(kwargs.get("target"), x, extra)
        if isinstance(t, ClassTarget):  # each copy explains its input's class
            kwargs["target"] = replace(t, index=np.repeat(np.asarray(t.index, np.int64), ns))
        for key in ("baselines", "additional_forward_args"):
            if key in kwargs:
                kwargs[key] = self._expand(kwargs[key], n, ns)
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((n * ns,) + x.shape[1:], dtype=np.float32) * np.float32(stdevs)
        got = method.attribute(np.repeat(x, ns, axis=0) + noise, **kwargs)
        attr, delta = got if isinstance(got, tuple) else (got, None)
        attr = np.asarray(attr)
        each = attr.reshape((n, ns) + attr.shape[1:])
        mean = each.sum(axis=1) * (1 / ns)
        mean_sq = (each ** 2).sum(axis=1) * (1 / ns)
        out = {"smoothgrad": mean, "smoothgrad_sq": mean_sq, "vargrad": mean_sq - mean * mean}[nt_type]
        return (out.astype(attr.dtype), delta) if delta is not None else out.astype(attr.dtype)

    @staticmethod
    def _expand(value: Any, n: int, ns: int) -> Any:
        if value is None or isinstance(value, (int, float)):
            return value
        if isinstance(value, tuple):
            return tuple(NoiseTunnel._expand(v, n, ns) for v in value)
        arr = as_numpy(value)
        if arr.ndim >= 1 and arr.shape[0] == n and (n > 1 or arr.ndim > 1):
            return np.repeat(arr, ns, axis=0)
        return arr


# ---------------------------------------------------------------------------- occlusion
def _box_average(shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray,
                 values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ values over the boxes covering each point, how many boxes cover it) on ``shape``,
    float64, by n-dimensional difference arrays (one pass per axis, any number of boxes)."""
    k = len(shape)
    total = np.zeros(tuple(s + 1 for s in shape))
    count = np.zeros_like(total)
    for corner in itertools.product((0, 1), repeat=k):
        at = tuple(np.where(c, hi[:, j], lo[:, j]) for j, c in enumerate(corner))
        sign = -1.0 if sum(corner) % 2 else 1.0
        np.add.at(total, at, sign * values)
        np.add.at(count, at, sign)
    for axis in range(k):
        total, count = np.cumsum(total, axis=axis), np.cumsum(count, axis=axis)
    inner = tuple(slice(0, s) for s in shape)
    return total[inner], np.rint(count[inner])


class Occlusion(_Attribution):
    """``captum.attr.Occlusion`` on onnx_xai's occlusion engine.

    Windows of ``sliding_window_shapes`` (one size per non-batch dim of ``inputs``, the
    channel dim included) start at 0, ``strides``, 2·``strides``, … — ceil((n − k)/s) + 1 of
    them per dim, the last ones cut at the border; each replaces the window by ``baselines``
    (a number, or an array broadcastable to ``inputs``). ``attr[p]`` = mean over the windows
    covering ``p`` of ``score(x) − score(x occluded)``, the score being ``target``'s (a class's
    raw output, or any ``onnx_xai.targets`` target).

    Up to three non-batch dims take windows over every dim; four (``(C, H, W, D)``) need a
    window over all channels. Windows whose occluded copy scores NaN / inf are left out
    (``NonFiniteWarning``; points only they cover take the nearest covered point's value).
    ``perturbations_per_eval`` > 1 sets the number of occluded copies per run (default 16).
    """

    def attribute(self, inputs: Any, sliding_window_shapes: Sequence[int],
                  strides: int | Sequence[int] | None = None, baselines: Any = None,
                  target: Any = None, additional_forward_args: Any = None,
                  perturbations_per_eval: int = 1, show_progress: bool = False) -> np.ndarray:
        x = self._inputs(inputs)
        extra = self._extra(additional_forward_args)
        dims = x.shape[1:]
        window = self._shape(sliding_window_shapes, dims)
        step = self._strides(strides, window, dims)
        t = self._target(target, x, extra)
        fx = self._predict(x, extra)
        check_finite_output(fx, f"output {self.output!r}")
        base = 0.0 if baselines is None else baselines
        base = float(base) if isinstance(base, (int, float)) else as_numpy(base)
        if isinstance(base, np.ndarray):
            try:
                base = np.broadcast_to(base.astype(x.dtype), x.shape)
            except ValueError:
                raise ValueError(f"baselines of shape {base.shape} do not broadcast to the inputs "
                                 f"{x.shape}") from None
        if len(dims) <= 3:  # every dim (channels too) is a window axis of a 1-channel view
            view, axes = (1, 1) + dims, list(range(len(dims)))
        elif len(dims) == 4 and window[0] == dims[0]:  # channels whole: spatial windows
            view, axes = (1,) + dims, [1, 2, 3]
        else:
            raise NotImplementedError(f"Occlusion of inputs with {len(dims)} non-batch dims needs a "
                                      "window over all channels (the first of them)")
        counts = [math.ceil((d - w) / s) + 1 for d, w, s in zip(dims, window, step)]
        grid = np.stack(np.meshgrid(*[np.arange(c) for c in counts], indexing="ij"), -1).reshape(-1, len(dims))
        lo = grid * np.asarray(step)
        hi = np.minimum(lo + np.asarray(window), np.asarray(dims))
        n_batch = int(perturbations_per_eval) if perturbations_per_eval and perturbations_per_eval > 1 else 16
        out = np.empty(x.shape, np.float32)
        for i in range(x.shape[0]):
            ti = replace(t, index=int(np.ravel(t.index)[i])) if isinstance(t, ClassTarget) else t
            b_i = base if not isinstance(base, np.ndarray) else base[i]
            x_i = x[i] if not isinstance(base, np.ndarray) else x[i] - b_i

            def to_model(batch, b_i=b_i):
                batch = batch.reshape((len(batch),) + dims)
                return batch + b_i if isinstance(b_i, np.ndarray) else batch

            occluder = Occluder.constant(np.full(view[1], 0.0 if isinstance(b_i, np.ndarray) else b_i,
                                                 np.float32))
            extra_i = {k: (v[i:i + 1] if v.ndim >= 1 and v.shape[0] == x.shape[0] > 1 else v)
                       for k, v in extra.items()}
            scores = occlusion_scores(
                self.model, x_i.reshape(view), lo[:, axes], hi[:, axes], occluder,
                lambda o, ti=ti: ti(o)[:, None], output=self.output, n_batch=n_batch,
                extra_inputs=extra_i, verbose=show_progress, to_model_layout=to_model,
                desc="Occlusion", check_unoccluded=False,
                nonfinite_rule="they are left out (points only they cover take the nearest "
                               "covered point's value)")[:, 0]
            ok = finite_rows(scores[:, None])
            diff = ti(fx[i:i + 1])[0] - scores[ok]
            total, count = _box_average(tuple(dims[a] for a in axes), lo[ok][:, axes],
                                        hi[ok][:, axes], diff)
            missing = count == 0
            attr = (total / np.where(missing, 1.0, count)).astype(np.float32)
            if missing.any():
                attr = fill_nearest(attr[None], missing)[0]
            out[i] = attr if len(dims) <= 3 else np.broadcast_to(attr, dims)
        return out

    @staticmethod
    def _shape(shape: Any, dims: tuple) -> tuple[int, ...]:
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        if len(shape) != len(dims) or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in shape):
            raise ValueError(f"sliding_window_shapes must hold {len(dims)} positive ints (one per "
                             f"non-batch dim of inputs {dims}, channels included), got {shape!r}")
        if any(w > d for w, d in zip(shape, dims)):
            raise ValueError(f"sliding_window_shapes {shape} cannot exceed the input dims {dims}")
        return tuple(int(w) for w in shape)

    @staticmethod
    def _strides(strides: Any, window: tuple, dims: tuple) -> tuple[int, ...]:
        s = (1,) * len(dims) if strides is None else (
            (strides,) * len(dims) if np.ndim(strides) == 0 else tuple(strides))
        if len(s) != len(dims) or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in s):
            raise ValueError(f"strides must be a positive int or {len(dims)} of them, got {strides!r}")
        if any(v > w and d != w for v, w, d in zip(s, window, dims)):
            raise ValueError(f"strides {s} cannot be larger than sliding_window_shapes {window} "
                             "(some points would never be occluded)")
        return tuple(int(v) for v in s)


# ---------------------------------------------------------------------------- visualization
# ColorBrewer's sequential maps as matplotlib ships them (matplotlib._cm, 9 colours each).
_BREWER = {
    "Blues": ["f7fbff", "deebf7", "c6dbef", "9ecae1", "6baed6", "4292c6", "2171b5", "08519c", "08306b"],
    "Greens": ["f7fcf5", "e5f5e0", "c7e9c0", "a1d99b", "74c476", "41ab5d", "238b45", "006d2c", "00441b"],
    "Reds": ["fff5f0", "fee0d2", "fcbba1", "fc9272", "fb6a4a", "ef3b2c", "cb181d", "a50f15", "67000d"],
    "RdWhGn": ["ff0000", "ffffff", "008000"],  # Captum's from_list("RdWhGn", ["red", "white", "green"])
}
VISUALIZE_SIGNS = ("all", "positive", "negative", "absolute_value")
VISUALIZE_METHODS = ("heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling")


def _lut(name: str) -> np.ndarray | None:
    """``(256, 3)`` float table of a ColorBrewer map above (matplotlib's ``from_list``)."""
    key = {k.lower(): k for k in _BREWER}.get(str(name).lower())
    if key is None:
        return None
    colours = np.array([[int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4)] for h in _BREWER[key]])
    x = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(x, np.linspace(0, 1, len(colours)), colours[:, c]) for c in range(3)], 1)


def _colour(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """matplotlib's ``cmap(Normalize(vmin, vmax)(values))`` as ``(H, W, 3)`` float in [0, 1]."""
    v = (np.asarray(values, np.float64) - vmin) / (vmax - vmin)
    lut = _lut(cmap)
    if lut is None:
        return apply_colormap(np.clip(v, 0.0, 1.0), cmap, normalize_map=False).astype(np.float64) / 255.0
    idx = np.clip((v * 256).astype(np.int64), 0, 255)  # floor(v·N), v = 1 → the last entry
    return lut[idx]


def _cumulative_sum_threshold(values: np.ndarray, percentile: float) -> float:
    if not 0 <= percentile <= 100:
        raise ValueError("Percentile for thresholding must be between 0 and 100 inclusive.")
    sorted_vals = np.sort(values.flatten())
    cum_sums = np.cumsum(sorted_vals)
    return sorted_vals[np.where(cum_sums >= cum_sums[-1] * 0.01 * percentile)[0][0]]


def normalize_attr(attr: Any, sign: str = "absolute_value", outlier_perc: float = 2) -> np.ndarray:
    """Captum's ``_normalize_attr`` (channels summed first when ``attr`` is ``(H, W, C)``):
    ``sign`` keeps all values, the positive, the negative ones or ``|attr|``; the result is
    ``attr / t`` clipped to [−1, 1], ``t`` the value at which the sorted ``|attr|`` reach
    ``100 − outlier_perc`` % of their sum (negated for ``"negative"``, so it is ≥ 0)."""
    a = as_numpy(attr)
    if a.ndim == 3:
        a = np.sum(a, axis=2)
    if a.ndim != 2:
        raise ValueError(f"attr must be (H, W) or (H, W, C) as Captum's, got shape {a.shape} "
                         "(transpose a (C, H, W) map: attr.transpose(1, 2, 0))")
    if sign not in VISUALIZE_SIGNS:
        raise ValueError(f"sign must be one of {VISUALIZE_SIGNS}, got {sign!r}")
    a = {"all": a, "positive": np.maximum(a, 0), "negative": np.minimum(a, 0),
         "absolute_value": np.abs(a)}[sign]
    threshold = _cumulative_sum_threshold(np.abs(a), 100.0 - outlier_perc)
    if sign == "negative":
        threshold = -threshold
    if threshold == 0:
        raise ValueError("Cannot normalize by scale factor = 0 (the attributions of this sign are all 0)")
    if abs(threshold) < 1e-5:
        warnings.warn("Attempting to normalize by value approximately 0, visualized results may be "
                      "misleading. This likely means that attribution values are all close to 0.",
                      stacklevel=2)
    return np.clip(a / threshold, -1, 1)


def visualize_image_attr(attr: Any, original_image: Any = None, method: str = "heat_map",
                         sign: str = "absolute_value", plt_fig_axis: Any = None,
                         outlier_perc: float = 2, cmap: str | None = None,
                         alpha_overlay: float = 0.5, show_colorbar: bool = False,
                         title: str | None = None, fig_size: Any = (6, 6), use_pyplot: bool = True,
                         *, return_image: bool = False):
    """Captum's ``visualization.visualize_image_attr`` without a figure.

    Returns the normalised map ``(H, W)`` (``normalize_attr``: in [−1, 1] for ``sign="all"``,
    [0, 1] otherwise); with ``return_image=True`` also the picture Captum would draw, as
    uint8: ``"heat_map"`` → the map in ``cmap`` (default as Captum: red-white-green for
    "all", Greens / Reds / Blues for positive / negative / absolute_value), ``"blended_heat_map"``
    → that over the grey mean of ``original_image`` with ``alpha_overlay``, ``"masked_image"``
    → ``original_image · map``, ``"alpha_scaling"`` → RGBA with the map as alpha,
    ``"original_image"`` → the image. ``attr`` and ``original_image`` are ``(H, W[, C])`` as
    Captum's. The figure arguments (``plt_fig_axis``, ``show_colorbar``, ``title``,
    ``fig_size``, ``use_pyplot``) are accepted and ignored: no matplotlib here.
    """
    if method not in VISUALIZE_METHODS:
        raise ValueError(f"method must be one of {VISUALIZE_METHODS}, got {method!r}")
    if method != "heat_map" and original_image is None:
        raise ValueError("Original Image must be provided for any visualization other than heatmap.")
    if method in ("masked_image", "alpha_scaling") and sign == "all":
        raise ValueError(f"Cannot display {method.replace('_', ' ')} with both positive and negative "
                         "attributions, choose a different sign option.")
    norm = normalize_attr(attr, sign, outlier_perc)
    if not return_image:
        return norm
    default = {"all": ("RdWhGn", -1.0), "positive": ("Greens", 0.0), "negative": ("Reds", 0.0),
               "absolute_value": ("Blues", 0.0)}[sign]
    cmap = default[0] if cmap is None else cmap
    img = None if original_image is None else as_numpy(original_image)
    if method == "original_image":
        picture = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
        return norm, picture
    if method == "masked_image":
        return norm, np.clip((img * norm[..., None]).astype(int), 0, 255).astype(np.uint8)
    if method == "alpha_scaling":
        alpha = np.clip((norm[..., None] * 255).astype(int), 0, 255)
        return norm, np.concatenate([np.asarray(img).astype(int), alpha], axis=2).astype(np.uint8)
    heat = _colour(norm, cmap, default[1], 1.0)
    if method == "blended_heat_map":
        grey = np.mean(img.astype(np.float64), axis=2)
        lo, hi = grey.min(), grey.max()
        grey = _colour(grey, "gray", lo, hi if hi > lo else lo + 1.0)
        heat = alpha_overlay * heat + (1.0 - alpha_overlay) * grey
    return norm, np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8)


#: ``from onnx_xai.adapters.captum import visualization as viz`` as Captum's module.
visualization = SimpleNamespace(visualize_image_attr=visualize_image_attr, normalize_attr=normalize_attr,
                                _normalize_attr=normalize_attr)
