"""Benchmark every method onnx_xai has against its peers and bare ONNX Runtime; write RESULTS.md.

Speed: EfficientNet-Lite0 (shipped) on the cat photo, CPU, 2 threads; each method's time, the
peers' time on the same weights and settings (MONAI, Captum, pytorch-grad-cam in this venv;
DIANNA in a separate venv given by --peers-python), bare ONNX Runtime on the same number of
images at the same batch size, and the ratios; medians of interleaved repeats.
Quality: deletion / insertion AUC and pointing game on the synthetic 2D and 3D sets
(``onnx_xai.synthetic``, shipped models) and the example photos.

Methods are found at run time: a method onnx_xai does not have (yet) is listed as skipped.

    python benchmarks/run_all.py [--repeats 3] [--quick] [--peers-python /work/venv-peers/bin/python]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

import onnx_xai
from onnx_xai import Model, assets, metrics, synthetic
from onnx_xai.methods.cam import minmax_normalizer
from onnx_xai.preprocess import ImageSpec, read_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_inference, interleaved, torch_efficientnet  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"
THREADS = 2
CAT = 285  # ImageNet "Egyptian cat"


# ----------------------------------------------------------------------------- helpers
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    import numba
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, onnxruntime "
            f"{ort.__version__}, numpy {np.__version__}, numba {numba.__version__}; {THREADS} threads "
            f"for every library; load average at the start {os.getloadavg()[0]:.1f}")


def photo(name: str) -> np.ndarray:
    path = next(p for p in assets.example_images() if p.stem == name)
    return ImageSpec.for_model(assets.efficientnet_lite0()).to_input(read_image(path))


def have(name: str) -> bool:
    return hasattr(onnx_xai, name)


# ----------------------------------------------------------------------------- speed
def speed_rows(repeats: int, quick: bool, peers_python: str | None) -> tuple[list[list[str]], list[str]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    model = Model(assets.efficientnet_lite0(), device="cpu", threads=THREADS, verbose=False)
    x = photo("chelsea")
    net = torch_efficientnet(THREADS)
    if net is None:
        notes.append("torch peers skipped: torch / efficientnet-lite-pytorch not installed")

    # RISE ------------------------------------------------------------------
    n_masks, nb = (200 if quick else 1000), 32
    rise = onnx_xai.RISE(model, n_masks=n_masks, cell_size=7, n_batch=nb, seed=0, verbose=False)
    t = interleaved({"ours": lambda: rise(x, index=CAT), "ort": bare_inference(model, x, n_masks, nb)}, repeats, warmup=True)
    peer, peer_t = "DIANNA RISE", None
    if peers_python:
        peer_t, why = dianna_rise(peers_python, n_masks, nb, repeats)
        if peer_t is None:
            notes.append(f"DIANNA skipped: {why}")
    else:
        notes.append("DIANNA skipped: no --peers-python given")
    rows.append(_row("RISE", f"{n_masks} masks, 7×7 grid, p1 0.5, batch {nb}", t, n_masks, peer, peer_t))

    # Occlusion -------------------------------------------------------------
    if have("OcclusionSensitivity"):
        mask, overlap, nb = 16, 0.6, 16
        occ = onnx_xai.OcclusionSensitivity(model, mask_size=mask, overlap=overlap, n_batch=nb,
                                            verbose=False)
        step = int(mask * (1 - overlap))
        n_img = len(range(0, 224 - mask + 1, step)) ** 2 + 1
        fns = {"ours": lambda: occ(x), "ort": bare_inference(model, x, n_img, nb)}
        if net is not None and not quick:
            import torch
            from monai.visualize import OcclusionSensitivity as MonaiOcc
            from captum.attr import Occlusion
            xt = torch.from_numpy(x)
            monai_occ = MonaiOcc(net, mask_size=mask, n_batch=nb, overlap=overlap, verbose=False)
            captum_occ = Occlusion(net)
            fns["MONAI"] = lambda: _no_grad(lambda: monai_occ(xt))
            fns["Captum"] = lambda: captum_occ.attribute(
                xt, target=CAT, sliding_window_shapes=(3, mask, mask), strides=(3, step, step),
                perturbations_per_eval=nb)
        t = interleaved(fns, repeats, warmup=True)
        rows.append(_row("OcclusionSensitivity", f"mask {mask}, overlap {overlap}, gaussian, batch {nb}",
                         t, n_img, "MONAI", t.get("MONAI")))
        if "Captum" in t:
            rows.append(_row("OcclusionSensitivity", "Captum Occlusion, same windows (zero baseline)",
                             t, n_img, "Captum", t["Captum"]))
    else:
        notes.append("OcclusionSensitivity: not in onnx_xai yet, skipped")

    # Grad-CAM family -----------------------------------------------------
    for name in ("GradCAM", "GradCAMpp"):
        if not have(name):
            notes.append(f"{name}: not in onnx_xai yet, skipped")
            continue
        try:
            cam = getattr(onnx_xai, name)(model, target_layers="/_swish_1/Clip")
            fns = {"ours": lambda: cam(x, class_idx=CAT), "ort": bare_inference(model, x, 1, 1)}
            peer_name = None
            if net is not None and not quick:
                import monai.visualize as mv
                mcam = getattr(mv, name)(net, target_layers="_bn1")  # _swish is shared
                import torch
                fns["MONAI"] = lambda: mcam(torch.from_numpy(x), class_idx=CAT)
                peer_name = "MONAI"
            t = interleaved(fns, repeats, warmup=True)
            rows.append(_row(name, "head activation, 1 image", t, 1, peer_name, t.get("MONAI")))
        except Exception as exc:  # an API still being written: report, don't fail the table
            notes.append(f"{name}: failed to run ({type(exc).__name__}: {exc}), skipped")

    # Gradient saliency -----------------------------------------------------
    sg = onnx_xai.SmoothGrad(model, 0.15, 25, True, verbose=False, seed=0)
    ig = onnx_xai.IntegratedGradients(model, n_steps=50)
    for name, ours, n_img, peer_name, peer in (
            ("SmoothGrad", lambda: sg(x), 25, "MONAI", _monai_smoothgrad(net, x, quick)),
            ("IntegratedGradients", lambda: ig(x, CAT), 50, "Captum", _captum_ig(net, x, quick))):
        fns = {"ours": ours, "ort": bare_inference(model, x, n_img, 16)}
        if peer is not None:
            fns[peer_name] = peer
        t = interleaved(fns, repeats, warmup=True)
        settings = ("25 samples, stdev 0.15, magnitude, argmax targets" if name == "SmoothGrad"
                    else "50 steps, gausslegendre, zero baseline")
        rows.append(_row(name, settings, t, n_img, peer_name if peer else None, t.get(peer_name)))
    return rows, notes


def _monai_smoothgrad(net, x: np.ndarray, quick: bool) -> Callable[[], Any] | None:
    if net is None or quick:
        return None
    import torch
    from monai.visualize import SmoothGrad
    smooth = SmoothGrad(net, 0.15, 25, True, verbose=False)
    return lambda: smooth(torch.from_numpy(x))


def _captum_ig(net, x: np.ndarray, quick: bool) -> Callable[[], Any] | None:
    if net is None or quick:
        return None
    import torch
    from captum.attr import IntegratedGradients
    ig = IntegratedGradients(net)
    return lambda: ig.attribute(torch.from_numpy(x), baselines=0.0, target=CAT, n_steps=50)


def _no_grad(fn: Callable[[], Any]) -> Any:
    import torch
    with torch.no_grad():
        return fn()


def _row(method: str, settings: str, t: dict[str, float], n_img: int, peer: str | None,
         peer_t: float | None) -> list[str]:
    return [method, settings, f"{t['ours']:.2f}", f"{t['ort']:.2f} ({n_img} images)",
            f"{t['ours'] / t['ort']:.3f}", peer or "—", "—" if peer_t is None else f"{peer_t:.2f}",
            "—" if peer_t is None else f"{peer_t / t['ours']:.1f}× faster"
            if peer_t >= t["ours"] else f"{t['ours'] / peer_t:.1f}× slower"]


DIANNA_SNIPPET = r"""
import json, statistics, sys, time
import numpy as np, onnxruntime as ort, dianna
model_path, x_path, n_masks, batch, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
x = np.load(x_path)[0]  # one (3, 224, 224) image; axis_labels says where the channels are
opts = ort.SessionOptions(); opts.intra_op_num_threads = 2; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
def run_model(batch_x):  # softmax probabilities, as our RISE's default
    z = sess.run(None, {"input": np.asarray(batch_x, np.float32)})[0]
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
def explain():
    return dianna.explain_image(run_model, x, method="RISE", labels=[285], n_masks=n_masks,
                                feature_res=7, p_keep=0.5, batch_size=batch, axis_labels={0: "channels"})
