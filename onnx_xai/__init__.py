"""onnx_xai: explain deployed ONNX models with ONNX Runtime alone."""
from .errors import DeviceError, OnnxXaiError, UnsupportedModelError
from .runtime import Model, TensorInfo, cuda_status, sigmoid, softmax
from . import visualize
from .methods.occlusion import OcclusionSensitivity

__all__ = [
    "Model", "TensorInfo", "OcclusionSensitivity", "cuda_status", "softmax", "sigmoid",
    "OnnxXaiError", "UnsupportedModelError", "DeviceError",
]
__version__ = "0.1.0"
