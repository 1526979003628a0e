"""LIME (Ribeiro et al., KDD 2016) and KernelSHAP (Lundberg & Lee, NeurIPS 2017) with Captum's
arguments (``captum.attr.Lime``, ``captum.attr.KernelShap``), on an ONNX model.

Both perturb groups of input elements (``feature_mask``: Captum's integer mask, or ``"grid"`` /
``"superpixels"`` with about ``n_features`` groups): a coalition z keeps the groups where
z = 1 and puts the baseline in the others. LIME fits a weighted linear surrogate
score ≈ b + Σ β_m z_m; KernelSHAP the Shapley-kernel weighted one under Σφ = f(x) − f(baseline),
whose coefficients are the Shapley values of the groups. Scores are the model's raw outputs
(Captum's forward with ``target``) unless ``activate`` says otherwise. Coalitions come from
``numpy.random.default_rng(seed)``; every item of a batch sees the same ones.

Non-finite numbers (see ``onnx_xai.finite``): NaN / inf in ``x`` or ``baselines`` is a
``ValueError``; a non-finite output on ``x`` a ``NonFiniteError``. Perturbed copies that score
NaN / inf are left out of the fit with a ``NonFiniteWarning`` giving their count; KernelSHAP
refuses (``NonFiniteError``) when the baseline itself scores NaN / inf.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..engines.surrogate import (SurrogateExplainer, check_coalitions, exp_kernel, fit_linear,
                                 fit_shapley, lime_coalitions, shap_coalitions)
from ..finite import check_number
from ..layout import channel_first
from ..registry import method
from ..runtime import ModelSource
from ..targets import as_model

SURROGATES = ("lasso", "ridge", "linear")


@method("lime", kind="perturbation", summary="LIME (weighted linear surrogate on feature groups; Captum)",
        flags={"samples": "n_samples", "seed": "seed", "batch": "perturbations_per_eval"},
        defaults={"n_samples": 500, "feature_mask": "grid", "seed": 0}, signed=True)
class LIME(SurrogateExplainer):
    """``captum.attr.Lime``: weighted linear surrogate on binary feature coalitions.

    Args:
        model: a ``Model`` or anything ``Model`` accepts; output ``(B, K)``.
        n_samples: perturbed copies per item (Captum's default 25; use hundreds for images).
        perturbations_per_eval: copies per ONNX Runtime run.
        feature_mask: None (every element its own feature, as Captum), an integer array
            broadcastable to the input, ``"grid"`` or ``"superpixels"`` (SLIC, needs scikit-image).
        baselines: the value of absent features: a number or an array broadcastable to x (0).
        n_features: about how many cells / superpixels the string masks make.
        similarity_func: None → Captum's exp(−d² / (2·kernel_width²)) with d the cosine (or,
            ``distance_mode="euclidean"``, Euclidean) distance between the flattened input and
            its copy; or a callable ``(x (1, C, ...), copies (n, C, ...), z (n, M) float32) →
            (n,)`` weights, called per batch (Captum calls it per copy).
        surrogate: ``"lasso"`` (Captum's default ``SkLearnLasso``), ``"ridge"`` or ``"linear"``
            (``SkLearnRidge`` / ``SkLearnLinearRegression``); ``alpha``: their penalty (see
            ``engines.surrogate.fit_linear`` for the objectives, scikit-learn's).
        activate: False (raw outputs, Captum), True (softmax; sigmoid for one class) or a callable.
        seed: coalitions' seed (None: fresh). output: the output read (default: the first).
        layout: the input's layout, ``"nchw"``, ``"nhwc"`` or ``"auto"`` (None: the Model's; see
            ``onnx_xai.layout``): ``x``, array ``feature_mask`` / ``baselines`` and the
            attributions are in it.
    """

    desc = "LIME"

    def __init__(self, model: ModelSource, n_samples: int = 25, perturbations_per_eval: int = 16, *,
                 feature_mask: Any = None, baselines: Any = 0.0, n_features: int = 49,
                 similarity_func: Callable | None = None, kernel_width: float = 1.0,
                 distance_mode: str = "cosine", surrogate: str = "lasso", alpha: float = 0.01,
                 activate: Any = False, seed: int | None = None, output: str | None = None,
                 verbose: bool | None = None, layout: str | None = None) -> None:
        super().__init__(channel_first(as_model(model), layout), n_samples, perturbations_per_eval,
                         feature_mask, baselines, n_features, activate, seed, output, verbose)
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        if distance_mode not in ("cosine", "euclidean"):
            raise ValueError(f"distance_mode must be 'cosine' or 'euclidean', got {distance_mode!r}")
        if similarity_func is not None and not callable(similarity_func):
            raise ValueError(f"similarity_func must be None or a callable, got {similarity_func!r}")
        self.kernel_width = check_number("kernel_width", kernel_width, 0.0, open_min=True)
        self.alpha = check_number("alpha", alpha, 0.0)
        self.similarity_func, self.distance_mode, self.surrogate = similarity_func, distance_mode, surrogate

    def _draw(self, rng, m, given):
        return (lime_coalitions(rng, self.n_samples, m) if given is None else given), None

    def _similarity(self):
        if self.similarity_func is not None:
            return {"custom_similarity": self.similarity_func}
        return {"similarity": lambda item: exp_kernel(item, self.kernel_width, self.distance_mode)}

    def _fit(self, z, y, w):
        return fit_linear(z, y, w, self.surrogate, self.alpha)


@method("kernelshap", kind="perturbation", summary="KernelSHAP (Shapley values of feature groups; Captum)",
        flags={"samples": "n_samples", "seed": "seed", "batch": "perturbations_per_eval"},
        defaults={"n_samples": 500, "feature_mask": "grid", "seed": 0}, signed=True)
class KernelSHAP(SurrogateExplainer):
    """``captum.attr.KernelShap``: Shapley values of feature groups by kernel-weighted regression.

    Args as ``LIME`` (no similarity or penalty: the Shapley kernel fixes the weights). With
    ``n_samples ≥ 2^M`` (M ≤ 20 groups) every coalition is evaluated (2^M runs) and the result
    is the exact Shapley values; else coalitions are drawn as Captum draws them, the first two
    being the full and the empty one (counted in ``n_samples``). The efficiency constraint
    Σ_m φ_m = f(x) − f(baseline) holds exactly (Captum approximates it with weight 1e6).
    Coalitions given to ``__call__`` are weighted 1 each, as drawn ones.
    """

    desc = "KernelSHAP"

    def __init__(self, model: ModelSource, n_samples: int = 25, perturbations_per_eval: int = 16, *,
                 feature_mask: Any = None, baselines: Any = 0.0, n_features: int = 49,
                 activate: Any = False, seed: int | None = None, output: str | None = None,
                 verbose: bool | None = None, layout: str | None = None) -> None:
        super().__init__(channel_first(as_model(model), layout), n_samples, perturbations_per_eval,
                         feature_mask, baselines, n_features, activate, seed, output, verbose)
        if self.n_samples < 2:
            raise ValueError(f"KernelSHAP needs n_samples >= 2 (the input and the baseline), got {n_samples}")

    def _draw(self, rng, m, given):
        if given is None:
            z, w, _ = shap_coalitions(rng, self.n_samples, m)
            return z, w
        ends = [r for r in (np.ones((1, m), np.uint8), np.zeros((1, m), np.uint8))
                if not (given == r).all(1).any()]
        z = check_coalitions(np.concatenate(ends + [given]), m)
        return z, np.ones(len(z))

    def _fit(self, z, y, w):
        return fit_shapley(z, y, w)
