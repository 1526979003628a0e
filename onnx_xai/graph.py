"""ONNX graph surgery: name lookup, layers, exposing tensors, dynamic batch, static shapes,
zero probes and score heads for gradients.

Every function takes an ``onnx.ModelProto`` and returns a new one; the argument is never
modified.
"""
from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference


def tensor_names(proto: onnx.ModelProto) -> list[str]:
    """All tensor names produced by nodes or fed as graph inputs, in graph order."""
    names = [i.name for i in proto.graph.input]
    for node in proto.graph.node:
        names.extend(o for o in node.output if o)
    return names


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node carries as attributes (``If``'s branches, ``Loop`` / ``Scan`` bodies)."""
    found = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            found.extend(attribute.graphs)
    return found


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name ``node`` reads: its inputs, and the outer names its subgraphs read
    (a subgraph reads outer tensors by name without listing them as inputs)."""
    reads = {name for name in node.input if name}
    for sub in subgraphs(node):
        reads |= _captures(sub)
    return reads


def _captures(sub: onnx.GraphProto) -> set[str]:
    """Outer-scope names a graph reads, through any depth of nested subgraphs."""
    reads = {value.name for value in sub.output}  # an output may be an outer name
    for node in sub.node:
        reads |= node_reads(node)
    defined = {value.name for value in sub.input} | {t.name for t in sub.initializer}
    defined |= {name for node in sub.node for name in node.output}
    return reads - defined - {""}


def consumers(proto: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name → the nodes of the main graph that read it (``node_reads``), each node
    once, in graph order."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node_reads(node):
            users.setdefault(name, []).append(node)
    return users


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
    found = _tensor_or_node_output(proto, name)
    if found is not None:
        return found
    near = closest_names(name, tensor_names(proto) + [n.name for n in proto.graph.node if n.name])
    raise ValueError(f"no tensor or node named {name!r} in the model; closest names: {near}")


def _tensor_or_node_output(proto: onnx.ModelProto, name: str) -> str | None:
    """``name`` if it is a tensor, the first output of the node called ``name``, else None."""
    if name in tensor_names(proto):
        return name
    return next((n.output[0] for n in proto.graph.node if n.name == name and n.output), None)


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


# ---------------------------------------------------------------------------- layers
_CONV_LIKE = {"Conv", "ConvTranspose", "Relu", "Clip", "BatchNormalization", "Add", "Mul",
              "Concat", "MaxPool", "AveragePool", "Sigmoid", "HardSigmoid", "HardSwish",
              "LeakyRelu", "Elu", "Gelu", "PRelu", "Swish", "Identity"}


@dataclass(frozen=True)
class Layer:
    """A candidate target layer: producing node, its output tensor, op type and shape
    (ints; None where unknown) for the input shape the listing was made for."""

    node: str
    tensor: str
    op_type: str
    shape: tuple | None


def _scope_paths(node_name: str) -> set[str]:
    """Dotted module paths a node's exporter scope stands for: ``/layer4/layer4.1/relu_1/Relu``
    → {``layer4.1.relu_1``, ``layer4.1.relu``} (scopes are attribute names or full dotted
    paths; ``_N`` marks a repeated call of one module)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    paths = {""}
    for part in parts:
        new = set()
        for p in paths:
            for opt in {part, re.sub(r"_\d+$", "", part)}:
                new.add(_join_scope(p, opt))
        paths = new
    return paths - {""}


def _join_scope(path: str, part: str) -> str:
    """``path`` + one scope ``part``: a full dotted path (``layers.1`` under ``layers``), a
    Sequential's child named after it (``blocks.0`` under ``layers.1.blocks``), or a child."""
    if not path:
        return part
    if part.startswith(path + "."):
        return part
    head, last = part.split(".", 1)[0], path.rsplit(".", 1)[-1]
    return path + part[len(head):] if "." in part and head == last else f"{path}.{part}"


_NAME_SCOPES = "pkg.torch.onnx.name_scopes"  # torch.onnx dynamo: the node's module path list


def _dynamo_paths(node: onnx.NodeProto) -> list[str]:
    """Module paths of a dynamo-exported node from its ``pkg.torch.onnx.name_scopes`` metadata
    (``['', 'layer4', 'layer4.1', 'layer4.1.relu', 'relu_10']``: the root, every enclosing
    module's dotted path, then the op's own name, which is left out)."""
    text = next((m.value for m in node.metadata_props if m.key == _NAME_SCOPES), None)
    if not text:
        return []
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [s for s in scopes[1:-1] if isinstance(s, str) and s] if isinstance(scopes, list) else []


def module_paths(node: onnx.NodeProto) -> set[str]:
    """Every dotted module path the node belongs to, from the TorchScript exporter's
    ``/layer4/layer4.1/...`` node-name scopes or the dynamo exporter's name-scope metadata."""
    return _scope_paths(node.name) | set(_dynamo_paths(node))


def module_names(proto: onnx.ModelProto) -> list[str]:
    """Dotted module paths found in the graph, in order of first appearance."""
    seen: dict[str, None] = {}
    for node in proto.graph.node:
        seen.update(dict.fromkeys(sorted(module_paths(node))))
    return list(seen)


def resolve_layer(proto: onnx.ModelProto, name: str) -> str:
    """Tensor name of a target layer given as tensor name, node name or dotted module path.

    A module path (``layer4``, ``class_layers.relu``, ``vit.layers.1.layernorm_before``) means
    the output of the last node inside that module's exporter scope, the tensor a PyTorch
    forward hook on the module sees; scopes come from TorchScript node names
    (``/layer4/...``) or the dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata.
    Unknown names raise ``ValueError`` listing the closest real names; BatchNorm folded into
    a Conv by the TorchScript exporter has no tensor of its own (the error says so).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a layer must be a non-empty string, got {name!r}")
    found = _tensor_or_node_output(proto, name)
    if found is not None:
        return found
    module = name.strip("/").replace("/", ".")
    last = None
    for node in proto.graph.node:
        if node.output and any(p == module or p.startswith(module + ".") for p in module_paths(node)):
            last = node
    if last is not None:
        return last.output[0]
    modules = module_names(proto)
    near = closest_names(name, modules + tensor_names(proto) + [n.name for n in proto.graph.node if n.name])
    hint = (" (the exporter folds BatchNorm into the preceding Conv, so a BatchNorm module has "
            "no tensor of its own: use the Conv or the activation after it)"
            if re.search(r"(bn|norm)", name, re.I) else "")
    raise ValueError(f"no tensor, node or module named {name!r} in the model{hint}; "
                     f"closest names: {near}")


def layers(proto: onnx.ModelProto, input_shapes: dict[str, tuple] | None = None) -> list[Layer]:
    """Candidate target layers: float node outputs, 4D/5D conv-like ones first (graph order
    within each group). ``input_shapes`` (name → shape) fixes free input dims for the shapes."""
    shaped = proto
    if input_shapes:
        try:
            shaped = static_shapes(proto, input_shapes)
        except Exception:  # listing is best effort: keep shapes unknown
            shaped = proto
    infos = _inferred_value_infos(shaped)
    out = []
    for node in proto.graph.node:
        if not node.output or not node.output[0] or node.op_type in ("Constant", "Shape"):
            continue
        info = infos.get(node.output[0])
        tt = info.type.tensor_type if info is not None else None
        if tt is not None and tt.elem_type and tt.elem_type not in FLOAT_TYPES:
            continue
        shape = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                 if tt is not None and tt.HasField("shape") else None)
        out.append(Layer(node.name, node.output[0], node.op_type, shape))
    conv_like = [l for l in out if l.shape is not None and len(l.shape) in (4, 5)
                 and l.op_type in _CONV_LIKE]
    return conv_like + [l for l in out if l not in conv_like]


# ---------------------------------------------------------------------------- static shapes
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16)  # the floating-point element types


def shape_of(value: onnx.ValueInfoProto) -> tuple | None:
    """The shape ``value`` declares: ints, None for a free or symbolic dim; None without one."""
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tt.shape.dim)


def static_shapes(proto: onnx.ModelProto, input_shapes: dict[str, tuple]) -> onnx.ModelProto:
    """Copy of ``proto`` with the given inputs fixed to concrete shapes and every tensor's
    shape inferred into ``value_info`` (ONNX inference, then ONNX Runtime's symbolic
    inference for what it leaves unknown, e.g. exporter-computed Pads).

    Raises ``ValueError`` for a shape that contradicts the model's declared one.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {i.name for i in out.graph.initializer}
    for value in out.graph.input:
        if value.name in inits or value.name not in input_shapes:
            continue
        shape = tuple(int(s) for s in input_shapes[value.name])
        declared = shape_of(value)
        if declared is not None and (len(declared) != len(shape) or any(
                d is not None and d != s for d, s in zip(declared, shape))):
            raise ValueError(f"input {value.name!r} has shape {declared}; cannot fix it to {shape}")
        dims = value.type.tensor_type.shape
        dims.Clear()
        for s in shape:
            dims.dim.add().dim_value = s
    for value in out.graph.output:  # the batch may be pinned differently there
        value.type.tensor_type.ClearField("shape")
    del out.graph.value_info[:]
    try:
        inferred = shape_inference.infer_shapes(out, strict_mode=False, data_prop=True)
    except Exception:
        inferred = out
    if _unknown_shapes(inferred):
        symbolic = _symbolic_shapes(out)
        if symbolic is not None and len(_unknown_shapes(symbolic)) < len(_unknown_shapes(inferred)):
            inferred = symbolic
    unknown = _unknown_shapes(inferred)
    if unknown:  # last resort: one run on zeros tells the shapes at these input shapes
        inferred = _shapes_by_running(inferred, input_shapes, unknown)
    return inferred


def _symbolic_shapes(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """ORT's symbolic shape inference, kept in memory (None where it cannot run).

    Its ``infer_shapes`` saves an incomplete result to ``./sym_shape_infer_temp.onnx`` (and
    external data files) in the caller's working folder; this drives the same steps and keeps
    what it inferred, complete or not. Needs sympy (a declared dependency); without it, the run
    in ``static_shapes`` still gives the shapes.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_opset
    except ImportError:
        return None
    if (get_opset(proto) or 0) < 7:
        return None
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess rank, verbose
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    except Exception:
        return None


def _shapes_by_running(proto: onnx.ModelProto, input_shapes: dict[str, tuple],
                       names: list[str]) -> onnx.ModelProto:
    """``proto`` with the shapes of ``names`` recorded from one ONNX Runtime run on zeros."""
    import numpy as np
    import onnxruntime as ort

    probe = expose_tensors(proto, names)
    inits = {i.name for i in proto.graph.initializer}
    batch = next((s[0] for s in input_shapes.values() if s), 1)
    feeds = {}
    for value in proto.graph.input:
        if value.name in inits:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = input_shapes.get(value.name) or shape_of(value) or ()
        # free dims of an input not given: the given batch on axis 0, else 1
        shape = [d if d is not None else (batch if k == 0 else 1) for k, d in enumerate(shape)]
        feeds[value.name] = np.zeros(shape, dtype)
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(names, feeds)
    except Exception:  # shapes stay unknown; the caller reports what needs them
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    types = tensor_types(proto)
    known = {v.name for v in out.graph.value_info}
    for name, value in zip(names, values):
        info = onnx.helper.make_tensor_value_info(
            name, types.get(name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype)), value.shape)
        if name in known:
            next(v for v in out.graph.value_info if v.name == name).CopyFrom(info)
        else:
            out.graph.value_info.append(info)
    try:
        return shape_inference.infer_shapes(out, strict_mode=False, data_prop=True)
    except Exception:
        return out


def _unknown_shapes(proto: onnx.ModelProto) -> list[str]:
    """Float tensors produced by nodes whose shape is not fully static."""
    known = {v.name: v for v in list(proto.graph.value_info) + list(proto.graph.output)}
    missing = []
    for node in proto.graph.node:
        for name in node.output:
            value = known.get(name)
            if not name:
                continue
            if value is None:
                missing.append(name)
                continue
            tt = value.type.tensor_type
            shape = shape_of(value)
            if tt.elem_type in FLOAT_TYPES and (shape is None or None in shape):
                missing.append(name)
    return missing


def tensor_shapes(proto: onnx.ModelProto) -> dict[str, tuple]:
    """Name → static shape of every tensor whose shape ``proto`` declares fully."""
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    for value in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        shape = shape_of(value)
        if shape is not None and None not in shape:
            shapes[value.name] = shape
    return shapes


def tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Name → ONNX element type of every tensor ``proto`` declares."""
    types = {i.name: i.data_type for i in proto.graph.initializer}
    for value in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        if value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


# ---------------------------------------------------------------------------- probes and heads
def add_probe(proto: onnx.ModelProto, tensor: str, probe: str, pre: str) -> onnx.ModelProto:
    """Copy of ``proto`` where ``tensor`` is recomputed as ``pre + probe``.

    The producer of ``tensor`` now writes ``pre``; a new float graph input ``probe`` (same
    shape, fed with zeros) is added right after it, so the graph stays sorted and
    d(score)/d(tensor) = d(score)/d(probe). ``pre`` holds the activation itself.
    Needs the static shape of ``tensor`` (see ``static_shapes``).
    """
    shapes, types = tensor_shapes(proto), tensor_types(proto)
    if tensor not in shapes:
        raise ValueError(f"the shape of tensor {tensor!r} is unknown; fix the input shapes first")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    index = next((i for i, n in enumerate(g.node) if tensor in n.output), None)
    if index is None:
        raise ValueError(f"tensor {tensor!r} is not produced by a node (graph inputs are "
                         "differentiated directly)")
    producer = g.node[index]
    producer.output[list(producer.output).index(tensor)] = pre
    g.node.insert(index + 1, onnx.helper.make_node("Add", [pre, probe], [tensor],
                                                   name=f"{probe}/Add"))
    elem = types.get(tensor, onnx.TensorProto.FLOAT)
    g.input.append(onnx.helper.make_tensor_value_info(probe, elem, list(shapes[tensor])))
    g.value_info.append(onnx.helper.make_tensor_value_info(pre, elem, list(shapes[tensor])))
    return out


def add_score_head(proto: onnx.ModelProto, output: str, weights: str, score: str,
                   activation: str = "none") -> onnx.ModelProto:
    """Copy of ``proto`` with a new input ``weights`` shaped like ``output`` and a new scalar
    output ``score = sum(activation(output) * weights)``; ``activation``: ``"none"``,
    ``"softmax"`` or ``"sigmoid"`` over the class axis 1 (as ``onnx_xai.targets``).

    With one-hot weights per sample (times a spatial region mask for segmentation) the
    gradient of ``score`` is, sample by sample, the gradient of each sample's own target.
    """
    shapes, types = tensor_shapes(proto), tensor_types(proto)
    if output not in shapes:
        raise ValueError(f"the shape of output {output!r} is unknown; fix the input shapes first")
    if activation not in ("none", "softmax", "sigmoid"):
        raise ValueError(f"activation must be 'none', 'softmax' or 'sigmoid', got {activation!r}")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    elem = types.get(output, onnx.TensorProto.FLOAT)
    scored = output
    if activation != "none":
        scored = f"{score}/{activation}"
        op = {"softmax": "Softmax", "sigmoid": "Sigmoid"}[activation]
        g.node.append(onnx.helper.make_node(op, [output], [scored], name=f"{score}/{op}",
                                            **({"axis": 1} if op == "Softmax" else {})))
    weighted = f"{score}/weighted"
    g.node.extend([onnx.helper.make_node("Mul", [scored, weights], [weighted], name=f"{score}/Mul"),
                   onnx.helper.make_node("ReduceSum", [weighted], [score], keepdims=0,
                                         name=f"{score}/ReduceSum")])
    g.input.append(onnx.helper.make_tensor_value_info(weights, elem, list(shapes[output])))
    g.output.append(onnx.helper.make_tensor_value_info(score, elem, []))
    return out


def depends_on(proto: onnx.ModelProto, sources: list[str], target: str,
               float_only: bool = True) -> bool:
    """Whether ``target`` is computed from any of ``sources`` through float tensors."""
    types = tensor_types(proto)
    live = set(sources)
    for node in proto.graph.node:
        if live.intersection(node.input):
            live.update(o for o in node.output if o and (
                not float_only or types.get(o, onnx.TensorProto.FLOAT) in FLOAT_TYPES))
    return target in live


class NodeBuilder:
    """Collects new nodes (``nodes``) and constants (initializers of ``proto``) with fresh
    ``xai/…`` names, opset-aware for reductions: how graph rules (``export``) write ONNX."""

    def __init__(self, proto: onnx.ModelProto, opset: int, prefix: str = "xai") -> None:
        self.proto, self.opset, self.prefix, self.nodes, self.n = proto, opset, prefix, [], 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{self.prefix}/{stem}_{self.n}"

    def const(self, value, dtype=np.int64) -> str:
        name = self.name("const")
        self.proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.name(op_type), **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: Sequence[int], out: str | None = None) -> str:
        """Reduce with keepdims=1 (axes as input from opset 18, ReduceSum from 13)."""
        if self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13):
            return self.op(op_type, [x, self.const(list(axes))], out, keepdims=1)
        return self.op(op_type, [x], out, axes=list(axes), keepdims=1)
