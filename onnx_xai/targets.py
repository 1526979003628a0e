"""targets: *what* to explain and *how much* — every argument that says so, checked once.

A target turns a batch of one model output ``(N, K, *s)`` into one score per sample::

    score[n] = Σ weights[n] · activate(output[n])

``weights`` (shaped like the output) pick a class, a class over a region of a dense output,
or an element of any output tensor. Black-box methods (occlusion, RISE, ScoreCAM, metrics)
call the target on the outputs of perturbed copies; gradient methods feed the same weights
(and the same activation) to the gradient model's score head, so both explain one score.

``target(...)`` also turns the shorthands users already type — MONAI's ``class_idx`` /
``index``, Captum's ``target``, MATLAB's ``channel_idx``, pytorch-grad-cam's
``ClassifierOutputTarget`` — into a ``Target``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from .finite import check_finite_array, check_number, positive_int
from .runtime import Model, ModelSource, sigmoid, softmax

__all__ = ["Target", "ClassTarget", "RegionTarget", "OutputTarget", "target", "ACTIVATIONS",
           "positive_int", "check_number", "as_model", "per_sample_classes", "class_list",
           "top_class", "activation", "model_argument", "class_scorer", "item_scorers",
           "broadcast_to_input", "box_mask"]

ACTIVATIONS = ("none", "softmax", "sigmoid")


# ---------------------------------------------------------------------------- arguments
def as_model(model: ModelSource, **options: Any) -> Model:
    """``model`` as a ``Model`` (a ``Model`` is used as it is; anything else is loaded with ``options``)."""
    return model if isinstance(model, Model) else Model(model, **options)


def model_argument(model: Any, nn_module: Any, owner: str = "this class") -> Any:
    """The model given as ``model`` (positionally) or as MONAI's ``nn_module=`` keyword:
    exactly one of them, else ``TypeError`` saying so."""
    if nn_module is not None and model is not None:
        raise TypeError(f"{owner} got the model twice: pass it as the first argument (model) or "
                        "as nn_module= (MONAI's name), not both")
    if nn_module is not None:
        return nn_module
    if model is None:
        raise TypeError(f"{owner} needs a model: the first argument, or nn_module= (MONAI's name)")
    return model


def broadcast_to_input(name: str, value: Any, x: np.ndarray) -> np.ndarray:
    """A finite number or array broadcastable to ``x`` (a baseline) → ``x``-shaped, ``x``'s
    dtype, contiguous; ``ValueError`` naming ``name`` when it is not finite, overflows the
    dtype or does not broadcast."""
    b = check_finite_array(name, value)
    with np.errstate(over="ignore"):
        b = b.astype(x.dtype)
    if not np.isfinite(b).all():
        raise ValueError(f"{name} overflows {x.dtype.name}")
    try:
        return np.ascontiguousarray(np.broadcast_to(b, x.shape))
    except ValueError:
        raise ValueError(f"{name} of shape {b.shape} does not broadcast to the input {x.shape}: give "
                         "a number or an array shaped like x or one sample") from None


def _ints(value: Any, name: str) -> np.ndarray:
    idx = np.asarray(value)
    if idx.ndim > 1 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an int or a sequence of ints, got {value!r}")
    return idx.reshape(-1).astype(np.int64)


def _in_range(idx: np.ndarray, n_classes: int | None, name: str) -> np.ndarray:
    if n_classes is not None and ((idx < 0) | (idx >= n_classes)).any():
        raise ValueError(f"{name} {idx.tolist()} out of range: the output has {n_classes} classes "
                         f"(0-based indices 0..{n_classes - 1})")
    return idx


def per_sample_classes(index: Any, n: int, n_classes: int | None = None,
                       name: str = "class_idx") -> np.ndarray | None:
    """None, an int or ``n`` ints (one class per sample) → None or ``(n,)`` int64."""
    if index is None:
        return None
    idx = _ints(index, name)
    if idx.size not in (1, n):
        raise ValueError(f"{name} must be None, an int or {n} ints (one per sample), got {index!r}")
    return _in_range(np.broadcast_to(idx, (n,)).copy(), n_classes, name)


def class_list(index: Any, n_classes: int, name: str = "index") -> list[int] | None:
    """None, an int or several ints (classes explained for every sample) → None or a list."""
    if index is None:
        return None
    return _in_range(_ints(index, name), n_classes, name).tolist()


def top_class(out: np.ndarray) -> np.ndarray:
    """``(N,)`` argmax class of ``(N, K, *s)`` outputs (of each class's largest value)."""
    out = np.asarray(out)
    if out.ndim < 2:
        raise ValueError(f"the output has shape {out.shape}: one value per sample, not class scores "
                         "(B, K, ...); explain it with an OutputTarget")
    return out.reshape(out.shape[0], out.shape[1], -1).max(-1).argmax(1)


def activation(name: Any) -> str:
    """``"none"``, ``"softmax"`` or ``"sigmoid"`` (None and False mean "none")."""
    name = "none" if name in (None, False) else name
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
    return name


def activate(out: np.ndarray, name: str) -> np.ndarray:
    """``out`` ``(N, K, ...)`` with the activation applied over the class axis (float64)."""
    out = np.asarray(out, np.float64)
    if name == "softmax":
        return softmax(out, axis=1)
    return sigmoid(out) if name == "sigmoid" else out


# ---------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """Base of all targets: the output read (``None``: the model's first) and its activation."""

    output: str | None = None
    activation: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "activation", activation(self.activation))
        if self.output is not None and not isinstance(self.output, str):
            raise ValueError(f"output must be an output name or None, got {self.output!r}")

    @property
    def needs_output(self) -> bool:
        """Whether ``weights`` reads the output's values (not only its shape)."""
        return False

    def weights(self, out: np.ndarray) -> np.ndarray:
        """``(N, *out.shape[1:])`` float32 weights of the score over the (activated) output."""
        raise NotImplementedError

    def resolve(self, out: np.ndarray) -> "Target":
        """This target with every choice made on ``out`` ``(N, ...)`` fixed, one per sample
        (the argmax class of an unperturbed input stays the class of its perturbed copies)."""
        return self

    def select(self, rows: np.ndarray) -> "Target":
        """A resolved target for the samples ``rows`` of the batch it was resolved on."""
        return self

    @property
    def argmax(self) -> bool:
        return False

    def __call__(self, out: np.ndarray) -> np.ndarray:
        """``(N,)`` float64 scores of a batch of outputs ``(N, ...)``."""
        out = np.asarray(out)
        w = self.weights(out)
        return (activate(out, self.activation) * w).reshape(len(out), -1).sum(1)


