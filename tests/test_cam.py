"""CAM family vs MONAI (CAM, GradCAM, GradCAMpp) and vs torch-autograd references of
pytorch-grad-cam's rules (grad-cam itself would replace this venv's torch); the cat photo;
MATLAB-style grad_cam; errors."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
monai_cam = pytest.importorskip("monai.visualize.class_activation_maps")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from torch_models import SmallResNet, export_onnx, randomize_bn  # noqa: E402
from onnx_xai import Model, UnsupportedModelError  # noqa: E402
from onnx_xai.engines.cam import linear_resize  # noqa: E402
from onnx_xai.matlab import grad_cam, imresize_matrix  # noqa: E402
from onnx_xai.methods.cam import (CAM, EigenCAM, GradCAM, GradCAMElementWise, GradCAMpp,  # noqa: E402
                                  HiResCAM, LayerCAM, ScoreCAM, XGradCAM, minmax_normalizer)

TOL = 1e-4


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    net = randomize_bn(SmallResNet(5))
    return net, Model(export_onnx(net, torch.randn(2, 3, 64, 64)), device="cpu", verbose=False)


@pytest.fixture(scope="module")
def densenet2d():
    from monai.networks.nets import DenseNet121
    torch.manual_seed(0)
    net = randomize_bn(DenseNet121(spatial_dims=2, in_channels=1, out_channels=3))
    return net, Model(export_onnx(net, torch.randn(1, 1, 48, 64)), device="cpu", verbose=False)


@pytest.fixture(scope="module")
def densenet3d():
    from monai.networks.nets import DenseNet
    torch.manual_seed(2)
    net = randomize_bn(DenseNet(spatial_dims=3, in_channels=1, out_channels=4, init_features=8,
                                 growth_rate=8, block_config=(2, 3, 2)))
    return net, Model(export_onnx(net, torch.randn(1, 1, 24, 32, 28)), device="cpu", verbose=False)


def _close(got, ref, tol=TOL):
    """max |got − ref| ≤ tol·max(1, max |ref|)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    diff = np.abs(got - ref).max()
    assert diff <= tol * max(1.0, np.abs(ref).max()), diff
    return diff


