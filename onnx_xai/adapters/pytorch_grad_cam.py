"""pytorch-grad-cam's call style on ONNX models (``grad-cam`` 1.5, no torch).

Code written for pytorch-grad-cam runs with two changes — the model is anything
``onnx_xai.Model`` accepts (a ``.onnx`` path, bytes, ``ModelProto``, ``InferenceSession``,
``Model``) and ``target_layers`` are layer *names* (ONNX node or tensor names, or the PyTorch
module path the exporter kept, e.g. ``"layer4"``; ``onnx-xai layers MODEL`` lists them)::

    from onnx_xai.adapters.pytorch_grad_cam import GradCAM, ClassifierOutputTarget, show_cam_on_image

    with GradCAM(model="resnet50.onnx", target_layers=["layer4"]) as cam:
        grayscale_cam = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])  # (B, H, W)
    overlay = show_cam_on_image(rgb_img, grayscale_cam[0], use_rgb=True)              # (H, W, 3) uint8

The numbers are pytorch-grad-cam's (checked against it in ``tests/test_adapters_gradcam.py``):
per layer the raw map ``Σ_k w_k A_k`` (or the method's own image), ``relu``, per image
``(m − min) / (1e-7 + max)``, resized to the input with ``cv2.resize`` (``INTER_LINEAR``; 3D:
``scipy.ndimage.zoom``), then the layers' mean scaled the same way: ``(B, H, W[, D])`` float32
with the hottest point 1. Scores are the raw logits of the target classes (gradients from
ONNX Runtime through ``onnx_xai.engines.cam``).

Classes: ``GradCAM``, ``HiResCAM``, ``GradCAMPlusPlus`` (pytorch-grad-cam's formula, which is
not MONAI's: see ``onnx_xai.GradCAMpp``), ``XGradCAM``, ``LayerCAM``, ``EigenCAM``,
``EigenGradCAM``, ``GradCAMElementWise``, ``ScoreCAM``. Targets: ``ClassifierOutputTarget(c)``
and ``ClassifierOutputSoftmaxTarget(c)`` (both ``onnx_xai.targets.ClassTarget``), any
``ClassTarget``, plain ints, or pytorch-grad-cam's own
``ClassifierOutputTarget`` objects, one per image; ``None`` → each image's argmax; or one
``onnx_xai.targets`` target for the whole batch (a region of a segmentation output, ...).

Differences, on purpose: inputs and results are NumPy arrays (a torch tensor given as
``input_tensor`` is read with ``.detach().cpu().numpy()``); token layers of vision transformers
(timm / HF ViT, DeiT, Swin) are folded to their patch grid automatically (``onnx_xai.tokens``),
so ``reshape_transform`` is not needed and raises ``NotImplementedError`` (for other layouts,
``onnx_xai.GradCAM(..., reshape_transform=fn)`` takes a NumPy function); a ``targets`` list whose
length is not the batch size is a ``ValueError`` (pytorch-grad-cam silently zips); leaving
the ``with`` block swallows no exception (pytorch-grad-cam prints and swallows ``IndexError``).
``aug_smooth=True`` (mean over horizontal flip × intensity 0.9 / 1 / 1.1, as pytorch-grad-cam's
default ttach transforms) works for 2D inputs; ``eigen_smooth=True`` (first principal
component of the weighted activations) works for all classes but ``ScoreCAM``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import scipy.ndimage

from .. import graph
from ..finite import positive_int
from ..engines.cam import Taps, fold_taps, forward_taps, gradient_taps, token_fold
from ..methods.cam import ScoreCAM as _ScoreCAMEngine
from ..runtime import Model, ModelSource
from ..targets import ClassTarget, Target, target as as_target

__all__ = ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "EigenCAM",
           "EigenGradCAM", "GradCAMElementWise", "ScoreCAM", "BaseCAM",
           "ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget", "show_cam_on_image",
           "scale_cam_image", "get_2d_projection",
           "preprocess_image", "as_numpy"]


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array; a torch tensor (duck-typed: ``.detach()``) via ``.detach().cpu()``."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _category(category: Any, index: Any) -> Any:
    if index is not None:  # a copy made by dataclasses.replace
        return index
    if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)):
        raise ValueError(f"category must be a class index (int), got {category!r}")
    return int(category)


@dataclass(frozen=True, init=False)
class ClassifierOutputTarget(ClassTarget):
    """pytorch-grad-cam's ``ClassifierOutputTarget(category)``: the raw output (logit) of class
    ``category`` — an ``onnx_xai.targets.ClassTarget`` with ``index=category``."""

    def __init__(self, category: int | None = None, *, output: str | None = None,
                 activation: str = "none", index: Any = None) -> None:
        # the keywords are ClassTarget's fields, so that dataclasses.replace works on it
        super().__init__(output=output, activation=activation, index=_category(category, index))

    @property
    def category(self) -> int:
        return self.index


@dataclass(frozen=True, init=False)
class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget(category)``: the softmax probability
    of class ``category`` — a ``ClassTarget`` with ``activation="softmax"``."""

    def __init__(self, category: int | None = None, *, output: str | None = None,
                 activation: str = "softmax", index: Any = None) -> None:
        super().__init__(category, output=output, activation=activation, index=index)


