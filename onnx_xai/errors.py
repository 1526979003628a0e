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


class NonFiniteError(OnnxXaiError, ValueError):
    """The model computed NaN or an infinity where a map needs a finite number: its output,
    activations or gradients on the unperturbed input, or every perturbed copy (see
    ``onnx_xai.finite``). Also a ``ValueError``: the input is usually what drives the model
    out of range."""


class NonFiniteWarning(RuntimeWarning):
    """Some perturbed copies (occlusion windows, RISE masks, noisy samples, ...) gave NaN or
    infinite scores; the map was made from the finite ones (the message says how many)."""


#: what to use instead when an image / signal method meets integer token ids
TOKEN_HINT = ("for token ids (input_ids (B, T)) use the token methods embedding-ig, embedding-grad, "
              "token-occlusion, token-rise (onnx_xai.EmbeddingIG, ..., onnx_xai.explain_tokens; "
              "onnx-xai explain MODEL --text)")


def one_line(exc: BaseException) -> str:
    """An error as one line for a report or the command line: its first line, with its type
    unless it is one of the usual user errors (``ValueError``, ``FileNotFoundError``, ours)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    usual = isinstance(exc, (ValueError, FileNotFoundError, OnnxXaiError)) and text
    return text if usual else f"{type(exc).__name__}: {text}".rstrip(": ")
