"""LIME / KernelSHAP / image_lime speed and memory on the shipped EfficientNet-Lite0 and the cat
photo (CPU, 2 threads).

Prints (a) each method's time ÷ bare ONNX Runtime inference of the same number of images at the
same batch size (median of interleaved repeats), (b) its peak memory: the max RSS of a fresh
process that loads the model and explains the photo once (next to that of a process running bare
ORT on as many images), and (c) with ``--dianna-python`` (a venv with ``pip install dianna``),
DIANNA's LIME and KernelSHAP on the same model and photo at the same number of samples, timed
(one run after a warm-up of its session) and measured the same way in their own process.

    python benchmarks/lime.py [--samples 1000] [--shap-samples 500] [--batch 32] [--repeats 3]
                              [--dianna-python /tmp/dianna-venv/bin/python]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_inference, cat_input, interleaved, machine, shipped_model  # noqa: E402

import onnx_xai  # noqa: E402

THREADS, CAT, FEATURES = 2, 285, 50


def explainers(model: onnx_xai.Model, x: np.ndarray, samples: int, shap_samples: int, batch: int):
    """name → (zero-argument run, images it feeds the model)."""
    lime = onnx_xai.LIME(model, n_samples=samples, perturbations_per_eval=batch, feature_mask="superpixels",
                         n_features=FEATURES, activate=True, seed=0, verbose=False)
    shap = onnx_xai.KernelSHAP(model, n_samples=shap_samples, perturbations_per_eval=batch,
                               feature_mask="superpixels", n_features=FEATURES, seed=0, verbose=False)
    X = x[0].transpose(1, 2, 0)
    return {
        "LIME": (lambda: lime(x, CAT), samples),
        "KernelSHAP": (lambda: shap(x, CAT), shap_samples),
        "image_lime": (lambda: onnx_xai.image_lime(model, X, CAT, num_samples=samples, num_features=FEATURES,
                                                   mini_batch_size=batch, activation="softmax", seed=0,
                                                   verbose=False), samples),
    }


def child(name: str, samples: int, shap_samples: int, batch: int) -> None:
    """Run one method (or bare ORT) once in this fresh process; print time and peak RSS."""
    model, x = shipped_model(THREADS), cat_input()
    if name == "ort":
        run, n = bare_inference(model, x, samples, batch), samples
    else:
        run, n = explainers(model, x, samples, shap_samples, batch)[name]
    t = time.perf_counter()
    run()
    print(json.dumps({"time": time.perf_counter() - t, "images": n, "peak_mb": peak_mb()}))


def peak_mb() -> float:
    """This process's peak RSS (VmHWM) in MB. Not ``getrusage``'s ru_maxrss: Linux carries that
    over from the parent through fork and exec, so a child would report at least its parent's."""
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status")
                    if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_child(args: list[str], python: str = sys.executable, script: str | None = None) -> dict:
    """Run this script's ``--child`` (or ``script``) in a fresh process from a neutral directory
    (so that this file, ``lime.py``, never shadows the ``lime`` package DIANNA imports)."""
    cmd = [python, str(Path(__file__).resolve()), "--child", *args] if script is None else [python, "-c", script, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=tempfile.gettempdir(),
                         env={**os.environ, "OMP_NUM_THREADS": str(THREADS), "CUDA_VISIBLE_DEVICES": ""})
    if out.returncode != 0:
        raise RuntimeError((out.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


DIANNA_SNIPPET = r"""
import json, sys, time, warnings
import numpy as np, onnxruntime as ort, dianna
warnings.filterwarnings("ignore")
method, model_path, x_path, samples, batch, features = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
x = np.load(x_path)[0]  # one (3, 224, 224) image; axis_labels says where the channels are
opts = ort.SessionOptions(); opts.intra_op_num_threads = 2; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
def run_model(batch_x):  # softmax probabilities, as our LIME run
    z = sess.run(None, {"input": np.asarray(batch_x, np.float32)})[0]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
run_model(x[None])
t = time.perf_counter()
if method == "LIME":  # lime's LimeImageExplainer (quickshift segments, ridge surrogate)
    dianna.explain_image(run_model, x, method="LIME", labels=[285], num_samples=samples, return_masks=False,
                         random_state=0, axis_labels={0: "channels"})  # lime's batch_size: 10
else:  # shap's KernelExplainer on SLIC segments; DIANNA runs the ONNX file itself (default session)
    dianna.explain_image(model_path, x, method="KernelSHAP", labels=[285], nsamples=samples,
                         n_segments=features, axis_labels={0: "channels"})
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"time": time.perf_counter() - t, "peak_mb": peak, "version": dianna.__version__}))
"""


def dianna(python: str, method: str, samples: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xp = Path(tmp) / "x.npy"
        np.save(xp, cat_input())
        return in_child([method, str(onnx_xai.assets.efficientnet_lite0()), str(xp), str(samples), str(batch),
                         str(FEATURES)], python, DIANNA_SNIPPET)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="LIME / image_lime samples")
    ap.add_argument("--shap-samples", type=int, default=500, help="KernelSHAP samples")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="LIME,KernelSHAP,image_lime", help="comma-separated subset")
    ap.add_argument("--dianna-python", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.samples, a.shap_samples, a.batch)
    print(f"{machine()}; EfficientNet-Lite0, cat photo, about {FEATURES} SLIC superpixels, batch {a.batch}, "
          f"{THREADS} threads, median of {a.repeats} interleaved runs")
    model, x = shipped_model(THREADS), cat_input()
    runs = {k: v for k, v in explainers(model, x, a.samples, a.shap_samples, a.batch).items()
            if k in a.methods.split(",")}
    for run, _ in runs.values():  # compile the kernels, load scikit-image
        run()
    rows = {}
    for name, (run, n) in runs.items():
        bare = bare_inference(model, x, n, a.batch)
        t = interleaved({"ours": run, "ort": bare}, a.repeats, warmup=True)
        mem, ort_mem = in_child([name, "--samples", str(a.samples), "--shap-samples", str(a.shap_samples),
                                 "--batch", str(a.batch)]), \
            in_child(["ort", "--samples", str(n), "--batch", str(a.batch)])
        rows[name] = {**t, "images": n, "ratio": t["ours"] / t["ort"], "peak_mb": mem["peak_mb"],
                      "ort_peak_mb": ort_mem["peak_mb"]}
        print(f"{name:11s} {n:5d} images: {t['ours']:6.2f} s, bare ORT {t['ort']:6.2f} s, ratio "
              f"{t['ours'] / t['ort']:.3f}; peak RSS {mem['peak_mb']:.0f} MB (bare ORT {ort_mem['peak_mb']:.0f} MB)",
              flush=True)
    if a.dianna_python:
        for name, n in (("LIME", a.samples), ("KernelSHAP", a.shap_samples)):
            if name not in rows:
                continue
            try:
                d = dianna(a.dianna_python, name, n, a.batch)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"DIANNA {name} skipped: {exc}")
                continue
            ours = rows[name]["ours"]
            print(f"DIANNA {d['version']} {name:10s} {n:5d} samples: {d['time']:7.2f} s, peak RSS "
                  f"{d['peak_mb']:.0f} MB; ours ÷ DIANNA {ours / d['time']:.3f} (time), "
                  f"{rows[name]['peak_mb'] / d['peak_mb']:.3f} (memory)", flush=True)


if __name__ == "__main__":
    main()