@dataclass(frozen=True)
class ClassTarget(Target):
    """One class per sample (``index``: an int for all, N ints, or None: each sample's argmax),
    its output summed over the positions of a dense output ``(N, K, *s)``."""

    index: Any = None

    def classes(self, out: np.ndarray) -> np.ndarray:
        """``(N,)`` class of each sample of ``out``."""
        if self.index is None:
            return top_class(out)
        return per_sample_classes(self.index, len(out), np.shape(out)[1], "class index")

    @property
    def needs_output(self) -> bool:
        return self.index is None

    def resolve(self, out: np.ndarray) -> "ClassTarget":
        return replace(self, index=self.classes(out))

    def select(self, rows: np.ndarray) -> "ClassTarget":
        if self.index is None or np.ndim(self.index) == 0:
            return self
        return replace(self, index=np.asarray(self.index)[rows])

    @property
    def argmax(self) -> bool:
        """Whether this is the plain "each sample's top class" target."""
        return type(self) is ClassTarget and self.index is None

    def weights(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out)
        if out.ndim < 2:
            raise ValueError(f"the output has shape {out.shape}: one value per sample, not class scores "
                             "(B, K, ...); explain it with an OutputTarget, or export the model with a "
                             "(B, 1) output")
        w = np.zeros(out.shape, np.float32)
        w[np.arange(len(out)), self.classes(out)] = 1.0
        return w


