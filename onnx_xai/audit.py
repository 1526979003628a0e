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
import dataclasses
import datetime
import errno
import hashlib
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
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from . import __version__, cli_methods, layout, metrics, targets
from .errors import OnnxXaiError, one_line
from .preprocess import IMAGE_SUFFIXES, ImageSpec, Sample, load_sample, read_sidecar
from .runtime import Model
from .visualize import atomic_write_bytes, encode_png, normalize, save_explanation, volume_picture

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


# ---------------------------------------------------------------------- inputs
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
    for p in map(local_path, paths):
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


def local_path(text: str | os.PathLike) -> Path:
    """An input as a path: ``file://`` URIs too; other URIs (``s3://``, ``gs://``, ...) → ValueError
    saying to mount the store (every node of a Ray cluster reads the same paths)."""
    text = os.fspath(text)
    if "://" in text and not os.path.exists(text):
        scheme = text.split("://", 1)[0]
        if scheme.lower() == "file":
            return Path(urllib.parse.unquote(urllib.parse.urlparse(text).path))
        raise ValueError(f"{text!r}: {scheme}:// URIs are not read directly; mount the store on every node "
                         f"(e.g. mountpoint-s3, gcsfuse, NFS) and give its path")
    return Path(text)


def _output_names() -> tuple[re.Pattern, re.Pattern]:
    methods = "|".join(re.escape(m) for m in sorted([*cli_methods.available(), "embedded"], key=len, reverse=True))
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


# ---------------------------------------------------------------------- pictures
def input_picture(sample: Sample) -> np.ndarray:
    """What the report shows for the input: the image, a grey picture of a 2D array, or a
    volume's slice grid."""
    display = sample.display
    if display.dtype == np.uint8:
        return display if display.ndim == 3 else np.repeat(display[..., None], 3, axis=2)
    if display.ndim == 3:
        return volume_picture(display)
    return np.repeat(np.round(255 * normalize(display))[..., None], 3, axis=2).astype(np.uint8)


def save_map(stem: Path, sample: Sample, smap: np.ndarray, meta: dict,
             percentile: float | None = None) -> dict[str, str]:
    """``save_explanation`` of a map over the sample's picture (2D, or a volume's slice grid)
    → file names; ``percentile``: colours clipped at that percentile of ``|map|``."""
    paths = save_explanation(stem, sample.display, smap, meta, percentile=percentile)
    return {k: p.name for k, p in paths.items()}


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if callable(obj):
        return getattr(obj, "__name__", type(obj).__name__)
    return str(obj)


def record_json(data: Any) -> str:
    """JSON text of a record (NumPy scalars and arrays as numbers and lists)."""
    return json.dumps(data, indent=2, default=_plain)


def write_json(path: Path, data: Any) -> None:
    write_file(path, record_json(data).encode())


# ---------------------------------------------------------------------- explaining
class Explainer:
    """One loaded model with its preprocessing, explaining inputs by a ``Config``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        model = Model(config.model, device=config.device, threads=config.threads, verbose=config.verbose,
                      layout=config.prep.get("layout") or "auto")
        self.sidecar = read_sidecar(config.model)
        prep = dict(config.prep, layout=layout.resolve(model, None))  # a channel-last model's images
        self.spec = ImageSpec.from_sidecar(self.sidecar, Path(config.model).parent, model.input.shape, prep)
        self.model = layout.channel_first_model(model)  # are folded by load_sample: methods see (1, C, H, W)
        self.extra = cli_methods.extra_arrays(self.model, config.options.get("extra_inputs"))
        self.labels = self.spec.labels
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

    def explain(self, path: Path, dest: Path, prefix: str = "", item: int | None = None) -> dict:
        """Predict, explain with every method and write the files → the input's record.
        ``item``: the input's index among those explained (picks its row of per-sample
        ``--extra`` inputs)."""
        t0 = time.perf_counter()
        sample = load_sample(path, self.model, self.spec)
        self.feeds = cli_methods.extra_for(self.model, self.extra, item)
        feeds = {"class_idx": np.array([-1], np.int64)} if "class_idx" in self.model.input_names else {}
        raw = self.model.predict(sample.x, extra_inputs={**feeds, **self.feeds} or None, verbose=False)
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
            smap, params = cli_methods.run(name, self.model, sample.x, target,
                                           dict(self.config.options, feeds=self.feeds), self.sidecar,
                                           verbose=self.config.verbose)
        out: dict[str, Any] = {"parameters": params, "timings": {"method_s": round(time.perf_counter() - t0, 4)}}
        if self.config.metric_steps:
            t1 = time.perf_counter()
            kw = dict(n_steps=self.config.metric_steps, verbose=False, batch_size=16,
                      extra_inputs=self.feeds or None)
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


def audit_input(explainer: Explainer, path: str, dest: str, signature: str, item: int | None = None) -> dict:
    """Explain one input (``item``: its index among the audit's inputs, for per-input ``--extra``
    rows) into the folder ``dest``, then write its marker (last) → its record; the step every
    engine runs. A marker that already matches (a task retried after its worker died)
    is returned as it is, nothing recomputed. Errors become a record, but an output that cannot be
    written (``OutputError``) is raised: it stops the audit."""
    dest_path = Path(dest)
    with writing(dest_path):
        dest_path.mkdir(parents=True, exist_ok=True)
    done = cached_record(dest_path / MARKER, Path(path), signature)
    if done is not None:
        return done
    try:
        source = fingerprint(Path(path))
        record = explainer.explain(Path(path), dest_path, item=item)
    except OutputError:
        raise
    except Exception as exc:  # one bad input must not stop the audit
        record = {"input": path, "status": "error", "error": one_line(exc)}
        if explainer.config.debug:
            record["traceback"] = traceback.format_exc()
        return record
    record["source"] = source
    record["signature"] = signature
    write_json(dest_path / MARKER, record)  # last: the input is complete
    return record


def _audit_one(path: str, dest: str, signature: str, item: int | None = None) -> dict:
    """``audit_input`` with this worker process's ``Explainer``."""
    return audit_input(_WORKER, path, dest, signature, item)


