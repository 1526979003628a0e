"""MONAI's call style: its CAM classes and ``OcclusionSensitivity`` name the model ``nn_module``.

``onnx_xai.GradCAM``, ``GradCAMpp``, ``CAM`` and ``OcclusionSensitivity`` take it as a keyword
alias of their first argument (``GradCAM(nn_module=model, target_layers="layer4")``), through
``model_argument``. ``VanillaGrad`` / ``SmoothGrad`` / ``GuidedBackpropGrad`` take ``model``,
as MONAI's do.
"""
from __future__ import annotations

from ..targets import model_argument

__all__ = ["model_argument"]


