"""Gradient-saliency engine: many derived samples per image through one gradient model.

SmoothGrad, integrated gradients and FastEstimator's SaliencyNet all evaluate the input
gradient at ``n`` samples derived from each image (noisy copies, points on a path). The
samples of all images are laid end to end (image 0's ``n``, then image 1's, ...), built a
chunk at a time by the method's ``make(images, steps)`` and run through the gradient model
(which splits a chunk into runs over its CPU workers); the method reduces the gradients it
gets back per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from .. import targets
from ..autodiff import gradient_model
from ..errors import NonFiniteError
from ..finite import check_finite_output, finite_rows, warn_nonfinite
from ..runtime import Model

#: Captum's integration rules (``captum.attr._utils.approximation_methods``).
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
              "riemann_middle")


def ig_alphas_weights(n_steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Captum's path points ``alphas`` and quadrature ``weights`` (both ``(n_steps,)``).

    gausslegendre: 0.5·(nodes + 1), 0.5·weights of ``leggauss(n)``; riemann_*: weights 1/n
    (trapezoid: both ends halved) at alphas linspace(0, 1, n) (trapezoid), (0 … 1 − 1/n)
    (left), (1/n … 1) (right), (1/2n … 1 − 1/2n) (middle).
    """
    if method not in IG_METHODS:
        raise ValueError(f"method must be one of {IG_METHODS}, got {method!r}")
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if n_steps < 2:
        raise ValueError(f"{method} needs n_steps >= 2, got {n_steps}")
    weights = np.full(n_steps, 1.0 / n_steps)
    lo, hi = {"riemann_trapezoid": (0.0, 1.0), "riemann_left": (0.0, 1 - 1 / n_steps),
              "riemann_right": (1 / n_steps, 1.0),
              "riemann_middle": (0.5 / n_steps, 1 - 0.5 / n_steps)}[method]
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
    return np.linspace(lo, hi, n_steps), weights


def add_per_image(total: np.ndarray, images: np.ndarray, values: np.ndarray) -> None:
    """``total[images[i]] += values[i]`` for ``images`` sorted (samples laid image after
    image, as ``sample_gradients`` yields them): one summed slice per image."""
    starts = np.flatnonzero(np.r_[True, images[1:] != images[:-1]])
    total[images[starts]] += np.add.reduceat(values, starts, axis=0)


