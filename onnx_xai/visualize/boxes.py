"""Bounding boxes around the hottest regions of a saliency map; drawing boxes, region outlines
and heatmaps with both (detections, segmentation regions)."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np

from .colorbars import add_colorbar
from .colors import as_array, image_to_rgb_float, normalize, overlay_with_scale


class Box(NamedTuple):
    """Pixel box ``[x0, x1) × [y0, y1)`` with the region's peak value of the normalised map."""

    x0: int
    y0: int
    x1: int
    y1: int
    peak: float


def boxes_from_map(map, threshold: float = 0.5, max_boxes: int | None = 5,
                   image_size: tuple[int, int] | None = None) -> list[Box]:
    """Boxes around the connected regions (8-connected) where the min-max normalised ``map``
    ``(h, w)`` / ``(1, h, w)`` is ``>= threshold``, hottest peak first, at most ``max_boxes``.

    ``threshold=1.0`` gives the single hottest cell(s). ``image_size=(H, W)`` scales the boxes
    from map cells to image pixels (cell ``(r, c)`` covers rows ``r*H/h .. (r+1)*H/h``).
    """
    m = as_array(map, "map")
    m = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
    if m.ndim != 2:
        raise ValueError(f"map must be 2D (h, w) or (1, h, w), got shape {m.shape}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold is on the map normalised to [0, 1] and must lie in [0, 1], got {threshold!r}")
    if max_boxes is not None and int(max_boxes) < 1:
        raise ValueError(f"max_boxes must be >= 1 or None, got {max_boxes!r}")
    norm = np.nan_to_num(normalize(m), nan=0.0)
    if np.all(norm == 0) and np.nanmax(m) == np.nanmin(m):
        return []  # a constant map has no hot region
    mask = (norm >= float(threshold)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    h, w = m.shape
    sy, sx = (1.0, 1.0) if image_size is None else (image_size[0] / h, image_size[1] / w)
    boxes = []
    for k in range(1, count):
        x, y, bw, bh = (int(v) for v in stats[k, :4])
        peak = float(norm[labels == k].max())
        boxes.append(Box(int(np.floor(x * sx)), int(np.floor(y * sy)),
                         int(np.ceil((x + bw) * sx)), int(np.ceil((y + bh) * sy)), peak))
    boxes.sort(key=lambda b: -b.peak)
    return boxes if max_boxes is None else boxes[: int(max_boxes)]


def draw_boxes(image, boxes: Sequence, color=(255, 0, 0), thickness: int = 2,
               labels: Sequence[str] | None = None) -> np.ndarray:
    """Draw ``boxes`` (:class:`Box` or ``(x0, y0, x1, y1)``, end exclusive) on a copy of ``image``
    ``(H, W[, 3])`` → ``(H, W, 3)`` uint8 RGB; optional text ``labels`` inside each box's top-left corner."""
    out = np.round(image_to_rgb_float(image) * 255).astype(np.uint8)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"got {len(labels)} labels for {len(boxes)} boxes")
    for i, box in enumerate(boxes):
        if len(box) < 4:
            raise ValueError(f"box {i} must be (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (int(v) for v in box[:4])
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {i} is empty: {(x0, y0, x1, y1)} (need x1 > x0 and y1 > y0)")
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), tuple(int(c) for c in color), int(thickness))
        if labels is not None:
            cv2.putText(out, str(labels[i]), (x0 + 3, y0 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        tuple(int(c) for c in color), 1, cv2.LINE_AA)
    return out


#: outline colours of classes (RGB), cycled by class index
CLASS_COLORS = ((255, 255, 255), (255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 255, 64), (255, 64, 255))


def draw_region(image, mask, color=(255, 255, 255), thickness: int = 1) -> np.ndarray:
    """The outline of a region ``mask`` ``(h, w)`` (nonzero = inside; resized nearest to the
    image) drawn on a copy of ``image`` ``(H, W[, 3])`` → ``(H, W, 3)`` uint8 RGB."""
    out = np.round(image_to_rgb_float(image) * 255).astype(np.uint8)
    m = as_array(mask, "mask")
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (h, w), got shape {m.shape}")
    m = cv2.resize((m != 0).astype(np.uint8), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), int(thickness))
    return out


def scale_boxes(boxes: Sequence, from_size: Sequence[int], to_size: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` in a ``from_size`` (H, W) picture → integer boxes in ``to_size``."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return [(int(np.floor(b[0] * sx)), int(np.floor(b[1] * sy)), max(int(np.ceil(b[2] * sx)), int(np.floor(b[0] * sx)) + 1),
             max(int(np.ceil(b[3] * sy)), int(np.floor(b[1] * sy)) + 1)) for b in boxes]


def overlay_with_boxes(image, map, boxes: Sequence = (), labels: Sequence[str] | None = None, *,
                       regions: Sequence = (), percentile: float | None = None, colorbar: bool = True) -> np.ndarray:
    """The heatmap ``map`` over ``image`` (:func:`overlay_with_scale`) with ``boxes`` (image
    pixels, end exclusive) drawn on top, each with its label, and the outlines of ``regions``
    (2D masks), each box and region in the next of ``CLASS_COLORS``, then the colour bar →
    ``(H, W', 3)`` uint8."""
    picture, scale = overlay_with_scale(image, map, percentile=percentile)
    colors = CLASS_COLORS
    for i, mask in enumerate(regions):
        picture = draw_region(picture, mask, colors[i % len(colors)])
    for i, box in enumerate(boxes):
        picture = draw_boxes(picture, [box], colors[i % len(colors)], 1,
                             None if labels is None else [labels[i]])
    return add_colorbar(picture, scale) if colorbar else picture
