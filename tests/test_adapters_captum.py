"""onnx_xai.adapters.captum against Captum itself, on the same weights (models exported here)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

captum_attr = pytest.importorskip("captum.attr")
from captum.attr import visualization as ref_viz  # noqa: E402
from captum.attr._core import noise_tunnel as ref_nt_module  # noqa: E402

from torch_models import SmallResNet, export_onnx, randomize_bn  # noqa: E402
from onnx_xai.adapters import captum as ours  # noqa: E402
from onnx_xai.targets import ClassTarget  # noqa: E402


def close(got, ref, rtol=1e-4):
    """Same numbers: each value within ``rtol`` of the reference's largest magnitude."""
    ref = ref.detach().numpy() if hasattr(ref, "detach") else np.asarray(ref)
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = max(float(np.abs(ref).max()), 1e-12)
    err = float(np.abs(got - ref).max()) / scale
    assert err <= rtol, f"max difference {err:.3g} of max |ref| {scale:.3g}"
    return err


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = randomize_bn(SmallResNet(n_classes=5))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 30)).astype(np.float32)
    return net, export_onnx(net, torch.from_numpy(x)), x


@pytest.fixture(scope="module")
def small():
    """A smooth (tanh) CNN: gradients and occlusion differences without ReLU kinks."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 6, 3, stride=2, padding=1),
                        nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 17, 15)).astype(np.float32)
    return net, export_onnx(net, torch.from_numpy(x)), x


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
@pytest.mark.parametrize("baselines", [None, 0.25, "tensor", "per-sample"])
def test_integrated_gradients(small, method, baselines):
    net, onnx_bytes, x = small
    rng = np.random.default_rng(4)
    b = {"tensor": rng.standard_normal((1,) + x.shape[1:]).astype(np.float32),
         "per-sample": rng.standard_normal(x.shape).astype(np.float32)}.get(baselines, baselines)
    tb = torch.from_numpy(b) if isinstance(b, np.ndarray) else b
    ref, ref_delta = captum_attr.IntegratedGradients(net).attribute(
        torch.from_numpy(x), baselines=tb, target=[1, 3], n_steps=12, method=method,
        internal_batch_size=7, return_convergence_delta=True)
    got, delta = ours.IntegratedGradients(onnx_bytes).attribute(
        x, baselines=b, target=[1, 3], n_steps=12, method=method, internal_batch_size=7,
        return_convergence_delta=True)
    close(got, ref)
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), atol=1e-4)


def test_saliency_and_input_x_gradient(resnet):
    net, onnx_bytes, x = resnet
    tx = torch.from_numpy(x).requires_grad_()
    for kwargs in ({}, {"abs": False}):
        close(ours.Saliency(onnx_bytes).attribute(x, target=2, **kwargs),
              captum_attr.Saliency(net).attribute(tx, target=2, **kwargs))
    close(ours.InputXGradient(onnx_bytes).attribute(torch.from_numpy(x), target=torch.tensor([4, 0])),
          captum_attr.InputXGradient(net).attribute(tx, target=torch.tensor([4, 0])))
    # target=None: each sample's top class (Captum needs a target for a (N, K) output)
    top = net(torch.from_numpy(x)).argmax(1)
    close(ours.Saliency(onnx_bytes).attribute(x), captum_attr.Saliency(net).attribute(tx, target=top))


def test_layer_grad_cam(resnet):
    net, onnx_bytes, x = resnet
    tx = torch.from_numpy(x)
    for kwargs in ({}, {"relu_attributions": True}, {"attr_dim_summation": False}):
        ref = captum_attr.LayerGradCam(net, net.layer4).attribute(tx, target=[0, 3], **kwargs)
        got = ours.LayerGradCam(onnx_bytes, "layer4").attribute(x, target=[0, 3], **kwargs)
        close(got, ref)
    assert got.shape[2:] == (2, 2)  # layer resolution (stride 16), not upsampled
    small = ref.detach()[:, :1]
    for mode in ("nearest", "bilinear"):
        close(ours.LayerAttribution.interpolate(small.numpy(), (32, 30), mode),
              captum_attr.LayerAttribution.interpolate(small, (32, 30), mode), rtol=1e-6)


# ---------------------------------------------------------------------------- occlusion
@pytest.mark.parametrize("window, strides, baselines", [
    ((3, 6, 6), (3, 4, 4), None),          # last windows cut at the border (17, 15 not multiples)
    ((3, 5, 4), 3, 0.5),
    ((1, 5, 5), (1, 3, 2), None),          # one channel at a time
    ((2, 4, 4), (1, 3, 3), "tensor"),      # windows over channels too, a baseline image
])
def test_occlusion(small, window, strides, baselines):
    net, onnx_bytes, x = small
    b = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32) if baselines == "tensor" else baselines
    tb = torch.from_numpy(b) if isinstance(b, np.ndarray) else b
    ref = captum_attr.Occlusion(net).attribute(torch.from_numpy(x), sliding_window_shapes=window,
                                               strides=strides, baselines=tb, target=[2, 1])
    got = ours.Occlusion(onnx_bytes).attribute(x, sliding_window_shapes=window, strides=strides,
                                               baselines=b, target=[2, 1])
    assert got.dtype == np.float32
    close(got, ref)


def test_occlusion_1d_and_3d():
    torch.manual_seed(6)
    mlp = nn.Sequential(nn.Linear(11, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = np.random.default_rng(6).standard_normal((3, 11)).astype(np.float32)
    ref = captum_attr.Occlusion(mlp).attribute(torch.from_numpy(x), sliding_window_shapes=(3,), strides=2, target=1)
    close(ours.Occlusion(export_onnx(mlp, torch.from_numpy(x))).attribute(
        x, sliding_window_shapes=(3,), strides=2, target=1), ref)
    conv = nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                         nn.Linear(3, 2)).eval()
    v = np.random.default_rng(7).standard_normal((1, 2, 7, 6, 5)).astype(np.float32)
    ref = captum_attr.Occlusion(conv).attribute(torch.from_numpy(v), sliding_window_shapes=(2, 3, 3, 2),
                                                strides=(2, 2, 2, 2), target=0)
    close(ours.Occlusion(export_onnx(conv, torch.from_numpy(v))).attribute(
        v, sliding_window_shapes=(2, 3, 3, 2), strides=(2, 2, 2, 2), target=0), ref)
    with pytest.raises(NotImplementedError, match="all channels"):
        ours.Occlusion(export_onnx(conv, torch.from_numpy(v))).attribute(v, sliding_window_shapes=(1, 3, 3, 2))


def test_occlusion_targets_and_errors(small):
    net, onnx_bytes, x = small
    occ = ours.Occlusion(onnx_bytes)
    want = occ.attribute(x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=[2, 2])
    np.testing.assert_array_equal(occ.attribute(x, (3, 4, 4), (3, 4, 4), target=ClassTarget(index=2)), want)
    # any onnx_xai target: the softmax probability of class 2
    prob = occ.attribute(x, (3, 4, 4), (3, 4, 4), target=ClassTarget(index=2, activation="softmax"))
    ref = captum_attr.Occlusion(lambda t: torch.softmax(net(t), 1)).attribute(
        torch.from_numpy(x), sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=2)
    close(prob, ref)
    with pytest.raises(ValueError, match="cannot be larger"):
        occ.attribute(x, (3, 4, 4), (3, 5, 5), target=0)
    with pytest.raises(ValueError, match="sliding_window_shapes must hold 3"):
        occ.attribute(x, (4, 4), target=0)
    with pytest.raises(NotImplementedError, match="tuple targets"):
        occ.attribute(x, (3, 4, 4), target=(0, 1))


def test_additional_forward_args():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 + 4, 3)

        def forward(self, x, side):
            return self.fc(torch.cat([torch.tanh(self.conv(x)).mean((2, 3)), side], 1))

    torch.manual_seed(8)
    net = TwoInputs().eval()
    rng = np.random.default_rng(8)
    x, side = rng.standard_normal((2, 2, 9, 8)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    onnx_bytes = export_onnx(net, (torch.from_numpy(x), torch.from_numpy(side)), input_names=("x", "side"))
    tx, ts = torch.from_numpy(x), torch.from_numpy(side)
    close(ours.Saliency(onnx_bytes).attribute(x, target=1, additional_forward_args=(side,)),
          captum_attr.Saliency(net).attribute(tx, target=1, additional_forward_args=(ts,)))
    close(ours.Occlusion(onnx_bytes).attribute(x, (2, 3, 3), (2, 2, 2), target=[0, 2], additional_forward_args=side),
          captum_attr.Occlusion(net).attribute(tx, (2, 3, 3), (2, 2, 2), target=[0, 2], additional_forward_args=ts))


# ---------------------------------------------------------------------------- noise tunnel
@pytest.fixture
def same_noise(monkeypatch):
    """Captum's NoiseTunnel fed NumPy's noise (as ours draws it with ``seed``)."""
    def install(seed, stdev, n, ns, shape):
        noise = np.random.default_rng(seed).standard_normal((n * ns,) + shape, dtype=np.float32) * np.float32(stdev)

        def add(input, stdev, nt_samples_partition):
            return input.repeat_interleave(nt_samples_partition, dim=0) + torch.from_numpy(noise)
        monkeypatch.setattr(ref_nt_module.NoiseTunnel, "_add_noise_to_input", staticmethod(add))
    return install


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_saliency(small, same_noise, nt_type):
    net, onnx_bytes, x = small
    same_noise(11, 0.3, 2, 6, x.shape[1:])
    ref = captum_attr.NoiseTunnel(captum_attr.Saliency(net)).attribute(
        torch.from_numpy(x), nt_type=nt_type, nt_samples=6, stdevs=0.3, target=[0, 3])
    got = ours.NoiseTunnel(ours.Saliency(onnx_bytes)).attribute(
        x, nt_type=nt_type, nt_samples=6, stdevs=0.3, target=[0, 3], seed=11)
    close(got, ref)


def test_noise_tunnel_integrated_gradients(small, same_noise):
    net, onnx_bytes, x = small
    b = np.random.default_rng(9).standard_normal(x.shape).astype(np.float32)
    same_noise(12, 0.2, 2, 3, x.shape[1:])
    ref, ref_delta = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(net)).attribute(
        torch.from_numpy(x), nt_samples=3, stdevs=0.2, target=1, baselines=torch.from_numpy(b),
        n_steps=8, return_convergence_delta=True)
    got, delta = ours.NoiseTunnel(ours.IntegratedGradients(onnx_bytes)).attribute(
        x, nt_samples=3, stdevs=0.2, target=1, baselines=b, n_steps=8, return_convergence_delta=True, seed=12)
    close(got, ref)
    np.testing.assert_allclose(delta, ref_delta.numpy(), atol=1e-4)


def test_softmax_targets_for_gradient_methods(small, same_noise):
    net, onnx_bytes, x = small
    prob = ClassTarget(index=[1, 2], activation="softmax")

    def soft(t):
        return torch.softmax(net(t), 1)
    tx = torch.from_numpy(x)
    close(ours.Saliency(onnx_bytes).attribute(x, target=prob, abs=False),
          captum_attr.Saliency(soft).attribute(tx, target=[1, 2], abs=False))
    close(ours.IntegratedGradients(onnx_bytes).attribute(x, target=prob, n_steps=10),
          captum_attr.IntegratedGradients(soft).attribute(tx, target=[1, 2], n_steps=10))
    same_noise(13, 0.1, 2, 4, x.shape[1:])
    close(ours.NoiseTunnel(ours.Saliency(onnx_bytes)).attribute(x, nt_samples=4, stdevs=0.1, target=prob, seed=13),
          captum_attr.NoiseTunnel(captum_attr.Saliency(soft)).attribute(tx, nt_samples=4, stdevs=0.1, target=[1, 2]))


# ---------------------------------------------------------------------------- visualization
@pytest.mark.parametrize("sign", ["all", "positive", "negative", "absolute_value"])
def test_visualize_image_attr(sign):
    matplotlib = pytest.importorskip("matplotlib")
    from captum.attr._utils.visualization import _initialize_cmap_and_vmin_vmax
    rng = np.random.default_rng(10)
    attr = rng.standard_normal((12, 10, 3)) * np.linspace(0.1, 3, 10)[None, :, None]
    image = rng.integers(0, 256, (12, 10, 3)).astype(np.uint8)
    norm = ours.visualize_image_attr(attr, sign=sign)
    np.testing.assert_allclose(norm, ref_viz._normalize_attr(attr.sum(2), sign, 2), rtol=1e-12)
    np.testing.assert_allclose(ours.visualization.visualize_image_attr(attr, sign=sign, outlier_perc=10),
                               ref_viz._normalize_attr(attr.sum(2), sign, 10), rtol=1e-12)
    cmap, vmin, vmax = _initialize_cmap_and_vmin_vmax(sign)
    cmap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    want = cmap(matplotlib.colors.Normalize(vmin, vmax)(norm))[..., :3]
    _, heat = ours.visualize_image_attr(attr, image, "heat_map", sign, return_image=True)
    assert heat.dtype == np.uint8 and heat.shape == (12, 10, 3)
    assert np.abs(heat / 255.0 - want).max() <= 0.5 / 255 + 1e-9
    if sign != "all":
        _, masked = ours.visualize_image_attr(attr, image, "masked_image", sign, return_image=True)
        np.testing.assert_array_equal(masked, ref_viz._prepare_image(image * np.expand_dims(norm, 2)))
        _, rgba = ours.visualize_image_attr(attr, image, "alpha_scaling", sign, return_image=True)
        np.testing.assert_array_equal(rgba[..., 3], ref_viz._prepare_image(norm * 255))
    _, blend = ours.visualize_image_attr(attr, image, "blended_heat_map", sign, alpha_overlay=0.4,
                                         return_image=True)
    assert blend.shape == (12, 10, 3)
    with pytest.raises(ValueError, match="Original Image"):
        ours.visualize_image_attr(attr, None, "blended_heat_map", sign)
