"""RISE speed on the shipped EfficientNet-Lite0 and the cat photo (CPU, 2 threads, 1000 masks).

Prints our RISE time ÷ bare ONNX Runtime inference of the same number of images at the same
batch size (the floor any perturbation method pays), median of interleaved repeats.

    python benchmarks/rise.py [--masks 1000] [--batch 32] [--repeats 3]
"""
from __future__ import annotations

import sys
from pathlib import Path

from onnx_xai import RISE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_inference, cat_input, interleaved, mask_benchmark_args, shipped_model  # noqa: E402


def measure(masks: int = 1000, batch: int = 32, repeats: int = 3, threads: int = 2) -> dict[str, float]:
    """``{"rise": s, "ort": s, "ratio": rise / ort}`` on the cat photo."""
    model = shipped_model(threads)
    x = cat_input()
    rise = RISE(model, n_masks=masks, cell_size=7, n_batch=batch, seed=0, verbose=False)
    RISE(model, n_masks=batch, n_batch=batch, seed=0, verbose=False)(x)  # compile the kernels
    bare = bare_inference(model, x, masks, batch)
    bare()
    t = interleaved({"rise": lambda: rise(x, index=285), "ort": bare}, repeats)
    return {**t, "ratio": t["rise"] / t["ort"]}


def main() -> None:
    a = mask_benchmark_args(__doc__)
    r = measure(a.masks, a.batch, a.repeats, a.threads)
    print(f"EfficientNet-Lite0, cat photo, {a.masks} masks, batch {a.batch}, {a.threads} threads, "
          f"median of {a.repeats}")
    print(f"RISE {r['rise']:.2f} s   bare ONNX Runtime {r['ort']:.2f} s   ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
