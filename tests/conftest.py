"""Shared test fixtures. Torch-free: the torch reference models are in ``torch_models.py``,
imported by the tests that need torch after ``pytest.importorskip("torch")``."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest


def conv_classifier(batch="B", out_shape=None, tail=()) -> onnx.ModelProto:
    """A small ONNX classifier built by hand: x (batch, 3, 8, 8) → Conv → Relu ("relu") →
    GlobalAveragePool → Flatten → Gemm ("fc") → y (batch, 4); ``tail`` nodes read the Gemm's
    output "g" and write "y" (of ``out_shape``) instead."""
    rng = np.random.default_rng(0)
    inits = [onh.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "W"),
             onh.from_array(rng.normal(size=(4, 6)).astype(np.float32), "F")]
    nodes = [oh.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("GlobalAveragePool", ["r"], ["p"]), oh.make_node("Flatten", ["p"], ["f"]),
             oh.make_node("Gemm", ["f", "F"], ["g" if tail else "y"], transB=1, name="fc")] + list(tail)
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape or [batch, 4])], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


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
