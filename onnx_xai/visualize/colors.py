"""Normalisation, colormaps, overlays and MONAI-style ``blend_images`` (NumPy + OpenCV)."""
from __future__ import annotations

import cv2
import numpy as np

# OpenCV colormaps by lower-case name ("jet", "magma", "viridis", ...).
CV_COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name)
                for name in dir(cv2) if name.startswith("COLORMAP_")}

# Matplotlib's segment definitions (x, y) of the maps whose OpenCV version differs from
# matplotlib's; used where matplotlib semantics are promised (blend_images).
_SEGMENTS = {
    "hsv": {
        "red": [(0.0, 1.0), (0.15873, 1.0), (0.174603, 0.96875), (0.333333, 0.03125), (0.349206, 0.0),
                (0.666667, 0.0), (0.68254, 0.03125), (0.84127, 0.96875), (0.857143, 1.0), (1.0, 1.0)],
        "green": [(0.0, 0.0), (0.15873, 0.9375), (0.174603, 1.0), (0.507937, 1.0), (0.666667, 0.0625),
                  (0.68254, 0.0), (1.0, 0.0)],
        "blue": [(0.0, 0.0), (0.333333, 0.0), (0.349206, 0.0625), (0.507937, 1.0), (0.84127, 1.0),
                 (0.857143, 0.9375), (1.0, 0.09375)],
    },
    "jet": {
        "red": [(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)],
        "green": [(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)],
        "blue": [(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)],
    },
    "gray": {c: [(0.0, 0.0), (1.0, 1.0)] for c in ("red", "green", "blue")},
}
_SEGMENTS["grey"] = _SEGMENTS["gray"]


def _as_array(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything NumPy cannot take
        raise ValueError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def colormap_names() -> list[str]:
    """Names accepted by :func:`apply_colormap` / :func:`blend_images` (``gray`` included)."""
    return sorted(set(CV_COLORMAPS) | set(_SEGMENTS))


def _check_cmap(name: str) -> str:
    key = str(name).lower()
    if key not in CV_COLORMAPS and key not in _SEGMENTS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {colormap_names()}")
    return key


def colormap_lut(name: str) -> np.ndarray:
    """``(256, 3)`` float RGB table in [0, 1] with matplotlib's values for ``name``.

    ``hsv``, ``jet`` and ``gray`` are rebuilt from matplotlib's segment data (exact); the
    perceptual maps (``viridis``, ``magma``, ...) come from OpenCV, equal to matplotlib's
    within 1/255.
    """
    key = _check_cmap(name)
    if key in _SEGMENTS:
        x = np.linspace(0.0, 1.0, 256)
        return np.stack([np.interp(x, *zip(*_SEGMENTS[key][c])) for c in ("red", "green", "blue")], axis=1)
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], CV_COLORMAPS[key])[0]
    return bgr[:, ::-1].astype(np.float64) / 255.0


def normalize(map, percentile: float | None = None, flip: bool = False) -> np.ndarray:
    """Scale ``map`` (any shape) linearly to [0, 1] as float32.

    ``percentile=p`` clips at the top like FastEstimator/PAIR saliency: ``vmin = min(map)``,
    ``vmax = percentile(map, p)``, then ``clip((map - vmin) / (vmax - vmin), 0, 1)``.
    ``flip=True`` returns ``1 - result`` (MONAI's CAM default normaliser maps max→0, min→1).
    A constant map gives zeros. NaNs are ignored for the range and stay NaN.
    """
    arr = _as_array(map, "map").astype(np.float64)
    if percentile is not None and not 0 < float(percentile) <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise ValueError("map has no finite values to normalise")
    vmin = finite.min()
    vmax = np.percentile(finite, percentile) if percentile is not None else finite.max()
    out = np.zeros_like(arr) if vmax <= vmin else np.clip((arr - vmin) / (vmax - vmin), 0.0, 1.0)
    out[np.isnan(arr)] = np.nan
    if flip:
        out = 1.0 - out
    return out.astype(np.float32)


def apply_colormap(map, colormap: str = "jet", *, normalize_map: bool = True) -> np.ndarray:
    """Colour a 2D ``(H, W)`` map with OpenCV's colormap → ``(H, W, 3)`` uint8 **RGB**.

    The map is first scaled to [0, 1] with :func:`normalize` (``normalize_map=False``: it must
    already lie in [0, 1]); value ``v`` takes entry ``round(255 * v)`` of OpenCV's table.
    ``colormap="gray"`` gives a grey ramp.
    """
    arr = _as_array(map, "map")
    arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
    if arr.ndim != 2:
        raise ValueError(f"map must be 2D (H, W) or (1, H, W), got shape {arr.shape}")
    key = _check_cmap(colormap)
    arr = normalize(arr) if normalize_map else arr.astype(np.float32)
    if normalize_map is False and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
        raise ValueError("with normalize_map=False the map must lie in [0, 1]")
    idx = np.round(np.nan_to_num(arr, nan=0.0) * 255).astype(np.uint8)
    if key in ("gray", "grey"):
        return np.repeat(idx[..., None], 3, axis=2)
    if key not in CV_COLORMAPS:  # colormaps known only from segment data
        return np.round(colormap_lut(key)[idx] * 255).astype(np.uint8)
    return cv2.applyColorMap(idx, CV_COLORMAPS[key])[..., ::-1].copy()


