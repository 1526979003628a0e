"""Class scores from raw model outputs: the ``activate=`` argument shared by black-box methods."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .runtime import sigmoid, softmax


def activation(activate: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``activate`` → a function ``(B, K) raw outputs → (B, K) scores``.

    True: softmax over classes when K > 1, else sigmoid; False: raw outputs; a callable is
    used as it is (it must return ``(B, K)``).
    """
    if activate is True:
        return lambda y: softmax(y, axis=1) if y.ndim > 1 and y.shape[1] > 1 else sigmoid(y)
    if activate is False:
        return lambda y: y
    if callable(activate):
        return activate
    raise ValueError(f"activate must be True, False or a callable on the (B, K) outputs, got {activate!r}")


def class_scores(raw: np.ndarray, activate: Callable[[np.ndarray], np.ndarray], n: int) -> np.ndarray:
    """Apply ``activate`` to a batch of ``n`` raw outputs; check the result is ``(n, K)`` float64."""
    if raw.ndim < 2:
        raise ValueError(f"the model output has shape {tuple(raw.shape)}: one value per sample, not "
                         "class scores (B, K, ...); export the model with a (B, 1) output or pass "
                         "activate= a callable that returns (B, K) scores")
    if raw.ndim > 2 and all(s == 1 for s in raw.shape[2:]):
        raw = raw.reshape(raw.shape[:2])
    scores = np.asarray(activate(raw), dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != n:
        raise ValueError(f"class scores must be (batch, classes); the model output {tuple(raw.shape)} "
                         f"became {tuple(scores.shape)}: pass activate= a callable that reduces it "
                         "to one score per class")
    return scores


def check_index(index: Any, n_classes: int) -> list[int] | None:
    """None, an int or a sequence of ints in ``[0, n_classes)`` → None or a list of ints."""
    if index is None:
        return None
    many = not isinstance(index, (int, np.integer))
    values = list(np.atleast_1d(np.asarray(index))) if many else [index]
    if not values or any(not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_))
                         or not 0 <= v < n_classes for v in values):
        raise ValueError(f"index must be None, a class index or a sequence of class indices in "
                         f"[0, {n_classes}), got {index!r}")
    return [int(v) for v in values]
