"""``matshow3d``-style montages: a volume becomes one 2D grid of frames (NumPy + OpenCV); the
slice-grid picture of a volume and its map (``volume_picture``)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .colorbars import add_colorbar
from .colors import ColorScale, apply_colormap, as_array, color_scale, normalize
from .io import write_png


def _pad_to(arr: np.ndarray, shape: tuple) -> np.ndarray:
    """Zero-pad the spatial dims (all but 0) of ``arr`` to ``shape``, split evenly (extra after)."""
    widths = [(0, 0)] + [((t - s) // 2, t - s - (t - s) // 2) for s, t in zip(arr.shape[1:], shape[1:])]
    return np.pad(arr, widths)


def _frames(volume, frame_dim: int, channel_dim: int | None) -> np.ndarray:
    """The frames of ``volume``: ``(N, h, w)``, or ``(N, h, w, C)`` with ``channel_dim``."""
    if frame_dim not in (-1, -2, -3):
        raise ValueError(f"frame_dim must be -1, -2 or -3, got {frame_dim!r}")
    if isinstance(volume, (list, tuple)):
        if not volume:
            raise ValueError("volume is an empty list")
        vols = [as_array(v, f"volume[{i}]") for i, v in enumerate(volume)]
        if len({v.ndim for v in vols}) != 1 or vols[0].ndim < 2:
            raise ValueError("a list volume must hold channel-first arrays (C, H[, W, D]) of equal rank, "
                             f"got shapes {[v.shape for v in vols]}")
        target = tuple(np.max([v.shape for v in vols], axis=0))
        vol = np.concatenate([_pad_to(v, target) for v in vols], axis=0)
    else:
        vol = as_array(volume, "volume")
    while vol.ndim < 3:
        vol = vol[None]
    if channel_dim is None:
        vol = np.moveaxis(vol, frame_dim, -3)
        return vol.reshape(-1, *vol.shape[-2:])
    if channel_dim not in (0, 1) or vol.ndim < 4 or vol.shape[channel_dim] not in (1, 3, 4):
        raise ValueError("channel_dim must be None, 0 or 1, on a volume of 4 or more dims (CHWD / BCHWD) whose "
                         f"channel dim has 1, 3 or 4 channels; got channel_dim={channel_dim!r}, shape {vol.shape}")
    vol = np.moveaxis(vol, frame_dim, -4)
    return np.moveaxis(vol.reshape(-1, *vol.shape[-3:]), 1, -1)


def montage(volume, frames_per_row: int | None = None, frame_dim: int = -3, channel_dim: int | None = None,
            every_n: int = 1, margin: int = 1, fill_value=np.nan, dtype=np.float32) -> np.ndarray:
    """Lay the frames of a volume out as one grid, like MONAI's ``matshow3d`` (its array output).

    ``volume``: ``HWD``, ``CHWD``, ``BCHWD`` (frames taken along ``frame_dim`` in (-1, -2, -3),
    all leading dims flattened into frames), or a list of channel-first arrays, zero-padded
    (centred) to a common size and stacked along channels. Every ``every_n``-th frame is kept;
    ``frames_per_row`` defaults to ``ceil(sqrt(frames))``. Each frame gets ``margin`` cells of
    ``fill_value`` on every side; empty grid slots are ``fill_value``.
    Returns ``(rows * (h + 2m), cols * (w + 2m))``, or ``(..., C)`` with ``channel_dim``.
    """
    frames = _frames(volume, frame_dim, channel_dim)
    return _grid(frames, frames_per_row, every_n, margin, fill_value, dtype)


def _grid(frames, frames_per_row, every_n, margin, fill_value, dtype) -> np.ndarray:
    if int(margin) < 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    if frames_per_row is not None and int(frames_per_row) < 0:
        raise ValueError(f"frames_per_row must be positive or None, got {frames_per_row!r}")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating) and np.isnan(float(fill_value)):
        raise ValueError(f"fill_value NaN needs a float dtype, got {dtype}; pass fill_value=0")
    frames = frames[:: max(int(every_n), 1)]
    n, m = len(frames), int(margin)
    cols = max(min(n, int(frames_per_row) if frames_per_row else int(np.ceil(np.sqrt(n)))), 1)
    rows = int(np.ceil(n / cols))
    h, w = frames.shape[1:3]
    fh, fw = h + 2 * m, w + 2 * m
    grid = np.full((rows * fh, cols * fw) + frames.shape[3:], fill_value, dtype=dtype)
    for k, frame in enumerate(frames):
        r, c = divmod(k, cols)
        grid[r * fh + m: r * fh + m + h, c * fw + m: c * fw + m + w] = frame
    return grid


def render_montage(grid, vmin=None, vmax=None, cmap: str = "gray", nan_color=(255, 255, 255)) -> np.ndarray:
    """A montage array → ``(H, W, 3)`` uint8 RGB: ``(v - vmin) / (vmax - vmin)`` clipped, coloured
    with ``cmap`` (an RGB montage ``(H, W, 3)`` is only scaled); NaN cells get ``nan_color``."""
    g = as_array(grid, "grid").astype(np.float64)
    vmin = np.nanmin(g) if vmin is None else float(vmin)
    vmax = np.nanmax(g) if vmax is None else float(vmax)
    scaled = np.clip((g - vmin) / (vmax - vmin), 0, 1) if vmax > vmin else np.zeros_like(g)
    nan = np.isnan(g)
    if g.ndim == 2:
        rgb = apply_colormap(scaled, cmap, normalize_map=False)
    elif g.ndim == 3 and g.shape[2] in (1, 3, 4):
        rgb = np.round(np.nan_to_num(scaled[..., :3] if g.shape[2] != 1 else np.repeat(scaled, 3, 2)) * 255)
        rgb = rgb.astype(np.uint8)
        nan = nan.any(axis=2)
    else:
        raise ValueError(f"grid must be (H, W) or (H, W, 1|3|4), got shape {g.shape}")
    rgb[nan] = nan_color
    return rgb


def save_montage(path: str | os.PathLike, volume, *, cmap: str = "gray", vmin=None, vmax=None,
                 frames_per_row: int | None = None, frame_dim: int = -3, channel_dim: int | None = None,
                 every_n: int = 1, margin: int = 1, fill_value=np.nan) -> np.ndarray:
    """Write the montage of ``volume`` as a PNG at ``path``; return the RGB uint8 picture.

    ``vmin``/``vmax`` default to the range of all frames (before ``every_n``), as in MONAI.
    """
    frames = _frames(volume, frame_dim, channel_dim)
    vmin = np.nanmin(frames) if vmin is None else vmin
    vmax = np.nanmax(frames) if vmax is None else vmax
    grid = _grid(frames, frames_per_row, every_n, margin, fill_value, np.float32)
    rgb = render_montage(grid, vmin, vmax, cmap)
    write_png(Path(path), rgb)
    return rgb


def volume_picture(volume, map=None, alpha: float = 0.5, *, colormap: str | None = None,
                   signed: bool | str = "auto", percentile: float | None = None,
                   colorbar: bool = True) -> np.ndarray:
    """A volume as one RGB uint8 picture: up to 16 slices along the last axis of ``(H, W, D)``
    (evenly spaced), each drawn at 96 × 96 pixels, 4 per row with 2 white pixels between;
    ``map`` (same shape) over them with weight ``alpha``, on one colour scale for the whole
    volume (``color_scale``: min-max ``jet``, or centred on 0 in ``rdbu_r`` for a map with both
    signs; ``percentile`` clips), with its colour bar on the right (``colorbar=False``: none).
    A float volume is drawn in grey, min-max scaled; a uint8 one as it is.
    :func:`volume_picture_with_scale` also returns the scale."""
    return volume_picture_with_scale(volume, map, alpha, colormap=colormap, signed=signed,
                                     percentile=percentile, colorbar=colorbar)[0]


def volume_picture_with_scale(volume, map=None, alpha: float = 0.5, *, colormap: str | None = None,
                              signed: bool | str = "auto", percentile: float | None = None,
                              colorbar: bool = True) -> tuple[np.ndarray, ColorScale | None]:
    """:func:`volume_picture` and the :class:`ColorScale` of its map (None without one)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    volume = as_array(volume, "volume")
    if volume.ndim != 3:
        raise ValueError(f"volume must be (H, W, D), got shape {volume.shape}")
    if map is not None and np.shape(map) != volume.shape:
        raise ValueError(f"map must have the volume's shape {volume.shape}, got {np.shape(map)}")
    vol = _grey_rgb(volume.reshape(volume.shape[0], -1)).reshape(*volume.shape, 3)
    scale, heat = None, None
    if map is not None:
        scale = color_scale(map, signed=signed, percentile=percentile, colormap=colormap)
        heat = scale.colors(np.reshape(map, (volume.shape[0], -1))).reshape(*volume.shape, 3)
    frames = []
    for d in np.unique(np.linspace(0, volume.shape[-1] - 1, min(16, volume.shape[-1])).round().astype(int)):
        f = vol[:, :, d].astype(np.float32)
        if heat is not None:
            f = (1 - alpha) * f + alpha * heat[:, :, d]
        frames.append(cv2.resize(np.round(f).astype(np.uint8), (96, 96), interpolation=cv2.INTER_NEAREST))
    grid = _grid(np.stack(frames), 4, 1, 1, 255, np.uint8)[1:-1, 1:-1]  # 1 + 1 pixels between, none around
    return (add_colorbar(grid, scale) if scale is not None and colorbar else grid), scale


