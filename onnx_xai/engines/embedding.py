"""Token-model engine: the embedding output of integer ``input_ids`` as a float input.

A text model reads ``input_ids`` ``(B, T)`` int64 through a lookup, ``Gather(table, ids)``
→ embeddings ``(B, T, H)``. Gradients and integrated gradients are taken w.r.t. that
lookup's output, as Captum's ``LayerIntegratedGradients`` on ``word_embeddings``: the graph
is cut there (the lookup's output becomes a new float graph input, its producer and what
only fed it are removed), so the path points ``e_b + α (e − e_b)`` can be fed in its place
while ``input_ids`` (still read for its shape, position ids, ...) and the other inputs
(``attention_mask``, ``token_type_ids``) are fed unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .. import graph
from ..autodiff import passes
from ..errors import UnsupportedModelError
from ..runtime import Model

_PASS = {"Cast", "Identity", "Unsqueeze", "Reshape", "Squeeze"}  # ops an exporter puts before the lookup


def check_token_input(model: Model, method: str) -> None:
    """``UnsupportedModelError`` unless the explained input holds integer token ids."""
    if model.input.dtype.kind not in "iu":
        raise UnsupportedModelError(
            f"{method} explains token models (integer input ids, e.g. input_ids (B, T) int64); "
            f"input {model.input_name!r} is {model.input.describe()}: use the image / signal "
            "methods (vanilla, ig, occlusion, rise, ...) for a float input")


def find_embedding(proto: onnx.ModelProto, ids: str, layer: str | None = None) -> str:
    """The embedding tensor: ``layer`` (tensor, node or dotted module name such as
    ``bert.embeddings.word_embeddings``) if given, else the output of the first ``Gather``
    whose indices are the integer input ``ids`` (directly or through Cast / Reshape / ...)."""
    if layer is not None:
        return graph.resolve_layer(proto, layer)
    fed = {ids}
    for node in proto.graph.node:  # graph order: a pass-through op comes before its reader
        if node.op_type in _PASS and node.input and node.input[0] in fed:
            fed.update(node.output)
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in fed:
            return _dequantized(proto, node.output[0])
    raise UnsupportedModelError(
        f"no embedding lookup (a Gather whose indices are input {ids!r}) in the model; name the "
        "embedding output with embedding_layer= (a tensor, node or module such as "
        "'bert.embeddings.word_embeddings')")


def _dequantized(proto: onnx.ModelProto, tensor: str) -> str:
    """``tensor``, or where a quantized table was looked up (``quantize_dynamic`` quantizes
    the embedding ``Gather``), the output of the ``DequantizeLinear`` / ``Cast`` reading it."""
    users = graph.consumers(proto)
    while len(users.get(tensor, [])) == 1 and users[tensor][0].op_type in ("DequantizeLinear", "Cast") \
            and graph.tensor_types(proto).get(tensor) not in graph.FLOAT_TYPES:
        tensor = users[tensor][0].output[0]
    return tensor


def _drop_unread_inputs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` without the graph inputs no node reads (the ids once only their lookup did)."""
    read = {name for node in proto.graph.node for name in graph.node_reads(node)}
    read |= {o.name for o in proto.graph.output}
    inputs = [i for i in proto.graph.input if i.name in read]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    return proto


def cut_at(proto: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """Copy of ``proto`` where ``tensor`` (a float tensor made by a node) is a graph input of
    the same name, free batch and sequence dims; nodes and inputs left unread are removed."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False).graph
    info = next((v for v in list(inferred.value_info) + list(inferred.output) if v.name == tensor), None)
    elem = info.type.tensor_type.elem_type if info is not None else 0
    if elem not in graph.FLOAT_TYPES:
        raise UnsupportedModelError(f"the embedding tensor {tensor!r} is not floating point "
                                    f"({onnx.TensorProto.DataType.Name(elem) if elem else 'unknown type'}): "
                                    "name the float embedding output with embedding_layer=")
    shape = graph.shape_of(info)
    if shape is None or len(shape) < 2:
        raise UnsupportedModelError(f"the shape of the embedding tensor {tensor!r} is unknown")
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    producer = next((n for n in g.node if tensor in n.output), None)
    if producer is None:
        raise ValueError(f"{tensor!r} is not made by a node of the model")
    g.node.remove(producer)
    dims = ["batch", "tokens"] + [d if isinstance(d, int) else f"embedding_{i}" for i, d in
                                  enumerate(shape[2:])]
    g.input.insert(0, onnx.helper.make_tensor_value_info(tensor, elem, dims))
    for v in [v for v in g.value_info if v.name == tensor]:
        g.value_info.remove(v)
    return _drop_unread_inputs(passes.dead_nodes(out))


@dataclass(frozen=True)
class EmbeddingCut:
    """A token model seen at its embedding output.

    ``lookup``: the original model also returning ``tensor`` (embeddings of ids);
    ``cut``: the model whose explained input is ``tensor`` ``(B, T, H)``, the ids (when the
    graph still reads them) and the other inputs as extra inputs.
    """

    tensor: str
    lookup: Model
    cut: Model

    @property
    def reads_ids(self) -> bool:
        """Whether the cut model still reads the integer ids (shape, position ids, ...)."""
        return self.lookup.input_name in self.cut.input_names

    def embed(self, ids: np.ndarray, extra: dict[str, Any], batch_size: int) -> np.ndarray:
        """``(B, T, H)`` embeddings of ``ids`` ``(B, T)``."""
        return self.lookup.predict(ids, outputs=self.tensor, batch_size=batch_size,
                                   extra_inputs=extra, verbose=False)

    def extra_inputs(self, ids: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
        """The cut model's extra inputs: the ids (if still read) and the model's others."""
        keep = {k: v for k, v in extra.items() if k in self.cut.input_names}
        if self.reads_ids:
            keep[self.lookup.input_name] = ids
        return keep


def embedding_cut(model: Model, layer: str | None = None) -> EmbeddingCut:
    """The ``EmbeddingCut`` of ``model`` at ``layer`` (default: found; see ``find_embedding``),
    cached on the model."""
    memo = model.memo("embedding_cut")
    if layer not in memo:
        check_token_input(model, "an embedding gradient")
        proto = model.require_proto("cutting the graph at the embedding output")
        tensor = find_embedding(proto, model.input_name, layer)
        cut = model.derive(cut_at(proto, tensor))
        cut.input_name = tensor
        memo[layer] = EmbeddingCut(tensor, model.with_outputs([tensor]), cut)
    return memo[layer]
