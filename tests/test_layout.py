"""Channel-last (NHWC) models: a seeded-random Keras CNN converted by tf2onnx
(``tests/data/exporters/make_tf2onnx.py``; TensorFlow's own outputs, GradientTape input
gradients and a Grad-CAM map made with NumPy from TF's tensors in the npz). Every method runs
with ``layout="auto"``; maps are in image coordinates ``(B, 1, 32, 32)``; input-shaped results
are channel-last. Occlusion is checked against an NCHW twin graph (the same graph behind a
Transpose, made here with onnx.helper) run as a plain channel-first model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import onnx_xai as ox
from onnx_xai import layout
from onnx_xai.export import export_explainer
from onnx_xai.matlab import grad_cam, occlusion_sensitivity
from onnx_xai.methods.cam import CAM, EigenCAM, GradCAM, GradCAMpp, LayerCAM, ScoreCAM
from onnx_xai.methods.lime import LIME, KernelSHAP
from onnx_xai.methods.occlusion import OcclusionSensitivity
from onnx_xai.methods.rise import RISE
from onnx_xai.methods.saliency import InputXGradient, IntegratedGradients, SmoothGrad, VanillaGrad

DATA = Path(__file__).parent / "data" / "exporters"
MODEL = DATA / "tf2onnx_cnn.onnx"
LAYER = "tfcnn_1/conv3_1/Relu"  # tf2onnx pushes its transposes to the input: NCHW feature maps
REF = np.load(DATA / "tf2onnx_cnn_ref.npz")
X, CLASSES = REF["x"], REF["classes"]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _nchw_twin() -> ox.Model:
    """The tf2onnx graph behind a Transpose: a plain channel-first model (the reference the
    folding must reproduce), made independently of onnx_xai.layout."""
    proto = onnx.load(MODEL)
    g = proto.graph
    for node in g.node:
        node.input[:] = ["image_nhwc" if i == "image" else i for i in node.input]
    g.node.insert(0, oh.make_node("Transpose", ["image"], ["image_nhwc"], perm=[0, 2, 3, 1]))
    value = g.input[0]
    del value.type.tensor_type.shape.dim[:]
    for d in ("N", 3, 32, 32):
        dim = value.type.tensor_type.shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d
    return ox.Model(proto, verbose=False, layout="nchw")


@pytest.fixture(scope="module")
def model():
    return ox.Model(MODEL, verbose=False)


def test_auto_detects_nhwc_and_tf_outputs(model):
    assert layout.detect(model) == "nhwc"
    assert layout.resolve(model, "nchw") == "nchw"
    np.testing.assert_allclose(model.predict(X), REF["logits"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="layout must be one of"):
        ox.Model(MODEL, layout="hwc")


def test_input_gradients_equal_tensorflow(model):
    got = VanillaGrad(model)(X, CLASSES)
    assert got.shape == X.shape  # channel-last, as the input
    assert _rel(got, REF["input_grads"]) < 1e-4
    ixg = InputXGradient(model)(X, CLASSES)
    assert _rel(ixg, X * REF["input_grads"]) < 1e-4


def test_gradcam_equals_tensorflow(model):
    raw = GradCAM(model, LAYER).compute_map(X, CLASSES)
    assert raw.shape == (4, 1, 16, 16)
    assert _rel(raw, REF["gradcam"]) < 1e-4
    maps = GradCAM(model, LAYER, postprocessing=lambda a: a)(X, CLASSES)
    assert maps.shape == (4, 1, 32, 32)
    matlab = grad_cam(model, X[0], int(CLASSES[0]), output_upsampling="none")
    assert _rel(matlab, REF["gradcam"][0, 0]) < 1e-4


def test_every_method_gives_image_coordinates(model):
    maps = {
        "cam": CAM(model, LAYER)(X), "gradcampp": GradCAMpp(model, LAYER)(X),
        "layercam": LayerCAM(model, LAYER)(X), "eigencam": EigenCAM(model, LAYER)(X),
        "scorecam": ScoreCAM(model, LAYER, verbose=False)(X[:2]),
        "rise": RISE(model, n_masks=16, seed=0)(X[:2]),
    }
    for name, m in maps.items():
        assert m.shape[1:] == (1, 32, 32), name
        assert np.isfinite(m).all(), name
    for attribution in (SmoothGrad(model, n_samples=3, seed=0, verbose=False)(X[:2]),
                        IntegratedGradients(model, n_steps=4)(X[:2]),
                        LIME(model, n_samples=12, feature_mask="grid", seed=0)(X[:2]),
                        KernelSHAP(model, n_samples=12, feature_mask="grid", seed=0)(X[:2])):
        assert attribution.shape == X[:2].shape


def test_methods_equal_the_nchw_twin(model):
    """Folded at the edges: the numbers of the channel-first twin, transposed where input-shaped."""
    twin, xcf = _nchw_twin(), np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    occ = OcclusionSensitivity(model, mask_size=8, verbose=False)(X[:1])[0]
    np.testing.assert_allclose(occ, OcclusionSensitivity(twin, mask_size=8, verbose=False)(xcf[:1])[0],
                               rtol=1e-5, atol=1e-6)
    assert occ.shape == (1, 5, 32, 32)
    np.testing.assert_allclose(RISE(model, n_masks=16, seed=3)(X), RISE(twin, n_masks=16, seed=3)(xcf),
                               rtol=1e-5, atol=1e-6)
    ig = IntegratedGradients(model, n_steps=4, baseline=0.5 * X[0])(X)
    ig_twin = IntegratedGradients(twin, n_steps=4, baseline=0.5 * xcf[0])(xcf)
    np.testing.assert_allclose(ig, ig_twin.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-6)
    lime = LIME(model, n_samples=16, feature_mask="grid", seed=0)(X[:1])
    lime_twin = LIME(twin, n_samples=16, feature_mask="grid", seed=0)(xcf[:1])
    np.testing.assert_allclose(lime, lime_twin.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-6)
    matlab = occlusion_sensitivity(model, X[0], 2, verbose=False)
    np.testing.assert_allclose(matlab, occlusion_sensitivity(twin, xcf[0], 2, verbose=False),
                               rtol=1e-5, atol=1e-6)


def test_explicit_layout_overrides_auto(model):
    """layout="nchw" on a channel-last model reads (N, 32, 32, 3) as channel-first: its
    "spatial" axes are (32, 3), which the window does not fit (the issue's old message)."""
    with pytest.raises(ValueError, match="larger than the image"):
        OcclusionSensitivity(model, mask_size=8, verbose=False, layout="nchw")(X[:1])
    with pytest.raises(ValueError, match="channel-last"):
        VanillaGrad(model)(X[0])  # no batch axis


@pytest.mark.parametrize("method", ["gradcam", "vanilla", "layercam"])
def test_exported_explainer_takes_nhwc(model, method):
    proto = export_explainer(model, method, LAYER if method != "vanilla" else None)
    explainer = ox.Model(proto, verbose=False, layout="nchw")
    assert explainer.input.shape[1:] == (32, 32, 3)
    got = explainer.predict(X, outputs=["saliency", explainer.output_names[0]])
    np.testing.assert_allclose(got[explainer.output_names[0]], REF["logits"], rtol=1e-5, atol=1e-5)
    want = {"gradcam": lambda: GradCAM(model, LAYER)(X), "layercam": lambda: LayerCAM(model, LAYER)(X),
            "vanilla": lambda: VanillaGrad(model)(X)}[method]()
    assert got["saliency"].shape == want.shape
    np.testing.assert_allclose(got["saliency"], want, rtol=1e-4, atol=1e-5)


def test_sidecar_layout_wins(tmp_path):
    """A model whose shape reads as channel-first is channel-last when its sidecar says so."""
    path = tmp_path / "m.onnx"
    onnx.save(onnx.load(MODEL), path)
    assert layout.detect(ox.Model(path, verbose=False)) == "nhwc"
    (tmp_path / "m.json").write_text('{"layout": "nchw"}')
    assert layout.detect(ox.Model(path, verbose=False)) == "nchw"


def test_cli_explains_and_exports_nhwc(tmp_path):
    """``onnx-xai explain`` on the channel-last model: an NHWC .npy sample, gradcam and vanilla
    maps equal the Python classes; an exported explainer (channel-last input) runs too."""
    from onnx_xai.cli import main
    from onnx_xai.methods.cam import minmax_normalizer

    np.save(tmp_path / "s.npy", X[1])
    args = [str(MODEL), str(tmp_path / "s.npy"), "--quiet", "--threads", "1"]
    assert main(["explain", *args, "--method", "gradcam,vanilla", "--layer", LAYER, "--out", str(tmp_path / "o")]) == 0
    model = ox.Model(MODEL, verbose=False)
    cam = GradCAM(model, LAYER, postprocessing=minmax_normalizer)(X[1:2])[0, 0]
    np.testing.assert_allclose(np.load(tmp_path / "o" / "s_npy_gradcam.npy"), cam, rtol=1e-4, atol=1e-5)
    grads = VanillaGrad(model)(X[1:2])[0]
    np.testing.assert_allclose(np.load(tmp_path / "o" / "s_npy_vanilla.npy"), np.abs(grads).sum(-1),
                               rtol=1e-4, atol=1e-7)
    assert main(["export", str(MODEL), "--method", "vanilla", "-o", str(tmp_path / "e.onnx")]) == 0
    assert main(["explain", str(tmp_path / "e.onnx"), *args[1:], "--out", str(tmp_path / "e")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e" / "s_npy_embedded.npy"), np.abs(grads).sum(-1),
                               rtol=1e-4, atol=1e-7)


def test_nhwc_feature_map_is_read_through_its_nchw_twin(tmp_path):
    """A Keras graph converted without the transpose optimiser keeps NHWC tensors between
    layers: a CAM of one equals the CAM of the channel-first tensor it transposes."""
    proto = onnx.load(MODEL)
    g = proto.graph
    at = next(i for i, n in enumerate(g.node) if n.name == LAYER)
    tensor = g.node[at].output[0]
    for node in g.node[at + 1:]:
        node.input[:] = ["back" if i == tensor else i for i in node.input]
    g.node.insert(at + 1, oh.make_node("Transpose", [tensor], ["feat_nhwc"], perm=[0, 2, 3, 1]))
    g.node.insert(at + 2, oh.make_node("Transpose", ["feat_nhwc"], ["back"], perm=[0, 3, 1, 2]))
    model = ox.Model(proto, verbose=False)
    want = GradCAM(ox.Model(MODEL, verbose=False), LAYER)(X)
    np.testing.assert_allclose(GradCAM(model, "feat_nhwc")(X), want, rtol=1e-5, atol=1e-6)
    explainer = ox.Model(export_explainer(model, "gradcam", "feat_nhwc"), verbose=False, layout="nchw")
    np.testing.assert_allclose(explainer.predict(X, outputs=["saliency"])["saliency"], want, rtol=1e-4, atol=1e-5)
