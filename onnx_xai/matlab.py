"""MATLAB-style functions: ``occlusion_sensitivity(net, X, channel_idx, ...)``,
``grad_cam(net, X, channel_idx, ...)``.

Mirrors MATLAB's ``occlusionSensitivity(net, X, channelIdx, Name=Value)`` with snake_case
names, 0-based indices and NumPy arrays. One observation in, MATLAB's layout out.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np

from . import targets
from .autolayer import choose_layer
from .engines.occlusion import Occluder, fill_nearest, occlusion_scores
from .errors import TOKEN_HINT
from .finite import check_finite_array, check_finite_input, check_finite_output, finite_rows, positive_int
from .methods.cam import GradCAM
from .registry import method
from .runtime import Model, ModelSource, sigmoid, softmax

Size = Union[str, int, Sequence[int]]
ENVIRONMENTS = ("auto", "gpu", "cpu")


@method("matlab-occlusion", kind="matlab", summary="MATLAB-style occlusionSensitivity (score change, softmax scores)",
        flags={"mask_size": "mask_size", "stride": "stride", "batch": "mini_batch_size"},
        defaults={"mini_batch_size": 16}, signed=True)
def occlusion_sensitivity(net: ModelSource, X: np.ndarray, channel_idx: int | Sequence[int], *,
                          mask_size: Size = "auto", stride: Size = "auto",
                          mask_value: str | float | Sequence[float] = "auto",
                          output_upsampling: str = "bicubic", mask_clipping: str = "on",
                          mini_batch_size: int = 128, execution_environment: str = "auto",
                          output_name: str | None = None, activation: str | Callable | None = None,
                          verbose: bool = True, extra_inputs: dict | None = None) -> np.ndarray:
    """Change in total activation of a channel when parts of ``X`` are occluded.

    Args:
        net: anything ``Model`` accepts.
        X: one observation: ``(H, W, C)`` as in MATLAB, or in the network's own per-sample
            layout (e.g. ``(C, H, W)``); ``(T, C)`` for sequence data (masks along T only).
            When both readings fit the network's input shape, MATLAB's channel-last reading
            wins unless its last axis is longer than 4 while the first is at most 4. Integer
            types are converted to float32 by value, as MATLAB's ``single`` does.
        channel_idx: 0-based channel of the scored output; int → ``(H, W)`` map, sequence of
            K → ``(H, W, K)`` with ``map[..., i]`` for ``channel_idx[i]`` (same forward passes).
        mask_size: ``"auto"`` (20 % of each spatial size, rounded), int, or one per axis.
        stride: ``"auto"`` (10 %, rounded), int, or one per axis.
        mask_value: ``"auto"`` (channel-wise mean of X), a number, or one value per channel.
        output_upsampling: ``"bicubic"`` / ``"nearest"`` resize the grid of mask positions
            to the input size as MATLAB's ``imresize`` does (half-pixel centres; bicubic
            with a = −0.5 and mirrored borders); ``"none"`` returns the grid.
        mask_clipping: ``"on"``: position (i, j) is the mask centred on pixel
            (i·stride_h, j·stride_w), rows ``[i·s − m//2, i·s − m//2 + m)`` clipped to the
            image, for every centre inside the image — edge masks are partial. ``"off"``:
            the mask's top-left corner is at (i·stride_h, j·stride_w), rows
            ``[i·s, i·s + m)``, and only masks that fit entirely are used.
        mini_batch_size: occluded copies per inference run.
        execution_environment: ``"auto"``, ``"gpu"`` or ``"cpu"`` (as ``Model``'s device).
        output_name: score this tensor (output, intermediate tensor or node name) instead of
            the first output, as MATLAB's ``OutputNames``.
        activation: applied to the scored tensor first: None (as it is), ``"softmax"`` /
            ``"sigmoid"`` over channels, or a callable on ``(b, K, ...)`` arrays. MATLAB
            classifiers end in a softmax layer while exported ONNX classifiers usually
            return logits: ``activation="softmax"`` scores probabilities as MATLAB does.
        extra_inputs: the network's other inputs by name (one observation's: without a batch
            axis or with a batch of 1), fed with every occluded copy.

    The score of an occluded copy is the chosen channel of the output summed over its
    spatial axes (outputs are ``(B, K)`` or channel-first ``(B, K, ...)``); the map holds
    original score − occluded score, so positive values mark regions that support the
    channel.

    Non-finite numbers (see ``onnx_xai.finite``): NaN / inf in ``X`` or ``mask_value`` is a
    ``ValueError`` (X: count and first index, in X's own layout); a non-finite output on X
    itself raises ``NonFiniteError``. Mask positions whose occluded copy scores NaN / inf
    take the value of the nearest finite position of the grid (before upsampling), with a
    ``NonFiniteWarning`` giving their count (``NonFiniteError`` if none is finite).

    Returns:
        ``(H, W)`` / ``(H, W, K)`` (``(T,)`` / ``(T, K)`` for sequences) float32 map; with
        ``output_upsampling="none"``, the grid of mask positions in place of ``(H, W)``.
    """
    if execution_environment not in ENVIRONMENTS:
        raise ValueError(f"execution_environment must be one of {ENVIRONMENTS}, got {execution_environment!r}")
    if output_upsampling not in ("bicubic", "nearest", "none"):
        raise ValueError(f"output_upsampling must be 'bicubic', 'nearest' or 'none', got {output_upsampling!r}")
    if mask_clipping not in ("on", "off"):
        raise ValueError(f"mask_clipping must be 'on' or 'off', got {mask_clipping!r}")
    if not (activation is None or callable(activation) or activation in ("softmax", "sigmoid")):
        raise ValueError(f"activation must be None, 'softmax', 'sigmoid' or a callable, got {activation!r}")
    positive_int("mini_batch_size", mini_batch_size)
    model = as_network(net, execution_environment)
    if output_name is not None:
        model = model.with_outputs([output_name])
        output = model.outputs[-1].name if output_name not in model.output_names else output_name
    else:
        output = model.output_names[0]
    xcf, channel_last = observation(model, X)
    spatial = xcf.shape[1:]
    to_model = (lambda b: np.ascontiguousarray(np.moveaxis(b, 1, -1))) if channel_last else None
    masks = _per_axis(mask_size, spatial, 0.2, "mask_size")
    strides = _per_axis(stride, spatial, 0.1, "stride")
    if any(m > s for m, s in zip(masks, spatial)):
        raise ValueError(f"mask_size {masks} is larger than the input's spatial size {spatial}")
    lo, hi, grid = mask_positions(spatial, masks, strides, mask_clipping)
    values = _mask_values(mask_value, xcf)

    x1 = xcf[None]
    base = model.predict(to_model(x1) if to_model else x1, outputs=output, extra_inputs=extra_inputs)
    check_finite_output(base, f"output {output!r}", "X")
    channels = channel_indices(channel_idx, base)
    score = lambda out: channel_totals(activate_output(out, activation), channels)  # noqa: E731
    base_score = score(base)
    check_finite_output(base_score, f"the score (activated output {output!r})", "X")
    occluded = occlusion_scores(model, x1, lo, hi, Occluder.constant(values), score, output=output,
                                n_batch=int(mini_batch_size), verbose=verbose, to_model_layout=to_model,
                                extra_inputs=extra_inputs,
                                desc="occlusion_sensitivity", check_unoccluded=False,
                                nonfinite_rule="those mask positions take the value of the nearest "
                                               "finite position")
    change = (base_score - occluded).astype(np.float32).reshape(grid + (len(channels),))
    ok = finite_rows(occluded).reshape(grid)
    if not ok.all():  # the engine warned; the grid is filled from the nearest finite positions
        change = np.moveaxis(fill_nearest(np.moveaxis(change, -1, 0), ~ok), 0, -1)
    if output_upsampling != "none":
        for axis, size in enumerate(spatial):
            change = resize_axis(change, axis, size, output_upsampling)
    return change[..., 0] if np.ndim(channel_idx) == 0 else change


def mask_positions(spatial: Sequence[int], masks: Sequence[int], strides: Sequence[int],
                   clipping: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Window bounds ``lo, hi`` ``(n, sd)`` (hi exclusive, row-major over the grid) and the grid shape."""
    axes = []
    for size, m, s in zip(spatial, masks, strides):
        if clipping == "on":
            start = np.arange(0, size, s) - m // 2
            axes.append((np.maximum(start, 0), np.minimum(start + m, size)))
        else:
            start = np.arange(0, size - m + 1, s)
            axes.append((start, start + m))
    grid = tuple(len(a[0]) for a in axes)
    index = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, len(grid))
    lo = np.stack([axes[d][0][index[:, d]] for d in range(len(grid))], -1)
    hi = np.stack([axes[d][1][index[:, d]] for d in range(len(grid))], -1)
    return lo.astype(np.int64), hi.astype(np.int64), grid


def as_network(net: ModelSource, environment: str) -> Model:
    """``net`` as a ``Model`` on MATLAB's ``ExecutionEnvironment`` (``auto`` / ``gpu`` / ``cpu``)."""
    if isinstance(net, Model) and environment in ("auto", net.device):
        return net
    return Model(net, device=environment)


def observation(model: Model, X: np.ndarray) -> tuple[np.ndarray, bool]:
    """``X`` as channel-first float32 ``(C, *spatial)`` and whether the model is channel-last."""
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise ValueError(f"X must be a numeric array, got dtype {X.dtype}")
    if model.input.dtype.kind != "f":
        raise ValueError(f"occlusion_sensitivity feeds float32 observations (as MATLAB's single); "
                         f"the model's input {model.input_name!r} is {model.input.dtype.name} "
                         "(use OcclusionSensitivity, which keeps the input's dtype; " + TOKEN_HINT + ")")
    original, X = X, X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        check_finite_input(X, "X" + ("" if original.dtype.kind == "f" and not np.isfinite(original).all()
                                     else " (as float32)"))
    expected = model.input.shape[1:]
    if X.ndim != len(expected) or X.ndim < 2:
        raise ValueError(f"X must be one observation shaped like the network input "
                         f"{model.input.describe()} without its batch axis, got {X.shape}")
    fits = lambda shape: all(not isinstance(e, int) or e == s for e, s in zip(expected, shape))  # noqa: E731
    first = lambda a: np.moveaxis(a, -1, 0)  # noqa: E731
    readings = []  # (channel-first X, model is channel-last), MATLAB's channel-last reading first
    for xcf in (first(X), X):
        if fits(xcf.shape):
            readings.append((xcf, False))
        if fits(np.moveaxis(xcf, 0, -1).shape):
            readings.append((xcf, True))
    if not readings:
        raise ValueError(f"X of shape {X.shape} does not match the network input {model.input.describe()} "
                         "as (H, W, C) or in the network's own layout")
    if len({id(r[0]) for r in readings}) > 1 and X.shape[-1] > 4 and X.shape[0] <= 4:
        readings = [r for r in readings if r[0] is X] + readings
    xcf, channel_last = readings[0]
    return np.ascontiguousarray(xcf), channel_last


def _per_axis(value: Size, spatial: Sequence[int], auto: float, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{name} must be 'auto', a positive int or one per axis, got {value!r}")
        return tuple(max(int(np.floor(auto * s + 0.5)), 1) for s in spatial)
    values = (value,) * len(spatial) if np.ndim(value) == 0 else tuple(value)
    if len(values) != len(spatial) or any(not isinstance(v, (int, np.integer)) or v <= 0 for v in values):
        raise ValueError(f"{name} must be 'auto', a positive int or {len(spatial)} positive ints, got {value!r}")
    return tuple(int(v) for v in values)


def _mask_values(mask_value, xcf: np.ndarray) -> np.ndarray:
    channels = xcf.shape[0]
    if isinstance(mask_value, str):
        if mask_value != "auto":
            raise ValueError(f"mask_value must be 'auto', a number or one per channel, got {mask_value!r}")
        return xcf.reshape(channels, -1).mean(axis=1, dtype=np.float64).astype(np.float32)
    values = check_finite_array("mask_value", mask_value).astype(np.float32).ravel()
    if not np.isfinite(values).all():
        raise ValueError(f"mask_value {mask_value!r} overflows float32")
    if values.size == 1:
        return np.full(channels, values[0], np.float32)
    if values.size != channels:
        raise ValueError(f"mask_value has {values.size} values but X has {channels} channels")
    return values


def channel_indices(channel_idx, base: np.ndarray) -> np.ndarray:
    """MATLAB-style ``channel_idx`` (0-based int or ints) checked against the output ``base``."""
    n = 1 if base.ndim == 1 else base.shape[1]
    idx = np.atleast_1d(np.asarray(channel_idx))
    if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
        raise ValueError(f"channel_idx must be an int or a sequence of ints, got {channel_idx!r}")
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise ValueError(f"channel_idx {bad.tolist()} out of range: the scored output has {n} channels "
                         f"(0-based indices 0..{n - 1})")
    return idx.astype(np.int64)


def activate_output(out: np.ndarray, activation) -> np.ndarray:
    """``out`` ``(b, K, ...)`` through ``activation``: None, ``"softmax"``, ``"sigmoid"`` or a callable."""
    if activation is None:
        return out
    if callable(activation):
        return np.asarray(activation(out))
    return softmax(out, axis=1) if activation == "softmax" else sigmoid(out)


def channel_totals(out: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """``(b, K)``: the chosen channels summed over the output's spatial axes."""
    out = out.reshape(out.shape[0], 1) if out.ndim == 1 else out
    picked = out[:, channels]
    return picked.reshape(picked.shape[0], len(channels), -1).sum(axis=2, dtype=np.float64)


def imresize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """``(n_out, n_in)`` weights of MATLAB's ``imresize`` along one axis (upsampling).

    Output sample o sits at input coordinate u = (o + ½)·n_in/n_out − ½ (half-pixel
    centres). "bicubic": Keys kernel with a = −0.5 over the 4 nearest samples, indices
    mirrored at the borders, rows normalised; "nearest": the sample at round-half-up(u).
    """
    scale = n_out / n_in
    u = (np.arange(n_out) + 0.5) / scale - 0.5
    weights = np.zeros((n_out, n_in))
    if method == "nearest":
        weights[np.arange(n_out), np.minimum(np.floor(u + 0.5).astype(int), n_in - 1)] = 1.0
        return weights
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
    for offset in range(-2, 4):
        idx = np.floor(u).astype(int) + offset
        t = np.abs(u - idx)
        w = np.where(t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1,
                     np.where(t <= 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0))
        np.add.at(weights, (np.arange(n_out), mirror[idx % (2 * n_in)]), w)
    return weights / weights.sum(axis=1, keepdims=True)


def resize_axis(a: np.ndarray, axis: int, size: int, method: str) -> np.ndarray:
    """``a`` resized along ``axis`` to ``size`` as MATLAB's ``imresize`` (``bicubic`` / ``nearest``)."""
    if a.shape[axis] == size:
        return a
    m = imresize_matrix(a.shape[axis], size, method).astype(np.float32)
    return np.moveaxis(np.tensordot(m, a, axes=([1], [axis])), 0, axis)


def grad_cam(net: ModelSource, X: np.ndarray, channel_idx: int | Sequence[int], *,
             feature_layer: str | None = None, reduction_layer: str | None = None,
             output_upsampling: str = "bicubic", execution_environment: str = "auto",
             extra_inputs: dict | None = None) -> np.ndarray:
    """Grad-CAM map of one observation, as MATLAB's ``gradCAM(net, X, channelIdx, Name=Value)``.

    ``relu(Σ_k mean_p(dS/dA_k) · A_k)`` with A the feature layer's activations (channel-first
    ``(C, h, w[, d])`` in the graph) and S the reduction layer's channel ``channel_idx``
    summed over its spatial axes; not normalised.

    Args:
        net: anything ``Model`` accepts.
        X: one observation, ``(H, W, C)`` as in MATLAB or in the network's own layout (see
            ``occlusion_sensitivity``).
        channel_idx: 0-based channel of the reduction layer; int → ``(H, W)``, sequence of K →
            ``(H, W, K)`` (one batched gradient run).
        feature_layer: tensor / node / module name; None → the last layer with spatial
            extent (a spatial size > 1), i.e. the one before global pooling.
        reduction_layer: the tensor scored (output, intermediate tensor or node name); None →
            the first output as it is. MATLAB scores a classifier's softmax layer; exported
            ONNX classifiers usually return logits, which this scores unless told otherwise.
        output_upsampling: ``"bicubic"`` / ``"nearest"`` (MATLAB's ``imresize`` to the input
            size) or ``"none"`` (the feature layer's grid).
        execution_environment: ``"auto"``, ``"gpu"`` or ``"cpu"``.
        extra_inputs: the network's other inputs (see ``occlusion_sensitivity``).
    Returns:
        ``(H, W)`` / ``(H, W, K)`` float32 (``(H, W, D[, K])`` for volumes).
    """
    if execution_environment not in ENVIRONMENTS:
        raise ValueError(f"execution_environment must be one of {ENVIRONMENTS}, got {execution_environment!r}")
    if output_upsampling not in ("bicubic", "nearest", "none"):
        raise ValueError(f"output_upsampling must be 'bicubic', 'nearest' or 'none', got {output_upsampling!r}")
    model = as_network(net, execution_environment)
    xcf, channel_last = observation(model, X)
    x1 = np.ascontiguousarray(np.moveaxis(xcf, 0, -1))[None] if channel_last else xcf[None]
    output = None
    if reduction_layer is not None:
        model = model.with_outputs([reduction_layer])
        output = (reduction_layer if reduction_layer in model.output_names
                  else model.outputs[-1].name)
    info = next(o for o in model.outputs if o.name == (output or model.output_names[0]))
    n_channels = info.shape[1] if len(info.shape) > 1 and isinstance(info.shape[1], int) else None
    channels = (channel_indices(channel_idx, np.zeros((1, n_channels))) if n_channels
                else np.atleast_1d(np.asarray(channel_idx)))  # else the engine checks the range
    if feature_layer is None:
        feature_layer = choose_layer(model.require_proto("grad_cam"), {model.input_name: x1.shape}).tensor
    xs = np.repeat(x1, len(channels), axis=0)
    target = targets.ClassTarget(output=output, index=np.asarray(channels))
    cam = GradCAM(model, feature_layer, batch_size=min(len(channels), 8),
                  layout="nhwc" if channel_last else "nchw").compute_map(xs, target, **(extra_inputs or {}))
    cam = np.moveaxis(cam[:, 0], 0, -1)  # (*grid, K)
    if output_upsampling != "none":
        for axis, size in enumerate(xcf.shape[1:]):
            cam = resize_axis(cam, axis, size, output_upsampling)
    return cam[..., 0] if np.ndim(channel_idx) == 0 else cam
