"""Method registry of the ``onnx-xai`` command: method names → the library's classes.

A method is listed only when its class can be imported from ``onnx_xai``, so the command
grows as methods land. Every runner returns one map per input, ``(*spatial)`` float32,
where higher means "more important for the target class".
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import onnx_xai

from .methods.cam import minmax_normalizer
from .runtime import Model
from . import targets


@dataclass
class Method:
    """One CLI method: the ``onnx_xai`` attribute it needs, how options map to arguments."""

    name: str
    attr: str
    kind: str  # "occlusion", "matlab", "cam", "gradient", "rise"
    help: str
    options: dict[str, str] = field(default_factory=dict)  # CLI option → constructor argument
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return getattr(onnx_xai, self.attr, None) is not None


_CAM = {"layer": "target_layers", "batch": "batch_size"}
_GRAD = {"batch": "batch_size"}
_NOISY = dict(_GRAD, samples="n_samples", seed="seed")
METHODS = {m.name: m for m in [
    Method("occlusion", "OcclusionSensitivity", "occlusion",
           "MONAI-style occlusion sensitivity (score drop when a window is hidden)",
           {"mask_size": "mask_size", "overlap": "overlap", "batch": "n_batch"},
           {"mask_size": 32, "overlap": 0.5, "n_batch": 16}),
    Method("matlab-occlusion", "occlusion_sensitivity", "matlab",
           "MATLAB-style occlusionSensitivity (score change, softmax scores)",
           {"mask_size": "mask_size", "stride": "stride", "batch": "mini_batch_size"},
           {"mini_batch_size": 16}),
    Method("gradcam", "GradCAM", "cam", "Grad-CAM on a convolutional layer", _CAM),
    Method("gradcampp", "GradCAMpp", "cam", "Grad-CAM++ (MONAI's weights)", _CAM),
    Method("cam", "CAM", "cam", "class activation map (fc weights on the last conv layer)", _CAM),
    Method("scorecam", "ScoreCAM", "cam", "Score-CAM (gradient-free, masked forward passes)", _CAM),
    Method("layercam", "LayerCAM", "cam", "Layer-CAM", _CAM),
    Method("xgradcam", "XGradCAM", "cam", "XGrad-CAM", _CAM),
    Method("hirescam", "HiResCAM", "cam", "HiResCAM (elementwise gradient x activation)", _CAM),
    Method("eigencam", "EigenCAM", "cam", "EigenCAM (first principal component, class-agnostic)", _CAM),
    Method("vanilla", "VanillaGrad", "gradient", "input gradient (absolute, summed over channels)", _GRAD),
    Method("inputxgrad", "InputXGradient", "gradient", "input x gradient", _GRAD),
    Method("smoothgrad", "SmoothGrad", "gradient", "SmoothGrad", _NOISY, {"n_samples": 25}),
    Method("guided", "GuidedBackpropGrad", "gradient", "guided backpropagation", _GRAD),
    Method("guided-smoothgrad", "GuidedBackpropSmoothGrad", "gradient", "SmoothGrad of guided backpropagation",
           _NOISY, {"n_samples": 25}),
    Method("ig", "IntegratedGradients", "gradient", "integrated gradients (zero baseline)",
           {"steps": "n_steps", "seed": "seed", "batch": "internal_batch_size"}, {"n_steps": 50}),
    Method("rise", "RISE", "rise", "RISE (random masks weighted by the class score)",
           {"n_masks": "n_masks", "seed": "seed", "batch": "n_batch"}, {"n_masks": 1000, "seed": 0}),
]}
# arguments the command line sets itself, never from --option
_RESERVED = {"model", "net", "X", "channel_idx", "verbose"}


def available() -> list[str]:
    """Names of the methods whose classes this installation has."""
    return [name for name, m in METHODS.items() if m.available]


def get(name: str) -> Method:
    """The method ``name``, or ``ValueError`` saying which ones exist here."""
    method = METHODS.get(name)
    if method is None or not method.available:
        why = "is not available in this version" if method else "is unknown"
        raise ValueError(f"method {name!r} {why}; available: {', '.join(available())}")
    return method


def parse_methods(text: str) -> list[str]:
    """``"occlusion,gradcam"`` → checked list of names (no duplicates)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no method given; available: " + ", ".join(available()))
    for n in names:
        get(n)
    return list(dict.fromkeys(names))


