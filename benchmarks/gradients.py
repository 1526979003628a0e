"""Gradient engine speed on the shipped EfficientNet-Lite0 (batch 8, 2 threads by default).

Prints, for input gradients: portable ÷ ort-training and portable ÷ torch autograd, and the
engine's cache-sized runs on per-thread sessions against one run of the whole batch on one
session; for the last conv layer: layer-gradient run ÷ plain forward. Also the raw (unoptimised) onnx-ad model
and, with --profile, ORT's profiler share of time per operator type.

    python benchmarks/gradients.py [--batch 8] [--threads 2] [--profile]
        [--training-python /path/to/venv-with-onnxruntime-training/bin/python]

onnxruntime-training cannot sit beside onnxruntime, so its timing comes from running this
script with another interpreter (--only ort-training); torch is needed only for its timing.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

from common import torch_efficientnet
from onnx_xai import Model, assets, autodiff
from onnx_xai.autodiff import GradientRequest, available_backends, gradient_model, portable, score_graph

LAYER = "/_swish_1/Clip"  # the head activation after the last conv (what Grad-CAM targets)


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def setup(args):
    model = Model(assets.efficientnet_lite0(), threads=args.threads, device="cpu", verbose=False)
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    cls = np.arange(args.batch) * 97 % 1000
    return model, x, cls


def time_backend(args, backend: str) -> dict:
    model, x, cls = setup(args)
    t = time.perf_counter()
    gm = gradient_model(model, batch_size=args.batch, backend=backend, use_cache=False)
    built = time.perf_counter() - t
    out = {"build_s": built, "input_grad_s": timed(lambda: gm.run(x, cls), args.repeat)}
    if backend == "portable":
        whole = one_session(model, args.batch)
        out["one_session_s"] = timed(lambda: whole.run(x, cls), args.repeat)
        out["forward_s"] = timed(lambda: model.predict(x, batch_size=args.batch), args.repeat)
        lg = gradient_model(model, [LAYER], batch_size=args.batch, backend=backend, use_cache=False)
        out["layer_grad_s"] = timed(lambda: lg.run(x, cls), args.repeat)
    return out


def one_session(model: Model, batch: int):
    """The same gradient model run the old way: the whole batch in one run of one session
    with all the threads (no cache-sized runs, no per-thread sessions)."""
    saved, autodiff.RUN_BYTES = autodiff.RUN_BYTES, 1 << 62
    try:
        gm = gradient_model(model, batch_size=batch, backend="portable", use_cache=False)
    finally:
        autodiff.RUN_BYTES = saved
    gm.workers = 1
    return gm


def raw_portable(args, profile: bool) -> dict:
    """The onnx-ad model without passes, and the ORT profile of raw vs optimised models."""
    model, x, cls = setup(args)
    request = GradientRequest(("input",), "logits", (("input", (args.batch, 3, 224, 224)),))
    static, sources, _ = score_graph(model, model.proto, request)
    result = {}
    for name, optimize in (("raw", False), ("optimized", True)):
        proto, grads, seed = portable.build(static, ["input"], "__xai_score", optimize=optimize)
        feeds = {"input": x, "__xai_target_weights": np.eye(1000, dtype=np.float32)[cls],
                 seed: np.ones(1, np.float32)}
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(proto.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        result[f"{name}_s"] = timed(lambda: session.run([grads["input"]], feeds), args.repeat)
        result[f"{name}_nodes"] = len(proto.graph.node)
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), name)
            session = ort.InferenceSession(proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            for _ in range(2):
                session.run([grads["input"]], feeds)
            with open(session.end_profiling()) as f:
                events = json.load(f)
            per_op = collections.Counter()
            for e in events:
                if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                    per_op[e["args"]["op_name"]] += e["dur"]
            total = sum(per_op.values())
            result[f"{name}_profile"] = {k: round(100 * v / total, 1) for k, v in per_op.most_common(6)}
    return result


def time_torch(args) -> float | None:
    net = torch_efficientnet(args.threads)
    if net is None:
        return None
    import torch

    _, x, cls = setup(args)
    idx = torch.as_tensor(cls)[:, None]

    def run():
        xt = torch.tensor(x, requires_grad=True)
        net(xt).gather(1, idx).sum().backward()
        return xt.grad
    return timed(run, args.repeat)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--training-python", help="interpreter of an env with onnxruntime-training")
    p.add_argument("--only", choices=["ort-training"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        print(json.dumps(time_backend(args, "ort-training")))
        return
    res = {"portable": time_backend(args, "portable"), "raw": raw_portable(args, args.profile),
           "torch_s": time_torch(args), "ort_training": None}
    if "ort-training" in available_backends():
        res["ort_training"] = time_backend(args, "ort-training")
    elif args.training_python:
        cmd = [args.training_python, __file__, "--only", "ort-training", "--batch", str(args.batch),
               "--threads", str(args.threads), "--repeat", str(args.repeat)]
        res["ort_training"] = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                        text=True).stdout.strip().splitlines()[-1])
    po, raw = res["portable"], res["raw"]
    print(f"EfficientNet-Lite0, batch {args.batch}, {args.threads} threads (median of {args.repeat})")
    print(f"  forward                      {po['forward_s']:.3f} s")
    print(f"  portable input gradients     {po['input_grad_s']:.3f} s (build {po['build_s']:.1f} s)")
    print(f"  one session, whole batch     {po['one_session_s']:.3f} s → cache-sized runs on "
          f"per-thread sessions are {po['one_session_s'] / po['input_grad_s']:.2f}× faster")
    print(f"  raw onnx-ad model            {raw['raw_s']:.3f} s ({raw['raw_nodes']} nodes; "
          f"optimised {raw['optimized_s']:.3f} s, {raw['optimized_nodes']} nodes)")
    if res["ort_training"]:
        ot = res["ort_training"]["input_grad_s"]
        print(f"  ort-training input gradients {ot:.3f} s")
        print(f"  ratio portable / ort-training         {po['input_grad_s'] / ot:.2f}  (target <= 1.3)")
    else:
        print("  ort-training: not available (pass --training-python)")
    if res["torch_s"]:
        print(f"  torch autograd               {res['torch_s']:.3f} s")
        print(f"  ratio portable / torch autograd       {po['input_grad_s'] / res['torch_s']:.2f}  (target <= 0.5)")
    print(f"  ratio layer-gradient run / forward    {po['layer_grad_s'] / po['forward_s']:.2f}  "
          f"(target <= 1.6; layer {LAYER})")
    for name in ("raw", "optimized"):
        if f"{name}_profile" in raw:
            print(f"  ORT profile {name:9s} % per op: {raw[f'{name}_profile']}")


if __name__ == "__main__":
    sys.exit(main())
