"""Class activation maps on ONNX models: MONAI's ``CAM``, ``GradCAM``, ``GradCAMpp`` (same
arguments, same numbers) and ``ScoreCAM``, ``LayerCAM``, ``XGradCAM``, ``HiResCAM``,
``EigenCAM``, ``GradCAMElementWise`` (pytorch-grad-cam's weighting rules).

Each method is a rule ``raw map = f(A, dS/dA)`` on the target layer's activations ``A``
``(N, C, *s)`` and the gradients of each sample's target score ``S``, all from one run of a
gradient model (``engines.cam.CAMMethod`` does the plumbing). ``__call__`` upsamples the raw
map to the input size and post-processes it. Exportable methods also write their rule as
ONNX nodes (``graph_rule``), which ``export_explainer`` appends to the gradient graph.

.. warning::
   MONAI's default post-processing, ``default_normalizer``, maps (min, max) to (1, 0): **the
   most important region becomes 0**. ``CAM``, ``GradCAM`` and ``GradCAMpp`` keep it as their
   default for compatibility with MONAI; pass ``postprocessing=minmax_normalizer`` for maps
   where hot = 1. The other classes default to ``minmax_normalizer`` (pytorch-grad-cam's
   convention).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np

from .. import graph
from ..engines.cam import (CAMMethod, GraphTaps, Taps, channel_scores, default_normalizer,
                           default_upsampler, fc_weights, minmax_normalizer, weighted_sum,
                           weighted_sum_graph)
from ..errors import NonFiniteError
from ..finite import warn_nonfinite
from ..registry import method
from ..surrogate_graph import surrogate_model

__all__ = ["CAM", "GradCAM", "GradCAMpp", "ScoreCAM", "LayerCAM", "XGradCAM", "HiResCAM",
           "EigenCAM", "GradCAMElementWise", "default_normalizer", "minmax_normalizer",
           "default_upsampler"]
_FLAGS = {"layer": "target_layers", "batch": "batch_size"}


def _spatial(a: np.ndarray) -> tuple:
    return tuple(range(2, a.ndim))


@method("cam", kind="cam", summary="class activation map (fc weights on the last conv layer)", flags=_FLAGS)
class CAM(CAMMethod):
    """Class activation map (Zhou et al. 2016) as MONAI: the fully connected layer applied at
    every position of the target layer, ``W_c · A[:, p] + b_c`` (bias included, no ReLU).

    ``fc_layers``: the Gemm / MatMul node after global pooling (node, tensor or module name,
    e.g. ``"class_layers.out"``); the default ``"fc"`` is used when the model has it,
    otherwise the fc reached from the target layer through global pooling is found
    automatically (as with ``fc_layers=None``). Its weights are read from the initializers.
    The target must be a class (``class_idx``).
    """

    gradients = False
    default_postprocessing = staticmethod(default_normalizer)

    def __init__(self, model: Any = None, target_layers: str | Sequence[str] | None = None,
                 fc_layers: str | None = "fc", upsampler: Callable | None = None,
                 postprocessing: Callable | None = None, batch_size: int = 8, *,
                 nn_module: Any = None, layout: str | None = None) -> None:
        super().__init__(model, target_layers, upsampler, postprocessing, batch_size, nn_module=nn_module,
                         layout=layout)
        proto = surrogate_model(self.model, strict=False)[0].require_proto("CAM")  # float weights (quantized models)
        if fc_layers == "fc":
            try:
                graph.resolve_layer(proto, "fc")
            except ValueError:
                fc_layers = None
        self.fc_layers = fc_layers
        self._fc = {layer: fc_weights(proto, graph.resolve_layer(proto, layer), fc_layers)
                    for layer in self.target_layers}

    def _weights(self, layer: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
        w, b = self._fc[layer]
        if w.shape[1] != channels:
            raise ValueError(f"fc layer has {w.shape[1]} inputs but layer {layer!r} has "
                             f"{channels} channels; name the right fc_layers")
        return w, b

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        w, b = self._weights(layer, t.activations.shape[1])
        w = w[t.class_idx].reshape(w[t.class_idx].shape + (1,) * (t.activations.ndim - 2))
        cam = (w * t.activations).sum(1, keepdims=True)
        return (cam + b[t.class_idx].reshape((-1,) + (1,) * (cam.ndim - 1))).astype(np.float32)

    def graph_rule(self, b: graph.NodeBuilder, t: GraphTaps) -> str:
        w, bias = self._weights(self.target_layers[-1], t.channels)
        lift = t.spatial
        wc = b.op("Unsqueeze", [b.op("Gather", [b.const(w, np.float32), t.class_index], axis=0), b.const(lift)])
        bc = b.op("Unsqueeze", [b.op("Gather", [b.const(bias, np.float32), t.class_index], axis=0),
                                b.const([1] + lift)])
        return b.op("Add", [b.reduce("ReduceSum", b.op("Mul", [wc, t.activations]), [1]), bc])


@method("gradcam", kind="cam", summary="Grad-CAM on a convolutional layer", flags=_FLAGS)
class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al. 2017) as MONAI: ``relu(Σ_k mean_p(dS/dA_k) · A_k)``, S the raw
    class logit. Default post-processing flips magnitudes (see the module docstring)."""

    default_postprocessing = staticmethod(default_normalizer)

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        return weighted_sum(t.gradients.mean(_spatial(t.gradients)), t.activations)

    def graph_rule(self, b: graph.NodeBuilder, t: GraphTaps) -> str:
        return weighted_sum_graph(b, b.reduce("ReduceMean", t.gradients, t.spatial), t)


