"""The Ray engine of ``onnx-xai audit --engine ray``: the inputs to do, as a Ray Dataset, go
through ``map_batches`` to a pool of actors (``AuditActor``), each owning one ``Explainer`` (one
ONNX Runtime session, gradient models built once and shared through the disk cache) and
writing each input's outputs with ``audit.audit_input`` — the same files as the local engine.

Exactly once in effect: every file is written to a temp file and renamed, the marker last, so a
worker killed mid-input leaves no half-written output; Ray Data restarts dead actors and retries
their tasks, and a retried input whose marker already matches is returned, not recomputed. The
driver (holding the output folder's lock) collects the records, drives the progress bar,
removes stale temp files and writes the report. Model, inputs and output folder must be at the
same paths on every node (a shared file system). ``ray`` is imported only here, lazily.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..audit import AuditJob, Config, Explainer, OutputError, audit_input, record_json
from ..errors import OnnxXaiError, one_line
from ..finite import positive_int

INSTALL = 'the Ray engine needs Ray: pip install "onnx-xai[ray]"'


@dataclass
class RayOptions:
    """Where and how the actors run.

    ``address``: None starts a local Ray instance for this run (this machine's cores), stopped
    at the end; ``"auto"`` joins the cluster ``ray start`` made on this node; ``"HOST:6379"`` or
    ``"ray://HOST:10001"`` joins that cluster. A process already connected (``ray.init`` done by
    the caller) keeps its connection. ``actors``: how many (None: as many as the cluster's CPUs
    / GPUs hold, at most one per input); ``cpus_per_actor`` (also its ONNX Runtime threads,
    unless the ``Config`` sets ``threads``), ``gpus_per_actor`` (fractions share a GPU);
    ``batch_size``: inputs per call of an actor; ``init``: more ``ray.init`` arguments (e.g.
    ``num_cpus`` of a local instance, ``runtime_env``)."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 1
    init: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.actors is not None:
            self.actors = positive_int("actors", self.actors)
        self.batch_size = positive_int("batch_size", self.batch_size)
        for name in ("cpus_per_actor", "gpus_per_actor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.cpus_per_actor == 0 and self.gpus_per_actor == 0:
            raise ValueError("an actor needs some resources: cpus_per_actor or gpus_per_actor > 0")


class RayMissingError(OnnxXaiError, ImportError):
    """Ray (with Ray Data) is not installed: the message says what to install."""


def import_ray() -> Any:
    """``ray`` with ``ray.data``, or ``RayMissingError`` (an ImportError) saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayMissingError(f"{INSTALL} ({exc})") from None
    return ray


class AuditActor:
    """One Ray actor: loads the model once, explains a batch ``{"index", "path", "dest"}`` →
    ``{"index", "record"}`` (each record as JSON text)."""

    def __init__(self, config: Config, signature: str) -> None:
        self.explainer = Explainer(config)
        self.signature = signature

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [record_json(audit_input(self.explainer, str(p), str(d), self.signature, int(i)))
                   for i, p, d in zip(batch["index"], batch["path"], batch["dest"])]
        return {"index": np.asarray(batch["index"]), "record": np.array(records, dtype=object)}


def actor_count(options: RayOptions, resources: dict[str, float], n_tasks: int) -> int:
    """``options.actors``, or as many as the cluster's ``resources`` hold; at most ``n_tasks``."""
    if options.actors is not None:
        return max(1, min(options.actors, n_tasks))
    fits = []
    if options.cpus_per_actor > 0:
        fits.append(int(resources.get("CPU", 0) // options.cpus_per_actor))
    if options.gpus_per_actor > 0:
        fits.append(int(resources.get("GPU", 0) // options.gpus_per_actor))
    return max(1, min(min(fits), n_tasks))


def actor_config(config: Config, options: RayOptions) -> Config:
    """The ``Config`` an actor runs: ORT threads = its CPUs (unless set), no progress bars."""
    threads = config.threads if config.threads is not None else max(1, int(options.cpus_per_actor))
    device = "gpu" if options.gpus_per_actor > 0 and config.device == "auto" else config.device
    return dataclasses.replace(config, threads=threads, device=device, verbose=False)


def _connect(ray: Any, options: RayOptions) -> bool:
    """Connect (or start) as ``options.address`` says → whether this run must disconnect."""
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
              **options.init}
    if options.address is None:
        ray.init(address="local", **kwargs)
    else:
        for local_only in ("num_cpus", "num_gpus", "include_dashboard"):  # refused when joining
            kwargs.pop(local_only, None)
        ray.init(address=options.address, **kwargs)
    return True


def _output_error(exc: BaseException) -> OutputError | None:
    """The ``OutputError`` an actor raised, from the exceptions Ray wraps it in, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OutputError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def run_job(job: AuditJob, done: Callable[[int, dict], None]) -> None:
    """Explain ``job.tasks`` on Ray actors (``job.run.ray``: ``RayOptions``, None: defaults) and
    call ``done(index, record)`` on the driver as each input is finished."""
    ray = import_ray()
    options = job.run.ray if job.run.ray is not None else RayOptions()
    disconnect = _connect(ray, options)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = False  # the driver's one bar over all inputs instead
    try:
        actors = actor_count(options, ray.cluster_resources(), len(job.tasks))
        if job.run.on_note:
            job.run.on_note(f"ray: {actors} actor{'s' if actors != 1 else ''} × {options.cpus_per_actor:g} CPU"
                            + (f" + {options.gpus_per_actor:g} GPU" if options.gpus_per_actor else "")
                            + f", batches of {options.batch_size}")
        try:
            for batch in dataset(ray, job, options, actors).iter_batches(batch_size=None, batch_format="numpy"):
                for i, text in zip(batch["index"], batch["record"]):
                    done(int(i), json.loads(text))
        except Exception as exc:
            error = _output_error(exc)
            if error is not None:
                raise OutputError(str(error)) from None
            raise OnnxXaiError(f"the Ray audit failed ({one_line(exc)}); what was done is kept: "
                               f"run the same command again to resume") from exc
    finally:
        ctx.enable_progress_bars = saved
        if disconnect:
            ray.shutdown()


def dataset(ray: Any, job: AuditJob, options: RayOptions, actors: int) -> Any:
    """The Ray Dataset of the job's records: its tasks (``index``, ``path``, ``dest``) in blocks
    of a few batches (a retried block redoes little), mapped by a pool of ``actors`` ``AuditActor``."""
    rows = [{"index": i, "path": path, "dest": dest} for i, path, dest in job.tasks]
    blocks = max(1, min(math.ceil(len(rows) / options.batch_size), 64 * actors))
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        AuditActor, fn_constructor_kwargs={"config": actor_config(job.config, options), "signature": job.signature},
        batch_size=options.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor or None)


__all__ = ["RayOptions", "AuditActor", "run_job", "dataset", "actor_count", "actor_config", "import_ray",
           "RayMissingError"]