# ---------------------------------------------------------------------------- utilities
def scale_cam_image(cam: np.ndarray, target_size: Sequence[int] | None = None) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``: per item ``(m − min) / (1e-7 + max)``, then
    resized to ``target_size`` — ``(W, H)`` for 2D maps (``cv2.resize``, bilinear),
    ``(D, W, H)`` for 3D ones (``scipy.ndimage.zoom``, cubic spline) — float32."""
    result = []
    for img in np.asarray(cam):
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if target_size is not None:
            if img.ndim > 2:
                img = scipy.ndimage.zoom(np.float32(img), [t / i for i, t in zip(img.shape, target_size[::-1])])
            else:
                img = cv2.resize(np.float32(img), tuple(int(t) for t in target_size))
        result.append(img)
    return np.float32(result)


def get_2d_projection(activation_batch: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``get_2d_projection``: per item, the centred ``(positions × C)``
    activations projected on their first right-singular vector (NaN → 0). The SVD's sign is
    LAPACK's (arbitrary), as in pytorch-grad-cam; ``onnx_xai.EigenCAM`` fixes it instead."""
    activation_batch = np.array(activation_batch, copy=True)
    activation_batch[np.isnan(activation_batch)] = 0
    projections = []
    for activations in activation_batch:
        flat = activations.reshape(activations.shape[0], -1).transpose()
        flat = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat, full_matrices=True)  # as pytorch-grad-cam (same signs)
        projections.append((flat @ vt[0, :]).reshape(activations.shape[1:]))
    return np.float32(projections)


def show_cam_on_image(img: np.ndarray, mask: np.ndarray, use_rgb: bool = False,
                      colormap: int = cv2.COLORMAP_JET, image_weight: float = 0.5) -> np.ndarray:
    """pytorch-grad-cam's ``show_cam_on_image``: ``mask`` ``(H, W)`` in [0, 1] coloured with
    the OpenCV ``colormap`` (BGR, or RGB with ``use_rgb``), blended as ``image_weight · img +
    (1 − image_weight) · heatmap``, divided by its maximum → ``(H, W, 3)`` uint8. ``img``:
    float ``(H, W, 3)`` in [0, 1] (``ValueError`` otherwise)."""
    img, mask = np.asarray(img), np.asarray(mask)
    if mask.ndim != 2 or img.ndim != 3 or img.shape[:2] != mask.shape or img.shape[2] != 3:
        raise ValueError(f"img must be (H, W, 3) and mask (H, W) of the same H, W; got {img.shape} "
                         f"and {mask.shape}")
    heatmap = cv2.applyColorMap(np.uint8(255 * mask), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    heatmap = np.float32(heatmap) / 255
    if np.max(img) > 1:
        raise ValueError("The input image should np.float32 in the range [0, 1]")
    if image_weight < 0 or image_weight > 1:
        raise ValueError(f"image_weight should be in the range [0, 1]. Got: {image_weight}")
    cam = (1 - image_weight) * heatmap + image_weight * img
    cam = cam / np.max(cam)
    return np.uint8(255 * cam)


def preprocess_image(img: np.ndarray, mean: Sequence[float] = (0.5, 0.5, 0.5),
                     std: Sequence[float] = (0.5, 0.5, 0.5)) -> np.ndarray:
    """pytorch-grad-cam's ``preprocess_image`` without torchvision: float ``(H, W, C)`` →
    ``(1, C, H, W)`` float32, ``(img − mean) / std`` per channel (uint8 is scaled to [0, 1]
    first, as ``ToTensor``)."""
    img = np.asarray(img)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    out = (img - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None], np.float32)


