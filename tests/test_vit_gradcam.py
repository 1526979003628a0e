"""timm ViT, DeiT (distilled: class + distillation tokens) and Swin (NHWC stages) against
pytorch-grad-cam with its ``reshape_transform`` on the same weights: our CAMs on the automatic
layer (the last block's ``norm1``, folded to the patch grid without any reshape from the user)
give pytorch-grad-cam's maps.

pytorch-grad-cam and timm need torchvision, which does not import beside the test venv's torch:
CI runs this file in the grad-cam venv (``.ci/run`` step 4). Elsewhere it is skipped.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")
import torch  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from torch_models import export_onnx  # noqa: E402
from onnx_xai import Model, graph  # noqa: E402
from onnx_xai.autolayer import auto_layer  # noqa: E402
from onnx_xai.methods.cam import EigenCAM, GradCAM, LayerCAM, ScoreCAM  # noqa: E402

SIZE, CLASSES = 32, 5
TOL = 1e-4  # maps scaled to [0, 1] by pytorch-grad-cam: absolute = relative to the hottest point
SPECS = {  # timm name, small config, prefix tokens, last-stage grid
    "vit": ("vit_tiny_patch16_224", dict(patch_size=8, depth=2, embed_dim=32, num_heads=2), 1, 4),
    "deit": ("deit_tiny_distilled_patch16_224", dict(patch_size=8, depth=2, embed_dim=32, num_heads=2), 2, 4),
    "swin": ("swin_tiny_patch4_window7_224", dict(patch_size=4, window_size=4, depths=(1, 1),
                                                   num_heads=(2, 4), embed_dim=32), 0, 4),
}
OURS = {"GradCAM": GradCAM, "LayerCAM": LayerCAM, "EigenCAM": EigenCAM, "ScoreCAM": ScoreCAM}


@pytest.fixture(scope="module", params=sorted(SPECS))
def timm_model(request):
    """(kind, torch net, its last norm1 module, Model of its ONNX export, reshape_transform)."""
    name, config, prefix, grid = SPECS[request.param]
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=CLASSES, img_size=SIZE, **config).eval()
    norm1 = [n for n, _ in net.named_modules() if n.endswith("norm1")][-1]

    def reshape_transform(t):  # pytorch-grad-cam's ViT recipe; Swin stages are already (B, h, w, C)
        if t.ndim == 4:
            return t.permute(0, 3, 1, 2)
        t = t[:, prefix:, :]
        return t.reshape(t.size(0), grid, grid, t.size(2)).permute(0, 3, 1, 2)

    model = Model(export_onnx(net, torch.randn(2, 3, SIZE, SIZE)), verbose=False)
    return request.param, net, norm1, model, reshape_transform


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def _scaled(raw):
    """pytorch-grad-cam's own post-processing of a raw ``(B, h, w)`` map: scaled to [0, 1] and
    resized (``compute_cam_per_layer``), then scaled again (``aggregate_multi_layers``)."""
    return scale_cam_image(scale_cam_image(raw, (SIZE, SIZE)))


def _module(net, path):
    return dict(net.named_modules())[path]


def test_automatic_layer_is_the_last_norm1(timm_model):
    kind, net, norm1, model, _ = timm_model
    choice = auto_layer(model)
    assert choice.tensor == graph.resolve_layer(model.proto, norm1)
    assert choice.fold.layout == ("nhwc" if kind == "swin" else "tokens")
    assert choice.fold.prefix == SPECS[kind][2] and choice.fold.grid == (SPECS[kind][3],) * 2


@pytest.mark.parametrize("name", sorted(OURS))
def test_cams_equal_pytorch_grad_cam_with_reshape_transform(timm_model, x, name):
    kind, net, norm1, model, reshape = timm_model
    targets = None if name == "EigenCAM" else [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    with getattr(pgc, name)(model=net, target_layers=[_module(net, norm1)], reshape_transform=reshape) as cam:
        if name == "ScoreCAM":
            cam.batch_size = 16
        ref = cam(input_tensor=torch.from_numpy(x), targets=targets)
    ours = OURS[name](model, batch_size=16) if name == "ScoreCAM" else OURS[name](model)
    raw = ours.compute_map(x, None if targets is None else np.array([1, 3]))[:, 0]  # no layer, no reshape
    got = _scaled(raw)
    assert got.shape == ref.shape == (2, SIZE, SIZE)
    assert ref.reshape(2, -1).max(1).min() > 0.5  # a real map, not all zeros
    if name == "EigenCAM":  # the SVD's sign is arbitrary: pytorch-grad-cam keeps LAPACK's, we fix it
        for i, both in enumerate(_both_signs(model, x)):
            assert min(np.abs(ref[i] - b).max() for b in both) <= TOL, (kind, i)
            assert min(np.abs(got[i] - b).max() for b in both) <= TOL, (kind, i)
        return
    np.testing.assert_allclose(got, ref, atol=TOL, err_msg=f"{kind} {name}")


def _both_signs(model, x):
    """Per sample, the scaled maps of relu(±P), P the first principal component projection of
    the automatic layer's folded activations (pytorch-grad-cam's get_2d_projection, unsigned)."""
    choice = auto_layer(model)
    act = choice.fold(model.with_outputs([choice.tensor]).predict(x, outputs=choice.tensor, verbose=False))
    out = []
    for a in act.astype(np.float64):
        m = a.reshape(a.shape[0], -1).T
        m = m - m.mean(0)
        p = (m @ np.linalg.svd(m, full_matrices=False)[2][0]).reshape(a.shape[1:])
        out.append([_scaled(np.maximum(s * p, 0)[None].astype(np.float32))[0] for s in (1, -1)])
    return out


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "LayerCAM"])
def test_the_adapter_folds_token_layers_itself(timm_model, x, name):
    """onnx_xai.adapters.pytorch_grad_cam, called as pytorch-grad-cam but without any
    reshape_transform, equals pytorch-grad-cam with one, call for call."""
    from onnx_xai.adapters import pytorch_grad_cam as ours

    kind, net, norm1, model, reshape = timm_model
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]
    with getattr(pgc, name)(model=net, target_layers=[_module(net, norm1)], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=targets)
    with getattr(ours, name)(model=model, target_layers=[norm1]) as cam:
        got = cam(input_tensor=x, targets=[ours.ClassifierOutputTarget(2), ours.ClassifierOutputTarget(0)])
    np.testing.assert_allclose(got, ref, atol=TOL, err_msg=f"{kind} {name}")
    with pytest.raises(NotImplementedError, match="folded to their patch grid automatically"):
        getattr(ours, name)(model, [norm1], reshape_transform=reshape)
