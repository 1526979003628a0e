"""Models with another input beside the image (an image + a ``meta`` vector, exported by
torch.onnx): every method takes the extra input, per batch (one row for all samples, or no
batch axis) or per sample (a leading axis of B). References: torch autograd with the same
extra input (input gradients, Grad-CAM), and the same method run sample by sample with that
sample's row (per-sample extras). The CLI reads them with ``--extra NAME=FILE.npy``."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from torch_models import export_onnx  # noqa: E402

import onnx_xai as ox  # noqa: E402
from onnx_xai.cli import main  # noqa: E402
from onnx_xai.export import export_explainer  # noqa: E402
from onnx_xai.matlab import grad_cam, occlusion_sensitivity  # noqa: E402
from onnx_xai.methods.cam import CAM, EigenCAM, GradCAM, LayerCAM, ScoreCAM, minmax_normalizer  # noqa: E402
from onnx_xai.methods.lime import KernelSHAP  # noqa: E402
from onnx_xai.methods.occlusion import OcclusionSensitivity  # noqa: E402
from onnx_xai.methods.rise import RISE  # noqa: E402
from onnx_xai.methods.saliency import IntegratedGradients, SmoothGrad, VanillaGrad  # noqa: E402

LAYER = "/c2/Conv"


class ImageAndMeta(nn.Module):
    """Feature maps gated channel-wise by sigmoid(Linear(meta)): the map depends on meta."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1, stride=2)
        self.meta = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 5)

    def features(self, x):
        return self.c2(torch.relu(self.c1(x)))

    def head(self, a, meta):
        h = torch.relu(a) * torch.sigmoid(self.meta(meta))[:, :, None, None]
        return self.fc(h.mean((2, 3)))

    def forward(self, x, meta):
        return self.head(self.features(x), meta)


@pytest.fixture(scope="module")
def net_and_model():
    torch.manual_seed(0)
    net = ImageAndMeta().eval()
    onnx_bytes = export_onnx(net, (torch.randn(2, 3, 16, 16), torch.randn(2, 4)), input_names=("x", "meta"))
    return net, ox.Model(onnx_bytes, verbose=False), onnx_bytes


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 3, 16, 16)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)


def test_gradients_equal_torch_with_the_same_meta(net_and_model, data):
    net, model, _ = net_and_model
    x, meta = data
    cls = [1, 0, 4]
    t = torch.from_numpy(x).requires_grad_(True)
    out = net(t, torch.from_numpy(meta))
    out[torch.arange(3), torch.tensor(cls)].sum().backward()
    np.testing.assert_allclose(VanillaGrad(model)(x, cls, meta=meta), t.grad.numpy(), rtol=1e-4, atol=1e-6)
    other = VanillaGrad(model)(x, cls, meta=-meta)
    ref = t.grad.numpy()
    assert np.abs(other - ref).max() > 0.1 * np.abs(ref).max()  # the meta input really matters


