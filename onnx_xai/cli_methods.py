"""The command line's view of the method registry (``onnx_xai.registry``).

Each registered method says which ``--flags`` set which of its arguments; ``--option
KEY=VALUE`` sets any other argument its class takes (checked: a key it does not take is an
error). Every runner returns one map per input, ``(*spatial)`` float32, where higher means
"more important for the target class".
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from . import registry, targets
from .autolayer import auto_layer
from .engines.cam import minmax_normalizer
from .errors import UnsupportedModelError
from .registry import MethodInfo
from .runtime import Model

# arguments the command line sets itself, never from --option
_RESERVED = {"model", "net", "X", "channel_idx", "verbose", "nn_module"}


def available() -> list[str]:
    """Names of the registered methods."""
    return registry.names()


def get(name: str) -> MethodInfo:
    """The method ``name``, or ``ValueError`` listing the registered ones."""
    return registry.get(name)


def parse_methods(text: str) -> list[str]:
    """``"occlusion,gradcam"`` → checked list of names (no duplicates)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no method given; available: " + ", ".join(available()))
    for n in names:
        get(n)
    return list(dict.fromkeys(names))


def default_layer(model: Model, sidecar: dict, input_shape: tuple | None = None) -> str:
    """The CAM layer: the sidecar's ``cam_layer``, else the automatic one
    (``onnx_xai.autolayer.auto_layer`` at per-sample ``input_shape``, default the model's);
    ``ValueError`` saying why there is none, with candidates."""
    if sidecar.get("cam_layer"):
        return str(sidecar["cam_layer"])
    try:
        return auto_layer(model, input_shape).tensor
    except UnsupportedModelError as exc:
        raise ValueError(str(exc)) from None


def parameters(method: MethodInfo) -> list[str]:
    """The arguments of the method's class that ``--option`` may set."""
    return [k for k in inspect.signature(method.impl).parameters if k not in _RESERVED]


def method_arguments(name: str, options: dict) -> dict:
    """The method's constructor arguments from the CLI ``options`` (flags by name, ``--option``
    pairs under ``"extra"``): defaults, then flags, then ``--option``. An ``--option`` key the
    method does not take raises ``ValueError`` listing those it does."""
    method = get(name)
    valid = parameters(method)
    params = dict(method.defaults)
    for opt, arg in method.flags.items():
        if options.get(opt) is not None:
            params[arg] = options[opt]
    extra = dict(options.get("extra") or {})
    unknown = sorted(set(extra) - set(valid))
    if unknown:
        raise ValueError(f"--option {', '.join(unknown)}: not an argument of method {name!r} "
                         f"({method.impl.__name__}); it takes: {', '.join(valid)}")
    params.update(extra)
    return params


def check_options(names: list[str], options: dict, model: Model, sidecar: dict) -> None:
    """Fail early (before any input is read) on ``--option`` keys no chosen method takes and
    on values its class refuses: each method's class is built once from the options."""
    for name in names:
        if name == "embedded":
            continue
        method = get(name)
        params = _constructor_arguments(method, method_arguments(name, options), model, sidecar)
        if method.kind != "matlab":
            _build(name, lambda: method.impl(model, **params), options)


def _constructor_arguments(method: MethodInfo, params: dict, model: Model, sidecar: dict) -> dict:
    """``params`` completed with what the command line decides itself (CAM layer and hot = 1)."""
    if method.kind == "cam":  # hot = 1: MONAI's default normaliser would flip the map
        params.setdefault("target_layers", default_layer(model, sidecar))
        params.setdefault("postprocessing", minmax_normalizer)
    if method.kind == "matlab":
        params.setdefault("activation", "softmax")
    return params


def _build(name: str, build: Callable[[], Any], options: dict) -> Any:
    """``build()``, with an error from a ``--option`` value named after the option."""
    extra = options.get("extra") or {}
    try:
        return build()
    except (ValueError, TypeError) as exc:
        if not extra:
            raise
        given = ", ".join(f"{k}={v!r}" for k, v in extra.items())
        raise ValueError(f"method {name!r} with --option {given}: {exc}") from None


def _to_map(result: Any, spatial: tuple[int, ...]) -> np.ndarray:
    """A method's output → one ``spatial``-shaped map (|·| summed over channels for gradients)."""
    arr = np.asarray(result[0] if isinstance(result, tuple) else result, np.float32)
    if arr.shape == spatial:
        return arr
    if arr.ndim == len(spatial) + 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == len(spatial) + 1:
        return arr[0] if arr.shape[0] == 1 else np.abs(arr).sum(axis=0)
    raise ValueError(f"method returned shape {arr.shape}, expected a map over {spatial}")


