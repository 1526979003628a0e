"""``onnx-xai`` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import assets
from .preprocess import ImageSpec, read_image
from .runtime import Model, softmax


def _top_k(probs: np.ndarray, labels: list[str] | None, k: int = 5) -> list[tuple[int, str, float]]:
    order = np.argsort(-probs)[:k]
    return [(int(i), labels[i] if labels and i < len(labels) else str(i), float(probs[i])) for i in order]


def cmd_demo(args: argparse.Namespace) -> int:
    """Top-5 labels, then explanations, for the example photos with the shipped model."""
    path = assets.efficientnet_lite0()
    spec = ImageSpec.for_model(path)
    model = Model(path, device=args.device, threads=args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"model: {path.name} on {model.device}")
    for image_path in assets.example_images():
        image = read_image(image_path)
        x = spec.to_input(image)
        probs = softmax(model.predict(x))[0]
        print(f"\n{image_path.name}: top-5")
        for idx, label, p in _top_k(probs, spec.labels):
            print(f"  {idx:4d}  {p:6.3f}  {label}")
    print(f"\noutputs in {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-xai", description="Explain ONNX models with ONNX Runtime.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain the example photos with the shipped EfficientNet-Lite0")
    demo.add_argument("--out", default="onnx-xai-demo", help="output folder (default: ./onnx-xai-demo)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    demo.add_argument("--threads", type=int, default=None)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"onnx-xai: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
