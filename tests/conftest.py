"""Shared test fixtures. Torch-free: the torch reference models are in ``torch_models.py``,
imported by the tests that need torch after ``pytest.importorskip("torch")``."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_cnn():
    """(torch module, onnx bytes) of a small 2D CNN classifier: (B, 3, 16, 16) → (B, 5).
    Skips the test without torch."""
    pytest.importorskip("torch")
    import torch_models

    return torch_models.tiny_cnn()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Built gradient models go to a temporary cache, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ONNX_XAI_CACHE", str(tmp_path_factory.mktemp("gradient_cache")))
    yield
    mp.undo()
