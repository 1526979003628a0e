"""The ``onnx-xai`` command run as a subprocess: demo, explain, layers, audit (resume after
SIGKILL, bad inputs, parallel workers) and the HTML report rendered by headless Chromium."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_xai import assets, cli_methods, synthetic

SHAPES = assets.model_dir() / "synthetic_shapes2d.onnx"
BLOBS = assets.model_dir() / "synthetic_blobs3d.onnx"
CAT = next(p for p in assets.example_images() if p.stem == "chelsea")


def cli(*args, cwd=None, timeout=240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "onnx_xai.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def check_complete(folder: Path) -> int:
    """No temp file left, and every PNG / .npy / JSON under ``folder`` reads back → how many files."""
    assert not [p for p in folder.rglob("*.tmp")], "temp files left behind"
    n = 0
    for p in folder.rglob("*"):
        if p.suffix == ".png":
            assert cv2.imread(str(p)) is not None, p
        elif p.suffix == ".npy":
            np.load(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        else:
            continue
        n += 1
    return n


def shapes_png(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Synthetic shape images as 8-bit PNGs (the model's sidecar scale is 1/255)."""
    x, _, _ = synthetic.shapes_2d(n, seed=seed)
    paths = []
    for i, img in enumerate(x[:, 0]):
        paths.append(folder / f"shape{i:02d}.png")
        cv2.imwrite(str(paths[-1]), np.clip((img + 1) * 100, 0, 255).astype(np.uint8))
    return paths


