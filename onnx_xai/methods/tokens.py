"""Per-token attributions of token models (integer ``input_ids`` ``(B, T)`` → ``(B, T)``).

``EmbeddingGrad`` and ``EmbeddingIG`` differentiate w.r.t. the embedding output ``e``
``(B, T, H)`` (``engines.embedding``) and sum over the hidden axis, as Captum's
``LayerGradientXActivation`` / ``LayerIntegratedGradients`` on ``word_embeddings``;
``TokenOcclusion`` and ``TokenRISE`` replace tokens by a pad / ``[MASK]`` id (or mask them
out through ``attention_mask``) and read the target score. Every call takes the model's
other inputs as ``extra_inputs`` or by name (``attention_mask=...``, ``token_type_ids=...``:
``(B, T)`` or one row for all). Scores are the target's (``index``: None = each sequence's top class, an int,
one int per sequence, or any ``onnx_xai.targets`` target).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import targets
from ..engines.embedding import check_token_input, embedding_cut
from ..engines.saliency import ig_alphas_weights
from ..finite import check_finite_output, check_number
from ..registry import method
from ..runtime import ModelSource
from .saliency import IntegratedGradients, VanillaGrad

_REDUCE = ("sum", "norm")


class TokenMethod:
    """Shared arguments: the token model, its explained output, extra inputs per sequence."""

    def __init__(self, model: ModelSource, *, output: str | None = None, batch_size: int = 16) -> None:
        self.model = targets.as_model(model)
        check_token_input(self.model, type(self).__name__)
        self.output = self.model.check_outputs(output)[0]
        self.batch_size = targets.positive_int("batch_size", batch_size)

    def check(self, input_ids: Any, extra_inputs: dict | None, named: dict) -> tuple[np.ndarray, dict]:
        """``(B, T)`` ids and the checked extra inputs (given as a dict and / or by name)."""
        ids = self.model.check_input(input_ids)
        return ids, self.model.check_extra_inputs(dict(extra_inputs or {}, **named))

    def explain(self, x: np.ndarray, target: targets.Target, extra_inputs: dict | None = None,
                **inputs: Any) -> np.ndarray:
        """The registry's protocol: ``(B, T)`` per-token attributions of ``target``."""
        return self(x, target, extra_inputs=extra_inputs, **inputs)


@method("embedding-grad", kind="token", summary="gradient x embedding per token (token models)",
        flags={"batch": "batch_size"}, signed=True)
class EmbeddingGrad(TokenMethod):
    """Gradient of the score w.r.t. the embedding output ``e`` ``(B, T, H)``, per token:
    ``reduce="sum"``: Σ_h g·e (Captum's ``LayerGradientXActivation`` summed over the hidden
    axis); ``"norm"``: ‖g‖₂ over h. ``embedding_layer``: the embedding output (tensor, node
    or module name; default: the Gather of the ids)."""

    def __init__(self, model: ModelSource, *, embedding_layer: str | None = None, reduce: str = "sum",
                 batch_size: int = 16, output: str | None = None) -> None:
        super().__init__(model, output=output, batch_size=batch_size)
        if reduce not in _REDUCE:
            raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
        self.reduce = reduce
        self.cut = embedding_cut(self.model, embedding_layer)

    def embeddings(self, ids: np.ndarray, extra: dict) -> np.ndarray:
        """``(B, T, H)`` embedding output for ``ids``."""
        return self.cut.embed(ids, extra, self.batch_size)

    def gradients(self, input_ids: Any, index: Any = None, *, extra_inputs: dict | None = None,
                  **inputs: Any) -> np.ndarray:
        """``(B, T, H)`` d score / d e at the embeddings of ``input_ids``."""
        return self._embedded_gradients(input_ids, index, extra_inputs, inputs)[0]

    def __call__(self, input_ids: Any, index: Any = None, *, extra_inputs: dict | None = None,
                 **inputs: Any) -> np.ndarray:
        """``(B, T)`` per-token attributions (other inputs as ``extra_inputs`` or by name)."""
        g, e = self._embedded_gradients(input_ids, index, extra_inputs, inputs)
        if self.reduce == "norm":
            return np.sqrt((g.astype(np.float64) ** 2).sum(-1)).astype(np.float32)
        return (g * e).sum(-1)

    def _embedded_gradients(self, input_ids, index, extra_inputs, inputs):
        ids, extra = self.check(input_ids, extra_inputs, inputs)
        e = self.embeddings(ids, extra)
        grad = VanillaGrad(self.cut.cut, batch_size=self.batch_size, output=self.output)
        return grad(e, self._target(index), **self.cut.extra_inputs(ids, extra)), e

    def _target(self, index: Any) -> targets.Target:
        return targets.target(index, output=self.output)