# ----------------------------------------------------------------------------- MONAI
CASES = {  # net fixture, layer, fc, input shape
    "densenet2d": ("densenet2d", "class_layers.relu", "class_layers.out", (1, 1, 48, 64)),
    "resnet": ("resnet", "layer4", "fc", (1, 3, 64, 64)),
    "densenet3d": ("densenet3d", "class_layers.relu", "class_layers.out", (1, 1, 24, 32, 28)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cam_gradcam_gradcampp_equal_monai(case, request):
    fixture, layer, fc, shape = CASES[case]
    net, model = request.getfixturevalue(fixture)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    for ours, theirs, kw in ((CAM, monai_cam.CAM, {"fc_layers": fc}), (GradCAM, monai_cam.GradCAM, {}),
                             (GradCAMpp, monai_cam.GradCAMpp, {})):
        ref = theirs(net, layer, **kw)
        cam = ours(model, layer, **kw)
        _close(cam.compute_map(x.numpy()), ref.compute_map(x).detach().numpy())
        got, want = cam(x.numpy()), ref(x).detach().numpy()
        assert got.shape == shape[:1] + (1,) + shape[2:]
        _close(got, want)
        assert got.std() > 0.05  # a real map, not a constant
    # the fc after global pooling is found without naming it
    auto = CAM(model, layer, fc_layers=None).compute_map(x.numpy())
    _close(auto, monai_cam.CAM(net, layer, fc_layers=fc).compute_map(x).detach().numpy())


def test_batch_of_two_with_different_classes(densenet2d):
    net, model = densenet2d
    x = torch.rand(2, 1, 48, 64, generator=torch.Generator().manual_seed(4))
    for ours, theirs in ((GradCAM, monai_cam.GradCAM), (GradCAMpp, monai_cam.GradCAMpp)):
        got = ours(model, "class_layers.relu")(x.numpy(), class_idx=[2, 0])
        # MONAI mixes the classes of a batch in one backward pass: compare sample by sample
        want = np.concatenate([theirs(net, "class_layers.relu")(x[i:i + 1], class_idx=c).detach().numpy()
                               for i, c in enumerate([2, 0])])
        _close(got, want)
        raw = ours(model, "class_layers.relu").compute_map(x.numpy(), class_idx=[2, 0])
        other = ours(model, "class_layers.relu").compute_map(x.numpy(), class_idx=[0, 2])
        assert np.abs(raw - other).max() > 1e-3  # the class matters
    got = CAM(model, "class_layers.relu", fc_layers="class_layers.out")(x.numpy(), class_idx=[1, 2])
    want = monai_cam.CAM(net, "class_layers.relu", fc_layers="class_layers.out")(
        x, class_idx=torch.tensor([1, 2])).detach().numpy()
    _close(got, want)
    # class_idx None: each sample's own argmax (picked inside the gradient graph)
    arg = net(x).argmax(1).tolist()
    _close(GradCAM(model, "class_layers.relu").compute_map(x.numpy()),
           GradCAM(model, "class_layers.relu").compute_map(x.numpy(), class_idx=arg))


def test_default_normalizer_flips_and_minmax_does_not(resnet):
    _, model = resnet
    x = np.random.default_rng(0).random((1, 3, 64, 64), np.float32)
    cls = next(c for c in range(5) if GradCAM(model, "layer4").compute_map(x, c).max() > 0)
    flipped = GradCAM(model, "layer4")(x, cls)
    kept = GradCAM(model, "layer4", postprocessing=minmax_normalizer)(x, cls)
    _close(flipped, 1.0 - kept, 1e-6)
    assert kept.max() == pytest.approx(1.0) and kept.min() == pytest.approx(0.0)


# ----------------------------------------------------------------------------- pytorch-grad-cam rules
def _torch_taps(net, module, x, cls):
    """(A, dS/dA, logits) with torch autograd; S = logit of cls per sample."""
    seen = {}
    h = module.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    xt = torch.tensor(x)
    logits = net(xt)
    h.remove()
    a = seen["a"]
    g, = torch.autograd.grad(logits.gather(1, torch.as_tensor(cls)[:, None]).sum(), a)
    return a.detach().double().numpy(), g.double().numpy(), logits.detach().double().numpy()


def _gradcam_pipeline(raw, size):
    """pytorch-grad-cam's output: relu → (x − min)/(1e-7 + max) → cv2 INTER_LINEAR → same again."""
    import cv2

    def scale(m):
        m = m - m.min()
        return m / (1e-7 + m.max())
    return np.stack([scale(cv2.resize(scale(np.maximum(r, 0)).astype(np.float32), size[::-1],
                                      interpolation=cv2.INTER_LINEAR)) for r in raw])


def test_family_equals_torch_formulas(resnet):
    net, model = resnet
    x = np.random.default_rng(1).random((2, 3, 64, 64), np.float32)
    cls = np.array([3, 1])
    a, g, logits = _torch_taps(net, net.layer4, x, cls)
    ax = (2, 3)
    refs = {
        LayerCAM: (np.maximum(g, 0) * a).sum(1),
        XGradCAM: (((g * a).sum(ax) / (a.sum(ax) + 1e-7))[..., None, None] * a).sum(1),
        HiResCAM: (g * a).sum(1),
        GradCAMElementWise: np.maximum(g * a, 0).sum(1),
    }
    for cls_, ref in refs.items():
        method = cls_(model, "layer4")
        _close(method.compute_map(x, cls)[:, 0], np.maximum(ref, 0))
        _close(method(x, cls)[:, 0], _gradcam_pipeline(ref, (64, 64)), 1e-4)
    # EigenCAM: first right-singular vector of the centred (HW × C) activations, up to sign
    got = EigenCAM(model, "layer4").compute_map(x)[:, 0]
    assert got.max() > 0
    for i in range(2):
        m = a[i].reshape(a.shape[1], -1).T
        m = m - m.mean(0)
        proj = (m @ np.linalg.svd(m, full_matrices=True)[2][0]).reshape(a.shape[2:])
        assert min(np.abs(got[i] - np.maximum(proj, 0)).max(),
                   np.abs(got[i] - np.maximum(-proj, 0)).max()) <= TOL * np.abs(proj).max()


def test_scorecam_equals_torch_reference(resnet):
    net, model = resnet
    x = np.random.default_rng(2).random((1, 3, 64, 64), np.float32)
    a, _, logits = _torch_taps(net, net.layer4, x, [0])
    cls = int(logits.argmax())
    with torch.no_grad():
        up = F.interpolate(torch.tensor(a, dtype=torch.float32), size=(64, 64), mode="bilinear",
                           align_corners=True)
        flat = up.view(1, up.shape[1], -1)
        lo, hi = flat.min(-1)[0][..., None, None], flat.max(-1)[0][..., None, None]
        masks = (up - lo) / (hi - lo + 1e-8)
        scores = torch.cat([net(torch.tensor(x) * masks[0, k:k + 8, None]) for k in range(0, masks.shape[1], 8)])
        w = torch.softmax(scores[:, cls].double(), 0).numpy()
    ref = np.maximum((w[:, None, None] * a[0]).sum(0), 0)
    got = ScoreCAM(model, "layer4", batch_size=7, verbose=False).compute_map(x)
    _close(got[0, 0], ref)


def test_linear_resize_equals_torch_interpolate():
    rng = np.random.default_rng(3)
    for shape, size, mode in (((2, 3, 5), (11,), "linear"), ((1, 2, 4, 7), (9, 20), "bilinear"),
                              ((1, 1, 3, 4, 5), (7, 9, 6), "trilinear"), ((1, 1, 8, 6), (5, 4), "bilinear")):
        m = rng.standard_normal(shape).astype(np.float32)
        for ac in (False, True):
            ref = F.interpolate(torch.tensor(m), size=size, mode=mode, align_corners=ac).numpy()
            _close(linear_resize(m, size, align_corners=ac), ref, 1e-5)


# ----------------------------------------------------------------------------- names, errors
def test_dotted_module_names_and_errors(resnet, densenet2d):
    net, model = resnet
    from onnx_xai.graph import resolve_layer
    assert resolve_layer(model.proto, "layer4") == "/layer4/layer4.1/relu_1/Relu_output_0"
    assert resolve_layer(densenet2d[1].proto, "class_layers.relu") == "/class_layers/relu/Relu_output_0"
    x = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(ValueError, match="closest names"):
        GradCAM(model, "layer5")
    with pytest.raises(ValueError, match="out of range"):
        GradCAM(model, "layer4").compute_map(x, class_idx=5)
    with pytest.raises(ValueError, match="one per sample"):
        GradCAM(model, "layer4").compute_map(x, class_idx=[0, 1, 2])
    with pytest.raises(ValueError, match="spatial extent"):
        GradCAM(model, "/Flatten_output_0").compute_map(x)
    with pytest.raises(ValueError, match="layer_idx"):
        GradCAM(model, ["layer3", "layer4"]).compute_map(x, layer_idx=2)
    with pytest.raises(ValueError, match=r"expects shape"):
        GradCAM(model, "layer4").compute_map(x[0])
    with pytest.raises(UnsupportedModelError, match="Gemm or MatMul"):
        CAM(model, "layer4", fc_layers="layer3")
    # two target layers: layer_idx picks one (as MONAI)
    two = GradCAM(model, ["layer3", "layer4"])
    assert two.compute_map(x, 0, layer_idx=0).shape == (1, 1, 8, 8)
    assert two.feature_map_size((1, 3, 64, 64)) == (1, 1, 4, 4)


def test_cam_without_fc_is_unsupported():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    model = Model(export_onnx(net, torch.randn(1, 1, 8, 8)), device="cpu")
    with pytest.raises(UnsupportedModelError, match="no Gemm/MatMul"):
        CAM(model, "1")


# ----------------------------------------------------------------------------- shipped model
@pytest.fixture(scope="module")
def cat():
    from onnx_xai import assets
    from onnx_xai.preprocess import ImageSpec, read_image
    path = assets.efficientnet_lite0()
    image = next(p for p in assets.example_images() if p.stem == "chelsea")
    return Model(path, device="cpu", threads=2, verbose=False), ImageSpec.for_model(path).to_input(read_image(image))


def test_cat_gradcam_peaks_on_the_cat(cat):
    from onnx_xai.visualize import boxes_from_map
    model, x = cat
    heat = GradCAM(model, "_swish_1", postprocessing=minmax_normalizer)(x, class_idx=285)[0, 0]
    r, c = np.unravel_index(heat.argmax(), heat.shape)
    assert 50 <= r < 190 and 40 <= c < 175, (r, c)
    boxes = boxes_from_map(heat, threshold=0.5)
    assert boxes
    b = boxes[0]
    overlap = max(0, min(b.x1, 175) - max(b.x0, 40)) * max(0, min(b.y1, 190) - max(b.y0, 50))
    assert overlap > 0.5 * (b.x1 - b.x0) * (b.y1 - b.y0)


# ----------------------------------------------------------------------------- MATLAB grad_cam
def test_matlab_grad_cam_matches_monai_gradcam(resnet):
    net, model = resnet
    X = np.random.default_rng(5).random((64, 64, 3), np.float32)  # MATLAB (H, W, C)
    xt = torch.tensor(np.moveaxis(X, -1, 0)[None])
    ref = monai_cam.GradCAM(net, "layer4").compute_map(xt, class_idx=2).detach().numpy()[0, 0]
    grid = grad_cam(model, X, 2, output_upsampling="none")  # feature layer: before global pooling
    _close(grid, ref)
    full = grad_cam(model, X, 2)
    assert full.shape == (64, 64)
    up = imresize_matrix(4, 64, "bicubic")
    _close(full, up @ ref @ up.T)
    multi = grad_cam(model, X, [2, 4], feature_layer="layer4", output_upsampling="nearest")
    assert multi.shape == (64, 64, 2)
    _close(multi[..., 0], np.kron(ref, np.ones((16, 16))))
    ref4 = monai_cam.GradCAM(net, "layer4").compute_map(xt, class_idx=4).detach().numpy()[0, 0]
    _close(multi[..., 1], np.kron(ref4, np.ones((16, 16))))
    with pytest.raises(ValueError, match="output_upsampling"):
        grad_cam(model, X, 2, output_upsampling="bilinear")
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, X, 9)


def test_a_new_cam_class_reaches_the_cli_and_export(resnet, tmp_path):
    """GradCAMElementWise was added as one class: the registry gives it to the command line and
    to export_explainer, whose graph equals the Python class."""
    from onnx_xai import cli_methods, registry
    from onnx_xai.export import export_explainer, export_methods

    net, model = resnet
    assert registry.get("gradcam-elementwise").impl is GradCAMElementWise
    assert "gradcam-elementwise" in cli_methods.available() and "gradcam-elementwise" in export_methods()
    x = np.random.default_rng(3).random((2, 3, 64, 64), np.float32)
    proto = export_explainer(model, "gradcam-elementwise", "layer4")
    session = Model(proto.SerializeToString(), device="cpu", verbose=False)
    got = session.predict(x, outputs=["saliency"], extra_inputs={"class_idx": np.array([3, 1])})["saliency"]
    _close(got, GradCAMElementWise(model, "layer4")(x, [3, 1]), 1e-5)
