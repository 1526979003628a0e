"""Grad-CAM speed on a ViT-Tiny-sized vision transformer (CPU, 2 threads).

A Hugging Face ``ViTForImageClassification`` with ViT-Tiny's shape (224², patch 16, 12 blocks,
width 192, 3 heads, 1000 classes) and seeded random weights is exported with torch.onnx
(TorchScript) to a temporary file. Prints Grad-CAM per image on the automatic layer (the
last block's first LayerNorm, tokens folded to the 14×14 grid) ÷ one bare forward pass of
the same session (target ≤ 1.5×), and ÷ pytorch-grad-cam-style Grad-CAM in torch on the same
weights (hooks + autograd, for scale).

    python benchmarks/vit_cam.py [--repeats 5] [--depth 12]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_inference, interleaved, machine  # noqa: E402

import onnx_xai  # noqa: E402

THREADS = 2


def vit_tiny(depth: int):
    """(torch module pixels → logits, its ONNX path in a temporary folder)."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=depth,
                                 num_attention_heads=3, intermediate_size=768, num_labels=1000)

    class Pixels(transformers.ViTForImageClassification):
        def forward(self, x):
            return super().forward(pixel_values=x).logits

    net = Pixels(cfg).eval()
    path = Path(tempfile.mkdtemp()) / "vit_tiny.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return net, path


def torch_gradcam(net, x):
    """Grad-CAM of the argmax class on ``blocks[-1].norm1`` in torch (hooks + autograd)."""
    import torch

    layer = net.vit.encoder.layer[-1].layernorm_before if hasattr(net.vit, "encoder") else net.vit.layers[-1].layernorm_before
    xt = torch.from_numpy(x)

    def run():
        store = {}
        hook = layer.register_forward_hook(lambda m, i, o: store.update(a=o))
        logits = net(xt)
        hook.remove()
        grad, = torch.autograd.grad(logits.max(1).values.sum(), store["a"])
        a, g = store["a"][:, 1:], grad[:, 1:]
        return torch.relu((g.mean(1, keepdim=True) * a).sum(2)).detach().numpy()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=12)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(THREADS)
    print(machine())
    net, path = vit_tiny(args.depth)
    model = onnx_xai.Model(path, device="cpu", threads=THREADS, verbose=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    gradcam = onnx_xai.GradCAM(model)  # automatic layer, automatic token folding
    print(f"automatic layer: {gradcam.target_layers[0]}")
    gradcam(x)  # build the gradient model (cached) and warm the session
    ref = torch_gradcam(net, x)
    ref()
    t = interleaved({"ours": lambda: gradcam(x), "forward": bare_inference(model, x, 1, 1), "torch": ref},
                    args.repeats)
    print(f"Grad-CAM per image (ViT, {args.depth} blocks): ours {t['ours'] * 1e3:.1f} ms, bare forward "
          f"{t['forward'] * 1e3:.1f} ms → {t['ours'] / t['forward']:.2f}× forward (target ≤ 1.5×)")
    print(f"  torch Grad-CAM (hooks + autograd) {t['torch'] * 1e3:.1f} ms → ours ÷ torch = "
          f"{t['ours'] / t['torch']:.2f}")


if __name__ == "__main__":
    main()
