"""Backend "portable": onnx-ad reverse mode, plain ONNX operators on any ORT build / EP."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Mapping

import numpy as np
import onnx
import onnx_ad
from onnx_ad import rules as onnx_ad_rules

from ..errors import UnsupportedModelError
from . import passes

PREFIX = "__xai_adj_"


_STEP = 2.0 ** 100  # HardSigmoid slope: an exact 0/1 step for |y - bound| >= 2**-100


def _passes_mask(ctx, node):
    """0/1 mask of where a float32 Relu / Clip(lo, hi) passes its input through
    (lo < x < hi, bounds excluded as in torch), read off its output ``y`` as HardSigmoid
    steps ``clip(±2**100·(y − bound), 0, 1)``; None when another rule must do (other
    dtypes, bounds that are not constants or exceed 2**20, a Clip without bounds).

    Computed from ``y`` (not ``x``) with ops ONNX Runtime keeps in its blocked conv layout,
    the forward Conv keeps its fused activation and no tensor is reordered for the mask.
    Inputs within 2**-100 of a bound get a fractional mask.
    """
    y = node.output[0]
    if ctx.dtype(y, node.input[0]) != onnx.TensorProto.FLOAT:
        return None
    bounds = [0.0, None]
    if node.op_type == "Clip":
        for k in (1, 2):
            value = ctx.values.get(node.input[k]) if len(node.input) > k and node.input[k] else None
            if len(node.input) > k and node.input[k] and value is None:
                return None
            if value is not None and np.size(value) != 1:
                return None
            bounds[k - 1] = None if value is None else float(np.ravel(value)[0])
        if any(b is not None and not abs(b) <= 2.0 ** 20 for b in bounds) or bounds == [None, None]:
            return None
    steps = [ctx.b.op("HardSigmoid", [y], alpha=sign * _STEP, beta=-sign * _STEP * bound, stem="step")
             for sign, bound in ((1.0, bounds[0]), (-1.0, bounds[1])) if bound is not None]
    return steps[0] if len(steps) == 1 else ctx.b.op("Mul", steps, stem="step")


def _masked(ctx, node, grads, guided: bool):
    """dx = g · mask (guided: relu(g) · mask); the bounds get no gradient."""
    mask = _passes_mask(ctx, node)
    if mask is None:
        return None
    g = ctx.b.op("Relu", [grads[0]]) if guided else grads[0]
    stem = "guided" if guided else "a_" + node.input[0]
    return [ctx.b.op("Mul", [g, ctx.lift(mask)], stem=stem)] + [None] * (len(node.input) - 1)


def _plain(ctx, node, grads):
    return _masked(ctx, node, grads, False) or _ONNX_AD[node.op_type](ctx, node, grads)


def _guided_relu(ctx, node, grads):
    """Guided ReLU: dx = relu(dy) · (x > 0)."""
    fast = _masked(ctx, node, grads, True)
    if fast is not None:
        return fast
    x = node.input[0]
    dtype = ctx.dtype(x, node.output[0])
    positive = ctx.b.op("Cast", [ctx.b.op("Greater", [x, ctx.constant(0.0, dtype)])], to=dtype)
    return [ctx.b.op("Mul", [ctx.b.op("Relu", [grads[0]]), ctx.lift(positive)], stem="guided")]


def _guided_clip(ctx, node, grads):
    """Guided ReLU6 (Clip with min 0): dx = relu(dy) · (min < x < max); other Clips stay plain."""
    low = ctx.values.get(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if low is None or float(low) != 0.0:
        return _plain(ctx, node, grads)
    fast = _masked(ctx, node, grads, True)
    if fast is not None:
        return fast
    x = node.input[0]
    dtype = ctx.dtype(x, node.output[0])
    inside = ctx.b.op("Greater", [x, ctx.constant(0.0, dtype)])
    if len(node.input) > 2 and node.input[2]:
        inside = ctx.b.op("And", [inside, ctx.b.op("Less", [x, node.input[2]])])
    mask = ctx.b.op("Cast", [inside], to=dtype)
    return [ctx.b.op("Mul", [ctx.b.op("Relu", [grads[0]]), ctx.lift(mask)], stem="guided"),
            None, None][:len(node.input)]


# ---------------------------------------------------------------------------- per-call rules
# onnx-ad (0.3) looks its reverse rules up in one module-level table and takes no table per
# call. So each op type we override gets, once, a dispatching rule (through onnx-ad's own
# ``reverse_rule`` registration) that runs the rule of the table the current ``build`` call
# passed (a context variable: per thread and per task), and onnx-ad's own rule otherwise:
# other users of onnx-ad in the process see its rules unchanged, and no call swaps a global.
Rule = Callable  # (ctx, node, grads) -> one adjoint contribution per node input
_OVERRIDDEN = ("Relu", "Clip")
_CALL_RULES: contextvars.ContextVar[Mapping[str, Rule]] = contextvars.ContextVar("onnx_xai_reverse_rules",
                                                                                 default={})


def _onnx_ad_rule(op_type: str) -> Rule:
    """onnx-ad's own reverse rule for ``op_type`` (under our dispatcher, when installed)."""
    rule = onnx_ad_rules.REVERSE[op_type]
    return getattr(rule, "onnx_ad_rule", rule)


def _dispatcher(op_type: str) -> Rule:
    own = _onnx_ad_rule(op_type)

    def dispatch(ctx, node, grads):
        return _CALL_RULES.get().get(node.op_type, own)(ctx, node, grads)

    dispatch.onnx_ad_rule = own
    return dispatch


_ONNX_AD = {op: _onnx_ad_rule(op) for op in _OVERRIDDEN}
for _op in _OVERRIDDEN:
    if not hasattr(onnx_ad_rules.REVERSE[_op], "onnx_ad_rule"):
        onnx_ad_rules.reverse_rule(_op)(_dispatcher(_op))
del _op

PLAIN_RULES: Mapping[str, Rule] = {"Relu": _plain, "Clip": _plain}
GUIDED_RULES: Mapping[str, Rule] = {"Relu": _guided_relu, "Clip": _guided_clip}


@contextlib.contextmanager
def reverse_rules(table: Mapping[str, Rule]):
    """Within the block, onnx-ad differentiates the op types of ``table`` (of ``Relu`` /
    ``Clip``) with its rules; in this thread / task only."""
    unknown = set(table) - set(_OVERRIDDEN)
    if unknown:
        raise ValueError(f"reverse rules can be replaced for {_OVERRIDDEN} only, not {sorted(unknown)}")
    for op in table:
        if not hasattr(onnx_ad_rules.REVERSE[op], "onnx_ad_rule"):
            raise RuntimeError(f"onnx-ad's reverse rule for {op} was replaced after onnx_xai was "
                               "imported; the guided / masked rules cannot be applied")
    token = _CALL_RULES.set(dict(table))
    try:
        yield
    finally:
        _CALL_RULES.reset(token)


def build(proto: onnx.ModelProto, sources: list[str], score: str, guided: bool = False,
          optimize: bool = True) -> tuple[onnx.ModelProto, dict[str, str], str]:
    """Reverse-differentiate ``score`` (a scalar output) w.r.t. the graph inputs ``sources``.

    ``proto`` must carry static shapes. Returns (gradient model, source → gradient output,
    seed input). The seed input has shape (1,), the gradient outputs ``shape(source) + (1,)``.
    """
    try:
        with reverse_rules(GUIDED_RULES if guided else PLAIN_RULES):
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
