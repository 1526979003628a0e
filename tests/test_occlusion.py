"""OcclusionSensitivity against MONAI 1.6 on the same weights, and on hand-computable cases."""
from __future__ import annotations

import numpy as np
import pytest

import onnx_xai
from onnx_xai import Model, OcclusionSensitivity

torch = pytest.importorskip("torch")
from torch_models import export_onnx  # noqa: E402

monai_vis = pytest.importorskip("monai.visualize")
monai_nets = pytest.importorskip("monai.networks.nets")


def _softmax_t(o):
    return o.softmax(1)


def _softmax_np(o):
    return onnx_xai.softmax(o, axis=1)


@pytest.fixture(scope="module")
def densenet2d():
    torch.manual_seed(0)
    net = monai_nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).eval()
    return net, Model(export_onnx(net, torch.randn(2, 1, 48, 64)), threads=2)


@pytest.fixture(scope="module")
def densenet3d():
    torch.manual_seed(1)
    net = monai_nets.DenseNet(spatial_dims=3, in_channels=2, out_channels=3, init_features=2,
                              growth_rate=2, block_config=(6,)).eval()
    return net, Model(export_onnx(net, torch.randn(2, 2, 6, 6, 6)), threads=2)


@pytest.fixture(scope="module")
def densenet3d_large(densenet3d):
    net = densenet3d[0]
    return net, Model(export_onnx(net, torch.randn(2, 2, 14, 10, 12)), threads=2)


def _monai(net, x, b_box=None, **kwargs):
    occ = monai_vis.OcclusionSensitivity(net, verbose=False, **kwargs)
    with torch.no_grad():
        m, c = occ(torch.from_numpy(x), b_box=b_box)
    return m.numpy(), c.numpy()


@pytest.mark.parametrize("mode, overlap, b_box", [
    ("gaussian", 0.6, None), ("gaussian", 0.25, [2, 40, 1, 62]), ("gaussian", 0.0, None),
    ("mean_img", 0.6, [2, 40, 1, 62]), ("mean_img", 0.0, None),
    (0.5, 0.25, None), (-1.0, 0.6, [-1, -1, 10, 50]), ("callable", 0.25, [5, 30, -1, -1]),
])
def test_matches_monai_densenet121_2d(densenet2d, mode, overlap, b_box):
    net, model = densenet2d
    x = np.random.default_rng(0).random((1, 1, 48, 64), dtype=np.float32)
    theirs_mode, ours_mode = mode, mode
    if mode == "callable":  # MONAI 1.6's callable mode raises; compare with its equal float mode
        theirs_mode, ours_mode = 0.5, (lambda img, patch: np.full_like(patch, 0.5))
    ref, ref_cls = _monai(net, x, b_box, mask_size=16, n_batch=10, mode=theirs_mode, overlap=overlap,
                          activate=_softmax_t)
    occ, cls = OcclusionSensitivity(model, mask_size=16, n_batch=10, verbose=False, mode=ours_mode,
                                    overlap=overlap, activate=_softmax_np)(x, b_box=b_box)
    assert occ.shape == ref.shape and cls.shape == ref_cls.shape
    np.testing.assert_allclose(occ, ref, atol=1e-4, rtol=0)
    assert np.mean(cls == ref_cls) > 0.999


@pytest.mark.parametrize("activate", [False, True])
def test_matches_monai_raw_and_default_activation_3d(densenet3d, activate):
    # 2 input channels and 3 outputs: MONAI's and our activate=True both mean softmax here.
    net, model = densenet3d
    x = np.random.default_rng(1).random((1, 2, 6, 6, 6), dtype=np.float32)
    ref, _ = _monai(net, x, [1, 3, -1, -1, -1, -1], n_batch=10, activate=activate)
    occ, _ = OcclusionSensitivity(model, n_batch=10, verbose=False, activate=activate)(x, b_box=[1, 3, -1, -1, -1, -1])
    assert occ.shape == ref.shape == (1, 3, 2, 6, 6)
    np.testing.assert_allclose(occ, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode, overlap, b_box", [
    ("gaussian", 0.6, None), ("mean_img", 0.25, [2, 12, -1, -1, 3, 9]), (0.0, 0.0, None),
])
def test_matches_monai_larger_volume(densenet3d_large, mode, overlap, b_box):
    net, model = densenet3d_large
    x = np.random.default_rng(2).random((1, 2, 14, 10, 12), dtype=np.float32)
    ref, ref_cls = _monai(net, x, b_box, mask_size=(6, 4, 5), n_batch=12, mode=mode, overlap=overlap,
                          activate=_softmax_t)
    occ, cls = OcclusionSensitivity(model, mask_size=(6, 4, 5), n_batch=12, verbose=False, mode=mode,
                                    overlap=overlap, activate=_softmax_np)(x, b_box=b_box)
    assert occ.shape == ref.shape
    np.testing.assert_allclose(occ, ref, atol=1e-4, rtol=0)
    assert np.mean(cls == ref_cls) > 0.999


