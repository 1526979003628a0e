"""Train the two small synthetic-task CNNs and export them to ONNX (torch, CPU, a few minutes).

    python models/train_synthetic.py [both|2d|3d]   # writes models/synthetic_shapes2d.onnx/.json
                                                    # and models/synthetic_blobs3d.onnx/.json

Data: ``onnx_xai.synthetic.shapes_2d`` (which of 4 shapes, 64 × 64, 1 channel) and
``onnx_xai.synthetic.blobs_3d`` (bright or dark blob, 24³, 1 channel), seeds 1 (train) and
2 (held-out accuracy written to the sidecar). Deterministic up to torch's CPU kernels.
"""
from __future__ import annotations

import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnx_xai import synthetic

HERE = Path(__file__).resolve().parent


def net_2d() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(synthetic.SHAPES_2D)))


def net_3d() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(8, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(16, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, len(synthetic.BLOBS_3D)))


def train(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, batch: int = 64) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x) // batch))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x) - batch + 1, batch):
            idx = order[s:s + batch]
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * batch
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}", flush=True)
    net.eval()


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export(net: nn.Module, example: torch.Tensor, name: str, sidecar: dict) -> None:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    (HERE / f"{name}.onnx").write_bytes(buf.getvalue())
    (HERE / f"{name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote {name}.onnx ({len(buf.getvalue()) / 1024:.0f} KiB)")


def main(which: str) -> None:
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
    t0 = time.time()
    if which in ("both", "2d"):
        shapes()
    if which in ("both", "3d"):
        blobs()
    print(f"done in {time.time() - t0:.0f} s")


def shapes() -> None:
    torch.manual_seed(0)
    print("2D shapes")
    x, y, _ = synthetic.shapes_2d(8000, seed=1)
    net = net_2d()
    train(net, x, y, epochs=8)
    xv, yv, _ = synthetic.shapes_2d(1000, seed=2)
    acc = accuracy(net, xv, yv)
    print(f"  held-out accuracy {acc:.3f}")
    export(net, torch.from_numpy(x[:2]), "synthetic_shapes2d", {
        "input_name": "input", "task": "classification", "generator": "onnx_xai.synthetic.shapes_2d",
        "classes": list(synthetic.SHAPES_2D), "cam_layer": "/10/Relu",
        "heldout_accuracy": round(acc, 4), "heldout_seed": 2, "train_seed": 1})


def blobs() -> None:
    torch.manual_seed(0)
    print("3D blobs")
    x, y, _ = synthetic.blobs_3d(2000, size=24, seed=1)
    net = net_3d()
    train(net, x, y, epochs=5, batch=32)
    xv, yv, _ = synthetic.blobs_3d(500, size=24, seed=2)
    acc = accuracy(net, xv, yv)
    print(f"  held-out accuracy {acc:.3f}")
    export(net, torch.from_numpy(x[:2]), "synthetic_blobs3d", {
        "input_name": "input", "task": "classification", "generator": "onnx_xai.synthetic.blobs_3d",
        "classes": list(synthetic.BLOBS_3D), "cam_layer": "/10/Relu",
        "size": 24, "heldout_accuracy": round(acc, 4), "heldout_seed": 2, "train_seed": 1})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "both")
