"""The automatic CAM layer: a real spatial feature map of the backbone, chosen from the graph.

Rules, in order (``auto_layer`` says which one chose):

- **transformer** (the graph has attention: a Softmax read by a MatMul of two activations):
  the output of the first LayerNormalization of the last attention block (timm's
  ``blocks[-1].norm1``, HF's ``layers[-1].layernorm_before``, as pytorch-grad-cam recommends:
  the last block's output only reaches the class token), folded to its patch grid
  (``onnx_xai.tokens``); for a graph with decomposed LayerNorms, that LayerNorm's input;
- **detector / dense head** (an output of rank ≥ 3 that is not a class vector): the last
  feature map read by two or more Convs (the neck feeding a head's branches);
- **classifier**: the last feature map from which a learned Conv / Gemm / MatMul is still
  reached (so never the logits of a 1×1-conv head, nor the output itself).

A feature map is a float tensor of the input's rank, channel-first, whose spatial dims are the
input's divided by one stride (the same ratio on every axis, within rounding): a box decoder's
``(B, 1, 4, N)`` or an attention tensor of a CNN hybrid is not one. When no rule finds a
layer, ``UnsupportedModelError`` says so and lists the candidates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import onnx

from . import graph
from .errors import UnsupportedModelError
from .runtime import Model
from .tokens import GridFinder, TokenFold
from .surrogate_graph import surrogate_model

__all__ = ["LayerChoice", "auto_layer", "choose_layer"]
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ELEMENTWISE = ("Where", "Cast", "Dropout", "Identity", "Mul", "Div")


@dataclass(frozen=True)
class LayerChoice:
    """The automatic layer: its ``tensor`` and producing ``node``, the ``rule`` that chose it,
    and the ``fold`` of a token layer (None for a channel-first feature map)."""

    tensor: str
    node: str
    rule: str
    fold: TokenFold | None = None


class _Graph:
    """Shapes, producers, consumers and constants of the static graph, for the rules."""

    def __init__(self, proto: onnx.ModelProto, input_shapes: dict, image: str | None) -> None:
        self.finder = GridFinder(proto, input_shapes, image)
        self.static = self.finder.static
        self.nodes = list(self.static.graph.node)
        self.shapes, self.types = self.finder.shapes, graph.tensor_types(self.static)
        self.users = graph.consumers(self.static)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consts = {i.name for i in self.static.graph.initializer}
        self.consts |= {n.output[0] for n in self.nodes if n.op_type == "Constant"}
        self.input_shape = self.finder.input_shape
        s = self.input_shape  # a channel-last image (B, H, W, 1|3|4): its spatial axes are 1..-1
        self.spatial = tuple(s[1:-1] if len(s) >= 4 and s[-1] <= 4 < min(s[1:-1]) else s[2:])
        self.outputs = [o.name for o in self.static.graph.output]

    def ancestors(self, tensor: str) -> set[str]:
        seen, todo = set(), [tensor]
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            node = self.producer.get(t)
            if node is not None:
                todo.extend(i for i in node.input if i)
        return seen

    def feature_map(self, tensor: str) -> bool:
        """Float, the input's rank, spatial dims the input's over one common stride."""
        s = self.shapes.get(tensor)
        if (s is None or len(s) != len(self.input_shape) or len(s) < 3
                or self.types.get(tensor) not in graph.FLOAT_TYPES or max(s[2:]) <= 1):
            return False
        ratios = [i / o for i, o in zip(self.spatial, s[2:]) if o > 0]
        if len(ratios) != len(s) - 2 or min(ratios) < 0.9:
            return False
        rounded = [i / -(-i // max(round(r), 1)) for i, r in zip(self.spatial, ratios)]
        return max(ratios) / min(ratios) <= 1.5 or max(rounded) / min(rounded) <= 1.5

    def attention(self) -> list[onnx.NodeProto]:
        """Softmax nodes whose output reaches a MatMul of two activations within three
        element-wise steps (attention probabilities; dynamo's SDPA puts a NaN guard between)."""
        found = []
        for node in (n for n in self.nodes if n.op_type == "Softmax"):
            frontier = [node.output[0]]
            for _ in range(4):
                users = [u for t in frontier for u in self.users.get(t, [])]
                if any(u.op_type == "MatMul" and not self.consts.intersection(u.input) for u in users):
                    found.append(node)
                    break
                frontier = [u.output[0] for u in users if u.op_type in _ELEMENTWISE]
        return found

    def candidates(self) -> list[str]:
        """Feature maps (graph order) that are not graph outputs."""
        return [n.output[0] for n in self.nodes if n.output and n.output[0] not in self.outputs
                and n.op_type not in ("Constant", "Shape") and self.feature_map(n.output[0])]

    def before_weights(self) -> set[str]:
        """Tensors from which a Conv / Gemm / MatMul with constant weights reading a feature
        map or a pooled ``(B, C)`` vector is reached."""
        reach: set[str] = set()
        for node in reversed(self.nodes):
            x = node.input[0] if node.input else ""
            weighted = (node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in self.consts
                        and (self.feature_map(x) or len(self.shapes.get(x, ())) == 2))
            if weighted or reach.intersection(node.output):
                reach.update(i for i in node.input if i)
        return reach


def _transformer(g: _Graph, softmax: onnx.NodeProto) -> LayerChoice | None:
    before = g.ancestors(softmax.output[0])
    norms = [n for n in g.nodes if n.op_type == "LayerNormalization" and n.output[0] in before]
    for node in reversed(norms):
        fold = g.finder.fold(node.output[0])
        if fold is not None or g.feature_map(node.output[0]):
            return LayerChoice(node.output[0], node.name, "transformer: the first LayerNorm of the "
                               "last attention block", fold)
    means = [n for n in g.nodes if n.op_type == "ReduceMean" and n.output[0] in before
             and any(u.op_type == "Sub" for u in g.users.get(n.input[0], []))]
    for node in reversed(means):  # a decomposed LayerNorm: mean(x), x - mean(x), ...
        fold = g.finder.fold(node.input[0])
        if fold is not None:
            producer = g.producer.get(node.input[0])
            return LayerChoice(node.input[0], producer.name if producer else node.input[0],
                               "transformer: the input of the last attention block's first LayerNorm", fold)
    return None


def choose_layer(proto: onnx.ModelProto, input_shapes: dict, image: str | None = None) -> LayerChoice:
    """The automatic CAM layer of ``proto`` at ``input_shapes`` (name → full shape, batch 1;
    ``image`` names the image input, default the first). See the module docstring."""
    g = _Graph(proto, input_shapes, image)
    if len(g.input_shape) < 3:
        raise UnsupportedModelError(f"the model's input has shape {g.input_shape}: a CAM needs an "
                                    "image or volume input (B, C, H, W[, D])")
    attention = g.attention()
    if attention:
        found = _transformer(g, attention[-1])
        if found is not None:
            return found
    cands = g.candidates()
    classifier = all(len(g.shapes.get(o, ())) <= 2 for o in g.outputs)
    if not classifier:
        branch = [t for t in cands if sum(u.op_type == "Conv" for u in g.users.get(t, [])) >= 2]
        if branch:
            return _choice(g, branch[-1], "detector: the last feature map read by two or more Convs (neck)")
    reach = g.before_weights()
    kept = [t for t in cands if t in reach and not (attention and t in g.ancestors(attention[-1].output[0])
                                                    and t not in g.ancestors(attention[0].input[0]))]
    if kept:
        return _choice(g, kept[-1], "classifier: the last feature map before the head")
    raise UnsupportedModelError(_no_layer_message(g, cands, bool(attention)))


def _choice(g: _Graph, tensor: str, rule: str) -> LayerChoice:
    return LayerChoice(tensor, g.producer[tensor].name, rule)


def _no_layer_message(g: _Graph, cands: list[str], attention: bool) -> str:
    """Why no layer was chosen, with the last float tensors of rank ≥ 3 as candidates."""
    ranked = [o for n in g.nodes for o in n.output[:1]
              if len(g.shapes.get(o, ())) >= 3 and g.types.get(o) in graph.FLOAT_TYPES
              and n.op_type not in ("Constant", "Shape")]
    listed = ", ".join(f"{t} {g.shapes[t][1:]}" for t in ranked[-8:]) or "none"
    why = ("no LayerNorm of a token grid before the last attention and no feature map"
           if attention else "no spatial feature map followed by a learned layer" if not cands
           else "every spatial map is part of the head (no learned layer after it)")
    return (f"found no good CAM layer ({why}); candidates: {listed}. Name the layer yourself "
            "(target_layers= / --layer; `onnx-xai layers MODEL` lists them)")


def auto_layer(model: Any, input_shape: Sequence[int] | None = None) -> LayerChoice:
    """The automatic CAM layer of a ``Model`` (or anything ``Model`` accepts) for per-sample
    input shape ``input_shape`` ``(C, H, W[, D])`` (default: the model's, which must then be
    fixed). ``UnsupportedModelError`` when no good layer exists (listing candidates)."""
    m = model if isinstance(model, Model) else Model(model, device="cpu", verbose=False)
    shape = tuple(input_shape) if input_shape is not None else tuple(m.input.shape[1:])
    if not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"input {m.input_name!r} is {m.input.describe()}: give the per-sample "
                         "input shape to choose the CAM layer")
    m = surrogate_model(m, strict=False)[0]  # quantized / float16 graphs: a float feature map of the surrogate
    return choose_layer(m.require_proto("choosing the CAM layer"), {m.input_name: (1,) + shape})
