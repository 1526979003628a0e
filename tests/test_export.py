"""export_explainer: the exported graph run by ONNX Runtime gives the Python API's maps (which
are themselves checked against MONAI / torch) on a ResNet, a 3D CNN and the shipped
EfficientNet-Lite0, for mixed class_idx (−1 = argmax) at batch 3 and 1 from one file; the
vanilla gradient against torch autograd; onnx.reference as a second runtime; standard ops;
the CLI subcommand; errors."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import onnx_xai as ox  # noqa: E402
from torch_models import SmallResNet, export_onnx  # noqa: E402
from onnx_xai import Model, UnsupportedModelError, assets, synthetic  # noqa: E402
from onnx_xai.export import export_explainer, export_methods  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    net = SmallResNet(5, layer3_stride=None).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net, Model(export_onnx(net, torch.randn(2, 3, 40, 48)), device="cpu", verbose=False)


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # the optional class_idx input is an initializer: ORT warns
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def python_map(model, method, layer, x, idx):
    """The Python API's map for ``x`` and classes ``idx``."""
    info = ox.registry.get(method)  # every exportable method, as the registry lists them
    explainer = info.impl(model) if info.kind == "gradient" else info.impl(model, layer)
    return explainer(x, idx)


def check_against_python(model, method, layer, x, class_idx):
    """Export, run batch N with ``class_idx`` and batch 1 without it; compare; max diff."""
    proto = export_explainer(model, method, layer)
    s = session(proto)
    outputs, saliency = s.run(None, {model.input_name: x, "class_idx": np.asarray(class_idx, np.int64)})
    logits = model.predict(x)
    np.testing.assert_allclose(outputs, logits, atol=1e-5)
    idx = np.where(np.asarray(class_idx) < 0, logits.argmax(1), class_idx)
    ref = python_map(model, method, layer, x, idx)
    assert saliency.shape == ref.shape
    diff = np.abs(saliency - ref).max()
    assert diff <= TOL * max(1.0, np.abs(ref).max()), (method, diff)
    single = s.run(["saliency"], {model.input_name: x[1:2]})[0]  # no class_idx: argmax
    ref1 = python_map(model, method, layer, x[1:2], None)
    assert np.abs(single - ref1).max() <= TOL * max(1.0, np.abs(ref1).max())
    return proto, diff


@pytest.mark.parametrize("method", export_methods())
def test_resnet_matches_python_api(resnet, method):
    x = np.random.default_rng(0).normal(size=(3, 3, 40, 48)).astype(np.float32)
    proto, _ = check_against_python(resnet[1], method, "layer4", x, [2, -1, 0])
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and not any(i.name.startswith("__xai") for i in proto.graph.input)


@pytest.mark.parametrize("method", export_methods())
def test_3d_matches_python_api(method):
    model = Model(assets.model_dir() / "synthetic_blobs3d.onnx", device="cpu", verbose=False)
    x = synthetic.blobs_3d(3, seed=3)[0].astype(np.float32)
    check_against_python(model, method, "/10/Relu", x, [1, -1, 0])


@pytest.mark.parametrize("method", ["vanilla", "gradcam"])
def test_shipped_model_matches_python_api(method):
    model = Model(assets.efficientnet_lite0(), device="cpu", verbose=False)
    x = np.random.default_rng(1).normal(size=(3, 3, 224, 224)).astype(np.float32)
    check_against_python(model, method, "_blocks.10", x, [281, -1, 7])


def test_vanilla_gradient_equals_torch_autograd(resnet):
    net, model = resnet
    x = torch.randn(3, 3, 40, 48, generator=torch.Generator().manual_seed(5), requires_grad=True)
    classes = [4, 0, 2]
    net(x)[torch.arange(3), torch.tensor(classes)].sum().backward()
    got = session(export_explainer(model, "vanilla")).run(
        ["saliency"], {"x": x.detach().numpy(), "class_idx": np.array(classes)})[0]
    np.testing.assert_allclose(got, x.grad.numpy(), atol=1e-5 * float(x.grad.abs().max()))