@method("embedding-ig", kind="token", summary="integrated gradients at the embedding output (Captum's "
        "LayerIntegratedGradients; token models)", flags={"steps": "n_steps", "batch": "internal_batch_size"},
        defaults={"n_steps": 50}, signed=True)
class EmbeddingIG(EmbeddingGrad):
    """Integrated gradients at the embedding output, summed over the hidden axis:
    Σ_h (e − e_b) · Σ_i w_i ∂score/∂e (e_b + α_i (e − e_b)) — Captum's
    ``LayerIntegratedGradients(model, word_embeddings)(ids, baselines=...).sum(-1)``.

    Args:
        baseline: the reference: a token id (default 0, BERT's ``[PAD]``) at every position,
            ``(B, T)`` / ``(T,)`` ids, or ``"zeros"`` (zero embeddings).
        n_steps, method: Captum's quadrature (``gausslegendre`` default, ``riemann_*``).
        internal_batch_size: most path points per gradient run.
    """

    def __init__(self, model: ModelSource, baseline: Any = 0, n_steps: int = 50,
                 method: str = "gausslegendre", internal_batch_size: int = 16, *,
                 embedding_layer: str | None = None, output: str | None = None) -> None:
        super().__init__(model, embedding_layer=embedding_layer, batch_size=internal_batch_size,
                         output=output)
        if not (isinstance(baseline, str) and baseline == "zeros"):
            baseline = np.asarray(baseline)
            if baseline.dtype.kind not in "iu" or baseline.ndim > 2:
                raise ValueError(f"baseline must be a token id, (B, T) / (T,) ids or 'zeros', got {baseline!r}")
        self.n_steps = targets.positive_int("n_steps", n_steps)
        ig_alphas_weights(self.n_steps, method)  # checks the rule
        self.baseline, self.method = baseline, method

    def attributions(self, input_ids: Any, index: Any = None, *, extra_inputs: dict | None = None,
                     return_convergence_delta: bool = False, **inputs: Any) -> Any:
        """``(B, T, H)`` attributions at the embedding output (and Captum's ``(B,)`` delta)."""
        ids, extra = self.check(input_ids, extra_inputs, inputs)
        e = self.embeddings(ids, extra)
        if isinstance(self.baseline, str):
            base = np.zeros_like(e)
        else:
            base_ids = np.broadcast_to(self.baseline, ids.shape) if self.baseline.ndim < 2 else self.baseline
            base = self.embeddings(self.model.check_input(base_ids), extra)
        ig = IntegratedGradients(self.cut.cut, baseline=base, n_steps=self.n_steps, method=self.method,
                                 internal_batch_size=self.batch_size, output=self.output)
        return ig(e, self._target(index), return_convergence_delta, **self.cut.extra_inputs(ids, extra))

    def __call__(self, input_ids: Any, index: Any = None, *, extra_inputs: dict | None = None,
                 **inputs: Any) -> np.ndarray:
        """``(B, T)`` per-token attributions (other inputs as ``extra_inputs`` or by name)."""
        return self.attributions(input_ids, index, extra_inputs=extra_inputs, **inputs).sum(-1)


class TokenPerturbation(TokenMethod):
    """Shared by occlusion and RISE: the replacement id (or the attention mask) and the
    scores of perturbed copies of one sequence."""

    def __init__(self, model: ModelSource, *, mask_id: int = 0, mask_input: str | None = None,
                 output: str | None = None, batch_size: int = 64) -> None:
        super().__init__(model, output=output, batch_size=batch_size)
        self.mask_id = targets.positive_int("mask_id", mask_id, 0)
        if mask_input is not None and mask_input not in self.model.input_names:
            raise ValueError(f"mask_input {mask_input!r} is not an input of the model; inputs: "
                             f"{self.model.input_names}")
        self.mask_input = mask_input

    def scores(self, ids: np.ndarray, extra: dict, keep: np.ndarray, tgt: targets.Target) -> np.ndarray:
        """``(n,)`` target scores of ``n`` copies of one sequence ``ids`` ``(1, T)`` where
        ``keep`` ``(n, T)`` is False: the id set to ``mask_id``, or (``mask_input``) the
        attention mask set to 0."""
        n = len(keep)
        copies = np.repeat(ids, n, 0)
        if self.mask_input is None:
            copies[~keep] = self.mask_id
        else:
            extra[self.mask_input] = np.where(keep, np.broadcast_to(extra[self.mask_input], keep.shape), 0)
        out = self.model.predict(copies, outputs=self.output, batch_size=self.batch_size,
                                 extra_inputs=extra, verbose=False)
        return tgt(out)

    @staticmethod
    def _row(extra: dict, i: int, n: int) -> dict:
        """The extra inputs of sequence ``i`` of ``n`` (shared ones as they are)."""
        return {k: v[i:i + 1] if v.ndim and v.shape[0] == n else v for k, v in extra.items()}

    def resolved(self, ids: np.ndarray, extra: dict, index: Any) -> tuple[targets.Target, np.ndarray]:
        """The target fixed on the unperturbed outputs, and their ``(B,)`` scores."""
        out = self.model.predict(ids, outputs=self.output, batch_size=self.batch_size,
                                 extra_inputs=extra, verbose=False)
        check_finite_output(out, f"output {self.output!r}")
        tgt = targets.target(index, output=self.output).resolve(out)
        return tgt, tgt(out)


