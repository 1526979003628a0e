"""Float16, quantized and old-opset graphs are explained through their float32, opset-16
surrogate (onnx_xai.surrogate_graph), on graphs real exporters wrote from seeded torch nets:
torch.onnx at opsets 9 / 11 (ResNet-like, SqueezeNet-like with ceil-mode MaxPool), ONNX
Runtime's quantize_static (QDQ and QOperator) and quantize_dynamic, onnxconverter-common's
float16 with and without float32 I/O. References: torch autograd on the float source net
(old opsets: equal; float16 / quantized: correlation), the served model run by ONNX Runtime
(fidelity, black-box maps), analytic quantization arithmetic."""
from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")
float16 = pytest.importorskip("onnxconverter_common.float16")

import onnx_xai as ox  # noqa: E402
from onnx_xai import Model, UnsupportedModelError  # noqa: E402
from onnx_xai.export import export_explainer  # noqa: E402
from onnx_xai.surrogate_graph import SurrogateWarning, float_surrogate, surrogate_model  # noqa: E402
from onnx_xai.targets import ClassTarget  # noqa: E402
from torch_models import SmallResNet, TinySqueezeNet, export_onnx, randomize_bn  # noqa: E402

SIZE = (3, 32, 32)
GRAPHS = ("opset9", "opset11", "qdq", "qoperator", "dynamic", "fp16_io32", "fp16")


@contextlib.contextmanager
def _cwd(path):
    old = os.getcwd()
    os.chdir(path)  # onnxruntime.quantization leaves temporary files in the working directory
    try:
        yield
    finally:
        os.chdir(old)


