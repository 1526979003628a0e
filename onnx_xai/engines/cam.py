"""CAM engine: layer activations and gradients from one run, resizing, normalisers, and the
graph look-ups CAM methods need (the fc after global pooling, the last spatial layer).

Every CAM method is a weighting rule over ``Taps`` (activations ``(N, C, *s)``, gradients of
each sample's target score, the logits and the chosen classes).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from tqdm.auto import tqdm

from .. import graph, targets, tokens
from ..autolayer import auto_layer
from ..autodiff import gradient_model
from ..autodiff.passes import constant_values
from ..errors import TOKEN_HINT, NonFiniteError, UnsupportedModelError
from ..finite import check_finite_output, describe_nonfinite
from ..layout import channel_first, channel_first_layer, is_folded, to_channel_first
from ..runtime import Model
from ..surrogate_graph import surrogate_model

_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool")
_PASS = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Relu", "Clip", "Sigmoid",
         "HardSwish", "Mul", "Transpose")


@dataclass
class Taps:
    """What one run gives a CAM method. ``activations``/``gradients``: ``(N, C, *s)``
    (gradients None for gradient-free runs); ``logits``: the scored output ``(N, K[, ...])``;
    ``target``: the ``Target`` explained, resolved per sample on these logits."""

    activations: np.ndarray
    gradients: np.ndarray | None
    logits: np.ndarray
    target: targets.Target
    extra: dict | None = None  # the model's other inputs, as given (see ``Model.predict``)

    @property
    def scores(self) -> np.ndarray:
        """``(N,)`` float64 target score of each sample (a class logit summed over the
        positions of a dense output, for the default target)."""
        return self.target(self.logits)

    @property
    def class_idx(self) -> np.ndarray:
        """``(N,)`` class of each sample; ``ValueError`` for targets that are not a class."""
        if not isinstance(self.target, targets.ClassTarget):
            raise ValueError(f"this CAM needs a class target, got {self.target!r}")
        return np.asarray(self.target.index)


@dataclass(frozen=True)
class GraphTaps:
    """Tensor names a graph rule (``export_explainer``) reads: ``activations`` and
    ``gradients`` ``(B, C, *s)`` (for input-gradient methods, the input and its gradient;
    gradients None for gradient-free rules), the target ``score`` ``(B, 1, …)`` (None where a
    per-sample positive factor cancels in the normalisation), the ``class_index`` ``(B,)``
    int64, the ``rank`` of the activations and their ``channels``."""

    activations: str
    gradients: str | None
    score: str | None
    class_index: str
    rank: int
    channels: int = 0

    @property
    def spatial(self) -> list[int]:
        return list(range(2, self.rank))


# ---------------------------------------------------------------------------- running
def _check_spatial(act: np.ndarray, layer: str) -> None:
    if act.ndim < 3:
        raise ValueError(f"target layer {layer!r} has shape {act.shape[1:]} per sample: a CAM needs "
                         "a layer with spatial extent (C, H, W[, D]) before global pooling")


def _check_finite(logits: np.ndarray, output: str, act: np.ndarray, layer: str,
                  grad: np.ndarray | None = None) -> None:
    """``NonFiniteError`` naming the tensor when the logits, the activations or the gradients
    of the unperturbed input hold a NaN or an infinity (a CAM of them would be all NaN)."""
    check_finite_output(logits, f"output {output!r}")
    check_finite_output(act, f"the activation of layer {layer!r}")
    if grad is not None:
        check_finite_output(grad, f"the gradient of output {output!r} w.r.t. layer {layer!r}")


def forward_taps(model: Model, layer: str, x: np.ndarray, target: targets.Target,
                 batch_size: int = 8, extra_inputs: dict | None = None) -> Taps:
    """Activations of ``layer`` and the scored output, without gradients (one forward pass);
    ``NonFiniteError`` when either is not finite. ``extra_inputs``: the model's other inputs.
    A float16 / quantized / old-opset model's activations are its float32 surrogate's
    (``onnx_xai.surrogate_graph``); the logits are always the served model's."""
    surrogate, _ = surrogate_model(model, strict=False)
    tensor = graph.resolve_layer(surrogate.require_proto("CAM"), layer)
    child = surrogate.with_outputs([tensor])
    out = target.output or model.output_names[0]
    names = [out, tensor] if surrogate is model else [tensor]
    got = child.predict(x, outputs=names, batch_size=batch_size, verbose=False,
                        extra_inputs=extra_inputs)
    if surrogate is not model:
        got[out] = model.predict(x, outputs=out, batch_size=batch_size, verbose=False,
                                 extra_inputs=extra_inputs)
    logits, act = got[out], got[tensor]
    _check_spatial(act, layer)
    _check_finite(logits, out, act, layer)
    return Taps(act, None, logits, target.resolve(logits), extra_inputs)