# ---------------------------------------------------------------------------- CAMs
class BaseCAM:
    """pytorch-grad-cam's ``BaseCAM`` on an ONNX model (see the module docstring).

    Args:
        model: anything ``onnx_xai.Model`` accepts.
        target_layers: layer names (a list, as pytorch-grad-cam; one name is accepted too).
        reshape_transform: must be None (``NotImplementedError`` otherwise): token layers
            are folded automatically.
        batch_size: samples per gradient run (ours).
    """

    uses_gradients = True

    def __init__(self, model: ModelSource, target_layers: Sequence[str] | str,
                 reshape_transform: Any = None, *, batch_size: int = 8) -> None:
        if reshape_transform is not None:
            raise NotImplementedError(
                "reshape_transform is not needed: token layers of ViT / DeiT / Swin exports are folded "
                "to their patch grid automatically; for another layout use onnx_xai.GradCAM(..., "
                "reshape_transform=fn) with a NumPy function (B, ...) -> (B, C, h, w)")
        self.model = model if isinstance(model, Model) else Model(model)
        layers = [target_layers] if isinstance(target_layers, str) else list(target_layers or ())
        if not layers or not all(isinstance(l, str) and l for l in layers):
            raise ValueError("target_layers must be a list of layer names (ONNX node / tensor names "
                             f"or PyTorch module paths such as 'layer4'), got {target_layers!r}; "
                             "`onnx-xai layers MODEL` lists them")
        proto = self.model.require_proto(type(self).__name__)
        for name in layers:
            graph.resolve_layer(proto, name)  # unknown names fail here, listing close ones
        batch_size = positive_int("batch_size", batch_size)
        self.target_layers, self.batch_size = layers, int(batch_size)
        self.reshape_transform, self._folds = None, {}
        self.outputs: np.ndarray | None = None

    # -- what each method defines (pytorch-grad-cam's hooks, on NumPy activations / gradients)
    def get_cam_weights(self, input_tensor: np.ndarray, target_layer: str, targets: Target,
                        activations: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
        """``(B, C)`` channel weights (``targets``: the batch's ``Target``, classes resolved)."""
        raise NotImplementedError

    def get_cam_image(self, input_tensor: np.ndarray, target_layer: str, targets: Target,
                      activations: np.ndarray, grads: np.ndarray | None,
                      eigen_smooth: bool = False) -> np.ndarray:
        """``(B, *s)`` raw map of one layer: ``Σ_k w_k A_k`` (or its first principal component)."""
        weights = self.get_cam_weights(input_tensor, target_layer, targets, activations, grads)
        weighted = weights.reshape(weights.shape + (1,) * (activations.ndim - 2)) * activations
        return get_2d_projection(weighted) if eigen_smooth else weighted.sum(axis=1)

    # -- the pipeline
    def _taps(self, x: np.ndarray, layer: str, target: Target) -> Taps:
        run = gradient_taps if self.uses_gradients else forward_taps
        taps = run(self.model, layer, x, target, batch_size=self.batch_size)
        return fold_taps(taps, token_fold(self.model, layer, x.shape, self._folds), layer, x.ndim)

    def _target(self, targets: Any, x: np.ndarray) -> Target:
        """pytorch-grad-cam's ``targets`` (None, or one per image) as one ``Target`` for the
        batch: class targets (``ClassifierOutputTarget`` / ``ClassTarget`` / ints) of one output
        and activation become one ``ClassTarget`` with a class per image (None: its argmax);
        a single ``onnx_xai.targets`` target (not in a list) applies to every image as it is."""
        n = x.shape[0]
        if targets is None:
            return ClassTarget()
        if not isinstance(targets, (list, tuple)):
            return as_target(targets)
        if len(targets) != n:
            raise ValueError(f"targets must hold one target per image: {len(targets)} targets for "
                             f"a batch of {n}")
        items = [as_target(t) for t in targets]
        first = items[0]
        if any(not isinstance(t, ClassTarget) or type(t).weights is not ClassTarget.weights
               or (t.output, t.activation) != (first.output, first.activation)
               or (t.index is not None and np.ndim(t.index) != 0) for t in items):
            raise NotImplementedError(
                "a list of targets must be class targets (ClassifierOutputTarget / ClassTarget with "
                "one class each) of one output and activation; pass a single onnx_xai target (not "
                f"in a list) to explain anything else; got {items!r}")
        classes = [t.index for t in items]
        if any(c is None for c in classes) and not all(c is None for c in classes):
            out = self.model.predict(x, outputs=first.output, batch_size=self.batch_size, verbose=False)
            top = ClassTarget().classes(out)
            classes = [int(top[i]) if c is None else c for i, c in enumerate(classes)]
        index = None if classes[0] is None else np.asarray(classes, np.int64)
        return ClassTarget(output=first.output, activation=first.activation, index=index)

    def forward(self, input_tensor: Any, targets: Any = None, eigen_smooth: bool = False) -> np.ndarray:
        x = self.model.check_input(as_numpy(input_tensor))
        if x.ndim not in (4, 5):
            raise ValueError(f"input_tensor must be (B, C, H, W) or (B, C, H, W, D), got shape {x.shape}")
        target = self._target(targets, x)
        size = (x.shape[-1], x.shape[-2]) if x.ndim == 4 else (x.shape[-1], x.shape[-2], x.shape[-3])
        per_layer = []
        for layer in self.target_layers:
            taps = self._taps(x, layer, target)
            self.outputs = taps.logits
            acts = taps.activations.astype(np.float32, copy=False)
            grads = None if taps.gradients is None else taps.gradients.astype(np.float32, copy=False)
            cam = self.get_cam_image(x, layer, taps.target, acts, grads, eigen_smooth)
            per_layer.append(scale_cam_image(np.maximum(cam, 0), size)[:, None])
        return self.aggregate_multi_layers(per_layer)

    @staticmethod
    def aggregate_multi_layers(cam_per_target_layer: list[np.ndarray]) -> np.ndarray:
        cams = np.maximum(np.concatenate(cam_per_target_layer, axis=1), 0)
        return scale_cam_image(np.mean(cams, axis=1))

    def forward_augmentation_smoothing(self, input_tensor: Any, targets: Any = None,
                                       eigen_smooth: bool = False) -> np.ndarray:
        """Mean map over pytorch-grad-cam's default test-time augmentations: horizontal flip
        (off / on) × intensity (1, 0.9, 1.1); each map is flipped back before averaging."""
        x = self.model.check_input(as_numpy(input_tensor))
        if x.ndim != 4:
            raise NotImplementedError("aug_smooth works on 2D images (B, C, H, W) only")
        cams = []
        for flip, factor in itertools.product((False, True), (1.0, 0.9, 1.1)):
            aug = np.flip(x, axis=3) if flip else x
            aug = np.ascontiguousarray(aug * np.float32(factor) if factor != 1.0 else aug)
            cam = self.forward(aug, targets, eigen_smooth)
            cams.append(np.flip(cam, axis=2) if flip else cam)
        return np.mean(np.float32(cams), axis=0)

    def __call__(self, input_tensor: Any, targets: Any = None, aug_smooth: bool = False,
                 eigen_smooth: bool = False) -> np.ndarray:
        """``(B, H, W[, D])`` float32 maps, hottest point 1, for ``input_tensor`` ``(B, C, H, W[, D])``."""
        if aug_smooth is True:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth)
        return self.forward(input_tensor, targets, eigen_smooth)

    def __enter__(self) -> "BaseCAM":
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> bool:
        return False

    def release(self) -> None:
        """Nothing to release (no hooks on an ONNX model); kept for pytorch-grad-cam code."""


