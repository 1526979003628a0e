"""Non-finite numbers (NaN, ±inf): one policy, applied where inputs and model outputs enter
the engines.

- **Inputs** with a NaN or an infinity: ``ValueError`` naming how many and the index of
  the first (``Model.check_input`` for every float input; ``check_finite_input``).
- **The model's output, activations or gradients on the unperturbed input** non-finite:
  ``NonFiniteError`` naming the tensor (``check_finite_output``): the model itself fails on
  this input, no map can be made.
- **Scores of perturbed copies** (occlusion windows, RISE masks, ScoreCAM masked inputs,
  SmoothGrad noisy samples, metric steps) non-finite: a ``NonFiniteWarning`` with the count
  (``warn_nonfinite``), and the map is made from the finite ones — or refused with
  ``NonFiniteError`` where it cannot be (integrated-gradient path points, or when no copy
  is finite). Each method's docstring says which.
- **Numeric arguments** NaN or infinite: ``ValueError`` (``check_number``,
  ``check_finite_array``), like any other bad argument.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .errors import NonFiniteError, NonFiniteWarning

__all__ = ["describe_nonfinite", "check_finite_input", "check_finite_output", "check_number",
           "check_finite_array", "finite_rows", "warn_nonfinite", "NonFiniteError",
           "NonFiniteWarning"]


def describe_nonfinite(a: Any) -> str | None:
    """None when every value of ``a`` is finite, else "N non-finite value(s) (NaN, inf, -inf)
    of M, the first at index (i, j, ...)" ("the non-finite value nan" for a scalar)."""
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    if a.ndim == 0:
        return f"the non-finite value {a.item()}"
    count = int(bad.sum())
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.reshape(-1))), a.shape))
    kinds = [k for k, m in (("NaN", np.isnan(a)), ("inf", np.isposinf(a)), ("-inf", np.isneginf(a)))
             if m.any()]
    return (f"{count} non-finite value{'s' if count > 1 else ''} ({', '.join(kinds)}) "
            f"of {a.size}, the first at index {first}")


def check_finite_input(a: Any, what: str) -> None:
    """``ValueError`` when ``a`` (the user's input ``what``) holds a NaN or an infinity."""
    detail = describe_nonfinite(a)
    if detail is not None:
        raise ValueError(f"{what} holds {detail}: replace or mask them (e.g. np.nan_to_num) "
                         "before explaining")


def check_finite_output(a: Any, what: str, where: str = "the input") -> None:
    """``NonFiniteError`` when ``a`` (a tensor the model computed on the unperturbed input,
    described by ``what``, e.g. "output 'y'") holds a NaN or an infinity."""
    detail = describe_nonfinite(a)
    if detail is not None:
        raise NonFiniteError(
            f"{what} of the model is not finite on {where}: {detail}. The model itself fails "
            "on this input (an overflow, a log or sqrt of a negative, a division by zero?): no "
            "explanation can be computed; check the input's range and preprocessing")


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 *, open_min: bool = False, open_max: bool = False) -> float:
    """``value`` as a finite float in ``[minimum, maximum]`` (``open_*``: bound excluded), or
    ``ValueError`` naming ``name`` (NaN, ±inf, bools and non-numbers are rejected)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d array as its scalar
    ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.number))
          and not isinstance(value, np.complexfloating) and np.isfinite(value))
    if ok:
        v = float(value)
        ok = ((minimum is None or (v > minimum if open_min else v >= minimum))
              and (maximum is None or (v < maximum if open_max else v <= maximum)))
    if not ok:
        lo = "" if minimum is None else f"{'>' if open_min else '>='} {minimum}"
        hi = "" if maximum is None else f"{'<' if open_max else '<='} {maximum}"
        rule = " and ".join(r for r in (lo, hi) if r)
        raise ValueError(f"{name} must be a finite number{' ' + rule if rule else ''}, got {value!r}")
    return float(value)


def check_finite_array(name: str, value: Any, dtype: Any = None) -> np.ndarray:
    """``value`` as a numeric array (of ``dtype``), or ``ValueError`` when it is not numeric or
    holds a NaN or an infinity."""
    try:
        a = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a numeric array, got {value!r}") from None
    if a.dtype.kind not in "biuf" or a.dtype.kind == "b":
        raise ValueError(f"{name} must be a number or a numeric array, got {value!r}")
    detail = describe_nonfinite(a)
    if detail is not None:
        raise ValueError(f"{name} must be finite; it holds {detail}")
    return a


def finite_rows(a: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: whether every value of row ``i`` of ``a`` ``(n, ...)`` is finite."""
    a = np.asarray(a)
    return np.isfinite(a.reshape(a.shape[0], -1)).all(1) if a.size else np.ones(a.shape[0], bool)


def warn_nonfinite(method: str, bad: int, total: int, what: str, rule: str,
                   stacklevel: int = 3) -> None:
    """``NonFiniteWarning``: ``method``'s model scores were non-finite for ``bad`` of ``total``
    ``what`` (perturbed copies), and ``rule`` says how the map was made without them."""
    if bad:
        warnings.warn(f"{method}: the model's output is not finite (NaN or inf) for {bad} of "
                      f"{total} {what}; {rule}", NonFiniteWarning, stacklevel=stacklevel)


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (bools and floats refused), or ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
