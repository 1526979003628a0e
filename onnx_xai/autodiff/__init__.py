"""autodiff: gradient models built once from a rewritten graph, run many times.

``gradient_model(model, wrt, ...)`` returns a ``GradientModel`` (cached on the ``Model`` and
on disk); ``GradientModel.run(x, class_idx)`` returns the model outputs, the activations of
the target layers and the gradients of each sample's target score w.r.t. the input and/or
layers, from one ONNX Runtime run:

    gm = gradient_model(model, ["x", "layer4"], batch_size=8)
    res = gm.run(x, class_idx=[3, 1, ...])
    res["gradients"]["layer4"], res["activations"]["layer4"], res["outputs"]["y"]

Backends: ``"portable"`` (onnx-ad, plain ONNX ops on any ORT build and execution provider),
``"ort-training"`` (onnxruntime-training's GradientGraphBuilder, when it is the installed
onnxruntime), ``"auto"`` (ort-training when present, else portable).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .. import graph, surrogate_graph, targets
from ..errors import TOKEN_HINT, UnsupportedModelError
from . import cache, ort_training, passes, portable

__all__ = ["GradientModel", "GradientRequest", "gradient_model", "gradients", "score_graph",
           "input_shapes", "available_backends", "BACKENDS", "WEIGHTS", "SCORE"]
BACKENDS = ("auto", "portable", "ort-training")
WEIGHTS = "__xai_target_weights"
SCORE = "__xai_score"
_META = "onnx_xai.gradient_spec"


def available_backends() -> list[str]:
    """Backends usable with the installed onnxruntime (``"portable"`` always is)."""
    return ["portable"] + (["ort-training"] if ort_training.available() else [])


def _backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "ort-training" if ort_training.available() else "portable"
    if name == "ort-training" and not ort_training.available():
        raise ValueError("backend='ort-training' needs onnxruntime-training installed in place "
                         "of onnxruntime (pip install onnxruntime-training); use 'portable'")
    return name


@dataclass(frozen=True)
class GradientRequest:
    """What a gradient model is built for: the names differentiated w.r.t. (``wrt``: the
    input and/or layers), the scored ``output``, the static input ``shapes`` (name → shape,
    the built batch first), the ``backend``, the guided-backprop rule and the activation the
    score head applies to the output before weighting it (see ``onnx_xai.targets``)."""

    wrt: tuple[str, ...]
    output: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]
    backend: str = "portable"
    guided: bool = False
    activation: str = "none"

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)


@dataclass(frozen=True)
class _Spec:
    sources: dict  # wrt name as given → graph input carrying the gradient (input or probe)
    layers: dict   # wrt name as given → activation output (layers only)
    outputs: tuple  # model outputs returned by run()
    grads: dict    # graph source → gradient output
    seed: str | None


class GradientModel:
    """A gradient model built for one ``GradientRequest``.

    Built by ``gradient_model``. ``run`` takes any number of samples (split / padded to the
    built batch size). Gradients are of ``score_b = sum(output[b] * weights[b])``, by default
    the raw output ``output[b, class_idx[b]]`` (summed over ``region`` for dense outputs).

    On the CPU, a call of several runs spreads them over ``workers`` single-threaded
    sessions side by side (``Model.cpu_workers``, fewer where their tensors would pass a
    quarter of the RAM): a gradient graph keeps every activation alive, and small runs in
    parallel use the cores and caches better than one large run split inside each
    operator. A call of one run uses one session with all the threads.
    """

    def __init__(self, model, proto: onnx.ModelProto, spec: _Spec, request: GradientRequest,
                 shapes: dict[str, tuple]) -> None:
        self.model, self.proto, self.spec, self.request = model, proto, spec, request
        self.output, self.backend, self.activation = request.output, request.backend, request.activation
        self.batch_size, self.shapes = request.input_shapes[model.input_name][0], shapes
        self.workers = _worker_count(model, proto)
        self._zeros = {src: np.zeros(shapes[src], np.float32) for name, src in spec.sources.items()
                       if name in spec.layers}
        self._sessions: dict[tuple[bool, int], Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        # set by gradient_model when ``model`` is the float32 surrogate of the served model
        self.served, self.record = None, surrogate_graph.SurrogateRecord()
        self.fidelity: surrogate_graph.Fidelity | None = None

    def _session(self, argmax: bool, worker: int | None):
        """The single-threaded session of ``worker`` (None: one session with the model's
        threads), for fed target weights or for the in-graph argmax."""
        key = (argmax, worker)
        if key not in self._sessions:
            proto = (_argmax_head(self.proto, self.output, self.output_shape[1]) if argmax
                     else self.proto)
            self._sessions[key] = self.model.new_session(proto, None if worker is None else 1)
        return self._sessions[key]

    @property
    def output_shape(self) -> tuple:
        """Shape of the target output for one built batch, ``(B, K, ...)``."""
        return self.shapes[WEIGHTS]

    def target_weights(self, target: Any, out: np.ndarray | None, n: int) -> np.ndarray:
        """``(n, K, ...)`` weights of ``target`` (a ``Target`` or a class shorthand) on the
        output ``out`` (None where the target does not read it)."""
        tgt = self.target(target)
        shape = (n,) + self.output_shape[1:]
        out = np.zeros(shape, np.float32) if out is None else out
        return np.asarray(tgt.resolve(out).weights(out), np.float32)

    def target(self, target: Any) -> targets.Target:
        """``target`` as a ``Target`` of this model's output, checked against the score head."""
        tgt = targets.target(target, output=self.output, activation=self.activation)
        if tgt.output not in (None, self.output):
            raise ValueError(f"the target reads output {tgt.output!r} but this gradient model "
                             f"scores {self.output!r}; build one with output={tgt.output!r}")
        if tgt.activation != self.activation:
            raise ValueError(f"the target's activation is {tgt.activation!r} but this gradient "
                             f"model's score head applies {self.activation!r}; build one with "
                             f"activation={tgt.activation!r}")
        return tgt

    def run(self, x: np.ndarray, target: Any = None, *, target_weights: np.ndarray | None = None,
            extra_inputs: dict[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Outputs, activations and gradients for ``x`` ``(N, ...)``.

        Args:
            target: what the gradients are of: a ``Target`` (``ClassTarget``, ``RegionTarget``,
                ``OutputTarget``), or a class shorthand: an int or ``(N,)`` ints (0-based),
                None: each sample's argmax class (picked inside the graph for ``(N, K)``).
            target_weights: ``(N, *output.shape[1:])`` weights replacing ``target``.
            extra_inputs: the model's other inputs (see ``Model.predict``).
        Returns:
            ``{"outputs": {name: (N, ...)}, "activations": {layer: (N, ...)},
            "gradients": {wrt: (N, ...)}}``, gradients shaped like the input / activation.
        """
        x = self.model.check_input(x)
        if tuple(x.shape[1:]) != tuple(self.shapes[self.model.input_name][1:]):
            raise ValueError(f"this gradient model was built for samples of shape "
                             f"{self.shapes[self.model.input_name][1:]}, got {x.shape[1:]}")
        extra = self.model.check_extra_inputs(extra_inputs)
        n, b = x.shape[0], self.batch_size
        served = self._served_outputs(x, extra_inputs)
        tgt = None if target_weights is not None else self.target(target)
        in_graph = tgt is not None and tgt.argmax and len(self.output_shape) == 2 and served is None
        if tgt is not None and not in_graph:
            out = (served[self.output] if served is not None else self.model.predict(
                x, outputs=self.output, batch_size=b, verbose=False, extra_inputs=extra_inputs)
                if tgt.needs_output else None)
            target_weights = self.target_weights(tgt, out, n)
        if not in_graph:
            target_weights = np.asarray(target_weights, np.float32)
            if target_weights.shape != (n,) + self.output_shape[1:]:
                raise ValueError(f"target_weights must have shape {(n,) + self.output_shape[1:]}, "
                                 f"got {target_weights.shape}")
        starts = list(range(0, n, b))
        workers = min(self.workers, len(starts))

        def work(worker: int | None) -> list:
            session = self._session(in_graph, worker)
            return [self._run_batch(session, x[s:s + b], None if in_graph else target_weights[s:s + b],
                                    extra, n, s) for s in starts[worker or 0::workers]]
        if workers == 1:  # a single run (one image's Grad-CAM) uses every thread itself
            parts = work(None)
        else:
            for worker in range(workers):  # sessions are made here, not in the threads
                self._session(in_graph, worker)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx_xai_grad")
            done = list(self._pool.map(work, range(workers)))
            parts = [done[i % workers][i // workers] for i in range(len(starts))]
        res = {kind: {k: np.concatenate([p[kind][k] for p in parts]) for k in parts[0][kind]}
               for kind in ("outputs", "activations", "gradients")}
        if served is not None:
            first = self.fidelity is None
            self.fidelity = surrogate_graph.fidelity(served[self.output], res["outputs"][self.output],
                                                     self.record)
            surrogate_graph.report(self.fidelity, first)
            res["outputs"] = served
        return res

    def _served_outputs(self, x: np.ndarray, extra_inputs: dict | None) -> dict | None:
        """The served model's outputs (float32) on ``x`` where this gradient model runs on its
        surrogate (targets are chosen on them, the surrogate's fidelity is measured on them);
        None where the model is its own gradient graph."""
        if self.served is None:
            return None
        got = self.served.predict(x, outputs=list(self.spec.outputs), batch_size=self.batch_size,
                                  verbose=False, extra_inputs=extra_inputs)
        return {k: np.asarray(v, np.float32) for k, v in got.items()}

    def _run_batch(self, session, x, w, extra, n_total, start):
        """One run at the built batch size; ``w`` None: each sample's argmax class, picked
        inside the graph (no separate forward pass)."""
        m, b = x.shape[0], self.batch_size
        if m < b:  # static batch: pad with copies of the last sample, drop them after
            x = np.concatenate([x, np.repeat(x[-1:], b - m, 0)])
            if w is not None:
                w = np.concatenate([w, np.zeros((b - m,) + w.shape[1:], w.dtype)])
        feeds = {self.model.input_name: x, **self._zeros}
        if w is not None:
            feeds[WEIGHTS] = w
        for name, value in extra.items():
            feeds[name] = self.model.batch_extra(name, value, m, n_total, start)
            if feeds[name].shape[:1] == (m,) and m < b:
                feeds[name] = np.concatenate([feeds[name], np.repeat(feeds[name][-1:], b - m, 0)])
        if self.spec.seed:
            feeds[self.spec.seed] = np.ones(1, np.float32)
        sp = self.spec
        names = list(sp.outputs) + list(sp.layers.values()) + [sp.grads[s] for s in sp.sources.values()]
        got = dict(zip(names, self.model.run_session(session, feeds, names)))
        grads = {k: got[sp.grads[s]].reshape(self.shapes[s])[:m] for k, s in sp.sources.items()}
        return {"outputs": {o: got[o][:m] for o in sp.outputs},
                "activations": {k: got[v][:m] for k, v in sp.layers.items()},
                "gradients": grads}


def _physical_memory() -> int:
    """Bytes of RAM (a large number where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def _worker_count(model, proto: onnx.ModelProto) -> int:
    """``model.cpu_workers``, fewer when that many sessions' tensors (every tensor of the
    gradient graph, an upper bound) would pass a quarter of the machine's memory."""
    workers = model.cpu_workers
    if workers == 1:
        return 1
    per_session = 4 * sum(_activation_sizes(proto))
    return int(np.clip(_physical_memory() // 4 // max(per_session, 1), 1, workers))


def _activation_sizes(proto: onnx.ModelProto) -> list[int]:
    """Element counts of every statically shaped tensor of ``proto`` but its weights."""
    weights = {t.name for t in proto.graph.initializer}
    return [int(np.prod(shape)) for name, shape in graph.tensor_shapes(proto).items()
            if name not in weights]


def _argmax_head(proto: onnx.ModelProto, output: str, n_classes: int) -> onnx.ModelProto:
    """Copy of a built gradient model whose target weights are computed in the graph as
    one-hot(argmax(output, axis 1)) instead of being fed."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    producer = next(i for i, n in enumerate(g.node) if output in n.output)
    consumers = [i for i, n in enumerate(g.node) if WEIGHTS in n.input]
    if not consumers or min(consumers) <= producer:
        raise UnsupportedModelError("cannot pick the argmax class inside this gradient graph")
    keep = [i for i in g.input if i.name != WEIGHTS]
    del g.input[:]
    g.input.extend(keep)
    h = onnx.helper
    nodes = [
        h.make_node("ArgMax", [output], ["__xai_argmax"], axis=1, keepdims=0, name="__xai_argmax"),
        h.make_node("Constant", [], ["__xai_depth"], name="__xai_depth",
                    value=numpy_helper.from_array(np.array(n_classes, np.int64))),
        h.make_node("Constant", [], ["__xai_onoff"], name="__xai_onoff",
                    value=numpy_helper.from_array(np.array([0.0, 1.0], np.float32))),
        h.make_node("OneHot", ["__xai_argmax", "__xai_depth", "__xai_onoff"], [WEIGHTS],
                    axis=-1, name="__xai_onehot"),
    ]
    for k, node in enumerate(nodes):
        g.node.insert(producer + 1 + k, node)
    return out


def input_shapes(model, batch_size: int, input_shape: Sequence[int] | None,
                  extra_shapes: dict | None) -> dict[str, tuple]:
    shapes = {}
    for info in model.inputs:
        given = (input_shape if info.name == model.input_name else (extra_shapes or {}).get(info.name))
        if given is not None:
            shape = (batch_size,) + tuple(int(s) for s in given)
        else:
            shape = (batch_size,) + tuple(info.shape[1:])
        if len(shape) != len(info.shape) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"input {info.name!r} is {info.describe()}: give its per-sample shape "
                             f"({'input_shape' if info.name == model.input_name else 'extra_shapes'})")
        shapes[info.name] = shape
    return shapes


#: On the CPU, a run's batch is cut until its largest activation fits in this many bytes.
RUN_BYTES = 8 << 20


def _run_batch_size(model, proto: onnx.ModelProto, shapes: dict[str, tuple], batch_size: int) -> int:
    """The built batch for at most ``batch_size`` samples per run: all of them on CUDA; on the
    CPU as many as keep the largest activation within ``RUN_BYTES`` (memory-bound adjoint
    steps then run in cache; ``GradientModel`` spreads the runs over its workers)."""
    if model.device == "gpu":
        return batch_size
    memo = model.memo("largest_activation")
    key = tuple(sorted(shapes.items()))
    if key not in memo:
        memo[key] = max(_activation_sizes(graph.static_shapes(proto, shapes)), default=1)
    return int(np.clip(RUN_BYTES // (4 * memo[key]), 1, batch_size))


def gradient_model(model, wrt: str | Sequence[str] | None = None, *, output: str | None = None,
                   batch_size: int = 1, input_shape: Sequence[int] | None = None,
                   extra_shapes: dict[str, Sequence[int]] | None = None, backend: str = "auto",
                   guided: bool = False, activation: str = "none",
                   use_cache: bool = True) -> GradientModel:
    """Build (or fetch from the Model / disk cache) a gradient model.

    Args:
        model: a ``Model`` (or anything ``Model`` accepts).
        wrt: names to differentiate w.r.t.: the explained input's name and/or target layers
            (tensor, node or dotted module name, see ``graph.resolve_layer``); default: the input.
        output: the model output the target score is read from (default: the first).
        batch_size: the most samples per ONNX Runtime run: the built graph's static batch
            (on the CPU cut to cache-sized runs, see ``RUN_BYTES``); ``run`` splits and pads
            to it.
        input_shape: per-sample shape ``(C, H, W[, D])`` where the model's input has free dims.
        backend: ``"auto"``, ``"portable"`` or ``"ort-training"``.
        guided: guided-backprop rule on ReLU and Clip(0, max) (ReLU6).
        activation: ``"none"``, ``"softmax"`` or ``"sigmoid"`` over the output's class axis
            before the target weights (a ``Target``'s ``activation``).
    """
    from ..runtime import Model

    model = model if isinstance(model, Model) else Model(model)
    wrt = [model.input_name] if wrt is None else [wrt] if isinstance(wrt, str) else list(wrt)
    if not wrt or len(set(wrt)) != len(wrt) or not all(isinstance(w, str) for w in wrt):
        raise ValueError(f"wrt must be distinct names of the input and/or layers, got {wrt!r}")
    output = model.check_outputs(output)[0]
    batch_size = targets.positive_int("batch_size", batch_size)
    backend = _backend(backend)
    shapes = input_shapes(model, 1, input_shape, extra_shapes)
    batch_size = _usable_batch(model, batch_size, shapes)
    served = model  # float16, quantized, old opset: gradients of its float32 surrogate
    model, record = surrogate_graph.surrogate_model(model)
    proto = model.require_proto("gradients")  # rewritten when the batch was made dynamic
    pinned = isinstance(model.input.shape[0] if model.input.shape else None, int)
    shapes = input_shapes(model, batch_size if pinned else _run_batch_size(model, proto, shapes, batch_size),
                          input_shape, extra_shapes)
    request = GradientRequest(tuple(wrt), output, tuple(sorted(shapes.items())), backend,
                              bool(guided), targets.activation(activation))
    memo = model.memo("gradient_models")
    if request not in memo:
        memo[request] = _build(model, proto, request, use_cache)
        if record:
            memo[request].served, memo[request].record = served, record
    return memo[request]


def _usable_batch(model, batch_size: int, shapes: dict[str, tuple]) -> int:
    """``batch_size``, or the model's batch where its graph pins one (exporters often write
    1) and it cannot be made dynamic: tried once on random samples, as ``Model.predict``
    does, when the model has no other inputs (with them, ``predict`` tries on real data)."""
    fixed = model.input.shape[0] if model.input.shape else None
    if not isinstance(fixed, int) or batch_size == fixed:
        return batch_size
    if len(model.inputs) == 1:
        probe = np.random.default_rng(0).standard_normal((2,) + tuple(shapes[model.input_name][1:]))
        model.plan_batch(probe.astype(model.input.dtype), batch_size, {})
    batch = model.input.shape[0]
    return batch_size if not isinstance(batch, int) else batch


def gradients(model, x: np.ndarray, wrt: str | Sequence[str] | None = None,
              target: Any = None, *, batch_size: int = 8, **options) -> dict:
    """One-shot ``gradient_model(model, wrt, ...).run(x, target)`` (see both)."""
    run_keys = ("target_weights", "extra_inputs")
    run_args = {k: options.pop(k) for k in run_keys if k in options}
    from ..runtime import Model

    model = model if isinstance(model, Model) else Model(model)
    x = model.check_input(x)
    if isinstance(target, targets.Target) and "activation" not in options:
        options["activation"] = target.activation
    gm = gradient_model(model, wrt, batch_size=min(batch_size, x.shape[0]),
                        input_shape=options.pop("input_shape", x.shape[1:]), **options)
    return gm.run(x, target, **run_args)


def score_graph(model, proto: onnx.ModelProto, request: GradientRequest
                ) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    """``proto`` at the request's static shapes with a zero probe on each layer of ``wrt``
    and the score head ``score = Σ weights · activation(output)``, ready to differentiate.
    Returns (graph, wrt name → gradient source, layer → exposed activation)."""
    wrt, output = request.wrt, request.output
    static = graph.static_shapes(proto, request.input_shapes)
    sources, layers = {}, {}
    input_type = graph.tensor_types(static).get(model.input_name)
    for name in wrt:
        if name == model.input_name:
            if input_type not in graph.FLOAT_TYPES:
                raise UnsupportedModelError(
                    f"input {name!r} is not floating point: an integer/quantized input has no "
                    "gradient; export a float model, or " + TOKEN_HINT)
            sources[name] = name
            continue
        tensor = graph.resolve_layer(static, name)
        if graph.tensor_types(static).get(tensor) not in graph.FLOAT_TYPES:
            raise UnsupportedModelError(f"layer {name!r} (tensor {tensor!r}) is not floating "
                                        "point (quantized?): it has no gradient")
        probe, act = f"{tensor}__xai_probe", f"{tensor}__xai_act"
        if probe in sources.values():
            raise ValueError(f"wrt names {wrt} name the same tensor {tensor!r} twice")
        static = graph.add_probe(static, tensor, probe, act)
        sources[name], layers[name] = probe, act
    static = passes.conv_padding(static)
    static = graph.add_score_head(static, output, WEIGHTS, SCORE, request.activation)
    for name, src in sources.items():
        if not graph.depends_on(static, [src], SCORE):
            what = "input" if src == name else "layer"
            raise (UnsupportedModelError if what == "input" else ValueError)(
                f"output {output!r} does not depend on {what} {name!r} through floating-point "
                "operations" + (" (a quantized/integer model has no float path to its input)"
                                if what == "input" else "; choose a layer before the output"))
    # expose activations; keep the model outputs and the score
    for act in layers.values():
        static.graph.output.append(onnx.helper.make_tensor_value_info(act, onnx.TensorProto.FLOAT, None))
    return static, sources, layers


def _cached_spec(built: onnx.ModelProto, sources, layers, outputs) -> _Spec | None:
    """The spec stored in a cached model, or None where it does not fit the request."""
    try:
        m = json.loads(next(p.value for p in built.metadata_props if p.key == _META))
        grads, names = dict(m["grads"]), {o.name for o in built.graph.output}
    except (StopIteration, ValueError, KeyError, TypeError):
        return None
    if set(grads) != set(sources.values()) or not set(grads.values()) <= names \
            or not set(layers.values()) | set(outputs) <= names:
        return None
    return _Spec(sources, layers, tuple(outputs), grads, m.get("seed"))


def _build(model, proto: onnx.ModelProto, request: GradientRequest, use_cache: bool) -> GradientModel:
    static, sources, layers = score_graph(model, proto, request)
    all_shapes = graph.tensor_shapes(static)
    run_shapes = {s: all_shapes[s] for s in sources.values()} | {WEIGHTS: all_shapes[WEIGHTS]}
    run_shapes.update(request.input_shapes)
    digest = None
    if use_cache:
        digest = cache.key(model=model.digest, wrt=list(request.wrt), output=request.output,
                           shapes=list(request.shapes), backend=request.backend,
                           guided=request.guided, activation=request.activation)
        built = cache.load(digest)
        spec = None if built is None else _cached_spec(built, sources, layers, model.output_names)
        if spec is not None:
            return GradientModel(model, built, spec, request, run_shapes)
        if built is not None:  # verified bytes, yet not a gradient model of these sources
            cache.logger.warning("gradient cache: entry %s does not fit this request; rebuilding",
                                 digest)
            cache.remove(digest)
    srcs = list(sources.values())
    if request.backend == "portable":
        built, grads, seed = portable.build(static, srcs, SCORE, guided=request.guided)
    else:
        built, grads = ort_training.build(static, srcs, SCORE, guided=request.guided,
                                          keep=list(model.output_names) + list(layers.values()))
        seed = None
    spec = _Spec(sources, layers, tuple(model.output_names), grads, seed)
    if digest is not None:
        onnx.helper.set_model_props(built, {_META: json.dumps({"grads": grads, "seed": seed})})
        cache.store(digest, built)
    return GradientModel(model, built, spec, request, run_shapes)
