"""registry: every explanation method, described once by the class (or function) that is it.

``@method(...)`` on a method class records its name (for the command line and export), its
kind, a one-line summary and which command-line flags set which constructor arguments; the
class itself carries its defaults (``default_postprocessing``), its NumPy rule and, when it
can be written into an ONNX graph, its graph rule (``graph_rule``). The command line,
``export_explainer`` and the reports read this registry and nothing else::

    @method("gradcam", kind="cam", summary="Grad-CAM on a convolutional layer")
    class GradCAM(CAMMethod):
        ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["MethodInfo", "method", "get", "names", "infos", "KINDS", "FLAGS"]

#: kind → what the method needs: "cam" (a target layer), "gradient" (input gradients),
#: "occlusion" / "perturbation" (forward passes of perturbed copies), "matlab" (a
#: MATLAB-style function of one observation), "token" (token models: integer ids in,
#: ``(B, T)`` per-token scores out; ``onnx_xai.text``), "attention" (a transformer's
#: attention probabilities; ``engines.attention``)
KINDS = ("cam", "gradient", "occlusion", "perturbation", "matlab", "token", "attention")

#: the command line's method flags (``--mask-size`` → ``mask_size``, ...)
FLAGS = ("layer", "batch", "mask_size", "overlap", "stride", "n_masks", "samples", "steps",
         "seed")


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows of one method."""

    name: str
    kind: str
    summary: str
    impl: Any  # the class (or MATLAB-style function)
    flags: dict[str, str] = field(default_factory=dict)  # CLI flag → constructor argument
    defaults: dict[str, Any] = field(default_factory=dict)  # CLI defaults of arguments
    signed: bool = False  # maps have both signs (drawn on a diverging scale)
    score: str = "none"  # the command line's target: the class logit ("none") or its "softmax"

    @property
    def exportable(self) -> bool:
        """Whether ``export_explainer`` can write this method into a graph: its class defines
        ``graph_rule`` itself (a subclass changing the computation does not inherit it)."""
        return callable(vars(self.impl).get("graph_rule")) if isinstance(self.impl, type) else False


_REGISTRY: dict[str, MethodInfo] = {}


def method(name: str, *, kind: str, summary: str, flags: dict[str, str] | None = None,
           defaults: dict[str, Any] | None = None, signed: bool = False,
           score: str = "none") -> Callable:
    """Class (or function) decorator: register the method under ``name``; the class gets
    its ``MethodInfo`` as ``cls.info``. A registered class explains a ``Target`` with
    ``explain(x, target) → (B, 1 or C, *spatial)`` (higher = more important); ``score`` is
    the activation of the command line's class target (``"none"``: the logit)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    unknown = set(flags or {}) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown command-line flags {sorted(unknown)}; the flags are {FLAGS}")

    def register(impl: Any) -> Any:
        if name in _REGISTRY and _REGISTRY[name].impl.__qualname__ != impl.__qualname__:
            raise ValueError(f"method name {name!r} is taken by {_REGISTRY[name].impl.__qualname__}")
        info = MethodInfo(name, kind, summary, impl, dict(flags or {}), dict(defaults or {}), signed, score)
        _REGISTRY[name] = info
        impl.info = info
        return impl
    return register


def names() -> list[str]:
    """Registered method names, in registration order."""
    _load()
    return list(_REGISTRY)


def infos() -> list[MethodInfo]:
    """Every registered method."""
    _load()
    return list(_REGISTRY.values())


def get(name: str) -> MethodInfo:
    """The method ``name``, or ``ValueError`` listing the registered ones."""
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"method {name!r} is unknown; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _load() -> None:
    """Import the modules that register methods (the package does on import)."""
    import onnx_xai  # noqa: F401  (importing the package registers every method)
