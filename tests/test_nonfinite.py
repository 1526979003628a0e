"""Non-finite numbers (NaN, ±inf): one policy across every method and metric (``onnx_xai.finite``).

- a NaN / inf in the input → ``ValueError`` naming the count and the first index;
- the model's output NaN on the unperturbed input → ``NonFiniteError`` naming the output;
- NaN on some perturbed copies only → ``NonFiniteWarning`` with the count and a finite map
  (IntegratedGradients refuses: its quadrature needs every path point);
- NaN / inf numeric arguments → ``ValueError``.

The model: ``y = W · GAP(relu(conv1x1(x))) + sqrt(mean(x[..., 4:]) − t)`` on (B, 1, 8, 8). On the
ramp input (right-half mean 1.6875) it is finite for t < 1.6875 and NaN for t > 1.6875;
occluding / masking / noising the right half drives the mean below t for some copies only.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_xai
from onnx_xai import (CAM, RISE, EigenCAM, GradCAM, GradCAMpp, GuidedBackpropGrad,
                      GuidedBackpropSmoothGrad, HiResCAM, InputXGradient, IntegratedGradients,
                      LayerCAM, Model, NonFiniteError, NonFiniteWarning, OcclusionSensitivity,
                      SaliencyNet, ScoreCAM, SmoothGrad, VanillaGrad, XGradCAM, grad_cam, metrics,
                      occlusion_sensitivity)


def nan_model(threshold: float, size: int = 8) -> bytes:
    """(B, 1, S, S) → (B, 3): ``W · GAP(relu(conv1x1(x))) + sqrt(mean(x[..., S/2:]) − threshold)``;
    layer "act" (B, 2, S, S) is the CAM target, "fc" the Gemm after global pooling."""
    h = helper
    inits = [
        numpy_helper.from_array(np.array([[[[1.0]]], [[[-1.0]]]], np.float32), "cw"),
        numpy_helper.from_array(np.array([0.0, 3.0], np.float32), "cb"),
        numpy_helper.from_array(np.array([[1.0, -0.5], [-0.3, 0.8], [0.2, 0.1]], np.float32), "fw"),
        numpy_helper.from_array(np.array([0.1, -0.2, 0.0], np.float32), "fb"),
        numpy_helper.from_array(np.array([size // 2], np.int64), "s0"),
        numpy_helper.from_array(np.array([size], np.int64), "s1"),
        numpy_helper.from_array(np.array([3], np.int64), "ax"),
        numpy_helper.from_array(np.array(threshold, np.float32), "th"),
    ]
    nodes = [
        h.make_node("Conv", ["x", "cw", "cb"], ["conv"], name="conv"),
        h.make_node("Relu", ["conv"], ["act"], name="relu"),
        h.make_node("GlobalAveragePool", ["act"], ["gap"], name="gap"),
        h.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"),
        h.make_node("Gemm", ["flat", "fw", "fb"], ["lin"], transB=1, name="fc"),
        h.make_node("Slice", ["x", "s0", "s1", "ax"], ["right"], name="slice"),
        h.make_node("ReduceMean", ["right"], ["m"], axes=[1, 2, 3], keepdims=1, name="mean"),
        h.make_node("Sub", ["m", "th"], ["d"], name="sub"),
        h.make_node("Sqrt", ["d"], ["r"], name="sqrt"),
        h.make_node("Flatten", ["r"], ["rf"], axis=1, name="flatten_r"),
        h.make_node("Add", ["lin", "rf"], ["y"], name="add"),
    ]
    g = h.make_graph(nodes, "nan_model",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, size, size])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8).SerializeToString()


X = (1.0 + np.broadcast_to(np.arange(8, dtype=np.float32) / 8, (8, 8)))[None, None].copy()
SAL = np.zeros((1, 1, 8, 8), np.float32)
SAL[..., 4:] = 1.0  # deletion removes the right half first


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(threshold):
        if threshold not in cache:
            cache[threshold] = Model(nan_model(threshold), threads=1, verbose=False)
        return cache[threshold]
    return get


def hwc(x):
    return x[0].transpose(1, 2, 0)


# name → map of (model, x); every public method
METHODS = {
    "OcclusionSensitivity": lambda m, x: OcclusionSensitivity(m, mask_size=4, mode=0.0, verbose=False)(x)[0],
    "occlusion_sensitivity": lambda m, x: occlusion_sensitivity(m, hwc(x), 0, mask_size=4, stride=2,
                                                                mask_value=0.0, verbose=False),
    "RISE": lambda m, x: RISE(m, n_masks=200, cell_size=4, seed=0, verbose=False)(x),
    "CAM": lambda m, x: CAM(m, "act")(x),
    "GradCAM": lambda m, x: GradCAM(m, "act")(x),
    "GradCAMpp": lambda m, x: GradCAMpp(m, "act")(x),
    "LayerCAM": lambda m, x: LayerCAM(m, "act")(x),
    "XGradCAM": lambda m, x: XGradCAM(m, "act")(x),
    "HiResCAM": lambda m, x: HiResCAM(m, "act")(x),
    "EigenCAM": lambda m, x: EigenCAM(m, "act")(x),
    "ScoreCAM": lambda m, x: ScoreCAM(m, "act", verbose=False)(x),
    "grad_cam": lambda m, x: grad_cam(m, hwc(x), 0, feature_layer="act"),
    "VanillaGrad": lambda m, x: VanillaGrad(m)(x),
    "SmoothGrad": lambda m, x: SmoothGrad(m, n_samples=25, verbose=False, seed=0)(x),
    "GuidedBackpropGrad": lambda m, x: GuidedBackpropGrad(m)(x),
    "GuidedBackpropSmoothGrad": lambda m, x: GuidedBackpropSmoothGrad(m, n_samples=25, verbose=False,
                                                                      seed=0)(x),
    "IntegratedGradients": lambda m, x: IntegratedGradients(m, n_steps=8)(x),
    "InputXGradient": lambda m, x: InputXGradient(m)(x),
    "SaliencyNet": lambda m, x: SaliencyNet(m, "x", "y", seed=0).get_smoothed_masks(
        {"x": x}, nsamples=25)["saliency"],
    "SaliencyNet.integrated": lambda m, x: SaliencyNet(m, "x", "y", seed=0).get_integrated_masks(
        {"x": x}, nsamples=8)["saliency"],
    "deletion": lambda m, x: metrics.deletion(m, x, SAL, n_steps=16).auc,
    "insertion": lambda m, x: metrics.insertion(m, x, SAL, n_steps=16).auc,
}
FINITE = -10.0  # the model is finite on every input used here


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("name", sorted(METHODS))
def test_nan_in_the_input_is_a_value_error_naming_count_and_position(models, name):
    x = X.copy()
    x[0, 0, 3, 5] = np.nan
    x[0, 0, 6, 1] = np.inf
    with pytest.raises(ValueError, match="2 non-finite values") as info:
        METHODS[name](models(FINITE), x)
    assert not isinstance(info.value, NonFiniteError)  # the user's input, not the model
    first = "(3, 5, 0)" if name in ("occlusion_sensitivity", "grad_cam") else "(0, 0, 3, 5)"
    assert f"first at index {first}" in str(info.value)
    assert "NaN, inf" in str(info.value)


def test_input_that_overflows_the_model_dtype_says_so(models):
    x = X.astype(np.float64)
    x[0, 0, 1, 2] = 1e39  # finite in float64, inf in the model's float32
    with pytest.raises(ValueError, match=r"input 'x' \(as float32\) holds 1 non-finite value .*\(0, 0, 1, 2\)"):
        models(FINITE).predict(x)


@pytest.mark.parametrize("fn", ["deletion", "insertion"])
def test_metrics_refuse_non_finite_maps(models, fn):
    sal = SAL.copy()
    sal[0, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"saliency map holds 1 non-finite value .*\(0, 0, 2, 2\)"):
        getattr(metrics, fn)(models(FINITE), X, sal, n_steps=4)
    with pytest.raises(ValueError, match="64 non-finite values"):  # today: a finite AUC
        getattr(metrics, fn)(models(FINITE), X, np.full_like(SAL, np.nan), n_steps=4)


@pytest.mark.parametrize("fn", [metrics.pointing_game, metrics.energy_in_box])
def test_localisation_metrics_refuse_non_finite_maps(fn):
    sal = SAL.copy()
    sal[0, 0, 7, 7] = -np.inf
    with pytest.raises(ValueError, match=r"1 non-finite value \(-inf\) .*\(0, 0, 7, 7\)"):
        fn(sal, np.ones((8, 8), bool))


# ----------------------------------------------------------------------------- the model on x
@pytest.mark.parametrize("name", sorted(METHODS))
def test_nan_output_on_the_unperturbed_input_is_a_non_finite_error(models, name):
    broken = models(5.0)  # sqrt(1.6875 − 5) on the input itself
    with pytest.raises(NonFiniteError, match="output 'y'"):
        METHODS[name](broken, X)


def test_infinite_gradient_at_the_input_names_the_gradient(models):
    at_kink = models(1.6875)  # sqrt(0) = 0 on the input; its derivative is infinite
    assert np.isfinite(at_kink.predict(X)).all()
    with pytest.raises(NonFiniteError, match="gradient of output 'y' w.r.t. 'x'"):
        VanillaGrad(at_kink)(X)
    with pytest.raises(NonFiniteError, match="gradient"):
        SaliencyNet(at_kink, "x", "y").get_masks({"x": X})
    assert np.isfinite(GradCAM(at_kink, "act")(X)).all()  # the layer's gradient is finite


def test_errors_are_project_errors_and_value_errors():
    assert issubclass(NonFiniteError, onnx_xai.OnnxXaiError) and issubclass(NonFiniteError, ValueError)
    assert issubclass(NonFiniteWarning, RuntimeWarning)


# ----------------------------------------------------------------------------- perturbed copies
# (method, threshold): NaN for some perturbed copies only → the warning and a finite map
PARTIAL = {
    "OcclusionSensitivity": 1.2, "occlusion_sensitivity": 1.2, "RISE": 0.6, "ScoreCAM": 1.2,
    "SmoothGrad": 1.665, "GuidedBackpropSmoothGrad": 1.665, "SaliencyNet": 1.665, "deletion": 1.2,
}


@pytest.mark.parametrize("name", sorted(PARTIAL))
def test_nan_on_some_perturbed_copies_warns_with_the_count_and_gives_a_finite_map(models, name):
    model = models(PARTIAL[name])
    assert np.isfinite(model.predict(X)).all()
    with pytest.warns(NonFiniteWarning, match=r"not finite \(NaN or inf\) for \d+ of \d+") as record:
        out = METHODS[name](model, X)
    assert np.isfinite(out).all()
    bad, total = (int(v) for v in str(record[0].message).split(" for ")[1].split(" ")[0:3:2])
    assert 0 < bad < total


def test_insertion_from_a_zero_baseline_interpolates_the_nan_steps(models):
    with pytest.warns(NonFiniteWarning, match="insertion"):
        curve = metrics.insertion(models(1.2), X, SAL, n_steps=16, baseline=0.0)
    assert np.isfinite(curve.scores).all() and np.isfinite(curve.auc).all()
    # the steps held constant before the first finite one (the right half inserted first)
    assert np.all(curve.scores[0, :2] == curve.scores[0, 2])


@pytest.mark.parametrize("name", ["CAM", "GradCAM", "GradCAMpp", "LayerCAM", "XGradCAM", "HiResCAM",
                                  "EigenCAM", "grad_cam", "VanillaGrad", "GuidedBackpropGrad",
                                  "InputXGradient", "SaliencyNet.integrated"])
def test_methods_without_nan_copies_give_finite_maps_silently(models, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)
        out = METHODS[name](models(1.2), X)
    assert np.isfinite(out).all()


def test_integrated_gradients_refuses_nan_path_points(models):
    # from the zero baseline the right-half mean starts below 1.2: the first path points are NaN
    with pytest.raises(NonFiniteError, match=r"at \d+ of the 8 path points of image 0"):
        IntegratedGradients(models(1.2), n_steps=8)(X)
    # a baseline where the model is defined works
    attr = IntegratedGradients(models(1.2), baseline=1.5, n_steps=8)(X)
    assert np.isfinite(attr).all()


def test_smoothgrad_averages_the_finite_noisy_samples(models):
    model = models(1.665)
    with pytest.warns(NonFiniteWarning, match="SmoothGrad"):
        got = SmoothGrad(model, stdev_spread=0.15, n_samples=25, magnitude=False, seed=0,
                         verbose=False)(X)
    std = np.float32(0.15 * (X.max() - X.min()))
    noisy = X + np.random.default_rng(0).standard_normal((25, 1, 8, 8), dtype=np.float32) * std
    grads = []
    for sample in noisy:
        try:
            grads.append(VanillaGrad(model)(sample[None]))
        except NonFiniteError:
            pass
    assert 0 < len(grads) < 25
    np.testing.assert_allclose(got, np.mean(grads, axis=0), rtol=1e-5, atol=1e-6)


def test_occlusion_blends_only_the_finite_windows(models):
    """Points covered by finite windows hold their weighted average; the others the nearest one's."""
    model = models(1.2)
    with pytest.warns(NonFiniteWarning, match="OcclusionSensitivity.* 3 of 9"):
        occ, classes = OcclusionSensitivity(model, mask_size=4, mode=0.0, overlap=0.5, verbose=False,
                                            activate=False)(X)
    # windows start at 0, 2, 4 (3 × 3 = 9 windows at overlap 0.5): recompute from the finite ones
    starts = [(i, j) for i in (0, 2, 4) for j in (0, 2, 4)]
    total, weight = np.zeros((3, 8, 8)), np.zeros((8, 8))
    for i, j in starts:
        xo = X.copy()
        xo[..., i:i + 4, j:j + 4] = 0.0
        s = model.predict(xo)[0]
        if np.isfinite(s).all():
            total[:, i:i + 4, j:j + 4] += s[:, None, None]
            weight[i:i + 4, j:j + 4] += 1
    covered = weight > 0
    assert covered.any() and not covered.all()
    np.testing.assert_allclose(occ[0][:, covered], (total / np.maximum(weight, 1))[:, covered], rtol=1e-5)
    assert np.isfinite(occ).all() and (classes >= 0).all()


