"""Backend "portable": onnx-ad reverse mode, plain ONNX operators on any ORT build / EP."""
from __future__ import annotations

import contextlib
import threading

import onnx
import onnx_ad
from onnx_ad import rules as _rules

from ..errors import UnsupportedModelError
from . import passes

PREFIX = "__xai_adj_"
_REGISTRY_LOCK = threading.Lock()


def _guided_relu(ctx, node, grads):
    """Guided ReLU: dx = relu(dy) · (x > 0)."""
    x = node.input[0]
    dtype = ctx.dtype(x, node.output[0])
    positive = ctx.b.op("Cast", [ctx.b.op("Greater", [x, ctx.constant(0.0, dtype)])], to=dtype)
    return [ctx.b.op("Mul", [ctx.b.op("Relu", [grads[0]]), ctx.lift(positive)], stem="guided")]


def _guided_clip(ctx, node, grads):
    """Guided ReLU6 (Clip with min 0): dx = relu(dy) · (min < x < max); other Clips stay plain."""
    low = ctx.values.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if low is None or float(low) != 0.0:
        return _PLAIN["Clip"](ctx, node, grads)
    x = node.input[0]
    dtype = ctx.dtype(x, node.output[0])
    inside = ctx.b.op("Greater", [x, ctx.constant(0.0, dtype)])
    if len(node.input) > 2 and node.input[2]:
        inside = ctx.b.op("And", [inside, ctx.b.op("Less", [x, node.input[2]])])
    mask = ctx.b.op("Cast", [inside], to=dtype)
    return [ctx.b.op("Mul", [ctx.b.op("Relu", [grads[0]]), ctx.lift(mask)], stem="guided"),
            None, None][:len(node.input)]


_PLAIN = {"Relu": _rules.REVERSE["Relu"], "Clip": _rules.REVERSE["Clip"]}
_GUIDED = {"Relu": _guided_relu, "Clip": _guided_clip}


@contextlib.contextmanager
def _rules_for(guided: bool):
    """onnx-ad's reverse-rule registry with the guided ReLU rules swapped in (held under a
    lock and restored afterwards, so other builds see the plain rules)."""
    with _REGISTRY_LOCK:
        if guided:
            _rules.REVERSE.update(_GUIDED)
        try:
            yield
        finally:
            _rules.REVERSE.update(_PLAIN)


def build(proto: onnx.ModelProto, sources: list[str], score: str, guided: bool = False,
          optimize: bool = True) -> tuple[onnx.ModelProto, dict[str, str], str]:
    """Reverse-differentiate ``score`` (a scalar output) w.r.t. the graph inputs ``sources``.

    ``proto`` must carry static shapes. Returns (gradient model, source → gradient output,
    seed input). The seed input has shape (1,), the gradient outputs ``shape(source) + (1,)``.
    """
    try:
        with _rules_for(guided):
            adj = onnx_ad.reverse(proto, inputs=sources, outputs=[score], prefix=PREFIX,
                                  dim="nadj", layout="onnx")
    except onnx_ad.UnsupportedOperator as exc:
        raise UnsupportedModelError(f"the portable gradient backend (onnx-ad) cannot "
                                    f"differentiate this model: {exc}") from exc
    seed = PREFIX + score
    for value in adj.graph.input:
        if value.name == seed:
            dims = value.type.tensor_type.shape.dim
            dims[len(dims) - 1].Clear()
            dims[len(dims) - 1].dim_value = 1
    grads = {s: PREFIX + s for s in sources}
    if optimize:
        adj = passes.optimize(adj)
    return adj, grads, seed
