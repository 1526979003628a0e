"""Gradient-saliency engine: many derived samples per image through one gradient model.

SmoothGrad, integrated gradients and FastEstimator's SaliencyNet all evaluate the input
gradient at ``n`` samples derived from each image (noisy copies, points on a path). The
samples of all images are laid end to end (image 0's ``n``, then image 1's, ...), built a
chunk at a time by the method's ``make(images, steps)`` and run through the gradient model
(which splits a chunk into runs over its CPU workers); the method reduces the gradients it
gets back per image.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ..autodiff import gradient_model
from ..runtime import Model

#: Captum's integration rules (``captum.attr._utils.approximation_methods``).
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
              "riemann_middle")


def as_model(model: Any) -> Model:
    return model if isinstance(model, Model) else Model(model)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")
    return float(value)


def class_indices(index: Any, n: int) -> np.ndarray | None:
    """``index`` (None, int or ``(n,)`` ints) as None or an ``(n,)`` int64 array."""
    if index is None:
        return None
    idx = np.asarray(index)
    if idx.dtype.kind not in "iu" or idx.ndim > 1 or idx.size not in (1, n):
        raise ValueError(f"index must be None, an int or {n} ints (one per sample), got {index!r}")
    return np.broadcast_to(idx.reshape(-1), (n,)).astype(np.int64)


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
        declared = next(i for i in model.inputs if i.name == name).shape
        per_image = (bool(declared) and not isinstance(declared[0], int)
                     and value.ndim == len(declared) and value.shape[0] == n_images > 1)
        out[name] = value[images] if per_image else value
    return out


def sample_gradients(model: Model, x: np.ndarray, n_per_image: int,
                     make: Callable[[np.ndarray, np.ndarray], np.ndarray],
                     index: np.ndarray | None = None, *, guided: bool = False,
                     batch_size: int = 16, output: str | None = None,
                     extra_inputs: dict[str, Any] | None = None, verbose: bool = False,
                     desc: str = "gradients") -> Iterator[tuple[np.ndarray, np.ndarray, dict]]:
    """Input gradients at ``n_per_image`` samples of each image of ``x`` ``(N, ...)``.

    ``make(images, steps)`` returns the samples ``(m, ...)`` for image ``images[i]``, sample
    ``steps[i]`` (both ``(m,)`` ints). ``index``: ``(N,)`` class per image, or None for the
    argmax of each sample. Yields ``(images, steps, result)`` per batch, ``result`` as
    ``GradientModel.run`` returns it (``result["gradients"][input]`` is ``(m, ...)``).
    """
    extra = model.check_extra_inputs(extra_inputs)
    n_images = x.shape[0]
    total = n_images * n_per_image
    b = _balanced(total, batch_size)
    extra_shapes = {k: v.shape[1:] for k, v in extra.items()
                    if v.ndim == len(next(i for i in model.inputs if i.name == k).shape)}
    gm = gradient_model(model, output=output, batch_size=b, input_shape=x.shape[1:],
                        extra_shapes=extra_shapes or None, guided=guided)
    unit = gm.workers * gm.batch_size  # a chunk keeps every worker busy to its end
    b = min(total, -(-b // unit) * unit)
    with tqdm(total=total, desc=desc, unit="sample", disable=not verbose, leave=False) as bar:
        for start in range(0, total, b):
            flat = np.arange(start, min(start + b, total))
            images, steps = flat // n_per_image, flat % n_per_image
            samples = np.ascontiguousarray(make(images, steps), dtype=x.dtype)
            res = gm.run(samples, None if index is None else index[images],
                         extra_inputs=_extras_for(extra, model, n_images, images))
            yield images, steps, res
            bar.update(len(flat))