@dataclass(frozen=True)
class RegionTarget(ClassTarget):
    """Class ``index`` of a dense output ``(N, K, *s)`` summed (``reduce="sum"``) or averaged
    over a region: a mask ``(*s)`` / ``(N, *s)`` (any weights), an integer box ``(x0, y0, x1,
    y1)`` (2D) or ``(x0, y0, z0, x1, y1, z1)`` (3D; ``box_mask``), or ``"predicted"``: where the
    class is the argmax (Seg-Grad-CAM)."""

    region: Any = "predicted"
    reduce: str = "sum"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got {self.reduce!r}")

    @property
    def needs_output(self) -> bool:
        return self.index is None or isinstance(self.region, str)

    def resolve(self, out: np.ndarray) -> "RegionTarget":
        fixed = super().resolve(out)
        return replace(fixed, region=np.ascontiguousarray(fixed.mask(out)))

    def select(self, rows: np.ndarray) -> "RegionTarget":
        return replace(super().select(rows), region=np.asarray(self.region)[rows])

    def mask(self, out: np.ndarray) -> np.ndarray:
        """``(N, *s)`` float32 region weights for the dense output ``out``."""
        n, spatial = len(out), tuple(np.shape(out)[2:])
        if not spatial:
            raise ValueError(f"a region target needs a dense output (N, K, *spatial), got {np.shape(out)}")
        if isinstance(self.region, str):
            if self.region != "predicted":
                raise ValueError(f"region must be a mask, a box or 'predicted', got {self.region!r}")
            cls = self.classes(out).reshape((n,) + (1,) * len(spatial))
            return (np.asarray(out).argmax(1) == cls).astype(np.float32)
        region = np.asarray(self.region)
        if region.shape == (2 * len(spatial),) and len(spatial) in (2, 3) and region.dtype.kind in "iu":
            return np.broadcast_to(box_mask(region, spatial), (n,) + spatial)
        if region.shape not in (spatial, (1,) + spatial, (n,) + spatial):
            raise ValueError(f"region mask must have shape {spatial} or {(n,) + spatial} (the output's "
                             f"spatial dims), got {region.shape}")
        m = region.astype(np.float32)
        if not np.isfinite(m).all():
            raise ValueError("region mask holds NaN or inf")
        return np.broadcast_to(m, (n,) + spatial)

    def weights(self, out: np.ndarray) -> np.ndarray:
        w = super().weights(out)
        m = self.mask(out)
        if self.reduce == "mean":
            total = m.reshape(len(m), -1).sum(1).reshape((-1,) + (1,) * (m.ndim - 1))
            m = m / np.where(total > 0, total, 1.0)
        return w * m[:, None]


def box_mask(box: Any, spatial: tuple[int, ...]) -> np.ndarray:
    """``spatial``-shaped float32 mask of an integer box, end exclusive: ``(x0, y0, x1, y1)``
    over ``(H, W)`` (x along W), or ``(x0, y0, z0, x1, y1, z1)`` over ``(H, W, D)`` (z along D)."""
    b = [int(v) for v in np.asarray(box).reshape(-1)]
    d = len(spatial)
    lo, hi = b[:d], b[d:]
    axes = (1, 0, 2)[:d]  # x → W (axis 1), y → H (axis 0), z → D (axis 2)
    if len(b) != 2 * d or any(not 0 <= lo[i] < hi[i] <= spatial[a] for i, a in enumerate(axes)):
        raise ValueError(f"box {b} is empty or outside the output's spatial shape {spatial}: give "
                         f"{'(x0, y0, x1, y1) over (H, W)' if d == 2 else '(x0, y0, z0, x1, y1, z1) over (H, W, D)'}"
                         ", end exclusive")
    m = np.zeros(spatial, np.float32)
    sl = [slice(None)] * d
    for i, a in enumerate(axes):
        sl[a] = slice(lo[i], hi[i])
    m[tuple(sl)] = 1.0
    return m


@dataclass(frozen=True)
class OutputTarget(Target):
    """One element of a named output (``index`` into a sample's ``out[n]``: an int into the
    flattened sample, or a tuple), or the sum of the whole sample (``index=None``) — a
    regression output ``(N,)`` / ``(N, 1)``, a logit of a multi-head model, an embedding dim."""

    index: Any = None

    def weights(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out)
        w = np.zeros(out.shape, np.float32)
        if self.index is None:
            w[...] = 1.0
            return w
        flat = w.reshape(len(out), -1)
        size = flat.shape[1]
        try:
            at = (int(np.ravel_multi_index(tuple(self.index), out.shape[1:])) if isinstance(self.index, tuple)
                  else positive_int("index", self.index, 0))
        except ValueError:
            at = -1
        if not 0 <= at < size:
            raise ValueError(f"index {self.index!r} is outside one sample of output shape {out.shape[1:]}")
        flat[:, at] = 1.0
        return w


