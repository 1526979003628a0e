"""Make examples/vit/: a tiny vision transformer trained on the synthetic shapes (ONNX + JSON
sidecar), two example PNGs, and the README's picture of Grad-CAM / attention rollout on it
(needs torch and transformers; a few minutes on one CPU thread).

A Hugging Face ViTForImageClassification (64 × 64 grey images, 8 × 8 patches → 8 × 8 grid +
[CLS], hidden 48, 3 blocks of 3 heads, eager attention so the Softmax is in the graph) learns
which of ``onnx_xai.synthetic.SHAPES_2D`` an image shows, on fresh ``synthetic.shapes_2d``
images every epoch (seeds 100, 101, ...), held-out accuracy on seed 2 written to the sidecar;
exported with torch.onnx (TorchScript exporter, opset 17, dynamic batch).

PNGs hold ``(x + 1.5) · 60`` (8 bit, the generator's range −1.5…2.75); the sidecar undoes it
(``scale`` 1/60, ``mean`` 1.5), so ``onnx-xai explain`` feeds the model what it was trained on.

    python examples/make_vit_shapes.py          # model, sidecar, examples/vit/shape*.png and
                                                # examples/pictures/vit_cam.png (runs the CLI)
    python examples/make_vit_shapes.py picture  # the picture only
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from onnx_xai import synthetic

HERE = Path(__file__).resolve().parent
OUT = HERE / "vit"
PNG_SCALE, PNG_OFFSET = 60.0, 1.5  # png = (x + offset) * scale
EXAMPLES = (11, 12)  # a triangle and a cross of synthetic.shapes_2d(20, seed=2): examples/vit/shape*.png


class Logits(nn.Module):
    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x).logits


def vit() -> Logits:
    cfg = ViTConfig(image_size=64, patch_size=8, num_channels=1, hidden_size=48, num_hidden_layers=3,
                    num_attention_heads=3, intermediate_size=96, num_labels=len(synthetic.SHAPES_2D),
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return Logits(ViTForImageClassification(cfg))


def train(net: nn.Module, epochs: int, per_epoch: int, batch: int = 64) -> None:
    """AdamW with warm-up and cosine decay, fresh images every epoch."""
    steps = epochs * (per_epoch // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for epoch in range(epochs):
        x, y, _ = synthetic.shapes_2d(per_epoch, seed=100 + epoch)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        order = torch.randperm(per_epoch, generator=gen)
        total, t0 = 0.0, time.time()
        for s in range(0, per_epoch - batch + 1, batch):
            idx = order[s:s + batch]
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * batch
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / per_epoch:.4f} ({time.time() - t0:.0f} s)", flush=True)
    net.eval()


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def to_png(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float generator image → uint8 (the sidecar's inverse)."""
    return np.clip(np.round((image + PNG_OFFSET) * PNG_SCALE), 0, 255).astype(np.uint8)


def export(net: nn.Module, example: torch.Tensor, sidecar: dict) -> None:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), example, buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    (OUT / "shapes_vit.onnx").write_bytes(buf.getvalue())
    (OUT / "shapes_vit.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote shapes_vit.onnx ({len(buf.getvalue()) / 1024:.0f} KiB)")


def make_model() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    t0 = time.time()
    net = vit()
    train(net, epochs=14, per_epoch=8192)
    xv, yv, _ = synthetic.shapes_2d(1000, seed=2)
    acc = accuracy(net, xv, yv)
    print(f"  held-out accuracy {acc:.3f} (trained in {time.time() - t0:.0f} s)")
    export(net, torch.from_numpy(xv[:2]), {
        "input_name": "input", "task": "classification", "generator": "onnx_xai.synthetic.shapes_2d",
        "classes": list(synthetic.SHAPES_2D), "color": "gray", "scale": 1.0 / PNG_SCALE,
        "mean": [PNG_OFFSET], "std": [1.0], "heldout_accuracy": round(acc, 4), "heldout_seed": 2,
        "train_seeds": [100, 113]})


def example_images() -> list[Path]:
    x, y, _ = synthetic.shapes_2d(20, seed=2)
    paths = [OUT / f"shape{i}_{synthetic.SHAPES_2D[y[i]]}.png" for i in EXAMPLES]
    for i, path in zip(EXAMPLES, paths):
        cv2.imwrite(str(path), to_png(x[i, 0]))
    return paths


def picture() -> None:
    """Write the example PNGs and the picture: input | Grad-CAM (automatic layer) | rollout |
    grad-rollout, one row per PNG, from the overlays ``onnx-xai explain`` writes."""
    cli = Path(sys.executable).with_name("onnx-xai")
    rows = []
    pngs = example_images()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(cli), "explain", str(OUT / "shapes_vit.onnx"), *map(str, pngs),
                        "--method", "gradcam,rollout,grad-rollout", "--out", tmp, "--quiet"], check=True)
        for png in pngs:
            key = png.name.replace(".", "_")
            tiles = [cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)]
            tiles += [cv2.imread(str(Path(tmp) / f"{key}_{m}.png")) for m in ("gradcam", "rollout", "grad-rollout")]
            tiles = [cv2.resize(t[:, :t.shape[0]], (192, 192), interpolation=cv2.INTER_NEAREST) for t in tiles]
            rows.append(np.concatenate([np.pad(t, ((4, 4), (4, 4), (0, 0)), constant_values=255) for t in tiles], 1))
    head = np.full((28, rows[0].shape[1], 3), 255, np.uint8)
    for j, title in enumerate(("input", "Grad-CAM (auto layer)", "rollout", "grad-rollout")):
        cv2.putText(head, title, (8 + 200 * j, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    path = HERE / "pictures" / "vit_cam.png"
    cv2.imwrite(str(path), np.concatenate([head, *rows]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    if sys.argv[1:] != ["picture"]:
        make_model()
    picture()
