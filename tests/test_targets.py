"""One definition of "what to explain": every registered method takes the same target objects
(a class, a class through softmax, a class over a region of a dense output, another output
tensor), and the black-box score of a target and the gradient models' score head agree.

References are analytic: on a linear model the gradient of Σ w·y is Σ w·W, and the score
difference between two inputs is that gradient times their difference; a linear classifier's
softmax gradient is p_c (W_c − Σ_k p_k W_k). Torch-free."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from onnx_xai import Model, registry
from onnx_xai.autodiff import gradient_model
from onnx_xai.targets import (ClassTarget, OutputTarget, RegionTarget, class_scorer, item_scorers,
                              per_sample_classes, positive_int, target, top_class)

F32 = onnx.TensorProto.FLOAT
RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 2)).astype(np.float32)       # 1x1 conv: 2 input channels → 3 classes
B = RNG.normal(size=3).astype(np.float32)
W1 = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)  # a spatial layer for the CAMs


def _dense_model(cam_branch: bool = False) -> Model:
    """x (N, 2, 6, 6) → y = W·x + b (N, 3, 6, 6), linear per pixel, and z (N,) = the mean of
    relu(conv3x3(x)) ("relu", a regression value). With ``cam_branch`` y also adds a 1x1 conv
    of "relu", so CAM methods have a spatial layer that y depends on (y is then not linear)."""
    inits = [onh.from_array(W[:, :, None, None], "W"), onh.from_array(B, "B"), onh.from_array(W1, "W1"),
             onh.from_array(RNG.normal(size=(3, 4, 1, 1)).astype(np.float32), "V")]
    nodes = [oh.make_node("Conv", ["x", "W1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("ReduceMean", ["r"], ["z"], axes=[1, 2, 3], keepdims=0, name="mean"),
             oh.make_node("Conv", ["x", "W", "B"], ["lin" if cam_branch else "y"], name="dense")]
    if cam_branch:
        nodes += [oh.make_node("Conv", ["r", "V"], ["rv"], name="head"),
                  oh.make_node("Add", ["lin", "rv"], ["y"], name="add")]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, ["N", 2, 6, 6])],
                      [oh.make_tensor_value_info("y", F32, ["N", 3, 6, 6]),
                       oh.make_tensor_value_info("z", F32, ["N"])], inits)
    return Model(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8),
                 device="cpu", verbose=False)


def _classifier() -> Model:
    """x (N, 2, 6, 6) → logits = Wc · flatten(x) (N, 3): linear."""
    wc = RNG.normal(size=(3, 72)).astype(np.float32)
    nodes = [oh.make_node("Flatten", ["x"], ["f"]), oh.make_node("Gemm", ["f", "Wc"], ["y"], transB=1)]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F32, ["N", 2, 6, 6])],
                      [oh.make_tensor_value_info("y", F32, ["N", 3])], [onh.from_array(wc, "Wc")])
    return Model(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8),
                 device="cpu", verbose=False), wc


MASK = np.zeros((6, 6), np.float32)
MASK[1:4, 2:5] = 1.0


def _expected_grad(tgt, out_shape):
    """Analytic input gradient of a dense-model target: Σ_k w[k, p] W[k, c] at each pixel p."""
    w = tgt.resolve(np.zeros(out_shape, np.float32)).weights(np.zeros(out_shape, np.float32))  # (N, 3, 6, 6)
    return np.einsum("nkhw,kc->nchw", w, W)


@pytest.mark.parametrize("tgt", [ClassTarget(index=1), ClassTarget(index=[0, 2]),
                                 RegionTarget(index=2, region=MASK), RegionTarget(index=[1, 0], region=MASK, reduce="mean"),
                                 RegionTarget(index=0, region=np.array([2, 1, 5, 4]))],
                         ids=["class", "per-sample", "region", "region-mean", "box"])
def test_gradient_and_black_box_scores_are_one_definition(tgt):
    model = _dense_model()
    x = RNG.normal(size=(2, 2, 6, 6)).astype(np.float32)
    gm = gradient_model(model, output="y", batch_size=2, activation=tgt.activation)
    grad = gm.run(x, tgt)["gradients"]["x"]
    np.testing.assert_allclose(grad, _expected_grad(tgt, (2, 3, 6, 6)), rtol=1e-5, atol=1e-6)
    # the black-box score of the same target: linear, so f(x) − f(0) = ∇ · x
    fixed = tgt.resolve(model.predict(x, outputs="y"))
    gap = fixed(model.predict(x, outputs="y")) - fixed(model.predict(np.zeros_like(x), outputs="y"))
    np.testing.assert_allclose(gap, (grad * x).reshape(2, -1).sum(1), rtol=1e-4)


def test_softmax_target_gradient_is_analytic():
    model, wc = _classifier()
    x = RNG.normal(size=(2, 2, 6, 6)).astype(np.float32) * 0.2
    tgt = ClassTarget(index=[2, 0], activation="softmax")
    grad = gradient_model(model, batch_size=2, activation="softmax").run(x, tgt)["gradients"]["x"]
    logits = x.reshape(2, -1).astype(np.float64) @ wc.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for n, c in enumerate([2, 0]):
        want = p[n, c] * (wc[c] - p[n] @ wc)
        np.testing.assert_allclose(grad[n].ravel(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tgt(model.predict(x)), p[[0, 1], [2, 0]], rtol=1e-5)
    with pytest.raises(ValueError, match="activation"):  # the head must apply the same activation
        gradient_model(model, batch_size=2).run(x, tgt)


def test_output_target_on_a_regression_output():
    model = _dense_model()
    x = RNG.normal(size=(2, 2, 6, 6)).astype(np.float32)
    tgt = OutputTarget(output="z")
    np.testing.assert_allclose(tgt(model.predict(x, outputs="z")), model.predict(x, outputs="z"), rtol=1e-6)
    grad = gradient_model(model, output="z", batch_size=2).run(x, tgt)["gradients"]["x"]
    # z = mean(relu(conv3x3(x))): dz/dx = Σ over the active outputs of the kernel taps / their count
    pad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = sum(np.einsum("oc,nchw->nohw", W1[:, :, i, j], pad[:, :, i:i + 6, j:j + 6])
               for i in range(3) for j in range(3))
    active = (conv > 0) / conv[0].size
    want = np.zeros((2, 2, 8, 8))
    for i in range(3):
        for j in range(3):
            want[:, :, i:i + 6, j:j + 6] += np.einsum("oc,nohw->nchw", W1[:, :, i, j], active)
    np.testing.assert_allclose(grad, want[:, :, 1:7, 1:7], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="one value per sample"):
        ClassTarget().weights(model.predict(x, outputs="z"))


METHODS = [i for i in registry.infos() if i.kind not in ("matlab", "token", "attention") and i.name != "cam"]


def _build(info, model):
    kw = {"target_layers": "relu"} if info.kind == "cam" else {}
    kw.update({k: v for k, v in {"n_masks": 64, "mask_size": 3, "n_samples": 3, "n_steps": 4,
                                   "overlap": 0.0, "seed": 0}.items()
               if k in info.impl.__init__.__code__.co_varnames})
    return info.impl(model, **kw)


@pytest.mark.parametrize("info", METHODS, ids=[i.name for i in METHODS])
@pytest.mark.parametrize("tgt", [ClassTarget(output="y", index=1), RegionTarget(output="y", index=2, region=MASK),
                                 ClassTarget(output="y", index=0, activation="softmax"),
                                 OutputTarget(output="z")],
                         ids=["class", "region", "softmax", "output"])
def test_every_method_takes_the_same_targets(info, tgt):
    model = _dense_model(cam_branch=True)
    x = np.random.default_rng(5).normal(size=(1, 2, 6, 6)).astype(np.float32)
    explainer = _build(info, model)
    if info.name in ("lime", "kernelshap"):  # surrogates: a class of a (B, K) output only
        with pytest.raises(ValueError, match="explains a class of output|class scores must be"):
            explainer.explain(x, tgt)
        return
    got = explainer.explain(x, tgt)
    assert got.shape[0] == 1 and got.shape[2:] == (6, 6) and got.shape[1] in (1, 2)
    assert np.isfinite(got).all()
    assert np.abs(got).max() > 0 or info.kind == "cam"  # a CAM's relu may leave nothing of a weak target


def test_shorthands_and_argument_checks():
    assert target(None) == ClassTarget()
    assert target(3).index == 3 and target([1, 2]).index == [1, 2]

    class ClassifierOutputTarget:  # pytorch-grad-cam's duck type
        category = 4
    assert target(ClassifierOutputTarget()).index == 4
    for bad in ("a", 1.5, [1.0], []):
        with pytest.raises(ValueError):
            target(bad)
    assert positive_int("n", 3) == 3
    for bad in (0, -1, 2.0, True, "1"):
        with pytest.raises(ValueError, match="n must be an integer"):
            positive_int("n", bad)
    assert per_sample_classes(None, 3) is None
    np.testing.assert_array_equal(per_sample_classes(2, 3, 4), [2, 2, 2])
    with pytest.raises(ValueError, match="out of range"):
        per_sample_classes([0, 4], 2, 4)
    with pytest.raises(ValueError, match="one per sample"):
        per_sample_classes([0, 1, 2], 2, 4)
    np.testing.assert_array_equal(top_class(np.array([[0, 3, 1], [5, 0, 0]])), [1, 0])
    with pytest.raises(ValueError, match="activation"):
        ClassTarget(activation="relu")
    with pytest.raises(ValueError, match="box"):
        RegionTarget(index=0, region=np.array([4, 4, 2, 2])).weights(np.zeros((1, 3, 6, 6)))
    with pytest.raises(ValueError, match="region mask must have shape"):
        RegionTarget(index=0, region=np.ones((5, 5))).weights(np.zeros((1, 3, 6, 6)))


def test_black_box_scorers_match_targets():
    raw = RNG.normal(size=(2, 3)).astype(np.float32)
    probs = class_scorer(True)(raw)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    scorers, classes = item_scorers(None, True, raw)
    assert [c[0] for c in classes] == list(raw.argmax(1))
    by_target, _ = item_scorers(ClassTarget(activation="softmax"), None, raw)
    for i in range(2):
        np.testing.assert_allclose(scorers[i](raw[i:i + 1]), by_target[i](raw[i:i + 1]), rtol=1e-6)
    with pytest.raises(ValueError, match="activate must be"):
        class_scorer("softmax")


@pytest.mark.parametrize("name", ["lime", "kernelshap"])
def test_surrogates_explain_class_targets(name):
    model, _ = _classifier()
    x = RNG.normal(size=(2, 2, 6, 6)).astype(np.float32)
    explainer = registry.get(name).impl(model, n_samples=16, feature_mask="grid", n_features=4, seed=0)
    np.testing.assert_allclose(explainer.explain(x, ClassTarget(index=[1, 2])), explainer(x, [1, 2]))
    with pytest.raises(ValueError, match="activation"):
        explainer.explain(x, ClassTarget(index=1, activation="softmax"))
