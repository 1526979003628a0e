"""Backend "ort-training": onnxruntime-training's GradientGraphBuilder.

onnxruntime-training installs as the ``onnxruntime`` module (it replaces onnxruntime in an
environment). ``import onnxruntime.training`` imports torch, so the builder is reached through
``onnxruntime.capi._pybind_state`` directly. Its gradient graphs use com.microsoft operators
(ReluGrad, ConvGrad, ...) that only that build can run.
"""
from __future__ import annotations

import onnx
from onnx import helper

from ..errors import UnsupportedModelError


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
    consts = {t.name: t for t in proto.graph.initializer}
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in out.graph.node:
        low = node.input[1] if node.op_type == "Clip" and len(node.input) > 1 else ""
        if low in consts and float(numpy_helper.to_array(consts[low]).reshape(())) == 0.0:
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


def build(proto: onnx.ModelProto, sources: list[str], score: str, guided: bool,
          keep: list[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Gradient model of the scalar ``score`` w.r.t. the graph inputs ``sources``; outputs
    ``keep`` stay. Returns (model, source → gradient output ``<source>_grad``)."""
    builder_type = _builder()
    if guided:
        proto = _clip_min_zero_as_relu(proto)
    try:
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