def _spatial(a: np.ndarray) -> tuple[int, ...]:
    return tuple(range(2, a.ndim))


class GradCAM(BaseCAM):
    """Grad-CAM: ``w_k = mean_p(dS/dA_k)``."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        return np.mean(grads, axis=_spatial(grads))


class HiResCAM(BaseCAM):
    """HiResCAM: ``Σ_k g_k ⊙ A_k`` elementwise."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        elementwise = grads * activations
        return get_2d_projection(elementwise) if eigen_smooth else elementwise.sum(axis=1)


class GradCAMElementWise(BaseCAM):
    """``Σ_k relu(g_k ⊙ A_k)``."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        elementwise = np.maximum(grads * activations, 0)
        return get_2d_projection(elementwise) if eigen_smooth else elementwise.sum(axis=1)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ as pytorch-grad-cam computes it (its eq. 19): ``α = g² / (2g² + Σ_p A · g³ +
    1e-6)``, 0 where ``g == 0``; ``w_k = Σ_p relu(g) · α``. MONAI's (``onnx_xai.GradCAMpp``)
    uses ``Σ_p A·g³`` and weighs by ``exp(S)``: the maps differ."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        axes = _spatial(activations)
        g2 = grads ** 2
        g3 = g2 * grads
        sum_a = np.sum(activations, axis=axes).reshape(activations.shape[:2] + (1,) * len(axes))
        aij = g2 / (2 * g2 + sum_a * g3 + 0.000001)
        aij = np.where(grads != 0, aij, 0)
        return np.sum(np.maximum(grads, 0) * aij, axis=axes)


class XGradCAM(BaseCAM):
    """XGrad-CAM: ``w_k = Σ_p g_k A_k / (Σ_p A_k + 1e-7)``."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        axes = _spatial(activations)
        sum_a = np.sum(activations, axis=axes).reshape(activations.shape[:2] + (1,) * len(axes))
        return (grads * activations / (sum_a + 1e-7)).sum(axis=axes)


