"""Attention-based explanations of vision transformers (ViT, DeiT; timm and Hugging Face
exports), read from the attention probabilities of the graph (``engines.attention``):

- ``AttentionRollout`` (Abnar & Zuidema 2020): the attention of every block, heads fused,
  with the residual connection as ½A + ½I, multiplied through the blocks; class-agnostic.
- ``GradientRollout`` (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers"; their ViT "transformer
  attribution"): each block's attention weighted by the gradient of the class score,
  rectified and averaged over the heads, accumulated as ``R ← R + Ā R`` from ``R = I``.

Both return the class token's row over the patch tokens (class, distillation and register
tokens dropped), folded to the patch grid and upsampled to the image, ``(B, 1, H, W)``,
min-max normalised (hot = 1) by default.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..engines.attention import FUSIONS, AttentionMethod, gradient_factors, rollout_factors
from ..finite import check_number
from ..registry import method

__all__ = ["AttentionRollout", "GradientRollout"]


@method("rollout", kind="attention", summary="attention rollout (transformers; class-agnostic)",
        flags={"batch": "batch_size"})
class AttentionRollout(AttentionMethod):
    """Attention rollout: per block ``Â = norm_rows(fuse_heads(A) + I)``, ``R = Â_L ··· Â_1``,
    the class token's row of ``R`` over the patches.

    ``head_fusion``: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over the heads;
    ``discard_ratio``: the lowest fraction of each block's fused attention set to 0 before
    adding the identity (0: the paper; vit-explain's option). With no discarding the rows
    of ``fuse(A) + I`` sum to 2 for mean fusion: ``Â = ½A + ½I``, the paper's formula. The
    map is the same for every class (``class_idx`` is ignored).
    """

    def __init__(self, model: Any, head_fusion: str = "mean", discard_ratio: float = 0.0,
                 upsampler: Callable | None = None, postprocessing: Callable | None = None,
                 batch_size: int = 8) -> None:
        super().__init__(model, upsampler, postprocessing, batch_size)
        if head_fusion not in FUSIONS:
            raise ValueError(f"head_fusion must be one of {FUSIONS}, got {head_fusion!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = check_number("discard_ratio", discard_ratio, 0.0, 1.0, open_max=True)

    def _factors(self, attentions: list[np.ndarray], gradients: None) -> list[np.ndarray]:
        return rollout_factors(attentions, self.head_fusion, self.discard_ratio)


@method("grad-rollout", kind="attention",
        summary="gradient-weighted attention rollout (Chefer et al. 2021 transformer attribution)",
        flags={"batch": "batch_size"})
class GradientRollout(AttentionMethod):
    """Chefer et al. 2021: ``R = I``; per block ``Ā = mean_heads((dS/dA ⊙ A)⁺)``,
    ``R ← R + Ā R``; the class token's row of ``R`` over the patches. ``S`` is the target's
    score (the raw class logit by default, as the authors' code)."""

    gradients = True

    def _factors(self, attentions: list[np.ndarray], gradients: list[np.ndarray]) -> list[np.ndarray]:
        return gradient_factors(attentions, gradients)
