"""Layer adapter for transformer token layers: find the patch grid of a layer from the graph
and fold the layer to a channel-first grid ``(B, C, h, w)``, in NumPy and as ONNX nodes, so
that the CAM engine keeps one layout.

Layouts folded (for a model with an image input ``(B, C, H, W)``):

- ``"tokens"``: ``(B, T, C)`` with ``T = prefix + h·w`` (ViT / DeiT / HF ViT, HF Swin): the
  first ``prefix`` tokens (class, distillation, register tokens) are dropped, the others are
  the patches in row-major order, as ``Conv(patch) → flatten(2) → transpose`` makes them;
- ``"channels"``: ``(B, C, T)``, the same with tokens last;
- ``"nhwc"``: ``(B, h, w, C)`` (timm Swin stages).

The grid comes from the patch-embedding Conv (the first Conv on the input: its output grid,
and that grid halved, for the patch merging of hierarchical models) or, without one, from the
input's aspect ratio; the prefix is the smallest count of leading tokens (fewer than the
patches) that leaves a grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from . import graph

__all__ = ["TokenFold", "GridFinder", "layer_fold", "MAX_PREFIX"]
MAX_PREFIX = 16  # class + distillation + register tokens: at most this many leading tokens


@dataclass(frozen=True)
class TokenFold:
    """How a token layer folds to ``(B, C, h, w)``: its ``layout`` (``"tokens"`` ``(B, T, C)``,
    ``"channels"`` ``(B, C, T)`` or ``"nhwc"`` ``(B, h, w, C)``), the ``prefix`` tokens dropped
    and the patch ``grid`` ``(h, w)``."""

    layout: str
    prefix: int
    grid: tuple

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` in this layout → ``(B, C, h, w)`` (a contiguous copy)."""
        arr = np.asarray(arr)
        h, w = self.grid
        if self.layout == "nhwc":
            out = arr.transpose(0, 3, 1, 2)
        elif self.layout == "tokens":
            out = arr[:, self.prefix:].reshape(arr.shape[0], h, w, arr.shape[2]).transpose(0, 3, 1, 2)
        else:
            out = arr[:, :, self.prefix:].reshape(arr.shape[0], arr.shape[1], h, w)
        return np.ascontiguousarray(out)

    def graph(self, b: graph.NodeBuilder, tensor: str) -> str:
        """The same fold as ONNX nodes appended to ``b`` (any batch); returns the grid tensor."""
        h, w = self.grid
        if self.layout == "nhwc":
            return b.op("Transpose", [tensor], perm=[0, 3, 1, 2])
        axis = 1 if self.layout == "tokens" else 2
        if self.prefix:
            tensor = b.op("Slice", [tensor, b.const([self.prefix]), b.const([np.iinfo(np.int64).max]),
                                    b.const([axis])])
        if self.layout == "tokens":
            grid = b.op("Reshape", [tensor, b.const([0, h, w, -1])])
            return b.op("Transpose", [grid], perm=[0, 3, 1, 2])
        return b.op("Reshape", [tensor, b.const([0, -1, h, w])])

    def channels(self, shape: tuple) -> int:
        """The channel count of a tensor of ``shape`` in this layout."""
        return int(shape[1] if self.layout == "channels" else shape[-1])

    def describe(self, shape: tuple | None = None) -> str:
        """E.g. ``"1+4x4 tokens"`` / ``"4x4 nhwc"``: what ``onnx-xai layers`` prints."""
        h, w = self.grid
        if self.layout == "nhwc":
            return f"{h}x{w} nhwc"
        return f"{self.prefix}+{h}x{w} tokens" if self.prefix else f"{h}x{w} tokens"


