"""The work behind ``onnx-xai explain / audit / demo``: inputs, per-input explanation, resumable runs.

Every file goes through a temp file and ``os.replace``; an audit input is complete once its
marker ``done.json`` (written last) exists and names the input's path and content (size +
SHA-256), so a re-run skips it only while the file is unchanged, and a killed run leaves at
most stale ``.*.tmp`` files, which the next run removes. One run at a time writes an output
folder (``OutputLock``); worker processes die with the process that started them.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import errno
import hashlib
import io
import json
import multiprocessing
import os
import re
import secrets
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from tqdm.auto import tqdm

from . import __version__, cli_methods, metrics
from .errors import OnnxXaiError
from .preprocess import ImageSpec, load_labels, read_image
from .runtime import Model
from . import targets
from .visualize import save_explanation
from .visualize._io import atomic_write_bytes, encode_png
from .visualize.colorbars import add_colorbar
from .visualize.colors import color_scale, normalize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MARKER = "done.json"
LOCK = ".onnx-xai.lock"


# ---------------------------------------------------------------------- output paths
class OutputError(ValueError):
    """An output file or folder cannot be written (the CLI prints it as one line, exit 2)."""


class OutputBusyError(OutputError):
    """Another run holds the output folder's lock."""


def cannot_write(path: str | os.PathLike, why: BaseException | str) -> OutputError:
    """``OutputError("cannot write 'PATH': REASON")`` from an OSError (its strerror) or a text."""
    if isinstance(why, OSError):
        why = why.strerror or str(why)
    return OutputError(f"cannot write {str(path)!r}: {why}")


@contextlib.contextmanager
def writing(path: str | os.PathLike):
    """Turn an OSError raised while writing in the folder ``path`` into an ``OutputError``; so is
    the ValueError of ``atomic_write_bytes`` once that folder is gone."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise cannot_write(path, exc) from None
    except ValueError:
        if not Path(path).is_dir():
            raise cannot_write(path, "the folder no longer exists") from None
        raise


def write_file(path: str | os.PathLike, data: bytes) -> Path:
    """``atomic_write_bytes`` whose OS errors are ``OutputError`` (one line, no traceback)."""
    with writing(Path(path).parent):
        return atomic_write_bytes(path, data)


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a temp file in ``folder``: fails (naming ``target``) like the real writes would."""
    probe = folder / f".onnx-xai-probe.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise cannot_write(target, exc) from None


