"""Class activation maps on ONNX models: MONAI's ``CAM``, ``GradCAM``, ``GradCAMpp`` (same
arguments, same numbers) and ``ScoreCAM``, ``LayerCAM``, ``XGradCAM``, ``HiResCAM``,
``EigenCAM`` (pytorch-grad-cam's weighting rules).

Each method is a rule ``raw map = f(A, dS/dA)`` on the target layer's activations ``A``
``(N, C, *s)`` and the gradients of each sample's class logit ``S``, all from one run of a
gradient model. ``__call__`` upsamples the raw map to the input size and post-processes it.

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
from tqdm.auto import tqdm

from .. import graph
from ..engines.cam import (Taps, default_normalizer, default_upsampler, fc_weights,
                           forward_taps, gradient_taps, linear_resize, minmax_normalizer)
from ..errors import NonFiniteError
from ..finite import describe_nonfinite, warn_nonfinite
from ..adapters.monai import model_argument
from ..runtime import Model, ModelSource

__all__ = ["CAM", "GradCAM", "GradCAMpp", "ScoreCAM", "LayerCAM", "XGradCAM", "HiResCAM",
           "EigenCAM", "default_normalizer", "minmax_normalizer", "default_upsampler"]


def _sum_channels(weights: np.ndarray, act: np.ndarray) -> np.ndarray:
    """``Σ_k w_k A_k`` → ``(N, 1, *s)``; ``weights`` ``(N, C)`` or elementwise like ``act``."""
    w = weights.reshape(weights.shape + (1,) * (act.ndim - weights.ndim))
    return (w * act).sum(1, keepdims=True)


def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0).astype(np.float32)


def _spatial(a: np.ndarray) -> tuple:
    return tuple(range(2, a.ndim))


class _CAMBase:
    """Shared constructor, ``compute_map`` / ``__call__`` plumbing and layer selection."""

    gradients = True  # whether the rule needs dS/dA

    def __init__(self, model: ModelSource = None, target_layers: str | Sequence[str] = None,
                 upsampler: Callable = default_upsampler,
                 postprocessing: Callable = default_normalizer, batch_size: int = 8, *,
                 nn_module: ModelSource = None) -> None:
        model = model_argument(model, nn_module, type(self).__name__)  # MONAI's name: nn_module
        self.model = model if isinstance(model, Model) else Model(model)
        layers = [target_layers] if isinstance(target_layers, str) else list(target_layers or ())
        if not layers or not all(isinstance(l, str) and l for l in layers):
            raise ValueError(f"target_layers must be a layer name or a sequence of them, got {target_layers!r}")
        proto = self.model.require_proto("CAM")
        for name in layers:
            graph.resolve_layer(proto, name)  # unknown names fail here, listing close ones
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.target_layers, self.batch_size = layers, int(batch_size)
        self.upsampler, self.postprocessing = upsampler, postprocessing

    def compute_map(self, x: np.ndarray, class_idx: Any = None, layer_idx: int = -1) -> np.ndarray:
        """Raw map ``(B, 1, *s)`` at the target layer's resolution for ``x`` ``(B, C, *spatial)``;
        ``class_idx``: None (argmax per sample), an int, or B ints (one per sample).

        NaN / inf in ``x``: ``ValueError`` (count, first index); in the model's output, the
        layer's activations or gradients on ``x``, or in the map: ``NonFiniteError``."""
        x = self.model.check_input(x)
        if x.ndim < 3:
            raise ValueError(f"x must be (B, C, *spatial), got shape {x.shape}")
        if not isinstance(layer_idx, (int, np.integer)) or not (
                -len(self.target_layers) <= layer_idx < len(self.target_layers)):
            raise ValueError(f"layer_idx {layer_idx!r} out of range for target_layers {self.target_layers}")
        layer = self.target_layers[layer_idx]
        run = gradient_taps if self.gradients else forward_taps
        raw = self._map(run(self.model, layer, x, class_idx, batch_size=self.batch_size), x, layer)
        detail = describe_nonfinite(raw)  # the taps were finite (checked): the rule overflowed
        if detail is not None:
            raise NonFiniteError(f"{type(self).__name__}: the map of layer {layer!r} overflowed "
                                 f"({detail}) although the activations and gradients are finite")
        return raw

    def __call__(self, x: np.ndarray, class_idx: Any = None, layer_idx: int = -1) -> np.ndarray:
        """``postprocessing(upsampler(x spatial size)(compute_map(...)))`` → ``(B, 1, *spatial)``."""
        raw = self.compute_map(x, class_idx, layer_idx)
        return np.asarray(self.postprocessing(self.upsampler(np.shape(x)[2:])(raw)))

    def feature_map_size(self, input_size: Sequence[int], layer_idx: int = -1) -> tuple:
        """Shape of the raw map for an input of shape ``input_size`` (as MONAI)."""
        return self.compute_map(np.zeros(tuple(input_size), np.float32), layer_idx=layer_idx).shape

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        raise NotImplementedError


