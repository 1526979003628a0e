"""Export an explaining model: one ONNX graph returning the model's outputs and a saliency map.

``export_explainer(model, "gradcam")`` builds the gradient graph with the portable backend
(onnx-ad, plain ONNX operators), picks each sample's class in-graph, and appends the CAM
weighting, the linear upsampling (``Resize``) and the per-sample normalisation, so any ONNX
runtime serves predictions and explanations with no Python and no onnx_xai.

Dynamic batch: onnx-ad needs static shapes, so the gradient graph is built at batch 2 and at
batch 3; the two graphs differ only in int64 shape constants (Reshape/Expand targets), whose
batch entries are then computed from ``Shape(input)[0]``. Spatial dims stay fixed.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import graph, registry, surrogate_graph, targets, tokens
from . import layout as layout_of
from .autodiff import SCORE, WEIGHTS, GradientRequest, input_shapes, passes, portable, score_graph
from .autolayer import choose_layer
from .engines.cam import GraphTaps
from .errors import UnsupportedModelError
from .finite import positive_int
from .runtime import Model

__all__ = ["export_explainer", "explainer_info", "export_methods"]


def export_methods() -> list[str]:
    """Names of the registered methods that can be written into a graph (``graph_rule``)."""
    return [info.name for info in registry.infos() if info.exportable]


@dataclass(frozen=True)
class ExportPlan:
    """What ``export_explainer`` decided: the method's instance and kind, the gradient
    ``core`` graph with its activation / gradient / target-weights tensors, the explained
    ``output``, the per-sample input shape, the fixed batch (None: dynamic), the target
    layer, the ``class_idx`` default, the post-processing switches and the activation of the
    explained score."""

    explainer: Any
    kind: str
    core: onnx.ModelProto
    activation: str
    gradient: str | None
    weights: str
    output: str
    per_sample: tuple
    fixed: int | None
    layer: str | None
    class_idx: int | None
    upsample: bool
    normalize: bool
    score_activation: str = "none"
    fold: Any = None  # tokens.TokenFold of a transformer token layer, folded in the graph

_FLIPPED = ("gradcam", "gradcampp", "cam")  # older exports carry no "hot": their flipped methods
CLASS_IDX, SALIENCY, REGION = "class_idx", "saliency", "region"
_META = "onnx_xai.explainer"
# metadata_props of an exported explainer, readable by any ONNX tool (and by ORT's
# ``session.get_modelmeta().custom_metadata_map``): the method, and which end of the
# ``saliency`` map is the important one ("high", or "low" for MONAI's flipped normaliser)
META_METHOD, META_HOT = "onnx_xai.method", "onnx_xai.hot"


def _opset(proto: onnx.ModelProto) -> int:
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if version < 13:
        raise UnsupportedModelError(f"the model uses ONNX opset {version}; export_explainer needs "
                                    "opset >= 13 (convert it with onnx.version_converter)")
    return version


# ---------------------------------------------------------------------------- batch relaxation
def _signature(proto: onnx.ModelProto) -> list:
    return [(n.op_type, tuple(n.input), tuple(n.output),
             tuple((a.name, str(helper.get_attribute_value(a))) for a in n.attribute
                   if a.type != onnx.AttributeProto.TENSOR)) for n in proto.graph.node]


def _relax_batch(p2: onnx.ModelProto, p3: onnx.ModelProto, batch_inputs: list[str]) -> onnx.ModelProto:
    """One graph valid for any batch from the same graph built at batches 2 and 3.

    Every constant that differs must be int64 with entries either equal or proportional to
    the batch (``v(3) / 3 == v(2) / 2``); each becomes ``coef · B + base`` computed from
    ``Shape(batch_inputs[0])[0]``. A constant of B equal rows (a class token expanded over
    the batch, folded by the gradient build) becomes its row expanded to B. Anything else
    raises ``UnsupportedModelError``.
    """
    if _signature(p2) != _signature(p3):
        raise UnsupportedModelError("the gradient graph's structure depends on the batch size; "
                                    "export with a fixed batch_size")
    c2, c3 = passes.constant_values(p2), passes.constant_values(p3)  # others: in _signature
    users = {}
    for node in p2.graph.node:
        for i in node.input:
            users.setdefault(i, []).append(f"{node.op_type} {node.name!r}")
    changed, tiled = {}, {}
    for name, v2 in c2.items():
        v3 = c3.get(name)
        if v3 is None or (v2.shape == v3.shape and np.array_equal(v2, v3)):
            continue
        axis = _batch_axis(v2, v3)
        if axis is not None:
            tiled[name] = (axis, np.take(v2, [0], axis=axis))
            continue
        d = v3.astype(np.int64) - v2.astype(np.int64) if v2.shape == v3.shape else None
        if v2.dtype != np.int64 or d is None or v2.ndim > 1 or not np.array_equal(v2[d != 0], 2 * d[d != 0]):
            raise UnsupportedModelError(
                f"constant {name!r} (read by {', '.join(users.get(name, ['?']))}) depends on the "
                "batch size in a way that cannot be computed from the input's shape; export with "
                "a fixed batch_size")
        changed[name] = (d, v2 - 2 * d)
    out = onnx.ModelProto()
    out.CopyFrom(p2)
    g = out.graph
    b = graph.NodeBuilder(out, _opset(out), "xai/batch")
    batch = b.op("Slice", [b.op("Shape", [batch_inputs[0]]), b.const([0]), b.const([1])])
    batch0 = b.op("Squeeze", [batch, b.const([0])])
    for name, (coef, base) in changed.items():
        src = batch if coef.ndim else batch0
        b.op("Add", [b.op("Mul", [src, b.const(coef)]), b.const(base)], out=name)
    for name, (axis, row) in tiled.items():
        dims = [b.const(row.shape[:axis]), batch, b.const(row.shape[axis + 1:])]
        b.op("Expand", [b.const(row, row.dtype), b.op("Concat", dims, axis=0)], out=name)
    changed.update(tiled)
    kept = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in changed)]
    inits = [t for t in g.initializer if t.name not in changed]
    del g.node[:], g.initializer[:]
    g.node.extend(b.nodes + kept)
    g.initializer.extend(inits)
    for value in g.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in batch_inputs and len(dims) and dims[0].dim_value == 2:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del g.value_info[:]
    return out


def _batch_axis(v2: np.ndarray, v3: np.ndarray) -> int | None:
    """The axis over which ``v2`` / ``v3`` repeat one slice 2 / 3 times (the batch axis of a
    constant that only repeats per sample), else None."""
    axes = [a for a in range(v2.ndim) if v2.shape[a] != v3.shape[a]] if v2.ndim == v3.ndim else []
    if len(axes) != 1 or (v2.shape[axes[0]], v3.shape[axes[0]]) != (2, 3):
        return None
    row = np.take(v2, [0], axis=axes[0])
    return axes[0] if bool((v2 == row).all()) and bool((v3 == row).all()) else None


# ---------------------------------------------------------------------------- cores
def _gradient_core(model: Model, proto: onnx.ModelProto, wrt: str, output: str,
                   sample_shapes: dict, batch: int, activation: str) -> tuple[onnx.ModelProto, str, str, str]:
    """Gradient graph at ``batch`` (score head with ``activation``) with the seed fixed to 1 and
    the probe removed. Returns (graph, activation tensor, gradient tensor ``(B, …, 1)``, weights input)."""
    shapes = input_shapes(model, batch, sample_shapes[model.input_name], sample_shapes)
    request = GradientRequest((wrt,), output, tuple(sorted(shapes.items())), activation=activation)
    static, sources, layers = score_graph(model, proto, request)
    built, grads, seed = portable.build(static, list(sources.values()), SCORE)
    src = sources[wrt]
    g = built.graph
    keep = [i for i in g.input if i.name not in (seed, WEIGHTS, src if wrt in layers else "")]
    del g.input[:]
    g.input.extend(keep)
    g.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), seed))
    act = layers.get(wrt, src)
    if wrt in layers:  # the probe adds zeros: read the activation directly
        for node in g.node:
            if node.op_type == "Add" and src in node.input:
                node.CopyFrom(helper.make_node("Identity", [act], list(node.output), name=node.name))
    return built, act, grads[src], WEIGHTS


def _class_head(b: graph.NodeBuilder, output: str, n_classes: int, weights: str) -> str:
    """``weights = one_hot(idx)`` ``(B, K)``, ``idx = class_idx < 0 ? argmax(output) : class_idx``
    ``(B,)`` (returned)."""
    am = b.op("ArgMax", [output], axis=1, keepdims=0)
    idx = b.op("Where", [b.op("Less", [CLASS_IDX, b.const(0)]), am, CLASS_IDX])
    b.op("OneHot", [idx, b.const(n_classes), b.const([0.0, 1.0], np.float32)], out=weights, axis=-1)
    return idx


def _dense_class_head(b: graph.NodeBuilder, output: str, rank: int, n_classes: int, weights: str) -> str:
    """A dense output ``(B, K, *s)`` (segmentation): ``idx = class_idx < 0 ? argmax_k max_s
    output : class_idx`` ``(B,)`` (returned); ``weights = one_hot(idx) · mask`` with ``mask``
    the ``region`` input ``(B | 1, *s)`` where it is >= 0, else where the argmax class is
    ``idx`` (a ``RegionTarget``; the default region of ones sums every position)."""
    ones = [1] * (rank - 1)
    top = b.op("ArgMax", [b.op("Reshape", [b.reduce("ReduceMax", output, list(range(2, rank))),
                                           b.const([0, -1])])], axis=1, keepdims=0)
    idx = b.op("Where", [b.op("Less", [CLASS_IDX, b.const(0)]), top, CLASS_IDX])
    hot = b.op("OneHot", [idx, b.const(n_classes), b.const([0.0, 1.0], np.float32)], axis=-1)
    hot = b.op("Reshape", [hot, b.const([0, n_classes] + ones[1:])])
    same = b.op("Equal", [b.op("ArgMax", [output], axis=1, keepdims=1), b.op("Reshape", [idx, b.const([-1] + ones)])])
    region = b.op("Unsqueeze", [REGION, b.const([1])])
    mask = b.op("Where", [b.op("Less", [region, b.const(0.0, np.float32)]),
                          b.op("Cast", [same], to=onnx.TensorProto.FLOAT), region])
    b.op("Mul", [hot, mask], out=weights)
    return idx


def _insert_after(g, producer_of: str, nodes: list) -> None:
    at = next(i for i, n in enumerate(g.node) if producer_of in n.output)
    for k, node in enumerate(nodes):
        g.node.insert(at + 1 + k, node)


# ---------------------------------------------------------------------------- post-processing
def _postprocess(b: graph.NodeBuilder, cam: str, size: tuple, upsample: bool, normalize: bool,
                 flip: bool) -> str:
    """Linear ``Resize`` (half_pixel, as ``F.interpolate``) to ``size``, then per-sample
    (min, max) → (0, 1), or → (1, 0) with ``flip`` (a constant map: 0, or unchanged)."""
    nd = 2 + len(size)
    if upsample:  # size: spatial only
        lead = b.op("Slice", [b.op("Shape", [cam]), b.const([0]), b.const([2])])
        sizes = b.op("Concat", [lead, b.const(list(size))], axis=0)
        cam = b.op("Resize", [cam, "", "", sizes], mode="linear",
                   coordinate_transformation_mode="half_pixel")
    if not normalize:
        return cam
    axes = list(range(1, nd))
    lo, hi = b.reduce("ReduceMin", cam, axes), b.reduce("ReduceMax", cam, axes)
    rng = b.op("Sub", [hi, lo])
    flat = b.op("Equal", [rng, b.const(0.0, np.float32)])
    norm = b.op("Div", [b.op("Sub", [cam, lo]), b.op("Where", [flat, b.const(1.0, np.float32), rng])])
    if flip:
        return b.op("Where", [flat, cam, b.op("Sub", [b.const(1.0, np.float32), norm])])
    return b.op("Where", [flat, b.const(0.0, np.float32), norm])


# ---------------------------------------------------------------------------- public
def export_explainer(model: Any, method: str = "gradcam", target_layers: str | Sequence[str] | None = None,
                     class_idx: int | None = None, upsample: bool = True, normalize: bool = True, *,
                     output: str | None = None, input_shape: Sequence[int] | None = None,
                     batch_size: int | None = None, fc_layers: str | None = "fc",
                     activation: str = "none", extra_shapes: dict | None = None,
                     layout: str | None = None) -> onnx.ModelProto:
    """One ONNX model returning the model's outputs and ``saliency``.

    Args:
        model: anything ``Model`` accepts (a classifier with output ``(B, K)``).
        method: a registered method with a graph rule (``export_methods()``: the CAM family
            but EigenCAM / ScoreCAM, ``"vanilla"``, ``"inputxgrad"``, ...); the numbers are
            those of the Python classes with their default post-processing.
        target_layers: CAM layer (name, or a list whose last entry is used, as
            ``layer_idx=-1``); default: the last layer with a spatial extent.
        class_idx: default of the optional ``class_idx`` input; None: −1 (argmax).
        upsample / normalize: CAM methods only: linear ``Resize`` to the input size; the
            class's default normaliser (GradCAM, GradCAMpp, CAM: MONAI's (min, max) → (1, 0),
            the others (min, max) → (0, 1)).
        output: the explained output (default: the first). input_shape: per-sample
            ``(C, H, W[, D])`` where the model's is not fixed. batch_size: fixed batch of
            the export; None: dynamic when the model's batch is. fc_layers: see ``CAM``.
        activation: the explained score, as a ``ClassTarget``'s: the class's raw output
            (``"none"``), its ``"softmax"`` probability or its ``"sigmoid"`` (gradient methods;
            the map equals the class called with ``ClassTarget(index, activation=...)``).
        extra_shapes: per-sample shapes of the model's other inputs where not fixed (they
            stay inputs of the explainer, fed as to the model).
        layout: the input's layout (``onnx_xai.layout``; None: the Model's): a channel-last
            model's explainer takes channel-last inputs (``input_shape`` in that layout) and
            returns CAM maps ``(B, 1, *spatial)``, input-shaped saliency channel-last.
    Returns:
        ``onnx.ModelProto``; inputs: the model's, plus ``class_idx`` int64 ``(B,)`` or ``(1,)``
        (optional, default [-1]; a negative entry means the argmax class); outputs: the
        model's, plus ``saliency`` float32 ``(B, 1, *spatial)`` (CAM) or input-shaped.
        ``metadata_props`` say which way the map reads: ``onnx_xai.method`` and
        ``onnx_xai.hot`` (``"low"`` for the flipped GradCAM / GradCAMpp / CAM normalisation,
        else ``"high"``); :func:`explainer_info` reads them, ``onnx-xai explain`` honours them.
    """
    info = registry.get(method)
    activation = targets.activation(activation)
    if not info.exportable:
        raise ValueError(f"method {method!r} cannot be written into an ONNX graph; exportable: "
                         f"{', '.join(export_methods())}")
    if class_idx is not None and (not isinstance(class_idx, (int, np.integer)) or class_idx < -1):
        raise ValueError(f"class_idx must be None, -1 or a class index >= 0, got {class_idx!r}")
    batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
    m = model if isinstance(model, Model) else Model(model, device="cpu", verbose=False)
    if input_shape is not None and layout_of.resolve(m, layout) == "nhwc":
        input_shape = (input_shape[-1],) + tuple(input_shape[:-1])
    m = layout_of.channel_first(m, layout)
    served = m.require_proto("export_explainer")
    m, record = surrogate_graph.surrogate_model(m)  # float16 / quantized / old opset: float32 copy
    proto = m.require_proto("export_explainer")
    contrib = [f"{n.domain}:{n.op_type} ({n.name!r})" for n in proto.graph.node
               if n.domain not in ("", "ai.onnx")]
    if contrib:
        raise UnsupportedModelError(f"the model uses non-standard operators {contrib[:5]}; an "
                                    "exported explainer must run on any ONNX runtime, so it needs "
                                    "standard ONNX operators only")
    _opset(proto)
    output = m.check_outputs(output)[0]
    per_sample = tuple(input_shape) if input_shape is not None else tuple(m.input.shape[1:])
    if not all(isinstance(s, (int, np.integer)) and s > 0 for s in per_sample):
        raise ValueError(f"input {m.input_name!r} is {m.input.describe()}: give its per-sample "
                         "shape with input_shape=(C, H, W[, D])")
    per_sample = tuple(int(s) for s in per_sample)
    fixed = m.input.shape[0] if isinstance(m.input.shape[0], int) else batch_size
    feeds = input_shapes(m, int(fixed or 1), per_sample, extra_shapes)
    static = graph.static_shapes(proto, feeds)
    shapes = graph.tensor_shapes(static)
    if graph.tensor_types(static).get(output) != onnx.TensorProto.FLOAT or len(shapes.get(output, ())) < 2:
        raise UnsupportedModelError(f"output {output!r} is {shapes.get(output)} at batch 1 (type "
                                    f"{graph.tensor_types(static).get(output)}); export_explainer "
                                    "needs a float32 (B, K) classifier or (B, K, *s) segmentation output")
    layer, explainer = None, (info.impl(m) if info.kind == "gradient" else None)
    if info.kind == "cam":
        layers = [target_layers] if isinstance(target_layers, str) else list(target_layers or [])
        if layers and layout_of.is_folded(m):  # an NHWC feature map: its NCHW twin
            layers[-1] = layout_of.channel_first_layer(proto, layers[-1])
        layer = (graph.resolve_layer(proto, layers[-1]) if layers else
                 choose_layer(proto, feeds, m.input_name).tensor)
        extra = {"fc_layers": fc_layers} if "fc_layers" in inspect.signature(info.impl).parameters else {}
        explainer = info.impl(m, layer, **extra)
    if not getattr(explainer, "gradients", True):
        if activation != "none":
            raise ValueError(f"method {method!r} reads no gradients: activation={activation!r} "
                             "changes nothing; leave it 'none'")
        core, act, grad, weights = proto, layer, None, "xai/weights"
    else:
        wrt = layer or m.input_name
        samples = {k: v[1:] for k, v in feeds.items()}
        build = lambda b: _gradient_core(m, proto, wrt, output, samples, b, activation)
        if fixed is not None:
            core, act, grad, weights = build(int(fixed))
        else:
            (c2, act, grad, weights), (c3, *_) = build(2), build(3)
            core = _relax_batch(c2, c3, [i.name for i in m.inputs])
    plan = ExportPlan(explainer, info.kind, core, act, grad, weights, output, per_sample, fixed,
                      layer, class_idx, bool(upsample), bool(normalize), activation,
                      fold=_layer_fold(proto, feeds, m.input_name, static, layer))
    out = _input_layout(_finish(m, proto, shapes, plan), m, info.kind)
    if record:  # the served model's I/O types at the edges; say what the surrogate changed
        out = surrogate_graph.cast_io(out, surrogate_graph.io_types(served))
        helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                     surrogate_graph.META: record.describe()})
    return out


def _layer_fold(proto: onnx.ModelProto, feeds: dict, image: str, static: onnx.ModelProto,
                layer: str | None) -> tokens.TokenFold | None:
    """How a CAM ``layer`` folds to ``(B, C, h, w)`` (None: channel-first, or no CAM)."""
    if layer is None:
        return None
    return tokens.GridFinder(proto, feeds, image, static=static).require_fold(layer, layer)


def _input_layout(out: onnx.ModelProto, m: Model, kind: str) -> onnx.ModelProto:
    """The explainer of a channel-first view (``onnx_xai.layout``) taking the channel-last
    input of the original model again; input-shaped saliency (gradient methods) transposed
    back to it."""
    if not layout_of.is_folded(m):
        return out
    rank = len(m.input.shape)
    perm = layout_of.last_perm(rank)
    out = layout_of.transposed_input(out, m.input_name, perm)
    if kind == "gradient":
        g = out.graph
        inner = f"{SALIENCY}__xai_channel_first"
        for node in g.node:
            node.output[:] = [inner if o == SALIENCY else o for o in node.output]
        g.node.append(helper.make_node("Transpose", [inner], [SALIENCY], perm=perm,
                                       name=f"{SALIENCY}__xai_layout"))
        dims = next(o for o in g.output if o.name == SALIENCY).type.tensor_type.shape.dim
        first = [onnx.TensorShapeProto.Dimension() for _ in dims]  # copies: dims is rewritten
        for copy, dim in zip(first, dims):
            copy.CopyFrom(dim)
        for i, axis in enumerate(perm):
            dims[i].CopyFrom(first[axis])
    return out


def _finish(m: Model, proto: onnx.ModelProto, shapes: dict, plan: ExportPlan) -> onnx.ModelProto:
    """The plan's core graph plus the class head, the map and the public inputs / outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(plan.core)
    g = out.graph
    b = graph.NodeBuilder(out, _opset(proto))
    dense = len(shapes[plan.output]) > 2  # a segmentation output: class_idx and region inputs
    idx = (_dense_class_head(b, plan.output, len(shapes[plan.output]), shapes[plan.output][1], plan.weights)
           if dense else _class_head(b, plan.output, shapes[plan.output][1], plan.weights))
    _insert_after(g, plan.output, b.nodes)
    b.nodes = []
    nd = 1 + len(plan.per_sample)  # rank of the input (and of a CAM layer)
    grad = None if plan.gradient is None else b.op("Squeeze", [plan.gradient, b.const([-1])])
    if plan.kind == "gradient":
        taps = GraphTaps(m.input_name, grad, None, idx, nd, plan.per_sample[0])
        b.op("Identity", [plan.explainer.graph_rule(b, taps)], out=SALIENCY)
    else:
        layer, act, channels = plan.layer, plan.activation, shapes.get(plan.layer, (0, 0))[1:2]
        if plan.fold is not None:  # a token layer: fold activations and gradients to (B, C, h, w)
            act, grad = plan.fold.graph(b, act), None if grad is None else plan.fold.graph(b, grad)
            channels = (plan.fold.channels(shapes[layer]),)
        elif len(shapes.get(layer, ())) != nd:
            raise ValueError(f"target layer {layer!r} has shape {shapes.get(layer)} per sample: a CAM "
                             "needs a layer with spatial extent (C, H, W[, D]) before global pooling")
        score = None
        if not plan.normalize:  # else left out: a positive per-sample factor cancels there
            scored = {"none": plan.output, "softmax": b.op("Softmax", [plan.output], axis=1),
                      "sigmoid": b.op("Sigmoid", [plan.output])}[plan.score_activation]
            s = b.reduce("ReduceSum", b.op("Mul", [scored, plan.weights]), list(range(1, len(shapes[plan.output]))))
            score = b.op("Reshape", [s, b.const([-1] + [1] * (nd - 1))])
        taps = GraphTaps(act, grad, score, idx, nd, channels[0])
        raw = plan.explainer.graph_rule(b, taps)
        post = _postprocess(b, raw, plan.per_sample[1:], plan.upsample, plan.normalize,
                            plan.explainer.hot == "low")
        b.op("Identity", [post], out=SALIENCY)
    g.node.extend(b.nodes)

    batch_dim = int(plan.fixed) if plan.fixed is not None else "batch"
    grid = tuple(plan.fold.grid) if plan.fold is not None else shapes.get(plan.layer, ())[2:]
    spatial = (plan.per_sample[1:] if plan.upsample else grid) if plan.layer else ()
    sal_shape = [batch_dim] + ([1] + list(spatial) if plan.layer else list(plan.per_sample))
    del g.output[:]
    g.output.extend(proto.graph.output)
    g.output.append(helper.make_tensor_value_info(SALIENCY, onnx.TensorProto.FLOAT, sal_shape))
    g.input.append(helper.make_tensor_value_info(CLASS_IDX, onnx.TensorProto.INT64, [None]))
    g.initializer.append(numpy_helper.from_array(
        np.array([-1 if plan.class_idx is None else int(plan.class_idx)], np.int64), CLASS_IDX))
    if dense:  # the region summed: (B | 1, *s) weights, -1 = where the class is predicted
        out_spatial = list(shapes[plan.output][2:])
        g.input.append(helper.make_tensor_value_info(REGION, onnx.TensorProto.FLOAT, [None] + out_spatial))
        g.initializer.append(numpy_helper.from_array(np.ones([1] + out_spatial, np.float32), REGION))
    del g.value_info[:]
    out = passes.name_nodes(passes.dead_nodes(out))
    out.ir_version = max(proto.ir_version, 4)  # inputs with initializers are optional from IR 4
    method = plan.explainer.info.name
    hot = "low" if plan.normalize and plan.kind == "cam" and plan.explainer.hot == "low" else "high"
    meta = {"method": method, "layer": plan.layer, "output": plan.output, "upsample": plan.upsample,
            "normalize": plan.normalize, "input_shape": list(plan.per_sample),
            "batch": "dynamic" if plan.fixed is None else int(plan.fixed), "hot": hot,
            "activation": plan.score_activation}
    helper.set_model_props(out, {**{p.key: p.value for p in proto.metadata_props},
                                 _META: json.dumps(meta), META_METHOD: method, META_HOT: hot})
    return out