@method("gradcampp", kind="cam", summary="Grad-CAM++ (MONAI's weights)", flags=_FLAGS)
class GradCAMpp(CAMMethod):
    """Grad-CAM++ as MONAI computes it: ``α = g² / (2g² + Σ_p A·g³)`` (a zero denominator
    counts as 1, then + 1e-7), ``w_k = Σ_p α · relu(exp(S) · g)``, ``relu(Σ_k w_k A_k)``.

    MONAI's weights include ``exp(S)``; pytorch-grad-cam's GradCAM++ does not (and uses Σ A
    in α) — this class matches MONAI. Each sample uses its own ``exp(S_b)`` (MONAI matches
    this for one sample at a time; with B > 1 it broadcasts the B scores over the last axis).
    ``exp(S)`` is a positive per-sample factor of the raw map. Where the raw map would pass
    float32 (logits above about 88, summed dense scores), MONAI returns inf / NaN; here that
    sample's factor is lowered to keep its largest value at ``exp(80)`` (a
    ``RuntimeWarning`` says so): its raw map is MONAI's divided by a constant, and min-max
    normalised maps (the default post-processing) are exactly MONAI's.
    """

    default_postprocessing = staticmethod(default_normalizer)
    LOG_LIMIT = 80.0  # largest log-value a raw map may reach (float32 overflows at 88.7)

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        g, a = t.gradients.astype(np.float64), t.activations.astype(np.float64)
        axes = _spatial(g)
        den = 2 * g ** 2 + (a * g ** 3).sum(axes, keepdims=True)
        alpha = g ** 2 / (np.where(den != 0.0, den, 1.0) + 1e-7)
        base = weighted_sum((alpha * np.maximum(g, 0.0)).sum(axes), a).astype(np.float64)  # / exp(S)
        scores = t.scores
        peak = base.reshape(len(base), -1).max(1)
        log_gain = np.minimum(scores, self.LOG_LIMIT - np.log(np.where(peak > 0, peak, 1.0)))
        lowered = np.flatnonzero(log_gain < scores)
        if lowered.size:
            warnings.warn(f"GradCAMpp: exp(S) overflows float32 for sample(s) {lowered.tolist()} "
                          f"(score up to {scores[lowered].max():.4g}); their raw maps are scaled "
                          "down by a constant (normalised maps are unchanged)", RuntimeWarning,
                          stacklevel=4)
        return (base * np.exp(log_gain).reshape((-1,) + (1,) * (base.ndim - 1))).astype(np.float32)

    def graph_rule(self, b: graph.NodeBuilder, t: GraphTaps) -> str:
        g, sp = t.gradients, t.spatial
        g2 = b.op("Mul", [g, g])
        ag3 = b.reduce("ReduceSum", b.op("Mul", [b.op("Mul", [t.activations, g2]), g]), sp)
        den = b.op("Add", [b.op("Mul", [g2, b.const(2.0, np.float32)]), ag3])
        zero = b.op("Equal", [den, b.const(0.0, np.float32)])
        den = b.op("Add", [b.op("Where", [zero, b.const(1.0, np.float32), den]), b.const(1e-7, np.float32)])
        positive = b.op("Relu", [g if t.score is None else b.op("Mul", [b.op("Exp", [t.score]), g])])
        w = b.reduce("ReduceSum", b.op("Mul", [b.op("Div", [g2, den]), positive]), sp)
        return weighted_sum_graph(b, w, t)


@method("layercam", kind="cam", summary="Layer-CAM", flags=_FLAGS)
class LayerCAM(CAMMethod):
    """LayerCAM (Jiang et al. 2021): ``relu(Σ_k relu(g_k) ⊙ A_k)``; hot = 1 by default."""

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        return weighted_sum(np.maximum(t.gradients, 0.0), t.activations)

    def graph_rule(self, b: graph.NodeBuilder, t: GraphTaps) -> str:
        return weighted_sum_graph(b, b.op("Relu", [t.gradients]), t)


