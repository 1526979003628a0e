"""Call styles from other libraries, the small ones: MONAI's ``nn_module=`` keyword and ONNX
Runtime's ``providers=`` / ``sess_options=`` / ``device="cuda"`` on ``Model``."""
from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

import onnx_xai
from onnx_xai import CAM, DeviceError, GradCAM, GradCAMpp, Model, OcclusionSensitivity
from onnx_xai import graph
from onnx_xai.runtime import copy_session_options


@pytest.fixture(scope="module")
def resnet():
    """(torch module, ONNX bytes, x) of a small ResNet; skips without torch."""
    torch = pytest.importorskip("torch")
    from torch_models import SmallResNet, export_onnx, randomize_bn

    torch.manual_seed(0)
    net = randomize_bn(SmallResNet(n_classes=5))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 30)).astype(np.float32)
    return net, export_onnx(net, torch.from_numpy(x)), x


@pytest.fixture(scope="module")
def monai_visualize():
    return pytest.importorskip("monai.visualize")


@pytest.fixture(scope="module")
def shipped():
    """(ONNX path, x, a layer tensor) of the shipped EfficientNet-Lite0 (no torch needed)."""
    path = onnx_xai.assets.efficientnet_lite0()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return path, x, graph.resolve_layer(Model(path).proto, "_swish_1")


# ---------------------------------------------------------------------------- MONAI
@pytest.mark.parametrize("name", ["GradCAM", "GradCAMpp"])
def test_monai_cams_take_nn_module(resnet, monai_visualize, name):
    import torch
    net, onnx_bytes, x = resnet
    ref = getattr(monai_visualize, name)(nn_module=net, target_layers="layer4")(torch.from_numpy(x), class_idx=2)
    got = getattr(onnx_xai, name)(nn_module=onnx_bytes, target_layers="layer4")(x, class_idx=2)
    np.testing.assert_allclose(got, ref.detach().numpy(), atol=1e-4)


def test_monai_cam_and_occlusion_take_nn_module(resnet, monai_visualize):
    import torch
    net, onnx_bytes, x = resnet
    ref = monai_visualize.CAM(nn_module=net, target_layers="layer4", fc_layers="fc")(torch.from_numpy(x))
    got = CAM(nn_module=onnx_bytes, target_layers="layer4", fc_layers="fc")(x)
    np.testing.assert_allclose(got, ref.detach().numpy(), atol=1e-4)
    kwargs = dict(mask_size=8, n_batch=16, overlap=0.5, verbose=False)
    ref_map, ref_cls = monai_visualize.OcclusionSensitivity(nn_module=net, **kwargs)(torch.from_numpy(x[:1]))
    got_map, got_cls = OcclusionSensitivity(nn_module=onnx_bytes, **kwargs)(x[:1])
    np.testing.assert_allclose(got_map, ref_map.detach().numpy(), atol=1e-5)
    np.testing.assert_array_equal(got_cls, ref_cls.numpy())


def test_nn_module_errors(shipped):
    onnx_bytes = shipped[0]
    with pytest.raises(TypeError, match="twice"):
        GradCAM(onnx_bytes, "_swish_1", nn_module=onnx_bytes)
    with pytest.raises(TypeError, match="needs a model"):
        GradCAMpp(target_layers="_swish_1")
    with pytest.raises(TypeError, match="twice"):
        OcclusionSensitivity(onnx_bytes, nn_module=onnx_bytes)
    # MONAI requires target_layers; here None is the automatic layer (onnx_xai.autolayer)
    x = shipped[1]
    auto = GradCAM(nn_module=onnx_bytes)(x, class_idx=3)
    layer = onnx_xai.autolayer.auto_layer(onnx_bytes).tensor
    np.testing.assert_allclose(auto, GradCAM(onnx_bytes, layer)(x, class_idx=3), rtol=1e-6)


# ---------------------------------------------------------------------------- ONNX Runtime
def test_providers_decide_the_device(shipped, caplog):
    onnx_bytes, x, layer = shipped
    cpu = Model(onnx_bytes, providers=["CPUExecutionProvider"])
    assert cpu.device == "cpu" and cpu.session.get_providers() == ["CPUExecutionProvider"]
    derived = cpu.with_outputs([layer])
    assert derived.session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_allclose(derived.predict(x), cpu.predict(x), rtol=1e-6)
    works, _ = onnx_xai.cuda_status()
    with caplog.at_level(logging.WARNING, logger="onnx_xai"):
        gpu = Model(onnx_bytes, providers=[("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"])
    if works:
        assert gpu.device == "gpu" and gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    else:  # degrades to the CPU, saying why
        assert gpu.device == "cpu" and gpu.session.get_providers() == ["CPUExecutionProvider"]
        assert "ask for the GPU" in caplog.text and "Running on the CPU" in caplog.text
        with pytest.raises(DeviceError, match="ask for the GPU"):
            Model(onnx_bytes, providers=["CUDAExecutionProvider"], device="gpu")
    with pytest.raises(ValueError, match="contradicts"):
        Model(onnx_bytes, providers=["CPUExecutionProvider"], device="cuda")
    with pytest.raises(ValueError, match="not in this onnxruntime build"):
        Model(onnx_bytes, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="non-empty list"):
        Model(onnx_bytes, providers="CPUExecutionProvider")
    session = ort.InferenceSession(str(onnx_bytes), providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="brings its own"):
        Model(session, providers=["CPUExecutionProvider"])


def test_device_cuda_is_gpu(shipped):
    onnx_bytes = shipped[0]
    if onnx_xai.cuda_status()[0]:
        assert Model(onnx_bytes, device="cuda").device == "gpu"
    else:
        with pytest.raises(DeviceError, match="device='gpu' requested"):
            Model(onnx_bytes, device="cuda")
    with pytest.raises(ValueError, match="alias of 'gpu'"):
        Model(onnx_bytes, device="tpu")


def test_sess_options_are_the_base_of_every_session(shipped, tmp_path):
    onnx_bytes, x, layer = shipped
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = 2
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    model = Model(onnx_bytes, sess_options=opts)
    assert model.threads == 2  # threads taken from the options when not given
    got = model.session.get_session_options()
    assert got.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert got.enable_mem_pattern is False and got.intra_op_num_threads == 2
    assert got.get_session_config_entry("session.set_denormal_as_zero") == "1"
    assert (tmp_path / "optimized.onnx").is_file()
    derived = model.with_outputs([layer]).session.get_session_options()
    assert derived.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert derived.optimized_model_filepath == ""  # a rewritten graph never overwrites the user's file
    assert opts.intra_op_num_threads == 2 and opts.log_severity_level == -1  # the user's object untouched
    one = Model(onnx_bytes, sess_options=opts, threads=1)  # threads still applies
    assert one.threads == 1 and one.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_allclose(one.predict(x), Model(onnx_bytes).predict(x), rtol=1e-4, atol=1e-4)
    assert copy_session_options(None).log_severity_level == 3
    with pytest.raises(TypeError, match="SessionOptions"):
        Model(onnx_bytes, sess_options={"intra_op_num_threads": 2})


def test_adapters_import_without_torch_or_matplotlib():
    import subprocess
    import sys
    code = ("import sys, onnx_xai.adapters.captum, onnx_xai.adapters.pytorch_grad_cam, onnx_xai.adapters.monai; "
            "bad = [m for m in ('torch', 'matplotlib', 'captum', 'monai', 'pytorch_grad_cam') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
