"""Attention engine: the attention probabilities of a transformer graph, their gradients, and
the rollout products of the attention-based methods (``methods/rollout.py``).

The attention probabilities are the outputs of the Softmax nodes over the last axis whose
tensor is ``(B, heads, T, T)`` (or ``(B·heads, T, T)``) for one ``T`` shared by every block,
in graph order (= block order): timm and Hugging Face ViT / DeiT exports (TorchScript or
dynamo exporter) write attention this way. The ``T`` tokens are ``prefix`` class /
distillation / register tokens followed by the ``h × w`` patch grid (``tokens.GridFinder``:
the patch-embedding convolution's grid or the input's aspect ratio, the fewest prefix tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from .. import graph, targets
from ..autodiff import gradient_model
from ..errors import NonFiniteError, UnsupportedModelError
from ..finite import check_finite_output, describe_nonfinite
from ..runtime import Model
from ..tokens import MAX_PREFIX, GridFinder
from .cam import default_upsampler, minmax_normalizer

FUSIONS = ("mean", "max", "min")
_NO_ATTENTION = ("rollout and gradient-weighted rollout read the attention probabilities (the "
                 "Softmax of each self-attention block); {what}: use gradcam / layercam on a "
                 "layer, or gradients / occlusion / RISE instead")


@dataclass(frozen=True)
class AttentionLayout:
    """Where the attention of a graph is, for one per-sample input shape: ``tensors``, the
    attention probabilities in block order; ``tokens`` ``T``; ``prefix``, the class /
    distillation / register tokens before the patches; ``grid``, the patch grid (``()`` for
    token inputs such as text, where the map is over the ``T`` tokens)."""

    tensors: tuple[str, ...]
    tokens: int
    prefix: int
    grid: tuple[int, ...]


def softmax_outputs(proto: onnx.ModelProto) -> list[str]:
    """Outputs of the Softmax nodes over the last axis, in graph order."""
    shapes = graph.tensor_shapes(proto)
    found = []
    for node in proto.graph.node:
        if node.op_type != "Softmax":
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        rank = len(shapes.get(node.input[0], ())) or None
        if axis == -1 or (rank is not None and axis == rank - 1):
            found.append(node.output[0])
    return found


def attention_layout(model: Model, sample_shape: Sequence[int]) -> AttentionLayout:
    """The ``AttentionLayout`` of ``model`` for samples of shape ``sample_shape`` (cached on
    the model); ``UnsupportedModelError`` without self-attention over one token set."""
    memo = model.memo("attention_layout")
    key = tuple(int(s) for s in sample_shape)
    if key not in memo:
        memo[key] = _layout(model, key)
    return memo[key]


def _layout(model: Model, sample_shape: tuple[int, ...]) -> AttentionLayout:
    proto = model.require_proto("attention rollout")
    if not softmax_outputs(proto):
        raise UnsupportedModelError(_NO_ATTENTION.format(what="this model has no Softmax node"))
    batch = model.input.shape[0] if isinstance(model.input.shape[0], int) else 1  # a pinned batch
    inputs = {model.input_name: (batch,) + sample_shape}
    inputs.update({k: (batch,) + v for k, v in other_shapes(model, sample_shape).items()})
    static = graph.static_shapes(proto, inputs)
    shapes = graph.tensor_shapes(static)
    tensors = [t for t in softmax_outputs(static)
               if len(shapes.get(t, ())) in (3, 4) and shapes[t][-1] == shapes[t][-2] > 1]
    if not tensors:
        raise UnsupportedModelError(_NO_ATTENTION.format(
            what="no Softmax of this model is a (B, heads, T, T) attention (a CNN?)"))
    windowed = [t for t in tensors if len(shapes[t]) == 4 and shapes[t][0] != batch]
    if windowed:
        raise UnsupportedModelError(
            f"the attention {windowed[0]!r} {shapes[windowed[0]]} runs over {shapes[windowed[0]][0] // batch} "
            "windows per sample (Swin-style windowed attention): rollout needs global "
            "self-attention over one token set; use gradcam on a stage's output instead")
    sizes = sorted({shapes[t][-1] for t in tensors})
    if len(sizes) > 1:
        raise UnsupportedModelError(
            f"the attention tensors have different token counts {sizes} (a hierarchical or "
            "pooling transformer): rollout multiplies the attention of every block over one "
            "token set; use gradcam on a block's output instead")
    tokens = sizes[0]
    if model.input.dtype.kind in "iu" and len(sample_shape) == 1:  # token ids (B, T)
        return AttentionLayout(tuple(tensors), tokens, 0, ())
    if len(sample_shape) != 3:
        raise UnsupportedModelError(f"rollout maps the tokens of images (C, H, W) or token ids (T,); "
                                    f"the input is {model.input.describe()}")
    prefix, grid = patch_grid(GridFinder(proto, inputs, static=static), tokens)
    return AttentionLayout(tuple(tensors), tokens, prefix, grid)


def other_shapes(model: Model, sample_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of the model's other inputs: their declared ones, or the explained
    input's where the rank is the same (a token model's ``attention_mask``, ``token_type_ids``)."""
    out = {}
    for info in model.inputs:
        dims = tuple(info.shape[1:])
        if info.name == model.input_name:
            continue
        if len(dims) == len(sample_shape) and not all(isinstance(d, int) for d in dims):
            dims = tuple(sample_shape)
        if all(isinstance(d, int) for d in dims):
            out[info.name] = dims
    return out