def _image_to_rgb_float(image) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1|3|4)`` uint8 or float → ``(H, W, 3)`` float32 in [0, 1]."""
    img = _as_array(image, "image")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == bool or np.issubdtype(img.dtype, np.integer):
        hi = 65535.0 if img.dtype == np.uint16 else 255.0
        return np.clip(img.astype(np.float32) / hi, 0, 1)
    img = img.astype(np.float32)
    if np.nanmin(img) < 0 or np.nanmax(img) > 1:  # float outside [0, 1]: min-max scale
        img = normalize(img)
    return img


def overlay(image, map, alpha: float = 0.5, colormap: str = "jet", *,
            percentile: float | None = None) -> np.ndarray:
    """Heatmap over an image → ``(H, W, 3)`` uint8 RGB.

    ``image``: ``(H, W)`` grey or ``(H, W, 3)`` RGB, uint8 (0..255) or float ([0, 1]; other
    ranges are min-max scaled). ``map``: ``(h, w)`` or ``(1, h, w)``, resized bilinearly to
    ``(H, W)`` and normalised (see :func:`normalize`). Result:
    ``round(255 * ((1 - alpha) * image + alpha * colormap(map)))``.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    img = _image_to_rgb_float(image)
    m = _as_array(map, "map").astype(np.float32)
    m = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
    if m.ndim != 2:
        raise ValueError(f"map must be 2D (h, w) or (1, h, w), got shape {m.shape}")
    h, w = img.shape[:2]
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = apply_colormap(normalize(m, percentile), colormap, normalize_map=False).astype(np.float32) / 255.0
    out = (1.0 - alpha) * img + alpha * heat
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _rescale01(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] in float32; a constant array becomes zeros (MONAI's rescale_array)."""
    x = x.astype(np.float32)
    lo, hi = np.min(x), np.max(x)
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _lut_lookup(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Matplotlib's float lookup: index ``floor(v * N)``, v == 1 → last, under → first,
    over → last, NaN → black."""
    n = lut.shape[0]
    scaled = values * values.dtype.type(n)  # in the input's float precision, as matplotlib
    with np.errstate(invalid="ignore"):
        idx = np.clip(np.nan_to_num(scaled, nan=0.0), -1, n).astype(np.int64)
    idx[scaled == n] = n - 1
    idx = np.clip(idx, 0, n - 1)
    out = lut[idx]
    out[np.isnan(values)] = 0.0
    return out


def blend_images(image, label, alpha=0.5, cmap: str = "hsv", rescale_arrays: bool = True,
                 transparent_background: bool = True) -> np.ndarray:
    """Blend ``image`` ``(1|3, H, W[, D])`` with ``label`` ``(1, H, W[, D])`` → RGB ``(3, H, W[, D])``.

    MONAI's semantics: both min-max rescaled to [0, 1] (``rescale_arrays``), a grey image
    repeated to RGB, the label coloured with the matplotlib colormap ``cmap`` (computed here
    without matplotlib), ``out = (1 - a) * image + a * cmap(label)`` with ``a = alpha`` (a
    float or an array the size of the image) and ``a = 0`` where ``label == 0`` if
    ``transparent_background``. Returns float32.
    """
    img = _as_array(image, "image")
    lab = _as_array(label, "label")
    if lab.ndim < 3 or lab.shape[0] != 1:
        raise ValueError(f"label must be (1, H, W[, D]) with 1 channel, got shape {lab.shape}")
    if img.ndim < 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must be (1|3, H, W[, D]) with 1 or 3 channels, got shape {img.shape}")
    if img.shape[1:] != lab.shape[1:]:
        raise ValueError(f"image {img.shape} and label {lab.shape} must have the same spatial size")
    lut = colormap_lut(cmap)
    if isinstance(alpha, (int, float, np.number)):
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        w_label = np.full(lab.shape, alpha, dtype=np.float32)
    else:
        w_label = _as_array(alpha, "alpha").astype(np.float32)
        if w_label.shape[1:] != img.shape[1:]:
            raise ValueError(f"alpha array must match the image's spatial size {img.shape[1:]}, "
                             f"got shape {w_label.shape}")
        w_label = w_label.copy()
    if rescale_arrays:
        img, lab = _rescale01(img), _rescale01(lab)
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    lab = lab if np.issubdtype(lab.dtype, np.floating) else lab.astype(np.float32)
    label_rgb = np.moveaxis(_lut_lookup(lab[0], lut), -1, 0).astype(np.float32)
    if transparent_background:
        w_label = np.broadcast_to(w_label, np.broadcast_shapes(w_label.shape, lab.shape)).copy()
        w_label[np.broadcast_to(lab == 0, w_label.shape)] = 0
    return ((1 - w_label) * img + w_label * label_rgb).astype(np.float32)