def _grey_rgb(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` float (min-max scaled) or uint8, or ``(H, W, 3)`` uint8 → ``(H, W, 3)`` uint8."""
    if img.dtype == np.uint8:
        return img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    return np.repeat(np.round(255 * normalize(img))[..., None], 3, axis=2).astype(np.uint8)


def matshow3d(volume, fig=None, title: str | None = None, figsize=(10, 10), frames_per_row=None,
              frame_dim: int = -3, channel_dim=None, vmin=None, vmax=None, every_n: int = 1,
              interpolation: str = "none", show: bool = False, fill_value=np.nan, margin: int = 1,
              dtype=np.float32, **kwargs):
    """MONAI's ``matshow3d``: ``(fig, montage array)``; needs matplotlib (optional).

    Without matplotlib use :func:`montage` (the array) or :func:`save_montage` (a PNG).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("matshow3d draws a matplotlib figure and matplotlib is not installed; "
                          "use onnx_xai.visualize.montage() / save_montage() instead") from exc
    frames = _frames(volume, frame_dim, channel_dim)
    vmin = np.nanmin(frames) if vmin is None else vmin
    vmax = np.nanmax(frames) if vmax is None else vmax
    im = _grid(frames, frames_per_row, every_n, margin, fill_value, dtype)
    if isinstance(fig, plt.Axes):
        ax = fig
    else:
        fig = fig if fig is not None else plt.figure(tight_layout=True)
        ax = fig.axes[0] if fig.axes else fig.add_subplot(111)
    ax.matshow(im, vmin=vmin, vmax=vmax, interpolation=interpolation, **kwargs)
    ax.axis("off")
    if title is not None:
        ax.set_title(title)
    if figsize is not None and hasattr(fig, "set_size_inches"):
        fig.set_size_inches(figsize)
    if show:
        plt.show()
    return fig, im
