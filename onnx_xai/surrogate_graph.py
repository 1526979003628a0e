"""surrogate_graph: the float32, opset-16+ copy of a graph that gradients are taken on.

Gradient methods need a float32 graph at opset ≥ 16. Where the served model is not one — a
float16 conversion, a quantized model (QDQ, QOperator or dynamically quantized) or an old opset
— they run on its *surrogate*, built here and kept with the same tensor names:

- float16: float16 initializers, constants, graph inputs / outputs and ``Cast(to=float16)``
  become float32 (``keep_io_types`` True or False).
- QDQ: ``DequantizeLinear`` of a constant (weights, biases) → its float value;
  ``QuantizeLinear`` → ``DequantizeLinear`` on an activation → ``Identity`` (straight-through
  estimator: d y / d x = 1 where the served model rounds).
- QOperator: ``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``, ``QLinearMul``,
  ``QLinearGlobalAveragePool``, ``QLinearAveragePool``, ``QLinearSigmoid``,
  ``QLinearLeakyRelu``, ``QLinearConcat`` → their float op on dequantized weights; ops that only
  move quantized values (``MaxPool``, ``Flatten``, ``Reshape``, ...) run on the float ones.
- dynamic quantization: ``DynamicQuantizeLinear`` → ``MatMulInteger`` / ``ConvInteger`` →
  ``Cast`` → ``Mul(x_scale · w_scale)`` → float ``MatMul`` / ``Conv`` on the dequantized weight,
  so no gradient flows through a quantization scale.
- opset < 16: ``onnx.version_converter`` to opset 16.

Anything else quantized is refused (``UnsupportedModelError`` naming the op). The served
model is never changed; ``surrogate_model`` builds the copy once per ``Model`` and
``fidelity`` compares its outputs with the served model's.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import UnsupportedModelError

__all__ = ["SurrogateRecord", "Fidelity", "SurrogateWarning", "float_surrogate", "surrogate_model",
           "fidelity", "report", "cast_io", "io_types", "MIN_OPSET", "META"]
META = "onnx_xai.surrogate"  # metadata of graphs built on a surrogate: what was changed
MIN_OPSET = 16
logger = logging.getLogger("onnx_xai")
_SUFFIX = "__xai_float"


class SurrogateWarning(UserWarning):
    """A gradient method explained a float32 surrogate of the served model; the message gives
    the surrogate's fidelity (top-1 agreement, largest output difference)."""


@dataclass(frozen=True)
class SurrogateRecord:
    """What ``float_surrogate`` changed: ``kinds`` (``"float16"``, ``"quantized"``,
    ``"opset"``) and one line per rewrite in ``changes``. Empty: the graph is used as it is."""

    kinds: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.kinds)

    @property
    def exact(self) -> bool:
        """True when the surrogate computes the served model's function (an opset change only)."""
        return set(self.kinds) <= {"opset"}

    def describe(self) -> str:
        return "; ".join(self.changes)


@dataclass(frozen=True)
class Fidelity:
    """How closely the surrogate's outputs follow the served model's on ``samples`` inputs:
    ``top1_agreement`` (fraction of samples whose argmax over axis 1 agrees),
    ``max_abs_diff`` and ``max_rel_diff`` (the largest difference over the largest |served
    output|)."""

    samples: int
    top1_agreement: float
    max_abs_diff: float
    max_rel_diff: float
    record: SurrogateRecord = field(default_factory=SurrogateRecord)

    def __str__(self) -> str:
        return (f"top-1 agreement {self.top1_agreement:.0%} on {self.samples} input(s), largest "
                f"output difference {self.max_abs_diff:.3g} ({self.max_rel_diff:.2%} of the "
                "largest output)")


