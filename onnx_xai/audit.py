"""The work behind ``onnx-xai explain / audit / demo``: inputs, per-input explanation, resumable runs.

Every file goes through a temp file and ``os.replace``; an audit input is complete once its
marker ``done.json`` (written last) exists, so a re-run skips it and a killed run leaves at
most stale ``.*.tmp`` files, which the next run removes.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing
import os
import re
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
from .scores import activation
from .visualize import save_explanation
from .visualize._io import atomic_write_bytes, encode_png
from .visualize.colors import apply_colormap, normalize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MARKER = "done.json"


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
    return ImageSpec(**kw)


# ---------------------------------------------------------------------- inputs
@dataclass
class Sample:
    """One loaded input: the model input ``x`` ``(1, C, *spatial)`` and a picture of it."""

    path: Path
    x: np.ndarray
    display: np.ndarray  # (H, W, 3) uint8 for images, (*spatial) float for arrays


def collect_inputs(paths: list[str]) -> list[Path]:
    """Files named, and the images / ``.npy`` files inside folders named (recursively, sorted);
    ValueError when that finds none."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                            and f.suffix.lower() in IMAGE_SUFFIXES + (".npy",))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no input file or folder at {str(p)!r}")
    if not files:
        raise ValueError(f"no images or .npy files in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(files))


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


def volume_picture(volume: np.ndarray, map: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """Slices along the last axis of ``(H, W, D)`` as a grid, the map (globally normalised) over them."""
    vol = _rgb(volume.reshape(volume.shape[0], -1)).reshape(*volume.shape, 3)
    heat = None if map is None else apply_colormap(normalize(map.reshape(map.shape[0], -1)), "jet",
                                                   normalize_map=False).reshape(*map.shape, 3)
    frames = []
    for d in _volume_slices(volume.shape[-1]):
        f = vol[:, :, d].astype(np.float32)
        if heat is not None:
            f = (1 - alpha) * f + alpha * heat[:, :, d]
        frames.append(cv2.resize(np.round(f).astype(np.uint8), (96, 96), interpolation=cv2.INTER_NEAREST))
    return _tile(frames)


def input_picture(sample: Sample) -> np.ndarray:
    """What the report shows for the input."""
    return volume_picture(sample.display) if sample.display.ndim == 3 and sample.display.dtype != np.uint8 \
        else _rgb(sample.display)


def save_map(stem: Path, sample: Sample, smap: np.ndarray, meta: dict) -> dict[str, str]:
    """Overlay PNG + raw ``.npy`` + JSON for a 2D map (``save_explanation``) or a 3D one (slice grid)."""
    if smap.ndim == 2:
        paths = save_explanation(stem, sample.display, smap, meta)
        return {k: p.name for k, p in paths.items()}
    buf = io.BytesIO()
    np.save(buf, smap, allow_pickle=False)
    record = dict(meta, map={"shape": list(smap.shape), "dtype": str(smap.dtype),
                             "min": float(smap.min()), "max": float(smap.max())})
    names = {k: f"{stem.name}.{k}" for k in ("png", "npy", "json")}
    record["files"] = {k: names[k] for k in ("png", "npy")}
    png = encode_png(volume_picture(sample.display, smap))
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
    atomic_write_bytes(path, json.dumps(data, indent=2, default=_plain).encode())


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
        self.activate = activation(True)

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
        atomic_write_bytes(picture, encode_png(input_picture(sample)))
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
        out["files"] = save_map(stem, sample, smap, meta)
        return out


# ---------------------------------------------------------------------- audit
def clean_temp_files(folder: Path) -> int:
    """Remove temp files an interrupted run left (``.NAME.PID.HEX.tmp``) → how many."""
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


_WORKER: Explainer | None = None


def _init_worker(config: Config) -> None:
    global _WORKER
    _WORKER = Explainer(config)


def _audit_one(path: str, dest: str, signature: str) -> dict:
    """Explain one input into ``dest``, then write its marker; errors become a record."""
    dest_path = Path(dest)
    dest_path.mkdir(parents=True, exist_ok=True)
    try:
        record = _WORKER.explain(Path(path), dest_path)
    except Exception as exc:  # one bad input must not stop the audit
        record = {"input": path, "status": "error", "error": _one_line(exc)}
        if _WORKER.config.debug:
            record["traceback"] = traceback.format_exc()
        return record
    record["signature"] = signature
    write_json(dest_path / MARKER, record)  # last: the input is complete
    return record


def _one_line(exc: BaseException) -> str:
    """The first line of an error; its type too unless it is one of the usual user errors."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    usual = isinstance(exc, (ValueError, FileNotFoundError, OnnxXaiError)) and text
    return text if usual else f"{type(exc).__name__}: {text}".rstrip(": ")


def run_audit(config: Config, files: list[Path], out: Path, *, workers: int = 1, resume: bool = True,
              progress: bool = True, on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Explain ``files`` into ``out/inputs/<key>/``; skip inputs whose marker matches → records in order."""
    out.mkdir(parents=True, exist_ok=True)
    clean_temp_files(out)
    signature = config.signature()
    keys = input_keys(files)
    records: dict[int, dict] = {}
    todo = []
    for i, (f, key) in enumerate(zip(files, keys)):
        marker = out / "inputs" / key / MARKER
        if resume and marker.is_file():
            try:
                old = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("signature") == signature and old.get("input") == str(f):
                records[i] = dict(old, cached=True)
                continue
        todo.append(i)
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
                                          initializer=_init_worker, initargs=(config,))
            try:
                futures = {pool.submit(_audit_one, str(files[i]), str(out / "inputs" / keys[i]), signature): i
                           for i in todo}
                for fut in cf.as_completed(futures):
                    done(futures[fut], fut.result())
            finally:  # on Ctrl-C, do not wait for the queued inputs
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    for i, rec in records.items():
        rec["key"], rec["dir"] = keys[i], f"inputs/{keys[i]}"
    return [records[i] for i in sorted(records)]
