"""Gradient saliency with MONAI's and Captum's arguments and numbers, on an ONNX model.

``VanillaGrad``, ``SmoothGrad``, ``GuidedBackpropGrad``, ``GuidedBackpropSmoothGrad``
(``monai.visualize``), ``IntegratedGradients`` and ``InputXGradient`` (``captum.attr``).
All take ``x`` ``(N, C, *spatial)`` (2D or 3D, any batch) and return an array shaped like
``x``. Scores are the model's raw output (logit) of the class; ``index`` is None (argmax),
an int or one int per image. Noisy / interpolated samples of all images go through one
gradient model in batches of ``batch_size``.

Non-finite numbers (see ``onnx_xai.finite``): NaN / inf in ``x`` is a ``ValueError`` (count,
first index); a non-finite output or gradient at ``x`` itself (VanillaGrad, guided backprop,
InputXGradient; the output f(x) for SmoothGrad and IntegratedGradients) is a
``NonFiniteError`` naming the output.
SmoothGrad leaves out noisy samples whose output or gradient is not finite and averages the
others, with a ``NonFiniteWarning`` giving their count; IntegratedGradients refuses
(``NonFiniteError``) when any path point, or the baseline, is not finite. NaN / inf
arguments (``stdev_spread``, a numeric ``baseline``) are a ``ValueError``.
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np

from .. import targets
from ..engines.saliency import Sampling, add_per_image, ig_alphas_weights, sample_gradients
from ..errors import NonFiniteError
from ..finite import check_finite_array, check_finite_output
from ..layout import argument_to_channel_first, channel_first, to_channel_first, to_input_layout
from ..registry import method
from ..runtime import ModelSource

Baseline = Union[str, float, np.ndarray]
_BATCH = {"batch": "batch_size"}
_NOISY = {"batch": "batch_size", "samples": "n_samples", "seed": "seed"}


@method("vanilla", kind="gradient", summary="input gradient of the target score", flags=_BATCH, signed=True)
class VanillaGrad:
    """d score / d x (signed), as ``monai.visualize.VanillaGrad``.

    Args:
        model: anything ``Model`` accepts; a classifier with output ``(B, K)``.
        batch_size: most samples per gradient run (CPU runs are cut to cache size, see
            ``autodiff.RUN_BYTES``). output: the output read (default: the first).
        layout: the input's layout, ``"nchw"``, ``"nhwc"`` or ``"auto"`` (None: the Model's;
            see ``onnx_xai.layout``): ``x`` and the returned attributions are in it.

    ``index`` of a call: None (each image's argmax class), an int, one int per image, or any
    ``onnx_xai.targets`` target (a class through softmax, a region of a dense output, ...).
    """

    guided = False

    def __init__(self, model: ModelSource, *, batch_size: int = 16, output: str | None = None,
                 layout: str | None = None) -> None:
        self.model = channel_first(targets.as_model(model), layout)
        self.batch_size = targets.positive_int("batch_size", batch_size)
        self.output = self.model.check_outputs(output)[0]

    def target(self, index: Any) -> targets.Target:
        """``index`` (a class shorthand or a ``Target``) as a ``Target`` of this method's output."""
        return targets.target(index, output=self.output)

    def __call__(self, x: np.ndarray, index: Any = None, **extra_inputs) -> np.ndarray:
        """``(N, C, *spatial)`` gradients of each image's target score."""
        x = self._input(x)
        out = np.empty_like(x)
        sampling = Sampling(1, lambda i, _: x[i])
        for images, _, res in sample_gradients(self, x, sampling, self.target(index), extra_inputs):
            out[images] = res["gradients"][self.model.input_name]
        return to_input_layout(self.model, out)

    def _input(self, x: Any) -> np.ndarray:
        """``x`` in the input's layout → checked, channel-first."""
        return self.model.check_input(to_channel_first(self.model, x))

    def explain(self, x: np.ndarray, target: targets.Target, **extra_inputs) -> np.ndarray:
        """The registry's protocol: ``(N, C, *spatial)`` attributions of ``target``."""
        return self(x, target, **extra_inputs)

    @staticmethod
    def graph_rule(b: Any, taps: Any) -> str:
        """Export: the saliency is the input gradient itself."""
        return b.op("Identity", [taps.gradients])


@method("guided", kind="gradient", summary="guided backpropagation", flags=_BATCH, signed=True)
class GuidedBackpropGrad(VanillaGrad):
    """Guided backprop (``monai.visualize.GuidedBackpropGrad``): every ReLU / ReLU6 (Clip(0, m))
    passes back only positive gradients where its input is positive. MONAI swaps only
    modules named "...relu..."; an ONNX graph has no module names, so all of them here."""

    guided = True


@method("smoothgrad", kind="gradient", summary="SmoothGrad (MONAI: magnitude of noisy gradients)",
        flags=_NOISY, defaults={"n_samples": 25})
class SmoothGrad(VanillaGrad):
    """``monai.visualize.SmoothGrad``: gradients at ``n_samples`` noisy copies of each image.

    Noise is N(0, σ²) with σ = stdev_spread·(max − min) of the image, drawn image by image,
    sample by sample, as ``np.random.default_rng(seed).standard_normal((N·n_samples, ...),
    float32) · σ``. Result: sqrt(Σ g²)/n_samples if ``magnitude`` (MONAI's formula; not the
    root mean square) else Σ g/n_samples. With ``index`` None each noisy sample's own
    argmax class is explained, as MONAI does.

    Noisy samples whose output or gradient is NaN / inf are left out (the sums and the
    ``n_samples`` divisor count the finite ones only), with a ``NonFiniteWarning``; a
    non-finite output on ``x`` itself raises ``NonFiniteError`` (one extra forward pass).
    """

    def __init__(self, model: ModelSource, stdev_spread: float = 0.15, n_samples: int = 25,
                 magnitude: bool = True, verbose: bool = True, *, seed: int | None = None,
                 batch_size: int = 16, output: str | None = None, layout: str | None = None) -> None:
        super().__init__(model, batch_size=batch_size, output=output, layout=layout)
        self.stdev_spread = targets.check_number("stdev_spread", stdev_spread, 0.0)
        self.n_samples = targets.positive_int("n_samples", n_samples)
        self.magnitude, self.verbose, self.seed = bool(magnitude), verbose, seed

    def __call__(self, x: np.ndarray, index: Any = None, **extra_inputs) -> np.ndarray:
        """``(N, C, *spatial)`` smoothed gradients."""
        x = self._input(x)
        axes = tuple(range(1, x.ndim))
        std = (self.stdev_spread * (x.max(axes) - x.min(axes))).astype(x.dtype)
        rng = np.random.default_rng(self.seed)

        def noisy(images, _):
            noise = rng.standard_normal((len(images),) + x.shape[1:], dtype=np.float32)
            return x[images] + noise * std[images].reshape((-1,) + (1,) * len(axes))

        if not np.isfinite(std).all():
            raise ValueError(f"stdev_spread · (max − min) of the image overflows {x.dtype.name}: "
                             "rescale the input")
        fx = self.model.predict(x, outputs=self.output, batch_size=self.batch_size,
                                extra_inputs=extra_inputs, verbose=False)
        check_finite_output(fx, f"output {self.output or self.model.output_names[0]!r}")
        total = np.zeros(x.shape, np.float64)
        count = np.zeros(x.shape[0], np.int64)
        sampling = Sampling(self.n_samples, noisy, "drop", type(self).__name__, "noisy samples", self.verbose)
        for images, _, res in sample_gradients(self, x, sampling, self.target(index), extra_inputs):
            g = res["gradients"][self.model.input_name].astype(np.float64)  # 0 where not finite
            add_per_image(total, images, g * g if self.magnitude else g)
            np.add.at(count, images, res["finite"])
        if self.magnitude:
            total = np.sqrt(total)
        return to_input_layout(self.model, (total / count.reshape((-1,) + (1,) * len(axes))).astype(x.dtype))


@method("guided-smoothgrad", kind="gradient", summary="SmoothGrad of guided backpropagation",
        flags=_NOISY, defaults={"n_samples": 25})
class GuidedBackpropSmoothGrad(SmoothGrad):
    """``SmoothGrad`` of guided-backprop gradients (``monai.visualize.GuidedBackpropSmoothGrad``)."""

    guided = True


@method("inputxgrad", kind="gradient", summary="input x gradient (Captum)", flags=_BATCH, signed=True)
class InputXGradient(VanillaGrad):
    """``captum.attr.InputXGradient``: x · d score / d x."""

    def __call__(self, x: np.ndarray, index: Any = None, **extra_inputs) -> np.ndarray:
        grads = super().__call__(x, index, **extra_inputs)  # checks x
        return np.asarray(x).astype(grads.dtype) * grads

    @staticmethod
    def graph_rule(b: Any, taps: Any) -> str:
        """Export: input times its gradient."""
        return b.op("Mul", [taps.activations, taps.gradients])


@method("ig", kind="gradient", summary="integrated gradients (Captum; zero baseline)",
        flags={"steps": "n_steps", "seed": "seed", "batch": "internal_batch_size"},
        defaults={"n_steps": 50}, signed=True)
class IntegratedGradients(VanillaGrad):
    """``captum.attr.IntegratedGradients``: (x − b) · Σ_i w_i ∇f(b + α_i (x − b)).

    Args:
        baseline: ``"zeros"``; ``"uniform"`` (uniform in [min, max] of each image, seeded by
            ``seed``, as FastEstimator); a number; or an array shaped like ``x`` or one sample.
        n_steps, method: Captum's (see ``engines.saliency.ig_alphas_weights``).
        internal_batch_size: most path points per gradient run.

    A NaN / inf ``baseline`` is a ``ValueError``. Refused with ``NonFiniteError`` when the
    model's output or gradient is not finite at ``x``, at any path point (the quadrature
    needs them all; choose a baseline where the model is defined) or, for the convergence
    delta, at the baseline.
    """

    def __init__(self, model: ModelSource, baseline: Baseline = "zeros", n_steps: int = 50,
                 method: str = "gausslegendre", internal_batch_size: int = 16, *,
                 seed: int | None = None, output: str | None = None, verbose: bool = False,
                 layout: str | None = None) -> None:
        super().__init__(model, batch_size=internal_batch_size, output=output, layout=layout)
        if isinstance(baseline, str) and baseline not in ("zeros", "uniform"):
            raise ValueError(f"baseline must be 'zeros', 'uniform', a number or an array, got {baseline!r}")
        if not isinstance(baseline, str):
            baseline = check_finite_array("baseline", baseline)
        self.n_steps = targets.positive_int("n_steps", n_steps)
        self.alphas, self.weights = ig_alphas_weights(self.n_steps, method)
        self.baseline, self.method, self.seed, self.verbose = baseline, method, seed, verbose

    def baselines(self, x: np.ndarray) -> np.ndarray:
        """The baseline for each image of ``x``: ``(N, C, *spatial)``."""
        if isinstance(self.baseline, str):
            if self.baseline == "zeros":
                return np.zeros_like(x)
            axes = tuple(range(1, x.ndim))
            lo, hi = (v.reshape((-1,) + (1,) * len(axes)) for v in (x.min(axes), x.max(axes)))
            u = np.random.default_rng(self.seed).random(x.shape, dtype=np.float32)
            return (lo + u * (hi - lo)).astype(x.dtype)
        base = argument_to_channel_first(self.model, self.baseline)  # given in the input's layout
        return targets.broadcast_to_input("baseline", base, x)

    def __call__(self, x: np.ndarray, index: Any = None, return_convergence_delta: bool = False,
                 **extra_inputs) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``(N, C, *spatial)`` attributions; with ``return_convergence_delta`` also Captum's
        ``(N,)`` delta = Σ attributions − (f(x) − f(baseline)) for the explained target."""
        x = self._input(x)
        fx = self._outputs(x, extra_inputs)  # f(x): the target, the delta, and checked finite
        check_finite_output(fx, f"output {self.output!r}")
        target = self.target(index).resolve(fx)  # None: each image's top class at x
        base = self.baselines(x)
        diff = x - base
        alphas = self.alphas.astype(x.dtype)

        def path(images, steps):
            return base[images] + alphas[steps].reshape((-1,) + (1,) * (x.ndim - 1)) * diff[images]

        total = np.zeros(x.shape, np.float64)
        sampling = Sampling(self.n_steps, path, "refuse", "IntegratedGradients", "path points", self.verbose)
        for images, steps, res in sample_gradients(self, x, sampling, target, extra_inputs):
            g = res["gradients"][self.model.input_name].astype(np.float64)
            add_per_image(total, images, g * self.weights[steps].reshape((-1,) + (1,) * (x.ndim - 1)))
        attr = (total * diff).astype(x.dtype)
        if not return_convergence_delta:
            return to_input_layout(self.model, attr)
        fb = target(self._outputs(base, extra_inputs))
        if not np.isfinite(fb).all():
            raise NonFiniteError("IntegratedGradients: the model's output is not finite (NaN or "
                                 "inf) at the baseline: the convergence delta cannot be computed")
        delta = attr.reshape(len(x), -1).sum(1, dtype=np.float64) - (target(fx) - fb)
        return to_input_layout(self.model, attr), delta

    def _outputs(self, x, extra):
        return self.model.predict(x, outputs=self.output, batch_size=self.batch_size,
                                  extra_inputs=extra, verbose=False)