def test_gradcam_equals_torch_with_the_same_meta(net_and_model, data):
    net, model, _ = net_and_model
    x, meta = data
    a = net.features(torch.from_numpy(x)).detach().requires_grad_(True)
    out = net.head(a, torch.from_numpy(meta))
    out[torch.arange(3), out.argmax(1)].sum().backward()
    raw = torch.relu((a.grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach().numpy()
    np.testing.assert_allclose(GradCAM(model, LAYER).compute_map(x, meta=meta), raw, rtol=1e-4, atol=1e-5)
    matlab = grad_cam(model, x[0], int(out[0].argmax()), feature_layer=LAYER, output_upsampling="none",
                      extra_inputs={"meta": meta[:1]})
    np.testing.assert_allclose(matlab, raw[0, 0], rtol=1e-4, atol=1e-5)


def _per_sample(run, x, meta):
    """The method on each sample alone, with that sample's meta row."""
    return np.concatenate([run(x[i:i + 1], meta[i:i + 1]) for i in range(len(x))])


@pytest.mark.parametrize("name", ["gradcam", "layercam", "cam", "eigencam", "scorecam", "smoothgrad",
                                  "ig", "rise", "kernelshap"])
def test_per_sample_extras_equal_sample_by_sample_runs(net_and_model, data, name):
    _, model, _ = net_and_model
    x, meta = data
    method = {
        "gradcam": lambda: GradCAM(model, LAYER), "layercam": lambda: LayerCAM(model, LAYER),
        "cam": lambda: CAM(model, "/Relu_1", fc_layers="/fc/Gemm"), "eigencam": lambda: EigenCAM(model, LAYER),
        "scorecam": lambda: ScoreCAM(model, LAYER, verbose=False, batch_size=4),
        "smoothgrad": lambda: SmoothGrad(model, n_samples=3, seed=0, verbose=False, batch_size=4),
        "ig": lambda: IntegratedGradients(model, n_steps=4, internal_batch_size=3),
        "rise": lambda: RISE(model, n_masks=12, seed=0, n_batch=5),
        "kernelshap": lambda: KernelSHAP(model, n_samples=10, feature_mask="grid", n_features=4, seed=0),
    }[name]
    if name in ("rise", "kernelshap"):
        run = lambda xs, ms: method()(xs, extra_inputs={"meta": ms})  # noqa: E731
    elif name == "smoothgrad":  # its noise depends on the batch: one sample's = one-sample run
        run = lambda xs, ms: method()(xs, meta=ms)  # noqa: E731
        np.testing.assert_allclose(run(x[:1], meta[:1]), method()(x[:1], meta=meta[0]), rtol=1e-5, atol=1e-6)
        return
    else:
        run = lambda xs, ms: method()(xs, meta=ms)  # noqa: E731
    np.testing.assert_allclose(run(x, meta), _per_sample(run, x, meta), rtol=1e-4, atol=1e-5)


def test_per_batch_extra_is_shared(net_and_model, data):
    """One meta row (or one without a batch axis) goes with every sample."""
    _, model, _ = net_and_model
    x, meta = data
    shared = np.repeat(meta[:1], 3, axis=0)
    want = GradCAM(model, LAYER).compute_map(x, meta=shared)
    np.testing.assert_allclose(GradCAM(model, LAYER).compute_map(x, meta=meta[:1]), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(EigenCAM(model, LAYER)(x, meta=meta[:1]), EigenCAM(model, LAYER)(x, meta=shared),
                               rtol=1e-5, atol=1e-6)


def test_occlusion_and_matlab_occlusion_take_extras(net_and_model, data):
    net, model, _ = net_and_model
    x, meta = data
    occlusion = OcclusionSensitivity(model, mask_size=8, verbose=False, activate=False)
    occ, _ = occlusion(x[:1], meta=meta[:1])
    assert occ.shape == (1, 5, 16, 16)
    other = occlusion(x[:1], meta=-meta[:1])[0]
    assert np.abs(occ - other).max() > 0.1 * np.abs(occ).max()  # fed, and it matters
    got = occlusion_sensitivity(model, x[0], 1, mask_size=4, stride=4, mask_value=0.0,
                                output_upsampling="none", activation="softmax", extra_inputs={"meta": meta[:1]},
                                verbose=False)
    t = torch.from_numpy(np.repeat(x[:1], 16, 0))
    for k in range(16):  # the 4 x 4 grid of mask positions, centred on (4i, 4j), clipped
        i, j = divmod(k, 4)
        t[k, :, max(4 * i - 2, 0):4 * i + 2, max(4 * j - 2, 0):4 * j + 2] = 0
    with torch.no_grad():
        base = torch.softmax(net(torch.from_numpy(x[:1]), torch.from_numpy(meta[:1])), 1)[0, 1]
        scores = torch.softmax(net(t, torch.from_numpy(np.repeat(meta[:1], 16, 0))), 1)[:, 1]
    np.testing.assert_allclose(got, (base - scores).numpy().reshape(4, 4), rtol=1e-4, atol=1e-6)


def test_missing_extra_says_how_to_pass_it(net_and_model, data):
    _, model, _ = net_and_model
    x, meta = data
    with pytest.raises(ValueError, match="meta.*extra inputs.*--extra"):
        GradCAM(model, LAYER)(x)
    bad = meta.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="extra input 'meta'"):
        EigenCAM(model, LAYER)(x, meta=bad)


@pytest.mark.parametrize("method", ["gradcam", "vanilla"])
def test_exported_explainer_keeps_the_extra_input(net_and_model, data, method):
    _, model, _ = net_and_model
    x, meta = data
    explainer = ox.Model(export_explainer(model, method, LAYER if method == "gradcam" else None), verbose=False)
    assert "meta" in explainer.input_names
    got = explainer.predict(x, outputs=["saliency"], extra_inputs={"meta": meta})["saliency"]
    want = GradCAM(model, LAYER)(x, meta=meta) if method == "gradcam" else VanillaGrad(model)(x, meta=meta)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cli_extra(net_and_model, data, tmp_path, capsys):
    """``--extra meta=FILE.npy``: one row per input (in the order given) or one for all."""
    _, _, onnx_bytes = net_and_model
    x, meta = data
    (tmp_path / "m.onnx").write_bytes(onnx_bytes)
    inputs = []
    for i in range(2):
        inputs.append(tmp_path / f"in{i}.npy")
        np.save(inputs[-1], x[i])
    np.save(tmp_path / "rows.npy", meta[:2])
    np.save(tmp_path / "one.npy", meta[0])
    common = [str(tmp_path / "m.onnx"), *map(str, inputs), "--method", "gradcam", "--layer", LAYER,
              "--quiet", "--threads", "1"]
    assert main(["explain", *common, "--extra", f"meta={tmp_path / 'rows.npy'}", "--out", str(tmp_path / "a")]) == 0
    assert main(["explain", *common, "--extra", f"meta={tmp_path / 'one.npy'}", "--out", str(tmp_path / "b")]) == 0
    for folder, rows in (("a", meta[:2]), ("b", meta[[0, 0]])):
        want = GradCAM(ox.Model(onnx_bytes, verbose=False), LAYER, postprocessing=minmax_normalizer)(x[:2], meta=rows)
        for i in range(2):
            got = np.load(tmp_path / folder / f"in{i}_npy_gradcam.npy")
            np.testing.assert_allclose(got, want[i, 0], rtol=1e-4, atol=1e-5, err_msg=f"{folder} {i}")
            meta_json = json.loads((tmp_path / folder / f"in{i}_npy_gradcam.json").read_text())
            assert meta_json["method"] == "gradcam"
    assert main(["explain", *common, "--out", str(tmp_path / "c")]) != 0  # meta missing: one line
    assert "--extra NAME=FILE.npy" in capsys.readouterr().err
