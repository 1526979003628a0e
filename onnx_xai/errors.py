"""Exception types of onnx_xai.

Bad arguments raise the built-in ``ValueError``; what the library cannot do with a given
model (an operator it cannot rewrite, a missing CUDA runtime) raises one of these.
"""


class OnnxXaiError(RuntimeError):
    """Base class for errors about models, runtimes and devices (not bad arguments)."""


class UnsupportedModelError(OnnxXaiError):
    """The model uses a construct this operation cannot handle (say which, and what to do)."""


class DeviceError(OnnxXaiError):
    """The requested device cannot be used (e.g. ``device="gpu"`` without a working CUDA)."""
