"""Folder audit throughput: the Ray engine (actors on a local Ray instance) against the local
engine (``--workers`` processes) at the same number of cores, and the per-image overhead Ray adds.

Each engine audits ``n`` synthetic-shape images (64×64, the shipped ``synthetic_shapes2d`` model,
occlusion 8×8 at overlap 0.5 + Grad-CAM, no metrics) into a fresh folder, at two sizes (``--small``
and ``--n`` images), runs interleaved, median of ``--repeats``. Both engines get ``--cores``
workers/actors with one ONNX Runtime thread each; the Ray instance is started once, before the
timed runs (a cluster that already runs), and its start-up is printed on its own.

Prints: wall seconds, throughput (images/s) and Ray ÷ local throughput at ``n`` images (goal
≥ 0.85); the fixed cost (intercept) and the core-seconds per image (slope) of each engine from the
two sizes; Ray's per-image overhead = the difference of the slopes, in ms of one core.

Ray starts its worker processes at nice 15 (``RAY_worker_niceness``): on a machine that other work
shares they get less CPU than the local engine's processes. Here both run at the same priority
(``RAY_worker_niceness=0`` unless set); on a dedicated node it makes no difference.

    python benchmarks/audit_ray.py [--n 200] [--small 40] [--cores 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from onnx_xai import assets, synthetic  # noqa: E402
from onnx_xai.audit import Config, RunOptions, run_audit  # noqa: E402
from onnx_xai.engines.ray_audit import RayOptions, import_ray  # noqa: E402


def images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    x, _, _ = synthetic.shapes_2d(n, seed=0)
    paths = []
    for i, img in enumerate(x[:, 0]):
        paths.append(folder / f"shape{i:04d}.png")
        cv2.imwrite(str(paths[-1]), np.clip((img + 1) * 100, 0, 255).astype(np.uint8))
    return paths


def timed_audit(files: list[Path], out: Path, run: RunOptions) -> float:
    config = Config(model=str(assets.model_dir() / "synthetic_shapes2d.onnx"), methods=["occlusion", "gradcam"],
                    options={"mask_size": 8, "overlap": 0.5}, threads=1, metric_steps=0)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    records = run_audit(config, files, out, run)
    wall = time.perf_counter() - t
    assert len(records) == len(files) and all(r["status"] == "ok" for r in records), "failed inputs"
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--small", type=int, default=40)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")  # read by the raylet that ray.init starts
    ray = import_ray()
    print(machine(), f"RAY_worker_niceness={os.environ['RAY_worker_niceness']}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = images(root / "in", args.n)
        t = time.perf_counter()
        ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        print(f"Ray start-up (ray.init of a local instance, {args.cores} CPUs): {time.perf_counter() - t:.1f} s")
        engines = {"local": RunOptions(workers=args.cores, resume=False, progress=False),
                   "ray": RunOptions(engine="ray", resume=False, progress=False, ray=RayOptions(actors=args.cores))}
        walls: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for n in (args.small, args.n):
                for name, run in engines.items():
                    walls.setdefault((name, n), []).append(timed_audit(files[:n], root / name, run))
        ray.shutdown()
    wall = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\n{args.n} images, {args.cores} cores (workers/actors × 1 ORT thread), median of {args.repeats}:")
    for name in engines:
        print(f"  {name:5s}: {wall[name, args.n]:7.2f} s  {args.n / wall[name, args.n]:6.2f} images/s")
    ratio = wall["local", args.n] / wall["ray", args.n]
    print(f"  ray / local throughput: {ratio:.2f}x (goal >= 0.85)")
    slope = {}
    for name in engines:
        slope[name] = (wall[name, args.n] - wall[name, args.small]) / (args.n - args.small)
        fixed = wall[name, args.small] - slope[name] * args.small
        print(f"  {name:5s}: fixed {fixed:5.2f} s (start-up: processes/actors, model load), "
              f"{1000 * slope[name] * args.cores:6.1f} core-ms per image")
    print(f"  per-image overhead of Ray: {1000 * (slope['ray'] - slope['local']) * args.cores:+.1f} core-ms "
          f"({100 * (slope['ray'] / slope['local'] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
