"""Image loading and preprocessing from a model's JSON sidecar (OpenCV, no torch).

A sidecar ``<model>.json`` next to ``<model>.onnx`` describes the input::

    {"size": [224, 224], "layout": "nchw", "color": "rgb", "scale": 0.00392156862745098,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "labels": "imagenet_labels.txt"}

``x = (resize(image) * scale - mean) / std`` in the channel order of ``color``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

_LAYOUTS = ("nchw", "nhwc")
_COLORS = ("rgb", "bgr", "gray")


@dataclass
class ImageSpec:
    """How to turn an image file into a model input."""

    size: tuple[int, int] | None = None  # (H, W); None keeps the image size
    layout: str = "nchw"
    color: str = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    labels: list[str] | None = None
    input_name: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if self.color not in _COLORS:
            raise ValueError(f"color must be one of {_COLORS}, got {self.color!r}")
        if self.size is not None:
            size = tuple(int(s) for s in self.size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"size must be (height, width) with positive values, got {self.size!r}")
            self.size = size
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain zeros")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ImageSpec":
        """Read a sidecar; a ``labels`` entry names a text file (one label per line) beside it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read preprocessing sidecar {str(path)!r}: {exc}") from exc
        known = {"size", "layout", "color", "scale", "mean", "std", "labels", "input_name"}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "labels" in kwargs:
            kwargs["labels"] = load_labels(path.parent / kwargs["labels"])
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in np.atleast_1d(kwargs[key]))
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def for_model(cls, model_path: str | os.PathLike | None) -> "ImageSpec | None":
        """The sidecar next to ``model_path`` (same stem, ``.json``), or None."""
        if model_path is None:
            return None
        sidecar = Path(model_path).with_suffix(".json")
        return cls.from_json(sidecar) if sidecar.is_file() else None

    def to_input(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` RGB uint8 (or ``(H, W)`` grey) → ``(1, C, H, W)`` or ``(1, H, W, C)`` float32."""
        image = resize_image(image, self.size)
        if self.color == "gray":
            img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            img = img[..., None]
        else:
            img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
            img = img[..., ::-1] if self.color == "bgr" else img
        x = (img.astype(np.float32) * np.float32(self.scale) - np.asarray(self.mean, np.float32)) \
            / np.asarray(self.std, np.float32)
        x = x.transpose(2, 0, 1) if self.layout == "nchw" else x
        return np.ascontiguousarray(x[None], dtype=np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize ``(H, W[, C])`` to ``size = (H, W)`` (area filter when shrinking, else bilinear)."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` RGB uint8 (alpha dropped, grey expanded)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no image file at {str(path)!r}")
        raise ValueError(f"OpenCV cannot decode {str(path)!r} as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_labels(path: str | os.PathLike) -> list[str]:
    """Class labels, one per line (line i = class i)."""
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ValueError(f"cannot read labels file {str(path)!r}: {exc}") from exc
