"""Optimisation passes for gradient models (onnx-ad output run by ONNX Runtime).

Each pass takes a model with static shapes and returns a new, equivalent one; ``optimize``
runs them all. Found with ORT's profiler on EfficientNet-Lite0 (see benchmarks/gradients.py):
``Where(mask, g, 0)`` is slow in ORT, dead adjoints of constants are still run, stride-1
ConvTranspose is much slower than the equivalent Conv, elementwise ops on onnx-ad's 5D
(seed-axis) tensors take ORT's slow broadcast path, and every op outside ORT's blocked NCHWc
conv layout costs two reorders. ``conv_padding`` is different: it runs on the forward graph
before differentiation, for correctness (Conv padding onnx-ad's adjoint gets wrong).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx_ad.fold import fold_constants

from .. import graph


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


def constant_values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Name → value of every initializer, ``Constant`` node output, and ``Identity`` of one
    (exporters alias shared constants through Identity)."""
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _fresh(proto: onnx.ModelProto, stem: str, taken: set[str]) -> str:
    i = len(taken)
    while f"{stem}_{i}" in taken:
        i += 1
    taken.add(f"{stem}_{i}")
    return f"{stem}_{i}"


def _int64(proto: onnx.ModelProto, stem: str, taken: set[str], values) -> str:
    """Add ``values`` as a fresh int64 initializer of ``proto`` (shapes, axes, bounds); its name."""
    name = _fresh(proto, stem, taken)
    proto.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name


def _all_names(proto: onnx.ModelProto) -> set[str]:
    names = set(graph.tensor_names(proto)) | {t.name for t in proto.graph.initializer}
    return names | {n.name for n in proto.graph.node}


