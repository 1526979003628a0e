"""Inputs: the model's JSON sidecar, image loading and preprocessing, samples read from files
(OpenCV, no torch).

A sidecar ``<model>.json`` next to ``<model>.onnx`` describes the input::

    {"size": [224, 224], "layout": "nchw", "color": "rgb", "scale": 0.00392156862745098,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "labels": "imagenet_labels.txt"}

``x = (resize(image) * scale - mean) / std`` in the channel order of ``color``. ``labels`` names a
text file beside the sidecar (one label per line); ``classes`` may list the labels instead.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from .runtime import Model

_LAYOUTS = ("nchw", "nhwc")
_COLORS = ("rgb", "bgr", "gray")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_SPEC_KEYS = ("size", "layout", "color", "scale", "mean", "std", "labels", "input_name")
OVERRIDES = ("size", "mean", "std", "layout", "scale", "labels")  # what from_sidecar's overrides may set


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """The JSON sidecar next to ``model_path`` (same stem, ``.json``) as a dict; {} without one.
    ``ValueError`` naming the file when it cannot be read."""
    path = Path(model_path).with_suffix(".json")
    return _read_json(path) if path.is_file() else {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the preprocessing sidecar {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"the preprocessing sidecar {str(path)!r} must hold a JSON object, "
                         f"not a {type(data).__name__}")
    return data


def sidecar_labels(sidecar: dict, folder: str | os.PathLike | None = None,
                   labels_file: str | os.PathLike | None = None) -> list[str] | None:
    """Class names: from ``labels_file``, else the sidecar's ``labels`` (a file name, relative to
    ``folder``) or its ``classes`` list; None without any."""
    if labels_file:
        return load_labels(labels_file)
    value = sidecar.get("labels", sidecar.get("classes"))
    if isinstance(value, str):
        return load_labels(Path(folder or ".") / value)
    return [str(v) for v in value] if isinstance(value, list) else None


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
    def from_sidecar(cls, sidecar: dict, folder: str | os.PathLike | None = None,
                     input_shape: tuple | None = None, overrides: dict | None = None) -> "ImageSpec":
        """The spec a sidecar (dict) describes, completed from the model's ``input_shape``
        (``(N, C, H, W)`` or ``(N, H, W, C)``: a fixed size, one channel → grey) and replaced
        by the non-None ``overrides`` (``--size``, ``--mean``, ... of the command line:
        ``OVERRIDES``; ``labels`` names a file). Labels files are read relative to ``folder``.
        A sidecar ``size`` that is not ``[H, W]`` (a volume's side) is no image size; it stays,
        with the keys this class does not know, in ``extra``."""
        overrides = {k: v for k, v in (overrides or {}).items() if k in OVERRIDES and v is not None}
        image_size = isinstance(sidecar.get("size"), (list, tuple)) and len(sidecar["size"]) == 2
        kw: dict[str, Any] = {k: sidecar[k] for k in _SPEC_KEYS
                              if k in sidecar and k != "labels" and (k != "size" or image_size)}
        kw["labels"] = sidecar_labels(sidecar, folder, overrides.pop("labels", None))
        kw.update(overrides)
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(v) for v in np.atleast_1d(kw[key]))
        if input_shape is not None and len(input_shape) == 4:
            nchw = kw.get("layout", "nchw") == "nchw"
            hw, channels = (input_shape[2:4], input_shape[1]) if nchw else (input_shape[1:3], input_shape[3])
            if kw.get("size") is None and all(isinstance(d, int) for d in hw):
                kw["size"] = tuple(hw)
            if channels == 1 and "color" not in kw:
                kw["color"] = "gray"
            for key in ("mean", "std"):
                n = len(kw.get(key) or ())
                if isinstance(channels, int) and n not in (0, 1, channels):
                    source = "--" + key if key in overrides else f"the sidecar's {key!r}"
                    raise ValueError(f"{source} has {n} values but the model's input has {channels} "
                                     f"channels: give {channels} values or one for all")
        return cls(**kw, extra={k: v for k, v in sidecar.items() if k not in kw and k != "labels"})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ImageSpec":
        """Read a sidecar file (see ``from_sidecar``)."""
        path = Path(path)
        return cls.from_sidecar(_read_json(path), path.parent)

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


# ---------------------------------------------------------------------- samples from files
@dataclass
class Sample:
    """One input read from a file: the model input ``x`` ``(1, C, *spatial)`` and a picture of
    it (``display``: ``(H, W, 3)`` uint8 for images and 3-channel 2D arrays, else the channel
    mean, float ``(*spatial)``)."""

    path: Path
    x: np.ndarray
    display: np.ndarray


def load_sample(path: str | os.PathLike, model: "Model", spec: ImageSpec) -> Sample:
    """Read an image (preprocessed by ``spec``) or a ``.npy`` array (one sample of the model's
    input, batch axis optional) → a ``Sample``; ``ValueError`` naming the file otherwise.

    ``spec.layout="nhwc"``: the images and arrays are channel-last and ``model`` is the
    channel-first view of a channel-last model (``onnx_xai.layout.channel_first_model``):
    the sample is moved to channel-first."""
    path = Path(path)
    first = (lambda a: np.moveaxis(a, -1, 1)) if spec.layout == "nhwc" else (lambda a: a)  # noqa: E731
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            raise ValueError(f"cannot read {path.name} as a .npy array: {exc}") from None
        want = model.input.shape
        if arr.ndim == len(want) - 1:
            arr = arr[None]
        if arr.ndim == len(want):
            arr = first(arr)
        if arr.ndim != len(want) or arr.shape[0] != 1:
            raise ValueError(f"{path.name}: array of shape {arr.shape} is not one sample of the model "
                             f"input {model.input.describe()}")
        if arr.dtype.kind in "iub" and model.input.dtype.kind == "f":
            arr = arr.astype(np.float32)
        try:
            x = model.check_input(arr)
        except ValueError as exc:
            raise ValueError(f"{path.name}: {exc}") from None
        return Sample(path, x, _array_display(x[0]))
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path.name}: not an image ({', '.join(IMAGE_SUFFIXES)}) or .npy file")
    image = read_image(path)
    x = first(spec.to_input(image))
    try:
        x = model.check_input(x)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}; set the preprocessing with --size/--layout") from None
    shown = image if spec.size is None else cv2.resize(image, (spec.size[1], spec.size[0]),
                                                       interpolation=cv2.INTER_AREA)
    return Sample(path, x, shown)


def _array_display(sample: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` → RGB uint8 for 3-channel 2D arrays, else the channel mean (float)."""
    if sample.ndim == 3 and sample.shape[0] == 3:
        img = np.moveaxis(sample, 0, -1).astype(np.float32)
        lo, hi = img.min(axis=(0, 1)), img.max(axis=(0, 1))
        return np.round(255 * (img - lo) / np.where(hi > lo, hi - lo, 1)).astype(np.uint8)
    return sample.mean(axis=0).astype(np.float32)