def default_layer(model: Model, sidecar: dict) -> str:
    """The CAM layer: the sidecar's ``cam_layer``, else the last layer with a spatial extent."""
    if sidecar.get("cam_layer"):
        return str(sidecar["cam_layer"])
    layers = [l for l in model.layers() if l.shape and len(l.shape) in (4, 5) and
              all(isinstance(s, int) and s > 1 for s in l.shape[2:])]
    if not layers:
        raise ValueError("cannot find a convolutional layer for CAM; pass --layer NAME "
                         "(see `onnx-xai layers MODEL`)")
    order = {node.name: i for i, node in enumerate(model.proto.graph.node)}
    return max(layers, key=lambda l: order.get(l.node, -1)).node


def parameters(method: Method) -> list[str]:
    """The arguments of the method's class that ``--option`` may set."""
    params = inspect.signature(getattr(onnx_xai, method.attr)).parameters
    return [k for k in params if k not in _RESERVED]


def method_arguments(name: str, options: dict) -> dict:
    """The method's constructor arguments from the CLI ``options`` (flags by name, ``--option``
    pairs under ``"extra"``): defaults, then flags, then ``--option``. An ``--option`` key the
    method does not take raises ``ValueError`` listing those it does."""
    method = get(name)
    valid = parameters(method)
    params = dict(method.defaults)
    for opt, arg in method.options.items():
        if options.get(opt) is not None:
            params[arg] = options[opt]
    extra = dict(options.get("extra") or {})
    unknown = sorted(set(extra) - set(valid))
    if unknown:
        raise ValueError(f"--option {', '.join(unknown)}: not an argument of method {name!r} "
                         f"({method.attr}); it takes: {', '.join(valid)}")
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
            _build(name, lambda: getattr(onnx_xai, method.attr)(model, **params), options)


def _constructor_arguments(method: Method, params: dict, model: Model, sidecar: dict) -> dict:
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


def _call_with_target(obj: Any, x: np.ndarray, target: int) -> Any:
    params = inspect.signature(obj.__call__).parameters
    for key in ("class_idx", "index", "target", "channel_idx"):
        if key in params:
            return obj(x, **{key: target})
    return obj(x, target)


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


def run(name: str, model: Model, x: np.ndarray, target: int, options: dict, sidecar: dict,
        verbose: bool = False) -> tuple[np.ndarray, dict]:
    """Explain ``x`` ``(1, C, *spatial)`` for class ``target`` → (map over ``spatial``, parameters used)."""
    method = get(name)
    params = _constructor_arguments(method, method_arguments(name, options), model, sidecar)
    cls = getattr(onnx_xai, method.attr)
    spatial = tuple(x.shape[2:])
    run_params = dict(params, verbose=verbose) if "verbose" in inspect.signature(cls).parameters else params
    if method.kind == "matlab":
        result = _build(name, lambda: cls(model, x[0], target, **run_params), options)
        return _to_map(result, spatial), _recordable(params)
    explainer = _build(name, lambda: cls(model, **run_params), options)
    if method.kind == "occlusion":  # MONAI returns the occluded probability: turn it into a drop
        occ = np.asarray(explainer(x)[0], np.float32)[0, target]
        base = targets.class_scorer(True)(model.predict(x, verbose=False))[0, target]
        return (np.float32(base) - occ).astype(np.float32), _recordable(params)
    return _to_map(_call_with_target(explainer, x, target), spatial), _recordable(params)


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
    smap = _to_map(sal, tuple(x.shape[2:]))
    if hot == "low":
        finite = smap[np.isfinite(smap)]
        if finite.size:
            smap = (finite.max() + finite.min() - smap).astype(np.float32)
    return smap
