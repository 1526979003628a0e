"""Paths of the pretrained model and example photos that ship with onnx_xai.

They live in the repository's ``models/`` and ``examples/images/`` and are installed as the
package data ``onnx_xai.shipped`` / ``onnx_xai.shipped.images``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def _folder(package: str, repo_folder: str) -> Path:
    try:
        folder = Path(str(resources.files(package)))
        if folder.is_dir():
            return folder
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / repo_folder  # running from a source tree


def model_dir() -> Path:
    """Folder holding the shipped ``.onnx`` models, their sidecars and label files."""
    return _folder("onnx_xai.shipped", "models")


def efficientnet_lite0() -> Path:
    """The shipped ImageNet EfficientNet-Lite0 (``(B, 3, 224, 224)`` → ``(B, 1000)`` logits)."""
    path = model_dir() / "efficientnet_lite0.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"shipped model missing at {path}; reinstall onnx-xai from a full clone")
    return path


def example_images() -> list[Path]:
    """The example photos (``chelsea.png`` is the cat, ImageNet class 285)."""
    folder = _folder("onnx_xai.shipped.images", "examples/images")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