def cached_record(marker: Path, path: Path, signature: str) -> dict | None:
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
@dataclass
class RunOptions:
    """How an audit runs (what it computes is the ``Config``). ``engine``: ``"local"`` (``workers``
    processes on this machine, capped, see ``worker_count``) or ``"ray"`` (actors on a Ray
    cluster, set by ``ray``: an ``onnx_xai.engines.ray_audit.RayOptions``; needs
    ``pip install "onnx-xai[ray]"``). ``resume`` from the inputs already done, a ``progress``
    bar, ``lock`` the output folder for the run (False when the caller holds the lock, e.g.
    across the report too), ``on_record`` called with each input's record as it is done,
    ``on_note`` with one-line notes (``--workers`` capped, actors chosen)."""

    workers: int = 1
    resume: bool = True
    progress: bool = True
    lock: bool = True
    on_record: Callable[[dict], None] | None = None
    on_note: Callable[[str], None] | None = None
    engine: str = "local"
    ray: Any = None


@dataclass
class AuditJob:
    """What an engine is handed: ``tasks`` ``(index, input path, destination folder)`` to explain
    by ``config`` (each with ``audit_input``, its marker keyed by ``signature``), and ``run``."""

    config: Config
    signature: str
    tasks: list[tuple[int, str, str]]
    run: RunOptions


ENGINES = ("local", "ray")


def run_audit(config: Config, files: list[Path], out: Path, run: RunOptions | None = None) -> list[dict]:
    """Explain ``files`` into ``out/inputs/<key>/``; skip inputs whose marker matches → records in order.

    A folder another run writes raises ``OutputBusyError``. An output that cannot be written
    raises ``OutputError`` after the inputs in flight; what was done stays done for the next run.
    """
    run = run or RunOptions()
    if run.engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {run.engine!r}")
    out = prepare_output_folder(out)
    with OutputLock(out) if run.lock else contextlib.nullcontext():
        return _run_audit(config, files, out, run)


def _run_audit(config: Config, files: list[Path], out: Path, run: RunOptions) -> list[dict]:
    """The engine-independent audit: list what is done, hand the rest to the engine, collect."""
    with writing(out):
        clean_temp_files(out)
    signature = config.signature()
    keys = input_keys(files)
    records: dict[int, dict] = {}
    tasks = []
    for i, (f, key) in enumerate(zip(files, keys)):
        marker = out / "inputs" / key / MARKER
        old = cached_record(marker, f, signature) if run.resume else None
        if old is not None:
            records[i] = dict(old, cached=True)
            continue
        if not run.resume:  # recomputed: a marker left from before would let a retried task skip it
            with writing(marker.parent):
                marker.unlink(missing_ok=True)
        tasks.append((i, str(f), str(out / "inputs" / key)))
    bar = tqdm(total=len(files), initial=len(records), unit="input", desc="audit", disable=not run.progress)

    def done(i: int, record: dict) -> None:
        record["key"] = keys[i]
        records[i] = record
        bar.update(1)
        if run.on_record:
            run.on_record(record)

    def note(text: str) -> None:  # a whole line, the bar redrawn below it
        with tqdm.external_write_mode():
            run.on_note(text)

    try:
        if tasks:
            job_run = dataclasses.replace(run, on_note=note if run.on_note else None)
            _engine(run.engine)(AuditJob(config, signature, tasks, job_run), done)
    finally:
        bar.close()
    with writing(out):  # what workers killed mid-write left (no writer is left now)
        clean_temp_files(out)
    for i, rec in records.items():
        rec["key"], rec["dir"] = keys[i], f"inputs/{keys[i]}"
    return [records[i] for i in sorted(records)]


