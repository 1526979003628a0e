"""Colour bars: a vertical bar of a :class:`ColorScale` with its end values (and 0), drawn
with OpenCV beside a picture (NumPy + OpenCV only)."""
from __future__ import annotations

import cv2
import numpy as np

from .colors import ColorScale, as_array, apply_colormap

_FONT = cv2.FONT_HERSHEY_SIMPLEX
BAR_WIDTH = 12  # pixels of colour
GAP = 6  # white between the picture and the bar
MIN_HEIGHT = 64  # a shorter picture is padded (white, below) so the labels fit


def _fmt(value: float) -> str:
    text = f"{value:.3g}"
    return "0" if text in ("-0", "0") else text


def _labels(scale: ColorScale) -> list[tuple[float, str]]:
    """(position in [0, 1] on the bar, text): the ends, and 0 when the range holds it."""
    top = (">" if scale.clipped else "") + _fmt(scale.vmax)
    bottom = ("<" if scale.clipped and scale.signed else "") + _fmt(scale.vmin)
    out = [(1.0, top), (0.0, bottom)]
    if scale.vmin < 0 < scale.vmax:
        out.append((float(scale.scale(np.array([0.0]))[0]), "0"))
    return out


def colorbar(scale: ColorScale, height: int, *, font_scale: float | None = None) -> np.ndarray:
    """A ``(height, w, 3)`` uint8 RGB panel (white) holding a vertical bar of ``scale``'s
    colours, ``vmax`` at the top and ``vmin`` at the bottom, labelled with those values and,
    when the range holds it, 0 (for a signed scale: the middle row, the neutral colour).
    A label ``>v`` (``<-v``) says the scale was clipped at ``v`` by a percentile.
    """
    height = int(height)
    if height < 8:
        raise ValueError(f"a colour bar needs a height of at least 8 pixels, got {height}")
    fs = font_scale if font_scale is not None else (0.35 if height < 160 else 0.4)
    labels = _labels(scale)
    sizes = [cv2.getTextSize(text, _FONT, fs, 1)[0] for _, text in labels]
    text_w = max(w for w, _ in sizes)
    text_h = max(h for _, h in sizes)
    pad = text_h // 2 + 3
    y0, y1 = pad, height - pad  # bar rows [y0, y1)
    if (y1 - 1 - y0) % 2:  # an even span: the middle value (0 of a signed scale) has its own row
        y1 -= 1
    span = y1 - 1 - y0
    width = GAP + BAR_WIDTH + 7 + text_w + 4
    panel = np.full((height, width, 3), 255, np.uint8)
    if span < 2:
        return panel
    t = (span - np.arange(span + 1)) / span  # 1 at the top row .. 0 at the bottom one
    column = apply_colormap(t[:, None], scale.colormap, normalize_map=False)  # (rows, 1, 3)
    x0, x1 = GAP, GAP + BAR_WIDTH
    panel[y0:y1, x0:x1] = column
    cv2.rectangle(panel, (x0 - 1, y0 - 1), (x1, y1), (96, 96, 96), 1)
    placed: list[int] = []
    for (pos, text), (_, th) in sorted(zip(labels, sizes), key=lambda item: abs(item[0][0] - 0.5), reverse=True):
        row = y1 - 1 - int(round(pos * span))
        cv2.line(panel, (x1 + 1, row), (x1 + 3, row), (0, 0, 0), 1)
        if any(abs(row - other) < text_h + 2 for other in placed):  # no room: tick only
            continue
        placed.append(row)
        cv2.putText(panel, text, (x1 + 7, row + th // 2), _FONT, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def add_colorbar(picture, scale: ColorScale, *, min_height: int = MIN_HEIGHT) -> np.ndarray:
    """``picture`` ``(H, W, 3)`` uint8 with :func:`colorbar` on its right → ``(H', W + w, 3)``,
    ``H' = max(H, min_height)`` (a short picture gets white rows below)."""
    pic = as_array(picture, "picture")
    if pic.ndim != 3 or pic.shape[2] != 3 or pic.dtype != np.uint8:
        raise ValueError(f"picture must be (H, W, 3) uint8, got shape {pic.shape} {pic.dtype}")
    h = max(pic.shape[0], int(min_height))
    if h > pic.shape[0]:
        pic = np.concatenate([pic, np.full((h - pic.shape[0],) + pic.shape[1:], 255, np.uint8)], axis=0)
    return np.concatenate([pic, colorbar(scale, h)], axis=1)
