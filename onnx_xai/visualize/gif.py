"""Animated GIFs of volumes and of maps over volumes, written by OpenCV (>= 4.11)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .io import atomic_write_bytes
from .colors import as_array, color_scale, normalize


def _require_gif() -> None:
    if not (hasattr(cv2, "imencodeanimation") and hasattr(cv2, "Animation")):
        raise RuntimeError(f"writing GIFs needs OpenCV >= 4.11 (cv2.imencodeanimation); this is OpenCV "
                           f"{cv2.__version__}. Upgrade: pip install -U opencv-python-headless")


def encode_gif(frames, duration_ms: int = 100, loop: int = 0) -> bytes:
    """``(T, H, W)`` grey or ``(T, H, W, 3)`` RGB uint8 frames → GIF bytes (64-level colour
    quantisation by OpenCV: values come back within about 2 of the input for grey ramps)."""
    _require_gif()
    f = as_array(frames, "frames")
    if f.dtype != np.uint8:
        raise ValueError(f"GIF frames must be uint8, got {f.dtype}; scale them to 0..255 first")
    if f.ndim == 3:
        f = np.repeat(f[..., None], 3, axis=3)
    if f.ndim != 4 or f.shape[3] != 3:
        raise ValueError(f"frames must be (T, H, W) or (T, H, W, 3), got shape {f.shape}")
    if int(duration_ms) <= 0:
        raise ValueError(f"duration_ms must be positive, got {duration_ms!r}")
    anim = cv2.Animation()
    anim.frames = [np.ascontiguousarray(fr[..., ::-1]) for fr in f]
    anim.durations = [int(duration_ms)] * len(f)
    anim.loop_count = int(loop)
    ok, buf = cv2.imencodeanimation(".gif", anim, [cv2.IMWRITE_GIF_DITHER, 3])
    if not ok:
        raise RuntimeError(f"OpenCV {cv2.__version__} failed to encode {len(f)} frames of {f.shape[1:]} as GIF")
    return buf.tobytes()


def write_gif(path: str | os.PathLike, frames, duration_ms: int = 100, loop: int = 0) -> Path:
    """Save uint8 frames ``(T, H, W[, 3])`` (RGB) as an animated GIF, atomically."""
    return atomic_write_bytes(path, encode_gif(frames, duration_ms, loop))


def read_gif(path: str | os.PathLike) -> np.ndarray:
    """Frames of a GIF as ``(T, H, W, 3)`` uint8 RGB."""
    ok, frames = cv2.imreadmulti(str(path))
    if not ok or not frames:
        raise ValueError(f"OpenCV cannot read {str(path)!r} as an animated image")
    return np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB if f.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
                     if f.ndim == 3 else np.repeat(f[..., None], 3, 2) for f in frames])


def _to_uint8(vol: np.ndarray, scale_factor: float | None) -> np.ndarray:
    if scale_factor is None:
        return np.round(normalize(vol) * 255).astype(np.uint8)
    return np.clip(vol.astype(np.float64) * float(scale_factor), 0, 255).astype(np.uint8)


def volume_frames(volume, map=None, *, frame_dim: int = -3, max_out: int = 1, scale_factor: float | None = None,
                  alpha: float = 0.5, colormap: str | None = None, signed: bool | str = "auto",
                  percentile: float | None = None) -> np.ndarray:
    """Frames ``(T, H', W', 3)`` uint8 RGB of a volume along ``frame_dim``, optionally with a map over it.

    ``volume``: ``HWD`` or ``CHWD``; ``frame_dim`` in (-3, -2, -1) counts over the spatial dims
    (default ``-3``, the first, as MONAI). The first ``max_out`` channels are placed side by side.
    ``scale_factor``: MONAI's (values times it, clipped to 0..255); None scales the volume's
    min..max to 0..255. ``map`` (``HWD`` / ``1HWD``, same spatial size) is coloured on one
    :func:`~onnx_xai.visualize.color_scale` for the whole volume (``colormap``, ``signed``,
    ``percentile``: min-max ``jet``, or centred on 0 in ``rdbu_r`` for a map with both signs)
    and blended with weight ``alpha``.
    """
    vol = as_array(volume, "volume")
    vol = vol[None] if vol.ndim == 3 else vol
    if vol.ndim != 4:
        raise ValueError(f"volume must be HWD or CHWD, got shape {vol.shape}")
    if frame_dim not in (-1, -2, -3):
        raise ValueError(f"frame_dim must be -1, -2 or -3 (a spatial dim), got {frame_dim!r}")
    if int(max_out) < 1:
        raise ValueError(f"max_out must be >= 1, got {max_out!r}")
    vol = vol[: int(max_out)]
    grey = _to_uint8(vol, scale_factor)  # (C, H, W, D)
    grey = np.moveaxis(grey, frame_dim, 1)  # (C, T, h, w)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    if map is not None:
        m = as_array(map, "map")
        m = m[0] if m.ndim == 4 and m.shape[0] == 1 else m
        if m.shape != vol.shape[1:]:
            raise ValueError(f"map must have the volume's spatial shape {vol.shape[1:]}, got {m.shape}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        scale = color_scale(m, signed=signed, percentile=percentile, colormap=colormap)
        m = np.moveaxis(m, frame_dim, 0)  # (T, h, w), one scale for the whole volume
        heat = np.stack([scale.colors(s) for s in m]).astype(np.float32)
        rgb = (1 - alpha) * rgb + alpha * heat[None]
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return np.concatenate(list(rgb), axis=2)  # channels side by side: (T, h, C * w, 3)


def save_gif(path: str | os.PathLike, volume, map=None, *, frame_dim: int = -3, max_out: int = 1,
             scale_factor: float | None = None, alpha: float = 0.5, colormap: str | None = None,
             signed: bool | str = "auto", percentile: float | None = None,
             duration_ms: int = 100, loop: int = 0) -> np.ndarray:
    """Write :func:`volume_frames` as an animated GIF at ``path``; return the frames."""
    _require_gif()
    frames = volume_frames(volume, map, frame_dim=frame_dim, max_out=max_out, scale_factor=scale_factor,
                           alpha=alpha, colormap=colormap, signed=signed, percentile=percentile)
    write_gif(path, frames, duration_ms=duration_ms, loop=loop)
    return frames
