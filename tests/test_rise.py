"""RISE against analytic answers on linear models, an independent mask reference, and its arguments."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.ndimage
import scipy.special
import scipy.stats
from onnx import TensorProto, helper, numpy_helper

import onnx_xai
from onnx_xai import RISE
from onnx_xai.kernels import rise as kern


def linear_model(w: np.ndarray, b: np.ndarray | None = None) -> bytes:
    """ONNX model ``logits = W · flatten(x) + b`` for ``w`` of shape ``(K, C, *spatial)``."""
    k, shape = w.shape[0], list(w.shape[1:])
    b = np.zeros(k, np.float32) if b is None else b
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", k])],
        [numpy_helper.from_array(w.reshape(k, -1).astype(np.float32), "w"),
         numpy_helper.from_array(np.asarray(b, np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_linear_model_with_smooth_weights_matches_w():
    rng = np.random.default_rng(3)
    w = np.stack([scipy.ndimage.gaussian_filter(rng.standard_normal((32, 32)), 6) for _ in range(3)])
    w -= w.mean(axis=(1, 2), keepdims=True)
    model = linear_model(w[:, None], b=np.array([0.5, -1.0, 2.0]))
    rise = RISE(model, n_masks=4000, cell_size=7, activate=False, seed=0, n_batch=500, verbose=False)
    sal = rise(np.ones((1, 1, 32, 32), np.float32), index=[0, 1, 2])
    assert sal.shape == (1, 3, 32, 32) and sal.dtype == np.float32
    for k in range(3):
        rho = scipy.stats.spearmanr(sal[0, k].ravel(), w[k].ravel())[0]
        assert rho > 0.9, (k, rho)


def test_block_weights_put_the_map_highest_inside_the_block():
    w = np.zeros((2, 3, 32, 32))
    w[1, :, 4:12, 18:26] = 1.0
    rise = RISE(linear_model(w), n_masks=2000, cell_size=7, activate=False, seed=1, n_batch=250,
                verbose=False)
    x = np.ones((1, 3, 32, 32), np.float32)
    sal = rise(x, index=1)[0, 0]
    inside = np.zeros((32, 32), bool)
    inside[4:12, 18:26] = True
    peak = np.unravel_index(np.argmax(sal), sal.shape)
    assert inside[peak]
    assert sal[inside].mean() > sal[~inside].mean() + 0.5 * (sal.max() - sal[~inside].mean())
    # index=None explains the top class: class 1 (logit 192 vs 0)
    np.testing.assert_array_equal(rise(x)[0, 0], sal)


def test_3d_block_weights_and_per_axis_grid():
    w = np.zeros((1, 1, 16, 16, 12))
    w[0, 0, 2:7, 9:14, 4:9] = 1.0
    rise = RISE(linear_model(w), n_masks=1500, cell_size=(5, 5, 4), activate=False, seed=2,
                n_batch=300, verbose=False)
    sal = rise(np.ones((1, 1, 16, 16, 12), np.float32), index=0)
    assert sal.shape == (1, 1, 16, 16, 12)
    peak = np.unravel_index(np.argmax(sal[0, 0]), sal.shape[2:])
    assert 2 <= peak[0] < 7 and 9 <= peak[1] < 14 and 4 <= peak[2] < 9


def test_same_seed_same_output_and_batch_items_independent():
    rng = np.random.default_rng(0)
    model = linear_model(rng.standard_normal((4, 2, 12, 12)))
    x = rng.standard_normal((2, 2, 12, 12)).astype(np.float32)
    a = RISE(model, n_masks=200, cell_size=4, seed=7, n_batch=64, verbose=False)(x, index=2)
    b = RISE(model, n_masks=200, cell_size=4, seed=7, n_batch=37, verbose=False)(x, index=2)
    c = RISE(model, n_masks=200, cell_size=4, seed=8, n_batch=64, verbose=False)(x, index=2)
    np.testing.assert_allclose(a, b, rtol=1e-5)  # the batch size does not change the masks
    assert not np.allclose(a, c)
    single = RISE(model, n_masks=200, cell_size=4, seed=7, verbose=False)(x[1:], index=2)
    np.testing.assert_allclose(a[1:], single, rtol=1e-5)


def _reference_masks(grids, shifts, cells, shape3):
    """Separable linear interpolation of each grid with np.interp, independent of the kernel."""
    out = []
    for g, s in zip(grids, shifts):
        m = g.astype(np.float64)
        for axis in range(3):
            n = shape3[axis]
            t = (np.arange(n) + 0.5 + s[axis]) / cells[axis] - 0.5
            m = np.apply_along_axis(lambda v: np.interp(t, np.arange(len(v)), v), axis, m)
        out.append(m)
    return np.stack(out)


@pytest.mark.parametrize("shape3, grid", [((1, 20, 27), (1, 5, 6)), ((9, 10, 11), (3, 4, 5))])
def test_mask_kernel_matches_interpolation_reference(shape3, grid):
    rng = np.random.default_rng(0)
    cells = np.asarray(shape3, float) / np.maximum(np.asarray(grid) - 1, 1)
    grids, shifts = kern.random_grids((rng, rng), 6, grid, 0.5, cells)
    assert set(np.unique(grids)) <= {0, 1}
    assert np.all((shifts >= 0) & (shifts < cells)) and np.all(shifts[:, np.asarray(grid) == 1] == 0)
    x = rng.standard_normal((2, int(np.prod(shape3)))).astype(np.float32)
    masks = np.full((8, *shape3), np.nan, np.float32)
    out = np.full((8, 2, x.shape[1]), np.nan, np.float32)
    work2 = np.empty((8, grid[0], grid[1], shape3[2]), np.float32)
    work1 = np.empty((8, grid[0], shape3[1], shape3[2]), np.float32)
    kern.fill_masked_batch(x, grids, shifts, cells, masks, out, (work2, work1))
    ref = _reference_masks(grids, shifts, cells, shape3)
    np.testing.assert_allclose(masks[:6], ref, atol=1e-6)
    np.testing.assert_allclose(out[:6], x[None] * ref.reshape(6, 1, -1), atol=1e-6)
    assert np.isnan(masks[6:]).all()  # rows past n untouched
    sal = np.zeros((2, x.shape[1]))
    weights = rng.standard_normal((6, 2))
    kern.accumulate(masks.reshape(8, -1), weights, sal)
    np.testing.assert_allclose(sal, weights.T @ ref.reshape(6, -1), rtol=1e-5, atol=1e-6)


def test_masks_keep_p1_of_each_pixel_on_average():
    rng = np.random.default_rng(1)
    cells = np.array([1.0, 40 / 7, 40 / 7])
    grids, shifts = kern.random_grids((rng, rng), 3000, (1, 8, 8), 0.3, cells)
    masks = np.empty((3000, 1, 40, 40), np.float32)
    kern.fill_masked_batch(np.ones((1, 1600), np.float32), grids, shifts, cells, masks,
                           np.empty((3000, 1, 1600), np.float32),
                           (np.empty((3000, 1, 8, 40), np.float32), np.empty((3000, 1, 40, 40), np.float32)))
    per_pixel = masks.mean(axis=0)
    assert abs(per_pixel.mean() - 0.3) < 0.01 and np.abs(per_pixel - 0.3).max() < 0.05


def test_activate_softmax_sigmoid_and_callable():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 1, 10, 10)).astype(np.float32)
    multi = linear_model(rng.standard_normal((3, 1, 10, 10)) * 0.3)
    kw = dict(n_masks=100, cell_size=3, seed=0, verbose=False)
    soft = RISE(multi, activate=True, **kw)(x, index=1)
    ref = RISE(multi, activate=lambda y: scipy.special.softmax(y, axis=1), **kw)(x, index=1)
    np.testing.assert_allclose(soft, ref, rtol=1e-5)
    assert not np.allclose(soft, RISE(multi, activate=False, **kw)(x, index=1))
    one = linear_model(rng.standard_normal((1, 1, 10, 10)) * 0.3)
    sig = RISE(one, activate=True, **kw)(x, index=0)
    np.testing.assert_allclose(sig, RISE(one, activate=scipy.special.expit, **kw)(x, index=0), rtol=1e-5)


def test_peak_memory_is_bounded_by_the_batch():
    c, h, nb = 3, 64, 8
    model = linear_model(np.ones((2, c, h, h)) / (c * h * h))
    x = np.ones((1, c, h, h), np.float32)
    rise = RISE(model, n_masks=256, cell_size=5, n_batch=nb, seed=0, verbose=False)
    rise(x)  # compile and warm up
    tracemalloc.start()
    rise(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_input = c * h * h * 4
    assert peak < 3 * (c + 1) * nb * one_input  # not n_masks × input (64 × larger)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_masks=0), "n_masks"), (dict(n_batch=-1), "n_batch"), (dict(cell_size=0), "cell_size"),
    (dict(p1=1.0), "p1"), (dict(activate="softmax"), "activate"), (dict(n_masks=2.5), "n_masks")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RISE(linear_model(np.ones((2, 1, 8, 8))), **kwargs)


def test_bad_calls():
    rise = RISE(linear_model(np.ones((2, 1, 8, 8))), n_masks=10, verbose=False)
    x = np.ones((1, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="index"):
        rise(x, index=2)
    with pytest.raises(ValueError, match="index"):
        rise(x, index=[0, 1.5])
    with pytest.raises(ValueError, match="expects shape"):
        rise(np.ones((1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="cell_size"):
        RISE(linear_model(np.ones((2, 1, 8, 8))), cell_size=(2, 2, 2), n_masks=4)(x)
    with pytest.raises(ValueError, match="RISE takes"):
        RISE(linear_model(np.ones((2, 8))), n_masks=4)(np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="class scores"):
        RISE(linear_model(np.ones((2, 1, 8, 8))), n_masks=4, activate=lambda y: y[:, 0])(x)


def test_exported_at_top_level():
    assert onnx_xai.RISE is RISE
