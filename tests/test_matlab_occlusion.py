"""occlusion_sensitivity (MATLAB style): analytic answers on linear models, geometry, errors."""
from __future__ import annotations

import numpy as np
import pytest

from onnx_xai import Model, occlusion_sensitivity
from onnx_xai.matlab import imresize_matrix, mask_positions

torch = pytest.importorskip("torch")
from torch_models import export_onnx  # noqa: E402

C, H, W, K = 3, 10, 12, 4


@pytest.fixture(scope="module")
def linear():
    """logits = W · flatten(x) + b on NCHW inputs: (W (K, C, H, W), b, onnx bytes)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, C * H * W)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    lin = torch.nn.Linear(C * H * W, K)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    data = export_onnx(torch.nn.Sequential(torch.nn.Flatten(), lin), torch.randn(2, C, H, W))
    return w.reshape(K, C, H, W), b, Model(data)


def _expected(w, x_chw, value, rows, cols, channels):
    """Analytic score change: Σ over the masked pixels of W_c · (x − mask_value)."""
    diff = x_chw - np.asarray(value, np.float32).reshape(-1, 1, 1)
    return np.array([(w[c][:, rows, :][:, :, cols] * diff[:, rows, :][:, :, cols]).sum() for c in channels])


def _windows(size, m, s, clipping):
    """The documented geometry, written out by hand."""
    if clipping == "on":
        return [slice(max(c - m // 2, 0), min(c - m // 2 + m, size)) for c in range(0, size, s)]
    return [slice(a, a + m) for a in range(0, size - m + 1, s)]


@pytest.mark.parametrize("mask, stride, clipping, value", [
    (3, 2, "on", 0.0), (4, 3, "off", 0.5), ((2, 5), (3, 2), "on", (0.1, -0.2, 0.3)),
    ((5, 3), 4, "off", "auto"), (1, 1, "on", -1.0),
])
def test_linear_model_score_change_is_analytic(linear, mask, stride, clipping, value):
    w, _, model = linear
    x = np.random.default_rng(1).random((H, W, C), dtype=np.float32)  # MATLAB layout
    channels = [2, 0, 3]
    got = occlusion_sensitivity(model, x, channels, mask_size=mask, stride=stride, mask_value=value,
                                mask_clipping=clipping, output_upsampling="none", verbose=False)
    m = (mask, mask) if np.ndim(mask) == 0 else mask
    s = (stride, stride) if np.ndim(stride) == 0 else stride
    x_chw = x.transpose(2, 0, 1)
    v = x_chw.reshape(C, -1).mean(1) if value == "auto" else np.broadcast_to(value, (C,))
    rows, cols = _windows(H, m[0], s[0], clipping), _windows(W, m[1], s[1], clipping)
    assert got.shape == (len(rows), len(cols), len(channels))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            np.testing.assert_allclose(got[i, j], _expected(w, x_chw, v, r, c, channels), rtol=1e-4, atol=1e-4)


def test_scalar_channel_gives_a_2d_map_and_layouts_agree(linear):
    w, _, model = linear
    x = np.random.default_rng(2).random((H, W, C), dtype=np.float32)
    hwc = occlusion_sensitivity(model, x, 1, output_upsampling="none", verbose=False)
    chw = occlusion_sensitivity(model, x.transpose(2, 0, 1), 1, output_upsampling="none", verbose=False)
    assert hwc.ndim == 2
    np.testing.assert_array_equal(hwc, chw)
    full = occlusion_sensitivity(model, x, [1], output_upsampling="none", verbose=False)
    np.testing.assert_array_equal(full[..., 0], hwc)


def test_integer_images_convert_by_value(linear):
    _, _, model = linear
    x = np.random.default_rng(3).integers(0, 255, (H, W, C)).astype(np.uint8)
    a = occlusion_sensitivity(model, x, 0, output_upsampling="none", verbose=False)
    b = occlusion_sensitivity(model, x.astype(np.float32), 0, output_upsampling="none", verbose=False)
    np.testing.assert_array_equal(a, b)


def test_grid_geometry_on_a_hand_computable_case():
    # 5 pixels, mask 3, stride 2. "on": centres 0, 2, 4 → rows [0,2) [1,4) [3,5); "off": [0,3) [2,5).
    lo, hi, grid = mask_positions((5,), (3,), (2,), "on")
    assert grid == (3,) and lo[:, 0].tolist() == [0, 1, 3] and hi[:, 0].tolist() == [2, 4, 5]
    lo, hi, grid = mask_positions((5,), (3,), (2,), "off")
    assert grid == (2,) and lo[:, 0].tolist() == [0, 2] and hi[:, 0].tolist() == [3, 5]
    lo, hi, grid = mask_positions((4, 6), (2, 3), (2, 3), "off")
    assert grid == (2, 2) and lo.tolist() == [[0, 0], [0, 3], [2, 0], [2, 3]]


def test_upsampling_follows_imresize():
    # MATLAB: imresize([1 2 3 4], [1 8]) (bicubic, a = -0.5, mirrored borders), by hand:
    # the first output sits at u = 0.75 (1-based); Keys weights -0.0234375, 0.2265625, 0.8671875,
    # -0.0703125 on samples 2 (mirror of index -1), 1, 1 (mirror of 0), 2 → 0.90625.
    got = imresize_matrix(4, 8, "bicubic") @ np.array([1.0, 2, 3, 4])
    np.testing.assert_allclose(got, [0.90625, 1.1796875, 1.7265625, 2.25, 2.75, 3.2734375, 3.8203125, 4.09375])
    np.testing.assert_array_equal(imresize_matrix(3, 7, "nearest") @ np.array([1.0, 2, 3]), [1, 1, 2, 2, 2, 3, 3])
    np.testing.assert_allclose(imresize_matrix(5, 13, "bicubic").sum(1), 1.0)


def test_upsampled_map_has_the_input_size(linear):
    _, _, model = linear
    x = np.random.default_rng(4).random((H, W, C), dtype=np.float32)
    grid = occlusion_sensitivity(model, x, [0, 1], stride=3, output_upsampling="none", verbose=False)
    for method in ("bicubic", "nearest"):
        up = occlusion_sensitivity(model, x, [0, 1], stride=3, output_upsampling=method, verbose=False)
        assert up.shape == (H, W, 2)
        rows, cols = imresize_matrix(grid.shape[0], H, method), imresize_matrix(grid.shape[1], W, method)
        np.testing.assert_allclose(up[..., 1], rows @ grid[..., 1] @ cols.T, rtol=1e-4, atol=1e-5)


def test_regression_spatial_output_and_intermediate_layer():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, C)).astype(np.float32)
    conv = torch.nn.Conv2d(C, 2, 1, bias=False)  # a segmentation-like (B, 2, H, W) output
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(a[:, :, None, None]))
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * H * W, 1))  # regression
    net = torch.nn.Sequential(conv, torch.nn.ReLU(), head)
    data = export_onnx(net, torch.randn(2, C, H, W))
    model = Model(data)
    x = rng.random((H, W, C), dtype=np.float32)
    reg = occlusion_sensitivity(model, x, 0, mask_size=3, stride=3, output_upsampling="none", verbose=False)
    with torch.no_grad():
        base = net(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).item()
        occluded = x.transpose(2, 0, 1)[None].copy()
        occluded[..., 0:2, 2:5] = x.transpose(2, 0, 1).reshape(C, -1).mean(1)[:, None, None]  # position (0, 1)
        expected = base - net(torch.from_numpy(occluded)).item()
    assert reg.shape == (4, 4)
    np.testing.assert_allclose(reg[0, 1], expected, rtol=1e-4, atol=1e-5)
    conv_out = next(n.output[0] for n in model.proto.graph.node if n.op_type == "Conv")
    seg = occlusion_sensitivity(model, x, [1, 0], mask_size=3, stride=3, mask_value=0.0,
                                output_upsampling="none", output_name=conv_out, verbose=False)
    x_chw = x.transpose(2, 0, 1)
    for i, r in enumerate(_windows(H, 3, 3, "on")):
        for j, c in enumerate(_windows(W, 3, 3, "on")):
            drop = np.einsum("kc,chw->k", a, x_chw[:, r, c])  # Σ over the masked pixels, 1x1 conv
            np.testing.assert_allclose(seg[i, j], drop[[1, 0]], rtol=1e-4, atol=1e-4)


def test_sequence_data_masks_along_time_only():
    rng = np.random.default_rng(6)
    T, D = 20, 5
    w = rng.standard_normal((3, T * D)).astype(np.float32)
    lin = torch.nn.Linear(T * D, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    model = Model(export_onnx(torch.nn.Sequential(torch.nn.Flatten(), lin), torch.randn(2, T, D)))
    x = rng.standard_normal((T, D)).astype(np.float32)  # (T, C) word-embedding style
    got = occlusion_sensitivity(model, x, 2, mask_size=4, stride=2, mask_value=0.0, mask_clipping="off",
                                output_upsampling="none", verbose=False)
    wt = w[2].reshape(T, D)
    expected = [(wt[a:a + 4] * x[a:a + 4]).sum() for a in range(0, T - 4 + 1, 2)]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_errors_are_clear(linear):
    _, _, model = linear
    x = np.zeros((H, W, C), np.float32)
    with pytest.raises(ValueError, match="out of range.*4 channels"):
        occlusion_sensitivity(model, x, 4, verbose=False)
    with pytest.raises(ValueError, match="does not match the network input"):
        occlusion_sensitivity(model, np.zeros((H, W, 2), np.float32), 0, verbose=False)
    with pytest.raises(ValueError, match="larger than the input"):
        occlusion_sensitivity(model, x, 0, mask_size=11, verbose=False)
    with pytest.raises(ValueError, match="stride"):
        occlusion_sensitivity(model, x, 0, stride=0, verbose=False)
    with pytest.raises(ValueError, match="closest names"):
        occlusion_sensitivity(model, x, 0, output_name="/Gemm_typo", verbose=False)
    with pytest.raises(ValueError, match="mask_value has 2 values"):
        occlusion_sensitivity(model, x, 0, mask_value=(1.0, 2.0), verbose=False)
    with pytest.raises(ValueError, match="mask_clipping"):
        occlusion_sensitivity(model, x, 0, mask_clipping="maybe", verbose=False)


def test_cat_photo_positive_on_the_cat():
    from onnx_xai import assets
    from onnx_xai.preprocess import ImageSpec, read_image

    path = assets.efficientnet_lite0()
    x = ImageSpec.for_model(path).to_input(read_image(next(p for p in assets.example_images() if p.stem == "chelsea")))
    model = Model(path, threads=2)
    score = occlusion_sensitivity(model, x[0].transpose(1, 2, 0), 285, activation="softmax", verbose=False)
    assert score.shape == (224, 224)
    row, col = np.unravel_index(np.argmax(score), score.shape)
    assert 50 <= row < 190 and 40 <= col < 175, (row, col)  # hand-drawn box: the cat's eyes and nose
    assert score.max() > 0
    # activation="softmax" equals scoring a Softmax node appended to the graph
    import onnx
    proto = onnx.load(str(path))
    proto.graph.node.append(onnx.helper.make_node("Softmax", ["logits"], ["prob"], axis=1))
    grid = dict(output_upsampling="none", verbose=False)
    in_graph = occlusion_sensitivity(Model(proto, threads=2), x[0].transpose(1, 2, 0), [285, 281],
                                     output_name="prob", **grid)
    probs = occlusion_sensitivity(model, x[0].transpose(1, 2, 0), [285, 281], activation="softmax", **grid)
    assert probs.shape == (11, 11, 2)  # auto: mask 45, stride 22 on 224 → 11 centres per axis
    np.testing.assert_allclose(probs, in_graph, atol=2e-6)