def patch_grid(finder: GridFinder, tokens: int) -> tuple[int, tuple[int, ...]]:
    """``(prefix tokens, patch grid)`` of ``tokens``: the fewest leading tokens (at most
    ``tokens.MAX_PREFIX``, fewer than the patches) that leave one of ``finder``'s grids."""
    for prefix in range(MAX_PREFIX + 1):
        grid = next((g for g in finder.grids if g[0] * g[1] == tokens - prefix > prefix), None)
        if grid is not None:
            return prefix, tuple(grid)
    raise UnsupportedModelError(f"cannot fold {tokens} attention tokens onto a patch grid of the "
                                f"{finder.input_shape[2:]} input (after up to {MAX_PREFIX} class / "
                                "register tokens)")


# ---------------------------------------------------------------------------- running
def _per_sample(a: np.ndarray, n: int, tokens: int) -> np.ndarray:
    """Attention ``(n, heads, T, T)`` from the graph's ``(n, heads, T, T)`` or ``(n·heads, T, T)``."""
    return a.reshape(n, -1, tokens, tokens)


def attention_maps(model: Model, x: np.ndarray, layout: AttentionLayout, batch_size: int,
                   extra_inputs: dict | None = None) -> list[np.ndarray]:
    """The attention probabilities of every block on ``x``: ``(N, heads, T, T)`` each (one
    forward pass per batch); ``NonFiniteError`` when one is not finite."""
    child = model.with_outputs(list(layout.tensors))
    got = child.predict(x, outputs=list(layout.tensors), batch_size=batch_size, verbose=False,
                        extra_inputs=extra_inputs)
    maps = [_per_sample(got[t], len(x), layout.tokens) for t in layout.tensors]
    for t, a in zip(layout.tensors, maps):
        check_finite_output(a, f"the attention {t!r}")
    return maps