@method("token-occlusion", kind="token", summary="token windows replaced by a pad / mask id (token models)",
        flags={"mask_size": "window", "stride": "stride", "batch": "batch_size"}, signed=True,
        score="softmax")
class TokenOcclusion(TokenPerturbation):
    """Windows of ``window`` tokens (every ``stride``) replaced by ``mask_id`` (or masked
    out through the ``mask_input`` attention mask); a token's attribution is the mean, over
    the windows covering it, of score(x) − score(x occluded) — Captum's ``Occlusion`` with
    ``sliding_window_shapes=(window,)`` on the ids and ``baselines=mask_id``."""

    def __init__(self, model: ModelSource, window: int = 1, stride: int = 1, *, mask_id: int = 0,
                 mask_input: str | None = None, output: str | None = None, batch_size: int = 64) -> None:
        super().__init__(model, mask_id=mask_id, mask_input=mask_input, output=output, batch_size=batch_size)
        self.window = targets.positive_int("window", window)
        self.stride = targets.positive_int("stride", stride)

    def __call__(self, input_ids: Any, index: Any = None, *, extra_inputs: dict | None = None,
                 **inputs: Any) -> np.ndarray:
        """``(B, T)`` per-token score drops (other inputs as ``extra_inputs`` or by name)."""
        ids, extra = self.check(input_ids, extra_inputs, inputs)
        t = ids.shape[1]
        w = min(self.window, t)
        starts = np.arange(-(-(t - w) // self.stride) + 1) * self.stride  # the last one truncated
        keep = np.ones((len(starts), t), bool)
        for k, s in enumerate(starts):
            keep[k, s:s + w] = False
        tgt, base = self.resolved(ids, extra, index)
        covered = (~keep).sum(0)
        attr = np.zeros(ids.shape, np.float64)
        for i in range(len(ids)):
            drop = base[i] - self.scores(ids[i:i + 1], self._row(extra, i, len(ids)), keep,
                                         tgt.select(np.array([i])))
            attr[i] = (drop[:, None] * ~keep).sum(0) / np.maximum(covered, 1)
        return attr.astype(np.float32)


@method("token-rise", kind="token", summary="RISE with random token masks (token models)",
        flags={"n_masks": "n_masks", "seed": "seed", "batch": "batch_size"}, score="softmax")
class TokenRISE(TokenPerturbation):
    """RISE on tokens: ``n_masks`` random keep-masks (each token kept with probability
    ``p1``, ``seed``), dropped tokens replaced by ``mask_id`` (or masked out through
    ``mask_input``); attribution = Σ_m score_m · M_m / (n_masks · p1)."""

    def __init__(self, model: ModelSource, n_masks: int = 500, p1: float = 0.5, *, seed: int | None = 0,
                 mask_id: int = 0, mask_input: str | None = None, output: str | None = None,
                 batch_size: int = 64) -> None:
        super().__init__(model, mask_id=mask_id, mask_input=mask_input, output=output,
                                   batch_size=batch_size)
        self.n_masks = targets.positive_int("n_masks", n_masks)
        self.p1 = check_number("p1", p1, 0.0, 1.0, open_min=True, open_max=True)
        self.seed = seed

    def __call__(self, input_ids: Any, index: Any = None, *, extra_inputs: dict | None = None,
                 **inputs: Any) -> np.ndarray:
        """``(B, T)`` per-token saliency (other inputs as ``extra_inputs`` or by name)."""
        ids, extra = self.check(input_ids, extra_inputs, inputs)
        keep = np.random.default_rng(self.seed).random((self.n_masks, ids.shape[1])) < self.p1
        tgt, _ = self.resolved(ids, extra, index)
        attr = np.zeros(ids.shape, np.float64)
        for i in range(len(ids)):
            s = self.scores(ids[i:i + 1], self._row(extra, i, len(ids)), keep, tgt.select(np.array([i])))
            attr[i] = s @ keep / (self.n_masks * self.p1)
        return attr.astype(np.float32)

__all__ = ["EmbeddingGrad", "EmbeddingIG", "TokenOcclusion", "TokenRISE"]
