"""onnx_xai.adapters.pytorch_grad_cam against pytorch-grad-cam itself, on the same weights.

pytorch-grad-cam (``grad-cam`` on PyPI) needs torchvision, which does not import beside the
test venv's torch 2.13: CI runs this file in its own venv (``.ci/run``: ``.ci-venv-gradcam``
with torch 2.14.1, torchvision 0.29.1, grad-cam). Elsewhere it is skipped.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torchvision")
pgc = pytest.importorskip("pytorch_grad_cam")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from pytorch_grad_cam.utils.image import preprocess_image as ref_preprocess  # noqa: E402
from pytorch_grad_cam.utils.image import show_cam_on_image as ref_show  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as RefTarget  # noqa: E402

from torch_models import SmallResNet, export_onnx, randomize_bn  # noqa: E402
from onnx_xai.adapters import pytorch_grad_cam as ours  # noqa: E402
from onnx_xai.targets import ClassTarget  # noqa: E402

TOL = 1e-4  # maps are scaled to [0, 1]: absolute = relative to the hottest point
METHODS = ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "EigenCAM",
           "EigenGradCAM", "GradCAMElementWise", "ScoreCAM"]


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = randomize_bn(SmallResNet(n_classes=5))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    return net, export_onnx(net, torch.from_numpy(x)), x


def reference(name, net, layers, x, targets, **kwargs):
    with getattr(pgc, name)(model=net, target_layers=layers) as cam:
        return cam(input_tensor=torch.from_numpy(x), targets=targets, **kwargs)


@pytest.mark.parametrize("name", METHODS)
def test_methods_match_pytorch_grad_cam(resnet, name):
    net, onnx_bytes, x = resnet
    ref = reference(name, net, [net.layer4[-1]], x, [RefTarget(1), RefTarget(3)])
    with getattr(ours, name)(model=onnx_bytes, target_layers=["layer4"]) as cam:
        got = cam(input_tensor=x, targets=[ours.ClassifierOutputTarget(1), ours.ClassifierOutputTarget(3)])
    assert got.shape == ref.shape == (2, 64, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=TOL, err_msg=name)
    assert np.isclose(got.reshape(2, -1).max(1), 1.0, atol=1e-5).all()


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "ScoreCAM"])
def test_argmax_targets_and_several_layers(resnet, name):
    net, onnx_bytes, x = resnet
    ref = reference(name, net, [net.layer3[-1], net.layer4[-1]], x, None)
    cam = getattr(ours, name)(onnx_bytes, ["layer3", "layer4"])
    np.testing.assert_allclose(cam(x, None), ref, atol=TOL)
    logits = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(cam.outputs, logits, atol=1e-4)


@pytest.mark.parametrize("name", ["GradCAM", "LayerCAM", "HiResCAM", "XGradCAM"])
def test_eigen_smooth(resnet, name):
    net, onnx_bytes, x = resnet
    ref = reference(name, net, [net.layer4[-1]], x, [RefTarget(2)] * 2, eigen_smooth=True)
    got = getattr(ours, name)(onnx_bytes, ["layer4"])(x, [ours.ClassifierOutputTarget(2)] * 2,
                                                      eigen_smooth=True)
    np.testing.assert_allclose(got, ref, atol=TOL)


def test_aug_smooth(resnet):
    net, onnx_bytes, x = resnet
    ref = reference("GradCAM", net, [net.layer4[-1]], x, [RefTarget(0), RefTarget(4)], aug_smooth=True)
    got = ours.GradCAM(onnx_bytes, ["layer4"])(x, [ours.ClassifierOutputTarget(0),
                                                  ours.ClassifierOutputTarget(4)], aug_smooth=True)
    np.testing.assert_allclose(got, ref, atol=TOL)


@pytest.mark.parametrize("name", ["GradCAM", "ScoreCAM"])
def test_softmax_target(resnet, name):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget as RefSoftmax
    net, onnx_bytes, x = resnet
    ref = reference(name, net, [net.layer4[-1]], x, [RefSoftmax(1), RefSoftmax(3)])
    got = getattr(ours, name)(onnx_bytes, ["layer4"])(
        x, [ours.ClassifierOutputSoftmaxTarget(1), ours.ClassifierOutputSoftmaxTarget(3)])
    np.testing.assert_allclose(got, ref, atol=TOL)


def test_targets_in_every_spelling(resnet):
    net, onnx_bytes, x = resnet
    cam = ours.GradCAM(onnx_bytes, "layer4")
    want = cam(x, [ours.ClassifierOutputTarget(1), ours.ClassifierOutputTarget(3)])
    for targets in ([RefTarget(1), RefTarget(3)], [ClassTarget(index=1), ClassTarget(index=3)], [1, 3]):
        np.testing.assert_array_equal(cam(torch.from_numpy(x), targets), want)
    assert isinstance(ours.ClassifierOutputTarget(7), ClassTarget)
    assert ours.ClassifierOutputTarget(7).category == 7
    assert dataclasses.replace(ours.ClassifierOutputTarget(7), index=2).index == 2
    with pytest.raises(ValueError, match="one target per image"):
        cam(x, [ours.ClassifierOutputTarget(1)])
    with pytest.raises(NotImplementedError, match="one output and activation"):
        cam(x, [ClassTarget(index=1), ClassTarget(index=1, activation="softmax")])
    with pytest.raises(NotImplementedError, match="reshape_transform"):
        ours.GradCAM(onnx_bytes, ["layer4"], reshape_transform=lambda t: t)
    with pytest.raises(ValueError, match="layer"):
        ours.GradCAM(onnx_bytes, ["no_such_layer"])


def test_3d_gradcam():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 6, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    x = np.random.default_rng(1).standard_normal((2, 1, 12, 10, 8)).astype(np.float32)
    onnx_bytes = export_onnx(net, torch.from_numpy(x))
    ref = reference("GradCAM", net, [net[3]], x, [RefTarget(0), RefTarget(2)])
    got = ours.GradCAM(onnx_bytes, ["3"])(x, [0, 2])
    assert got.shape == ref.shape == (2, 12, 10, 8)
    np.testing.assert_allclose(got, ref, atol=TOL)


def test_show_cam_on_image_and_preprocess():
    rng = np.random.default_rng(2)
    img = rng.random((20, 24, 3)).astype(np.float32)
    mask = rng.random((20, 24)).astype(np.float32)
    for use_rgb in (False, True):
        for weight in (0.5, 0.3):
            np.testing.assert_array_equal(ours.show_cam_on_image(img, mask, use_rgb=use_rgb, image_weight=weight),
                                          ref_show(img, mask, use_rgb=use_rgb, image_weight=weight))
    with pytest.raises(ValueError, match=r"range \[0, 1\]"):
        ours.show_cam_on_image(img * 255, mask)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    np.testing.assert_allclose(ours.preprocess_image(img, mean, std), ref_preprocess(img, mean, std).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_library_gradcam_elementwise_class_matches_pytorch_grad_cam(resnet):
    """onnx_xai.GradCAMElementWise (added as one registered class) against pytorch-grad-cam's own:
    our default post-processing (linear upsampling, min-max) gives its scaled maps."""
    import onnx_xai

    net, onnx_bytes, x = resnet
    ref = reference("GradCAMElementWise", net, [net.layer4[-1]], x, [RefTarget(1), RefTarget(3)])
    got = onnx_xai.GradCAMElementWise(onnx_bytes, "layer4")(x, [1, 3])[:, 0]
    np.testing.assert_allclose(got, ref, atol=TOL)