# ---------------------------------------------------------------------------- black-box scores
def class_scorer(activate: Any) -> Callable[[np.ndarray], np.ndarray]:
    """MONAI's ``activate=`` → a function raw outputs ``(b, K[, 1...])`` → ``(b, K)`` float64
    scores of every class. True: softmax over classes when K > 1, else sigmoid; False: the
    raw outputs; a callable is applied as it is (it must return ``(b, K)``)."""
    if activate is True:
        act = lambda y: softmax(y, axis=1) if y.shape[1] > 1 else sigmoid(y)
    elif activate is False:
        act = lambda y: y
    elif callable(activate):
        act = activate
    else:
        raise ValueError(f"activate must be True, False or a callable on the (B, K) outputs, got {activate!r}")

    def scores(raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw)
        if raw.ndim < 2:
            raise ValueError(f"the model output has shape {tuple(raw.shape)}: one value per sample, not "
                             "class scores (B, K, ...); export the model with a (B, 1) output or pass "
                             "activate= a callable that returns (B, K) scores, or an OutputTarget")
        if raw.ndim > 2 and all(d == 1 for d in raw.shape[2:]):
            raw = raw.reshape(raw.shape[:2])
        out = np.asarray(act(raw), dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != len(raw):
            raise ValueError(f"class scores must be (batch, classes); the model output {tuple(raw.shape)} "
                             f"became {tuple(out.shape)}: pass activate= a callable that reduces it "
                             "to one score per class, or explain a target (onnx_xai.targets)")
        return out
    return scores


def item_scorers(index: Any, activate: Any, raw: np.ndarray, many: bool = False
                 ) -> tuple[list[Callable[[np.ndarray], np.ndarray]], list[list[int]]]:
    """For each item of the unperturbed outputs ``raw`` ``(B, ...)``, a function from the raw
    outputs of its perturbed copies ``(n, ...)`` to their ``(n, k)`` float64 scores, and the
    classes scored (−1 for a target that is not a class).

    ``index`` a ``Target``: its score (k = 1, its own activation), resolved on ``raw``.
    Otherwise classes through ``activate`` (``class_scorer``): None → each item's top class;
    an int → that class; with ``many`` a sequence → those classes for every item (k of
    them), else one class per item.
    """
    n = len(raw)
    if isinstance(index, Target):
        fixed = index.resolve(raw)
        classes = (np.asarray(fixed.index).reshape(-1) if isinstance(fixed, ClassTarget)
                   else np.full(n, -1))
        return ([lambda r, t=fixed.select(np.array([i])): t(r)[:, None] for i in range(n)],
                [[int(c)] for c in np.broadcast_to(classes, (n,))])
    scores = class_scorer(activate)
    base = scores(raw)
    if many:
        chosen = class_list(index, base.shape[1])
        rows = [chosen if chosen is not None else [int(np.argmax(b))] for b in base]
    else:
        idx = per_sample_classes(index, n, base.shape[1], "index")
        rows = [[int(c)] for c in (np.argmax(base, axis=1) if idx is None else idx)]
    return [lambda r, c=c: scores(r)[:, c] for c in rows], rows


# ---------------------------------------------------------------------------- shorthands
def target(value: Any = None, *, output: str | None = None, activation: Any = "none") -> Target:
    """A ``Target`` from what users type: a ``Target`` (returned as it is), None (argmax
    class), an int or ints (class per sample), or an object with pytorch-grad-cam's
    ``category`` attribute (``ClassifierOutputTarget(281)``)."""
    if isinstance(value, Target):
        return value
    if hasattr(value, "category"):  # pytorch-grad-cam's ClassifierOutputTarget
        value = value.category
    if isinstance(value, (list, tuple)) and value and all(hasattr(v, "category") for v in value):
        value = [v.category for v in value]
    if value is not None:
        _ints(value, "target")
    return ClassTarget(output=output, activation=activation, index=value)
