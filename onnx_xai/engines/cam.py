"""CAM engine: layer activations and gradients from one run, resizing, normalisers, and the
graph look-ups CAM methods need (the fc after global pooling, the last spatial layer).

Every CAM method is a weighting rule over ``Taps`` (activations ``(N, C, *s)``, gradients of
each sample's target score, the logits and the chosen classes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .. import graph
from ..autodiff import gradient_model
from ..autodiff.passes import constant_values
from ..errors import UnsupportedModelError
from ..finite import check_finite_output
from ..runtime import Model

_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "AveragePool")
_PASS = ("Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Relu", "Clip", "Sigmoid",
         "HardSwish", "Mul", "Transpose")


@dataclass
class Taps:
    """What one run gives a CAM method. ``activations``/``gradients``: ``(N, C, *s)``
    (gradients None for gradient-free runs); ``logits``: ``(N, K[, ...])``; ``class_idx``:
    ``(N,)``; ``scores``: ``(N,)`` float64 target score (the class logit, summed over space
    for dense outputs)."""

    activations: np.ndarray
    gradients: np.ndarray | None
    logits: np.ndarray
    class_idx: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        flat = self.logits.reshape(self.logits.shape[0], self.logits.shape[1], -1)
        return flat[np.arange(len(flat)), self.class_idx].sum(-1, dtype=np.float64)


# ---------------------------------------------------------------------------- running
def class_indices(class_idx: Any, n: int, n_classes: int) -> np.ndarray:
    """``class_idx`` (int or ``n`` ints, 0-based) as ``(n,)`` int64, or ``ValueError``."""
    idx = np.asarray(class_idx)
    if idx.ndim > 1 or idx.size not in (1, n) or idx.dtype.kind not in "iu":
        raise ValueError(f"class_idx must be None, an int or {n} ints (one per sample), got {class_idx!r}")
    idx = np.broadcast_to(idx.reshape(-1), (n,)).astype(np.int64)
    if ((idx < 0) | (idx >= n_classes)).any():
        raise ValueError(f"class_idx {idx.tolist()} out of range: the model has {n_classes} classes "
                         f"(0-based indices 0..{n_classes - 1})")
    return idx


def _argmax(logits: np.ndarray) -> np.ndarray:
    return logits.reshape(logits.shape[0], logits.shape[1], -1).max(-1).argmax(1)


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


def forward_taps(model: Model, layer: str, x: np.ndarray, class_idx: Any = None,
                 batch_size: int = 8) -> Taps:
    """Activations of ``layer`` and the logits, without gradients (one forward pass);
    ``NonFiniteError`` when either is not finite."""
    tensor = graph.resolve_layer(model.require_proto("CAM"), layer)
    child = model.with_outputs([tensor])
    out = model.output_names[0]
    got = child.predict(x, outputs=[out, tensor], batch_size=batch_size, verbose=False)
    logits, act = got[out], got[tensor]
    model.check_class_output(out, logits.shape)
    _check_spatial(act, layer)
    _check_finite(logits, out, act, layer)
    idx = _argmax(logits) if class_idx is None else class_indices(class_idx, len(x), logits.shape[1])
    return Taps(act, None, logits, idx)


def gradient_taps(model: Model, layer: str, x: np.ndarray, class_idx: Any = None,
                  batch_size: int = 8, output: str | None = None) -> Taps:
    """Activations of ``layer``, d(score)/d(activations) and the logits (of ``output``, default
    the first) from one run of the gradient model per batch. With ``class_idx`` None the
    argmax class is picked inside the graph (no extra forward pass) for ``(N, K)`` outputs.
    ``NonFiniteError`` when the logits, activations or gradients are not finite."""
    n = x.shape[0]
    gm = gradient_model(model, [layer], output=output, batch_size=min(n, batch_size),
                        input_shape=x.shape[1:])
    if class_idx is not None:
        class_idx = class_indices(class_idx, n, gm.output_shape[1])
    res = gm.run(x, class_idx)
    logits = res["outputs"][gm.output]
    act, grad = res["activations"][layer], res["gradients"][layer]
    _check_spatial(act, layer)
    _check_finite(logits, gm.output, act, layer, grad)
    return Taps(act, grad, logits, _argmax(logits) if class_idx is None else class_idx)


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
            out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
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


# ---------------------------------------------------------------------------- graph look-ups
def _consumers(proto: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def fc_weights(proto: onnx.ModelProto, layer_tensor: str, fc_layer: str | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(W (K, C), b (K,))`` of the fully connected layer after global pooling of
    ``layer_tensor``: the node named by ``fc_layer`` (node / tensor / module path), or the
    first Gemm / MatMul(+Add) reached from ``layer_tensor`` through a global pooling."""
    consts, users = constant_values(proto), _consumers(proto)
    if fc_layer is not None:
        tensor = graph.resolve_layer(proto, fc_layer)
        node = next(n for n in proto.graph.node if tensor in n.output)
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


def last_spatial_layer(proto: onnx.ModelProto, input_shapes: dict[str, tuple]) -> str:
    """Tensor name of the last node output (graph order) with a spatial dim > 1 — the layer
    before global pooling in a CNN classifier."""
    static = graph.static_shapes(proto, input_shapes)
    shapes, types = graph.tensor_shapes(static), graph.tensor_types(static)
    found = None
    for node in proto.graph.node:
        for t in node.output:
            s = shapes.get(t)
            if (s is not None and len(s) >= 3 and max(s[2:]) > 1
                    and types.get(t) in graph._FLOATS and node.op_type not in ("Constant", "Shape")):
                found = t
    if found is None:
        raise UnsupportedModelError("the model has no layer with spatial extent (N, C, H, W[, D]); "
                                    "name the feature layer explicitly")
    return found