class GridFinder:
    """Token-grid detection for the layers of one graph at one input shape.

    ``input_shapes``: name → full shape (batch 1) of every input; ``image`` names the image
    input (default: the first). Shapes are inferred once (``graph.static_shapes``).
    """

    def __init__(self, proto: onnx.ModelProto, input_shapes: dict, image: str | None = None,
                 static: onnx.ModelProto | None = None) -> None:
        self.image = image or next(iter(input_shapes))
        self.input_shape = tuple(input_shapes[self.image])
        self.static = static if static is not None else graph.static_shapes(proto, input_shapes)
        self.shapes = graph.tensor_shapes(self.static)
        self.grids = self._patch_grids() or self._aspect_grids()
        self._channels_last = self._layernorm_last_axis()

    def _patch_grids(self) -> list[tuple]:
        """The first Conv on the image's output grid, then that grid halved (patch merging)."""
        if len(self.input_shape) != 4:
            return []
        live = {self.image}
        for node in self.static.graph.node:
            if not live.intersection(node.input):
                continue
            live.update(node.output)
            s = self.shapes.get(node.output[0]) if node.output else None
            if node.op_type == "Conv" and s is not None and len(s) == 4:
                h, w = s[2:]
                grids = [(-(-h // 2 ** i), -(-w // 2 ** i)) for i in range(6)]
                return list(dict.fromkeys(g for g in grids if g[0] * g[1] > 1))
        return []

    def _aspect_grids(self) -> list[tuple]:
        """Every ``(h, w)`` with the input's aspect ratio, finest first."""
        if len(self.input_shape) != 4:
            return []
        H, W = self.input_shape[2:]
        return [(h, h * W // H) for h in range(H, 0, -1) if (h * W) % H == 0 and h * W // H > 0
                and h * (h * W // H) > 1]

    def _layernorm_last_axis(self) -> set[str]:
        """Tensors a LayerNormalization over the last axis of a 4-D tensor reads or writes."""
        found = set()
        for node in self.static.graph.node:
            if node.op_type != "LayerNormalization":
                continue
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            if len(self.shapes.get(node.input[0], ())) == 4 and axis in (-1, 3):
                found.update([node.input[0], node.output[0]])
        return found

    def _tokens(self, count: int) -> tuple | None:
        """``(prefix, grid)`` for ``count`` tokens with the fewest prefix tokens (fewer than
        the patches, at most ``MAX_PREFIX``); None when no grid fits."""
        for k in range(0, MAX_PREFIX + 1):
            grid = next((g for g in self.grids if g[0] * g[1] == count - k and k < count - k), None)
            if grid is not None:
                return k, grid
        return None

    def fold(self, tensor: str) -> TokenFold | None:
        """How ``tensor`` folds to ``(B, C, h, w)``; None for a channel-first layer (or any
        tensor of a model whose input is not a 2-D image)."""
        s = self.shapes.get(tensor)
        if s is None or len(self.input_shape) != 4 or len(s) not in (3, 4):
            return None
        if len(s) == 4:
            nhwc = tuple(s[1:3]) in self.grids
            if nhwc and (tuple(s[2:4]) not in self.grids or tensor in self._channels_last):
                return TokenFold("nhwc", 0, tuple(s[1:3]))
            return None
        found = [(f[0], layout, f[1]) for layout, count in (("tokens", s[1]), ("channels", s[2]))
                 for f in [self._tokens(count)] if f is not None]
        if not found:
            return None
        prefix, layout, grid = min(found, key=lambda f: f[0])  # "tokens" first on a tie
        return TokenFold(layout, prefix, grid)

    def require_fold(self, tensor: str, layer: str) -> TokenFold | None:
        """``fold(tensor)``; ``ValueError`` for a 3-D layer of an image model that is no
        token grid (say what to pass instead)."""
        found = self.fold(tensor)
        s = self.shapes.get(tensor)
        if found is None and s is not None and len(s) == 3 and len(self.input_shape) == 4:
            raise ValueError(
                f"layer {layer!r} has shape {s[1:]} per sample: neither axis holds a patch grid of "
                f"the {self.input_shape[2:]} input (after up to {MAX_PREFIX} class / register "
                "tokens); pass reshape_transform= (a function (B, ...) → (B, C, h, w)) or "
                "another layer")
        return found


def layer_fold(proto: onnx.ModelProto, tensor: str, input_shapes: dict) -> TokenFold | None:
    """``GridFinder(proto, input_shapes).require_fold(tensor, tensor)``: the fold of one layer."""
    return GridFinder(proto, input_shapes).require_fold(tensor, tensor)