def where_to_mul(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``Where(c, g, 0)`` → ``Mul(g, Cast(c))`` and ``Where(c, 0, g)`` → ``Mul(g, Cast(Not(c)))``
    for a scalar zero constant (the ReLU/Clip adjoints). Same values for finite ``g``; left
    alone where ``g`` may not be (a constant holding inf, as an attention mask's
    ``Where(m, 0, -inf)``, or a NaN guard ``Where(IsNaN(g), 0, g)``)."""
    consts = constant_values(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    shapes = graph.tensor_shapes(proto)
    out = _copy(proto)
    taken = _all_names(out)
    nodes = []
    for node in out.graph.node:
        zero_at = [i for i in (1, 2) if node.op_type == "Where" and node.input[i] in consts
                   and consts[node.input[i]].size == 1 and consts[node.input[i]].ndim <= 1
                   and float(consts[node.input[i]].reshape(())) == 0.0
                   and consts[node.input[i]].dtype.kind == "f"]
        cond, ranks = node.input[0] if node.op_type == "Where" else "", []
        if zero_at and len(zero_at) == 1 and not _maybe_nonfinite(node.input[3 - zero_at[0]], cond,
                                                                   consts, producers):
            g = node.input[3 - zero_at[0]]
            ranks = [len(shapes[t]) for t in (cond, g, node.output[0]) if t in shapes]
        if len(ranks) != 3 or max(ranks[:2]) != ranks[2]:
            nodes.append(node)
            continue
        zero = consts[node.input[zero_at[0]]]
        if zero_at[0] == 1:  # the gradient flows where the condition is false
            negated = _fresh(out, "where_not", taken)
            nodes.append(helper.make_node("Not", [cond], [negated], name=negated))
            cond = negated
        mask = _fresh(out, "where_mask", taken)
        nodes.append(helper.make_node("Cast", [cond], [mask], name=mask,
                                      to=helper.np_dtype_to_tensor_dtype(zero.dtype)))
        nodes.append(helper.make_node("Mul", [g, mask], list(node.output), name=node.name))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _maybe_nonfinite(g: str, cond: str, consts: dict, producers: dict) -> bool:
    """Whether ``Where``'s kept value ``g`` may hold NaN / inf (0 · inf is NaN, so no Mul)."""
    if g in consts:
        return not np.isfinite(consts[g]).all()
    return cond in producers and producers[cond].op_type in ("IsNaN", "IsInf")


def dead_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes none of whose outputs reach a graph output, and unused initializers."""
    out = _copy(proto)
    needed = {o.name for o in out.graph.output}
    kept = []
    for node in reversed(out.graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed |= graph.node_reads(node)
    del out.graph.node[:]
    out.graph.node.extend(reversed(kept))
    inits = [t for t in out.graph.initializer if t.name in needed]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    used = {v.name for v in out.graph.value_info} & needed
    infos = [v for v in out.graph.value_info if v.name in used]
    del out.graph.value_info[:]
    out.graph.value_info.extend(infos)
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def conv_transpose_to_conv(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Stride-1 ``ConvTranspose`` with a constant kernel → ``Conv`` with the kernel flipped,
    its in/out channels swapped per group, and the pads mirrored (``k_eff - 1 - pad``)."""
    consts = {t.name: t for t in proto.graph.initializer}
    shapes = graph.tensor_shapes(proto)
    out = _copy(proto)
    taken = _all_names(out)
    for node in out.graph.node:
        if node.op_type != "ConvTranspose" or node.input[1] not in consts:
            continue
        w = numpy_helper.to_array(consts[node.input[1]])
        k = list(w.shape[2:])
        n = len(k)
        strides = list(_attr(node, "strides", [1] * n))
        dil = list(_attr(node, "dilations", [1] * n))
        out_pad = list(_attr(node, "output_padding", [0] * n))
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        if any(s != 1 for s in strides) or any(out_pad) or auto_pad not in (b"NOTSET", "NOTSET"):
            continue
        keff = [(kk - 1) * d + 1 for kk, d in zip(k, dil)]
        pads = _transpose_pads(node, shapes, keff)
        if pads is None:
            continue
        mirrored = [keff[i % n] - 1 - p for i, p in enumerate(pads)]
        if any(q < 0 for q in mirrored):
            continue
        group = int(_attr(node, "group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        flipped = (w.reshape(group, cin // group, cout_g, *k).swapaxes(1, 2)
                   .reshape(group * cout_g, cin // group, *k))
        flipped = np.ascontiguousarray(np.flip(flipped, axis=tuple(range(2, 2 + n))))
        name = _fresh(out, node.input[1] + "_flipped", taken)
        out.graph.initializer.append(numpy_helper.from_array(flipped, name))
        conv = helper.make_node("Conv", [node.input[0], name] + list(node.input[2:]),
                                list(node.output), name=node.name, group=group,
                                dilations=dil, pads=mirrored, kernel_shape=k, strides=strides)
        node.CopyFrom(conv)
    return dead_nodes(out)


def _transpose_pads(node: onnx.NodeProto, shapes: dict, keff: list[int]) -> list[int] | None:
    """A ``ConvTranspose``'s ``[begins..., ends...]`` crop of its full output: its ``pads``, or
    as ONNX derives them from ``output_shape`` (the excess split ceil / floor, begin first);
    None when that needs the input shape and it is unknown."""
    n = len(keff)
    target = _attr(node, "output_shape")
    if target is None:
        return list(_attr(node, "pads", [0] * (2 * n)))
    if node.input[0] not in shapes:
        return None
    size = shapes[node.input[0]][2:]
    strides = list(_attr(node, "strides", [1] * n))
    extra = list(_attr(node, "output_padding", [0] * n))
    total = [s * (h - 1) + e + ke - o
             for s, h, e, ke, o in zip(strides, size, extra, keff, list(target)[-n:])]
    return [t - t // 2 for t in total] + [t // 2 for t in total]


def conv_transpose_crops(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A ``Slice`` that only crops the spatial axes of a ``ConvTranspose`` (its sole reader;
    onnx-ad's adjoint of an explicit ``Pad`` before a strided Conv) becomes part of the
    ConvTranspose's ``pads``: the cropped rows are never computed or copied."""
    shapes = graph.tensor_shapes(proto)
    consts = constant_values(proto)
    keep = {o.name for o in proto.graph.output}
    out = _copy(proto)
    readers = graph.consumers(out)
    dropped = set()
    for node in out.graph.node:
        if node.op_type != "ConvTranspose" or node.output[0] in keep or node.output[0] not in shapes:
            continue
        users = readers.get(node.output[0], [])
        full = shapes[node.output[0]]
        window = (_spatial_crop(users[0], consts, full)
                  if len(users) == 1 and users[0].op_type == "Slice" else None)
        w = shapes.get(node.input[1])
        if window is None or w is None or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        n = len(full) - 2
        dil = list(_attr(node, "dilations", [1] * n))
        pads = _transpose_pads(node, shapes, [(k - 1) * d + 1 for k, d in zip(w[2:], dil)])
        if pads is None:
            continue
        lo, hi = window
        pads = [p + a for p, a in zip(pads[:n], lo)] + [p + f - b for p, f, b in zip(pads[n:], full[2:], hi)]
        if min(pads) < 0:
            continue
        kept = [a for a in node.attribute if a.name not in ("pads", "output_shape", "output_padding")]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("pads", pads)])
        node.output[0] = users[0].output[0]
        dropped.add(id(users[0]))
    nodes = [n for n in out.graph.node if id(n) not in dropped]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return dead_nodes(out)


def _spatial_crop(node: onnx.NodeProto, consts: dict, shape: tuple) -> tuple[list, list] | None:
    """(begins, ends) per spatial axis of a constant, step-1 ``Slice`` of a ``shape`` tensor
    that keeps the batch and channel axes whole; None for any other Slice."""
    ins = list(node.input) + [""] * (5 - len(node.input))
    if any(t and t not in consts for t in ins[1:]):
        return None
    starts, ends = consts[ins[1]].reshape(-1), consts[ins[2]].reshape(-1)
    axes = consts[ins[3]].reshape(-1) if ins[3] else np.arange(len(starts))
    steps = consts[ins[4]].reshape(-1) if ins[4] else np.ones(len(starts), np.int64)
    lo, hi = [0] * (len(shape) - 2), list(shape[2:])
    for a, st, en, step in zip(axes, starts, ends, steps):
        a = int(a) + (len(shape) if a < 0 else 0)
        size = shape[a]
        st, en = (int(np.clip(v + size if v < 0 else v, 0, size)) for v in (st, en))
        if step != 1 or en <= st:
            return None
        if a < 2:
            if (st, en) != (0, size):
                return None
            continue
        lo[a - 2], hi[a - 2] = st, en
    return lo, hi


def seed_transposes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A ``Transpose`` that only moves size-1 axes (onnx-ad's seed axis, always 1 here) keeps
    the memory order: replace it by a ``Reshape`` to its static output shape."""
    shapes = graph.tensor_shapes(proto)
    out = _copy(proto)
    taken = _all_names(out)
    for node in out.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in shapes:
            continue
        shape = shapes[node.input[0]]
        perm = list(_attr(node, "perm", list(range(len(shape)))[::-1]))
        moved = [a for a in perm if shape[a] != 1]
        if moved != sorted(moved):
            continue
        target = [shape[a] for a in perm]
        name = _int64(out, "transpose_shape", taken, target)
        node.CopyFrom(helper.make_node("Reshape", [node.input[0], name], list(node.output),
                                       name=node.name))
    return out


_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Sum", "Neg", "Relu", "Cast", "Not", "And", "Or",
                "Greater", "Less", "Equal", "Where", "Sign", "Abs", "Clip", "Identity", "Min", "Max"}
_VIEWS = {"Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def unit_axes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Run the adjoint part on the tensors' own shapes, without onnx-ad's seed axis.

    onnx-ad carries every adjoint with an extra size-1 axis and reshapes it away around each
    Conv; ORT then runs the elementwise steps in 5D and reorders the tensors in and out of its
    blocked (NCHWc) conv layout at every such reshape. A tensor made by a view (Reshape,
    (Un)squeeze, Flatten, or an Expand to its own shape) has the data of its *root*; an
    elementwise node whose tensor inputs all share one root shape (size-1 constants aside) is
    run on the roots, and a view whose output shape is its root's becomes an Identity. Slices
    that leave a trailing size-1 axis alone are run on the root too. Values are unchanged.
    """
    rewrite = _UnitAxes(proto)
    for node in rewrite.out.graph.node:
        rewrite.add(node)
    del rewrite.out.graph.node[:]
    rewrite.out.graph.node.extend(rewrite.nodes)
    return dead_nodes(rewrite.out)


class _UnitAxes:
    """The rewrite of ``unit_axes``, node by node in graph order: ``nodes`` is the new node
    list of ``out`` (a copy of the model), ``root`` maps a tensor to the tensor of the same
    data without its trailing size-1 axes, ``shapes`` grows with the new tensors."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.shapes = graph.tensor_shapes(proto)
        self.consts = constant_values(proto)
        self.out = _copy(proto)
        self.taken = _all_names(self.out)
        self.root: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []

    def add(self, node: onnx.NodeProto) -> None:
        """Append ``node``, or what runs it on roots, to ``nodes``."""
        o = node.output[0] if node.output else ""
        if (node.op_type in _ELEMENTWISE | {"Expand"} and o in self.shapes
                and len(self.shapes[o]) >= 3 and self.shapes[o][-1] == 1):
            for t in node.input[:1] if node.op_type == "Expand" else node.input:
                self.unit_root(t)
        if not (self.view(node) or self.expand(node) or self.slice(node) or self.elementwise(node)):
            self.nodes.append(node)

    def base(self, t: str) -> str:
        return self.root.get(t, t)

    def scalar(self, t: str) -> bool:
        return t in self.consts and self.consts[t].size == 1 and self.consts[t].ndim <= 1

    def fresh(self, stem: str) -> str:
        return _fresh(self.out, stem, self.taken)

    def int64(self, values) -> str:
        return _int64(self.out, "unit_shape", self.taken, values)

    def unit_root(self, t: str) -> None:
        """Give ``t`` (shape ``S + (1,)``, no root yet) the root ``Reshape(t, S)``."""
        shapes = self.shapes
        if t in self.root or t not in shapes or len(shapes[t]) < 3 or shapes[t][-1] != 1 or self.scalar(t):
            return
        low, target = self.fresh(t + "__root"), self.int64(shapes[t][:-1])
        self.nodes.append(helper.make_node("Reshape", [t, target], [low], name=low))
        shapes[low] = tuple(shapes[t][:-1])
        self.root[t] = low

    def view(self, node: onnx.NodeProto) -> bool:
        """A view (or an Expand to the same size) shares its input's root; it becomes an
        Identity of the root when it has the root's shape."""
        shapes, inp = self.shapes, node.input[0] if node.input else ""
        o = node.output[0] if node.output else ""
        same_size = inp in shapes and o in shapes and np.prod(shapes[inp]) == np.prod(shapes[o])
        if not (node.op_type in _VIEWS or (node.op_type == "Expand" and same_size)):
            return False
        if same_size and len(node.output) == 1:
            r = self.base(inp)
            self.root[o] = r
            if shapes.get(r) == shapes[o]:
                self.nodes.append(helper.make_node("Identity", [r], [o], name=node.name))
                return True
        self.nodes.append(node)
        return True

    def expand(self, node: onnx.NodeProto) -> bool:
        """An Expand of a rooted tensor that only grows size-1 axes past the root's rank runs on
        the root (then a Reshape back)."""
        if node.op_type != "Expand":
            return False
        shapes, inp, o = self.shapes, node.input[0], node.output[0]
        if o not in shapes or inp not in shapes or self.base(inp) not in shapes:
            return False
        r = self.base(inp)
        k = len(shapes[r])
        if not (r != inp and k < len(shapes[o]) and tuple(shapes[inp][:k]) == tuple(shapes[r])
                and all(d == 1 for d in shapes[inp][k:]) and all(d == 1 for d in shapes[o][k:])):
            return False
        low = self.fresh(o + "__root")
        target, back = self.int64(shapes[o][:k]), self.int64(shapes[o])
        self.nodes += [helper.make_node("Expand", [r, target], [low], name=node.name),
                       helper.make_node("Reshape", [low, back], [o], name=self.fresh("unit_view"))]
        shapes[low] = tuple(shapes[o][:k])
        self.root[o] = low
        return True

    def slice(self, node: onnx.NodeProto) -> bool:
        """A Slice of a tensor that is its root plus trailing size-1 axes, leaving those axes
        alone, runs on the root (then a Reshape back)."""
        shapes, consts = self.shapes, self.consts
        if node.op_type != "Slice" or node.output[0] not in shapes or node.input[0] not in shapes:
            return False
        full, low = shapes[node.input[0]], shapes.get(self.base(node.input[0]))
        if (low is None or len(low) >= len(full) or tuple(full[:len(low)]) != tuple(low)
                or any(d != 1 for d in full[len(low):])
                or any(t and t not in consts for t in node.input[1:])):
            return False
        starts = consts[node.input[1]]
        axes = (consts[node.input[3]] if len(node.input) > 3 and node.input[3]
                else np.arange(len(starts)))
        axes = np.where(axes < 0, axes + len(full), axes)
        if (axes >= len(low)).any():
            return False
        axes_name = _int64(self.out, "unit_axes", self.taken, axes)
        inputs = [self.base(node.input[0]), node.input[1], node.input[2], axes_name] + list(node.input[4:5])
        sliced = self.fresh(node.output[0] + "__root")
        shape_name = self.int64(shapes[node.output[0]])
        shapes[sliced] = tuple(shapes[node.output[0]][:len(low)])
        self.nodes += [helper.make_node("Slice", inputs, [sliced], name=node.name),
                       helper.make_node("Reshape", [sliced, shape_name], list(node.output),
                                        name=self.fresh("unit_view"))]
        self.root[node.output[0]] = sliced
        return True

    def elementwise(self, node: onnx.NodeProto) -> bool:
        """An elementwise node whose tensor inputs (size-1 constants aside) have the output's
        shape and roots of one shape runs on the roots (then a Reshape back)."""
        shapes, o = self.shapes, node.output[0] if node.output else ""
        tensors = [t for t in node.input if t and not self.scalar(t)]
        roots = [self.base(t) for t in tensors]
        if (node.op_type not in _ELEMENTWISE or len(node.output) != 1 or not tensors
                or roots == tensors or o not in shapes
                or any(shapes.get(t) != shapes[o] for t in tensors)
                or len({shapes.get(r) for r in roots}) != 1 or None in {shapes.get(r) for r in roots}):
            return False
        low = self.fresh(o + "__root")
        lowered = onnx.NodeProto()
        lowered.CopyFrom(node)
        lowered.input[:] = [self.base(t) if t else t for t in node.input]
        lowered.output[:] = [low]
        shape_name = self.int64(shapes[o])
        self.nodes += [lowered, helper.make_node("Reshape", [low, shape_name], [o], name=self.fresh("unit_view"))]
        shapes[low] = shapes[roots[0]]
        self.root[o] = low
        return True


def conv_padding(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Put every 2D/3D Conv's padding where its adjoint comes out right, and fold zero
    ``Pad`` nodes that only Convs read (exporters' "same" padding) into the Convs.

    Run on the forward graph before differentiation. onnx-ad differentiates a Conv into a
    ``ConvTranspose`` with ``output_shape``, which ONNX pads by splitting the padding the
    windows use as (ceil, floor): right only when the begin pad is the end pad or one more.
    So per Conv, with ``b``/``e`` the pads and ``R`` the padded rows the windows reach:
    input rows no window reads are sliced off, the end pad shrinks to what is read, and
    if ``b − e`` is then not 0 or 1 the padding moves into an explicit ``Pad`` (whose
    adjoint, a ``Slice``, is exact). Values are unchanged.
    """
    proto = fold_constants(proto)
    consts = constant_values(proto)
    shapes = graph.tensor_shapes(proto)
    readers = graph.consumers(proto)
    keep = {o.name for o in proto.graph.output}
    out = _copy(proto)
    taken = _all_names(out)
    producers = {o: n for n in out.graph.node for o in n.output}
    nodes = []
    for node in out.graph.node:
        geometry = _conv_geometry(node, shapes, consts)
        if geometry is None:
            nodes.append(node)
            continue
        x, begin, needed = geometry
        pad = producers.get(x)
        folded = _spatial_zero_pads(pad, consts) if pad is not None else None
        if (folded is not None and x not in keep and pad.input[0] in shapes
                and all(r is node or (r.op_type == "Conv" and r.input[0] == x
                                      and list(r.input).count(x) == 1) for r in readers[x])):
            x = pad.input[0]
            begin = [a + b for a, b in zip(begin, folded[:len(begin)])]
        size = shapes[x][2:]  # the end pad is what the windows read past the input
        end = [max(n - b - h, 0) for n, b, h in zip(needed, begin, size)]
        rows = [min(h, n - b) for n, b, h in zip(needed, begin, size)]
        if list(rows) != list(size):
            x = _append_slice(out, taken, nodes, x, rows)
        if all(b - e in (0, 1) for b, e in zip(begin, end)):
            pads = list(begin) + list(end)
        else:
            padded = _fresh(out, "conv_pad", taken)
            widths = _int64(out, "conv_pad_widths", taken, [0, 0] + list(begin) + [0, 0] + list(end))
            nodes.append(helper.make_node("Pad", [x, widths], [padded], name=padded))
            x, pads = padded, [0] * (2 * len(begin))
        node.input[0] = x
        kept = [a for a in node.attribute if a.name not in ("pads", "auto_pad")]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("pads", pads)])
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return dead_nodes(out)


def _conv_geometry(node, shapes, consts):
    """(input, begin pads, padded extent the windows reach) of a 2D/3D Conv with
    static shapes and explicit pads; None for anything else."""
    if node.op_type != "Conv" or node.input[0] not in shapes or node.output[0] not in shapes:
        return None
    size, out_size = shapes[node.input[0]][2:], shapes[node.output[0]][2:]
    k = len(size)
    if k not in (2, 3) or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    w = shapes.get(node.input[1])
    kernel = list(_attr(node, "kernel_shape", w[2:] if w else []))
    if len(kernel) != k:
        return None
    strides = list(_attr(node, "strides", [1] * k))
    dil = list(_attr(node, "dilations", [1] * k))
    pads = list(_attr(node, "pads", [0] * (2 * k)))
    needed = [s * (o - 1) + (kk - 1) * d + 1 for s, o, kk, d in zip(strides, out_size, kernel, dil)]
    return node.input[0], pads[:k], needed


def _append_slice(out, taken, nodes, x, rows):
    """Append ``Slice(x)`` keeping the first ``rows`` of each spatial axis; its name."""
    name = _fresh(out, "conv_read", taken)
    bounds = [_int64(out, f"conv_read_{stem}", taken, values)
              for stem, values in (("starts", [0] * len(rows)), ("ends", rows),
                                   ("axes", list(range(2, 2 + len(rows)))))]
    nodes.append(helper.make_node("Slice", [x] + bounds, [name], name=name))
    return name


def _spatial_zero_pads(node: onnx.NodeProto, consts: dict) -> list[int] | None:
    """The spatial ``[begins..., ends...]`` of a constant-mode, zero-value, non-negative
    ``Pad`` that leaves the batch and channel axes alone; else None."""
    if node.op_type != "Pad" or _attr(node, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(node.input) < 2 or node.input[1] not in consts or (len(node.input) > 3 and node.input[3]):
        return None
    if len(node.input) > 2 and node.input[2]:
        value = consts.get(node.input[2])
        if value is None or value.size != 1 or float(value.reshape(-1)[0]) != 0.0:
            return None
    pads = [int(p) for p in consts[node.input[1]].reshape(-1)]
    rank = len(pads) // 2
    if rank < 3 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return None
    return pads[2:rank] + pads[rank + 2:]


def static_shape_ops(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``Size`` / ``Shape`` of statically shaped tensors become constants (then folded with
    what they feed: the 1/count of an average pool's adjoint), and a ``ReduceSum`` over
    size-1 axes only becomes a ``Reshape`` (onnx-ad sums over its seed axis)."""
    shapes = graph.tensor_shapes(proto)
    consts = constant_values(proto)
    out = _copy(proto)
    taken = _all_names(out)
    for node in out.graph.node:
        x = node.input[0] if node.input else ""
        if node.op_type in ("Size", "Shape") and x in shapes and not node.attribute:
            value = np.array(np.prod(shapes[x]) if node.op_type == "Size" else shapes[x], np.int64)
            node.CopyFrom(helper.make_node("Constant", [], list(node.output), name=node.name,
                                           value=numpy_helper.from_array(value)))
        elif (node.op_type == "ReduceSum" and x in shapes and node.output[0] in shapes
              and len(node.input) > 1 and node.input[1] in consts
              and all(shapes[x][int(a)] == 1 for a in consts[node.input[1]].reshape(-1))
              and consts[node.input[1]].size > 0):
            target = _int64(out, "unit_sum_shape", taken, shapes[node.output[0]])
            node.CopyFrom(helper.make_node("Reshape", [x, target], list(node.output), name=node.name))
    return _fold_keeping_fills(out)


_FILL = "__XaiConstantOfShape"  # an op the folder cannot evaluate


def _fold_keeping_fills(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``fold_constants``, but ``ConstantOfShape`` nodes stay nodes (their shapes fold): the
    folder keeps results up to a size, so a batch-sized fill would fold at one batch and not
    at the next, and graphs built at two batches (export's dynamic batch) would differ."""
    out = _copy(proto)
    for node in out.graph.node:
        if node.op_type == "ConstantOfShape":
            node.op_type = _FILL
    out = fold_constants(out)
    for node in out.graph.node:
        if node.op_type == _FILL:
            node.op_type = "ConstantOfShape"
    return out


def name_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (some ORT fusions name their result after the
    fused nodes, and two unnamed ones then collide: "two nodes with same node name")."""
    out = _copy(proto)
    taken = {n.name for n in out.graph.node if n.name}
    for node in out.graph.node:
        if not node.name:
            node.name = _fresh(out, f"grad/{node.op_type}", taken)
    return out


PASSES = (dead_nodes, where_to_mul, seed_transposes, static_shape_ops, unit_axes,
          conv_transpose_crops, conv_transpose_to_conv, dead_nodes, name_nodes)


def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every tensor shape inferred (inputs must be static)."""
    shapes = {v.name: graph.shape_of(v) for v in proto.graph.input}
    return graph.static_shapes(proto, {k: v for k, v in shapes.items()
                                        if v is not None and None not in v})


def optimize(proto: onnx.ModelProto, passes=PASSES) -> onnx.ModelProto:
    """Run ``passes`` in order, re-inferring shapes before each."""
    for p in passes:
        proto = p(infer(proto))
    return proto