def explainer_info(model: Any) -> dict:
    """What an exported explainer's metadata says about its ``saliency`` output.

    ``model``: a ``Model``, path, bytes, ``onnx.ModelProto`` or ``InferenceSession``.
    Returns ``{"method": str | None, "hot": "high" | "low", ...}`` (plus the export's
    settings when present). ``hot="low"`` means the most important regions have the
    *lowest* values (GradCAM, GradCAMpp and CAM normalised as MONAI's classes do, (min, max)
    → (1, 0)); draw ``max + min - saliency`` (for a normalised map: ``1 - saliency``) so
    that high = important. A model without this metadata (not made by ``export_explainer``)
    gets ``{"method": None, "hot": "high"}``.
    """
    if isinstance(model, Model):
        props = dict(model.session.get_modelmeta().custom_metadata_map)
    elif hasattr(model, "get_modelmeta"):  # an onnxruntime.InferenceSession
        props = dict(model.get_modelmeta().custom_metadata_map)
    else:
        proto = model if isinstance(model, onnx.ModelProto) else (
            onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray)) else onnx.load(str(model)))
        props = {p.key: p.value for p in proto.metadata_props}
    try:
        info = json.loads(props.get(_META, "{}"))
    except json.JSONDecodeError:
        info = {}
    info = info if isinstance(info, dict) else {}
    info["method"] = props.get(META_METHOD, info.get("method"))
    older = "low" if info.get("method") in _FLIPPED and info.get("normalize") else "high"  # exports before "hot"
    hot = props.get(META_HOT, info.get("hot", older))
    if hot not in ("high", "low"):
        raise ValueError(f"the model's metadata {META_HOT!r} is {hot!r}; expected 'high' or 'low'")
    info["hot"] = hot
    return info
