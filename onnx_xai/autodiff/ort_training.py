"""Backend "ort-training": onnxruntime-training's GradientGraphBuilder.

onnxruntime-training installs as the ``onnxruntime`` module (it replaces onnxruntime in an
environment). ``import onnxruntime.training`` imports torch, so the builder is reached through
``onnxruntime.capi._pybind_state`` directly. Its gradient graphs use com.microsoft operators
(ReluGrad, ConvGrad, ...) that only that build can run.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import graph
from ..errors import UnsupportedModelError
from ..runtime import captured_output
from .passes import constant_values


def _builder():
    try:
        from onnxruntime.capi import _pybind_state as C
    except ImportError:
        return None
    return getattr(C, "GradientGraphBuilder", None)


def available() -> bool:
    """Whether the installed onnxruntime is the training build."""
    return _builder() is not None


def _guide(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Guided backprop: feed ``Relu(dY)`` instead of ``dY`` to every ReluGrad (and to the
    ClipGrad / gradient Where of Clip(0, max), treated as ReLU6)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for i, node in enumerate(out.graph.node):
        if node.op_type == "ReluGrad":
            positive = f"{node.input[0]}__guided_{i}"
            nodes.append(helper.make_node("Relu", [node.input[0]], [positive], name=positive))
            node.input[0] = positive
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _clip_min_zero_as_relu(proto: onnx.ModelProto) -> onnx.ModelProto:
    """For the guided rule: Clip(x, 0, max) → Min(Relu(x), max), so ORT emits a ReluGrad."""
    consts = constant_values(proto)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in out.graph.node:
        low = node.input[1] if node.op_type == "Clip" and len(node.input) > 1 else ""
        if low in consts and consts[low].size == 1 and float(consts[low].reshape(())) == 0.0:
            relu = f"{node.output[0]}__relu"
            nodes.append(helper.make_node("Relu", [node.input[0]], [relu], name=relu))
            if len(node.input) > 2 and node.input[2]:
                nodes.append(helper.make_node("Clip", [relu, "", node.input[2]],
                                              list(node.output), name=node.name))
            else:
                nodes.append(helper.make_node("Identity", [relu], list(node.output), name=node.name))
            continue
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _batchnorm_as_affine(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Inference-mode BatchNormalization with constant statistics → ``x · scale + shift``
    (onnxruntime-training has no gradient for BatchNormalization in inference mode)."""
    consts = constant_values(proto)  # also Constant nodes left by constant folding
    shapes = graph.tensor_shapes(proto)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for node in out.graph.node:
        if (node.op_type != "BatchNormalization" or len(node.output) != 1
                or not all(n in consts for n in node.input[1:5]) or node.input[0] not in shapes):
            continue
        gamma, beta, mean, var = (consts[n].astype(np.float64) for n in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        shape = (-1,) + (1,) * (len(shapes[node.input[0]]) - 2)
        names = [f"{node.name or node.output[0]}/{k}" for k in ("scale", "shift", "scaled")]
        out.graph.initializer.extend([
            numpy_helper.from_array(scale.astype(np.float32).reshape(shape), names[0]),
            numpy_helper.from_array((beta - mean * scale).astype(np.float32).reshape(shape), names[1])])
        out.graph.node.insert(list(out.graph.node).index(node), helper.make_node(
            "Mul", [node.input[0], names[0]], [names[2]], name=names[2]))
        node.CopyFrom(helper.make_node("Add", [names[2], names[1]], list(node.output), name=node.name))
    return out


def build(proto: onnx.ModelProto, sources: list[str], score: str, guided: bool,
          keep: list[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Gradient model of the scalar ``score`` w.r.t. the graph inputs ``sources``; outputs
    ``keep`` stay. Returns (model, source → gradient output ``<source>_grad``)."""
    builder_type = _builder()
    proto = _batchnorm_as_affine(proto)
    if guided:
        proto = _clip_min_zero_as_relu(proto)
    try:
        with captured_output():  # the builder logs to stderr at info level
            builder = builder_type(proto.SerializeToString(), set(keep) | {score}, set(sources),
                                   score)
            builder.build()
            built = onnx.load_from_string(builder.get_model())
    except Exception as exc:  # the builder reports unsupported ops as a generic RuntimeError
        raise UnsupportedModelError(f"onnxruntime-training could not build the gradient "
                                    f"graph: {exc}") from exc
    if guided:
        built = _guide(built)
    grads = {s: f"{s}_grad" for s in sources}
    present = {o.name for o in built.graph.output}
    for name in grads.values():
        if name not in present:
            built.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return built, grads
