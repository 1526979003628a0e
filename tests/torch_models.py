"""Torch reference models for the tests, exported to ONNX inside them (needs torch).

Import it after ``torch = pytest.importorskip("torch")``, so that without torch the tests that
need it are skipped, not broken. ``conftest.py`` stays torch-free.
"""
from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def export_onnx(module, example, *, dynamic_batch: bool = True, input_names=("x",),
                output_names=("y",), opset: int = 17) -> bytes:
    """Export a torch module (eval mode) with the legacy exporter; return the ONNX bytes."""
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


def tiny_cnn() -> tuple[nn.Module, bytes]:
    """(torch module, onnx bytes) of a small 2D CNN classifier: (B, 3, 16, 16) → (B, 5)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()
    return net, export_onnx(net, torch.randn(2, 3, 16, 16))


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


class SmallResNet(nn.Module):
    """torchvision-like ResNet with module names conv1 … layer4, fc (layer3 optional)."""

    def __init__(self, n_classes=5, layer3_stride: int | None = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.layer3 = (nn.Identity() if layer3_stride is None
                       else nn.Sequential(BasicBlock(16, 16, layer3_stride)))
        self.layer4 = nn.Sequential(BasicBlock(16, 24, 2), BasicBlock(24, 24, 1))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(24, n_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_bn(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are an identity); eval."""
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.3)
    return net.eval()


def tiny_bert(num_labels: int = 3, seed: int = 0, token_types: bool = False) -> tuple[nn.Module, bytes]:
    """(HF ``BertForSequenceClassification`` with seeded random weights, onnx bytes): vocab 100,
    hidden 32, 2 layers, 2 heads; inputs ``input_ids``, ``attention_mask`` (and with
    ``token_types`` ``token_type_ids``) ``(B, T)`` int64 (batch and length dynamic) →
    ``logits`` ``(B, num_labels)``. Needs ``transformers``."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64, num_labels=num_labels)
    net = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(5, 100, (2, 12))
    buf = io.BytesIO()
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"logits": {0: "batch"}}
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if token_types else ())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["logits"], dynamic_axes=axes)
    return net, buf.getvalue()


class TinySqueezeNet(nn.Module):
    """SqueezeNet 1.1 in miniature: conv, ReLU, MaxPool(ceil_mode), two Fire modules (squeeze
    1x1, expand 1x1 and 3x3 concatenated), MaxPool, a 1x1 conv classifier, global average pool.
    Module names ``features.*`` / ``classifier.*`` as torchvision's."""

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.squeeze, self.relu = nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True)
            self.expand1x1, self.expand3x3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

        def forward(self, x):
            s = self.relu(self.squeeze(x))
            return torch.cat([self.relu(self.expand1x1(s)), self.relu(self.expand3x3(s))], 1)

    def __init__(self, n_classes=5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            TinySqueezeNet.Fire(16, 4, 8), TinySqueezeNet.Fire(16, 4, 8),
            nn.MaxPool2d(3, 2, ceil_mode=True), TinySqueezeNet.Fire(16, 6, 12))
        self.classifier = nn.Sequential(nn.Conv2d(24, n_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)