def run(name: str, model: Model, x: np.ndarray, target: int | targets.Target, options: dict, sidecar: dict,
        verbose: bool = False) -> tuple[np.ndarray, dict]:
    """Explain ``x`` ``(1, C, *spatial)`` for class ``target`` (or any ``Target``: a region, a
    detection) → (map over ``spatial``, parameters used).

    The class target is the logit, or its softmax probability for methods registered with
    ``score="softmax"`` (occlusion, RISE: the probability drop / weight). ``options["feeds"]``:
    the model's other inputs for ``x`` (see ``extra_for``)."""
    method = get(name)
    extra_inputs = options.get("feeds") or {}
    params = _constructor_arguments(method, method_arguments(name, options), model, sidecar)
    spatial = tuple(x.shape[2:])
    takes_verbose = "verbose" in inspect.signature(method.impl).parameters
    run_params = dict(params, verbose=verbose) if takes_verbose else params
    if method.kind == "matlab":  # a MATLAB-style function of one observation
        extra = {"extra_inputs": extra_inputs} if extra_inputs else {}
        result = _build(name, lambda: method.impl(model, x[0], target, **run_params, **extra), options)
        return _to_map(result, spatial), _recordable(params)
    explainer = _build(name, lambda: method.impl(model, **run_params), options)
    if not isinstance(target, targets.Target):
        target = targets.ClassTarget(index=target, activation=method.score)
    result = explainer.explain(x, target, **extra_inputs)
    return _to_map(result, spatial), _recordable(params)


def extra_arrays(model: Model, files: dict[str, str] | None) -> dict[str, np.ndarray]:
    """``--extra NAME=FILE.npy`` inputs read and checked against ``model``'s other inputs
    (names, dtypes, finite); ``ValueError`` naming the file or the input otherwise."""
    arrays = {}
    for name, path in (files or {}).items():
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except Exception as exc:  # numpy raises several types for bad files
            raise ValueError(f"--extra {name}={path}: cannot read it as a .npy array: {exc}") from None
    return model.check_extra_inputs(arrays) if arrays or len(model.inputs) > 1 else {}


def extra_for(model: Model, extra: dict[str, np.ndarray], item: int | None) -> dict[str, np.ndarray]:
    """The extra inputs of one explained input: an array shaped like one sample (no batch
    axis) gets one; a batch of 1 is used as it is (every input); a leading axis of N > 1
    holds one row per input, in the order given (``item``: this input's index)."""
    out = {}
    for name, value in extra.items():
        if model.batch_axis(name, value[None]):
            value = value[None]
        if model.batch_axis(name, value) and value.shape[0] > 1:
            if item is None or item >= value.shape[0]:
                raise ValueError(f"--extra {name}: {value.shape[0]} rows (one per input) but input "
                                 f"{'?' if item is None else item + 1} has none; give one row per "
                                 "input, or one for all")
            value = value[item:item + 1]
        out[name] = value
    return out


def _recordable(params: dict) -> dict:
    """Parameters as JSON can hold them (functions by name)."""
    return {k: getattr(v, "__name__", repr(v)) if callable(v) else v for k, v in params.items()}


def run_embedded(model: Model, x: np.ndarray, target: int) -> np.ndarray:
    """Run an exported explainer (a model with a ``saliency`` output) → its map for ``x``,
    higher = more important: a map whose metadata says ``onnx_xai.hot = "low"`` (MONAI's
    flipped GradCAM / GradCAMpp / CAM normalisation) is turned round (``max + min - map``,
    ``1 - map`` when normalised), as ``--method gradcam`` draws it."""
    from .export import explainer_info

    hot = explainer_info(model)["hot"]
    names = model.input_names + [i.name for i in model.optional_inputs]
    feeds = {"class_idx": np.array([target], np.int64)} if "class_idx" in names else None
    sal = model.predict(x, outputs=["saliency"], extra_inputs=feeds, verbose=False)["saliency"]
    if sal.ndim == x.ndim and sal.shape[1] != x.shape[1] and sal.shape[1:] == x.shape[2:] + x.shape[1:2]:
        sal = np.moveaxis(sal, -1, 1)  # input-shaped saliency of a channel-last model, x folded
    smap = _to_map(sal, tuple(x.shape[2:]))
    if hot == "low":
        finite = smap[np.isfinite(smap)]
        if finite.size:
            smap = (finite.max() + finite.min() - smap).astype(np.float32)
    return smap