@method("xgradcam", kind="cam", summary="XGrad-CAM", flags=_FLAGS)
class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al. 2020): ``w_k = Σ_p g_k A_k / (Σ_p A_k + 1e-7)``, ``relu(Σ_k w_k A_k)``."""

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        g, a = t.gradients.astype(np.float64), t.activations.astype(np.float64)
        axes = _spatial(a)
        return weighted_sum((g * a).sum(axes) / (a.sum(axes) + 1e-7), a)

    def graph_rule(self, b: graph.NodeBuilder, t: GraphTaps) -> str:
        num = b.reduce("ReduceSum", b.op("Mul", [t.gradients, t.activations]), t.spatial)
        den = b.op("Add", [b.reduce("ReduceSum", t.activations, t.spatial), b.const(1e-7, np.float32)])
        return weighted_sum_graph(b, b.op("Div", [num, den]), t)


@method("hirescam", kind="cam", summary="HiResCAM (elementwise gradient x activation)", flags=_FLAGS)
class HiResCAM(CAMMethod):
    """HiResCAM (Draelos & Carin 2020): ``relu(Σ_k g_k ⊙ A_k)`` (elementwise, no averaging)."""

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        return weighted_sum(t.gradients, t.activations)

    def graph_rule(self, b: graph.NodeBuilder, t: GraphTaps) -> str:
        return weighted_sum_graph(b, t.gradients, t)


@method("eigencam", kind="cam", summary="EigenCAM (first principal component, class-agnostic)", flags=_FLAGS)
class EigenCAM(CAMMethod):
    """EigenCAM (Muhammad & Yeasin 2020), class-agnostic and gradient-free: the projection of
    the centred ``(positions × C)`` activations on their first right-singular vector, relu.
    The SVD's sign is arbitrary; it is fixed so the projection correlates positively with the
    channel-summed activation. ``class_idx`` is ignored."""

    gradients = False

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        n, c, *s = t.activations.shape
        out = np.zeros((n, 1, *s), np.float32)
        for i, a in enumerate(np.nan_to_num(t.activations.astype(np.float64))):
            m = a.reshape(c, -1).T
            m = m - m.mean(0)
            proj = m @ np.linalg.svd(m, full_matrices=False)[2][0]
            if proj @ (a.reshape(c, -1).sum(0) - a.sum() / proj.size) < 0:
                proj = -proj
            out[i, 0] = np.maximum(proj, 0).reshape(s)
        return out


@method("scorecam", kind="cam", summary="Score-CAM (gradient-free, masked forward passes)", flags=_FLAGS)
class ScoreCAM(CAMMethod):
    """Score-CAM (Wang et al. 2020) as pytorch-grad-cam, gradient-free: each activation channel
    is upsampled to the input (linear, ``align_corners=True``), min-max scaled (÷ (max − min +
    1e-8)) and multiplied into the input; the target scores of these masked inputs, run in
    batches of ``batch_size``, softmaxed over channels, weight the channels:
    ``relu(Σ_k softmax(S(x ⊙ M_k))_k A_k)``. Channels with a constant activation mask the
    input to zero and share one forward pass. Hot = 1 by default.

    Channels whose masked input scores NaN / inf get weight 0 (the softmax runs over the
    other channels), with a ``NonFiniteWarning`` giving their count; ``NonFiniteError`` when
    no channel of a sample is finite."""

    gradients = False

    def __init__(self, model: Any = None, target_layers: str | Sequence[str] | None = None,
                 upsampler: Callable | None = None, postprocessing: Callable | None = None,
                 batch_size: int = 32, verbose: bool | None = None, *, nn_module: Any = None,
                 layout: str | None = None) -> None:
        super().__init__(model, target_layers, upsampler, postprocessing, batch_size, nn_module=nn_module,
                         layout=layout)
        self.verbose = self.model.verbose if verbose is None else verbose

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        scores = channel_scores(self, np.asarray(x, np.float32), t)
        ok = np.isfinite(scores)
        if not ok.any(1).all():
            raise NonFiniteError(f"ScoreCAM: the model's output is not finite (NaN or inf) for "
                                 f"every masked input of sample {int(np.argmin(ok.any(1)))} "
                                 f"(layer {layer!r}); no map can be made")
        warn_nonfinite("ScoreCAM", int((~ok).sum()), ok.size, "masked inputs (channels)",
                       "those channels get weight 0", stacklevel=4)
        scores = np.where(ok, scores, -np.inf)
        w = np.exp(scores - scores.max(1, keepdims=True))
        return weighted_sum(w / w.sum(1, keepdims=True), t.activations)


@method("gradcam-elementwise", kind="cam", summary="Grad-CAM element-wise (pytorch-grad-cam)", flags=_FLAGS)
class GradCAMElementWise(CAMMethod):
    """Grad-CAM element-wise, as pytorch-grad-cam's ``GradCAMElementWise``: the gradient and
    activation are multiplied position by position and rectified before the channel sum,
    ``Σ_k relu(g_k ⊙ A_k)``; hot = 1 by default."""

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        return np.maximum(t.gradients * t.activations, 0.0).sum(1, keepdims=True).astype(np.float32)

    def graph_rule(self, b: graph.NodeBuilder, t: GraphTaps) -> str:
        return b.reduce("ReduceSum", b.op("Relu", [b.op("Mul", [t.gradients, t.activations])]), [1])
