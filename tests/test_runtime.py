"""Model: sources, batching, fixed-batch graphs, several inputs, devices and input checks."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import scipy.special
from onnx import TensorProto, helper, numpy_helper

import onnx_xai
from onnx_xai import DeviceError, Model



def _graph_model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_sources_give_identical_outputs(tiny_cnn, tmp_path, rng):
    net, data = tiny_cnn
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    models = [Model(path), Model(data), Model(onnx.load_from_string(data)), Model(session),
              Model(Model(data)), Model(str(path), device="cpu")]
    outs = [m.predict(x) for m in models]
    import torch
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    for out in outs:
        assert np.array_equal(out, outs[0])
    np.testing.assert_allclose(outs[0], ref, atol=1e-5)
    assert models[3].proto is not None  # the graph was read back from the session


def test_batched_predict_equals_single_runs(tiny_cnn, rng):
    model = Model(tiny_cnn[1], threads=1)
    x = rng.standard_normal((7, 3, 16, 16)).astype(np.float32)
    batched = model.predict(x, batch_size=3)
    single = np.concatenate([model.predict(x[i:i + 1]) for i in range(7)])
    assert batched.shape == (7, 5)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    assert np.array_equal(model.predict(x), model.predict(x, batch_size=100))


def test_io_binding_path_equals_plain_run(tiny_cnn, rng):
    x = rng.standard_normal((5, 3, 16, 16)).astype(np.float32)
    plain = Model(tiny_cnn[1], io_binding=False).predict(x, batch_size=2)
    bound = Model(tiny_cnn[1], io_binding=True).predict(x, batch_size=2)
    np.testing.assert_allclose(bound, plain, rtol=1e-6, atol=1e-7)


def test_fixed_batch_model_is_made_dynamic(tiny_cnn, rng):
    net, _ = tiny_cnn
    import torch
    from torch_models import export_onnx

    data = export_onnx(net, torch.randn(1, 3, 16, 16), dynamic_batch=False)
    assert onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    model = Model(data)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    got = model.predict(x, batch_size=4)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert model._batch == "dynamic"


def test_fixed_batch_model_that_cannot_be_made_dynamic_runs_per_sample(rng):
    # Reshape to a hard-coded (1, 6): a batch of 2 would become (1, 12) and the MatMul fails.
    w = rng.standard_normal((6, 3)).astype(np.float32)
    model_proto = _graph_model(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(np.array([1, -1], np.int64), "shape"), numpy_helper.from_array(w, "w")])
    model = Model(model_proto)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    got = model.predict(x, batch_size=4)
    np.testing.assert_allclose(got, x.reshape(5, 6) @ w, rtol=1e-5, atol=1e-6)
    assert model._batch == "fixed"


def test_fixed_batch_model_with_silent_wrong_batch_is_detected(rng):
    # ReduceSum over every axis: batch 2 runs without error but returns one number.
    model_proto = _graph_model(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    x = rng.standard_normal((3, 4)).astype(np.float32)
    got = Model(model_proto).predict(x, batch_size=3)
    np.testing.assert_allclose(got[:, 0], x.sum(1), rtol=1e-5)


def test_two_input_model_passes_the_other_input_through(rng):
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch_models import export_onnx

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, image, meta):
            return self.lin(image.mean(dim=(2, 3))) + meta

    net = TwoInputs().eval()
    data = export_onnx(net, (torch.randn(2, 4, 5, 5), torch.randn(2, 3)),
                       input_names=("image", "meta"))
    x = rng.standard_normal((5, 4, 5, 5)).astype(np.float32)
    meta = rng.standard_normal((1, 3)).astype(np.float32)
    model = Model(data, input_name="image")
    with torch.no_grad():
        ref = net(torch.from_numpy(x), torch.from_numpy(meta).expand(5, 3)).numpy()
    np.testing.assert_allclose(model.predict(x, batch_size=2, extra_inputs={"meta": meta}), ref, atol=1e-5)
    metas = rng.standard_normal((5, 3)).astype(np.float32)
    with torch.no_grad():
        ref2 = net(torch.from_numpy(x), torch.from_numpy(metas)).numpy()
    np.testing.assert_allclose(model.predict(x, batch_size=2, extra_inputs={"meta": metas}), ref2, atol=1e-5)
    with pytest.raises(ValueError, match="meta"):
        model.predict(x)
    with pytest.raises(ValueError, match="not an input"):
        Model(data, input_name="nope")


def test_gpu_without_cuda_is_a_clear_error(tiny_cnn):
    works, why = onnx_xai.cuda_status()
    if works:
        pytest.skip("CUDA works on this machine")
    with pytest.raises(DeviceError, match="device='gpu'.*(CUDA|cuda)"):
        Model(tiny_cnn[1], device="gpu")
    assert Model(tiny_cnn[1], device="auto").device == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        Model(tiny_cnn[1], device="tpu")


def test_wrong_shape_or_dtype_names_the_expected_shape(tiny_cnn):
    model = Model(tiny_cnn[1])
    with pytest.raises(ValueError, match=r"\(batch, 3, 16, 16\) float32.*\(1, 16, 16, 3\)"):
        model.predict(np.zeros((1, 16, 16, 3), np.float32))
    with pytest.raises(ValueError, match=r"x\[None\]"):
        model.predict(np.zeros((3, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, 3, 16, 16\) float32.*int64"):
        model.predict(np.zeros((1, 3, 16, 16), np.int64))
    with pytest.raises(ValueError, match="unknown output"):
        model.predict(np.zeros((1, 3, 16, 16), np.float32), outputs="nope")
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(np.zeros((1, 3, 16, 16), np.float32), batch_size=0)
    with pytest.raises(FileNotFoundError):
        Model("/nonexistent/model.onnx")
    with pytest.raises(TypeError, match="a model must be"):
        Model(42)
    # float64 is accepted and cast: same numbers as float32
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16))
    np.testing.assert_array_equal(model.predict(x), model.predict(x.astype(np.float32)))


def test_with_outputs_exposes_intermediate_tensors(tiny_cnn, rng):
    net, data = tiny_cnn
    model = Model(data)
    relu = next(n for n in model.proto.graph.node if n.op_type == "Relu")
    child = model.with_outputs([relu.name])
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    outs = child.predict(x, outputs=[relu.output[0], "y"])
    import torch
    with torch.no_grad():
        ref = net[1](net[0](torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(outs[relu.output[0]], ref, atol=1e-5)
    np.testing.assert_array_equal(outs["y"], model.predict(x))
    assert model.with_outputs([relu.name]) is child
    with pytest.raises(ValueError, match="closest names.*Relu"):
        model.with_outputs(["/Relu_99"])


def test_activations_match_scipy(rng):
    z = rng.standard_normal((4, 7)) * 20
    np.testing.assert_allclose(onnx_xai.softmax(z), scipy.special.softmax(z, axis=1), rtol=1e-12)
    np.testing.assert_allclose(onnx_xai.sigmoid(z), scipy.special.expit(z), rtol=1e-12)


def test_import_does_not_import_torch():
    code = ("import sys, onnx_xai, pkgutil, importlib\n"
            "for m in pkgutil.walk_packages(onnx_xai.__path__, 'onnx_xai.'):\n"
            "    importlib.import_module(m.name)\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
