"""Models whose batch is baked into the graph (``x.reshape(B, -1)`` exported with a fixed
``B``): the rewrite to a dynamic batch is refused (it computes different numbers), and every
method runs a batch of 3 through runs of the model's fixed size. References: torch autograd
on the same weights (input gradients, Grad-CAM, integrated gradients by the same quadrature),
and the same method on the twin export whose batch is dynamic (black-box methods)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from torch_models import export_onnx  # noqa: E402

import onnx_xai as ox  # noqa: E402
from onnx_xai.engines.saliency import ig_alphas_weights  # noqa: E402
from onnx_xai.export import export_explainer  # noqa: E402
from onnx_xai.matlab import occlusion_sensitivity  # noqa: E402
from onnx_xai.methods.cam import EigenCAM, GradCAM, ScoreCAM, minmax_normalizer  # noqa: E402
from onnx_xai.methods.occlusion import OcclusionSensitivity  # noqa: E402
from onnx_xai.methods.rise import RISE  # noqa: E402
from onnx_xai.methods.saliency import IntegratedGradients, SmoothGrad, VanillaGrad  # noqa: E402

LAYER = "/c2/Conv"


class Baked(nn.Module):
    """conv → relu → conv → relu → reshape(batch, -1) → linear; ``batch`` None: x.shape[0]."""

    def __init__(self, batch: int | None) -> None:
        super().__init__()
        self.batch = batch
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def features(self, x):
        return self.c2(torch.relu(self.c1(x)))

    def head(self, a):
        return self.fc(torch.relu(a).reshape(self.batch or a.shape[0], -1))

    def forward(self, x):
        return self.head(self.features(x))


def _pair(fixed: int):
    """(torch module at batch 1, fixed-batch ONNX Model, dynamic-batch twin Model)."""
    torch.manual_seed(0)
    net = Baked(fixed).eval()
    twin = Baked(None).eval()
    twin.load_state_dict(net.state_dict())
    baked = ox.Model(export_onnx(net, torch.randn(fixed, 3, 16, 16), dynamic_batch=False), verbose=False)
    dynamic = ox.Model(export_onnx(twin, torch.randn(2, 3, 16, 16)), verbose=False)
    return twin, baked, dynamic


@pytest.fixture(scope="module", params=[1, 2], ids=["batch1", "batch2"])
def models(request):
    return _pair(request.param)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)


def _torch_grad(net, x, cls):
    t = torch.from_numpy(x).requires_grad_(True)
    out = net(t)
    out[torch.arange(len(x)), torch.as_tensor(cls)].sum().backward()
    return t.grad.numpy(), out.detach().numpy()


def test_rewrite_refused_and_predict(models, x):
    net, baked, dynamic = models
    got = baked.predict(x)
    assert baked._batch == "fixed"  # the rewrite would change the numbers: kept fixed
    np.testing.assert_allclose(got, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_gradients_equal_torch(models, x):
    net, baked, _ = models
    cls = [0, 2, 3]
    ref, _ = _torch_grad(net, x, cls)
    got = VanillaGrad(baked)(x, cls)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_integrated_gradients_equal_torch(models, x):
    net, baked, _ = models
    alphas, weights = ig_alphas_weights(5, "gausslegendre")
    cls = net(torch.from_numpy(x)).argmax(1).numpy()
    total = sum(w * _torch_grad(net, (a * x).astype(np.float32), cls)[0] for a, w in zip(alphas, weights))
    got = IntegratedGradients(baked, n_steps=5)(x)
    np.testing.assert_allclose(got, x * total, rtol=1e-4, atol=1e-6)


def test_gradcam_equals_torch(models, x):
    net, baked, _ = models
    t = torch.from_numpy(x)
    a = net.features(t).detach().requires_grad_(True)
    out = net.head(a)
    cls = out.argmax(1)
    out[torch.arange(3), cls].sum().backward()
    w = a.grad.mean((2, 3), keepdim=True)
    raw = torch.relu((w * a).sum(1, keepdim=True)).detach().numpy()
    got = GradCAM(baked, LAYER, postprocessing=lambda m: m, upsampler=lambda s: (lambda m: m))(x)
    np.testing.assert_allclose(got, raw, rtol=1e-4, atol=1e-5)


def test_smoothgrad_and_black_box_equal_dynamic_twin(models, x):
    _, baked, dynamic = models
    runs = {
        "smoothgrad": lambda m: SmoothGrad(m, n_samples=4, seed=0, verbose=False, batch_size=5)(x),
        "eigencam": lambda m: EigenCAM(m, LAYER)(x),
        "scorecam": lambda m: ScoreCAM(m, LAYER, verbose=False, batch_size=3)(x),
        "rise": lambda m: RISE(m, n_masks=24, seed=1, n_batch=5)(x),
        "occlusion": lambda m: OcclusionSensitivity(m, mask_size=4, n_batch=5, verbose=False)(x[:1])[0],
        "matlab": lambda m: occlusion_sensitivity(m, x[0], 1, mini_batch_size=5, verbose=False),
    }
    for name, run in runs.items():
        np.testing.assert_allclose(run(baked), run(dynamic), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("method", ["gradcam", "vanilla"])
def test_export_on_fixed_batch(models, x, method):
    _, baked, _ = models
    fixed = baked.input.shape[0]
    explainer = ox.Model(export_explainer(baked, method, LAYER), verbose=False)
    assert explainer.input.shape[0] == fixed
    got = explainer.predict(x, outputs=["saliency"])["saliency"]
    want = (GradCAM(baked, LAYER, postprocessing=None)(x) if method == "gradcam"
            else VanillaGrad(baked)(x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_minmax_gradcam_on_batch_of_three(models, x):
    """The fixed batch is padded with copies and the copies dropped: 3 samples → 3 maps."""
    _, baked, dynamic = models
    got = GradCAM(baked, LAYER, postprocessing=minmax_normalizer)(x)
    assert got.shape == (3, 1, 16, 16)
    np.testing.assert_allclose(got, GradCAM(dynamic, LAYER, postprocessing=minmax_normalizer)(x),
                               rtol=1e-4, atol=1e-5)


class BakedWithMeta(nn.Module):
    """An image and a per-sample ``meta`` vector; the batch baked into the head's reshape."""

    def __init__(self, batch: int | None) -> None:
        super().__init__()
        self.batch = batch
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.m = nn.Linear(2, 4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x, meta):
        h = torch.relu(self.c(x)) * torch.sigmoid(self.m(meta))[:, :, None, None]
        return self.fc(h.reshape(self.batch or x.shape[0], -1))