def test_raw_maps_class_default_and_fixed_batch(resnet):
    _, model = resnet
    x = np.random.default_rng(2).normal(size=(2, 3, 40, 48)).astype(np.float32)
    proto = export_explainer(model, "hirescam", "layer4", class_idx=3, upsample=False,
                             normalize=False, batch_size=2)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 40, 48]
    got = session(proto).run(["saliency"], {"x": x})[0]  # class_idx defaults to 3
    ref = ox.HiResCAM(model, "layer4").compute_map(x, 3)
    assert got.shape == ref.shape == (2, 1, 3, 3)
    np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_gradcampp_with_logits_past_float32_exp(tiny_cnn):
    """Logits past 88, where exp(S) overflows float32: the normalised export leaves out
    exp(S) (a per-sample positive factor that the normalisation cancels) and equals MONAI's
    GradCAMpp run in float64 on the torch model; the raw export keeps exp(S), as MONAI."""
    monai_cam = pytest.importorskip("monai.visualize.class_activation_maps")

    class Scaled(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) * 1000.0

    net = Scaled(tiny_cnn[0]).eval()
    model = Model(export_onnx(net, torch.randn(2, 3, 16, 16)), device="cpu", verbose=False)
    x = np.random.default_rng(5).normal(size=(3, 3, 16, 16)).astype(np.float32)
    assert model.predict(x).max() > 88
    proto = export_explainer(model, "gradcampp", "net.3", upsample=False)
    got = session(proto).run(["saliency"], {"x": x})[0]
    theirs = monai_cam.GradCAMpp(net.double(), "net.3")  # its normaliser is float32: raw maps
    raw = np.concatenate([theirs.compute_map(torch.from_numpy(xi[None]).double()).detach().numpy()
                          for xi in x])
    lo, hi = raw.min((1, 2, 3), keepdims=True), raw.max((1, 2, 3), keepdims=True)
    assert np.isfinite(got).all() and raw.max() > np.finfo(np.float32).max
    np.testing.assert_allclose(got, 1 - (raw - lo) / (hi - lo), atol=1e-5)
    raw = export_explainer(model, "gradcampp", "net.3", normalize=False)
    assert "Exp" in [n.op_type for n in raw.graph.node]
    net.float()


