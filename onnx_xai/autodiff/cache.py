"""Disk cache of built gradient models, shared between processes.

Files live in ``$ONNX_XAI_CACHE`` or the user cache directory (``$XDG_CACHE_HOME/onnx_xai``,
``~/.cache/onnx_xai``; ``%LOCALAPPDATA%`` on Windows). A build writes a temporary file in
the same directory and renames it into place (atomic), so concurrent builders never see a
half-written model.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import onnx

FORMAT = 5  # bump when the way gradient models are built changes


def cache_dir() -> Path:
    """The directory holding cached gradient models."""
    if os.environ.get("ONNX_XAI_CACHE"):
        return Path(os.environ["ONNX_XAI_CACHE"])
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "onnx_xai" / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnx_xai"


def key(**parts) -> str:
    """A hex digest of ``parts`` (model digest, backend, wrt, target, shapes, versions)."""
    import onnx_ad
    import onnxruntime

    parts = dict(parts, format=FORMAT, onnx_ad=onnx_ad.__version__, onnx=onnx.__version__,
                 ort=onnxruntime.__version__)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def load(digest: str) -> onnx.ModelProto | None:
    """The cached model for ``digest``, or None (missing or unreadable)."""
    path = cache_dir() / f"grad-{digest}.onnx"
    try:
        return onnx.load_from_string(path.read_bytes())
    except (OSError, Exception):  # a corrupt or vanished file is a cache miss
        return None


def store(digest: str, proto: onnx.ModelProto) -> None:
    """Write ``proto`` under ``digest`` atomically; a read-only cache is silently skipped."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".grad-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
            os.replace(tmp, directory / f"grad-{digest}.onnx")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return