def test_matlab_occlusion_fills_nan_positions_from_the_nearest_finite_one(models):
    model = models(1.2)
    with pytest.warns(NonFiniteWarning, match="occlusion_sensitivity.* 3 of 16"):
        grid = occlusion_sensitivity(model, hwc(X), [0, 1], mask_size=4, stride=2, mask_value=0.0,
                                     output_upsampling="none", verbose=False)
    assert grid.shape == (4, 4, 2) and np.isfinite(grid).all()


def test_no_finite_copy_at_all_is_a_non_finite_error(models):
    # one window over the whole image; masks never keep enough of the right half for t = 1.68
    with pytest.raises(NonFiniteError, match="every one of the"):
        OcclusionSensitivity(models(1.2), mask_size=8, mode=0.0, verbose=False)(X)
    with pytest.raises(NonFiniteError, match="every one of the"):
        RISE(models(1.68), n_masks=16, cell_size=2, seed=0, verbose=False)(X)


def test_a_callable_mode_returning_nan_is_a_value_error(models):
    occ = OcclusionSensitivity(models(FINITE), mask_size=4, mode=lambda x, p: p * np.nan, verbose=False)
    with pytest.raises(ValueError, match="occlusion callable returned a patch with non-finite"):
        occ(X)


# ----------------------------------------------------------------------------- arguments
BAD_ARGS = {
    "IG baseline=nan": lambda m: IntegratedGradients(m, baseline=np.nan),
    "IG baseline=inf": lambda m: IntegratedGradients(m, baseline=float("inf")),
    "IG baseline array with nan": lambda m: IntegratedGradients(m, baseline=np.where(X > 1.5, np.nan, 0)),
    "SmoothGrad stdev_spread=inf": lambda m: SmoothGrad(m, stdev_spread=np.inf),
    "SmoothGrad stdev_spread=nan": lambda m: SmoothGrad(m, stdev_spread=np.nan),
    "SaliencyNet stdev_spread=inf": lambda m: SaliencyNet(m, "x", "y").get_smoothed_masks(
        {"x": X}, stdev_spread=np.inf),
    "occlusion mode=nan": lambda m: OcclusionSensitivity(m, mode=np.nan),
    "occlusion mode=-inf": lambda m: OcclusionSensitivity(m, mode=-np.inf),
    "occlusion mode=np.float32(nan)": lambda m: OcclusionSensitivity(m, mode=np.float32("nan")),
    "occlusion overlap=nan": lambda m: OcclusionSensitivity(m, overlap=np.nan),
    "occlusion overlap='0.5'": lambda m: OcclusionSensitivity(m, overlap="0.5"),
    "RISE p1=nan": lambda m: RISE(m, p1=np.nan),
    "RISE p1=None": lambda m: RISE(m, p1=None),
    "MATLAB mask_value=nan": lambda m: occlusion_sensitivity(m, hwc(X), 0, mask_value=np.nan, verbose=False),
    "MATLAB mask_value=[inf]": lambda m: occlusion_sensitivity(m, hwc(X), 0, mask_value=[np.inf],
                                                               verbose=False),
    "deletion baseline=nan": lambda m: metrics.deletion(m, X, SAL, baseline=np.nan),
    "insertion baseline=inf array": lambda m: metrics.insertion(m, X, SAL, baseline=np.full_like(X, np.inf)),
    "insertion blur_sigma=nan": lambda m: metrics.insertion(m, X, SAL, blur_sigma=np.nan),
    "pointing_game tolerance=nan": lambda m: metrics.pointing_game(SAL, np.ones((8, 8), bool),
                                                                   tolerance=np.nan),
}


@pytest.mark.parametrize("name", sorted(BAD_ARGS))
def test_non_finite_arguments_are_value_errors(models, name):
    with pytest.raises(ValueError, match="finite|overflow") as info:
        BAD_ARGS[name](models(FINITE))
    assert not isinstance(info.value, NonFiniteError)