explain()
times = []
for _ in range(repeats):
    t = time.perf_counter(); explain(); times.append(time.perf_counter() - t)
print(json.dumps({"time": statistics.median(times), "version": dianna.__version__}))
"""


def dianna_rise(python: str, n_masks: int, batch: int, repeats: int) -> tuple[float | None, str]:
    """Median time of DIANNA's RISE in the peers venv (its own ORT session, 2 threads)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        xp = Path(tmp) / "x.npy"
        np.save(xp, photo("chelsea"))
        try:
            out = subprocess.run([python, "-c", DIANNA_SNIPPET, str(assets.efficientnet_lite0()), str(xp),
                                  str(n_masks), str(batch), str(repeats)], capture_output=True,
                                 text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "2",
                                                               "CUDA_VISIBLE_DEVICES": ""})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, str(exc)
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(out.stdout.strip().splitlines()[-1])["time"], ""


# ----------------------------------------------------------------------------- quality
def random_map(rng: np.random.Generator, spatial: tuple[int, ...]) -> np.ndarray:
    """A smooth random map ``(1, 1, *spatial)``: noise blurred with σ = side / 16 (a control that,
    unlike pixel noise, does not scatter the deleted pixels)."""
    import scipy.ndimage
    return scipy.ndimage.gaussian_filter(rng.random(spatial), max(1.0, spatial[0] / 16))[None, None]