def _file_above(path: Path) -> Path | None:
    """The first of ``path``'s ancestors that exists and is not a folder."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def prepare_output_folder(out: str | os.PathLike) -> Path:
    """Create ``out`` (and its parents) and check that files can be written in it → the path;
    ``OutputError`` (a ValueError) with one line saying why not."""
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise cannot_write(out, "it is a file, not a folder")
        above = _file_above(out)
        if above is not None:
            raise cannot_write(out, f"{str(above)!r} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(out, exc) from None
    _probe(out, out)
    return out


def check_output_file(path: str | os.PathLike) -> Path:
    """Check that the file ``path`` can be written (its folder exists and is writable; it is not
    a folder) before the work that makes it → the path; ``OutputError`` otherwise."""
    path = Path(path)
    folder = path.parent
    try:
        if path.is_dir():
            raise cannot_write(path, "it is a folder; give a file name")
        above = _file_above(path)
        if above is not None:
            raise cannot_write(path, f"{str(above)!r} is a file, not a folder")
        if not folder.is_dir():
            raise cannot_write(path, f"the folder {str(folder)!r} does not exist; create it first")
    except OSError as exc:
        raise cannot_write(path, exc) from None
    _probe(folder, path)
    return path


class OutputLock:
    """Exclusive lock on an output folder for one run. Where ``fcntl`` exists: ``flock`` on the
    folder itself, nothing written, dropped by the OS when the process ends however it ends.
    Elsewhere (Windows) or where the file system refuses ``flock``: a lock file
    ``FOLDER/.onnx-xai.lock`` created with O_EXCL, holding the owner's pid, removed at the end and
    taken over once that pid no longer runs. A second run gets ``OutputBusyError``. Use as a
    context manager."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        self._lock_file: Path | None = None

    def _busy(self, pid: int | str | None) -> OutputBusyError:
        who = f"another onnx-xai run (pid {pid})" if pid else "another onnx-xai run"
        return OutputBusyError(f"{who} is writing {str(self.folder)!r}; wait for it to finish "
                               f"or choose another --out")

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:
            fcntl = None
        if fcntl is not None:
            try:
                fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError as exc:
                raise cannot_write(self.folder, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._busy(_flock_holder(self.folder)) from None
                # e.g. ENOLCK / EOPNOTSUPP / EBADF on some network file systems: the lock file
            else:
                self._fd = fd
                return self
        self._lock_file = self._create_lock_file()
        return self

    def _create_lock_file(self) -> Path:
        path = self.folder / LOCK
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    pid, age = path.read_text().strip(), time.time() - path.stat().st_mtime
                except OSError:
                    pid, age = "", 0.0
                if (pid.isdigit() and _alive(int(pid))) or (not pid.isdigit() and age < 10):
                    raise self._busy(pid) from None
                path.unlink(missing_ok=True)  # its owner died: stale
                continue
            except OSError as exc:
                raise cannot_write(path, exc) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return path
        raise self._busy(None)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None
        if self._lock_file is not None:
            self._lock_file.unlink(missing_ok=True)
            self._lock_file = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock_holder(folder: Path) -> int | None:
    """The pid holding a ``flock`` on ``folder``, from /proc/locks (Linux), or None."""
    try:
        st = os.stat(folder)
        node = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == node:
                    return int(fields[4])
    except (OSError, ValueError, AttributeError):
        pass
    return None


def _alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill there terminates the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


# ---------------------------------------------------------------------- configuration
@dataclass
class Config:
    """Everything a (worker) process needs to explain inputs; plain data, picklable."""

    model: str
    methods: list[str]
    options: dict = field(default_factory=dict)
    target: str = "auto"
    device: str = "auto"
    threads: int | None = None
    prep: dict = field(default_factory=dict)  # --size/--mean/--std/--layout/--scale/--labels
    metric_steps: int = 0  # 0: no deletion / insertion AUC
    top_k: int = 5
    verbose: bool = False
    debug: bool = False

    def signature(self) -> str:
        """Hash of what decides the outputs (the model's bytes included): resume only on a match."""
        digest = hashlib.sha256(Path(self.model).read_bytes()).hexdigest()
        keep = {k: v for k, v in asdict(self).items() if k not in ("verbose", "debug", "threads", "device", "model")}
        text = json.dumps([digest, __version__, keep], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_sidecar(model_path: str | os.PathLike) -> dict:
    """The model's JSON sidecar (same stem) as a dict, or {}."""
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the sidecar {str(path)!r}: {exc}") from exc


def read_labels(model_path: str | os.PathLike, sidecar: dict, labels_file: str | None) -> list[str] | None:
    """Class names from ``--labels``, the sidecar's ``labels`` file or its ``classes`` list."""
    if labels_file:
        return load_labels(labels_file)
    value = sidecar.get("labels", sidecar.get("classes"))
    if isinstance(value, str):
        return load_labels(Path(model_path).parent / value)
    return [str(v) for v in value] if isinstance(value, list) else None


def image_spec(model: Model, sidecar: dict, prep: dict) -> ImageSpec:
    """Image preprocessing: the sidecar, then the model's input shape, then the flags."""
    kw: dict[str, Any] = {k: sidecar[k] for k in ("layout", "color", "scale") if k in sidecar}
    for key in ("mean", "std"):
        if key in sidecar:
            kw[key] = tuple(float(v) for v in np.atleast_1d(sidecar[key]))
    size = sidecar.get("size")
    kw["size"] = tuple(size) if isinstance(size, list) and len(size) == 2 else None
    kw.update({k: v for k, v in prep.items() if k in ("size", "mean", "std", "layout", "scale") and v is not None})
    shape = model.input.shape
    if len(shape) == 4:
        nchw = kw.get("layout", "nchw") == "nchw"
        hw, channels = (shape[2:4], shape[1]) if nchw else (shape[1:3], shape[3])
        if kw["size"] is None and all(isinstance(d, int) for d in hw):
            kw["size"] = tuple(hw)
        if channels == 1 and "color" not in kw:
            kw["color"] = "gray"
        for key in ("mean", "std"):
            n = len(kw.get(key) or ())
            if isinstance(channels, int) and n not in (0, 1, channels):
                source = "--" + key if prep.get(key) is not None else f"the sidecar's {key!r}"
                raise ValueError(f"{source} has {n} values but the model's input has {channels} "
                                 f"channels: give {channels} values or one for all")
    return ImageSpec(**kw)


# ---------------------------------------------------------------------- inputs
@dataclass
class Sample:
    """One loaded input: the model input ``x`` ``(1, C, *spatial)`` and a picture of it."""

    path: Path
    x: np.ndarray
    display: np.ndarray  # (H, W, 3) uint8 for images, (*spatial) float for arrays


def collect_inputs(paths: list[str], exclude: str | os.PathLike | None = None,
                   skipped: list[Path] | None = None) -> list[Path]:
    """Files named, and the images / ``.npy`` files inside folders named (recursively, sorted);
    ValueError when that finds none.

    Files that onnx-xai wrote are not inputs, so a run writing into its input folder never
    explains its own overlays and maps: inside folders named, those of ``exclude`` (the output
    folder: all of it when it lies inside an input folder; when it *is* one, what ``audit``
    (``inputs/<key>/``) and ``explain`` (``<key>_<method>.png|.npy``) write there) and the
    ``inputs/<key>/`` pictures and maps of any audit folder (one with ``inputs/*/done.json``) are
    skipped, and appended to ``skipped``. Files named explicitly are always kept.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found, audits = [], set()
            for f in p.rglob("*"):
                if f.name == MARKER and f.parent.parent.name == "inputs":
                    audits.add(f.parent.parent.parent)
                elif not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES + (".npy",) and f.is_file():
                    found.append(f)
            found.sort()
            drop = _output_files(found, p, None if exclude is None else Path(exclude), audits)
            if drop:
                found = [f for f in found if f not in drop]
                if skipped is not None:
                    skipped += [f for f in sorted(drop) if f not in skipped]
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no input file or folder at {str(p)!r}")
    if not files:
        raise ValueError(f"no images or .npy files in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(files))


def _output_names() -> tuple[re.Pattern, re.Pattern]:
    methods = "|".join(re.escape(m) for m in sorted([*cli_methods.METHODS, "embedded"], key=len, reverse=True))
    suffixes = "|".join(s.lstrip(".") for s in IMAGE_SUFFIXES + (".npy",))
    audit = re.compile(rf"^(input|{methods})\.(png|npy)$")
    explain = re.compile(rf"_({suffixes})(_\d+)?_(input|{methods})\.(png|npy)$", re.IGNORECASE)
    return audit, explain


def _under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def _output_files(found: list[Path], folder: Path, out: Path | None, audits: set[Path]) -> set[Path]:
    """Those of ``found`` (files under ``folder``) that onnx-xai wrote: see ``collect_inputs``."""
    top = os.path.realpath(folder)
    root = None if out is None else os.path.realpath(out)
    if root is not None and not (root == top or _under(root, top)):
        root = None  # the output folder is not inside this input folder
    audit_roots = [os.path.realpath(a) for a in audits] + ([root] if root is not None else [])
    if root is None and not audit_roots:
        return set()
    audit, explain = _output_names()
    drop = set()
    for f in found:
        real = os.path.realpath(f)
        if root is not None and _under(real, root):
            if root != top:  # the output folder lies inside the input folder: all of it
                drop.add(f)
                continue
            parts = Path(os.path.relpath(real, root)).parts
            if len(parts) == 1 and explain.search(parts[0]):
                drop.add(f)
                continue
        for a in audit_roots:
            if _under(real, a):
                parts = Path(os.path.relpath(real, a)).parts
                if len(parts) == 3 and parts[0] == "inputs" and audit.match(parts[2]):
                    drop.add(f)
                    break
    return drop


def input_keys(files: list[Path]) -> list[str]:
    """A unique, file-name-safe name per input (``cat.png`` → ``cat_png``)."""
    keys, seen = [], set()
    for f in files:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f.name).replace(".", "_")
        key, n = base, 1
        while key in seen:
            n += 1
            key = f"{base}_{n}"
        seen.add(key)
        keys.append(key)
    return keys


def load_sample(path: Path, model: Model, spec: ImageSpec) -> Sample:
    """Read an image (preprocessed by ``spec``) or a ``.npy`` array (one sample, batch optional)."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            raise ValueError(f"cannot read {path.name} as a .npy array: {exc}") from None
        want = model.input.shape
        if arr.ndim == len(want) - 1:
            arr = arr[None]
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
    x = spec.to_input(image)
    try:
        x = model.check_input(x)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}; set the preprocessing with --size/--layout") from None
    if spec.layout == "nhwc":
        raise ValueError("methods explain channel-first inputs; an NHWC model cannot be explained yet")
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


# ---------------------------------------------------------------------- pictures
def _rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    return np.repeat(np.round(255 * normalize(img))[..., None], 3, axis=2).astype(np.uint8)


def _volume_slices(depth: int, n: int = 16) -> np.ndarray:
    return np.unique(np.linspace(0, depth - 1, min(n, depth)).round().astype(int))


def _tile(frames: list[np.ndarray], per_row: int = 4, margin: int = 2) -> np.ndarray:
    h, w = frames[0].shape[:2]
    rows = -(-len(frames) // per_row)
    grid = np.full((rows * (h + margin) - margin, per_row * (w + margin) - margin, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, per_row)
        grid[r * (h + margin):r * (h + margin) + h, c * (w + margin):c * (w + margin) + w] = f
    return grid


def volume_picture(volume: np.ndarray, map: np.ndarray | None = None, alpha: float = 0.5, *,
                   signed: bool | str = "auto", percentile: float | None = None,
                   colorbar: bool = True) -> np.ndarray:
    """Slices along the last axis of ``(H, W, D)`` as a grid, the map over them on one colour
    scale for the whole volume (min-max ``jet``, or centred on 0 in ``rdbu_r`` for a map with
    both signs: see ``visualize.color_scale``), with its colour bar on the right."""
    vol = _rgb(volume.reshape(volume.shape[0], -1)).reshape(*volume.shape, 3)
    scale = None if map is None else color_scale(map, signed=signed, percentile=percentile)
    heat = None if map is None else scale.colors(map.reshape(map.shape[0], -1)).reshape(*map.shape, 3)
    frames = []
    for d in _volume_slices(volume.shape[-1]):
        f = vol[:, :, d].astype(np.float32)
        if heat is not None:
            f = (1 - alpha) * f + alpha * heat[:, :, d]
        frames.append(cv2.resize(np.round(f).astype(np.uint8), (96, 96), interpolation=cv2.INTER_NEAREST))
    grid = _tile(frames)
    return add_colorbar(grid, scale) if scale is not None and colorbar else grid


def input_picture(sample: Sample) -> np.ndarray:
    """What the report shows for the input."""
    return volume_picture(sample.display) if sample.display.ndim == 3 and sample.display.dtype != np.uint8 \
        else _rgb(sample.display)


def save_map(stem: Path, sample: Sample, smap: np.ndarray, meta: dict,
             percentile: float | None = None) -> dict[str, str]:
    """Overlay PNG + raw ``.npy`` + JSON for a 2D map (``save_explanation``) or a 3D one (slice
    grid); ``percentile``: colours clipped at that percentile of ``|map|`` (gradient maps)."""
    if smap.ndim == 2:
        paths = save_explanation(stem, sample.display, smap, meta, percentile=percentile)
        return {k: p.name for k, p in paths.items()}
    buf = io.BytesIO()
    np.save(buf, smap, allow_pickle=False)
    record = dict(meta, map={"shape": list(smap.shape), "dtype": str(smap.dtype),
                             "min": float(smap.min()), "max": float(smap.max())})
    names = {k: f"{stem.name}.{k}" for k in ("png", "npy", "json")}
    record["files"] = {k: names[k] for k in ("png", "npy")}
    png = encode_png(volume_picture(sample.display, smap, percentile=percentile))
    atomic_write_bytes(stem.with_suffix(".png"), png)
    atomic_write_bytes(stem.with_suffix(".npy"), buf.getvalue())
    atomic_write_bytes(stem.with_suffix(".json"), json.dumps(record, indent=2, default=_plain).encode())
    return names


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if callable(obj):
        return getattr(obj, "__name__", type(obj).__name__)
    return str(obj)


def write_json(path: Path, data: Any) -> None:
    write_file(path, json.dumps(data, indent=2, default=_plain).encode())


# ---------------------------------------------------------------------- explaining
class Explainer:
    """One loaded model with its preprocessing, explaining inputs by a ``Config``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = Model(config.model, device=config.device, threads=config.threads, verbose=config.verbose)
        self.sidecar = read_sidecar(config.model)
        self.labels = read_labels(config.model, self.sidecar, config.prep.get("labels"))
        self.spec = image_spec(self.model, self.sidecar, config.prep)
        self.embedded = "saliency" in self.model.output_names
        self.activate = targets.class_scorer(True)

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels and index < len(self.labels) else str(index)

    def target(self, probs: np.ndarray) -> int:
        t = self.config.target
        if t in (None, "auto"):
            return int(np.argmax(probs))
        if isinstance(t, str) and not t.lstrip("-").isdigit():
            if not self.labels or t not in self.labels:
                raise ValueError(f"--target {t!r} is neither a class index nor a label of this model")
            return self.labels.index(t)
        index = int(t)
        if not 0 <= index < len(probs):
            raise ValueError(f"--target {index} is out of range: the model has {len(probs)} classes")
        return index

    def explain(self, path: Path, dest: Path, prefix: str = "") -> dict:
        """Predict, explain with every method and write the files → the input's record."""
        t0 = time.perf_counter()
        sample = load_sample(path, self.model, self.spec)
        feeds = {"class_idx": np.array([-1], np.int64)} if "class_idx" in self.model.input_names else None
        raw = self.model.predict(sample.x, extra_inputs=feeds, verbose=False)
        probs = self.activate(raw.reshape(1, -1))[0]
        target = self.target(probs)
        order = np.argsort(-probs)[:self.config.top_k]
        record: dict[str, Any] = {
            "input": str(path), "status": "ok", "shape": list(sample.x.shape),
            "prediction": [{"index": int(i), "label": self.label(int(i)), "score": float(probs[i])} for i in order],
            "target": {"index": target, "label": self.label(target), "score": float(probs[target])},
            "timings": {"predict_s": round(time.perf_counter() - t0, 4)}, "methods": {}}
        picture = dest / f"{prefix}input.png"
        write_file(picture, encode_png(input_picture(sample)))
        record["picture"] = picture.name
        for name in self.config.methods:
            record["methods"][name] = self._method(name, sample, target, dest / f"{prefix}{name}", record)
        record["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
        return record

    def _method(self, name: str, sample: Sample, target: int, stem: Path, record: dict) -> dict:
        t0 = time.perf_counter()
        if name == "embedded":
            smap, params = cli_methods.run_embedded(self.model, sample.x, target), {}
        else:
            smap, params = cli_methods.run(name, self.model, sample.x, target, self.config.options,
                                           self.sidecar, verbose=self.config.verbose)
        out: dict[str, Any] = {"parameters": params, "timings": {"method_s": round(time.perf_counter() - t0, 4)}}
        if self.config.metric_steps:
            t1 = time.perf_counter()
            kw = dict(n_steps=self.config.metric_steps, verbose=False, batch_size=16)
            sal = smap[None, None]
            out["deletion_auc"] = float(metrics.deletion(self.model, sample.x, sal, target, **kw).auc[0])
            out["insertion_auc"] = float(metrics.insertion(self.model, sample.x, sal, target, **kw).auc[0])
            out["timings"]["metrics_s"] = round(time.perf_counter() - t1, 4)
        meta = {"input": record["input"], "model": self.config.model, "method": name,
                "prediction": record["prediction"], "target": record["target"], **out}
        with writing(stem.parent):
            gradient = name != "embedded" and cli_methods.get(name).kind == "gradient"
            out["files"] = save_map(stem, sample, smap, meta, percentile=99.0 if gradient else None)
        return out


# ---------------------------------------------------------------------- audit
def clean_temp_files(folder: Path) -> int:
    """Remove temp files an interrupted run left (``.NAME.PID.HEX.tmp``) → how many."""
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


_WORKER: Explainer | None = None


def _init_worker(config: Config, parent_pid: int | None = None) -> None:
    """Load the model in this process; in a worker process (``parent_pid`` given), also arrange
    to die with the parent, so that a killed ``onnx-xai audit`` leaves no worker computing."""
    global _WORKER
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    _WORKER = Explainer(config)


def _die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Linux: the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``).
    Everywhere: a daemon thread polls the parent (``os.getppid()`` changes when it dies; on
    Windows the parent's multiprocessing sentinel) and ends the process with ``os._exit``."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    windows = sys.platform == "win32"
    parent = multiprocessing.parent_process() if windows else None

    def orphaned() -> bool:
        if parent is not None:
            return not parent.is_alive()
        return os.getppid() != parent_pid

    if orphaned():  # the parent died before the watch was set
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if orphaned():
                os._exit(1)

    if windows and parent is None:
        return
    threading.Thread(target=watch, name="onnx-xai-parent-watch", daemon=True).start()


def fingerprint(path: Path) -> dict:
    """``{"size", "sha256"}`` of a file's bytes: what an audit's marker is keyed on."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _audit_one(path: str, dest: str, signature: str) -> dict:
    """Explain one input into ``dest``, then write its marker; errors become a record, but an
    output that cannot be written (``OutputError``) stops the audit."""
    dest_path = Path(dest)
    with writing(dest_path):
        dest_path.mkdir(parents=True, exist_ok=True)
    try:
        source = fingerprint(Path(path))
        record = _WORKER.explain(Path(path), dest_path)
    except OutputError:
        raise
    except Exception as exc:  # one bad input must not stop the audit
        record = {"input": path, "status": "error", "error": _one_line(exc)}
        if _WORKER.config.debug:
            record["traceback"] = traceback.format_exc()
        return record
    record["source"] = source
    record["signature"] = signature
    write_json(dest_path / MARKER, record)  # last: the input is complete
    return record


def _one_line(exc: BaseException) -> str:
    """The first line of an error; its type too unless it is one of the usual user errors."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    usual = isinstance(exc, (ValueError, FileNotFoundError, OnnxXaiError)) and text
    return text if usual else f"{type(exc).__name__}: {text}".rstrip(": ")


def _cached(marker: Path, path: Path, signature: str) -> dict | None:
    """The marker's record if it is for this input path, content (size + SHA-256) and settings."""
    try:
        old = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict) or not isinstance(old.get("source"), dict):
        return None
    source = old["source"]
    if old.get("signature") != signature or old.get("input") != str(path):
        return None
    try:
        if path.stat().st_size != source.get("size") or fingerprint(path) != source:
            return None
    except OSError:
        return None
    return old


# ---------------------------------------------------------------------- worker count
def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable``, within the cgroup's limit), or None."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            room = max(int(limit) - usage, 0)
            avail = room if avail is None else min(avail, room)
        break
    return avail


def worker_memory(model_path: str | os.PathLike) -> int:
    """Rough bytes one worker process needs: the interpreter and libraries, and the model's
    weights several times over (session copies, perturbed batches, gradient graphs)."""
    try:
        size = os.path.getsize(model_path)
    except OSError:
        size = 0
    return (256 << 20) + 8 * size


def worker_count(requested: int, n_todo: int, model_path: str | os.PathLike) -> tuple[int, str | None]:
    """``requested`` workers, capped by the inputs to do, ``2 × usable cores`` and the memory
    available → (count, the note saying why it was capped, or None)."""
    n, why = max(1, requested), []
    if n > max(n_todo, 1):
        n = max(n_todo, 1)
        why.append(f"{n_todo} input{'s' if n_todo != 1 else ''} to do")
    cores = usable_cores()
    if n > 2 * cores:
        n = 2 * cores
        why.append(f"{cores} usable core{'s' if cores != 1 else ''}")
    avail, need = available_memory(), worker_memory(model_path)
    if avail is not None and n > max(1, int(0.8 * avail) // need):
        n = max(1, int(0.8 * avail) // need)
        why.append(f"about {need / 2**20:.0f} MiB per worker, {avail / 2**30:.1f} GiB available")
    return n, (f"--workers {requested} capped to {n} ({'; '.join(why)})" if n < requested else None)


# ---------------------------------------------------------------------- audit
def run_audit(config: Config, files: list[Path], out: Path, *, workers: int = 1, resume: bool = True,
              progress: bool = True, on_record: Callable[[dict], None] | None = None,
              on_note: Callable[[str], None] | None = None, lock: bool = True) -> list[dict]:
    """Explain ``files`` into ``out/inputs/<key>/``; skip inputs whose marker matches → records in order.

    ``lock``: hold ``out``'s lock for the run (pass False when the caller holds it, e.g. across
    the report too); a folder another run writes raises ``OutputBusyError``. ``on_note`` gets
    one-line notes (``--workers`` capped). An output that cannot be written raises
    ``OutputError`` after the inputs in flight; what was done stays done for the next run.
    """
    out = prepare_output_folder(out)
    with OutputLock(out) if lock else contextlib.nullcontext():
        return _run_audit(config, files, out, workers, resume, progress, on_record, on_note)


def _run_audit(config: Config, files: list[Path], out: Path, workers: int, resume: bool, progress: bool,
               on_record: Callable[[dict], None] | None, on_note: Callable[[str], None] | None) -> list[dict]:
    with writing(out):
        clean_temp_files(out)
    signature = config.signature()
    keys = input_keys(files)
    records: dict[int, dict] = {}
    todo = []
    for i, (f, key) in enumerate(zip(files, keys)):
        old = _cached(out / "inputs" / key / MARKER, f, signature) if resume else None
        if old is not None:
            records[i] = dict(old, cached=True)
        else:
            todo.append(i)
    if todo and workers > 1:
        workers, note = worker_count(workers, len(todo), config.model)
        if note and on_note:
            on_note(note)
    bar = tqdm(total=len(files), initial=len(records), unit="input", desc="audit", disable=not progress)

    def done(i: int, record: dict) -> None:
        record["key"] = keys[i]
        records[i] = record
        bar.update(1)
        if on_record:
            on_record(record)

    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(config)
            for i in todo:
                done(i, _audit_one(str(files[i]), str(out / "inputs" / keys[i]), signature))
        else:
            pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_init_worker, initargs=(config, os.getpid()))
            try:
                futures = {pool.submit(_audit_one, str(files[i]), str(out / "inputs" / keys[i]), signature): i
                           for i in todo}
                for fut in cf.as_completed(futures):
                    done(futures[fut], fut.result())
            except cf.process.BrokenProcessPool:
                raise OnnxXaiError("a worker process died (killed, or out of memory?); what was done is kept: "
                                   "run the same command again, with fewer --workers, to resume") from None
            finally:  # on Ctrl-C or an unwritable output, do not wait for the queued inputs
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    for i, rec in records.items():
        rec["key"], rec["dir"] = keys[i], f"inputs/{keys[i]}"
    return [records[i] for i in sorted(records)]
