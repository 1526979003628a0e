"""MATLAB's ``imageLIME(net, X, channelIdx, Name=Value)`` as ``image_lime``: snake_case options,
0-based indices, one observation in, MATLAB's layout out (see ``onnx_xai.matlab``)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .engines.segmentation import grid_labels, grid_shape, superpixel_labels
from .engines.surrogate import base_scores, fit_linear, fit_tree, lime_coalitions, run_items
from .finite import positive_int
from .matlab import (ENVIRONMENTS, activate_output, as_network, channel_indices, channel_totals,
                     observation, resize_axis)
from .runtime import ModelSource

KERNEL_WIDTH = 0.25  # LIME's image kernel (lime_image.LimeImageExplainer) on the coalition vectors


def image_lime(net: ModelSource, X: np.ndarray, channel_idx: int | Sequence[int], *,
               num_features: int = 49, num_samples: int = 2048,
               segmentation: str | np.ndarray = "superpixels", model: str = "tree",
               output_upsampling: str = "bicubic", mini_batch_size: int = 128,
               execution_environment: str = "auto", output_name: str | None = None,
               activation: str | Callable | None = None, seed: int | None = None,
               verbose: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Importance of the features of ``X`` for a channel's score, by LIME (MATLAB's ``imageLIME``).

    ``num_samples`` synthetic copies of X keep each feature with probability ½ and replace the
    others' pixels by X's channel means; their scores (the channel summed over the output's
    spatial axes, as ``occlusion_sensitivity``) are regressed on the features' presence, each
    copy weighted by LIME's image kernel sqrt(exp(−d² / 0.25²)), d = 1 − sqrt(kept / M) (the
    cosine distance of its presence vector to all-ones; MATLAB does not document its weights).

    Args:
        net: anything ``Model`` accepts. X: one observation, ``(H, W, C)`` as in MATLAB or the
            network's own layout (see ``occlusion_sensitivity``); ``(H, W, D, C)`` volumes.
        channel_idx: 0-based channel of the scored output; int, or a sequence of K (one fit
            each, same forward passes).
        num_features: target number of features. num_samples: synthetic copies.
        segmentation: ``"superpixels"`` (SLIC as MATLAB's ``superpixels``, compactness 10, in
            CIELAB for RGB; 2D or 3D; needs scikit-image), ``"grid"`` (about num_features
            near-square cells, never more), or a label matrix shaped like X's spatial axes
            (each distinct value one feature).
        model: ``"tree"`` (``fitrtree`` + ``predictorImportance``: non-negative importances) or
            ``"linear"`` (``fitrlinear`` lasso, λ = 1 / num_samples: signed weights).
        output_upsampling: grid segmentation only: ``"bicubic"`` / ``"nearest"`` resize the
            grid of importances to X's size as MATLAB's ``imresize``; ``"none"`` returns the
            grid. Superpixel and label-matrix maps are at X's resolution already.
        mini_batch_size: copies per inference run. execution_environment: "auto" | "gpu" | "cpu".
        output_name, activation: as ``occlusion_sensitivity`` (``activation="softmax"`` scores
            probabilities, as MATLAB's softmax layer). seed: the copies' seed (None: fresh).
    Returns:
        ``score_map`` ``(H, W)`` float32 (``(H, W, K)`` for K channels; the grid with "none"),
        ``feature_map`` ``(H, W)`` int32 feature of every pixel (0-based; MATLAB's is 1-based),
        ``feature_importance`` ``(M,)`` float32 (``(M, K)``).
    """
    if execution_environment not in ENVIRONMENTS:
        raise ValueError(f"execution_environment must be one of {ENVIRONMENTS}, got {execution_environment!r}")
    if output_upsampling not in ("bicubic", "nearest", "none"):
        raise ValueError(f"output_upsampling must be 'bicubic', 'nearest' or 'none', got {output_upsampling!r}")
    if model not in ("tree", "linear"):
        raise ValueError(f"model must be 'tree' or 'linear', got {model!r}")
    if not (activation is None or callable(activation) or activation in ("softmax", "sigmoid")):
        raise ValueError(f"activation must be None, 'softmax', 'sigmoid' or a callable, got {activation!r}")
    if isinstance(segmentation, str) and segmentation not in ("superpixels", "grid"):
        raise ValueError(f"segmentation must be 'superpixels', 'grid' or a label matrix, got {segmentation!r}")
    num_features, num_samples = positive_int("num_features", num_features), positive_int("num_samples", num_samples)
    batch = positive_int("mini_batch_size", mini_batch_size)
    if seed is not None:
        positive_int("seed", seed, 0)
    net = as_network(net, execution_environment)
    output = net.output_names[0]
    if output_name is not None:
        net = net.with_outputs([output_name])
        output = output_name if output_name in net.output_names else net.outputs[-1].name
    xcf, channel_last = observation(net, X)
    spatial = xcf.shape[1:]
    to_model = (lambda b: np.ascontiguousarray(np.moveaxis(b, 1, -1))) if channel_last else None
    labels = _segment(segmentation, xcf, num_features)
    x1 = xcf[None]
    raw = base_scores(net, x1, lambda out: activate_output(out, activation), output, batch, None, to_model)
    channels = channel_indices(channel_idx, raw)
    score = lambda out: channel_totals(activate_output(out, activation), channels)  # noqa: E731
    base = np.broadcast_to(xcf.reshape(len(xcf), -1).mean(1, dtype=np.float64).astype(np.float32)
                           .reshape((1, -1) + (1,) * len(spatial)), x1.shape)

    def draw(_, count):
        z = lime_coalitions(np.random.default_rng(seed), num_samples, count)
        d = 1 - np.sqrt(z.sum(1) / count)
        return z, np.sqrt(np.exp(-d ** 2 / KERNEL_WIDTH ** 2))

    fit = fit_tree if model == "tree" else (lambda z, y, w: fit_linear(z, y, w, "lasso", 1 / num_samples))
    importance = run_items(net, x1, base, [np.tile(labels.ravel(), len(xcf))],
                           np.arange(len(channels))[None], draw, fit, score=score, output=output,
                           n_batch=batch, extra_inputs=None, verbose=verbose, desc="image_lime",
                           to_model_layout=to_model)[0].astype(np.float32)   # (M, K)
    if isinstance(segmentation, str) and segmentation == "grid":
        smap = importance.reshape(grid_shape(spatial, num_features) + (len(channels),))
        if output_upsampling != "none":
            for axis, size in enumerate(spatial):
                smap = resize_axis(smap, axis, size, output_upsampling)
    else:
        smap = importance[labels]
    if np.ndim(channel_idx) == 0:
        return smap[..., 0], labels, importance[:, 0]
    return smap, labels, importance


def _segment(segmentation: Any, xcf: np.ndarray, num_features: int) -> np.ndarray:
    """Feature labels ``(*spatial)`` int32, consecutive from 0."""
    spatial = xcf.shape[1:]
    if isinstance(segmentation, str):
        if segmentation == "grid":
            return grid_labels(spatial, num_features)
        if len(spatial) not in (2, 3):
            raise ValueError(f"superpixels need 2D or 3D images, X has spatial shape {spatial}: "
                             "use segmentation='grid'")
        return superpixel_labels(xcf, num_features)
    lab = np.asarray(segmentation)
    if lab.shape != spatial:
        raise ValueError(f"the label matrix must have X's spatial shape {spatial}, got {lab.shape}")
    if lab.dtype.kind not in "biu" and not (lab.dtype.kind == "f" and np.isfinite(lab).all()
                                             and (lab == np.round(lab)).all()):
        raise ValueError(f"the label matrix must hold integers, got dtype {lab.dtype}")
    _, consecutive = np.unique(lab, return_inverse=True)
    return consecutive.reshape(spatial).astype(np.int32)