def explainers(model: Model, spatial_ndim: int, n_masks: int, cam_layer: str | None,
               ) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """name → f(x (1, C, *spatial), class) → (1, 1, *spatial) map, for what onnx_xai has."""
    out: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {}
    for label, act in (("RISE (softmax)", True), ("RISE (logits)", False)):
        rise = onnx_xai.RISE(model, n_masks=n_masks, cell_size=7 if spatial_ndim == 2 else 5,
                             n_batch=64, seed=0, activate=act, verbose=False)
        out[label] = lambda x, k, rise=rise: rise(x, index=k)
    if have("OcclusionSensitivity"):

        def occlusion(x: np.ndarray, k: int) -> np.ndarray:
            mask = max(4, x.shape[2] // 8)  # an eighth of the image side
            occ = onnx_xai.OcclusionSensitivity(model, mask_size=mask, n_batch=64, verbose=False,
                                                overlap=0.6 if x.ndim == 4 else 0.5)
            return -occ(x)[0][:, k:k + 1]  # lower score when occluded = more important
        out["Occlusion"] = occlusion
    for name in ("GradCAM", "GradCAMpp"):
        if have(name) and cam_layer:
            try:  # hot = 1 (MONAI's default post-processing maps the hottest region to 0)
                cam = getattr(onnx_xai, name)(model, target_layers=cam_layer,
                                              postprocessing=minmax_normalizer)
                out[name] = lambda x, k, cam=cam: np.asarray(cam(x, class_idx=k))
            except Exception:
                pass
    sg = onnx_xai.SmoothGrad(model, 0.15, 25, True, verbose=False, seed=0)
    ig = onnx_xai.IntegratedGradients(model, n_steps=50)
    out["SmoothGrad"] = lambda x, k: sg(x, k).sum(1, keepdims=True)  # magnitude: ≥ 0
    out["IntegratedGradients"] = lambda x, k: np.abs(ig(x, k)).sum(1, keepdims=True)
    return out


def quality_rows(quick: bool) -> tuple[list[list[str]], list[str]]:
    rows: list[list[str]] = []
    notes: list[str] = []
    rng = np.random.default_rng(0)
    sets = [("synthetic 2D shapes", "synthetic_shapes2d", lambda n: synthetic.shapes_2d(n, seed=100), 8 if quick else 40),
            ("synthetic 3D blobs", "synthetic_blobs3d", lambda n: synthetic.blobs_3d(n, size=24, seed=100), 4 if quick else 12)]
    for title, stem, make, n in sets:
        path = MODELS / f"{stem}.onnx"
        if not path.is_file():
            notes.append(f"{title}: model {path.name} missing, skipped")
            continue
        side = json.loads(path.with_suffix(".json").read_text())
        model = Model(path, device="cpu", threads=THREADS, verbose=False)
        xs, labels, masks = make(n)
        fns = explainers(model, xs.ndim - 2, 300 if quick else 1000, side.get("cam_layer"))
        fns["random map"] = lambda x, k: random_map(rng, x.shape[2:])
        fns["ground-truth mask"] = None  # filled per image
        for name, fn in fns.items():
            dele, ins, hits = [], [], []
            for x, label, mask in zip(xs, labels, masks):
                x = x[None]
                smap = mask[None, None].astype(float) + 1e-3 * rng.random((1, 1, *mask.shape)) \
                    if fn is None else fn(x, int(label))
                kw = dict(index=int(label), n_steps=32, batch_size=33, verbose=False)
                dele.append(metrics.deletion(model, x, smap, baseline="mean", **kw).auc[0])
                ins.append(metrics.insertion(model, x, smap, **kw).auc[0])
                hits.append(metrics.pointing_game(smap, mask)[0])
            rows.append([title, name, f"{np.mean(dele):.3f}", f"{np.mean(ins):.3f}",
                         f"{np.mean(hits):.2f}", str(len(xs))])
    # photos: no ground truth, faithfulness only
    model = Model(assets.efficientnet_lite0(), device="cpu", threads=THREADS, verbose=False)
    fns = explainers(model, 2, 300 if quick else 1000, "/_swish_1/Clip")
    fns["random map"] = lambda x, k: random_map(rng, x.shape[2:])
    for name, fn in fns.items():
        dele, ins = [], []
        for stem in ("chelsea", "coffee"):
            x = photo(stem)
            k = int(np.argmax(model.predict(x)))
            smap = fn(x, k)
            kw = dict(index=k, n_steps=50, batch_size=17, verbose=False)
            dele.append(metrics.deletion(model, x, smap, **kw).auc[0])
            ins.append(metrics.insertion(model, x, smap, **kw).auc[0])
        rows.append(["example photos (EfficientNet-Lite0)", name, f"{np.mean(dele):.3f}",
                     f"{np.mean(ins):.3f}", "—", "2"])
    return rows, notes


# ----------------------------------------------------------------------------- report
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer masks / images, no torch peers")
    ap.add_argument("--peers-python", default=None,
                    help="python of a venv with DIANNA (e.g. /work/venv-peers/bin/python)")
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    a = ap.parse_args()
    t0 = time.time()
    speed, speed_notes = speed_rows(a.repeats, a.quick, a.peers_python)
    quality, quality_notes = quality_rows(a.quick)
    text = "\n\n".join([
        "# Benchmark results",
        f"Produced by `python benchmarks/run_all.py{' --quick' if a.quick else ''}` "
        f"in {time.time() - t0:.0f} s on {time.strftime('%Y-%m-%d')}.",
        f"Machine: {machine()}.",
        "## Speed: EfficientNet-Lite0, cat photo (224 × 224), CPU",
        f"Median of {a.repeats} interleaved runs after one warm-up. \"bare ORT\" runs the same "
        "number of images through the same ONNX Runtime session at the same batch size: the floor "
        "for a perturbation method (for the gradient methods it counts their cost in forward "
        "passes). Peers run the same weights (torch for MONAI / Captum, "
        "ONNX Runtime for DIANNA) with 2 threads. DIANNA runs in its own venv and process, not "
        "interleaved with ours: on a loaded machine compare it through its own bare-ORT ratio only "
        "with care.",
        table(["method", "settings", "ours (s)", "bare ORT (s)", "ours ÷ ORT", "peer", "peer (s)",
               "ours vs peer"], speed),
        "\n".join(f"- {n}" for n in speed_notes) or "",
        "## Quality",
        "Deletion AUC (↓; pixels replaced by the image mean on the synthetic sets, by 0 — the "
        "normalised mean colour — on the photos), insertion AUC (↑; from a blurred copy, σ = 5 px), "
        "softmax probability of the true class (synthetic) or the predicted class (photos), 32 / 50 "
        "steps; pointing-game accuracy (↑) against the object mask. \"ground-truth mask\" is the "
        "object mask itself as a map (a reference, not a method); \"random map\" is smooth random noise (Gaussian-blurred, σ = side / 16). "
        "CAM maps are min-max normalised with hot = 1 (not MONAI's flipped default); SmoothGrad "
        "(25 samples, magnitude) and IntegratedGradients (50 steps, |attribution|) are summed "
        "over channels.",
        table(["data", "method", "deletion AUC ↓", "insertion AUC ↑", "pointing game ↑", "images"], quality),
        "RISE weights masks by the softmax probability by default (as the paper); a model that is "
        "nearly certain (the toy models) hardly changes its probability under a mask, so its "
        "softmax map is flat and noisy, and the raw-logit variant (`activate=False`) localises better.",
        "\n".join(f"- {n}" for n in quality_notes) or "",
    ])
    Path(a.out).write_text(text.rstrip() + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