# ---------------------------------------------------------------------------- the graph
def float_surrogate(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, SurrogateRecord]:
    """The float32, opset-≥16 copy of ``proto`` and what was changed; ``proto`` itself (and an
    empty record) when it already is one. ``UnsupportedModelError`` names any quantized op the
    surrogate cannot express."""
    out, kinds, changes = onnx.ModelProto(), [], []
    out.CopyFrom(proto)
    if _has_float16(out):
        _float16_to_float32(out)
        kinds.append("float16")
        changes.append("float16 initializers, constants, inputs / outputs and casts made float32")
    done = _Dequantizer(out).run()
    if done:
        kinds.append("quantized")
        changes.extend(done)
    opset = _opset(out)
    if opset < MIN_OPSET:
        out = _upgrade_opset(out, opset)
        kinds.append("opset")
        changes.append(f"opset {opset} converted to {MIN_OPSET} (onnx.version_converter)")
    if not kinds:
        return proto, SurrogateRecord()
    del out.graph.value_info[:]  # types / shapes of rewritten tensors are inferred afresh
    _drop_unused_domains(out)
    return out, SurrogateRecord(tuple(kinds), tuple(changes))


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _upgrade_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        out = version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError / ConvertError / ValidationError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnsupportedModelError(
            f"the model's opset {opset} is too old for gradients (they need opset {MIN_OPSET}) and "
            f"onnx.version_converter cannot convert it: {first}; re-export it at opset "
            f"{MIN_OPSET} or later") from None
    out.ir_version = max(out.ir_version, 8)
    return out


def _drop_unused_domains(proto: onnx.ModelProto) -> None:
    used = {n.domain for n in proto.graph.node} | {"", "ai.onnx"}
    keep = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


# ---------------------------------------------------------------------------- float16
def _has_float16(proto: onnx.ModelProto) -> bool:
    g = proto.graph
    typed = list(g.input) + list(g.output) + list(g.value_info)
    return (any(t.data_type == TensorProto.FLOAT16 for t in g.initializer)
            or any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in typed)
            or any(_attr_int(n, "to") == TensorProto.FLOAT16 for n in g.node if n.op_type == "Cast"))


def _attr_int(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    return next((a.i for a in node.attribute if a.name == name), default)


def _float32_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)


def _float16_to_float32(proto: onnx.ModelProto) -> None:
    """In place: every float16 tensor, constant, I/O type and cast of ``proto`` made float32."""
    g = proto.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT16:
            g.initializer[i].CopyFrom(_float32_tensor(t))
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT16:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(_float32_tensor(a.t))
            elif a.name in ("to", "dtype") and a.type == onnx.AttributeProto.INT and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
            elif a.type == onnx.AttributeProto.GRAPH:
                raise UnsupportedModelError(f"float16 model with control flow (node {node.name!r}, "
                                            f"{node.op_type}): its surrogate is not supported")


# ---------------------------------------------------------------------------- quantized
_MOVERS = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity",
           "Slice", "Split", "Resize", "Concat", "DepthToSpace", "SpaceToDepth", "Gather",
           "Expand", "Tile", "Pad"}
_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
              "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul",
              "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
              "QLinearConcat", "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere",
              "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QOrderedMatMul",
              "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "MatMulNBits", "QLinearLeakyRelu"}


