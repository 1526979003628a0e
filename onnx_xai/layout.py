"""layout: channel-last (NHWC) inputs folded to channel-first at the edges.

Engines work channel-first, ``(B, C, *spatial)``. A model whose explained input is
channel-last, ``(B, *spatial, C)`` (every Keras / TensorFlow model converted by tf2onnx), is
explained through its *channel-first view*: a copy of its graph whose input (same name) is
``(B, C, *spatial)`` followed by a ``Transpose`` to the original layout. Methods take ``x``
in the input's own layout, fold it once on entry (``to_channel_first``), return maps in image
coordinates ``(B, 1, *spatial)`` and input-shaped results (gradients, attributions) in the
input's own layout again (``to_input_layout``). Layer names are unchanged, so CAM layers
are named as in the original graph (tf2onnx moves its transposes to the input, so its
feature maps are channel-first already).

``layout``: ``"nchw"`` (channel-first), ``"nhwc"`` (channel-last) or ``"auto"``: the
model's JSON sidecar ``layout`` when it has one, else channel-last when the input has two or
three spatial axes and a last axis of 1 or 3 while its axis 1 is free or longer than 4 (a
channel-first input's channels are at most 4 there).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from .preprocess import read_sidecar

LAYOUTS = ("nchw", "nhwc", "auto")
_CHANNELS = (1, 3)
_FOLDED = "channel_first_of"  # attribute of a channel-first view: the layout its callers use


def check(layout: Any) -> str:
    """``layout`` checked: one of ``LAYOUTS``; ``ValueError`` otherwise."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def detect(model) -> str:
    """``"nchw"`` or ``"nhwc"`` for ``model``'s explained input (see the module docstring)."""
    if getattr(model, "path", None):
        declared = read_sidecar(model.path).get("layout")
        if declared in ("nchw", "nhwc"):
            return declared
    shape = model.input.shape
    if len(shape) < 4:
        return "nchw"
    last, first = shape[-1], shape[1]
    if last in _CHANNELS and not (isinstance(first, int) and first <= 4):
        return "nhwc"
    return "nchw"


def resolve(model, layout: str | None) -> str:
    """The layout of ``model``'s input: ``layout``, or (None) the Model's own ``layout``
    setting, with ``"auto"`` detected."""
    chosen = check(getattr(model, "layout", "auto") if layout is None else layout)
    return detect(model) if chosen == "auto" else chosen