def _balanced(total: int, max_batch: int) -> int:
    """The smallest batch that runs ``total`` samples in as few batches as ``max_batch`` does
    (25 samples at 16 → 2 × 13, not 16 + 16)."""
    runs = -(-total // max_batch)
    return -(-total // runs)


def _extras_for(extra: dict[str, np.ndarray], model: Model, n_images: int,
                images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image extra inputs (leading dim = number of images) follow their samples."""
    out = {}
    for name, value in extra.items():
        per_image = model.batch_axis(name, value) and value.shape[0] == n_images > 1
        out[name] = value[images] if per_image else value
    return out


@dataclass(frozen=True)
class GradientSource:
    """What ``sample_gradients`` needs of a gradient method (the methods are such objects)."""

    model: Model
    output: str | None = None
    guided: bool = False
    batch_size: int = 16


@dataclass(frozen=True)
class Sampling:
    """How a method samples each image: ``n`` samples built by ``make(images, steps)`` (the
    samples ``(m, ...)`` for image ``images[i]``, sample ``steps[i]``), what a non-finite
    sample does (``nonfinite``, see ``sample_gradients``), and the progress bar's labels."""

    n: int
    make: Callable[[np.ndarray, np.ndarray], np.ndarray]
    nonfinite: str = "error"
    desc: str = "gradients"
    unit: str = "samples"
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.nonfinite not in ("error", "refuse", "drop"):
            raise ValueError(f"nonfinite must be 'error', 'refuse' or 'drop', got {self.nonfinite!r}")


def sample_gradients(method: Any, x: np.ndarray, sampling: Sampling, target: targets.Target,
                     extra_inputs: dict[str, Any] | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Input gradients of ``target`` at ``sampling.n`` samples of each image of ``x`` ``(N, ...)``.

    ``method``: a gradient method (its ``model``, ``output``, ``guided`` and ``batch_size``).
    ``target``: the plain argmax ``ClassTarget`` explains each sample's own top class; any
    other target is resolved on ``x`` (the class or region chosen there holds for all its
    samples). Yields ``(images, steps, result)`` per batch, ``result`` as
    ``GradientModel.run`` returns it plus ``result["finite"]`` ``(m,)`` bool: whether the
    sample's output and gradients are finite.

    ``sampling.nonfinite`` — what a sample whose output or gradient holds NaN / inf does:
    ``"error"`` (the samples are the unperturbed images): ``NonFiniteError`` naming the
    output; ``"refuse"`` (perturbed samples the map cannot do without, e.g. path points):
    ``NonFiniteError`` naming the image and ``unit``; ``"drop"`` (perturbed samples the map
    can average without): its gradients are set to 0 and ``finite`` is False; once all are
    run, one ``NonFiniteWarning`` gives the count, and an image none of whose samples is
    finite raises ``NonFiniteError``.
    """
    model = method.model
    extra = model.check_extra_inputs(extra_inputs)
    n_images, n_per_image = x.shape[0], sampling.n
    total = n_images * n_per_image
    b = _balanced(total, method.batch_size)
    extra_shapes = {k: v.shape[1:] for k, v in extra.items()
                    if v.ndim == len(next(i for i in model.inputs if i.name == k).shape)}
    gm = gradient_model(model, output=target.output or method.output, batch_size=b, input_shape=x.shape[1:],
                        extra_shapes=extra_shapes or None, guided=method.guided,
                        activation=target.activation)
    if not target.argmax:
        out = (model.predict(x, outputs=gm.output, batch_size=gm.batch_size, extra_inputs=extra_inputs,
                             verbose=False) if target.needs_output
               else np.zeros((n_images,) + gm.output_shape[1:], np.float32))
        target = gm.target(target).resolve(out)
    chunk = gm.workers * gm.batch_size  # a chunk keeps every worker busy to its end
    b = min(total, -(-b // chunk) * chunk)
    finite = np.zeros(n_images, np.int64)
    with tqdm(total=total, desc=sampling.desc, unit="sample", disable=not sampling.verbose,
              leave=False) as bar:
        for start in range(0, total, b):
            flat = np.arange(start, min(start + b, total))
            images, steps = flat // n_per_image, flat % n_per_image
            samples = np.ascontiguousarray(sampling.make(images, steps), dtype=x.dtype)
            res = gm.run(samples, target.select(images),
                         extra_inputs=_extras_for(extra, model, n_images, images))
            _check_samples(res, gm.output, images, steps, sampling)
            np.add.at(finite, images, res["finite"])
            yield images, steps, res
            bar.update(len(flat))
    if sampling.nonfinite == "drop":
        if (finite == 0).any():
            raise NonFiniteError(f"{sampling.desc}: the model's output {gm.output!r} or its gradient is "
                                 f"not finite (NaN or inf) for every one of the {n_per_image} "
                                 f"{sampling.unit} of image {int(np.argmin(finite))}; no map can be made")
        warn_nonfinite(sampling.desc, int(total - finite.sum()), total, sampling.unit,
                       "the map averages the finite ones", stacklevel=4)


def _check_samples(res: dict, output: str, images: np.ndarray, steps: np.ndarray,
                   sampling: Sampling) -> None:
    """Set ``res["finite"]``; apply the ``nonfinite`` rule of ``sample_gradients``."""
    out = res["outputs"][output]
    ok = finite_rows(out)
    for g in res["gradients"].values():
        ok &= finite_rows(g)
    res["finite"] = ok
    if ok.all():
        return
    first = int(np.argmin(ok))
    nonfinite, desc, unit, n_per_image = sampling.nonfinite, sampling.desc, sampling.unit, sampling.n
    if nonfinite == "error":
        image = int(images[first])
        check_finite_output(out[first], f"output {output!r}", f"image {image} of the input")
        for wrt, g in res["gradients"].items():
            check_finite_output(g[first], f"the gradient of output {output!r} w.r.t. {wrt!r}",
                                f"image {image} of the input")
    if nonfinite == "refuse":
        image = int(images[first])
        bad = steps[(images == image) & ~ok]
        raise NonFiniteError(
            f"{desc}: the model's output {output!r} or its gradient is not finite (NaN or inf) at "
            f"{len(bad)} of the {n_per_image} {unit} of image {image} (indices {bad.tolist()[:10]}"
            f"{', ...' if len(bad) > 10 else ''}): the map needs every one of them; no map can be made")
    for g in res["gradients"].values():
        g[~ok] = 0.0