def _per_axis(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A scale / zero point as float32, shaped to broadcast along ``axis`` when it has several."""
    v = np.asarray(v, np.float32)
    return v.reshape([-1 if d == axis % ndim else 1 for d in range(ndim)]) if v.size > 1 else v.reshape(())


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """``(q - zero) · scale`` in float32, ``scale`` / ``zero`` per slice of ``axis`` when 1-D."""
    zero = 0.0 if zero is None else _per_axis(zero, q.ndim, axis)
    return ((q.astype(np.float32) - zero) * _per_axis(scale, q.ndim, axis)).astype(np.float32)


def _quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear of a constant: ``saturate(round(x / scale) + zero)`` in zero's type."""
    kind = np.dtype(np.uint8) if zero is None else np.asarray(zero).dtype
    z = 0.0 if zero is None else _per_axis(zero, x.ndim, axis)
    q = np.round(np.asarray(x, np.float32) / _per_axis(scale, x.ndim, axis)) + z
    info = np.iinfo(kind)
    return np.clip(q, info.min, info.max).astype(kind)


class _Dequantizer:
    """One pass over a quantized graph in node order (see the module docstring). ``real``
    maps each quantized tensor to the float tensor it stands for."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto, self.g = proto, proto.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        for node in self.g.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.real: dict[str, str] = {}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.g.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.nodes: list[onnx.NodeProto] = []
        self.skip: set[int] = set()
        self.counts: dict[str, int] = {}

    def run(self) -> list[str]:
        """Rewrite in place; one line per kind of rewrite done (empty: nothing quantized)."""
        if not any(n.op_type in _QUANT_OPS for n in self.g.node):
            return []
        for node in self.g.node:
            if id(node) not in self.skip:
                self._node(node)
        for out in self.g.output:
            if out.name in self.real:
                raise UnsupportedModelError(f"output {out.name!r} is quantized (integer): a "
                                            "surrogate of it has no float output to explain")
        del self.g.node[:]
        self.g.node.extend(self.nodes)
        self._dead_code()
        left = sorted({n.op_type for n in self.g.node if n.op_type in _QUANT_OPS})
        if left:
            raise UnsupportedModelError(
                f"quantized op(s) {left} are left on the path to the output after the float "
                "surrogate's rewrites: their gradient would flow through quantization scales "
                "only; this quantization scheme is not supported")
        return [f"{op}: {k} node(s) rewritten" for op, k in sorted(self.counts.items())]

    # ------------------------------------------------------------------ helpers
    def _count(self, op: str) -> None:
        self.counts[op] = self.counts.get(op, 0) + 1

    def _add_const(self, stem: str, value: np.ndarray) -> str:
        name = f"{stem}{_SUFFIX}"
        k = 0
        while name in self.consts:
            k += 1
            name = f"{stem}{_SUFFIX}{k}"
        self.consts[name] = value
        self.g.initializer.append(numpy_helper.from_array(value, name))
        return name

    def _const(self, node: onnx.NodeProto, i: int) -> np.ndarray | None:
        """Input ``i`` of ``node`` as a constant (None where absent)."""
        if i >= len(node.input) or not node.input[i]:
            return None
        if node.input[i] not in self.consts:
            raise UnsupportedModelError(f"{node.op_type} node {node.name!r}: input {node.input[i]!r} "
                                        "(a scale or zero point) is not a constant")
        return self.consts[node.input[i]]

    def _float_input(self, node: onnx.NodeProto, i: int, axis: int = 1) -> str:
        """The float tensor standing for quantized input ``i`` of ``node`` (its dequantized
        value when constant), its scale and zero point being inputs ``i + 1``, ``i + 2``."""
        name = node.input[i]
        if name in self.real:
            return self.real[name]
        if name in self.consts:
            value = _dequantize(self.consts[name], self._const(node, i + 1), self._const(node, i + 2), axis)
            return self._add_const(name, value)
        raise UnsupportedModelError(f"{node.op_type} node {node.name!r} reads {name!r}, a quantized "
                                    "tensor the float surrogate cannot trace back to a float one "
                                    "(a quantized graph input?)")

    def _emit(self, op: str, inputs: list[str], node: onnx.NodeProto, output: str | None = None,
              y_scale: int | None = None, **attrs: Any) -> str:
        """A float ``op`` node for quantized ``node`` writing ``output``, or (None) standing for
        ``node.output[0]`` saturated to the range of scale / zero point inputs ``y_scale``,
        ``y_scale + 1``."""
        out = output or f"{node.output[0]}__xai_op"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{node.name or op}{_SUFFIX}", **attrs))
        self._count(node.op_type)
        if output is None and y_scale is not None:  # a quantized result: saturated to its range
            self.real[node.output[0]] = self._saturate(node, out, y_scale)
        return out

    # ------------------------------------------------------------------ rules
    def _node(self, node: onnx.NodeProto) -> None:
        rule = getattr(self, f"_op_{node.op_type}", None)
        if rule is not None and node.domain in ("", "ai.onnx", "com.microsoft"):
            rule(node)
        elif node.op_type in _QUANT_OPS:
            raise UnsupportedModelError(f"quantized op {node.op_type!r} (node {node.name!r}) has no "
                                        "float surrogate here; export the float model or quantize "
                                        "it in QDQ format (onnxruntime.quantization.quantize_static)")
        elif any(i in self.real for i in node.input):
            self._mover(node)
        else:
            self.nodes.append(node)

    def _mover(self, node: onnx.NodeProto) -> None:
        """An op that only moves quantized values runs on the float values instead."""
        if node.op_type not in _MOVERS:
            raise UnsupportedModelError(f"{node.op_type} node {node.name!r} computes on quantized "
                                        "values; the float surrogate cannot express it")
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(self.real.get(i, i) for i in node.input)
        del new.output[:]
        for o in node.output:
            self.real[o] = f"{o}{_SUFFIX}"
            new.output.append(self.real[o])
        self.nodes.append(new)

    def _op_QuantizeLinear(self, node: onnx.NodeProto) -> None:
        if node.input[0] in self.consts:  # a float weight quantized in the graph: folded
            self.consts[node.output[0]] = _quantize(self.consts[node.input[0]], self._const(node, 1),
                                                    self._const(node, 2), _attr_int(node, "axis", 1))
            return
        self.real[node.output[0]] = self._saturate(node, node.input[0], 1)
        self._count("QuantizeLinear → DequantizeLinear (straight-through)")

    def _saturate(self, node: onnx.NodeProto, x: str, i: int) -> str:
        """``Clip(x)`` to the float range quantization with scale / zero point inputs ``i``,
        ``i + 1`` of ``node`` can hold (quantizers fold ReLUs into it): the straight-through
        estimator, gradient 1 inside the range and 0 outside, as torch's fake quantization."""
        scale, zero = self._const(node, i), self._const(node, i + 1)
        if np.size(scale) != 1 or (zero is not None and np.size(zero) != 1):
            raise UnsupportedModelError(f"{node.op_type} node {node.name!r} quantizes an activation "
                                        "per channel; the float surrogate supports per-tensor scales")
        info = np.iinfo(np.uint8 if zero is None else np.asarray(zero).dtype)
        z = 0.0 if zero is None else float(np.asarray(zero).reshape(()))
        bounds = [self._add_const(f"{node.output[0]}_{side}", np.array((v - z) * float(np.asarray(scale).reshape(())), np.float32))
                  for side, v in (("min", info.min), ("max", info.max))]
        out = f"{node.output[0]}{_SUFFIX}"
        self.nodes.append(helper.make_node("Clip", [x] + bounds, [out], name=f"{node.name or node.op_type}{_SUFFIX}_clip"))
        return out

    def _op_DynamicQuantizeLinear(self, node: onnx.NodeProto) -> None:
        self.real[node.output[0]] = node.input[0]
        self.nodes.append(node)  # its scale feeds the Mul chain until that is rewritten

    def _op_DequantizeLinear(self, node: onnx.NodeProto) -> None:
        axis = _attr_int(node, "axis", 1)
        name = node.input[0]
        if name in self.consts:
            q = self.consts[name]
            value = _dequantize(q, self._const(node, 1), self._const(node, 2), axis)
            self.consts[node.output[0]] = value
            self.g.initializer.append(numpy_helper.from_array(value, node.output[0]))
            self._count("DequantizeLinear of a constant")
            return
        moved = self._moved_constant(node)
        if moved is not None:  # e.g. Gather of a quantized embedding table: gather the floats
            self.nodes.append(moved)
            self._count("DequantizeLinear of a gathered / reshaped constant")
            return
        if name not in self.real:
            raise UnsupportedModelError(f"DequantizeLinear node {node.name!r} reads {name!r}, a "
                                        "quantized tensor that is not made in the graph (a quantized "
                                        "input?); the float surrogate cannot trace it")
        self._emit("Identity", [self.real[name]], node, output=node.output[0])

    def _moved_constant(self, node: onnx.NodeProto) -> onnx.NodeProto | None:
        """For ``DequantizeLinear(mover(constant q, ...))`` with a per-tensor scale: the mover
        (``Gather``, ``Reshape``, ...) applied to the dequantized constant, writing the
        DequantizeLinear's output; None for any other input."""
        producer = next((n for n in reversed(self.nodes) if node.input[0] in n.output), None)
        if producer is None or producer.op_type not in _MOVERS or producer.input[0] not in self.consts \
                or np.size(self._const(node, 1)) != 1:
            return None
        table = _dequantize(self.consts[producer.input[0]], self._const(node, 1), self._const(node, 2), 0)
        moved = onnx.NodeProto()
        moved.CopyFrom(producer)
        moved.input[0] = self._add_const(producer.input[0], table)
        del moved.output[:]
        moved.output.append(node.output[0])
        moved.name = f"{producer.name or producer.op_type}{_SUFFIX}"
        return moved

    @staticmethod
    def _attrs(node: onnx.NodeProto, drop: tuple[str, ...] = ()) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}

    def _op_QLinearConv(self, node: onnx.NodeProto) -> None:
        x, w = self._float_input(node, 0), self._float_input(node, 3, axis=0)
        inputs = [x, w]
        if len(node.input) > 8 and node.input[8]:
            scale = np.asarray(self._const(node, 1), np.float32) * np.asarray(self._const(node, 4), np.float32)
            inputs.append(self._add_const(node.input[8], (self._const(node, 8) * scale).astype(np.float32)))
        self._emit("Conv", inputs, node, y_scale=6, **self._attrs(node))

    def _op_QLinearMatMul(self, node: onnx.NodeProto) -> None:
        self._emit("MatMul", [self._float_input(node, 0), self._float_input(node, 3, axis=-1)], node,
                   y_scale=6)

    def _op_QGemm(self, node: onnx.NodeProto) -> None:
        attrs = self._attrs(node)
        a = self._float_input(node, 0)
        b = self._float_input(node, 3, axis=0 if attrs.get("transB", 0) else 1)
        inputs = [a, b]
        if len(node.input) > 6 and node.input[6]:
            scale = np.asarray(self._const(node, 1), np.float32) * np.asarray(self._const(node, 4), np.float32)
            inputs.append(self._add_const(node.input[6], (self._const(node, 6) * scale).astype(np.float32)))
        float_out = len(node.input) <= 7 or not node.input[7]  # no y_scale: QGemm returns floats
        self._emit("Gemm", inputs, node, output=node.output[0] if float_out else None, y_scale=7,
                   **{k: v for k, v in attrs.items() if k in ("alpha", "transA", "transB")},
                   **({"beta": 1.0} if len(inputs) == 3 else {}))

    def _binary(self, node: onnx.NodeProto, op: str) -> None:
        self._emit(op, [self._float_input(node, 0), self._float_input(node, 3)], node, y_scale=6)

    def _op_QLinearAdd(self, node: onnx.NodeProto) -> None:
        self._binary(node, "Add")

    def _op_QLinearMul(self, node: onnx.NodeProto) -> None:
        self._binary(node, "Mul")

    def _op_QLinearGlobalAveragePool(self, node: onnx.NodeProto) -> None:
        if self._attrs(node).get("channels_last", 0):
            raise UnsupportedModelError(f"QLinearGlobalAveragePool node {node.name!r} is channels-last")
        self._emit("GlobalAveragePool", [self._float_input(node, 0)], node, y_scale=3)

    def _op_QLinearAveragePool(self, node: onnx.NodeProto) -> None:
        attrs = self._attrs(node)
        if attrs.pop("channels_last", 0):
            raise UnsupportedModelError(f"QLinearAveragePool node {node.name!r} is channels-last")
        self._emit("AveragePool", [self._float_input(node, 0)], node, y_scale=3, **attrs)

    def _op_QLinearSigmoid(self, node: onnx.NodeProto) -> None:
        self._emit("Sigmoid", [self._float_input(node, 0)], node, y_scale=3)

    def _op_QLinearLeakyRelu(self, node: onnx.NodeProto) -> None:
        self._emit("LeakyRelu", [self._float_input(node, 0)], node, y_scale=3, **self._attrs(node))

    def _op_QLinearConcat(self, node: onnx.NodeProto) -> None:
        inputs = [self._float_input(node, i) for i in range(2, len(node.input), 3)]
        self._emit("Concat", inputs, node, y_scale=0, **self._attrs(node))

    def _op_MatMulInteger(self, node: onnx.NodeProto) -> None:
        self._integer(node, "MatMul", axis=-1)

    def _op_ConvInteger(self, node: onnx.NodeProto) -> None:
        self._integer(node, "Conv", axis=0)

    def _integer(self, node: onnx.NodeProto, op: str, axis: int) -> None:
        """``XInteger(a, w) → Cast → Mul(a_scale · w_scale)`` (onnxruntime's quantize_dynamic)
        → float ``op(a's float, dequantized w)`` writing the Mul's output."""
        what = f"{node.op_type} node {node.name!r}"
        a, w = node.input[0], node.input[1]
        if a not in self.real or w not in self.consts:
            raise UnsupportedModelError(f"{what}: expected a dynamically quantized activation times a "
                                        "constant quantized weight (onnxruntime's quantize_dynamic)")
        cast = self._only_reader(node.output[0], "Cast", what)
        mul = self._only_reader(cast.output[0], "Mul", what)
        scales = next(i for i in mul.input if i != cast.output[0])
        w_scale = self._weight_scale(scales, a, what)
        zero = self.consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        weight = self._add_const(w, _dequantize(self.consts[w], w_scale.reshape(-1), zero, axis))
        self.skip |= {id(cast), id(mul)}
        self._emit(op, [self.real[a], weight], node, output=mul.output[0],
                   **self._attrs(node) if op == "Conv" else {})

    def _only_reader(self, tensor: str, op: str, what: str) -> onnx.NodeProto:
        readers = self.readers.get(tensor, [])
        if len(readers) != 1 or readers[0].op_type != op:
            raise UnsupportedModelError(f"{what}: its result should go to one {op} (onnxruntime's "
                                        f"quantize_dynamic pattern), found {[n.op_type for n in readers]}")
        return readers[0]

    def _weight_scale(self, scales: str, a: str, what: str) -> np.ndarray:
        """The weight's scale in ``scales = a_scale · w_scale``."""
        producer = next((n for n in self.g.node if scales in n.output), None)
        dql = next((n for n in self.g.node if n.op_type == "DynamicQuantizeLinear" and a == n.output[0]), None)
        if producer is None or dql is None or producer.op_type != "Mul" or dql.output[1] not in producer.input:
            raise UnsupportedModelError(f"{what}: its output scale is not activation scale × weight "
                                        "scale (onnxruntime's quantize_dynamic pattern)")
        other = next(i for i in producer.input if i != dql.output[1])
        if other not in self.consts:
            raise UnsupportedModelError(f"{what}: the weight scale {other!r} is not a constant")
        return np.asarray(self.consts[other], np.float32)

    def _dead_code(self) -> None:
        needed = {o.name for o in self.g.output}
        kept = []
        for node in reversed(self.g.node):
            if needed.intersection(node.output):
                kept.append(node)
                needed |= set(node.input)
                for a in node.attribute:  # names read by subgraphs
                    if a.type == onnx.AttributeProto.GRAPH:
                        needed |= {i for n in a.g.node for i in n.input}
        del self.g.node[:]
        self.g.node.extend(reversed(kept))
        inits = [t for t in self.g.initializer if t.name in needed]
        del self.g.initializer[:]
        self.g.initializer.extend(inits)


