"""Labelled synthetic images with ground-truth object masks (NumPy only), for testing explanations.

- :func:`shapes_2d`: one shape (square, disc, triangle, cross — the class) at a random place and
  size on a noisy background with a random brightness offset and gradient.
- :func:`blobs_3d`: one Gaussian blob in a noisy volume, bright (class 0) or dark (class 1).

The models ``models/synthetic_shapes2d.onnx`` and ``models/synthetic_blobs3d.onnx`` were trained
on these generators (``models/train_synthetic.py``).

- :func:`detection_scene`: bright squares in the fixed ``SLOTS``, with their masks, for
- :func:`toy_detector` (YOLOv8 layout; candidate k depends only on slot k's pixels) and
  :func:`toy_segmenter` (a 3 × 3 mean per pixel): ONNX graphs built here, whose box / region
  explanations must land on their own object.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .finite import positive_int

SHAPES_2D = ("square", "disc", "triangle", "cross")
BLOBS_3D = ("bright", "dark")


def _check(n: int, size: int, smallest: int) -> None:
    positive_int("n", n)
    if not isinstance(size, (int, np.integer)) or size < smallest:
        raise ValueError(f"size must be an integer >= {smallest}, got {size!r}")


def shape_mask(kind: str, size: int, center: tuple[float, float], extent: float) -> np.ndarray:
    """Boolean ``(size, size)`` mask of one shape of side ``extent`` pixels centred at ``center``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx, h = yy - center[0], xx - center[1], extent / 2.0
    inside = (np.abs(dy) <= h) & (np.abs(dx) <= h)
    if kind == "square":
        return inside
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= h ** 2
    if kind == "triangle":  # apex up, base down
        return inside & (np.abs(dx) <= (dy + h) / 2.0)
    if kind == "cross":
        return inside & ((np.abs(dy) <= extent / 6.0) | (np.abs(dx) <= extent / 6.0))
    raise ValueError(f"kind must be one of {SHAPES_2D}, got {kind!r}")


