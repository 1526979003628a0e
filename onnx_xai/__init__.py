"""onnx_xai: explain deployed ONNX models with ONNX Runtime alone."""
from .errors import DeviceError, NonFiniteError, NonFiniteWarning, OnnxXaiError, UnsupportedModelError
from .runtime import Model, TensorInfo, cuda_status, sigmoid, softmax
from . import assets, visualize
from .methods.occlusion import OcclusionSensitivity
from .matlab import occlusion_sensitivity
from . import metrics, synthetic
from .methods.rise import RISE
from .methods.saliency import (GuidedBackpropGrad, GuidedBackpropSmoothGrad, InputXGradient,
                               IntegratedGradients, SmoothGrad, VanillaGrad)
from .methods.saliency_net import SaliencyNet
from .methods.cam import (CAM, EigenCAM, GradCAM, GradCAMElementWise, GradCAMpp, HiResCAM, LayerCAM,
                          ScoreCAM, XGradCAM)
from .matlab import grad_cam
from .export import export_explainer

__all__ = [
    "Model", "TensorInfo", "OcclusionSensitivity", "occlusion_sensitivity", "cuda_status", "softmax", "sigmoid",
    "OnnxXaiError", "UnsupportedModelError", "DeviceError", "NonFiniteError", "NonFiniteWarning",
    "RISE", "metrics", "synthetic",
    "VanillaGrad", "SmoothGrad", "GuidedBackpropGrad", "GuidedBackpropSmoothGrad",
    "IntegratedGradients", "InputXGradient", "SaliencyNet",
    "CAM", "GradCAM", "GradCAMpp", "ScoreCAM", "LayerCAM", "XGradCAM", "HiResCAM", "EigenCAM", "GradCAMElementWise", "grad_cam",
]
__all__ += ["export_explainer"]
__version__ = "0.1.0"
from .methods.lime import LIME, KernelSHAP
from .matlab_lime import image_lime
__all__ += ["LIME", "KernelSHAP", "image_lime"]
from . import detection
from .methods.drise import DRISE
__all__ += ["detection", "DRISE"]
from .methods.tokens import EmbeddingGrad, EmbeddingIG, TokenOcclusion, TokenRISE
__all__ += ["EmbeddingGrad", "EmbeddingIG", "TokenOcclusion", "TokenRISE"]
from .methods.rollout import AttentionRollout, GradientRollout
__all__ += ["AttentionRollout", "GradientRollout"]
from .text import explain_tokens
__all__ += ["explain_tokens"]