class CAM(_CAMBase):
    """Class activation map (Zhou et al. 2016) as MONAI: the fully connected layer applied at
    every position of the target layer, ``W_c · A[:, p] + b_c`` (bias included, no ReLU).

    ``fc_layers``: the Gemm / MatMul node after global pooling (node, tensor or module name,
    e.g. ``"class_layers.out"``); the default ``"fc"`` is used when the model has it,
    otherwise the fc reached from the target layer through global pooling is found
    automatically (as with ``fc_layers=None``). Its weights are read from the initializers.
    """

    gradients = False

    def __init__(self, model: ModelSource = None, target_layers: str | Sequence[str] = None,
                 fc_layers: str | None = "fc", upsampler: Callable = default_upsampler,
                 postprocessing: Callable = default_normalizer, batch_size: int = 8, *,
                 nn_module: ModelSource = None) -> None:
        super().__init__(model, target_layers, upsampler, postprocessing, batch_size, nn_module=nn_module)
        proto = self.model.require_proto("CAM")
        if fc_layers == "fc":
            try:
                graph.resolve_layer(proto, "fc")
            except ValueError:
                fc_layers = None
        self.fc_layers = fc_layers
        self._fc = {layer: fc_weights(proto, graph.resolve_layer(proto, layer), fc_layers)
                    for layer in self.target_layers}

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        w, b = self._fc[layer]
        if w.shape[1] != t.activations.shape[1]:
            raise ValueError(f"fc layer has {w.shape[1]} inputs but layer {layer!r} has "
                             f"{t.activations.shape[1]} channels; name the right fc_layers")
        cam = _sum_channels(w[t.class_idx], t.activations)
        return (cam + b[t.class_idx].reshape((-1,) + (1,) * (cam.ndim - 1))).astype(np.float32)


class GradCAM(_CAMBase):
    """Grad-CAM (Selvaraju et al. 2017) as MONAI: ``relu(Σ_k mean_p(dS/dA_k) · A_k)``, S the raw
    class logit. Default post-processing flips magnitudes (see the module docstring)."""

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        return _relu(_sum_channels(t.gradients.mean(_spatial(t.gradients)), t.activations))


class GradCAMpp(_CAMBase):
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

    LOG_LIMIT = 80.0  # largest log-value a raw map may reach (float32 overflows at 88.7)

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        g, a = t.gradients.astype(np.float64), t.activations.astype(np.float64)
        axes = _spatial(g)
        den = 2 * g ** 2 + (a * g ** 3).sum(axes, keepdims=True)
        alpha = g ** 2 / (np.where(den != 0.0, den, 1.0) + 1e-7)
        base = np.maximum(_sum_channels((alpha * np.maximum(g, 0.0)).sum(axes), a), 0.0)  # / exp(S)
        peak = base.reshape(len(base), -1).max(1)
        log_peak = np.log(np.where(peak > 0, peak, 1.0))
        log_gain = np.minimum(t.scores, self.LOG_LIMIT - log_peak)
        lowered = np.flatnonzero(log_gain < t.scores)
        if lowered.size:
            warnings.warn(f"GradCAMpp: exp(S) overflows float32 for sample(s) {lowered.tolist()} "
                          f"(score up to {t.scores[lowered].max():.4g}); their raw maps are scaled "
                          "down by a constant (normalised maps are unchanged)", RuntimeWarning,
                          stacklevel=3)
        return (base * np.exp(log_gain).reshape((-1,) + (1,) * (base.ndim - 1))).astype(np.float32)


class LayerCAM(_CAMBase):
    """LayerCAM (Jiang et al. 2021): ``relu(Σ_k relu(g_k) ⊙ A_k)``; hot = 1 by default."""

    def __init__(self, model, target_layers, upsampler=default_upsampler,
                 postprocessing=minmax_normalizer, batch_size=8) -> None:
        super().__init__(model, target_layers, upsampler, postprocessing, batch_size)

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        return _relu(_sum_channels(np.maximum(t.gradients, 0.0), t.activations))