def test_fixed_batch_with_per_sample_extra_inputs():
    """The extra input is pinned to the fixed batch too: its rows are cut and padded with
    the image's (per-sample meta), every method equals the dynamic-batch twin."""
    torch.manual_seed(0)
    net, twin = BakedWithMeta(1).eval(), BakedWithMeta(None).eval()
    twin.load_state_dict(net.state_dict())
    example = (torch.randn(1, 3, 8, 8), torch.randn(1, 2))
    baked = ox.Model(export_onnx(net, example, input_names=("x", "meta"), dynamic_batch=False), verbose=False)
    dynamic = ox.Model(export_onnx(twin, example, input_names=("x", "meta")), verbose=False)
    rng = np.random.default_rng(0)
    x, meta = rng.standard_normal((3, 3, 8, 8)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    runs = {
        "vanilla": lambda m: VanillaGrad(m)(x, meta=meta),
        "smoothgrad": lambda m: SmoothGrad(m, n_samples=3, seed=0, verbose=False)(x, meta=meta),
        "ig": lambda m: IntegratedGradients(m, n_steps=4)(x, meta=meta),
        "gradcam": lambda m: GradCAM(m, "/c/Conv")(x, meta=meta),
        "eigencam": lambda m: EigenCAM(m, "/c/Conv")(x, meta=meta),
        "scorecam": lambda m: ScoreCAM(m, "/c/Conv", verbose=False)(x, meta=meta),
        "rise": lambda m: RISE(m, n_masks=10, seed=0)(x, extra_inputs={"meta": meta}),
    }
    for name, run in runs.items():
        np.testing.assert_allclose(run(baked), run(dynamic), rtol=1e-4, atol=1e-6, err_msg=name)
    t = torch.from_numpy(x).requires_grad_(True)
    out = twin(t, torch.from_numpy(meta))
    out[torch.arange(3), out.argmax(1)].sum().backward()
    np.testing.assert_allclose(runs["vanilla"](baked), t.grad.numpy(), rtol=1e-4, atol=1e-6)