class LayerCAM(BaseCAM):
    """LayerCAM: ``Σ_k relu(g_k) ⊙ A_k``."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        weighted = np.maximum(grads, 0) * activations
        return get_2d_projection(weighted) if eigen_smooth else weighted.sum(axis=1)


class EigenCAM(BaseCAM):
    """EigenCAM: the first principal component of the activations (class-agnostic, no
    gradients; ``targets`` are ignored, ``eigen_smooth`` too). Its sign is LAPACK's, as in
    pytorch-grad-cam."""

    uses_gradients = False

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return get_2d_projection(activations)


class EigenGradCAM(BaseCAM):
    """EigenGradCAM: the first principal component of ``g ⊙ A``."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        return get_2d_projection(grads * activations)


class ScoreCAM(BaseCAM):
    """Score-CAM as pytorch-grad-cam (2D): each channel, upsampled (bilinear, corners aligned)
    and min-max scaled, masks the input; the softmax over channels of the target logits of the
    masked inputs weighs the channels. Run by ``onnx_xai.ScoreCAM`` in batches of
    ``batch_size`` (default 16, as pytorch-grad-cam; set ``cam.batch_size`` as there).
    ``eigen_smooth`` raises ``NotImplementedError``."""

    uses_gradients = False

    def __init__(self, model: ModelSource, target_layers: Sequence[str] | str,
                 reshape_transform: Any = None, *, batch_size: int = 16) -> None:
        super().__init__(model, target_layers, reshape_transform, batch_size=batch_size)

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        if eigen_smooth:
            raise NotImplementedError("ScoreCAM with eigen_smooth=True is not supported")
        if input_tensor.ndim != 4:
            raise ValueError("ScoreCAM works on 2D images (B, C, H, W), as pytorch-grad-cam's")
        engine = _ScoreCAMEngine(self.model, target_layer, batch_size=self.batch_size, verbose=False)
        return engine.compute_map(input_tensor, targets)[:, 0]