def io_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of each graph input and output of ``proto`` (by name)."""
    return {v.name: v.type.tensor_type.elem_type for v in list(proto.graph.input) + list(proto.graph.output)}


def cast_io(proto: onnx.ModelProto, types: dict[str, int]) -> onnx.ModelProto:
    """Copy of ``proto`` (a graph built on a surrogate, float32 at its edges) whose inputs and
    outputs named in ``types`` take / return those element types again, through ``Cast``
    nodes at the edges: a float16 model's explainer takes and returns float16 tensors."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    front, back = [], []
    for value, is_input in [(v, True) for v in g.input] + [(v, False) for v in g.output]:
        elem = types.get(value.name)
        if elem is None or elem == value.type.tensor_type.elem_type:
            continue
        inner = f"{value.name}{_SUFFIX}"
        for node in g.node:
            node.input[:] = [inner if i == value.name else i for i in node.input]
            if not is_input:
                node.output[:] = [inner if o == value.name else o for o in node.output]
        src, dst, to = (value.name, inner, value.type.tensor_type.elem_type) if is_input else (inner, value.name, elem)
        (front if is_input else back).append(
            helper.make_node("Cast", [src], [dst], to=to, name=f"{value.name}__xai_cast"))
        value.type.tensor_type.elem_type = elem
    nodes = front + list(g.node) + back
    del g.node[:]
    g.node.extend(nodes)
    return out


