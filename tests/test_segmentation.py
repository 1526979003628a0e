"""Segmentation region targets on MONAI UNets (2D and 3D, seeded random weights, exported here):
region-score gradients against torch autograd, occlusion against MONAI's OcclusionSensitivity
with the same region-summing callable, Seg-Grad-CAM against torch; and a toy segmenter with
known objects (pointing game)."""
import numpy as np
import pytest

import onnx_xai as ox
from onnx_xai import synthetic
from onnx_xai.targets import RegionTarget, box_mask

torch = pytest.importorskip("torch")
monai_nets = pytest.importorskip("monai.networks.nets")
monai_vis = pytest.importorskip("monai.visualize")
from torch_models import export_onnx  # noqa: E402

SHAPES = {2: (32, 32), 3: (16, 16, 16)}
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # MONAI's indexing


def _unet(dims):
    torch.manual_seed(dims)
    net = monai_nets.UNet(spatial_dims=dims, in_channels=1, out_channels=3, channels=(4, 8, 16),
                          strides=(2, 2), num_res_units=1).eval()
    return net, ox.Model(export_onnx(net, torch.randn(2, 1, *SHAPES[dims])), verbose=False)


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def unet(request):
    dims = request.param
    net, model = _unet(dims)
    x = np.random.default_rng(dims).normal(size=(2, 1, *SHAPES[dims])).astype(np.float32)
    return dims, net, model, x


def _regions(dims, x_torch, net):
    """(name, our region, torch mask (B, *s)) for a mask, a box and "predicted" class 1."""
    s = SHAPES[dims]
    mask = np.zeros(s, np.float32)
    mask[(slice(2, 9),) * dims] = 1.0
    box = (3, 1, 12, 10) if dims == 2 else (3, 1, 2, 12, 10, 9)
    with torch.no_grad():
        predicted = (net(x_torch).argmax(1) == 1).float()
    ref_box = torch.from_numpy(box_mask(box, s))  # box_mask itself is checked below by slicing
    return [("mask", mask, torch.from_numpy(mask).expand(len(x_torch), *s)),
            ("box", np.array(box), ref_box.expand(len(x_torch), *s)),
            ("predicted", "predicted", predicted)]


def test_box_mask_slices():
    m = box_mask((3, 1, 12, 10), (32, 32))
    assert m[1:10, 3:12].all() and m.sum() == 9 * 9
    m3 = box_mask((3, 1, 2, 12, 10, 9), (16, 16, 16))
    assert m3[1:10, 3:12, 2:9].all() and m3.sum() == 9 * 9 * 7
    with pytest.raises(ValueError, match="outside"):
        box_mask((3, 1, 2, 17, 10, 9), (16, 16, 16))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_region_gradients_equal_torch_autograd(unet, reduce):
    dims, net, model, x = unet
    xt = torch.from_numpy(x)
    for name, region, ref_mask in _regions(dims, xt, net):
        xg = xt.clone().requires_grad_(True)
        out = net(xg)[:, 1]
        w = ref_mask if reduce == "sum" else ref_mask / ref_mask.flatten(1).sum(1).clamp(min=1).view(-1, *[1] * dims)
        (out * w).sum().backward()
        got = ox.VanillaGrad(model).explain(x, RegionTarget(index=1, region=region, reduce=reduce))
        want = xg.grad.numpy()
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), name


def test_occlusion_equals_monai_with_region_callable(unet):
    """MONAI's OcclusionSensitivity on a module returning the class-1 logit summed over the
    region (B, 1), activate=False, equals ours with RegionTarget on the UNet's ONNX export."""
    dims, net, model, x = unet
    xt = torch.from_numpy(x[:1])
    mask_size, overlap = (8, 0.5) if dims == 2 else (8, 0.25)
    for name, region, ref_mask in _regions(dims, xt, net)[:3 if dims == 2 else 2]:
        class RegionScore(torch.nn.Module):
            def forward(self, inp):
                return (net(inp)[:, 1] * ref_mask[:1]).flatten(1).sum(1, keepdim=True)
        ref = monai_vis.OcclusionSensitivity(RegionScore(), mask_size=mask_size, n_batch=8, overlap=overlap,
                                             activate=False, verbose=False)
        with torch.no_grad():
            want, _ = ref(xt)
        got, _ = ox.OcclusionSensitivity(model, mask_size=mask_size, n_batch=8, overlap=overlap, verbose=False)(
            x[:1], target=RegionTarget(index=1, region=region))
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4 * float(want.abs().max()), err_msg=name)


def test_seg_gradcam_equals_torch(unet):
    """Seg-Grad-CAM (Vinogradova et al.): Grad-CAM of the class-1 region score on the UNet's
    bottom block equals relu(Σ_k mean(dS/dA_k) A_k) from torch's activations and autograd."""
    dims, net, model, x = unet
    bottom = net.model[1].submodule[1].submodule  # the innermost residual unit
    feats = {}

    def keep(m, a, o):
        o.retain_grad()
        feats["a"] = o
    h = bottom.register_forward_hook(keep)
    xt = torch.from_numpy(x[:1])
    (net(xt)[:, 1] * torch.from_numpy(box_mask((3, 1, 12, 10) if dims == 2 else (3, 1, 2, 12, 10, 9),
                                               SHAPES[dims]))).sum().backward()
    h.remove()
    a, g = feats["a"][0].detach().numpy(), feats["a"].grad[0].numpy()
    want = np.maximum((g.reshape(len(g), -1).mean(1).reshape((-1,) + (1,) * dims) * a).sum(0), 0)
    layer = next(l.tensor for l in model.layers() if l.shape and tuple(l.shape[1:]) == a.shape
                 and "submodule/submodule" in l.tensor and l.op_type == "Add")
    region = np.array((3, 1, 12, 10) if dims == 2 else (3, 1, 2, 12, 10, 9))
    got = ox.GradCAM(model, target_layers=layer).compute_map(x[:1], RegionTarget(index=1, region=region))
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-3, atol=1e-4 * want.max())


