"""Vision transformers in the CAM family: HF ViT and DeiT (tiny configs, seeded random weights,
exported with torch.onnx) — the automatic layer is the last block's first LayerNorm, its tokens
are folded to the patch grid without a hand-written reshape, and every CAM equals a torch
reference computed from hooks on the same weights with pytorch-grad-cam's reshape_transform
(formulas: pytorch-grad-cam / MONAI); the exported explainer and the CLI do the same."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch_models import export_onnx  # noqa: E402

from onnx_xai import Model, graph  # noqa: E402
from onnx_xai.autolayer import auto_layer  # noqa: E402
from onnx_xai.export import export_explainer  # noqa: E402
from onnx_xai.methods.cam import (EigenCAM, GradCAM, GradCAMElementWise, GradCAMpp, HiResCAM,  # noqa: E402
                                  LayerCAM, ScoreCAM, XGradCAM)

SIZE, PATCH, CLASSES = 32, 8, 5
GRID = SIZE // PATCH


def _hf(kind: str):
    """(torch module taking pixels → logits, its ONNX bytes, the norm1 module path, prefix tokens)."""
    torch.manual_seed(0)
    common = dict(image_size=SIZE, patch_size=PATCH, num_channels=3, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, num_labels=CLASSES)
    if kind == "vit":
        base, cfg, prefix = transformers.ViTForImageClassification, transformers.ViTConfig(**common), 1
    else:
        base, cfg, prefix = transformers.DeiTForImageClassification, transformers.DeiTConfig(**common), 2

    class Pixels(base):
        def forward(self, x):
            return super().forward(pixel_values=x).logits

    net = Pixels(cfg).eval()
    norm1 = [name for name, _ in net.named_modules() if name.endswith("layernorm_before")][-1]
    onnx_bytes = export_onnx(net, torch.randn(2, 3, SIZE, SIZE))
    return net, onnx_bytes, norm1, prefix, Model(onnx_bytes, verbose=False)


@pytest.fixture(scope="module", params=["vit", "deit"])
def hf(request):
    """ViT and DeiT (one Model each: its gradient models are built once for all tests)."""
    return _hf(request.param)


@pytest.fixture(scope="module")
def vit():
    return _hf("vit")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def _module(net, path):
    mod = net
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


def _torch_taps(net, norm1, prefix, x, classes):
    """Activations and gradients of ``norm1`` folded as pytorch-grad-cam's ViT reshape_transform
    (drop the prefix tokens, (B, h, w, C) → (B, C, h, w)), by hooks and autograd."""
    store = {}
    hook = _module(net, norm1).register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = net(torch.from_numpy(x))
    hook.remove()
    a = store["a"]
    grad, = torch.autograd.grad(logits[torch.arange(len(x)), torch.as_tensor(classes)].sum(), a)

    def fold(t):
        t = t[:, prefix:, :]
        return t.reshape(t.shape[0], GRID, GRID, t.shape[2]).permute(0, 3, 1, 2).detach().double().numpy()

    return fold(a), fold(grad), logits.detach().double().numpy()


def _reference(name, a, g, scores):
    """Raw maps ``(B, h, w)`` of the torch-side formulas (pytorch-grad-cam / MONAI)."""
    relu = lambda v: np.maximum(v, 0)
    if name == "gradcam":
        return relu((g.mean((2, 3), keepdims=True) * a).sum(1))
    if name == "layercam":
        return relu((relu(g) * a).sum(1))
    if name == "hirescam":
        return relu((g * a).sum(1))
    if name == "xgradcam":
        w = (g * a).sum((2, 3), keepdims=True) / (a.sum((2, 3), keepdims=True) + 1e-7)
        return relu((w * a).sum(1))
    if name == "elementwise":
        return relu(g * a).sum(1)
    if name == "gradcampp":  # MONAI: alpha = g² / (2g² + Σ A g³), w = Σ alpha relu(exp(S) g)
        den = 2 * g ** 2 + (a * g ** 3).sum((2, 3), keepdims=True)
        alpha = g ** 2 / (np.where(den != 0, den, 1.0) + 1e-7)
        w = (alpha * relu(np.exp(scores)[:, None, None, None] * g)).sum((2, 3), keepdims=True)
        return relu((w * a).sum(1))
    raise KeyError(name)


CLASSES_OF = {"gradcam": GradCAM, "layercam": LayerCAM, "hirescam": HiResCAM, "xgradcam": XGradCAM,
              "elementwise": GradCAMElementWise, "gradcampp": GradCAMpp}


def test_automatic_layer_is_the_last_blocks_first_layernorm_folded(hf):
    net, onnx_bytes, norm1, prefix, model = hf
    choice = auto_layer(model)
    assert choice.tensor == graph.resolve_layer(model.proto, norm1)
    assert "attention" not in choice.tensor.split("/")[-2].lower()
    assert (choice.fold.layout, choice.fold.prefix, choice.fold.grid) == ("tokens", prefix, (GRID, GRID))
    assert GradCAM(model).target_layers == [choice.tensor]


def test_gradient_cams_equal_torch_hooks_with_reshape(hf, x):
    net, onnx_bytes, norm1, prefix, model = hf
    classes = np.array([1, 3])
    a, g, logits = _torch_taps(net, norm1, prefix, x, classes)
    for name, cls in CLASSES_OF.items():
        ref = _reference(name, a, g, logits[np.arange(2), classes])
        got = cls(model).compute_map(x, classes)[:, 0]  # automatic layer, automatic fold
        assert got.shape == (2, GRID, GRID)
        scale = np.abs(ref).max()
        assert scale > 0 and np.abs(got - ref).max() <= 1e-4 * scale, name


def test_eigencam_equals_first_principal_component(hf, x):
    net, onnx_bytes, norm1, prefix, model = hf
    a, _, _ = _torch_taps(net, norm1, prefix, x, np.array([0, 0]))
    got = EigenCAM(model).compute_map(x)[:, 0]
    for i in range(2):  # pytorch-grad-cam's get_2d_projection: centred (hw, C) on vt[0]; sign is free
        m = torch.from_numpy(a[i].reshape(a.shape[1], -1).T)
        m = m - m.mean(0)
        proj = (m @ torch.linalg.svd(m, full_matrices=False)[2][0]).numpy().reshape(GRID, GRID)
        err = min(np.abs(got[i] - np.maximum(s * proj, 0)).max() for s in (1, -1))
        assert err <= 1e-4 * np.abs(proj).max()


def test_explicit_reshape_transform(vit, x):
    net, onnx_bytes, norm1, prefix, model = vit
    a, g, _ = _torch_taps(net, norm1, prefix, x, np.array([2, 2]))
    seen = []

    def reshape(t):  # as a pytorch-grad-cam user writes it, on NumPy
        seen.append(t.shape)
        return t[:, prefix:].reshape(t.shape[0], GRID, GRID, -1).transpose(0, 3, 1, 2)

    got = GradCAM(model, norm1, reshape_transform=reshape).compute_map(x, 2)[:, 0]
    assert seen == [(2, GRID * GRID + prefix, 32)] * 2  # activations and gradients
    ref = _reference("gradcam", a, g, None)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    with pytest.raises(ValueError, match="reshape_transform"):
        GradCAM(model, norm1, reshape_transform="tokens")
    with pytest.raises(ValueError, match="expected .*rank 4"):
        GradCAM(model, norm1, reshape_transform=lambda t: t).compute_map(x)


def test_scorecam_masks_the_folded_channels(vit, x):
    """ScoreCAM on the folded grid: the softmax over channels of the target score of x masked by
    each upsampled (align_corners) min-max scaled channel, scored by torch on the same weights."""
    net, onnx_bytes, norm1, prefix, model = vit
    a, _, _ = _torch_taps(net, norm1, prefix, x[:1], np.array([0]))
    got = ScoreCAM(model, batch_size=16).compute_map(x[:1], 4)[0, 0]
    up = torch.nn.functional.interpolate(torch.from_numpy(a), size=(SIZE, SIZE), mode="bilinear",
                                         align_corners=True)[0]
    lo, hi = up.amin((1, 2)), up.amax((1, 2))
    masks = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
    with torch.no_grad():
        scores = net(torch.from_numpy(x[:1]) * masks[:, None].float())[:, 4].double()
    w = torch.softmax(scores, 0).numpy()
    ref = np.maximum((w[:, None, None] * a[0]).sum(0), 0)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_exported_explainer_equals_the_python_map(vit, x):
    model = vit[-1]
    proto = export_explainer(model, "gradcam")  # dynamic batch: the class-token Expand relaxed
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    xs = np.concatenate([x, x[:1]])  # batch 3: not one of the build batches
    got = sess.run(["saliency"], {"x": xs})[0]
    ref = GradCAM(model)(xs)
    assert got.shape == (3, 1, SIZE, SIZE) and np.abs(got - ref).max() <= 1e-4
    raw = export_explainer(model, "layercam", upsample=False, normalize=False, batch_size=2)
    sess = ort.InferenceSession(raw.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["saliency"], {"x": x})[0]
    assert got.shape == (2, 1, GRID, GRID)
    assert np.allclose(got, LayerCAM(model).compute_map(x), atol=1e-5)


def test_cli_explain_and_layers_on_a_vit(vit, tmp_path):
    import cv2

    _, onnx_bytes, norm1, prefix, model = vit
    path = tmp_path / "vit.onnx"
    path.write_bytes(onnx_bytes)
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), (np.random.default_rng(1).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    run = lambda *a: subprocess.run([sys.executable, "-m", "onnx_xai.cli", *map(str, a)],
                                    capture_output=True, text=True, timeout=240)
    r = run("explain", path, image, "--method", "gradcam,eigencam", "--out", tmp_path / "o", "--quiet",
            "--metric-steps", "2")
    assert r.returncode == 0, r.stderr
    for name in ("gradcam", "eigencam"):
        saved = np.load(tmp_path / "o" / f"img_png_{name}.npy")
        assert saved.shape == (SIZE, SIZE) and np.isfinite(saved).all() and saved.max() > saved.min()
    r = run("layers", path)
    assert r.returncode == 0, r.stderr
    marked = [line for line in r.stdout.splitlines() if line.startswith("*")]
    tensor = graph.resolve_layer(model.proto, norm1)
    assert len(marked) == 1 and marked[0].endswith(tensor)
    assert f"{prefix}+{GRID}x{GRID} tokens" in marked[0]


def test_dynamo_export_of_a_vit(vit, x):
    """torch.onnx dynamo=True: module paths from the name-scope metadata, same layer, same map."""
    pytest.importorskip("onnxscript")
    import io
    import warnings

    import onnx

    net, _, norm1, prefix, _ = vit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.from_numpy(x),), dynamo=True, input_names=["x"],
                                    output_names=["y"], verbose=False,
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    buf = io.BytesIO()
    onnx.save(program.model_proto, buf)
    model = Model(buf.getvalue(), verbose=False)
    assert not any(n.name.startswith("/") for n in model.proto.graph.node)  # no TorchScript scopes
    assert auto_layer(model).tensor == graph.resolve_layer(model.proto, norm1)
    a, g, _ = _torch_taps(net, norm1, prefix, x, np.array([0, 4]))
    ref = _reference("gradcam", a, g, None)
    got = GradCAM(model).compute_map(x, np.array([0, 4]))[:, 0]
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
