"""D-RISE speed on the tiny ultralytics YOLOv8 of the tests (64 × 64, batch 1 baked in; CPU).

Prints our D-RISE time (1000 masks) ÷ bare ONNX Runtime inference of 1000 images at the same
batch size (the floor any perturbation method pays), median of interleaved repeats. Both run
the batch the graph allows: ultralytics bakes batch 1 into the head's Reshapes, so ``Model``'s
dynamic-batch rewrite is refused there (its check) and runs are of one image.

    python benchmarks/drise.py [--masks 1000] [--batch 32] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from onnx_xai import DRISE, Model
from onnx_xai.detection import DetectionTarget, detect, guess_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_inference, interleaved, machine, mask_benchmark_args  # noqa: E402

YOLO = Path(__file__).resolve().parents[1] / "tests" / "data" / "detection" / "tiny_yolov8.onnx"


def measure(masks: int = 1000, batch: int = 32, repeats: int = 3, threads: int = 2) -> dict[str, float]:
    """``{"drise": s, "ort": s, "ratio": drise / ort}``."""
    model = Model(YOLO, device="cpu", threads=threads, verbose=False)
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    found = detect(model, x, conf=0.0)[0]
    target = DetectionTarget.from_detection(found[0], guess_spec(model))
    drise = DRISE(model, n_masks=masks, n_batch=batch, seed=0, verbose=False)
    DRISE(model, n_masks=batch, n_batch=batch, seed=0, verbose=False)(x, target)  # compile, make the batch dynamic
    usable = model.plan_batch(np.repeat(x, batch, axis=0), batch, {})
    bare = bare_inference(model, x, masks, usable)
    bare()
    t = interleaved({"drise": lambda: drise(x, target), "ort": bare}, repeats)
    return {**t, "ratio": t["drise"] / t["ort"], "batch": usable}


def main() -> None:
    a = mask_benchmark_args(__doc__)
    r = measure(a.masks, a.batch, a.repeats, a.threads)
    print(f"tiny YOLOv8 64x64, {a.masks} masks, batch {a.batch}, {a.threads} threads, median of {a.repeats}; "
          f"{machine()}")
    print(f"runs of {r['batch']} image(s)")
    print(f"D-RISE {r['drise']:.2f} s   bare ONNX Runtime {r['ort']:.2f} s   ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