@pytest.mark.parametrize("how", ["gradient", "occlusion", "rise"])
def test_toy_segmenter_region_explanations_hit_their_object(how):
    """The toy segmenter's class-1 logit at a pixel depends on its 3 × 3 neighbourhood only:
    the explanation of class 1 over object k's region peaks on object k (≥ 0.9), never on the others."""
    model = ox.Model(synthetic.toy_segmenter().SerializeToString(), verbose=False)
    x, masks = synthetic.detection_scene(6, seed=7)
    for k in range(len(masks)):
        target = RegionTarget(index=1, region=masks[k].astype(np.float32))
        if how == "gradient":
            sal = np.abs(ox.VanillaGrad(model).explain(x, target))
        elif how == "occlusion":
            sal = np.concatenate([ox.OcclusionSensitivity(model, mask_size=8, verbose=False).explain(x[i:i + 1], target)
                                  for i in range(len(x))])
        else:
            sal = ox.RISE(model, n_masks=200, cell_size=8, seed=0, verbose=False).explain(x, target)
        hits = [ox.metrics.pointing_game(sal, masks[j]).mean() for j in range(len(masks))]
        assert hits[k] >= 0.9 and all(h == 0 for j, h in enumerate(hits) if j != k), (how, k, hits)


def test_exported_segmentation_explainer_takes_class_and_region(unet):
    """export_explainer on a UNet: inputs class_idx and region ((B | 1, *s) weights, -1 =
    where the class is predicted, default ones = every position). The exported gradient
    equals torch autograd of the region score; the exported Grad-CAM equals GradCAM with
    the RegionTarget (itself checked against torch above)."""
    dims, net, model, x = unet
    xt = torch.from_numpy(x)
    layer = next(l.tensor for l in model.layers() if "submodule/submodule" in l.tensor and l.op_type == "Add")
    grad_model = ox.Model(ox.export_explainer(model, "vanilla").SerializeToString(), verbose=False)
    cam_model = ox.Model(ox.export_explainer(model, "gradcam", target_layers=layer).SerializeToString(), verbose=False)
    assert [i.name for i in grad_model.optional_inputs] == ["class_idx", "region"]
    for name, region, ref_mask in _regions(dims, xt, net):
        if name == "box":
            continue
        feed = -np.ones((1, *SHAPES[dims]), np.float32) if name == "predicted" else region[None]
        extra = {"class_idx": np.array([1]), "region": feed}
        xg = xt.clone().requires_grad_(True)
        (net(xg)[:, 1] * ref_mask).sum().backward()
        got = grad_model.predict(x, outputs=["saliency"], extra_inputs=extra)["saliency"]
        want = xg.grad.numpy()
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), name
        cam = cam_model.predict(x, outputs=["saliency"], extra_inputs=extra)["saliency"]
        ref = ox.GradCAM(model, target_layers=layer)(x, RegionTarget(index=1, region=region))
        np.testing.assert_allclose(cam, ref, atol=1e-5, err_msg=name)
    xg = xt.clone().requires_grad_(True)
    net(xg)[:, 2].sum().backward()  # default region: the class summed over every position
    got = grad_model.predict(x, outputs=["saliency"], extra_inputs={"class_idx": np.array([2])})["saliency"]
    assert np.abs(got - xg.grad.numpy()).max() <= 1e-4 * np.abs(xg.grad.numpy()).max()


def test_cli_explains_a_3d_region(tmp_path):
    """`onnx-xai explain unet3d.onnx vol.npy --region x0,y0,z0,x1,y1,z1 --target-class 1 --method
    vanilla` writes d region score / d input (one channel: the gradient itself), equal to torch autograd."""
    from onnx_xai.cli import main

    net, model = _unet(3)
    (tmp_path / "unet3d.onnx").write_bytes(export_onnx(net, torch.randn(2, 1, *SHAPES[3])))
    x = np.random.default_rng(9).normal(size=(1, 1, *SHAPES[3])).astype(np.float32)
    np.save(tmp_path / "vol.npy", x[0])
    assert main(["explain", str(tmp_path / "unet3d.onnx"), str(tmp_path / "vol.npy"), "--method", "vanilla",
                 "--region", "3,1,2,12,10,9", "--target-class", "1", "--out", str(tmp_path / "out"),
                 "--quiet"]) == 0
    got = np.load(tmp_path / "out" / "vol_npy_vanilla.npy")
    xg = torch.from_numpy(x).requires_grad_(True)
    (net(xg)[:, 1] * torch.from_numpy(box_mask((3, 1, 2, 12, 10, 9), SHAPES[3]))).sum().backward()
    want = xg.grad.numpy()[0, 0]
    assert got.shape == SHAPES[3] and np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "vol_npy_vanilla.png").is_file()
