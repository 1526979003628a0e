"""What a user meets when something is wrong: files that are not ONNX models, operators ONNX
Runtime lacks, models with no outputs or one value per sample, integer inputs given to methods
that need floats, runaway thread counts; and two bugs of derived models (fixed batch, an output
requested twice), and GradCAM++ on scores whose exp overflows."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import onnx_xai
from conftest import conv_classifier
from onnx_xai import Model, UnsupportedModelError
from onnx_xai.runtime import THREADS_PER_CORE, usable_cores

F32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def _conv_net(batch="B", out_shape=None, tail=()) -> onnx.ModelProto:
    return conv_classifier(batch, out_shape, tail)


@pytest.fixture
def x():
    return np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("data", [b"", b"\x00\xffgarbage" * 16, "truncated"])
def test_not_an_onnx_model_by_path_and_bytes(tmp_path, data):
    if data == "truncated":
        data = _conv_net().SerializeToString()[:200]
    path = tmp_path / "broken.onnx"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"not an ONNX model: the file '.*broken\.onnx'"):
        Model(path)
    with pytest.raises(ValueError, match=r"not an ONNX model: the \d+ bytes given"):
        Model(data)


@pytest.mark.parametrize("op,domain,shown", [("FooBar", "", "ai.onnx"), ("Foo", "custom.ops", "custom.ops")])
def test_unknown_operator_names_op_and_domain(op, domain, shown):
    proto = _model([oh.make_node(op, ["x"], ["y"], domain=domain)],
                   [oh.make_tensor_value_info("x", F32, [1, 3])], [oh.make_tensor_value_info("y", F32, [1, 3])])
    if domain:
        proto.opset_import.append(oh.make_opsetid(domain, 1))
    with pytest.raises(UnsupportedModelError, match=rf"operator '{op}' \(domain '{shown}'\)"):
        Model(proto)


def test_invalid_graph_is_our_error_not_orts():
    bad = _model([oh.make_node("ReduceSum", ["x"], ["y"], axes=[1])],  # axes is an input since opset 13
                 [oh.make_tensor_value_info("x", F32, [1, 3])], [oh.make_tensor_value_info("y", F32, [1])])
    with pytest.raises(UnsupportedModelError, match="cannot load the model: INVALID_GRAPH.*axes"):
        Model(bad)


def test_model_with_no_outputs():
    proto = _model([oh.make_node("Relu", ["x"], ["y"])], [oh.make_tensor_value_info("x", F32, [1, 3])], [])
    with pytest.raises(UnsupportedModelError, match="no outputs"):
        Model(proto)


def test_threads_bounded():
    limit = THREADS_PER_CORE * usable_cores()
    with pytest.raises(ValueError, match=f"at most {limit}"):
        Model(_conv_net(), threads=limit + 1)
    for bad in (0, -1, 2.5, True, "2"):
        with pytest.raises(ValueError, match="threads"):
            Model(_conv_net(), threads=bad)
    assert Model(_conv_net(), threads=limit, device="cpu").threads == limit


def test_cli_threads_bounded(capsys):
    from onnx_xai.cli import main

    code = main(["explain", str(onnx_xai.assets.efficientnet_lite0()), "examples/images/chelsea.png",
                 "--method", "occlusion", "--threads", "100000", "--quiet"])
    assert code == 2
    assert "threads=100000" in capsys.readouterr().err


# ----------------------------------------------------------------------------- outputs
def _one_value_per_sample() -> onnx.ModelProto:
    return _conv_net(out_shape=["B"], tail=[oh.make_node("ReduceMean", ["g"], ["y"], axes=[1], keepdims=0)])


@pytest.mark.parametrize("method", ["occlusion", "rise", "gradcam", "eigencam", "scorecam", "vanilla", "ig"])
def test_one_value_per_sample_output_is_refused_clearly(method, x):
    model = Model(_one_value_per_sample(), device="cpu", verbose=False)
    assert model.predict(x).shape == (1,)
    run = {"occlusion": lambda: onnx_xai.OcclusionSensitivity(model, mask_size=4)(x),
           "rise": lambda: onnx_xai.RISE(model, n_masks=8, n_batch=8)(x),
           "gradcam": lambda: onnx_xai.GradCAM(model, "relu")(x),
           "eigencam": lambda: onnx_xai.EigenCAM(model, "relu")(x),
           "scorecam": lambda: onnx_xai.ScoreCAM(model, "relu")(x),
           "vanilla": lambda: onnx_xai.VanillaGrad(model)(x),
           "ig": lambda: onnx_xai.IntegratedGradients(model, n_steps=4)(x)}[method]
    with pytest.raises(ValueError, match=r"one value per sample, not class scores \(B, K"):
        run()


def _int_input_model() -> onnx.ModelProto:
    nodes = [oh.make_node("Cast", ["x"], ["xf"], to=F32),
             oh.make_node("ReduceSum", ["xf", "axes"], ["y"], keepdims=0)]
    return _model(nodes, [oh.make_tensor_value_info("x", I64, ["B", 3, 8, 8])],
                  [oh.make_tensor_value_info("y", F32, ["B", 3])],
                  [onh.from_array(np.array([2, 3], np.int64), "axes")])


def test_float_only_methods_on_an_int64_input_say_so():
    model = Model(_int_input_model(), device="cpu", verbose=False)
    xi = np.random.default_rng(0).integers(0, 10, size=(1, 3, 8, 8))
    with pytest.raises(ValueError, match="RISE .* floating-point input; the model's input 'x' is int64"):
        onnx_xai.RISE(model, n_masks=8)(xi)
    with pytest.raises(ValueError, match="input 'x' is int64"):
        onnx_xai.occlusion_sensitivity(model, xi[0].transpose(1, 2, 0), 0)
    # occlusion replaces patches by a value: integer inputs work, and a hidden patch lowers the sum
    occ, _ = onnx_xai.OcclusionSensitivity(model, mask_size=4, activate=False, mode=0)(xi)
    assert occ.shape == (1, 3, 8, 8) and np.isfinite(occ).all()
    assert (occ <= xi.sum(axis=(2, 3))[:, :, None, None]).all()


# ----------------------------------------------------------------------------- derived models
def _fixed_batch_model() -> onnx.ModelProto:
    """Batch 1 baked in: the logits are concatenated with a (1, 2) constant, so a batch of 2 fails."""
    const = onh.from_array(np.ones((1, 2), np.float32), "k")
    proto = _conv_net(batch=1, out_shape=[1, 6], tail=[oh.make_node("Concat", ["g", "k"], ["y"], axis=1)])
    proto.graph.initializer.append(const)
    return proto


def test_derived_models_keep_the_fixed_batch(x):
    model = Model(_fixed_batch_model(), device="cpu", verbose=False)
    xs = np.concatenate([x, x[:, :, ::-1]])
    want = np.concatenate([model.predict(xs[i:i + 1]) for i in range(2)])
    np.testing.assert_allclose(model.predict(xs), want, rtol=1e-6)  # runs one at a time
    child = model.with_outputs(["r"])
    got = child.predict(xs, outputs=["y", "r"])
    np.testing.assert_allclose(got["y"], want, rtol=1e-6)
    assert got["r"].shape == (2, 6, 8, 8)
    cam = onnx_xai.EigenCAM(model, "relu")(xs)
    assert cam.shape == (2, 1, 8, 8) and np.isfinite(cam).all()


def test_output_requested_twice_is_returned_once(x):
    model = Model(_conv_net(), device="cpu", verbose=False)
    got = model.predict(x, outputs=["y", "y"])
    assert list(got) == ["y"] and got["y"].shape == (1, 4)
    # EigenCAM on a layer that is a graph output returned batch 2 for one input
    relu_out = _conv_net()
    relu_out.graph.output.append(oh.make_tensor_value_info("r", F32, ["B", 6, 8, 8]))
    cam = onnx_xai.EigenCAM(Model(relu_out, device="cpu", verbose=False), "r")(x)
    assert cam.shape == (1, 1, 8, 8)


# ----------------------------------------------------------------------------- GradCAM++ overflow
def test_gradcampp_large_scores_match_monais_float64_map():
    torch = pytest.importorskip("torch")
    monai_cam = pytest.importorskip("monai.visualize.class_activation_maps")
    from torch_models import SmallResNet, export_onnx, randomize_bn

    torch.manual_seed(4)
    net = randomize_bn(SmallResNet(5))
    with torch.no_grad():
        net.fc.bias += torch.tensor([150.0, 400.0, 0.0, 0.0, 0.0])  # logits ~150 and ~400
    model = Model(export_onnx(net, torch.randn(2, 3, 64, 64)), device="cpu", verbose=False)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with pytest.warns(RuntimeWarning, match="exp\\(S\\) overflows float32"):
        got = onnx_xai.GradCAMpp(model, "layer4")(x.numpy(), class_idx=[0, 1])
    assert np.isfinite(got).all() and got.shape == (2, 1, 64, 64)
    assert not np.isfinite(monai_cam.GradCAMpp(net, "layer4")(x[1:], class_idx=1).detach().numpy()).all()
    ref = monai_cam.GradCAMpp(net.double(), "layer4", postprocessing=lambda m: m)  # float64: finite
    for i, cls in enumerate([0, 1]):
        raw = ref(x[i:i + 1].double(), class_idx=cls).detach().numpy()
        lo, hi = raw.min(), raw.max()
        np.testing.assert_allclose(got[i:i + 1], 1 - (raw - lo) / (hi - lo), atol=1e-4)


def test_static_shapes_leave_no_files_in_the_working_folder(tmp_path, monkeypatch):
    """ORT's symbolic shape inference saves an incomplete result (sym_shape_infer_temp.onnx and
    external data) into the working folder; ours must write nothing there."""
    from onnx_xai import graph

    nodes = [oh.make_node("Foo", ["x"], ["c"], domain="my.ops"), oh.make_node("Relu", ["c"], ["y"])]
    proto = oh.make_model(oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("x", F32, ["N", 4])],
        [oh.make_tensor_value_info("y", F32, None)], [onh.from_array(np.ones((300, 4), np.float32), "w")]),
        opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("my.ops", 1)], ir_version=8)
    monkeypatch.chdir(tmp_path)
    try:
        graph.static_shapes(proto, {"x": (2, 4)})
    except Exception:  # no kernel for my.ops:Foo: whatever the last-resort run makes of it
        pass
    assert list(tmp_path.iterdir()) == []
