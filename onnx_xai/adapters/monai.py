"""MONAI's call style: its CAM classes and ``OcclusionSensitivity`` name the model ``nn_module``.

``onnx_xai.GradCAM``, ``GradCAMpp``, ``CAM`` and ``OcclusionSensitivity`` take it as a keyword
alias of their first argument (``GradCAM(nn_module=model, target_layers="layer4")``), through
``model_argument``. ``VanillaGrad`` / ``SmoothGrad`` / ``GuidedBackpropGrad`` take ``model``,
as MONAI's do.
"""
from __future__ import annotations

from typing import Any

__all__ = ["model_argument"]


def model_argument(model: Any, nn_module: Any, cls: str = "this class") -> Any:
    """The model given as ``model`` (positionally) or as MONAI's ``nn_module=`` keyword:
    exactly one of them, else ``TypeError`` saying so."""
    if nn_module is not None and model is not None:
        raise TypeError(f"{cls} got the model twice: pass it as the first argument (model) or "
                        "as nn_module= (MONAI's name), not both")
    if nn_module is not None:
        return nn_module
    if model is None:
        raise TypeError(f"{cls} needs a model: the first argument, or nn_module= (MONAI's name)")
    return model
