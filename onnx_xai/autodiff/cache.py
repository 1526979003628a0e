"""Disk cache of built gradient models, shared between processes.

Files live in ``$ONNX_XAI_CACHE`` or the user cache directory (``$XDG_CACHE_HOME/onnx_xai``,
``~/.cache/onnx_xai``; ``%LOCALAPPDATA%`` on Windows). An entry is two files:

- ``grad-<key>.onnx``: the gradient model; its metadata also names the key it was built for;
- ``grad-<key>.json``: ``{"key", "sha256", "size", "created"}`` of the ``.onnx`` bytes.

``load`` checks both (size, checksum, key in the sidecar and in the model) and treats any
mismatch as a miss: the bad entry is removed with a logged warning and the caller rebuilds.
A write goes to a temporary ``.grad-<pid>@<host>-*.tmp`` in the same directory and is renamed
into place (atomic), so concurrent builders never see a half-written model; temporary files
left by a killed writer are removed later (older than an hour, or at once when their writer's
process is gone on this host).

The total size is capped (``$ONNX_XAI_CACHE_SIZE``: bytes or ``"500MB"``, ``"2GB"``, ``"1.5GiB"``;
default 2 GB, ``0`` turns the disk cache off): after a store the least recently used entries
are evicted (a load touches its entry's times). A cache directory that cannot be written is
silently skipped.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

FORMAT = 7  # bump when the way gradient models are built changes
DEFAULT_SIZE = 2 * 10**9  # bytes; "2GB"
STALE_SECONDS = 3600.0  # a temporary file this old is abandoned, whatever its writer
DEAD_WRITER_SECONDS = 60.0  # ... and one this old whose writer's process is gone (this host)
KEY_PROP = "onnx_xai.cache_key"

logger = logging.getLogger(__name__)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_TMP = re.compile(r"^\.grad-(\d+)@([0-9a-f]{8})-.*\.tmp$")


def cache_dir() -> Path:
    """The directory holding cached gradient models."""
    if os.environ.get("ONNX_XAI_CACHE"):
        return Path(os.environ["ONNX_XAI_CACHE"])
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "onnx_xai" / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnx_xai"


def parse_size(text: str | int) -> int:
    """Bytes from ``1000000``, ``"500MB"``, ``"2GB"``, ``"1.5GiB"`` (kB/MB/GB/TB are powers of
    1000, KiB/MiB/GiB/TiB of 1024); ``ValueError`` otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"cache size must be bytes or a number with a unit such as "
                             f"'500MB', '2GB', '1.5GiB', got {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    if value < 0:
        raise ValueError(f"cache size must not be negative, got {text!r}")
    return int(value * _UNITS[unit])


def size_cap() -> int:
    """The cap in bytes: ``$ONNX_XAI_CACHE_SIZE`` or 2 GB (an unreadable value: logged, 2 GB)."""
    text = os.environ.get("ONNX_XAI_CACHE_SIZE", "").strip()
    if not text:
        return DEFAULT_SIZE
    try:
        return parse_size(text)
    except ValueError as exc:
        logger.warning("ONNX_XAI_CACHE_SIZE ignored (%s); using the default of 2GB", exc)
        return DEFAULT_SIZE


