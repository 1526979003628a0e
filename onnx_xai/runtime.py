"""runtime: ``Model``, the one way onnx_xai runs an ONNX model.

A ``Model`` owns an ONNX model, its ONNX Runtime sessions (the main one and those of
rewritten graphs), the device choice and the batching. Arrays are NumPy, batch-first.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort
import scipy.special
from tqdm.auto import tqdm

from . import graph
from .errors import DeviceError, OnnxXaiError, UnsupportedModelError
from .finite import check_finite_input, positive_int
from .layout import check as check_layout

ModelSource = Union["Model", str, os.PathLike, bytes, onnx.ModelProto, ort.InferenceSession]

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(bool)": np.bool_,
}
_DEVICES = ("auto", "cpu", "gpu")
logger = logging.getLogger("onnx_xai")


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str/None for free dimensions) and NumPy dtype of a model tensor."""

    name: str
    shape: tuple
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"({dims}) {np.dtype(self.dtype).name}"


def softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (the class axis of ``(B, K, ...)`` by default)."""
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / np.sum(z, axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, elementwise."""
    return scipy.special.expit(np.asarray(x))


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Silence file descriptors 1 and 2 (ORT's C++ logger and its DLL preloader write there);
    yield a list that holds what was written once the block ends."""
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def _cuda_failure_reason(log: str) -> str:
    """The useful part of ORT's CUDA failure log: the missing library and the required versions."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    parts = [m.group(1).strip() for m in re.finditer(r"with error: ([^\n]*)", log)][:1]
    parts += [m.group(0).strip() for m in re.finditer(r"Require [^.]*\.\*[^.]*\.\*", log)][:1]
    return "; ".join(parts)


@functools.lru_cache(maxsize=1)
def cuda_status() -> tuple[bool, str]:
    """Whether ONNX Runtime's CUDA execution provider really works here, and if not, why.

    onnxruntime-gpu lists CUDA among its providers even when libcublas or cuDNN are
    missing, then logs an error and silently runs on the CPU. This builds a one-node
    session on CUDA alone, quietly, once per process (a property of the machine).
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, ("this onnxruntime build has no CUDA execution provider "
                       f"(providers: {ort.get_available_providers()}); install onnxruntime-gpu")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    probe = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y]),
        opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with captured_output() as log:
        try:
            if hasattr(ort, "preload_dlls"):  # NVIDIA libraries installed from pip (the cuda extra)
                ort.preload_dlls()
            session = ort.InferenceSession(probe.SerializeToString(), options,
                                           providers=["CUDAExecutionProvider"])
            works = session.get_providers()[0] == "CUDAExecutionProvider"
        except Exception as exc:  # any failure means: no usable CUDA
            works, log[:0] = False, [str(exc)]
    if works:
        return True, "CUDA execution provider available"
    detail = _cuda_failure_reason("".join(log))
    return False, ("the CUDA execution provider could not be created"
                   + (f" ({detail})" if detail else "")
                   + ". Install the CUDA and cuDNN libraries ONNX Runtime was built for "
                     "(pip install 'onnx-xai[cuda]'), or use device='cpu'.")


_UNKNOWN_OP = (
    re.compile(r'In Node, \("[^"]*", (?P<op>[\w.]+), "(?P<domain>[^"]*)".*Error No Op registered'),
    re.compile(r"(?P<domain>[\w.]*):(?P<op>[\w.]+)\(-?\d+\) is not a registered function/op"),
    re.compile(r"Could not find an implementation for (?P<op>[\w.]+)\((?P<version>\d+)\)"),
)


def session_error(exc: Exception, proto: onnx.ModelProto) -> Exception:
    """ONNX Runtime's refusal to build a session as one of our errors: an operator it does
    not know → ``UnsupportedModelError`` naming op and domain; anything else → ``OnnxXaiError``."""
    text = str(exc)
    for pattern in _UNKNOWN_OP:
        m = pattern.search(text)
        if m:
            op, domain = m.group("op"), m.groupdict().get("domain")
            if domain is None:
                domain = next((n.domain for n in proto.graph.node if n.op_type == op), "")
            return UnsupportedModelError(
                f"ONNX Runtime {ort.__version__} has no kernel for operator {op!r} "
                f"(domain {domain or 'ai.onnx'!r}) used by the model; export it with standard "
                "operators or use an ONNX Runtime build that provides it")
    line = next((l for l in text.splitlines() if l.strip()), type(exc).__name__)
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", line.strip())
    return UnsupportedModelError(f"ONNX Runtime {ort.__version__} cannot load the model: {line}")


THREADS_PER_CORE = 4


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    return max(1, len(usable))


def check_threads(threads: Any) -> int | None:
    """``threads`` checked: None, or a positive int at most ``THREADS_PER_CORE`` × the usable
    cores (ONNX Runtime would otherwise spawn them all, never returning)."""
    if threads is None:
        return None
    threads = positive_int("threads", threads)
    limit = THREADS_PER_CORE * usable_cores()
    if threads > limit:
        raise ValueError(f"threads={threads} is more than {THREADS_PER_CORE} per usable core "
                         f"({usable_cores()} cores here, so at most {limit}); use None for all cores")
    return int(threads)


def _resolve_device(device: str) -> str:
    device = "gpu" if device == "cuda" else device  # ONNX Runtime's / torch's name for it
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {_DEVICES} (or 'cuda', an alias of 'gpu'), got {device!r}")
    if device == "cpu":
        return "cpu"
    works, why = cuda_status()
    if device == "gpu" and not works:
        raise DeviceError(f"device='gpu' requested but {why}")
    if not works and "CUDAExecutionProvider" in ort.get_available_providers():
        logger.info("device='auto': running on the CPU because %s", why)
    return "gpu" if works else "cpu"


_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
#: Session config entries ``copy_session_options`` carries over (ORT cannot list the set ones).
SESSION_CONFIG_KEYS = (
    "session.disable_prepacking", "session.use_env_allocators", "session.load_model_format",
    "session.save_model_format", "session.set_denormal_as_zero", "session.disable_quant_qdq",
    "session.disable_double_qdq_remover", "session.enable_quant_qdq_cleanup",
    "session.intra_op.allow_spinning", "session.inter_op.allow_spinning",
    "session.force_spinning_stop", "session.use_device_allocator_for_initializers",
    "session.dynamic_block_base", "session.strict_shape_type_inference",
    "session.allow_released_opsets_only", "session.intra_op_thread_affinities",
    "session.x64quantprecision", "session.graph_optimizations_loop_level",
    "session.disable_specified_optimizers", "session.disable_aot_function_inlining",
    "session.disable_cpu_ep_fallback", "session.qdqisint8allowed",
    "session.use_ort_model_bytes_directly", "optimization.minimal_build_optimizations",
    "optimization.disable_specified_optimizers", "mlas.enable_gemm_fastmath_arm64_bfloat16",
)


def copy_session_options(base: ort.SessionOptions | None) -> ort.SessionOptions:
    """A fresh ``SessionOptions`` with the settings of ``base`` (ORT's cannot be copied): every
    readable property (threads, optimisation level, execution mode, memory arena, profiling,
    log levels, ...) and the config entries of ``SESSION_CONFIG_KEYS`` that ``base`` sets.
    Custom-op libraries, added initializers, free-dimension overrides and providers added to
    ``base`` cannot be read back and are not copied. None → ONNX Runtime's defaults, quiet
    (log severity 3); a ``base`` left at the default log severity is made quiet too."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if base is None:
        return options
    if not isinstance(base, ort.SessionOptions):
        raise TypeError(f"sess_options must be an onnxruntime.SessionOptions, got {type(base).__name__}")
    default = ort.SessionOptions()
    for name in dir(type(base)):
        if name.startswith("_") or not isinstance(getattr(type(base), name), property):
            continue
        value = getattr(base, name)
        if name == "log_severity_level" and value == default.log_severity_level:
            continue
        with contextlib.suppress(Exception):  # read-only or not settable in this build
            setattr(options, name, value)
    for key in SESSION_CONFIG_KEYS:
        with contextlib.suppress(Exception):  # raises when the entry is not set
            options.add_session_config_entry(key, base.get_session_config_entry(key))
    return options


def _provider_name(provider: Any) -> str:
    name = provider[0] if isinstance(provider, (tuple, list)) else provider
    if not isinstance(name, str):
        raise ValueError(f"providers must be provider names or (name, options) pairs, got {provider!r}")
    return name


def resolve_providers(providers: Sequence | None, device: str) -> tuple[str, list | None]:
    """(device, providers for sessions) from ``Model``'s ``providers`` and ``device``.

    None: the device decides (``_resolve_device``). A list (names or ``(name, options)``
    pairs, as ``InferenceSession`` takes them) decides the device: CUDA / TensorRT first →
    ``"gpu"`` when CUDA really works; when it does not, ``DeviceError`` if ``device`` asked
    for the GPU, else the GPU providers are dropped with a logged warning saying why (the
    CPU runs it). ``device="cpu"`` with GPU providers first, or ``"gpu"`` without, is a
    ``ValueError``."""
    if providers is None:
        return _resolve_device(device), None
    if isinstance(providers, (str, bytes)) or not isinstance(providers, Sequence) or not providers:
        raise ValueError(f"providers must be a non-empty list of execution providers, got {providers!r}")
    names = [_provider_name(p) for p in providers]
    device = "gpu" if device == "cuda" else device
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {_DEVICES} (or 'cuda', an alias of 'gpu'), got {device!r}")
    unknown = [n for n in names if n not in ort.get_available_providers() and n not in _GPU_PROVIDERS]
    if unknown:
        raise ValueError(f"execution provider(s) {unknown} are not in this onnxruntime build "
                         f"(available: {ort.get_available_providers()})")
    wants_gpu = names[0] in _GPU_PROVIDERS
    if device != "auto" and wants_gpu != (device == "gpu"):
        raise ValueError(f"device={device!r} contradicts providers={names} (the first provider "
                         "decides the device); pass one of them")
    providers = list(providers)
    if wants_gpu:
        works, why = cuda_status()
        if not works:
            if device == "gpu":
                raise DeviceError(f"providers={names} ask for the GPU but {why}")
            logger.warning("providers=%s ask for the GPU, but %s Running on the CPU.", names, why)
            providers = [p for p in providers if _provider_name(p) not in _GPU_PROVIDERS]
            return "cpu", providers or ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in names:
        providers.append("CPUExecutionProvider")  # ORT's fallback for the nodes others lack
    return ("gpu" if wants_gpu else "cpu"), providers


def _parse_proto(data: bytes, what: str) -> onnx.ModelProto:
    """``data`` parsed as an ONNX model, or ``ValueError`` "not an ONNX model: ``what`` ..."."""
    if not data:
        raise ValueError(f"not an ONNX model: {what} is empty (0 bytes)")
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"not an ONNX model: {what} cannot be parsed ({first}); "
                         "is it truncated, or a file of another format?") from None
    if not proto.graph.node and not proto.graph.output:
        raise ValueError(f"not an ONNX model: {what} holds no graph; is it truncated, "
                         "or a file of another format?")
    return proto


def _load_proto(source: Any) -> tuple[onnx.ModelProto | None, str | None]:
    """(proto, path) from a path, bytes or proto; (None, None) for other sources."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray)):
        return _parse_proto(bytes(source), f"the {len(source)} bytes given"), None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {str(path)!r}")
        proto = _parse_proto(path.read_bytes(), f"the file {str(path)!r}")
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            onnx.load_external_data_for_model(proto, str(path.parent))
        return proto, str(path)
    raise TypeError(
        "a model must be an onnx_xai.Model, a path, bytes, an onnx.ModelProto or an "
        f"onnxruntime.InferenceSession; got {type(source).__name__}")


# Model attributes that belong to one graph: never copied to a Model of a rewritten graph.
_PER_GRAPH = frozenset({"_proto", "session", "inputs", "outputs", "_derived", "_memos", "digest"})


class Model:
    """One ONNX model with its ONNX Runtime sessions, device and batching.

    Args:
        source: path, serialized bytes, ``onnx.ModelProto``, ``onnxruntime.InferenceSession``
            (used as it is: its providers decide the device) or another ``Model``.
        device: ``"auto"`` (CUDA when it really works, else CPU), ``"cpu"`` or ``"gpu"``
            (``"cuda"`` is an alias; raises ``DeviceError`` saying what is missing when CUDA
            cannot be used).
        threads: ONNX Runtime intra-op threads (None: ``sess_options``' intra-op threads if
            set, else ORT's default, all cores).
        input_name: the input that explanations perturb (default: the first graph input);
            other inputs are passed through unchanged with every batch.
        verbose: default for progress bars of long runs.
        io_binding: bind inputs/outputs through ``IOBinding`` (default: only on CUDA).
        providers: ONNX Runtime's list (names or ``(name, options)`` pairs), used for every
            session of the model; the first decides the device (``resolve_providers``:
            CUDA / TensorRT first → GPU when CUDA works, else the CPU with a logged warning).
        sess_options: an ``onnxruntime.SessionOptions`` whose settings every session the
            Model builds starts from (``copy_session_options``); ``threads`` still applies.
        layout: the explained input's layout for the methods: ``"nchw"`` (channel-first),
            ``"nhwc"`` (channel-last, e.g. tf2onnx conversions) or ``"auto"`` (the sidecar's
            ``layout``, else guessed from the input shape; see ``onnx_xai.layout``). Methods
            take ``x`` in this layout; ``predict`` always feeds ``x`` as it is.

    Models whose batch dimension is fixed (often 1) are rewritten to a dynamic batch when
    the graph allows it (checked: a batch of two must equal two single runs), otherwise
    they run one batch of the fixed size at a time; callers only notice the speed.
    """

    def __init__(self, source: ModelSource, *, device: str = "auto", threads: int | None = None,
                 input_name: str | None = None, verbose: bool = True,
                 io_binding: bool | None = None, providers: Sequence | None = None,
                 sess_options: ort.SessionOptions | None = None, layout: str = "auto") -> None:
        self.layout = check_layout(layout)
        if isinstance(source, Model):
            source = source.proto if source.proto is not None else source.session
        if isinstance(source, ort.InferenceSession) and (providers is not None or sess_options is not None):
            raise ValueError("an InferenceSession brings its own providers and options: pass the "
                             "model's path or bytes to set providers= or sess_options=")
        if threads is None and isinstance(sess_options, ort.SessionOptions) and sess_options.intra_op_num_threads > 0:
            threads = sess_options.intra_op_num_threads
        self.threads = check_threads(threads)
        self._base_options = None if sess_options is None else copy_session_options(sess_options)
        self._providers: list | None = None
        self.verbose = verbose
        self._derived: dict[tuple, Model] = {}
        self._memos: dict[str, dict] = {}
        if isinstance(source, ort.InferenceSession):
            self.session = source
            self.device = "gpu" if source.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
            self.path = getattr(source, "_model_path", None)
            model_bytes = getattr(source, "_model_bytes", None)
            self._proto = (onnx.load_from_string(model_bytes) if model_bytes else
                           onnx.load(self.path) if self.path else None)
        else:
            self._proto, self.path = _load_proto(source)
            self.device, self._providers = resolve_providers(providers, device)
            self.session = self.new_session(self._proto)
        self.io_binding = (self.device == "gpu") if io_binding is None else bool(io_binding)
        self.inputs = [self._info(i) for i in self.session.get_inputs()]
        self.outputs = [self._info(o) for o in self.session.get_outputs()]
        if not self.inputs or not self.outputs:
            raise UnsupportedModelError(f"the model {self.path or ''} has no "
                                        f"{'inputs' if not self.inputs else 'outputs'}: nothing to explain"
                                        .replace("  ", " "))
        names = [i.name for i in self.inputs]
        if input_name is not None and input_name not in names:
            raise ValueError(f"input_name {input_name!r} is not an input of the model; inputs: {names}")
        self.input_name = input_name or names[0]
        batch = self.input.shape[0] if self.input.shape else None
        # "dynamic": any batch; int: fixed size, not yet rewritten; "fixed": rewrite failed
        self._batch: Any = batch if isinstance(batch, int) else "dynamic"

    # ----------------------------------------------------------------- metadata
    @staticmethod
    def _info(node: Any) -> TensorInfo:
        dtype = _ORT_TYPES.get(node.type)
        if dtype is None:
            raise OnnxXaiError(f"tensor {node.name!r} has unsupported type {node.type}")
        return TensorInfo(node.name, tuple(node.shape), np.dtype(dtype))

    @property
    def proto(self) -> onnx.ModelProto | None:
        """The ONNX model (None when built from a session whose model cannot be read back)."""
        return self._proto

    def require_proto(self, why: str) -> onnx.ModelProto:
        """The ONNX model, or an error saying that ``why`` needs it."""
        if self._proto is None:
            raise OnnxXaiError(f"{why} needs the ONNX graph, which this InferenceSession does "
                               "not expose; build the Model from the .onnx path or bytes")
        return self._proto

    @property
    def input(self) -> TensorInfo:
        """Metadata of the explained input."""
        return next(i for i in self.inputs if i.name == self.input_name)

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the serialized model (a key for on-disk caches)."""
        return hashlib.sha256(self.require_proto("hashing").SerializeToString()).hexdigest()

    def __repr__(self) -> str:
        ins = ", ".join(f"{i.name}: {i.describe()}" for i in self.inputs)
        outs = ", ".join(f"{o.name}: {o.describe()}" for o in self.outputs)
        return f"Model({self.path or 'in-memory'}, device={self.device!r}, inputs=[{ins}], outputs=[{outs}])"

    # ----------------------------------------------------------------- sessions
    @property
    def cpu_workers(self) -> int:
        """How many single-threaded sessions split a long series of runs (gradient runs) on
        the CPU: ``threads``, or the usable cores when None; 1 on CUDA or with IO binding."""
        if self.device == "gpu" or self.io_binding:
            return 1
        return self.threads if self.threads is not None else usable_cores()

    def new_session(self, proto: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
        """A session on this model's device with ``threads`` (default: ``self.threads``)
        intra-op threads."""
        options = copy_session_options(getattr(self, "_base_options", None))
        if proto is not getattr(self, "_proto", None):  # a rewritten graph never overwrites the
            options.optimized_model_filepath = ""      # user's optimized model file
        threads = self.threads if threads is None else threads
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = getattr(self, "_providers", None) or (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "gpu"
            else ["CPUExecutionProvider"])
        data = proto.SerializeToString() if proto.ByteSize() < 2**31 - 1 else None
        if data is None:
            raise OnnxXaiError("models over 2 GB with external data must be loaded from their path")
        try:
            return ort.InferenceSession(data, options, providers=providers)
        except Exception as exc:  # ORT's own exception types are not importable everywhere
            raise session_error(exc, proto) from None

    def layers(self, input_shape: Sequence[int] | None = None) -> list[graph.Layer]:
        """Candidate target layers (node, tensor, op type, shape), conv-like 4D/5D outputs first.

        Shapes are for one sample of the explained input (``input_shape``, per-sample
        ``(C, H, W[, D])``, where the model's input has free spatial dims).
        """
        proto = self.require_proto("listing layers")
        shape = tuple(input_shape) if input_shape is not None else self.input.shape[1:]
        shapes = {self.input_name: (1,) + tuple(shape)} if all(
            isinstance(d, int) for d in shape) else None
        return graph.layers(proto, shapes)

    def with_outputs(self, names: Sequence[str]) -> "Model":
        """A Model of the same graph that also returns the tensors ``names`` (cached).

        Names may be tensor or node names; unknown ones raise ``ValueError`` listing the
        closest real names.
        """
        proto = self.require_proto("exposing intermediate tensors")
        tensors = tuple(graph.resolve_tensor(proto, n) for n in names)
        if tensors not in self._derived:
            self._derived[tensors] = self.derive(graph.expose_tensors(proto, list(tensors)))
        return self._derived[tensors]

    def memo(self, name: str) -> dict:
        """A dict named ``name`` that lives as long as this Model and its graph (other layers
        keep what they built for this graph here, e.g. gradient models); not copied by ``derive``."""
        return self._memos.setdefault(name, {})

    def derive(self, proto: onnx.ModelProto) -> "Model":
        """A Model of ``proto`` (a rewrite of this model's graph) with this model's settings
        and batch state (device, threads, explained input, fixed batch size, ...); memos and
        cached properties tied to this graph are not carried over."""
        child = Model.__new__(Model)
        child.__dict__.update({k: v for k, v in self.__dict__.items() if k not in _PER_GRAPH})
        child._derived, child._memos = {}, {}
        child._proto = proto
        child.session = self.new_session(proto)
        child.inputs = [self._info(i) for i in child.session.get_inputs()]
        child.outputs = [self._info(o) for o in child.session.get_outputs()]
        return child

    # ----------------------------------------------------------------- checks
    def check_input(self, x: Any) -> np.ndarray:
        """``x`` as an array of the explained input's dtype, or ``ValueError`` naming the shape,
        or (float inputs) the count and first index of NaN / infinite values (see ``finite``)."""
        info = self.input
        x = original = np.asarray(x)
        want = self.compute_dtype
        kinds = {"f": "f", "i": "i", "u": "i", "b": "b"}
        if kinds.get(x.dtype.kind) != kinds.get(want.kind):
            raise ValueError(f"input {info.name!r} expects {info.describe()}, got dtype {x.dtype.name}"
                             f"{'; convert the image to float first' if want.kind == 'f' else ''}")
        with np.errstate(over="ignore"):  # an overflow is reported below, as non-finite
            x = x.astype(want, copy=False)
        bad = x.ndim != len(info.shape) or any(
            isinstance(d, int) and d != s for d, s in zip(info.shape[1:], x.shape[1:]))
        if bad:
            hint = " (add a batch dimension: x[None])" if x.ndim == len(info.shape) - 1 else ""
            raise ValueError(f"input {info.name!r} expects shape {info.describe()}, "
                             f"got {tuple(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise ValueError(f"input {info.name!r} got an empty batch")
        fed = x.astype(info.dtype) if info.dtype != want else x  # float16 models: the fed values
        if want.kind == "f" and not np.isfinite(fed).all():
            check_finite_input(fed, f"input {info.name!r}" + (
                f" (as {info.dtype.name})" if np.isfinite(np.asarray(original, np.float64)).all() else ""))
        return x

    @property
    def compute_dtype(self) -> np.dtype:
        """dtype of the checked input arrays methods compute with: the explained input's, but
        float32 for a float16 input (cast to float16 only when fed to the model; outputs come
        back as float32), so no engine works in float16."""
        dtype = self.input.dtype
        return np.dtype(np.float32) if dtype == np.float16 else dtype

    def check_outputs(self, outputs: str | Sequence[str] | None) -> list[str]:
        """Output names (None: the first output), each checked to be an output of the model."""
        names = [self.outputs[0].name] if outputs is None else (
            [outputs] if isinstance(outputs, str) else list(dict.fromkeys(outputs)))
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; the model outputs {self.output_names} "
                             "(use Model.with_outputs to expose intermediate tensors)")
        return names

    def check_class_output(self, name: str | None = None, shape: Sequence[int] | None = None) -> str:
        """The output ``name`` (default: the first), checked to hold class scores ``(B, K, ...)``:
        a ``(B,)`` output (one value per sample) or a scalar raises ``ValueError``. ``shape``:
        the output's real shape where known (else the declared one is checked)."""
        name = self.check_outputs(name)[0]
        dims = tuple(shape) if shape is not None else next(o for o in self.outputs if o.name == name).shape
        if len(dims) < 2 and (shape is not None or len(dims) == 1):
            raise ValueError(
                f"output {name!r} has shape ({', '.join(map(str, dims))}): one value per sample, not "
                "class scores (B, K, ...); these methods explain a class score: export the model "
                "with a (B, 1) output (e.g. unsqueeze the score) or name another output")
        return name

    @property
    def optional_inputs(self) -> list[TensorInfo]:
        """Inputs with a default value (initializers that feeds may override), e.g. an
        exported explainer's ``class_idx``; ORT leaves them out of ``get_inputs()``."""
        return [self._info(i) for i in self.session.get_overridable_initializers()
                if i.type in _ORT_TYPES]

    def check_extra_inputs(self, extra: dict[str, Any] | None) -> dict[str, np.ndarray]:
        """The model's other inputs as arrays of their dtypes; every required one must be given;
        float ones must be finite (``ValueError`` with the count and first index). An array
        with one axis fewer than an input with a free batch axis gets a batch axis of 1 (it
        goes with every sample)."""
        extra = dict(extra or {})
        others = [i for i in self.inputs if i.name != self.input_name]
        allowed = others + [i for i in self.optional_inputs if i.name in extra]
        unknown = set(extra) - {i.name for i in allowed}
        if unknown:
            raise ValueError(f"unknown extra input(s) {sorted(unknown)}; other inputs of the model: "
                             f"{[i.name for i in others + self.optional_inputs]}")
        missing = [i.name for i in others if i.name not in extra]
        if missing:
            raise ValueError(f"the model also needs input(s) {missing}: pass them to the method as "
                             "extra inputs (keyword arguments NAME=array, or extra_inputs={NAME: "
                             "array}; on the command line --extra NAME=FILE.npy), per batch or "
                             "with a leading axis of one row per sample "
                             f"({', '.join(f'{i.name}: {i.describe()}' for i in others)})")
        out = {i.name: np.asarray(extra[i.name]).astype(i.dtype, copy=False) for i in allowed}
        for i in allowed:  # one sample's array without its batch axis: a batch of 1 (shared)
            if self.batch_axis(i.name, out[i.name][None]):
                out[i.name] = out[i.name][None]
        for name, value in out.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                check_finite_input(value, f"extra input {name!r}")
        return out

    def extra_shapes(self, extra: dict[str, np.ndarray]) -> dict[str, tuple]:
        """Per-sample shapes of the checked extra inputs that have a batch axis (as many axes
        as the declared input), for building graphs at static shapes."""
        declared = {i.name: i.shape for i in self.inputs + self.optional_inputs}
        return {k: tuple(v.shape[1:]) for k, v in extra.items() if v.ndim == len(declared[k])}

    def sample_extra(self, extra: dict[str, Any] | None, item: int, n: int) -> dict[str, np.ndarray]:
        """The extra inputs of sample ``item`` of a batch of ``n``: per-sample arrays (leading
        axis ``n`` at a batch axis) cut to that sample's row, the others as they are."""
        checked = self.check_extra_inputs(extra)
        return {k: self.batch_extra(k, v, 1, n, item) for k, v in checked.items()}

    # ----------------------------------------------------------------- running
    def predict(self, x: Any, *, batch_size: int | None = None,
                outputs: str | Sequence[str] | None = None,
                extra_inputs: dict[str, Any] | None = None,
                verbose: bool | None = None) -> Union[np.ndarray, dict[str, np.ndarray]]:
        """Run the model on ``x`` (batch-first) in batches.

        Args:
            x: the explained input, ``(N, ...)``.
            batch_size: samples per run (default: all at once).
            outputs: None (the first output) or one name → an array; a list → a dict.
            extra_inputs: the model's other inputs by name, passed with every batch.
                An array whose leading dimension is N is split with ``x``; one whose
                leading dimension is 1 at a batch axis is repeated to the batch size.
            verbose: tqdm bar (shown after one second) when there are several batches.
        Returns:
            ``(N, ...)`` array, or a dict of them when ``outputs`` is a list.
        """
        x = self.check_input(x)
        names = self.check_outputs(outputs)
        extra = self.check_extra_inputs(extra_inputs)
        n = x.shape[0]
        step = self.plan_batch(x, n if batch_size is None else batch_size, extra)
        results: dict[str, list[np.ndarray]] = {name: [] for name in names}
        show = self.verbose if verbose is None else verbose
        with tqdm(total=n, unit="sample", desc="inference", delay=1.0,
                  disable=not show or n <= step, leave=False) as bar:
            for start in range(0, n, step):
                chunk = x[start:start + step]
                got = self.run_batch(chunk, names, extra, n_total=n, start=start)
                for name, value in zip(names, got):
                    results[name].append(value)
                bar.update(len(chunk))
        merged = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in results.items()}
        return merged if isinstance(outputs, (list, tuple)) else merged[names[0]]

    def plan_batch(self, x: np.ndarray, batch_size: int, extra: dict[str, np.ndarray]) -> int:
        """The batch size runs can really use: ``batch_size`` for a dynamic batch, else the
        model's fixed size (after trying, once, to make the batch dynamic using ``x``)."""
        batch_size = positive_int("batch_size", batch_size)
        step = min(int(batch_size), max(x.shape[0], 1)) if x.shape[0] > 1 else int(batch_size)
        if self._batch != "dynamic" and (step > 1 or self._batch != 1):
            self._make_batch_dynamic(x, extra)
        if self._batch != "dynamic":
            return self._fixed_size if self._batch == "fixed" else 1
        return step

    def run_batch(self, chunk: np.ndarray, names: list[str], extra: dict[str, np.ndarray],
                  n_total: int | None = None, start: int = 0) -> list[np.ndarray]:
        """One session run on a checked batch ``chunk``; pads to a fixed batch if needed."""
        b = chunk.shape[0]
        fixed = self._fixed_size if self._batch == "fixed" else None
        if fixed is not None and b < fixed:  # the graph only runs at its fixed batch size
            pad = np.repeat(chunk[-1:], fixed - b, axis=0)
            chunk = np.concatenate([chunk, pad])
        feeds = {self.input_name: chunk.astype(self.input.dtype, copy=False)}
        for name, value in extra.items():
            feeds[name] = self.batch_extra(name, value, chunk.shape[0], n_total, start)
        got = [g.astype(np.float32) if g.dtype == np.float16 else g
               for g in self.run_session(self.session, feeds, names)]
        return [g[:b] for g in got] if fixed is not None else got

    def batch_extra(self, name: str, value: np.ndarray, b: int, n_total: int | None,
                    start: int) -> np.ndarray:
        """The extra input ``name`` for a run of ``b`` samples starting at ``start`` of
        ``n_total``: split along its batch axis, repeated from 1 to ``b``, or as it is."""
        if not self.batch_axis(name, value):
            return value
        if n_total and n_total > 1 and value.shape[0] == n_total:
            value = value[start:start + b]
        if 0 < value.shape[0] < b:  # one row for all, or the last rows padded to a fixed batch
            value = np.concatenate([value, np.repeat(value[-1:], b - value.shape[0], axis=0)])
        return value

    def batch_axis(self, name: str, value: np.ndarray) -> bool:
        """Whether ``value`` of the extra input ``name`` has a batch axis: as many axes as the
        input, the first free or pinned to the explained input's fixed batch."""
        declared = next(i for i in self.inputs + self.optional_inputs if i.name == name).shape
        batch = self.input.shape[0] if self.input.shape else None
        return (bool(declared) and np.ndim(value) == len(declared)
                and (not isinstance(declared[0], int) or declared[0] == batch))

    def run_session(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray],
                    names: list[str]) -> list[np.ndarray]:
        """``session.run`` on contiguous feeds, through IO binding when the model uses it."""
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        if not self.io_binding:
            return session.run(names, feeds)
        binding = session.io_binding()
        for key, value in feeds.items():
            binding.bind_cpu_input(key, value)
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def _make_batch_dynamic(self, x: np.ndarray, extra: dict[str, np.ndarray]) -> None:
        """Try to rewrite a fixed batch dimension to a dynamic one; keep the rewrite only if a
        batch of ``fixed + 1`` samples (made from ``x``) equals runs of the original graph at
        its fixed size (a batch baked into a Reshape gives wrong numbers, or fails, there)."""
        if self._batch == "fixed":
            return
        fixed = int(self._batch)
        self._fixed_size = fixed
        self._batch = "fixed"
        if self._proto is None:
            return
        candidate = graph.with_dynamic_batch(self._proto, fixed)
        probe = _probe_batch(x, fixed + 1)
        names = self.output_names
        try:
            reference = [np.concatenate(parts) for parts in zip(*(
                self.run_batch(probe[s:s + fixed], names, extra, fixed + 1, s)
                for s in range(0, fixed + 1, fixed)))]
            session = self.new_session(candidate)
            feeds = {self.input_name: probe.astype(self.input.dtype, copy=False)}
            feeds.update({k: self.batch_extra(k, v, fixed + 1, None, 0) for k, v in extra.items()})
            with captured_output():
                both = self.run_session(session, feeds, names)
        except Exception:
            return
        for a, b in zip(reference, both):
            if b.shape != a.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5):
                return
        self._proto, self.session, self._batch = candidate, session, "dynamic"
        self.inputs = [self._info(i) for i in session.get_inputs()]
        self.outputs = [self._info(o) for o in session.get_outputs()]


def _probe_batch(x: np.ndarray, n: int) -> np.ndarray:
    """``n`` different samples made from ``x``: its samples in turn, flipped along the last
    axis on every second pass (so that one sample gives two)."""
    rows = [x[i % len(x)] if (i // len(x)) % 2 == 0 else np.flip(x[i % len(x)], axis=-1)
            for i in range(n)]
    return np.ascontiguousarray(np.stack(rows))