def _engine(name: str) -> Callable[[AuditJob, Callable[[int, dict], None]], None]:
    if name == "ray":
        from .engines import ray_audit  # imports ray only when used
        return ray_audit.run_job
    return run_local


def run_local(job: AuditJob, done: Callable[[int, dict], None]) -> None:
    """The local engine: ``job.run.workers`` processes (capped by ``worker_count``), or this one."""
    workers, config = job.run.workers, job.config
    if workers > 1:
        workers, note = worker_count(workers, len(job.tasks), config.model)
        if note and job.run.on_note:
            job.run.on_note(note)
    if workers <= 1 or len(job.tasks) <= 1:
        _init_worker(config)
        for i, path, dest in job.tasks:
            done(i, _audit_one(path, dest, job.signature, i))
        return
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(config, os.getpid()))
    try:
        futures = {pool.submit(_audit_one, path, dest, job.signature, i): i for i, path, dest in job.tasks}
        for fut in cf.as_completed(futures):
            done(futures[fut], fut.result())
    except cf.process.BrokenProcessPool:
        raise OnnxXaiError("a worker process died (killed, or out of memory?); what was done is kept: "
                           "run the same command again, with fewer --workers, to resume") from None
    finally:  # on Ctrl-C or an unwritable output, do not wait for the queued inputs
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class AuditResult:
    """What ``audit_folder`` did: a record per input (in input order), the report's files
    (``html``, ``json``, ``csv``) and the files of the input folders skipped as onnx-xai's own."""

    records: list[dict]
    report: dict[str, Path]
    skipped: list[Path]


def audit_folder(config: Config | str | os.PathLike, inputs: list[str | os.PathLike] | str | os.PathLike,
                 out: str | os.PathLike, run: RunOptions | None = None, info: dict | None = None) -> AuditResult:
    """Explain every image / ``.npy`` of the folders (or files) ``inputs`` into the folder ``out``
    and write its report: ``out/inputs/<key>/`` (the input's picture, each method's map as
    ``.npy`` and overlay ``.png``, ``done.json``), ``report.html``, ``summary.json``,
    ``summary.csv``. What ``onnx-xai audit`` runs.

    ``config``: a ``Config`` (model, methods, options, target, preprocessing, metric steps) or a
    model path (occlusion, default settings). ``run``: a ``RunOptions`` — the engine
    (``"local"`` processes, or ``"ray"`` actors with ``RayOptions``), resume, progress.
    ``info``: extra lines for the report's header. Resumable: a re-run skips the inputs whose
    ``done.json`` matches their content and the settings. One run at a time per ``out``
    (``OutputBusyError`` otherwise); per-input errors are records with ``status: "error"``.

    Example::

        from onnx_xai.audit import Config, RunOptions, audit_folder
        from onnx_xai.engines.ray_audit import RayOptions
        cfg = Config(model="model.onnx", methods=["gradcam", "occlusion"], metric_steps=0)
        result = audit_folder(cfg, ["frames/"], "audit_out", RunOptions(engine="ray", ray=RayOptions(address="auto")))
        print(result.report["html"], sum(r["status"] != "ok" for r in result.records), "failed")
    """
    from .report import write_report  # report imports this module

    if not isinstance(config, Config):
        config = Config(model=str(config), methods=["occlusion"])
    run = run or RunOptions()
    skipped: list[Path] = []
    paths = [str(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    files = collect_inputs(paths, exclude=out, skipped=skipped)  # first: no output folder for no inputs
    out = prepare_output_folder(out)
    if skipped and run.on_note:
        run.on_note(f"skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} in the input folders that "
                    f"onnx-xai wrote (output folder {str(out)!r} or an earlier one)")
    t0 = time.perf_counter()
    with OutputLock(out):  # one run per output folder, held until the report is written
        records = run_audit(config, files, out, dataclasses.replace(run, lock=False))
        info = {"model": config.model, "inputs": ", ".join(paths), "engine": run.engine,
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "wall_s": round(time.perf_counter() - t0, 2), **(info or {})}
        report = write_report(out, records, config.methods, info)
    return AuditResult(records, report, skipped)
