"""Cost of an exported explainer on the shipped EfficientNet-Lite0 (CPU, 2 threads): latency of
the exported Grad-CAM model (logits + upsampled, normalised map) ÷ the original model's, at
batch 1 and 16, runs interleaved (issue 11 asks for ≤ 1.6).

    python benchmarks/export.py [--repeats 10] [--method gradcam]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine  # noqa: E402

from onnx_xai import assets, export_explainer  # noqa: E402

THREADS = 2


def session(model) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = THREADS, 3
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--method", default="gradcam")
    args = parser.parse_args()
    path = assets.efficientnet_lite0()
    plain, explainer = session(path), session(export_explainer(path, args.method))
    print(f"{machine()}; exported {args.method} (default layer) vs the plain model")
    print("batch  plain (ms)  exported (ms)  ratio")
    for batch in (1, 16):
        x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
        fns = {"plain": lambda: plain.run(None, {"input": x}),
               "exported": lambda: explainer.run(None, {"input": x})}
        for fn in fns.values():
            fn()  # warm-up
        t = interleaved(fns, args.repeats if batch == 1 else max(3, args.repeats // 3))
        print(f"{batch:5d}  {1e3 * t['plain']:10.1f}  {1e3 * t['exported']:13.1f}  "
              f"{t['exported'] / t['plain']:5.2f}")


if __name__ == "__main__":
    main()
