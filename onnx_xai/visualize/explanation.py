"""``save_explanation``: PNG overlay + raw ``.npy`` map + JSON metadata, written atomically."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from .colorbars import add_colorbar
from .colors import as_array, overlay_with_scale
from .io import atomic_write_bytes, encode_png
from .montage import volume_picture_with_scale


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _hwc(image) -> np.ndarray:
    img = as_array(image, "image")
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)  # channel-first (C, H, W)
    return img


def _volume(image, raw: np.ndarray) -> np.ndarray | None:
    """``image`` as an ``(H, W, D)`` volume when it is one and ``raw`` is a map of its shape
    (leading 1s aside, both), else None."""
    if raw.ndim < 3 or int(np.prod(raw.shape[:-3])) != 1 or min(raw.shape[-3:]) < 2:
        return None
    img = as_array(image, "image")
    if img.ndim < 3 or int(np.prod(img.shape[:-3])) != 1 or img.shape[-3:] != raw.shape[-3:]:
        return None
    return img.reshape(img.shape[-3:])


def save_explanation(path_stem: str | os.PathLike, image, map, meta: dict | None = None, *,
                     alpha: float = 0.5, colormap: str | None = None, signed: bool | str = "auto",
                     percentile: float | None = None, colorbar: bool = True) -> dict[str, Path]:
    """Write ``{stem}.png`` (overlay), ``{stem}.npy`` (raw map) and ``{stem}.json`` (``meta`` +
    map shape/dtype/range + the colour scale drawn) → ``{"png": ..., "npy": ..., "json": ...}``.

    ``image``: ``(H, W[, 3])`` or ``(1|3, H, W)``; ``map``: ``(h, w)`` / ``(1, h, w)`` /
    ``(1, 1, h, w)`` (resized to the image for the PNG; saved unchanged in the ``.npy``).
    The overlay is :func:`overlay`'s (``colormap``, ``signed``, ``percentile``: see there; a map
    with both signs is drawn centred on 0 in a diverging map), with a colour bar on its right
    (``colorbar=False``: the bare ``(H, W, 3)`` overlay) labelled with the scale's ends and 0.
    A volume: ``image`` ``(H, W, D)`` and a ``map`` of that shape (leading 1s allowed) are
    drawn as :func:`volume_picture`'s slice grid.
    Everything is encoded first, then each file goes through a temp file and ``os.replace``:
    bad input writes nothing, an interruption leaves no half-written file.
    """
    stem = Path(path_stem)
    if stem.suffix.lower() in (".png", ".npy", ".json"):
        stem = stem.with_suffix("")
    raw = as_array(map, "map")
    volume = _volume(image, raw)
    m2 = raw.reshape(raw.shape[-2:]) if raw.ndim >= 2 and int(np.prod(raw.shape[:-2])) == 1 else None
    if m2 is None and volume is None:
        raise ValueError(f"map must be one 2D map (h, w), (1, h, w) or (1, 1, h, w), or a volume's "
                         f"(H, W, D) with the image (H, W, D); got shape {raw.shape}")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict or None, got {type(meta).__name__}")
    if volume is not None:
        picture, scale = volume_picture_with_scale(volume, raw.reshape(volume.shape), alpha, colormap=colormap,
                                                   signed=signed, percentile=percentile, colorbar=colorbar)
    else:
        picture, scale = overlay_with_scale(_hwc(image), m2, alpha=alpha, colormap=colormap, signed=signed,
                                            percentile=percentile)
        picture = add_colorbar(picture, scale) if colorbar else picture
    png = encode_png(picture)
    buf = io.BytesIO()
    np.save(buf, raw, allow_pickle=False)
    record = dict(meta or {})
    finite = raw[np.isfinite(raw)]
    record["map"] = {"shape": list(raw.shape), "dtype": str(raw.dtype),
                     "min": float(finite.min()) if finite.size else None,
                     "max": float(finite.max()) if finite.size else None}
    record["colour_scale"] = {"vmin": scale.vmin, "vmax": scale.vmax, "signed": scale.signed,
                              "colormap": scale.colormap, "clipped": scale.clipped}
    record["files"] = {k: stem.with_suffix("." + k).name for k in ("png", "npy")}
    try:
        text = json.dumps(record, indent=2, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta cannot be written as JSON: {exc}") from exc
    paths = {k: stem.with_suffix("." + k) for k in ("png", "npy", "json")}
    atomic_write_bytes(paths["png"], png)
    atomic_write_bytes(paths["npy"], buf.getvalue())
    atomic_write_bytes(paths["json"], text.encode("utf-8"))
    return paths