def shapes_2d(n: int, *, size: int = 64, seed: int | None = 0, noise: float = 0.35,
              extent: tuple[int, int] = (12, 22)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images with one shape each.

    Returns:
        x ``(n, 1, size, size)`` float32, labels ``(n,)`` int64 (index into ``SHAPES_2D``),
        masks ``(n, size, size)`` bool (the shape's pixels).
    """
    _check(n, size, extent[1] + 2)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES_2D), n)
    x = np.empty((n, 1, size, size), np.float32)
    masks = np.empty((n, size, size), bool)
    ramp = np.linspace(-1.0, 1.0, size)
    for i, label in enumerate(labels):
        ext = rng.uniform(*extent)
        c = rng.uniform(ext / 2 + 1, size - ext / 2 - 1, 2)
        masks[i] = shape_mask(SHAPES_2D[label], size, (c[0], c[1]), ext)
        gy, gx = rng.normal(0, 0.15, 2)
        background = rng.normal(0, 0.3) + gy * ramp[:, None] + gx * ramp[None, :]
        img = background + rng.normal(0, noise, (size, size)) + masks[i] * rng.uniform(0.8, 1.2)
        x[i, 0] = img
    return x, labels.astype(np.int64), masks


def blobs_3d(n: int, *, size: int = 24, seed: int | None = 0, noise: float = 0.35,
             radius: tuple[float, float] = (2.5, 4.5)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` volumes with one Gaussian blob each, bright (label 0) or dark (label 1).

    Returns:
        x ``(n, 1, size, size, size)`` float32, labels ``(n,)`` int64 (index into ``BLOBS_3D``),
        masks ``(n, size, size, size)`` bool (voxels within 1.5 radii of the centre, where the
        blob's amplitude is above a third of its peak).
    """
    _check(n, size, int(4 * radius[1]) + 2)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    grid = np.mgrid[0:size, 0:size, 0:size].astype(np.float64)
    x = np.empty((n, 1, size, size, size), np.float32)
    masks = np.empty((n, size, size, size), bool)
    for i, label in enumerate(labels):
        r = rng.uniform(*radius)
        c = rng.uniform(2 * r, size - 2 * r, 3)
        d2 = sum((grid[a] - c[a]) ** 2 for a in range(3))
        blob = np.exp(-d2 / (2 * r ** 2)) * rng.uniform(1.0, 1.5) * (1.0 if label == 0 else -1.0)
        masks[i] = d2 <= (1.5 * r) ** 2
        x[i, 0] = blob + rng.normal(0, 0.3) + rng.normal(0, noise, (size,) * 3)
    return x, labels.astype(np.int64), masks


# ---------------------------------------------------------------------------- toy detector / segmenter
#: (cx, cy, side, class) of the toy detector's slots on a 64 × 64 image
SLOTS = ((16.0, 16.0, 16.0, 0), (48.0, 20.0, 16.0, 1), (28.0, 48.0, 16.0, 0))


def slot_masks(size: int = 64, slots=SLOTS) -> np.ndarray:
    """``(K, size, size)`` bool: the square of each slot."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return np.stack([(np.abs(xx - cx) <= s / 2) & (np.abs(yy - cy) <= s / 2) for cx, cy, s, _ in slots])


def detection_scene(n: int, *, size: int = 64, seed: int | None = 0, slots=SLOTS,
                    noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``n`` dark noisy images ``(n, 1, size, size)`` float32 with a bright square in every slot
    (brightness 0.6–1), and ``(K, size, size)`` bool masks of the slots (the objects)."""
    _check(n, size, 8)
    rng = np.random.default_rng(seed)
    masks = slot_masks(size, slots)
    x = rng.uniform(0, noise, (n, 1, size, size))
    for k in range(len(slots)):
        x[:, 0] += masks[k] * rng.uniform(0.6, 1.0, (n, 1, 1))
    return x.astype(np.float32), masks


def toy_detector(size: int = 64, slots=SLOTS, n_classes: int = 2) -> Any:
    """An ONNX detector ``images (B, 1, size, size)`` → ``output0 (B, 4 + C, K)`` (the YOLOv8
    layout) whose candidate ``k`` depends only on the pixels of slot ``k``: with ``m_k`` the
    slot's mean intensity, its box is centred on the slot with side ``side_k · m_k`` (xywh) and
    its class scores are ``m_k`` for the slot's class, 0 for the others."""
    from onnx import TensorProto, helper, numpy_helper

    masks = slot_masks(size, slots).reshape(len(slots), -1).T.astype(np.float32)
    means = masks / masks.sum(0, keepdims=True)  # (P, K): x_flat @ means = slot means
    k = len(slots)
    centre = np.zeros((1, 4 + n_classes, k), np.float32)
    scale = np.zeros((1, 4 + n_classes, k), np.float32)
    for j, (cx, cy, side, cls) in enumerate(slots):
        centre[0, :2, j] = cx, cy
        scale[0, 2:4, j] = side
        scale[0, 4 + cls, j] = 1.0
    inits = [numpy_helper.from_array(a, name) for a, name in
             ((means, "means"), (centre, "centre"), (scale, "scale"), (np.array([0, -1], np.int64), "flat"),
              (np.array([1], np.int64), "axis1"))]
    nodes = [helper.make_node("Reshape", ["images", "flat"], ["x_flat"]),
             helper.make_node("MatMul", ["x_flat", "means"], ["m"]),
             helper.make_node("Unsqueeze", ["m", "axis1"], ["m3"]),
             helper.make_node("Mul", ["m3", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "centre"], ["output0"])]
    g = helper.make_graph(nodes, "toy_detector",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 1, size, size])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["B", 4 + n_classes, k])],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def toy_segmenter(size: int = 64) -> Any:
    """An ONNX segmenter ``images (B, 1, size, size)`` → ``logits (B, 2, size, size)``: class 1's
    logit is the 3 × 3 mean of the image minus 0.3 (zero padding), class 0's its negative, so
    a pixel's scores depend only on its 3 × 3 neighbourhood."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.stack([-np.ones((1, 3, 3)), np.ones((1, 3, 3))]).astype(np.float32) / 9.0
    b = np.array([0.3, -0.3], np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["images", "w", "b"], ["logits"], pads=[1, 1, 1, 1])],
                          "toy_segmenter",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 1, size, size])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 2, size, size])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
