"""RISE speed on the shipped EfficientNet-Lite0 and the cat photo (CPU, 2 threads, 1000 masks).

Prints our RISE time ÷ bare ONNX Runtime inference of the same number of images at the same
batch size (the floor any perturbation method pays), median of interleaved repeats.

    python benchmarks/rise.py [--masks 1000] [--batch 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np

from onnx_xai import RISE, Model, assets
from onnx_xai.preprocess import ImageSpec, read_image


def cat_input() -> np.ndarray:
    """The cat photo preprocessed for the shipped EfficientNet-Lite0: ``(1, 3, 224, 224)``."""
    cat = next(p for p in assets.example_images() if p.stem == "chelsea")
    return ImageSpec.for_model(assets.efficientnet_lite0()).to_input(read_image(cat))


def bare_inference(model: Model, x: np.ndarray, n_images: int, batch: int) -> Callable[[], None]:
    """Run ``n_images`` copies of ``x`` through the bare session, ``batch`` at a time."""
    batch_x = np.ascontiguousarray(np.repeat(x, batch, axis=0))
    name, out = model.input_name, model.output_names[0]

    def run() -> None:
        for start in range(0, n_images, batch):
            model.session.run([out], {name: batch_x[:min(batch, n_images - start)]})
    return run


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; runs interleaved so machine load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def measure(masks: int = 1000, batch: int = 32, repeats: int = 3, threads: int = 2) -> dict[str, float]:
    """``{"rise": s, "ort": s, "ratio": rise / ort}`` on the cat photo."""
    model = Model(assets.efficientnet_lite0(), device="cpu", threads=threads, verbose=False)
    x = cat_input()
    rise = RISE(model, n_masks=masks, cell_size=7, n_batch=batch, seed=0, verbose=False)
    RISE(model, n_masks=batch, n_batch=batch, seed=0, verbose=False)(x)  # compile the kernels
    bare = bare_inference(model, x, masks, batch)
    bare()
    t = interleaved({"rise": lambda: rise(x, index=285), "ort": bare}, repeats)
    return {**t, "ratio": t["rise"] / t["ort"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    r = measure(a.masks, a.batch, a.repeats, a.threads)
    print(f"EfficientNet-Lite0, cat photo, {a.masks} masks, batch {a.batch}, {a.threads} threads, "
          f"median of {a.repeats}")
    print(f"RISE {r['rise']:.2f} s   bare ONNX Runtime {r['ort']:.2f} s   ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
