"""Shared test helpers: torch reference models exported to ONNX inside the tests."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn


def export_onnx(module, example, *, dynamic_batch: bool = True, input_names=("x",),
                output_names=("y",), opset: int = 17) -> bytes:
    """Export a torch module (eval mode) with the legacy exporter; return the ONNX bytes."""
    import torch

    module = module.eval()
    examples = example if isinstance(example, tuple) else (example,)
    axes = None
    if dynamic_batch:
        axes = {n: {0: "batch"} for n in list(input_names) + list(output_names)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, examples, buf, dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=axes)
    return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_cnn():
    """(torch module, onnx bytes) of a small 2D CNN classifier: (B, 3, 16, 16) → (B, 5)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()
    return net, export_onnx(net, torch.randn(2, 3, 16, 16))


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


class BasicBlock(nn.Module):
    """torchvision-style BasicBlock: one ReLU module called twice (exports relu, relu_1)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)