class XGradCAM(LayerCAM):
    """XGrad-CAM (Fu et al. 2020): ``w_k = Σ_p g_k A_k / (Σ_p A_k + 1e-7)``, ``relu(Σ_k w_k A_k)``."""

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        g, a = t.gradients.astype(np.float64), t.activations.astype(np.float64)
        axes = _spatial(a)
        return _relu(_sum_channels((g * a).sum(axes) / (a.sum(axes) + 1e-7), a))


class HiResCAM(LayerCAM):
    """HiResCAM (Draelos & Carin 2020): ``relu(Σ_k g_k ⊙ A_k)`` (elementwise, no averaging)."""

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        return _relu(_sum_channels(t.gradients, t.activations))


class EigenCAM(LayerCAM):
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


class ScoreCAM(LayerCAM):
    """Score-CAM (Wang et al. 2020) as pytorch-grad-cam, gradient-free: each activation channel
    is upsampled to the input (linear, ``align_corners=True``), min-max scaled (÷ (max − min +
    1e-8)) and multiplied into the input; the class logits of these masked inputs, run in
    batches of ``batch_size``, softmaxed over channels, weight the channels:
    ``relu(Σ_k softmax(S(x ⊙ M_k))_k A_k)``. Channels with a constant activation mask the
    input to zero and share one forward pass. Hot = 1 by default.

    Channels whose masked input scores NaN / inf get weight 0 (the softmax runs over the
    other channels), with a ``NonFiniteWarning`` giving their count; ``NonFiniteError`` when
    no channel of a sample is finite."""

    gradients = False

    def __init__(self, model, target_layers, upsampler=default_upsampler,
                 postprocessing=minmax_normalizer, batch_size=32, verbose=None) -> None:
        super().__init__(model, target_layers, upsampler, postprocessing, batch_size)
        self.verbose = self.model.verbose if verbose is None else verbose

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        x = np.asarray(x, np.float32)
        n, c = t.activations.shape[:2]
        scores = np.empty((n, c))
        with tqdm(total=n * c, desc="ScoreCAM", unit="mask", disable=not self.verbose,
                  delay=1.0, leave=False) as bar:
            for i in range(n):
                scores[i] = self._channel_scores(x[i], t.activations[i], t.class_idx[i], bar)
        ok = np.isfinite(scores)
        if not ok.any(1).all():
            raise NonFiniteError(f"ScoreCAM: the model's output is not finite (NaN or inf) for "
                                 f"every masked input of sample {int(np.argmin(ok.any(1)))} "
                                 f"(layer {layer!r}); no map can be made")
        warn_nonfinite("ScoreCAM", int((~ok).sum()), ok.size, "masked inputs (channels)",
                       "those channels get weight 0", stacklevel=4)
        scores = np.where(ok, scores, -np.inf)
        w = np.exp(scores - scores.max(1, keepdims=True))
        return _relu(_sum_channels(w / w.sum(1, keepdims=True), t.activations))

    def _channel_scores(self, xi, act, cls, bar) -> np.ndarray:
        c = act.shape[0]
        lo = act.reshape(c, -1).min(1)
        hi = act.reshape(c, -1).max(1)
        live = np.flatnonzero(hi > lo)
        out = np.empty(c)
        if live.size < c:  # constant channel → all-zero mask → one shared forward pass
            out[hi <= lo] = self._logit(np.zeros_like(xi)[None], cls)[0]
            bar.update(c - live.size)
        for s in range(0, live.size, self.batch_size):
            ks = live[s:s + self.batch_size]
            up = linear_resize(act[None, ks], xi.shape[1:], align_corners=True)[0]
            flat = up.reshape(len(ks), -1)
            mn, mx = flat.min(1), flat.max(1)
            masks = (up - mn.reshape((-1,) + (1,) * (up.ndim - 1))) / (
                mx - mn + 1e-8).reshape((-1,) + (1,) * (up.ndim - 1))
            out[ks] = self._logit(xi[None] * masks[:, None], cls)
            bar.update(len(ks))
        return out

    def _logit(self, batch: np.ndarray, cls: int) -> np.ndarray:
        logits = self.model.predict(batch, batch_size=self.batch_size, verbose=False)
        return logits.reshape(len(batch), logits.shape[1], -1)[:, cls].sum(-1, dtype=np.float64)