def attention_gradients(model: Model, x: np.ndarray, layout: AttentionLayout, target: targets.Target,
                        batch_size: int, extra_inputs: dict | None = None
                        ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(attentions, gradients)``: every block's attention probabilities on ``x`` and the
    gradients of each sample's ``target`` score w.r.t. them, ``(N, heads, T, T)`` each, from
    one run of a gradient model per batch; ``NonFiniteError`` when one is not finite."""
    tensors = list(layout.tensors)
    gm = gradient_model(model, tensors, output=target.output, batch_size=min(len(x), batch_size),
                        input_shape=x.shape[1:], activation=target.activation,
                        extra_shapes=other_shapes(model, x.shape[1:]))
    res = gm.run(x, target, extra_inputs=extra_inputs)
    check_finite_output(res["outputs"][gm.output], f"output {gm.output!r}")
    acts, grads = [], []
    for t in tensors:
        acts.append(_per_sample(res["activations"][t], len(x), layout.tokens))
        grads.append(_per_sample(res["gradients"][t], len(x), layout.tokens))
        check_finite_output(acts[-1], f"the attention {t!r}")
        check_finite_output(grads[-1], f"the gradient of the target w.r.t. the attention {t!r}")
    return acts, grads


# ---------------------------------------------------------------------------- rollout
def fuse_heads(a: np.ndarray, fusion: str) -> np.ndarray:
    """``(N, heads, T, T)`` → ``(N, T, T)``: the mean, max or min over the heads."""
    return {"mean": np.mean, "max": np.max, "min": np.min}[fusion](a, axis=1)


def discard_lowest(a: np.ndarray, ratio: float) -> np.ndarray:
    """``(N, T, T)`` with the lowest ``ratio`` of each sample's entries set to 0 (never the
    class token's attention to itself, entry (0, 0)), as vit-explain's ``discard_ratio``."""
    n, t, _ = a.shape
    k = int(t * t * ratio)
    if k == 0:
        return a
    flat = a.reshape(n, -1).copy()
    lowest = np.argsort(flat, axis=1, kind="stable")[:, :k]
    for row, idx in zip(flat, lowest):
        row[idx[idx != 0]] = 0.0
    return flat.reshape(a.shape)


def rollout_factors(attentions: Sequence[np.ndarray], fusion: str = "mean",
                    discard_ratio: float = 0.0) -> list[np.ndarray]:
    """Attention rollout (Abnar & Zuidema 2020), ``R = Â_L ··· Â_1``: the factors
    ``Â = norm_rows(fuse(A) + I)`` (= ½A + ½I for row-stochastic attention), ``(N, T, T)``."""
    out = []
    for a in attentions:
        fused = discard_lowest(fuse_heads(a.astype(np.float64), fusion), discard_ratio)
        fused = fused + np.eye(fused.shape[-1])
        out.append(fused / fused.sum(-1, keepdims=True))
    return out


def gradient_factors(attentions: Sequence[np.ndarray], gradients: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Chefer, Gur & Wolf 2021 ("Generic Attention-model Explainability"), self-attention rule
    ``R = I``, ``R ← R + Ā R`` per block, ``Ā = mean_heads((∇A ⊙ A)⁺)``: ``R = (I + Ā_L) ··· (I +
    Ā_1)``, the factors ``I + Ā`` ``(N, T, T)``."""
    return [np.maximum(a.astype(np.float64) * g, 0.0).mean(1) + np.eye(a.shape[-1])
            for a, g in zip(attentions, gradients)]


def relevance_rows(factors: Sequence[np.ndarray], layout: AttentionLayout) -> np.ndarray:
    """The class token's row of ``R = M_L ··· M_1`` (the mean row where the model has no
    prefix token) → ``(N, T)`` float64, as a row vector times the factors from the last block
    down (``O(L·T²)``, the product itself is never formed)."""
    n, t = factors[0].shape[:2]
    if layout.prefix or not layout.grid:
        row = np.zeros((n, 1, t))
        row[:, 0, 0] = 1.0
    else:
        row = np.full((n, 1, t), 1.0 / t)
    for m in reversed(factors):
        row = row @ m
    return row[:, 0]


def token_map(rows: np.ndarray, layout: AttentionLayout) -> np.ndarray:
    """``relevance_rows`` ``(N, T)`` over the patch tokens folded to ``(N, 1, h, w)``; for
    token inputs (no grid), over all ``T`` tokens ``(N, T)``, the [CLS] token's own entry (the
    identity's 1, dwarfing the others) set to the row's minimum as the authors' BERT code."""
    if not layout.grid:
        rows = rows.copy()
        rows[:, 0] = rows.min(1)
        return rows.astype(np.float32)
    return rows[:, layout.prefix:].reshape((len(rows), 1) + layout.grid).astype(np.float32)


class AttentionMethod:
    """Base of the attention-based methods: constructor, ``compute_map`` / ``__call__``.

    A method class sets ``gradients`` (whether it reads dS/dA) and its rule
    ``_factors(attentions, gradients or None) → [M_l (N, T, T)]``, ``R = M_L ··· M_1``.

    Args:
        model: anything ``Model`` accepts (a ViT / DeiT / BERT-style encoder graph).
        upsampler: ``upsampler(spatial size)(raw map)`` (default: bilinear, as the CAMs).
        postprocessing: applied to the upsampled map (default: min-max to (0, 1), hot = 1).
        batch_size: most samples per run.
    """

    gradients = False

    def __init__(self, model: Any, upsampler: Callable | None = None,
                 postprocessing: Callable | None = None, batch_size: int = 8) -> None:
        self.model = targets.as_model(model)
        if not softmax_outputs(self.model.require_proto(type(self).__name__)):
            raise UnsupportedModelError(_NO_ATTENTION.format(what="this model has no Softmax node"))
        self.upsampler = default_upsampler if upsampler is None else upsampler
        self.postprocessing = minmax_normalizer if postprocessing is None else postprocessing
        self.batch_size = targets.positive_int("batch_size", batch_size)

    def layout(self, sample_shape: Sequence[int]) -> AttentionLayout:
        """The attention tensors, tokens and patch grid for samples of ``sample_shape``."""
        return attention_layout(self.model, sample_shape)

    def compute_map(self, x: np.ndarray, class_idx: Any = None, *, extra_inputs: dict | None = None,
                    **inputs: Any) -> np.ndarray:
        """Raw map ``(B, 1, h, w)`` on the patch grid (``(B, T)`` over the tokens of token ids
        ``(B, T)``); ``class_idx``: None (argmax), an int, B ints or a ``Target``; the model's
        other inputs (``attention_mask``, ...) as ``extra_inputs={name: array}`` or ``name=array``."""
        x = self.model.check_input(x)
        extra_inputs = {**(extra_inputs or {}), **inputs} or None
        lay = self.layout(x.shape[1:])
        if self.gradients:
            acts, grads = attention_gradients(self.model, x, lay, targets.target(class_idx),
                                              self.batch_size, extra_inputs)
        else:
            acts, grads = attention_maps(self.model, x, lay, self.batch_size, extra_inputs), None
        raw = token_map(relevance_rows(self._factors(acts, grads), lay), lay)
        detail = describe_nonfinite(raw)
        if detail is not None:
            raise NonFiniteError(f"{type(self).__name__}: the rollout overflowed ({detail})")
        return raw

    def __call__(self, x: np.ndarray, class_idx: Any = None, *, extra_inputs: dict | None = None,
                 **inputs: Any) -> np.ndarray:
        """``postprocessing(upsampler(spatial size)(compute_map(...)))`` → ``(B, 1, H, W)``
        (token ids: ``postprocessing(compute_map(...))``, ``(B, T)``)."""
        raw = self.compute_map(x, class_idx, extra_inputs=extra_inputs, **inputs)
        if raw.ndim == 4:
            raw = self.upsampler(np.shape(x)[2:])(raw)
        return np.asarray(self.postprocessing(raw))

    def explain(self, x: np.ndarray, target: targets.Target, extra_inputs: dict | None = None,
                **inputs: Any) -> np.ndarray:
        """The registry's protocol: ``(B, 1, H, W)`` (token ids: ``(B, T)``) post-processed map."""
        return self(x, target, extra_inputs=extra_inputs, **inputs)

    def _factors(self, attentions: list[np.ndarray], gradients: list[np.ndarray] | None) -> list[np.ndarray]:
        raise NotImplementedError
