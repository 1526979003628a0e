"""LIME, KernelSHAP and image_lime against exact Shapley values and weights of linear models,
Captum's Lime / KernelShap / ShapleyValues on the same coalitions, scikit-learn's regression
tree, and their arguments."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
from onnx import TensorProto, helper, numpy_helper

import onnx_xai
from onnx_xai import KernelSHAP, LIME, NonFiniteError, NonFiniteWarning, image_lime
from onnx_xai.engines import surrogate as engine
from onnx_xai.engines.segmentation import grid_labels, grid_shape
from onnx_xai.kernels import surrogate as kern


def linear_model(w: np.ndarray, b: np.ndarray | None = None, tail: str | None = None) -> bytes:
    """ONNX ``y = W · flatten(x) + b`` (then ``tail``, a unary op) for ``w`` ``(K, C, *spatial)``."""
    k, shape = w.shape[0], list(w.shape[1:])
    b = np.zeros(k, np.float32) if b is None else b
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w", "b"], ["g" if tail else "y"], transB=1)]
    if tail:
        nodes.append(helper.make_node(tail, ["g"], ["y"]))
    g = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", k])],
        [numpy_helper.from_array(w.reshape(k, -1).astype(np.float32), "w"),
         numpy_helper.from_array(np.asarray(b, np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def exact_shapley(w: np.ndarray, x: np.ndarray, base, mask: np.ndarray, cls: int) -> np.ndarray:
    """Shapley values of the groups of a linear model: Σ_{e ∈ g} w_e (x_e − b_e), ``(N, M)``."""
    lab = np.broadcast_to(mask, x.shape)
    m = int(lab.max()) + 1
    diff = (x - np.broadcast_to(base, x.shape)).astype(np.float64)
    return np.stack([np.bincount(lab[i].ravel(), weights=(w[cls] * diff[i]).ravel(), minlength=m)
                     for i in range(len(x))])


@pytest.fixture(scope="module")
def lin2d():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 16, 16))
    return w, linear_model(w, np.array([0.3, -0.2, 0.1])), rng.normal(size=(2, 3, 16, 16)).astype(np.float32)


# ----------------------------------------------------------------------------- analytic
def test_kernelshap_all_coalitions_is_the_exact_shapley_values(lin2d):
    w, model, x = lin2d
    mask = grid_labels((16, 16), 9)[None, None]                         # 9 groups → 512 coalitions
    ks = KernelSHAP(model, n_samples=512, perturbations_per_eval=128, feature_mask=mask,
                    baselines=0.25, verbose=False)
    phi = ks(x, 1, return_input_shape=False)
    np.testing.assert_allclose(phi, exact_shapley(w, x, 0.25, mask, 1), atol=1e-4)
    attr = ks(x, 1)                                                      # Captum's layout
    assert attr.shape == x.shape and attr.dtype == np.float32
    np.testing.assert_allclose(attr[:, 0], phi[:, mask[0, 0]], atol=1e-6)
    f = onnx_xai.Model(model).predict(x)[:, 1] - onnx_xai.Model(model).predict(np.full_like(x, 0.25))[:, 1]
    np.testing.assert_allclose(phi.sum(1), f, atol=1e-4)                # efficiency


def test_kernelshap_sampled_coalitions_3d_and_per_channel_groups():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(2, 2, 6, 6, 6))
    model = linear_model(w)
    x = rng.normal(size=(1, 2, 6, 6, 6)).astype(np.float32)
    mask = (np.arange(2 * 216).reshape(1, 2, 6, 6, 6) // 18)            # 24 groups, per channel
    base = rng.normal(size=(1, 2, 6, 6, 6)).astype(np.float32)
    phi = KernelSHAP(model, n_samples=200, perturbations_per_eval=64, feature_mask=mask, baselines=base,
                     seed=0, verbose=False)(x, 0, return_input_shape=False)
    np.testing.assert_allclose(phi, exact_shapley(w, x, base, mask, 0), atol=1e-4)


def test_lime_linear_surrogate_recovers_the_group_weights(lin2d):
    w, model, x = lin2d
    mask = grid_labels((16, 16), 16)[None, None]
    exact = exact_shapley(w, x, 0.0, mask, 2)
    lasso = LIME(model, n_samples=400, perturbations_per_eval=100, feature_mask=mask, seed=0,
                 verbose=False)(x, 2, return_input_shape=False)
    for item in range(len(x)):
        assert scipy.stats.spearmanr(lasso[item], exact[item])[0] >= 0.95
    ols = LIME(model, n_samples=400, perturbations_per_eval=100, feature_mask=mask, seed=0,
               surrogate="linear", verbose=False)(x, 2, return_input_shape=False)
    np.testing.assert_allclose(ols, exact, atol=1e-4)                   # a linear model is fitted exactly


def test_image_lime_grid_on_a_linear_model():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(2, 3, 24, 24))
    model = linear_model(w)
    X = rng.normal(size=(24, 24, 3)).astype(np.float32) + 1.0           # MATLAB's (H, W, C)
    xcf = X.transpose(2, 0, 1)[None]
    labels = grid_labels((24, 24), 16)
    exact = exact_shapley(w, xcf, xcf.mean((2, 3), keepdims=True), labels[None, None], 1)[0]
    smap, fmap, imp = image_lime(model, X, 1, num_features=16, num_samples=600, segmentation="grid",
                                 model="linear", output_upsampling="none", seed=0, verbose=False)
    assert smap.shape == grid_shape((24, 24), 16) == (4, 4) and fmap.shape == (24, 24) and imp.shape == (16,)
    np.testing.assert_array_equal(fmap, labels)
    assert scipy.stats.spearmanr(imp, exact)[0] >= 0.95
    np.testing.assert_allclose(smap.ravel(), imp)
    tree_map, _, tree_imp = image_lime(model, X, [1, 0], num_features=16, num_samples=600,
                                       segmentation="grid", seed=0, verbose=False)
    assert tree_map.shape == (24, 24, 2) and tree_imp.shape == (16, 2) and (tree_imp >= 0).all()
    big = np.argsort(-np.abs(exact))[:3]                                # the tree splits first on the biggest
    assert set(np.argsort(-tree_imp[:, 0])[:3]) == set(big)
    # a label matrix: each distinct value one feature, relabelled 0..M-1; maps at full resolution
    lab = np.where(np.arange(24)[:, None] < 12, 7, 3) + np.zeros((24, 24), int)
    m2, f2, i2 = image_lime(model, X, 1, segmentation=lab, model="linear", num_samples=64, seed=0,
                            verbose=False)
    assert m2.shape == (24, 24) and set(np.unique(f2)) == {0, 1} and i2.shape == (2,)
    np.testing.assert_allclose(m2[0, 0], i2[1])
    np.testing.assert_allclose(m2[-1, 0], i2[0])


def test_superpixels_follow_the_image():
    pytest.importorskip("skimage")
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[:, 0, :, 16:] = 1.0                                               # a red right half
    lab = engine.feature_labels("superpixels", x, 8)[0].reshape(3, 32, 32)[0]
    assert lab.max() >= 1 and not set(np.unique(lab[:, :15])) & set(np.unique(lab[:, 17:]))
    w = np.zeros((2, 3, 32, 32))
    w[1, 0, :, 16:] = 1.0
    phi = KernelSHAP(linear_model(w), n_samples=4096, feature_mask="superpixels", n_features=8,
                     verbose=False)(x, 1, return_input_shape=False)[0]
    # each superpixel's Shapley value is its number of red pixels (w·x = 1 there, 0 elsewhere)
    np.testing.assert_allclose(phi, np.bincount(lab[:, 16:].ravel(), minlength=lab.max() + 1), atol=1e-4)


# ----------------------------------------------------------------------------- Captum
class _Recorder:
    """A Captum similarity function that records the coalitions Captum drew."""

    def __init__(self, fn):
        self.fn, self.rows = fn, []

    def __call__(self, original, perturbed, interpretable, **kwargs):
        self.rows.append(interpretable.detach().numpy().copy())
        return self.fn(original, perturbed, interpretable, **kwargs)


def _captum_mask(x_shape):
    torch = pytest.importorskip("torch")
    mask = grid_labels(x_shape[2:], 9)[None, None]
    return mask, torch.as_tensor(mask.astype(np.int64))


def test_kernelshap_equals_captum_on_its_coalitions(tiny_cnn):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from captum.attr import KernelShap
    net, onnx_bytes = tiny_cnn
    x = np.random.default_rng(3).normal(size=(1, 3, 16, 16)).astype(np.float32)
    mask, mask_t = _captum_mask(x.shape)
    ks = KernelShap(net)
    ks.similarity_func = rec = _Recorder(ks.similarity_func)
    torch.manual_seed(0)
    with torch.no_grad():
        ref = ks.attribute(torch.from_numpy(x), baselines=0.2, target=3, feature_mask=mask_t,
                           n_samples=80, perturbations_per_eval=16, return_input_shape=False).numpy()
    ours = KernelSHAP(onnx_bytes, feature_mask=mask, baselines=0.2, verbose=False)(
        x, 3, coalitions=np.concatenate(rec.rows), return_input_shape=False)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_kernelshap_all_coalitions_equals_captum_shapley_values(tiny_cnn):
    torch = pytest.importorskip("torch")
    from captum.attr import ShapleyValues
    net, onnx_bytes = tiny_cnn
    x = np.random.default_rng(4).normal(size=(2, 3, 16, 16)).astype(np.float32)
    mask = np.repeat(np.repeat([[0, 1, 2], [3, 4, 4]], 8, 0), [5, 5, 6], 1)[None, None]  # 5 groups
    with torch.no_grad():
        ref = ShapleyValues(net).attribute(torch.from_numpy(x), baselines=-0.1, target=1,
                                           feature_mask=torch.as_tensor(mask), perturbations_per_eval=64)
    ours = KernelSHAP(onnx_bytes, n_samples=32, feature_mask=mask, baselines=-0.1, verbose=False)(x, 1)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("surrogate, kwargs", [("lasso", {"alpha": 1e-3}), ("ridge", {"alpha": 1.0}),
                                               ("linear", {})])
@pytest.mark.parametrize("distance_mode, width", [("cosine", 1.0), ("euclidean", 20.0)])
def test_lime_equals_captum_on_its_coalitions(tiny_cnn, surrogate, kwargs, distance_mode, width):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression, SkLearnRidge
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function
    net, onnx_bytes = tiny_cnn
    x = np.random.default_rng(5).normal(size=(2, 3, 16, 16)).astype(np.float32)
    mask, mask_t = _captum_mask(x.shape)
    extra = {"tol": 1e-12, "max_iter": 100000} if surrogate == "lasso" else {}
    model = {"lasso": SkLearnLasso, "ridge": SkLearnRidge, "linear": SkLearnLinearRegression}[surrogate]
    rec = _Recorder(get_exp_kernel_similarity_function(distance_mode, width))
    lime = Lime(net, interpretable_model=model(**kwargs, **extra), similarity_func=rec)
    torch.manual_seed(1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        ref = lime.attribute(torch.from_numpy(x), target=[0, 4], baselines=0.5, feature_mask=mask_t,
                             n_samples=60, perturbations_per_eval=8, return_input_shape=False).numpy()
    z = np.concatenate(rec.rows)
    ours = np.concatenate([
        LIME(onnx_bytes, feature_mask=mask, baselines=0.5, surrogate=surrogate, kernel_width=width,
             distance_mode=distance_mode, verbose=False, **kwargs)(
            x[i:i + 1], [0, 4][i], coalitions=z[60 * i:60 * (i + 1)], return_input_shape=False)
        for i in range(2)])
    assert np.abs(ref).max() > 5e-3 and (surrogate != "lasso" or (ref == 0).sum() >= 3)  # not trivial
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_lime_custom_similarity_func_sees_the_perturbed_batches(lin2d):
    w, model, x = lin2d
    mask = grid_labels((16, 16), 4)[None, None]
    seen = []

    def similarity(original, perturbed, z):
        seen.append(perturbed.shape)
        kept = z.astype(bool)[:, mask[0, 0]][:, None]                   # (n, 1, H, W)
        np.testing.assert_array_equal(perturbed, np.where(kept, original, 0.0))
        return np.ones(len(z))

    ols = LIME(model, n_samples=40, perturbations_per_eval=16, feature_mask=mask, surrogate="linear",
               similarity_func=similarity, seed=0, verbose=False)(x[:1], 0, return_input_shape=False)
    assert seen == [(16, 3, 16, 16), (16, 3, 16, 16), (8, 3, 16, 16)]
    np.testing.assert_allclose(ols, exact_shapley(w, x[:1], 0.0, mask, 0), atol=1e-4)


# ----------------------------------------------------------------------------- fits and kernels
def test_tree_importance_is_sklearns_normalised_importance():
    pytest.importorskip("sklearn")
    from sklearn.tree import DecisionTreeRegressor
    rng = np.random.default_rng(6)
    z = (rng.random((300, 6)) < 0.5).astype(np.uint8)
    y = z @ np.array([3.0, -2.0, 0.5, 0.0, 1.0, 0.2]) + 2 * z[:, 0] * z[:, 1] + 0.1 * rng.normal(size=300)
    wts = rng.random(300) + 0.5
    ours = engine.fit_tree(z, y[:, None], wts)[:, 0]
    ref = DecisionTreeRegressor(min_samples_split=10, min_samples_leaf=1, random_state=0).fit(
        z, y, sample_weight=wts).feature_importances_
    np.testing.assert_allclose(ours / ours.sum(), ref, atol=1e-9)


def test_fill_coalitions_writes_input_or_baseline():
    rng = np.random.default_rng(7)
    x, b = rng.random(50).astype(np.float32), rng.random(50).astype(np.float32)
    labels = rng.integers(0, 5, 50).astype(np.int32)
    z = (rng.random((4, 5)) < 0.5).astype(np.uint8)
    buf = np.full((6, 50), np.nan, np.float32)
    kern.fill_coalitions(buf, x, b, labels, z)
    np.testing.assert_array_equal(buf[:4], np.where(z[:, labels].astype(bool), x, b))
    assert np.isnan(buf[4:]).all()
    item = engine.Item(x, b, np.sort(labels), 5, {})                    # runs of equal labels
    runs = np.full((6, 50), np.nan, np.float32)
    kern.fill_runs(runs, x, b, item.starts, item.feats, z)
    np.testing.assert_array_equal(runs[:4], np.where(z[:, np.sort(labels)].astype(bool), x, b))
    assert np.isnan(runs[4:]).all() and item.starts[-1] == 50 and len(item.feats) == len(item.starts) - 1


def test_shap_coalitions_follow_captums_distribution():
    z, w, exhaustive = engine.shap_coalitions(np.random.default_rng(0), 20000, 16)
    assert not exhaustive and (z[0] == 1).all() and (z[1] == 0).all() and (w[2:] == 1).all()
    k = z[2:].sum(1)
    p = (15 / (np.arange(1, 16) * (16 - np.arange(1, 16))))
    np.testing.assert_allclose(np.bincount(k, minlength=16)[1:] / len(k), p / p.sum(), atol=0.01)
    z, w, exhaustive = engine.shap_coalitions(np.random.default_rng(0), 64, 6)
    assert exhaustive and len(z) == 64 and len({r.tobytes() for r in z}) == 64


# ----------------------------------------------------------------------------- arguments
def test_seeded_runs_repeat_and_seeds_differ(lin2d):
    _, model, x = lin2d
    make = lambda seed: LIME(model, n_samples=30, feature_mask="grid", n_features=9, seed=seed,  # noqa: E731
                             verbose=False)(x)
    np.testing.assert_array_equal(make(3), make(3))
    assert not np.array_equal(make(3), make(4))


def test_index_none_explains_each_items_top_class(lin2d):
    _, model, x = lin2d
    top = onnx_xai.Model(model).predict(x).argmax(1)
    ks = KernelSHAP(model, n_samples=512, feature_mask="grid", n_features=9, verbose=False)
    np.testing.assert_array_equal(ks(x), np.stack([ks(x[i:i + 1], int(top[i]))[0] for i in range(2)]))


def test_bad_arguments_are_value_errors(lin2d):
    _, model, x = lin2d
    for kwargs in ({"n_samples": 0}, {"perturbations_per_eval": 1.5}, {"feature_mask": "pixels"},
                   {"surrogate": "tree"}, {"alpha": -1}, {"kernel_width": 0}, {"distance_mode": "l1"},
                   {"baselines": np.nan}, {"similarity_func": 3}, {"seed": -1}, {"activate": "yes"}):
        with pytest.raises(ValueError):
            LIME(model, **kwargs)
    with pytest.raises(ValueError, match="n_samples >= 2"):
        KernelSHAP(model, n_samples=1)
    ks = KernelSHAP(model, n_samples=8, verbose=False)
    m = int(np.prod(grid_shape((16, 16), 49)))                          # 6 × 6 cells
    bad_x = x.copy()
    bad_x[0, 1, 2, 3] = np.nan
    for call, match in ((lambda: ks(bad_x), "non-finite"),
                        (lambda: ks(x, feature_mask=np.zeros((5, 5), int)), "broadcast"),
                        (lambda: ks(x, feature_mask=np.zeros((16, 16))), "integers"),
                        (lambda: ks(x, baselines=np.zeros((2, 2))), "broadcast"),
                        (lambda: ks(x, 7), "out of range"),
                        (lambda: ks(x, [0, 1, 2]), "one per sample"),
                        (lambda: ks(x, feature_mask="grid", coalitions=np.ones((3, 4))), rf"\(n, {m}\)"),
                        (lambda: ks(x, feature_mask="grid", coalitions=np.full((3, m), 2)), "only 0 and 1")):
        with pytest.raises(ValueError, match=match):
            call()
    X = x[0].transpose(1, 2, 0)
    for kwargs, match in (({"segmentation": "slic"}, "segmentation"), ({"model": "forest"}, "model"),
                          ({"output_upsampling": "linear"}, "output_upsampling"),
                          ({"num_samples": 0}, "num_samples"), ({"mini_batch_size": 0}, "mini_batch_size"),
                          ({"segmentation": np.zeros((4, 4), int)}, "spatial shape"),
                          ({"segmentation": np.zeros((16, 16)) + 0.5}, "integers"),
                          ({"execution_environment": "tpu"}, "execution_environment")):
        with pytest.raises(ValueError, match=match):
            image_lime(model, X, 0, verbose=False, **kwargs)
    with pytest.raises(ValueError, match="channel_idx"):
        image_lime(model, X, 9, segmentation="grid", num_samples=4, verbose=False)


def test_nonfinite_copies_are_left_out_and_a_nonfinite_baseline_refused():
    w = np.zeros((1, 1, 4, 4))
    w[0, 0, :2] = 1.0
    model = linear_model(w, np.array([-1.0]), tail="Sqrt")             # NaN where the sum < 1
    x = np.ones((1, 1, 4, 4), np.float32)
    mask = np.repeat(np.arange(4), 4).reshape(1, 1, 4, 4)
    with pytest.warns(NonFiniteWarning, match="perturbed copies"):
        attr = LIME(model, n_samples=50, feature_mask=mask, seed=0, verbose=False)(x, 0)
    assert np.isfinite(attr).all()
    with pytest.raises(NonFiniteError, match="baseline"):
        KernelSHAP(model, n_samples=16, feature_mask=mask, verbose=False)(x, 0)