def gradient_taps(model: Model, layer: str, x: np.ndarray, target: targets.Target,
                  batch_size: int = 8, extra_inputs: dict | None = None) -> Taps:
    """Activations of ``layer``, d(score)/d(activations) and the scored output from one run of
    the gradient model per batch. The default target (each sample's argmax class) is picked
    inside the graph (no extra forward pass) for ``(N, K)`` outputs. ``NonFiniteError`` when
    the output, activations or gradients are not finite."""
    gm = gradient_model(model, [layer], output=target.output, batch_size=min(x.shape[0], batch_size),
                        input_shape=x.shape[1:], activation=target.activation,
                        extra_shapes=model.extra_shapes(model.check_extra_inputs(extra_inputs)) or None)
    res = gm.run(x, target, extra_inputs=extra_inputs)
    logits = res["outputs"][gm.output]
    act, grad = res["activations"][layer], res["gradients"][layer]
    _check_spatial(act, layer)
    _check_finite(logits, gm.output, act, layer, grad)
    return Taps(act, grad, logits, target.resolve(logits), extra_inputs)


# ---------------------------------------------------------------------------- resizing
def _linear_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """``(n_out, n_in)`` weights of 1-D linear interpolation as torch's ``F.interpolate``
    (``size`` given, no antialias): source coordinate (o + ½)·n_in/n_out − ½ clamped at 0,
    or o·(n_in − 1)/(n_out − 1) with ``align_corners``."""
    o = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.maximum((o + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def linear_resize(maps: np.ndarray, size: Sequence[int], align_corners: bool = False) -> np.ndarray:
    """``(B, C, *s)`` → ``(B, C, *size)`` by (bi/tri-)linear interpolation, float32."""
    size = tuple(int(s) for s in size)
    if maps.ndim - 2 != len(size):
        raise ValueError(f"cannot resize maps of shape {maps.shape} to spatial size {size}")
    out = maps.astype(np.float64, copy=False)
    for axis, n in enumerate(size, start=2):
        if out.shape[axis] != n or align_corners:
            m = _linear_matrix(out.shape[axis], n, align_corners)
            # einsum, not BLAS: BLAS threads right after an ORT run fight its spinning workers (50 ms)
            out = np.moveaxis(np.einsum("on,...n->...o", m, np.moveaxis(out, axis, -1)), -1, axis)
    return out.astype(np.float32)


def default_upsampler(spatial_size: Sequence[int], align_corners: bool = False
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """MONAI's default: a function resizing ``(B, C, *s)`` maps to ``spatial_size`` by linear
    / bilinear / trilinear interpolation (``F.interpolate``, ``align_corners=False``)."""
    return lambda maps: linear_resize(maps, spatial_size, align_corners)


def default_normalizer(x: np.ndarray) -> np.ndarray:
    """MONAI's default post-processing: per item, (min, max) → (1, 0).

    **It flips magnitudes: the most important region becomes 0, the least 1.** A constant
    item is returned unchanged (as MONAI). Use ``minmax_normalizer`` for (min, max) → (0, 1).
    """
    return _scale(x, flip=True)


def minmax_normalizer(x: np.ndarray) -> np.ndarray:
    """Per item, (min, max) → (0, 1): the most important region is 1. Constant items → 0."""
    return _scale(x, flip=False)


def _scale(x: np.ndarray, flip: bool) -> np.ndarray:
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for i, item in enumerate(x):
        lo, hi = item.min(), item.max()
        if lo == hi:
            out[i] = item if flip else 0.0
        else:
            norm = (item - lo) / (hi - lo)
            out[i] = 1.0 - norm if flip else norm
    return out


# ---------------------------------------------------------------------------- methods
class CAMMethod:
    """Base of the CAM methods: constructor, ``compute_map`` / ``__call__`` plumbing.

    A method class sets ``gradients`` (whether its rule reads dS/dA), its
    ``default_postprocessing`` (data, not inheritance), its NumPy rule ``_map(taps, x, layer)
    → (N, 1, *s)`` and, when exportable, ``graph_rule(builder, GraphTaps) → tensor name``.

    Args:
        model: anything ``Model`` accepts (``nn_module=``: MONAI's name for it).
        target_layers: a layer name (node, tensor or dotted module path) or several;
            ``layer_idx`` of a call picks one (default: the last). None: the automatic
            layer (``onnx_xai.autolayer``; the model's input shape must be fixed).
            Transformer token layers ``(B, T, C)`` / ``(B, h, w, C)`` are folded to
            ``(B, C, h, w)`` automatically (``onnx_xai.tokens``).
        upsampler: ``upsampler(spatial size)(raw map)`` (default: linear, as MONAI).
        postprocessing: applied to the upsampled map (default: the class's).
        batch_size: most samples per run.
        layout: the input's layout, ``"nchw"``, ``"nhwc"`` or ``"auto"`` (None: the Model's;
            see ``onnx_xai.layout``): ``x`` is given in it, maps are ``(B, 1, *spatial)``.
        reshape_transform: a function NumPy ``(B, ...)`` layer activations (and gradients)
            → ``(B, C, h, w)``, as pytorch-grad-cam's, instead of the automatic folding.
    """

    gradients = True
    default_postprocessing: Callable = staticmethod(minmax_normalizer)

    def __init__(self, model: Any = None, target_layers: str | Sequence[str] | None = None,
                 upsampler: Callable = None, postprocessing: Callable | None = None,
                 batch_size: int = 8, *, nn_module: Any = None, layout: str | None = None,
                 reshape_transform: Callable | None = None) -> None:
        self.model = channel_first(targets.as_model(targets.model_argument(model, nn_module, type(self).__name__)),
                                   layout)
        if target_layers is None:
            target_layers = auto_layer(self.model).tensor
        layers = [target_layers] if isinstance(target_layers, str) else list(target_layers or ())
        if not layers or not all(isinstance(l, str) and l for l in layers):
            raise ValueError(f"target_layers must be a layer name or a sequence of them, got {target_layers!r}")
        if reshape_transform is not None and not callable(reshape_transform):
            raise ValueError(f"reshape_transform must be a function or None, got {reshape_transform!r}")
        self.reshape_transform, self._folds = reshape_transform, {}
        proto = surrogate_model(self.model, strict=False)[0].require_proto("CAM")  # the graph the taps come from
        for name in layers:
            graph.resolve_layer(proto, name)  # unknown names fail here, listing close ones
        if is_folded(self.model):  # a channel-last model's NHWC feature maps: their NCHW twins
            layers = [channel_first_layer(proto, name) for name in layers]
        self.target_layers = layers
        self.batch_size = targets.positive_int("batch_size", batch_size)
        self.upsampler = default_upsampler if upsampler is None else upsampler
        self.postprocessing = type(self).default_postprocessing if postprocessing is None else postprocessing

    @property
    def hot(self) -> str:
        """Which end of the post-processed map is important: ``"low"`` for MONAI's flipping
        ``default_normalizer``, else ``"high"``."""
        return "low" if self.postprocessing is default_normalizer else "high"

    def target(self, class_idx: Any) -> targets.Target:
        """``class_idx`` (None, an int, one int per sample, or a ``Target``) as a ``Target``."""
        return targets.target(class_idx)

    def compute_map(self, x: np.ndarray, class_idx: Any = None, layer_idx: int = -1,
                    **extra_inputs) -> np.ndarray:
        """Raw map ``(B, 1, *s)`` at the target layer's resolution for ``x`` ``(B, C, *spatial)``;
        ``class_idx``: None (argmax per sample), an int, B ints (one per sample), or any
        ``onnx_xai.targets`` target (e.g. a class summed over a region of a dense output);
        ``extra_inputs``: the model's other inputs by name (per batch, or per sample with a
        leading axis of B; see ``Model.predict``).

        NaN / inf in ``x``: ``ValueError`` (count, first index); in the model's output, the
        layer's activations or gradients on ``x``, or in the map: ``NonFiniteError``."""
        x = self.model.check_input(to_channel_first(self.model, x))
        if x.ndim < 3:
            raise ValueError(f"x must be (B, C, *spatial), got shape {x.shape}"
                             + (f"; {TOKEN_HINT}" if x.dtype.kind in "iu" else ""))
        if not isinstance(layer_idx, (int, np.integer)) or not (
                -len(self.target_layers) <= layer_idx < len(self.target_layers)):
            raise ValueError(f"layer_idx {layer_idx!r} out of range for target_layers {self.target_layers}")
        layer = self.target_layers[layer_idx]
        run = gradient_taps if self.gradients else forward_taps
        taps = run(self.model, layer, x, self.target(class_idx), self.batch_size, extra_inputs)
        raw = self._map(self.fold(taps, layer, x.shape), x, layer)
        detail = describe_nonfinite(raw)  # the taps were finite (checked): the rule overflowed
        if detail is not None:
            raise NonFiniteError(f"{type(self).__name__}: the map of layer {layer!r} overflowed "
                                 f"({detail}) although the activations and gradients are finite")
        return raw

    def __call__(self, x: np.ndarray, class_idx: Any = None, layer_idx: int = -1,
                 **extra_inputs) -> np.ndarray:
        """``postprocessing(upsampler(x spatial size)(compute_map(...)))`` → ``(B, 1, *spatial)``."""
        raw = self.compute_map(x, class_idx, layer_idx, **extra_inputs)
        size = np.shape(to_channel_first(self.model, x))[2:]
        return np.asarray(self.postprocessing(self.upsampler(size)(raw)))

    def explain(self, x: np.ndarray, target: targets.Target, **extra_inputs) -> np.ndarray:
        """The registry's protocol: ``(B, 1, *spatial)`` post-processed map of ``target``."""
        return self(x, target, **extra_inputs)

    def fold(self, taps: Taps, layer: str, input_shape: tuple) -> Taps:
        """``taps`` with a token layer's activations and gradients folded to ``(N, C, h, w)``
        by ``reshape_transform`` or the layer's detected ``tokens.TokenFold`` (cached per
        layer and input shape); channel-first layers are returned as they are."""
        fold = self.reshape_transform or token_fold(self.model, layer, input_shape, self._folds)
        return fold_taps(taps, fold, layer, len(input_shape))

    def feature_map_size(self, input_size: Sequence[int], layer_idx: int = -1) -> tuple:
        """Shape of the raw map for an input of shape ``input_size`` (as MONAI)."""
        return self.compute_map(np.zeros(tuple(input_size), np.float32), layer_idx=layer_idx).shape

    def _map(self, t: Taps, x: np.ndarray, layer: str) -> np.ndarray:
        raise NotImplementedError


def token_fold(model: Model, layer: str, input_shape: tuple, cache: dict) -> tokens.TokenFold | None:
    """The detected fold of a token ``layer`` for inputs of shape ``input_shape`` ``(B, C, H, W)``
    (None: a channel-first layer; ``ValueError`` for a 3-D layer with no patch grid), cached in
    ``cache`` per layer and per-sample shape."""
    key = (layer, tuple(input_shape[1:]))
    if key not in cache:
        proto = surrogate_model(model, strict=False)[0].require_proto("CAM")
        batch = model.input.shape[0] if isinstance(model.input.shape[0], int) else 1  # a pinned batch
        finder = tokens.GridFinder(proto, {model.input_name: (batch,) + key[1]})
        cache[key] = finder.require_fold(graph.resolve_layer(proto, layer), layer)
    return cache[key]


def fold_taps(taps: Taps, fold: Callable | None, layer: str, rank: int) -> Taps:
    """``taps`` with activations and gradients passed through ``fold`` (None: unchanged);
    ``ValueError`` unless they come out ``(N, C, *spatial)`` of the input's ``rank``."""
    if fold is None:
        return taps
    act = np.asarray(fold(taps.activations))
    grad = None if taps.gradients is None else np.asarray(fold(taps.gradients))
    if act.ndim != rank or (grad is not None and grad.shape != act.shape):
        raise ValueError(f"reshape_transform gave activations {act.shape} and gradients "
                         f"{None if grad is None else grad.shape} for layer {layer!r}; expected "
                         f"(B, C, *spatial) of rank {rank}")
    return dataclasses.replace(taps, activations=act, gradients=grad)


def weighted_sum(weights: np.ndarray, act: np.ndarray) -> np.ndarray:
    """``relu(Σ_k w_k A_k)`` → ``(N, 1, *s)`` float32; ``weights`` ``(N, C)`` or like ``act``."""
    w = weights.reshape(weights.shape + (1,) * (act.ndim - weights.ndim))
    return np.maximum((w * act).sum(1, keepdims=True), 0.0).astype(np.float32)


def weighted_sum_graph(b: graph.NodeBuilder, weights: str, t: GraphTaps) -> str:
    """Graph form of ``weighted_sum``: ``Relu(ReduceSum(weights · A, channels))``."""
    return b.op("Relu", [b.reduce("ReduceSum", b.op("Mul", [weights, t.activations]), [1])])


def channel_scores(method: Any, x: np.ndarray, t: Taps) -> np.ndarray:
    """Score-CAM's ``(N, C)`` target scores of ``x`` masked by each activation channel
    (upsampled linearly with ``align_corners=True``, min-max scaled ÷ (max − min + 1e-8)),
    run ``method.batch_size`` at a time through ``method.model``; channels with a constant
    activation mask the input to zero and share one forward pass. NaN where a run is not finite."""
    n, c = t.activations.shape[:2]
    out = np.empty((n, c))
    with tqdm(total=n * c, desc="ScoreCAM", unit="mask", disable=not method.verbose, delay=1.0,
              leave=False) as bar:
        for i in range(n):
            act, target = t.activations[i], t.target.select(np.array([i]))
            extra = method.model.sample_extra(t.extra, i, n)
            score = lambda batch: target(method.model.predict(batch, outputs=target.output, extra_inputs=extra,
                                                              batch_size=method.batch_size, verbose=False))
            lo, hi = act.reshape(c, -1).min(1), act.reshape(c, -1).max(1)
            live = np.flatnonzero(hi > lo)
            if live.size < c:  # constant channel → all-zero mask → one shared forward pass
                out[i, hi <= lo] = score(np.zeros_like(x[i])[None])[0]
                bar.update(c - live.size)
            for s in range(0, live.size, method.batch_size):
                ks = live[s:s + method.batch_size]
                up = linear_resize(act[None, ks], x.shape[2:], align_corners=True)[0]
                flat = up.reshape(len(ks), -1)
                lift = (-1,) + (1,) * (up.ndim - 1)
                masks = (up - flat.min(1).reshape(lift)) / (flat.max(1) - flat.min(1) + 1e-8).reshape(lift)
                out[i, ks] = score(x[i][None] * masks[:, None])
                bar.update(len(ks))
    return out


# ---------------------------------------------------------------------------- graph look-ups
def fc_weights(proto: onnx.ModelProto, layer_tensor: str, fc_layer: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(W (K, C), b (K,))`` of the fully connected layer after global pooling of
    ``layer_tensor``: the node named by ``fc_layer`` (node / tensor / module path), or the
    first Gemm / MatMul(+Add) reached from ``layer_tensor`` through a global pooling."""
    consts, users = constant_values(proto), graph.consumers(proto)
    if fc_layer is not None:
        tensor = graph.resolve_layer(proto, fc_layer)
        producers = {o: n for n in proto.graph.node for o in n.output}
        node = producers[tensor]
        while node.op_type in ("Cast", "Identity", "Clip") and node.input[0] in producers:
            node = producers[node.input[0]]  # float16 casts, a surrogate's saturation
        if node.op_type == "Add":  # MatMul + bias: the module's last node is the Add
            node = next((n for n in proto.graph.node if n.output[0] in node.input
                         and n.op_type == "MatMul"), node)
        if node.op_type not in ("Gemm", "MatMul"):
            raise UnsupportedModelError(f"fc_layers {fc_layer!r} is a {node.op_type} node "
                                        f"({node.name!r}); CAM needs a Gemm or MatMul")
    else:
        node, frontier, pooled = None, [layer_tensor], False
        for _ in range(12):
            nxt = []
            for t in frontier:
                for n in users.get(t, []):
                    if n.op_type in ("Gemm", "MatMul") and pooled:
                        node = n
                        break
                    if n.op_type in _POOLS or n.op_type in _PASS:
                        pooled = pooled or n.op_type in _POOLS
                        nxt.append(n.output[0])
                if node is not None:
                    break
            if node is not None or not nxt:
                break
            frontier = nxt
        if node is None:
            raise UnsupportedModelError(
                f"found no Gemm/MatMul after global pooling of {layer_tensor!r}; CAM needs "
                "layer → global pooling → fully connected: name the fc node with fc_layers, "
                "or use GradCAM")
    return _dense(node, consts, users)


def _dense(node, consts, users) -> tuple[np.ndarray, np.ndarray]:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    b_name = node.input[1]
    if b_name not in consts:
        raise UnsupportedModelError(f"the weights of {node.name!r} are not constants of the graph")
    mat = consts[b_name].astype(np.float64)
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            raise UnsupportedModelError(f"Gemm {node.name!r} with transA=1 is not supported for CAM")
        w = attrs.get("alpha", 1.0) * (mat if attrs.get("transB", 0) else mat.T)
        bias = np.zeros(w.shape[0])
        if len(node.input) > 2 and node.input[2]:
            bias = bias + attrs.get("beta", 1.0) * consts[node.input[2]].reshape(-1)
        return w, bias
    w, bias = mat.T, np.zeros(mat.shape[1])
    add = [n for n in users.get(node.output[0], []) if n.op_type == "Add"]
    if add:
        other = next((i for i in add[0].input if i != node.output[0]), None)
        if other in consts:
            bias = bias + consts[other].reshape(-1)
    return w, bias