def transposed_input(proto: onnx.ModelProto, name: str, perm: list[int]) -> onnx.ModelProto:
    """Copy of ``proto`` whose input ``name`` takes the axes of the original in the order
    ``perm`` (new axis i = old axis perm[i]) and is transposed back at the graph's start."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    value = next(i for i in g.input if i.name == name)
    taken = {o for n in g.node for o in n.output} | {n.name for n in g.node}
    inner = next(f"{name}__xai_layout{k or ''}" for k in range(len(taken) + 1)
                 if f"{name}__xai_layout{k or ''}" not in taken)
    for node in g.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    for output in g.output:
        if output.name == name:  # an input passed straight through to an output
            raise ValueError(f"input {name!r} is also an output of the graph")
    dims = list(value.type.tensor_type.shape.dim)
    new = onnx.ValueInfoProto()
    new.CopyFrom(value)
    del new.type.tensor_type.shape.dim[:]
    for axis in perm:
        new.type.tensor_type.shape.dim.add().CopyFrom(dims[axis])
    back = [perm.index(i) for i in range(len(perm))]
    g.node.insert(0, helper.make_node("Transpose", [name], [inner], perm=back, name=inner))
    index = next(k for k, i in enumerate(g.input) if i.name == name)
    g.input[index].CopyFrom(new)
    return out


def first_perm(rank: int) -> list[int]:
    """Axes of a channel-last tensor of ``rank`` in channel-first order: (0, r−1, 1, …, r−2)."""
    return [0, rank - 1] + list(range(1, rank - 1))


def last_perm(rank: int) -> list[int]:
    """Axes of a channel-first tensor of ``rank`` in channel-last order: (0, 2, …, r−1, 1)."""
    return [0] + list(range(2, rank)) + [1]


def channel_first(model, layout: str | None = None):
    """``model`` itself when its input is channel-first, else its channel-first view (a
    ``Model`` built once and kept on ``model``, marked so that ``to_channel_first`` folds
    the channel-last ``x`` its callers give; ``is_folded`` is True for it)."""
    if getattr(model, _FOLDED, None) or resolve(model, layout) == "nchw":
        return model
    memo = model.memo("layout")
    if "view" not in memo:
        view = _transposed_model(model)
        setattr(view, _FOLDED, "nhwc")
        memo["view"] = view
    return memo["view"]


def channel_first_model(model, layout: str | None = None):
    """``model`` as a plain channel-first ``Model`` (callers give channel-first ``x``): the
    model itself, or (channel-last) a Model of its graph behind a Transpose, not marked as a
    view; for callers that fold their data themselves (the command line)."""
    if is_folded(model) or resolve(model, layout) == "nchw":
        return model
    return _transposed_model(model)


def _transposed_model(model):
    proto = model.require_proto("a channel-last (NHWC) input")
    rank = len(model.input.shape)
    child = model.derive(transposed_input(proto, model.input_name, first_perm(rank)))
    child.layout = "nchw"
    return child


def is_folded(model) -> bool:
    """Whether ``model`` is the channel-first view of a channel-last model."""
    return getattr(model, _FOLDED, None) == "nhwc"


def to_channel_first(model, x: Any) -> Any:
    """``x`` given in the input's own layout, channel-first for ``model`` (a view from
    ``channel_first``: its last axis moved to axis 1; anything else: as it is)."""
    if not is_folded(model):
        return x
    x = np.asarray(x)
    if x.ndim != len(model.input.shape):
        raise ValueError(f"input {model.input_name!r} is channel-last (NHWC): expected "
                         f"{len(model.input.shape)} axes (B, *spatial, C), got shape {x.shape}")
    return np.moveaxis(x, -1, 1)


def to_input_layout(model, a: np.ndarray) -> np.ndarray:
    """An input-shaped channel-first array (gradients, attributions) back in the input's own
    layout (the inverse of ``to_channel_first``)."""
    return np.moveaxis(a, 1, -1) if is_folded(model) else a


def argument_to_channel_first(model, a: Any) -> Any:
    """An array argument given in the input's layout (a baseline, a feature mask), shaped
    like the input ``(B, *spatial, C)`` or like one sample ``(*spatial, C)``, moved to
    channel-first; scalars, spatial-only arrays and channel-first models' arguments as they are."""
    if not is_folded(model) or a is None or isinstance(a, str):
        return a
    a = np.asarray(a)
    rank = len(model.input.shape)
    if a.ndim == rank:
        return np.moveaxis(a, -1, 1)
    return np.moveaxis(a, -1, 0) if a.ndim == rank - 1 else a


def channel_first_layer(proto: onnx.ModelProto, name: str) -> str:
    """The channel-first twin of a channel-last feature map: for the tensor ``name`` (any
    layer name) made by a ``Transpose`` from channel-first, that Transpose's input; read by a
    ``Transpose`` to channel-first, that Transpose's output (the same values, channels on
    axis 1, as CAMs read them); else ``name`` itself. Keras graphs converted without
    tf2onnx's transpose optimiser keep such NHWC tensors between their convolutions."""
    from .graph import resolve_layer

    tensor = resolve_layer(proto, name)

    def perm(node):
        return next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), None)

    for node in proto.graph.node:
        p = perm(node) if node.op_type == "Transpose" else None
        if p is None or len(p) < 4:
            continue
        if tensor in node.output and p == last_perm(len(p)):
            return node.input[0]
        if tensor in node.input and p == first_perm(len(p)):
            return node.output[0]
    return name