def format_size(n: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (powers of 1000, as ``parse_size``'s MB/GB)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def key(**parts) -> str:
    """A hex digest of ``parts`` (model digest, backend, wrt, target, shapes, versions)."""
    import onnx_ad
    import onnxruntime

    parts = dict(parts, format=FORMAT, onnx_ad=onnx_ad.__version__, onnx=onnx.__version__,
                 ort=onnxruntime.__version__)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _paths(digest: str, directory: Path | None = None) -> tuple[Path, Path]:
    directory = cache_dir() if directory is None else directory
    return directory / f"grad-{digest}.onnx", directory / f"grad-{digest}.json"


def _unlink(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def remove(digest: str) -> None:
    """Delete the entry for ``digest`` (both files; missing files and read-only caches are fine)."""
    _unlink(*_paths(digest))


def load(digest: str) -> onnx.ModelProto | None:
    """The cached model for ``digest``, or None: missing, unreadable, or failing its checks
    (size, sha256 and key in the sidecar, key in the model); a failing entry is removed with a
    logged warning. A hit touches the entry's times (least recently used goes first)."""
    path, side = _paths(digest)
    try:
        data = path.read_bytes()
    except OSError:  # missing or vanished: a plain miss
        clean_stale()
        return None
    why = None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        meta, why = None, "its checksum file is missing or unreadable"
    if meta is not None:
        if not isinstance(meta, dict) or meta.get("key") != digest:
            why = f"it was stored for key {meta.get('key') if isinstance(meta, dict) else None!r}"
        elif meta.get("size") != len(data) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            why = "its bytes do not match the stored sha256 (changed or corrupt)"
    proto = None
    if why is None:
        try:
            proto = onnx.load_from_string(data)
        except Exception:  # noqa: BLE001 - any parse failure is a corrupt entry
            why = "it is not a readable ONNX model"
    if why is None:
        stored = next((p.value for p in proto.metadata_props if p.key == KEY_PROP), None)
        if stored != digest:
            why = f"the model inside was built for key {stored!r}"
    if why is not None:
        logger.warning("gradient cache: ignoring and removing %s: %s; rebuilding", path, why)
        remove(digest)
        return None
    with contextlib.suppress(OSError):  # LRU: a hit is a use
        os.utime(path)
        os.utime(side)
    return proto


def store(digest: str, proto: onnx.ModelProto) -> None:
    """Write ``proto`` under ``digest`` atomically (it gains a metadata entry naming the key),
    with its checksum sidecar; then evict least recently used entries beyond ``size_cap()``.
    A read-only cache (or a cap of 0, or a model larger than the cap) is silently skipped."""
    cap = size_cap()
    directory = cache_dir()
    props = {p.key: p for p in proto.metadata_props}
    if KEY_PROP in props:
        props[KEY_PROP].value = digest
    else:
        proto.metadata_props.add(key=KEY_PROP, value=digest)
    data = proto.SerializeToString()
    if len(data) > cap:
        logger.info("gradient cache: not storing a %s model over the %s cap (ONNX_XAI_CACHE_SIZE)",
                    format_size(len(data)), format_size(cap))
        return
    path, side = _paths(digest, directory)
    sidecar = json.dumps({"key": digest, "sha256": hashlib.sha256(data).hexdigest(),
                          "size": len(data), "created": time.time()}).encode()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        clean_stale(directory)
        # the model first, then its sidecar: a reader between the two renames sees a mismatch,
        # which is a miss (it rebuilds), never a wrong model
        for target, payload in ((path, data), (side, sidecar)):
            fd, tmp = tempfile.mkstemp(prefix=f".grad-{os.getpid()}@{_host()}-", suffix=".tmp",
                                       dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, target)
            except BaseException:
                _unlink(Path(tmp))
                raise
    except OSError:
        return
    evict(cap, keep=digest, directory=directory)


@dataclass(frozen=True)
class Entry:
    key: str
    size: int      # bytes of the model and its sidecar
    used: float    # last store or load (mtime), seconds since the epoch
    paths: tuple   # the files on disk


def entries(directory: Path | None = None) -> list[Entry]:
    """The entries on disk, least recently used first (a sidecar without its model counts)."""
    directory = cache_dir() if directory is None else directory
    found: dict[str, list] = {}
    try:
        listing = list(os.scandir(directory))
    except OSError:
        return []
    for item in listing:
        m = re.fullmatch(r"grad-([0-9a-f]+)\.(onnx|json)", item.name)
        if m is None:
            continue
        try:
            st = item.stat()
        except OSError:  # evicted meanwhile
            continue
        e = found.setdefault(m.group(1), [0, 0.0, []])
        e[0] += st.st_size
        if m.group(2) == "onnx" or not e[1]:
            e[1] = st.st_mtime
        e[2].append(Path(item.path))
    out = [Entry(k, size, used, tuple(sorted(paths))) for k, (size, used, paths) in found.items()]
    return sorted(out, key=lambda e: (e.used, e.key))


def evict(cap: int | None = None, *, keep: str | None = None,
          directory: Path | None = None) -> list[str]:
    """Remove least recently used entries until the total is within ``cap`` (default
    ``size_cap()``), never ``keep``; the removed keys."""
    cap = size_cap() if cap is None else cap
    listed = entries(directory)
    total = sum(e.size for e in listed)
    removed = []
    for e in listed:
        if total <= cap:
            break
        if e.key == keep:
            continue
        _unlink(*sorted(e.paths, key=lambda p: p.suffix != ".onnx"))  # model first
        total -= e.size
        removed.append(e.key)
    return removed


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def temp_files(directory: Path | None = None) -> list[Path]:
    """Temporary files of writers (running or killed)."""
    directory = cache_dir() if directory is None else directory
    try:
        return sorted(p for p in directory.glob(".grad-*.tmp") if p.is_file())
    except OSError:
        return []


def clean_stale(directory: Path | None = None, *, now: float | None = None) -> list[Path]:
    """Remove abandoned temporary files: older than ``STALE_SECONDS``, or older than
    ``DEAD_WRITER_SECONDS`` with their writer's process gone (same host); the removed paths.
    Also sidecars whose model is gone, once they are as old."""
    directory = cache_dir() if directory is None else directory
    now = time.time() if now is None else now
    host, removed = _host(), []
    candidates = temp_files(directory)
    with contextlib.suppress(OSError):
        candidates += [p for p in directory.glob("grad-*.json")
                       if not p.with_suffix(".onnx").exists()]
    for p in candidates:
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        m = _TMP.match(p.name)
        dead = (m is not None and m.group(2) == host and age > DEAD_WRITER_SECONDS
                and not _alive(int(m.group(1))))
        if age > STALE_SECONDS or dead:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def info() -> dict:
    """``{"directory", "entries", "size", "cap", "temp_files"}`` (sizes in bytes)."""
    listed = entries()
    return {"directory": str(cache_dir()), "entries": len(listed),
            "size": sum(e.size for e in listed), "cap": size_cap(),
            "temp_files": len(temp_files())}


def clear() -> dict:
    """Remove every entry and abandoned temporary file: ``{"entries", "size", "failed"}``
    (entries and bytes removed, entries that could not be). A running writer's temporary
    file is left to it."""
    removed = size = failed = 0
    for e in entries():
        ok = True
        for p in sorted(e.paths, key=lambda p: p.suffix != ".onnx"):  # model first
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        removed, size, failed = removed + ok, size + (e.size if ok else 0), failed + (not ok)
    clean_stale()
    return {"entries": removed, "size": size, "failed": failed}