def test_reference_evaluator_gives_the_same_outputs(tiny_cnn):
    """onnx.reference (a second, pure-Python runtime) agrees with ORT; full checker passes."""
    from onnx.reference import ReferenceEvaluator

    proto = export_explainer(tiny_cnn[1], "gradcampp")
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(3).normal(size=(2, 3, 16, 16)).astype(np.float32)
    ref, s = ReferenceEvaluator(proto), session(proto)
    for feeds in ({"x": x}, {"x": x, "class_idx": np.array([4, 1])}):
        for a, b in zip(ref.run(None, feeds), s.run(None, feeds)):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_cli_export_then_explain(tmp_path):
    model = assets.model_dir() / "synthetic_blobs3d.onnx"
    out = tmp_path / "explainer.onnx"
    cmd = [sys.executable, "-m", "onnx_xai.cli"]
    r = subprocess.run(cmd + ["export", str(model), "--method", "gradcam", "--layer", "/10/Relu",
                              "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sidecar = json.loads(model.with_suffix(".json").read_text())  # copied: the same preprocessing
    assert json.loads(out.with_suffix(".json").read_text()) == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explainer.json", "explainer.onnx"]  # no temp file
    x = synthetic.blobs_3d(2, seed=4)[0].astype(np.float32)
    got = session(onnx.load(out)).run(["saliency"], {"input": x})[0]
    m = Model(model, device="cpu", verbose=False)
    np.testing.assert_allclose(got, ox.GradCAM(m, "/10/Relu")(x), atol=TOL)
    np.save(tmp_path / "vol.npy", x[0])
    r = subprocess.run(cmd + ["explain", str(out), str(tmp_path / "vol.npy"), "--out",
                              str(tmp_path / "o"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # the graph's map is MONAI's (hot = 0); explain draws and saves it hot = 1: 1 - map
    np.testing.assert_allclose(np.load(tmp_path / "o" / "vol_npy_embedded.npy"), 1 - got[0, 0], atol=1e-6)
    r = subprocess.run(cmd + ["explain", str(out), str(tmp_path / "vol.npy"), "--target", "0", "--out",
                              str(tmp_path / "t"), "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr  # the optional class_idx input is fed: the map is class 0 (not the argmax, 1)
    np.testing.assert_allclose(np.load(tmp_path / "t" / "vol_npy_embedded.npy"),
                               1 - ox.GradCAM(m, "/10/Relu")(x[:1], class_idx=0)[0, 0], atol=TOL)
    bad = subprocess.run(cmd + ["export", str(model), "--layer", "nosuch", "-o", str(tmp_path / "b.onnx")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no tensor, node or module named 'nosuch'" in bad.stderr
    assert not (tmp_path / "b.onnx").exists()


def test_metadata_says_which_way_is_hot(resnet, tmp_path):
    from onnx_xai.export import explainer_info

    _, model = resnet
    for method, kwargs, hot in [("gradcam", {}, "low"), ("gradcampp", {}, "low"), ("cam", {}, "low"),
                                ("layercam", {}, "high"), ("vanilla", {}, "high"),
                                ("gradcam", {"normalize": False}, "high")]:
        proto = export_explainer(model, method, **kwargs)
        props = {p.key: p.value for p in proto.metadata_props}
        assert (props["onnx_xai.method"], props["onnx_xai.hot"]) == (method, hot), (method, kwargs)
        info = explainer_info(proto)
        assert (info["method"], info["hot"]) == (method, hot)
        if method == "gradcam" and not kwargs:
            onnx.save(proto, tmp_path / "e.onnx")
            for source in (tmp_path / "e.onnx", proto.SerializeToString(), session(proto),
                           Model(proto, device="cpu", verbose=False)):
                assert explainer_info(source)["hot"] == "low"
    assert explainer_info(model) == {"method": None, "hot": "high"}  # not an exported explainer
    older = export_explainer(model, "gradcam")  # an export from before onnx_xai.hot: its JSON decides
    props = {p.key: p.value for p in older.metadata_props}
    spec = json.loads(props.pop("onnx_xai.explainer"))
    del spec["hot"], props["onnx_xai.hot"], props["onnx_xai.method"]
    onnx.helper.set_model_props(older, dict(props, **{"onnx_xai.explainer": json.dumps(spec)}))
    assert explainer_info(older)["hot"] == "low"


def test_cli_explain_of_an_exported_gradcam_is_drawn_hot_high(tmp_path):
    """``explain model_gradcam.onnx`` and ``explain model.onnx --method gradcam``: the same map,
    the same way round (it used to correlate -1: MONAI's flipped normalisation drawn as it was)."""
    model = assets.model_dir() / "synthetic_shapes2d.onnx"
    cmd = [sys.executable, "-m", "onnx_xai.cli"]
    exported = tmp_path / "model_gradcam.onnx"
    r = subprocess.run(cmd + ["export", str(model), "--method", "gradcam", "--layer", "/10/Relu", "-o",
                              str(exported)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    x, _, _ = synthetic.shapes_2d(3, seed=5)
    maps = {}
    for i in range(3):
        np.save(tmp_path / f"s{i}.npy", x[i].astype(np.float32))
    for name, args in [("embedded", [str(exported)]),
                       ("gradcam", [str(model), "--method", "gradcam", "--layer", "/10/Relu"])]:
        r = subprocess.run(cmd + ["explain", *args, *[str(tmp_path / f"s{i}.npy") for i in range(3)],
                                  "--out", str(tmp_path / name), "--quiet"], capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, r.stderr
        maps[name] = [np.load(tmp_path / name / f"s{i}_npy_{name}.npy") for i in range(3)]
        for i in range(3):
            png = cv2.imread(str(tmp_path / name / f"s{i}_npy_{name}.png"))
            maps.setdefault(name + ".png", []).append(png)
    for i in range(3):
        a, b = maps["embedded"][i], maps["gradcam"][i]
        assert a.shape == b.shape == (64, 64) and a.std() > 0
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
        np.testing.assert_allclose(a, b, atol=1e-4)
        pa, pb = maps["embedded.png"][i], maps["gradcam.png"][i]
        assert pa.shape == pb.shape and np.abs(pa.astype(int) - pb).mean() < 0.5  # drawn alike


def _model_with(node, domain: str | None = None, shape=(1, 3, 8, 8)) -> bytes:
    """Conv → ``node`` (reads c, writes n) → global pooling → MatMul, input ``shape``."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w"),
             numpy_helper.from_array(np.ones((4, 2), np.float32), "fc"),
             numpy_helper.from_array(np.array([[0, 0, 0, 7, 7]], np.float32), "rois")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node,
             helper.make_node("GlobalAveragePool", ["n"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 2])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=opsets, ir_version=8).SerializeToString()


def test_errors(resnet):
    from onnx import helper

    _, model = resnet
    with pytest.raises(ValueError, match="'scorecam' cannot be written into an ONNX graph; exportable: cam, gradcam"):
        export_explainer(model, "scorecam")
    with pytest.raises(ValueError, match="'nope' is unknown; available: occlusion"):
        export_explainer(model, "nope")
    with pytest.raises(ValueError, match="closest names"):
        export_explainer(model, "gradcam", "layer9")
    with pytest.raises(ValueError, match="class_idx must be"):
        export_explainer(model, "gradcam", "layer4", class_idx=-3)
    with pytest.raises(ValueError, match="spatial extent"):
        export_explainer(model, "gradcam", "fc")
    roi = helper.make_node("MaxRoiPool", ["c", "rois"], ["n"], pooled_shape=[2, 2], name="the_roi_pool")
    with pytest.raises(UnsupportedModelError, match="no reverse rule for MaxRoiPool .node 'the_roi_pool'"):
        export_explainer(_model_with(roi), "vanilla")
    gelu = helper.make_node("Gelu", ["c"], ["n"], name="ms_gelu", domain="com.microsoft")
    with pytest.raises(UnsupportedModelError, match="com.microsoft:Gelu .'ms_gelu'"):
        export_explainer(_model_with(gelu, "com.microsoft"), "gradcam", "c")
    relu = helper.make_node("Relu", ["c"], ["n"])
    class Total(nn.Module):  # one value per sample (B,): neither (B, K) nor (B, K, *s)
        def forward(self, x):
            return x.sum((1, 2, 3))
    with pytest.raises(UnsupportedModelError, match=r"\(B, K\) classifier or \(B, K, \*s\) segmentation"):
        export_explainer(export_onnx(Total(), torch.randn(1, 3, 8, 8)), "vanilla")
    free_hw = _model_with(relu, shape=("b", 3, "h", "w"))
    with pytest.raises(ValueError, match="input_shape"):
        export_explainer(free_hw, "vanilla")
    proto = export_explainer(free_hw, "gradcam", "n", input_shape=(3, 8, 6))  # spatial dims fixed
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == ["batch", 3, 8, 6]
    assert session(proto).run(["saliency"], {"x": np.ones((2, 3, 8, 6), np.float32)})[0].shape == (2, 1, 8, 6)


def test_batch_relaxation_rules():
    """Shape constants proportional to the batch are computed from Shape(x); a float constant
    that changes with the batch is refused, naming it and its reader."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_xai.export import _relax_batch

    def built(b, scale):
        g = helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["r"], name="flat"),
             helper.make_node("Mul", ["r", "k"], ["y"], name="scale")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, 2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array([b * 6, -1], np.int64), "shape"),
             numpy_helper.from_array(np.array(scale, np.float32), "k")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    relaxed = _relax_batch(built(2, 1.0), built(3, 1.0), ["x"])
    x = np.arange(5 * 6, dtype=np.float32).reshape(5, 2, 3)
    np.testing.assert_array_equal(session(relaxed).run(None, {"x": x})[0], x.reshape(30, 1))
    with pytest.raises(UnsupportedModelError, match="constant 'k' .read by Mul 'scale'"):
        _relax_batch(built(2, 2.0), built(3, 3.0), ["x"])


@pytest.mark.parametrize("method", ["gradcam", "vanilla", "gradcampp"])
def test_exported_softmax_target_equals_the_python_class(resnet, method):
    """activation="softmax": the exported map explains the class probability, as the class
    called with ClassTarget(index, activation="softmax") does (GradCAM++ unnormalised too,
    where its exp(S) reads the probability)."""
    from onnx_xai.targets import ClassTarget

    _, model = resnet
    x = np.random.default_rng(4).random((2, 3, 40, 48), np.float32)
    normalize = method != "gradcampp"
    proto = export_explainer(model, method, "layer4", activation="softmax", normalize=normalize)
    idx = model.predict(x).argmax(1)  # each sample's top class: a map with something in it
    got = session(proto).run(["saliency"], {model.input_name: x, "class_idx": idx.astype(np.int64)})[0]
    info = ox.registry.get(method)
    if info.kind == "gradient":
        explainer = info.impl(model)
    else:
        explainer = info.impl(model, "layer4", **({} if normalize else {"postprocessing": lambda m: m}))
    want = explainer(x, ClassTarget(index=idx, activation="softmax"))
    assert np.abs(got - want).max() <= TOL * max(1.0, np.abs(want).max())
    assert np.abs(want).max() > 0
    plain = explainer(x, ClassTarget(index=idx))
    assert np.abs(plain - want).max() > 10 * TOL * max(1.0, np.abs(want).max())  # a different score
    assert ox.export.explainer_info(proto)["activation"] == "softmax"
    with pytest.raises(ValueError, match="reads no gradients"):
        export_explainer(model, "cam", "layer4", activation="softmax")