def test_default_activation_follows_the_documentation(densenet2d):
    # One input channel, three classes: MONAI's code would use sigmoid, its docs softmax.
    net, model = densenet2d
    x = np.random.default_rng(3).random((1, 1, 48, 64), dtype=np.float32)
    ref, _ = _monai(net, x, mask_size=16, overlap=0.25, activate=_softmax_t)
    occ, _ = OcclusionSensitivity(model, mask_size=16, overlap=0.25, verbose=False)(x)
    np.testing.assert_allclose(occ, ref, atol=1e-4, rtol=0)


def _linear_model(w, b):
    """logits = W · flatten(x) + b as an ONNX model: x (B, C, H, W) → (B, K)."""
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    net = torch.nn.Sequential(torch.nn.Flatten(), lin)
    return export_onnx(net, torch.randn(2, 2, 8, 12))


def test_mean_patch_replaces_the_patch_by_its_mean():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((3, 2 * 8 * 12)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    x = rng.random((1, 2, 8, 12), dtype=np.float32)
    occ, _ = OcclusionSensitivity(_linear_model(w, b), mask_size=4, overlap=0.0, mode="mean_patch",
                                  activate=False, verbose=False)(x)
    # overlap 0 and a mask dividing the image: windows tile it, each painted with its own score
    for i in range(0, 8, 4):
        for j in range(0, 12, 4):
            occluded = x.copy()
            occluded[0, :, i:i + 4, j:j + 4] = x[0, :, i:i + 4, j:j + 4].mean()
            expected = w @ occluded.ravel() + b
            np.testing.assert_allclose(occ[0, :, i:i + 4, j:j + 4],
                                       np.broadcast_to(expected[:, None, None], (3, 4, 4)), rtol=1e-5, atol=1e-5)


def test_constant_mode_on_a_linear_model_is_analytic():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2 * 8 * 12)).astype(np.float32)
    b = np.zeros(3, np.float32)
    x = rng.random((1, 2, 8, 12), dtype=np.float32)
    occ, _ = OcclusionSensitivity(_linear_model(w, b), mask_size=(4, 6), overlap=0.0, mode=0.25,
                                  activate=False, verbose=False)(x)
    wx = w.reshape(3, 2, 8, 12)
    change = (wx * (x[0] - 0.25))[:, :, 4:8, 6:12].sum(axis=(1, 2, 3))  # the window's analytic drop
    np.testing.assert_allclose(occ[0, :, 5, 7], w @ x.ravel() - change, rtol=1e-5, atol=1e-5)


def test_errors_are_clear(densenet2d):
    _, model = densenet2d
    x = np.zeros((1, 1, 48, 64), np.float32)
    with pytest.raises(ValueError, match="batch of 1"):
        OcclusionSensitivity(model, verbose=False)(np.zeros((2, 1, 48, 64), np.float32))
    with pytest.raises(ValueError, match="larger than the image"):
        OcclusionSensitivity(model, mask_size=50, verbose=False)(x)
    with pytest.raises(ValueError, match="mode"):
        OcclusionSensitivity(model, mode="blur")
    with pytest.raises(ValueError, match="overlap"):
        OcclusionSensitivity(model, overlap=1.0)
    with pytest.raises(ValueError, match="b_box must hold 4"):
        OcclusionSensitivity(model, verbose=False)(x, b_box=[0, 10])
    with pytest.raises(ValueError, match="b_box axis 1"):
        OcclusionSensitivity(model, verbose=False)(x, b_box=[0, 10, 5, 80])
    with pytest.raises(ValueError, match="mask_size"):
        OcclusionSensitivity(model, mask_size=(4, 4, 4), verbose=False)(x)
    with pytest.raises(ValueError, match="expects shape"):
        OcclusionSensitivity(model, verbose=False)(np.zeros((1, 3, 48, 64), np.float32))


def test_cat_region_drives_the_cat_class():
    from onnx_xai import assets
    from onnx_xai.preprocess import ImageSpec, read_image

    path = assets.efficientnet_lite0()
    x = ImageSpec.for_model(path).to_input(read_image(next(p for p in assets.example_images() if p.stem == "chelsea")))
    occ, _ = OcclusionSensitivity(Model(path, threads=2), verbose=False)(x)
    cat = occ[0, 285]
    row, col = np.unravel_index(np.argmin(cat), cat.shape)
    # hand-drawn box around the cat's eyes and nose in the 224 x 224 input
    assert 50 <= row < 190 and 40 <= col < 175, (row, col)
    assert cat.min() < cat.mean() - 0.03  # occluding it clearly lowers the probability


def test_argmax_kernel_matches_numpy_ties_and_nans():
    from onnx_xai.kernels.occlusion import argmax_first_axis

    rng = np.random.default_rng(3)
    maps = rng.integers(0, 4, size=(7, 5000)).astype(np.float32)  # many ties
    maps[3, 10] = np.nan
    maps[5, 10] = np.nan
    maps[2, 4999] = np.nan
    np.testing.assert_array_equal(argmax_first_axis(maps), maps.argmax(axis=0))