# ---------------------------------------------------------------------- demo, layers
def test_demo_writes_overlays_report_and_picture(tmp_path):
    r = cli("demo", "--out", tmp_path / "demo", "--threads", "2", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = r.stdout.split("chelsea.png: top-5")[1].strip().splitlines()[0]
    assert "285" in first and "Egyptian cat" in first
    out = tmp_path / "demo"
    for name in ("report.html", "summary.json", "summary.csv", "demo.png"):
        assert (out / name).is_file(), name
    methods = ["occlusion"] + (["gradcam"] if "gradcam" in cli_methods.available() else [])
    for key in ("chelsea_png", "coffee_png"):
        for m in methods:
            assert (out / "inputs" / key / f"{m}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_failed"] == 0 and summary["methods"] == methods
    cat = next(i for i in summary["inputs"] if i["key"] == "chelsea_png")
    assert cat["target"]["index"] == 285
    # the occlusion map (score drop) is highest on the cat's face, not in the background corner
    drop = np.load(out / "inputs" / "chelsea_png" / "occlusion.npy")
    assert drop.shape == (224, 224) and drop[60:140, 40:200].max() > drop[180:, :40].max()
    assert str(out.resolve()) in r.stdout and "report.html" in r.stdout
    assert check_complete(out) >= 10


def test_layers_table(tmp_path):
    r = cli("layers", SHAPES)
    assert r.returncode == 0, r.stderr
    rows = {line.lstrip("* ").split()[0]: line for line in r.stdout.splitlines() if line.startswith(("*", "  "))}
    assert rows["/10/Relu"].startswith("*") and "1x64x16x16" in rows["/10/Relu"]
    assert "Gemm" in rows["/13/Gemm"] and "layers; * = default CAM layer (/10/Relu)" in r.stdout
    r = cli("layers", assets.efficientnet_lite0())
    assert r.returncode == 0 and "/_conv_head/Conv" in r.stdout and "1x1280x7x7" in r.stdout


# ---------------------------------------------------------------------- explain
def test_explain_image_writes_map_and_meta(tmp_path):
    r = cli("explain", assets.efficientnet_lite0(), CAT, "--method", "occlusion", "--mask-size", "112",
            "--overlap", "0", "--metric-steps", "2", "--out", tmp_path / "o", "--threads", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    stem = tmp_path / "o" / "chelsea_png_occlusion"
    meta = json.loads(stem.with_suffix(".json").read_text())
    assert meta["method"] == "occlusion" and meta["target"] == {"index": 285, "label": "Egyptian cat",
                                                                  "score": pytest.approx(0.777, abs=0.01)}
    assert meta["prediction"][0]["label"] == "Egyptian cat" and len(meta["prediction"]) == 5
    assert meta["parameters"]["mask_size"] == 112 and meta["timings"]["method_s"] > 0
    assert 0 <= meta["deletion_auc"] <= 1 and 0 <= meta["insertion_auc"] <= 1
    assert np.load(stem.with_suffix(".npy")).shape == (224, 224)
    png = cv2.imread(str(stem.with_suffix(".png")))
    assert png.shape[0] == 224 and png.shape[1] > 224  # the overlay, then its colour bar
    assert "Egyptian cat (285" in r.stdout


def test_explain_volume_folder_and_target_label(tmp_path):
    x, _, _ = synthetic.blobs_3d(1, seed=3)
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "vol.npy", x[0])  # (C, H, W, D), no batch axis
    r = cli("explain", BLOBS, tmp_path / "in", "--method", "rise", "--n-masks", "64", "--target", "dark",
            "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "o" / "vol_npy_rise.json").read_text())
    assert meta["target"]["label"] == "dark" and meta["target"]["index"] == 1
    assert meta["parameters"]["n_masks"] == 64 and meta["map"]["shape"] == [24, 24, 24]
    assert np.load(tmp_path / "o" / "vol_npy_rise.npy").shape == (24, 24, 24)
    assert cv2.imread(str(tmp_path / "o" / "vol_npy_rise.png")) is not None


def test_explain_runs_an_exported_explainer(tmp_path):
    """A model with a ``saliency`` output is run as it is (here saliency = x², logits = x·W)."""
    w = np.arange(64 * 3, dtype=np.float32).reshape(64, 3) / 100
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["logits"]),
         helper.make_node("Mul", ["input", "input"], ["saliency"])], "explainer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("saliency", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [onnx.numpy_helper.from_array(w, "W")])
    model = tmp_path / "explainer.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), model)
    x = np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("explain", model, tmp_path / "x.npy", "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "o" / "x_npy_embedded.npy"), x[0] ** 2, rtol=1e-6)
    meta = json.loads((tmp_path / "o" / "x_npy_embedded.json").read_text())
    assert meta["target"]["index"] == int(np.argmax(x.reshape(-1) @ w))


@pytest.mark.parametrize("args, message", [
    (["--method", "nosuch"], "method 'nosuch' is unknown; available: occlusion"),
    ([], "--method is required"),
    (["--method", "occlusion", "--overlap", "1.5"], "--overlap must be in [0, 1)"),
    (["--method", "occlusion", "--size", "abc"], "argument --size: expected numbers"),
])
def test_explain_bad_arguments_exit_2(tmp_path, args, message):
    r = cli("explain", SHAPES, CAT, "--out", tmp_path, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["explain", "audit"])
def test_a_folder_without_inputs_is_one_clear_line(tmp_path, command):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an input")
    r = cli(command, SHAPES, tmp_path / "empty", "--out", tmp_path / "o",
            *(["--method"] if command == "explain" else ["--methods"]), "occlusion")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"onnx-xai: error: no images or .npy files in {tmp_path / 'empty'}"
    assert not (tmp_path / "o").exists()


def test_missing_model_is_one_clear_line(tmp_path):
    r = cli("explain", tmp_path / "none.onnx", CAT, "--method", "occlusion")
    assert r.returncode == 2 and r.stderr.strip() == f"onnx-xai: error: no ONNX model at '{tmp_path / 'none.onnx'}'"


# ---------------------------------------------------------------------- audit
@pytest.fixture(scope="module")
def bad_audit(tmp_path_factory):
    """An audit of 2 good images, a corrupt PNG and a wrong-shaped .npy (shared by two tests)."""
    root = tmp_path_factory.mktemp("audit")
    folder = root / "in"
    folder.mkdir()
    shapes_png(folder, 2)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    np.save(folder / "wrong.npy", np.zeros((3, 5), np.float32))
    (folder / "notes.txt").write_text("ignored")
    methods = ",".join(m for m in ("occlusion", "rise", "matlab-occlusion", "gradcam") if m in cli_methods.available())
    r = cli("audit", SHAPES, folder, "--methods", methods, "--mask-size", "16", "--n-masks", "100",
            "--metric-steps", "4", "--out", root / "out", "--quiet")
    return r, root / "out", methods.split(",")


def test_audit_reports_and_skips_bad_inputs(bad_audit):
    r, out, methods = bad_audit
    assert r.returncode == 1
    assert "corrupt.png: OpenCV cannot decode" in r.stderr and "wrong.npy: array of shape (3, 5)" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = {Path(i["input"]).name: i["status"] for i in summary["inputs"]}
    assert status == {"corrupt.png": "error", "wrong.npy": "error", "shape00.png": "ok", "shape01.png": "ok"}
    assert summary["n_failed"] == 2 and summary["methods"] == methods
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok", "error"}
    for row in rows:
        if row["status"] == "ok":
            for m in methods:
                assert 0 <= float(row[f"{m}_deletion_auc"]) <= 1 and float(row[f"{m}_s"]) > 0
        else:
            assert row["error"]
    for key in ("shape00_png", "shape01_png"):
        done = json.loads((out / "inputs" / key / "done.json").read_text())
        assert set(done["methods"]) == set(methods)
        for m in methods:
            assert np.load(out / "inputs" / key / f"{m}.npy").shape == (64, 64)
    assert not (out / "inputs" / "corrupt_png" / "done.json").exists()
    assert check_complete(out) == 2 * (3 * len(methods) + 2) + 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_MARK = """<script>window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  document.body.setAttribute("data-images", imgs.length);
  document.body.setAttribute("data-broken", imgs.filter(function (i) {
    return !i.complete || i.naturalWidth === 0; }).length);
});</script></body>"""


def _chromium(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_chromium_with_every_image(bad_audit, tmp_path):
    _, out, methods = bad_audit
    page = (out / "report.html").read_text()
    assert page.count("<img") == 2 * (1 + len(methods)) and "corrupt.png" in page
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _MARK, 1))
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<body data-images="(\d+)" data-broken="(\d+)"', dom)
    assert found, dom[:500]
    assert int(found.group(1)) == 2 * (1 + len(methods)) and found.group(2) == "0"
    shot = tmp_path / "report.png"
    _chromium(tmp_path, "--window-size=1200,900", f"--screenshot={shot}", (out / "report.html").as_uri())
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1200)
    assert img.std() > 20  # not a blank page: pictures and the table are drawn


