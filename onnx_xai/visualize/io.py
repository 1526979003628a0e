"""Atomic file writes: each file is written to a temp name in its folder, then renamed."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import cv2
import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file + ``os.replace`` (no half-written file)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} does not exist; create it before writing {path.name!r}")
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the usual umask-ed permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def encode_png(rgb: np.ndarray) -> bytes:
    """``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 → PNG bytes."""
    img = np.ascontiguousarray(rgb)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"OpenCV could not encode an array of shape {rgb.shape} {rgb.dtype} as PNG")
    return buf.tobytes()


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Save an RGB (or grey) uint8 array as PNG, atomically."""
    return atomic_write_bytes(path, encode_png(rgb))
