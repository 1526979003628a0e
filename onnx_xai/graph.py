"""ONNX graph surgery: name lookup, exposing tensors as outputs, making the batch dynamic.

Every function takes an ``onnx.ModelProto`` and returns a new one; the argument is never
modified.
"""
from __future__ import annotations

import difflib

import onnx
from onnx import shape_inference


def tensor_names(proto: onnx.ModelProto) -> list[str]:
    """All tensor names produced by nodes or fed as graph inputs, in graph order."""
    names = [i.name for i in proto.graph.input]
    for node in proto.graph.node:
        names.extend(o for o in node.output if o)
    return names


def closest_names(name: str, candidates: list[str], n: int = 5) -> list[str]:
    """Up to ``n`` candidates that look most like ``name`` (substring matches first)."""
    low = name.lower()
    contains = [c for c in candidates if low in c.lower()]
    fuzzy = difflib.get_close_matches(name, candidates, n=n, cutoff=0.3)
    seen: dict[str, None] = dict.fromkeys(contains[:n] + fuzzy)
    return list(seen)[:n]


def resolve_tensor(proto: onnx.ModelProto, name: str) -> str:
    """Map a tensor name or a node name to a tensor name of the graph.

    A node name stands for the node's first output. Raises ``ValueError`` listing the
    closest real names when ``name`` is neither.
    """
    names = tensor_names(proto)
    if name in names:
        return name
    for node in proto.graph.node:
        if node.name == name and node.output:
            return node.output[0]
    near = closest_names(name, names + [n.name for n in proto.graph.node if n.name])
    raise ValueError(f"no tensor or node named {name!r} in the model; closest names: {near}")


def _inferred_value_infos(proto: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        inferred = shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # shape inference is best effort; types are re-checked below
        inferred = proto
    graph = inferred.graph
    return {v.name: v for v in list(graph.value_info) + list(graph.output) + list(graph.input)}


def expose_tensors(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of ``proto`` whose graph outputs also include the tensors ``names``.

    Tensors that already are outputs are left as they are. The element type of each new
    output comes from ONNX shape inference; the shape is left free so that any batch works.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    present = {o.name for o in out.graph.output}
    missing = [n for n in names if n not in present]
    if not missing:
        return out
    infos = _inferred_value_infos(proto)
    for name in missing:
        info = infos.get(name)
        elem = info.type.tensor_type.elem_type if info is not None else 0
        if not elem:
            elem = onnx.TensorProto.FLOAT  # ORT re-infers; float is what explanations read
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return out


def with_dynamic_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Copy of ``proto`` with leading dimension ``batch`` of inputs and outputs made symbolic.

    Intermediate shape annotations are dropped (they may pin the old batch). Whether the
    graph really works for other batch sizes (a Reshape with a hard-coded batch does not)
    must be checked by running it: see ``Model``.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    initializers = {i.name for i in out.graph.initializer}
    for value in list(out.graph.input) + list(out.graph.output):
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del out.graph.value_info[:]
    return out