# ---------------------------------------------------------------------------- models
def surrogate_model(model, strict: bool = True) -> tuple[Any, SurrogateRecord]:
    """``(Model of the surrogate, record)`` for a ``Model`` (built once, kept in its memo);
    ``(model, empty record)`` when its graph needs no surrogate. A graph the surrogate cannot
    express raises ``UnsupportedModelError`` when ``strict`` (gradients), else gives the
    model itself (forward-only uses: activations, layer names), logging why."""
    memo = model.memo("surrogate")
    if "model" not in memo:
        try:
            proto, record = float_surrogate(model.require_proto("gradients"))
        except UnsupportedModelError as exc:
            memo["error"], memo["model"] = exc, (model, SurrogateRecord())
        else:
            if record:
                logger.info("gradients are taken on a float32 surrogate of the model: %s", record.describe())
            memo["model"] = (model.derive(proto) if record else model, record)
    if "error" in memo:
        if strict:
            raise memo["error"]
        logger.info("no float32 surrogate (%s); reading the served graph", memo["error"])
    return memo["model"]


def fidelity(served: np.ndarray, surrogate: np.ndarray, record: SurrogateRecord | None = None) -> Fidelity:
    """``Fidelity`` of ``surrogate`` outputs ``(N, K, ...)`` to the ``served`` ones."""
    served = np.asarray(served, np.float64)
    surrogate = np.asarray(surrogate, np.float64)
    if served.shape != surrogate.shape:
        raise ValueError(f"served outputs {served.shape} and surrogate outputs {surrogate.shape} differ in shape")
    diff = float(np.max(np.abs(served - surrogate))) if served.size else 0.0
    scale = float(np.max(np.abs(served))) if served.size else 0.0
    if served.ndim >= 2 and served.shape[1] > 1:
        agree = float(np.mean(np.argmax(served, 1) == np.argmax(surrogate, 1)))
    else:
        agree = 1.0
    return Fidelity(int(served.shape[0]), agree, diff, diff / scale if scale > 0 else diff,
                    record or SurrogateRecord())


def report(fid: Fidelity, first: bool) -> None:
    """Log ``fid``; a ``SurrogateWarning`` the ``first`` time for an approximate surrogate
    (float16, quantized), and whenever a top-1 class differs or an exact one (an opset
    change) does not reproduce the served outputs (relative difference over 1e-4)."""
    text = (f"explained through a float32 surrogate of the served model "
            f"({', '.join(fid.record.kinds)}): {fid}")
    logger.info(text)
    off = fid.top1_agreement < 1.0 or (fid.record.exact and fid.max_rel_diff > 1e-4)
    if off or (first and not fid.record.exact):
        warnings.warn(text, SurrogateWarning, stacklevel=3)
