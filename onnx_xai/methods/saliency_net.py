"""FastEstimator's ``SaliencyNet`` (``fastestimator.xai.SaliencyNet``) over ONNX names.

Batches are dicts keyed by ONNX input names; the explained score of model output ``o`` for
sample ``b`` is ``o[b, t_b]``, with ``t`` from the batch key ``SaliencyNet_Target_Index_<o>``
or, when that key is absent or empty, the argmax of the clean prediction. Results are the
batch's entries, each model output reduced to its argmax ``(B,)`` and, per saliency key, a
greyscale mask ``(B, 1, *spatial)``: Σ_c |g| rescaled so that the minimum is 0 and the 99th
percentile 1 (clipped to [0, 1]).

Non-finite numbers (see ``onnx_xai.finite``): NaN / inf in the explained input is a
``ValueError``; a non-finite output or gradient on the clean batch a ``NonFiniteError``.
Smoothed masks leave out noisy samples whose output or gradient is not finite (a
``NonFiniteWarning`` gives their count) and average the others; integrated masks refuse
(``NonFiniteError``) when any path point is not finite.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import targets
from ..engines.saliency import GradientSource, Sampling, add_per_image, sample_gradients
from ..runtime import Model, ModelSource

TARGET_KEY = "SaliencyNet_Target_Index_{}"


def to_greyscale(mask: np.ndarray, tile: float = 99) -> np.ndarray:
    """``(B, C, *spatial)`` → ``(B, 1, *spatial)``: Σ_c |mask|, then (m − min)/(p_tile − min)
    per sample (numpy's linear percentile), clipped to [0, 1]; a constant mask gives 0."""
    flat = np.abs(mask).sum(1, keepdims=True)
    axes = tuple(range(1, flat.ndim))
    vmin = flat.min(axes, keepdims=True)
    span = np.percentile(flat, tile, axis=axes, keepdims=True) - vmin
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(span > 0, (flat - vmin) / np.where(span > 0, span, 1), 0.0)
    return np.clip(out, 0, 1).astype(np.float32)


class SaliencyNet:
    """Saliency masks of an ONNX model, FastEstimator style.

    Args:
        model: anything ``Model`` accepts.
        model_inputs: the input to explain (one ONNX input name; others in the batch are
            passed through).
        model_outputs: output name(s) whose class score is explained.
        outputs: saliency key(s), one per model output.
        batch_size: most samples per gradient run. seed: noise and baselines.
    """

    def __init__(self, model: ModelSource, model_inputs: str | Sequence[str],
                 model_outputs: str | Sequence[str], outputs: str | Sequence[str] = "saliency", *,
                 batch_size: int = 16, seed: int | None = None) -> None:
        model = targets.as_model(model)
        ins = [model_inputs] if isinstance(model_inputs, str) else list(model_inputs)
        if len(ins) != 1:
            raise ValueError(f"SaliencyNet explains one input; got model_inputs={model_inputs!r}")
        if ins[0] not in model.input_names:
            raise ValueError(f"{ins[0]!r} is not an input of the model; inputs: {model.input_names}")
        self.model_outputs = [model_outputs] if isinstance(model_outputs, str) else list(model_outputs)
        model.check_outputs(self.model_outputs)
        self.outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        if len(self.outputs) != len(self.model_outputs):
            raise ValueError(f"give one saliency key per model output: outputs={self.outputs} "
                             f"for model_outputs={self.model_outputs}")
        if model.input_name != ins[0]:
            model = Model(model, device=model.device, threads=model.threads, input_name=ins[0],
                          verbose=model.verbose)
        self.model, self.model_input = model, ins[0]
        self.batch_size = targets.positive_int("batch_size", batch_size)
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ plumbing
    def _split(self, batch: dict[str, Any]) -> tuple[np.ndarray, dict, dict]:
        if not isinstance(batch, dict) or self.model_input not in batch:
            raise ValueError(f"batch must be a dict holding the input {self.model_input!r}")
        x = self.model.check_input(batch[self.model_input])
        extra = {k: v for k, v in batch.items() if k in self.model.input_names and k != self.model_input}
        classes = {}
        for out in self.model_outputs:
            t = batch.get(TARGET_KEY.format(out))
            if t is not None and np.size(t):
                t = np.asarray(t)
                if t.dtype.kind not in "iu" or t.shape not in ((), (len(x),)):
                    raise ValueError(f"{TARGET_KEY.format(out)} must be an int or {len(x)} ints, got {t!r}")
                classes[out] = np.broadcast_to(t, (len(x),)).astype(np.int64)
        return x, extra, classes

    def _sample(self, x, sampling, out, classes, extra):
        """``sample_gradients`` of output ``out`` for ``classes`` (None: each sample's argmax)."""
        source = GradientSource(self.model, out, False, self.batch_size)
        return sample_gradients(source, x, sampling, targets.target(classes, output=out), extra)

    def _grads(self, x, n, make, classes, extra, nonfinite="error"):
        """{saliency key: Σ over the n samples of each image of (gradient, squared)}, outputs,
        {saliency key: (N,) count of finite samples} (``nonfinite``: see ``sample_gradients``)."""
        sums, squares, outs, counts = {}, {}, {}, {}
        for out, key in zip(self.model_outputs, self.outputs):
            s, q = np.zeros(x.shape, np.float64), np.zeros(x.shape, np.float64)
            c = np.zeros(x.shape[0], np.int64)
            sampling = Sampling(n, make, nonfinite, "SaliencyNet", "noisy samples")
            for images, steps, res in self._sample(x, sampling, out, classes.get(out), extra):
                g = res["gradients"][self.model_input].astype(np.float64)
                add_per_image(s, images, g)
                add_per_image(q, images, g * g)
                np.add.at(c, images, res["finite"])
                outs.setdefault(out, {}).update({int(i): res["outputs"][out][j]
                                                 for j, i in enumerate(images) if steps[j] == 0})
            sums[key], squares[key], counts[key] = s, q, c
        if nonfinite == "drop":
            return sums, squares, outs, counts
        return sums, squares, outs

    def _clean(self, batch):
        """Raw gradients at the clean batch, predictions, targets (clean argmax if not given)."""
        x, extra, classes = self._split(batch)
        sums, _, outs = self._grads(x, 1, lambda i, _: x[i], classes, extra)
        preds = {o: np.stack([outs[o][i] for i in range(len(x))]).argmax(1) for o in self.model_outputs}
        return x, extra, {o: classes.get(o, preds[o]) for o in self.model_outputs}, sums, preds

    def _integrated(self, x, extra, classes, n_baselines, nsamples):
        """Σ_α ∇f(b + α(x − b)) · (x − b), α = linspace(0, 1, nsamples), for n_baselines uniform
        baselines per image (drawn in [min, max] of the whole batch), each on its own."""
        lo, hi = x.min(), x.max()
        base = lo + self.rng.random((n_baselines,) + x.shape, dtype=np.float32) * (hi - lo)
        diff = x[None] - base                                   # (n_baselines, N, ...)
        alphas = np.linspace(0.0, 1.0, nsamples).astype(np.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)

        def path(images, steps):
            k, a = steps // nsamples, alphas[steps % nsamples].reshape(shape)
            return base[k, images] + a * diff[k, images]

        out = {}
        for key, out_name in zip(self.outputs, self.model_outputs):
            acc = np.zeros((n_baselines,) + x.shape, np.float64)
            sampling = Sampling(n_baselines * nsamples, path, "refuse", "SaliencyNet", "path points")
            for images, steps, res in self._sample(x, sampling, out_name, classes[out_name], extra):
                np.add.at(acc, (steps // nsamples, images), res["gradients"][self.model_input])
            out[key] = acc * diff
        return out

    def _result(self, batch, preds, masks):
        return {**batch, **preds, **{k: to_greyscale(v) for k, v in masks.items()}}

    # ------------------------------------------------------------------ API
    def get_masks(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Predictions (argmax) and greyscale gradient masks for ``batch``."""
        _, _, _, grads, preds = self._clean(batch)
        return self._result(batch, preds, grads)

    def get_smoothed_masks(self, batch: dict[str, Any], stdev_spread: float = .15, nsamples: int = 25,
                           nintegration: int | None = None, magnitude: bool = True) -> dict[str, Any]:
        """SmoothGrad masks: the clean gradient plus ``nsamples − 1`` at x + N(0, σ²),
        σ = stdev_spread·(max − min) of the whole batch, classes fixed to the clean ones;
        Σ g² (``magnitude``) or Σ g, over nsamples. With ``nintegration`` the extra samples
        are integrated masks (``get_integrated_masks``' raw values) of x, one baseline each."""
        stdev_spread = targets.check_number("stdev_spread", stdev_spread, 0.0)
        nsamples = targets.positive_int("nsamples", nsamples)
        if nintegration is not None:
            nintegration = targets.positive_int("nintegration", nintegration, 2)
        x, extra, classes, clean, preds = self._clean(batch)
        total = {k: g * g if magnitude else g for k, g in clean.items()}
        count = {k: np.full(x.shape[0], nsamples, np.int64) for k in total}
        if nsamples > 1:
            if nintegration:
                for k, m in self._integrated(x, extra, classes, nsamples - 1, nintegration).items():
                    total[k] += (m * m if magnitude else m).sum(0)
            else:
                std = np.float32(stdev_spread * (float(x.max()) - float(x.min())))
                if not np.isfinite(std):
                    raise ValueError("stdev_spread · (max − min) of the batch overflows float32: "
                                     "rescale the input")

                def noisy(images, _):
                    return x[images] + std * self.rng.standard_normal(
                        (len(images),) + x.shape[1:], dtype=np.float32)

                sums, squares, _, finite = self._grads(x, nsamples - 1, noisy, classes, extra, "drop")
                for k in total:
                    total[k] += squares[k] if magnitude else sums[k]
                    count[k] = 1 + finite[k]
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self._result(batch, preds, {k: v / count[k].reshape(shape) for k, v in total.items()})

    def get_integrated_masks(self, batch: dict[str, Any], nsamples: int = 25) -> dict[str, Any]:
        """Integrated-gradient masks from one random-uniform baseline per batch entry
        (uniform in [min, max] of the batch), ``nsamples`` points linspace(0, 1)."""
        nsamples = targets.positive_int("nsamples", nsamples, 2)
        x, extra, classes, _, preds = self._clean(batch)
        masks = self._integrated(x, extra, classes, 1, nsamples)
        return self._result(batch, preds, {k: v[0] for k, v in masks.items()})
