"""Attention rollout speed on a ViT-Tiny-sized Hugging Face ViT (224 px, 16 px patches, 12 blocks,
192 wide, 3 heads, random weights; needs torch and transformers to export it), CPU, 2 threads.

Prints per image: rollout ÷ one bare forward pass, gradient-weighted rollout ÷ one bare forward
pass, and gradient-weighted rollout ÷ the authors' formula in torch on the same weights (eager
attention, one forward + backward with autograd).

    python benchmarks/rollout.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_inference, interleaved, machine  # noqa: E402

import onnx_xai  # noqa: E402

THREADS = 2


def vit_tiny():
    """(torch HF ViT with eager attention, its ONNX bytes)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12,
                    num_attention_heads=3, intermediate_size=768, num_labels=1000,
                    attn_implementation="eager")
    net = ViTForImageClassification(cfg).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return net, buf.getvalue()


def torch_chefer(net, x):
    """The authors' gradient-weighted rollout in torch: forward with attentions, autograd, R."""
    import torch

    out = net(x, output_attentions=True)
    atts = out.attentions
    grads = torch.autograd.grad(out.logits[0, out.logits[0].argmax()], atts)
    r = torch.eye(atts[0].shape[-1])
    for a, g in zip(atts, grads):
        r = r + (g[0] * a[0]).clamp(min=0).mean(0) @ r
    return r[0, 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    import torch

    net, data = vit_tiny()
    model = onnx_xai.Model(data, device="cpu", threads=THREADS, verbose=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    roll, grad = onnx_xai.AttentionRollout(model), onnx_xai.GradientRollout(model)
    roll(x), grad(x)  # build the exposed / gradient models, warm the sessions
    xt = torch.from_numpy(x)
    fns = {"rollout": lambda: roll(x), "grad-rollout": lambda: grad(x),
           "forward": bare_inference(model, x, 1, 1), "torch": lambda: torch_chefer(net, xt)}
    t = interleaved(fns, args.repeats, warmup=True)
    f = t["forward"]
    print(f"bare forward {f * 1e3:.1f} ms; rollout {t['rollout'] * 1e3:.1f} ms → {t['rollout'] / f:.2f}× forward; "
          f"grad-rollout {t['grad-rollout'] * 1e3:.1f} ms → {t['grad-rollout'] / f:.2f}× forward")
    print(f"grad-rollout ÷ the authors' formula in torch ({t['torch'] * 1e3:.1f} ms): "
          f"{t['grad-rollout'] / t['torch']:.2f}×")


if __name__ == "__main__":
    main()