class _Calibration(quantization.CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(7)
        self.batches = iter([{"x": rng.standard_normal((1,) + SIZE).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Float torch nets and every graph kind made from them (name → ONNX bytes)."""
    tmp = tmp_path_factory.mktemp("surrogates")
    torch.manual_seed(0)
    resnet = randomize_bn(SmallResNet(5))
    torch.manual_seed(1)
    squeeze = TinySqueezeNet(5).eval()
    example = torch.randn(2, *SIZE)
    graphs = {"opset9": export_onnx(resnet, example, opset=9),
              "opset11": export_onnx(resnet, example, opset=11),
              "squeeze_opset11": export_onnx(squeeze, example, opset=11)}
    (tmp / "r13.onnx").write_bytes(export_onnx(resnet, example, opset=13))
    with _cwd(tmp), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fmt in (("qdq", quantization.QuantFormat.QDQ),
                          ("qoperator", quantization.QuantFormat.QOperator)):
            quantization.quantize_static(str(tmp / "r13.onnx"), str(tmp / f"{name}.onnx"), _Calibration(),
                                         quant_format=fmt)
            graphs[name] = (tmp / f"{name}.onnx").read_bytes()
        quantization.quantize_dynamic(str(tmp / "r13.onnx"), str(tmp / "dyn.onnx"),
                                      op_types_to_quantize=["Conv", "MatMul", "Gemm"])
        graphs["dynamic"] = (tmp / "dyn.onnx").read_bytes()
    float_proto = onnx.load_from_string(export_onnx(resnet, example, opset=17))
    for name, keep in (("fp16_io32", True), ("fp16", False)):
        graphs[name] = float16.convert_float_to_float16(float_proto, keep_io_types=keep).SerializeToString()
    return {"resnet": resnet, "squeeze": squeeze, "graphs": graphs}


def model(nets, kind) -> Model:
    return Model(nets["graphs"][kind], device="cpu", threads=2, verbose=False)


def images(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n,) + SIZE).astype(np.float32)


def torch_gradient(net, x, classes):
    """d logit[class] / d x by torch autograd on the float net."""
    xt = torch.tensor(x, requires_grad=True)
    net(xt).gather(1, torch.as_tensor(classes)[:, None]).sum().backward()
    return xt.grad.numpy()


def corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# ---------------------------------------------------------------------------- old opsets
@pytest.mark.parametrize("kind,net", [("opset9", "resnet"), ("opset11", "resnet"), ("squeeze_opset11", "squeeze")])
def test_old_opset_gradients_equal_torch_autograd(nets, kind, net):
    m = model(nets, kind)
    original = m.proto.SerializeToString()
    x = images()
    classes = nets[net](torch.tensor(x)).argmax(1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SurrogateWarning)  # an exact surrogate: no warning
        g = ox.VanillaGrad(m)(x, None)
    ref = torch_gradient(nets[net], x, classes)
    assert g.shape == x.shape and g.dtype == np.float32
    assert np.abs(g - ref).max() <= 1e-4 * np.abs(ref).max()
    surrogate, record = surrogate_model(m)
    assert record.kinds == ("opset",) and m.proto.SerializeToString() == original  # user's model untouched
    assert next(o.version for o in surrogate.proto.opset_import if o.domain == "") == 16


def test_old_opset_gradcam_equals_torch(nets):
    """Grad-CAM of layer4 at opset 9 equals torch's (weights: spatial mean of d logit / d A)."""
    net, x = nets["resnet"], images(2)
    classes = net(torch.tensor(x)).argmax(1).numpy()
    ref = torch_gradcam(net, x, classes)
    raw = ox.GradCAM(model(nets, "opset9"), "layer4").compute_map(x, classes)
    assert raw.shape == ref.shape
    np.testing.assert_allclose(raw, ref, atol=1e-5 * np.abs(ref).max())


# ---------------------------------------------------------------------------- float16, quantized
# correlation of the input gradient with the float source net's (measured 0.996 QDQ / QOperator,
# 0.998 dynamic, 1.0000 float16 on this net); bounds leave room across ORT versions
BOUNDS = {"qdq": 0.9, "qoperator": 0.9, "dynamic": 0.9, "fp16_io32": 0.99, "fp16": 0.99}


@pytest.mark.parametrize("kind", list(BOUNDS))
def test_surrogate_gradients_follow_the_float_model(nets, kind):
    m, x = model(nets, kind), images(4)
    classes = nets["resnet"](torch.tensor(x)).argmax(1).numpy()
    with pytest.warns(SurrogateWarning, match="top-1 agreement"):
        g = ox.VanillaGrad(m)(x, classes)
    ref = torch_gradient(nets["resnet"], x, classes)
    r = corr(g, ref)
    print(f"{kind}: correlation with the float model's gradient {r:.4f}")
    assert g.shape == x.shape and g.dtype == np.float32 and r >= BOUNDS[kind]


@pytest.mark.parametrize("kind", list(BOUNDS))
def test_fidelity_is_measured_against_the_served_model(nets, kind):
    """The gradient model's fidelity equals what ONNX Runtime gives for the served graph and
    the surrogate graph on the explained inputs; targets follow the served model's argmax."""
    m, x = model(nets, kind), images(4, seed=3)
    gm = ox.autodiff.gradient_model(m, batch_size=4, input_shape=SIZE)
    with pytest.warns(SurrogateWarning):
        res = gm.run(x)
    served = ort.InferenceSession(nets["graphs"][kind], providers=["CPUExecutionProvider"])
    feed = x.astype(np.float16) if served.get_inputs()[0].type == "tensor(float16)" else x
    served_out = served.run(None, {"x": feed})[0].astype(np.float32)
    proto, record = float_surrogate(onnx.load_from_string(nets["graphs"][kind]))
    own = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    sur_out = own.run(None, {"x": x.astype(np.float32)})[0]
    fid = gm.fidelity
    assert fid.samples == 4 and set(fid.record.kinds) == set(record.kinds)
    np.testing.assert_allclose(fid.max_abs_diff, np.abs(served_out - sur_out).max(), rtol=1e-3, atol=1e-6)
    assert fid.top1_agreement == np.mean(served_out.argmax(1) == sur_out.argmax(1))
    np.testing.assert_allclose(res["outputs"]["y"], served_out, rtol=1e-6, atol=1e-6)
    print(f"{kind}: {fid}")
    assert fid.max_rel_diff < (0.02 if "fp16" in kind else 0.1)


def torch_gradcam(net, x, classes):
    """Raw Grad-CAM of ``net.layer4`` by torch autograd: relu(Σ_k mean(dS/dA_k) · A_k)."""
    acts = []

    def keep(module, inputs, output):
        output.retain_grad()
        acts.append(output)
    hook = net.layer4.register_forward_hook(keep)
    try:
        net(torch.tensor(x)).gather(1, torch.as_tensor(classes)[:, None]).sum().backward()
    finally:
        hook.remove()
    a, grad = acts[0].detach().numpy(), acts[0].grad.numpy()
    return np.maximum((grad.mean((2, 3), keepdims=True) * a).sum(1, keepdims=True), 0)


@pytest.mark.parametrize("kind", list(BOUNDS))
def test_automatic_cam_layer_is_a_float_feature_map_of_the_surrogate(nets, kind):
    """GradCAM without a layer picks the backbone's last feature map in the surrogate (the
    served graph's is quantized or absent), and its map follows torch's Grad-CAM of layer4."""
    m, x = model(nets, kind), images(4, seed=4)
    classes = nets["resnet"](torch.tensor(x)).argmax(1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SurrogateWarning)
        cam = ox.GradCAM(m)
        raw = cam.compute_map(x, classes)
    assert "/layer4/layer4.1/" in cam.target_layers[0]
    ref = torch_gradcam(nets["resnet"], x, classes)
    r = corr(raw, ref)
    print(f"{kind}: automatic layer {cam.target_layers[0]}, Grad-CAM correlation with torch {r:.4f}")
    assert raw.shape == ref.shape and r >= 0.9


def test_dynamic_quantization_has_no_scale_only_gradients(nets):
    """quantize_dynamic's integer ops become float MatMul / Conv on dequantized weights: no
    DynamicQuantizeLinear, integer op or quantization scale is left in the surrogate."""
    proto, record = float_surrogate(onnx.load_from_string(nets["graphs"]["dynamic"]))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "Cast"}
    assert {"Conv", "MatMul"} <= ops and "quantized" in record.kinds


def test_qdq_weights_are_dequantized_exactly():
    """Analytic: DequantizeLinear of constant int8 weights (per output column) and a Q→DQ pair
    on an activation (straight-through, saturating to the uint8 range: a ReLU folded into it)."""
    w = np.array([[1, -2, 5], [3, 4, -6]], np.int8)
    scale, zero = np.array([0.5, 0.25, 0.125], np.float32), np.array([1, 0, -2], np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], axis=1),
             helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("MatMul", ["d", "wf"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
                          [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (scale, "ws"), (zero, "wz"),
                           (np.array(0.1, np.float32), "s"), (np.array(0, np.uint8), "z"))])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    out, record = float_surrogate(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    wf = (w - zero) * scale
    np.testing.assert_array_equal(consts["wf"], wf)
    x = np.array([[-1.0, 0.2], [30.0, 0.5]], np.float32)  # on the quantization grid but 30 (saturates)
    y = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, np.clip(x, 0, 25.5) @ wf, rtol=1e-6)
    served = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, served, rtol=1e-5, atol=1e-6)
    with pytest.warns(SurrogateWarning, match="difference 0 "):
        got = ox.autodiff.gradients(Model(proto, device="cpu"), x, target=ClassTarget(index=0), batch_size=2)
    np.testing.assert_allclose(got["gradients"]["x"], ((x >= 0) & (x <= 25.5)) * wf[:, 0], atol=1e-7)


def test_unsupported_quantized_op_is_refused_by_name():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("QLinearSoftmax", ["q", "s", "z", "s", "z"], ["p"], domain="com.microsoft",
                              name="softmax_q", opset=13),
             helper.make_node("DequantizeLinear", ["p", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
                          [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                           numpy_helper.from_array(np.array(0, np.uint8), "z")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    with pytest.raises(UnsupportedModelError, match="QLinearSoftmax.*softmax_q"):
        float_surrogate(proto)
    m = Model(proto, device="cpu")
    with pytest.raises(UnsupportedModelError, match="QLinearSoftmax"):
        ox.VanillaGrad(m)(np.ones((1, 4), np.float32), 0)  # gradients: refused, never scale-only
    assert surrogate_model(m, strict=False)[0] is m  # forward-only uses read the served graph


# ---------------------------------------------------------------------------- every method
OPTIONS = {"occlusion": dict(mask_size=8, n_batch=16), "rise": dict(n_masks=24, n_batch=24),
           "smoothgrad": dict(n_samples=2), "guided-smoothgrad": dict(n_samples=2), "ig": dict(n_steps=3),
           "lime": dict(n_samples=16, feature_mask="grid", n_features=16),
           "kernelshap": dict(n_samples=16, feature_mask="grid", n_features=16)}


@pytest.mark.parametrize("kind", GRAPHS)
def test_every_image_method_runs(nets, kind):
    m, x = model(nets, kind), images(1)
    done = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SurrogateWarning)
        for info in ox.registry.infos():
            if info.kind not in ("cam", "gradient", "perturbation", "occlusion") or info.name == "drise":
                continue
            opts = OPTIONS.get(info.name, {})
            e = info.impl(m, "layer4", **opts) if info.kind == "cam" else info.impl(m, **opts)
            got = e.explain(x, ClassTarget(None))
            got = np.asarray(got[0] if isinstance(got, tuple) else got)
            assert got.shape in ((1, 1) + SIZE[1:], x.shape), (info.name, got.shape)
            assert got.dtype == np.float32 and np.isfinite(got).all(), info.name
            done.append(info.name)
    assert {"gradcam", "vanilla", "ig", "occlusion", "rise", "lime", "scorecam", "cam"} <= set(done)


@pytest.mark.parametrize("kind", ["qdq", "fp16"])
def test_black_box_methods_run_the_served_model(nets, kind):
    """KernelSHAP over 4 quadrants with all 16 coalitions equals the exact Shapley values of
    the served graph's class-2 score computed by hand with ONNX Runtime, fed in its own dtype."""
    import itertools
    import math

    m, x = model(nets, kind), images(1, seed=5)
    served = ort.InferenceSession(nets["graphs"][kind], providers=["CPUExecutionProvider"])
    dtype = np.float16 if served.get_inputs()[0].type == "tensor(float16)" else np.float32
    quad = np.zeros((1, 1) + SIZE[1:], np.int64)
    quad[..., :16, 16:], quad[..., 16:, :16], quad[..., 16:, 16:] = 1, 2, 3

    def score(members):
        z = np.where(np.isin(quad, list(members)), x, 0.0).astype(dtype)
        return float(served.run(None, {"x": z})[0][0, 2])
    ref = np.zeros(4)
    for i in range(4):
        others = [j for j in range(4) if j != i]
        for k in range(4):
            for s_ in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(3 - k) / math.factorial(4)
                ref[i] += weight * (score(s_ + (i,)) - score(s_))
    phi = ox.KernelSHAP(m, n_samples=16, feature_mask=quad, baselines=0.0, seed=0)(
        x, 2, return_input_shape=False)
    np.testing.assert_allclose(np.ravel(phi), ref, atol=1e-4 * np.abs(ref).max())


# ---------------------------------------------------------------------------- export
@pytest.mark.parametrize("method,kind", [("gradcam", k) for k in GRAPHS]
                         + [("vanilla", k) for k in ("opset9", "qdq", "dynamic", "fp16")])
def test_exported_explainer_loads_and_equals_python(nets, kind, method):
    """The explainer is built on the surrogate, loads in ONNX Runtime and runs in the served
    model's I/O dtype; its map equals the Python method's for the same classes."""
    m = model(nets, kind)
    layer = "layer4" if method == "gradcam" else None
    proto = export_explainer(m, method, layer)  # dynamic batch
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    served_in = ort.InferenceSession(nets["graphs"][kind], providers=["CPUExecutionProvider"]).get_inputs()[0]
    assert s.get_inputs()[0].type == served_in.type  # the model's own input dtype
    dtype = np.float16 if served_in.type == "tensor(float16)" else np.float32
    x = images(3, seed=2).astype(dtype)
    classes = np.array([0, 2, 4], np.int64)
    out, saliency = s.run(None, {"x": x, "class_idx": classes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SurrogateWarning)
        info = ox.registry.get(method)
        ref = (info.impl(m) if info.kind == "gradient" else info.impl(m, "layer4"))(x.astype(np.float32), classes)
    assert saliency.shape == ref.shape
    assert np.abs(saliency - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    assert any(p.key == "onnx_xai.surrogate" for p in proto.metadata_props) == (kind != "opset16")


def test_dynamically_quantized_bert_embedding_gradients(tmp_path):
    """quantize_dynamic of a tiny HF BERT (MatMulInteger everywhere, quantized embedding
    Gathers): the gradient of a logit w.r.t. the word embeddings follows torch autograd on the
    float net, and the token methods run on it."""
    pytest.importorskip("transformers")
    from torch_models import tiny_bert

    net, data = tiny_bert()
    (tmp_path / "bert.onnx").write_bytes(data)
    with _cwd(tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_dynamic(str(tmp_path / "bert.onnx"), str(tmp_path / "q.onnx"))
    m = Model(str(tmp_path / "q.onnx"), device="cpu", threads=2, verbose=False)
    ids = np.random.default_rng(3).integers(5, 100, (4, 12))
    mask = np.ones_like(ids)
    grads = []
    hook = net.bert.embeddings.word_embeddings.register_forward_hook(
        lambda module, inputs, output: output.register_hook(grads.append) and None)
    try:
        net(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 1].sum().backward()
    finally:
        hook.remove()
    layer = "/bert/embeddings/word_embeddings/Gather_output_0"
    gm = ox.autodiff.gradient_model(m, layer, batch_size=4, input_shape=(12,),
                                    extra_shapes={"attention_mask": (12,)})
    with pytest.warns(SurrogateWarning):
        got = gm.run(ids, 1, extra_inputs={"attention_mask": mask})["gradients"][layer]
    r = corr(got, grads[0].numpy())
    print(f"dynamic BERT: embedding-gradient correlation with torch {r:.4f}; {gm.fidelity}")
    assert got.shape == tuple(grads[0].shape) and r >= 0.99 and gm.fidelity.top1_agreement == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SurrogateWarning)
        tokens = ox.registry.get("embedding-grad").impl(m).explain(ids, ClassTarget(index=1), attention_mask=mask)
    assert np.asarray(tokens).shape == ids.shape and np.isfinite(tokens).all()