def test_audit_killed_then_resumed(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    n = 6
    shapes_png(folder, n, seed=5)
    out = tmp_path / "out"
    args = ["audit", SHAPES, folder, "--methods", "rise,occlusion", "--n-masks", "500", "--mask-size", "16",
            "--overlap", "0", "--metric-steps", "4", "--out", out, "--quiet", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "onnx_xai.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("inputs/*/done.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("inputs/*/done.json")}
    assert 0 < len(finished) < n, "kill the audit while it runs"
    # whatever was written is whole: every file reads back (temp files aside)
    for p in out.rglob("*"):
        if p.is_file() and not p.name.endswith(".tmp"):
            {".png": lambda q: cv2.imread(str(q)) is not None, ".npy": lambda q: np.load(q) is not None,
             ".json": lambda q: json.loads(q.read_text()) is not None}[p.suffix](p) or pytest.fail(str(p))
    r = cli(*args[:-2], "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"{n} inputs ({len(finished)} already done, 0 failed)" in r.stdout
    for key, mtime in finished.items():  # not recomputed
        assert (out / "inputs" / key / "done.json").stat().st_mtime_ns == mtime
    summary = json.loads((out / "summary.json").read_text())
    assert sum(bool(i.get("cached")) for i in summary["inputs"]) == len(finished)
    for key in (p.name for p in (out / "inputs").iterdir()):
        done = json.loads((out / "inputs" / key / "done.json").read_text())
        for m in ("rise", "occlusion"):
            assert done["methods"][m]["files"]["npy"] == f"{m}.npy"
            assert np.load(out / "inputs" / key / f"{m}.npy").shape == (64, 64)
    assert len(list((out / "inputs").iterdir())) == n
    assert check_complete(out) == n * (2 * 3 + 2) + 1  # per input: 2 maps × 3 files, picture, marker


GRADIENT = [m for m in ("gradcam", "vanilla") if m in cli_methods.available()]


@pytest.mark.skipif(not GRADIENT, reason="no gradient method in this version")
def test_explain_gradient_methods(tmp_path):
    """Gradient and CAM methods come from the registry as they land; maps are input-sized."""
    png = shapes_png(tmp_path, 1)[0]
    r = cli("explain", SHAPES, png, "--method", ",".join(GRADIENT), "--out", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    for m in GRADIENT:
        smap = np.load(tmp_path / "o" / f"shape00_png_{m}.npy")
        assert smap.shape == (64, 64) and np.isfinite(smap).all() and smap.max() > smap.min()
        assert json.loads((tmp_path / "o" / f"shape00_png_{m}.json").read_text())["method"] == m
