"""Interpretable features of an image or volume for LIME / KernelSHAP: a regular grid (no
extra dependency) or SLIC superpixels (scikit-image, the ``lime`` extra).

Why scikit-image and not OpenCV's ``ximgproc``: SLIC lives in opencv-contrib, whose wheel
installs the same ``cv2`` module as the opencv-python-headless this package depends on (the
two cannot sit in one environment), and it segments 2D images only; scikit-image's SLIC is a
plain wheel beside it and does 2D and 3D.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def grid_shape(spatial: Sequence[int], n_features: int) -> tuple[int, ...]:
    """Cells per axis of the grid of about ``n_features`` near-cubic cells over ``spatial``:
    cell side L = (Π size / n)^(1/d), floor(size / L) cells per axis (at least 1, at most the
    size), so never more than ``n_features`` cells (MATLAB: "can be smaller")."""
    side = (float(np.prod(spatial)) / n_features) ** (1.0 / len(spatial))
    return tuple(max(1, min(int(s), int(np.floor(s / side + 1e-9)))) for s in spatial)


def grid_labels(spatial: Sequence[int], n_features: int) -> np.ndarray:
    """A regular grid (``grid_shape``) over ``spatial`` (1 to 3 axes), as MATLAB's
    ``Segmentation="grid"``; cell edges at round(i · size / cells). Returns int32 labels
    shaped ``spatial``, 0-based, row-major over the cells."""
    spatial = tuple(int(s) for s in spatial)
    labels = np.zeros(spatial, np.int64)
    for axis, (s, c) in enumerate(zip(spatial, grid_shape(spatial, n_features))):
        idx = np.searchsorted(np.round(np.arange(1, c) * s / c), np.arange(s), side="right")
        shape = [1] * len(spatial)
        shape[axis] = -1
        labels = labels * c + idx.reshape(shape)
    return labels.astype(np.int32)


def superpixel_labels(image: np.ndarray, n_features: int, compactness: float = 10.0) -> np.ndarray:
    """SLIC superpixels of a channel-first ``(C, *spatial)`` image (2D or 3D), as MATLAB's
    ``superpixels`` (SLIC, compactness 10, in CIELAB for RGB).

    The image is rescaled to [0, 1] over all channels first (network inputs are often
    normalised); 3 channels are read as RGB and segmented in CIELAB, other channel counts
    as intensities scaled to CIELAB's [0, 100] lightness range so that the compactness
    means the same. Returns consecutive int32 labels from 0 (their count may differ from
    ``n_features``). Needs scikit-image (``pip install "onnx-xai[lime]"``).
    """
    try:
        from skimage.segmentation import slic
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("superpixel segmentation needs scikit-image: pip install scikit-image "
                          "(or the 'lime' extra), or use segmentation / feature_mask='grid'") from None
    if image.ndim not in (3, 4):
        raise ValueError(f"superpixels segment 2D or 3D images (C, H, W[, D]), got shape {image.shape}")
    img = np.moveaxis(np.asarray(image, np.float64), 0, -1)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    rgb = img.shape[-1] == 3
    if not rgb:
        img = img * 100.0
    labels = slic(img, n_segments=int(n_features), compactness=float(compactness),
                  channel_axis=-1, convert2lab=rgb, start_label=0, enforce_connectivity=True)
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.int32)
