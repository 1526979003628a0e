"""Deletion / insertion curves, pointing game and energy-in-box against closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from onnx_xai import metrics

from test_rise import linear_model


@pytest.fixture(scope="module")
def weighted_sum():
    """logit0 = Σ w·x over a 16 × 16 image with positive w, logit1 = 0; x = 1."""
    w = np.random.default_rng(0).exponential(1.0, (16, 16))
    wk = np.stack([w, np.zeros_like(w)])[:, None]
    return w, linear_model(wk), np.ones((1, 1, 16, 16), np.float32)


def _deletion_reference(w: np.ndarray, order: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Score after zeroing the first counts[k] pixels of ``order``: total − their weight."""
    removed = np.concatenate([[0.0], np.cumsum(w.ravel()[order])])
    return w.sum() - removed[counts]


def test_deletion_ranks_perfect_random_inverted(weighted_sum):
    w, model, x = weighted_sum
    rng = np.random.default_rng(1)
    kw = dict(index=0, n_steps=32, activate=False, verbose=False)
    perfect = metrics.deletion(model, x, w[None, None], **kw)
    randoms = [metrics.deletion(model, x, rng.random((1, 16, 16)), **kw).auc[0] for _ in range(5)]
    inverted = metrics.deletion(model, x, -w, **kw)
    assert perfect.auc[0] < min(randoms) and max(randoms) < inverted.auc[0]
    total = w.sum()  # a random map removes weight linearly: area ≈ total / 2
    assert perfect.auc[0] < 0.3 * total and inverted.auc[0] > 0.7 * total
    assert abs(np.mean(randoms) - total / 2) < 0.1 * total
    counts = np.round(np.linspace(0, 256, 33)).astype(int)
    np.testing.assert_allclose(perfect.fractions, counts / 256)
    ref = _deletion_reference(w, np.argsort(-w.ravel()), counts)
    np.testing.assert_allclose(perfect.scores[0], ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(perfect.auc[0], np.trapezoid(ref, counts / 256), rtol=1e-4)


def test_insertion_from_blur_and_constant_baselines(weighted_sum):
    w, model, _ = weighted_sum
    x = np.random.default_rng(2).random((1, 1, 16, 16)).astype(np.float32)
    kw = dict(index=0, n_steps=16, activate=False, verbose=False)
    good = metrics.insertion(model, x, w * x[0, 0], **kw)
    bad = metrics.insertion(model, x, -w * x[0, 0], **kw)
    assert good.auc[0] > bad.auc[0]
    blurred = scipy.ndimage.gaussian_filter(x[0, 0].astype(np.float64), 5.0, mode="nearest")
    np.testing.assert_allclose(good.scores[0, 0], (w * blurred).sum(), rtol=1e-4)  # starts at the blur
    np.testing.assert_allclose(good.scores[0, -1], (w * x[0, 0]).sum(), rtol=1e-4)  # ends at x
    const = metrics.insertion(model, x, w, baseline=0.25, **kw)
    np.testing.assert_allclose(const.scores[0, 0], 0.25 * w.sum(), rtol=1e-4)
    mean = metrics.deletion(model, x, w, baseline="mean", **kw)
    np.testing.assert_allclose(mean.scores[0, -1], x.mean() * w.sum(), rtol=1e-4)


def test_softmax_scores_batches_and_3d():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 2, 6, 6, 5)) * 0.2
    model = linear_model(w)
    x = rng.standard_normal((2, 2, 6, 6, 5)).astype(np.float32)
    sal = rng.random((2, 1, 6, 6, 5))
    a = metrics.deletion(model, x, sal, n_steps=10, batch_size=4, verbose=False)
    b = metrics.deletion(model, x, sal[:, 0], n_steps=10, batch_size=100, verbose=False)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    logits = np.einsum("kcijl,bcijl->bk", w, x)
    top = logits.argmax(1)
    np.testing.assert_array_equal(a.index, top)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(a.scores[:, 0], p[np.arange(2), top], rtol=1e-5)
    np.testing.assert_allclose(a.scores[:, -1], 1 / 3, rtol=1e-5)  # all-zero input: uniform softmax
    np.testing.assert_allclose(metrics.auc(a.scores, a.fractions), a.auc)


def test_pointing_game_box_mask_and_tolerance():
    sal = np.zeros((3, 1, 20, 30))
    sal[0, 0, 5, 7] = 1.0    # inside the box
    sal[1, 0, 15, 25] = 1.0  # outside, 7 px right of its corner column
    sal[2, 0, 12, 20] = 1.0  # just past the half-open end (row 12)
    box = np.array([2, 12, 3, 18])
    np.testing.assert_array_equal(metrics.pointing_game(sal, box), [True, False, False])
    mask = np.zeros((20, 30), bool)
    mask[2:12, 3:18] = True
    np.testing.assert_array_equal(metrics.pointing_game(sal, mask), [True, False, False])
    dist = np.hypot(15 - 11, 25 - 17)  # from (15, 25) to the nearest object pixel (11, 17)
    np.testing.assert_array_equal(metrics.pointing_game(sal, mask, tolerance=dist - 0.01), [True, False, True])
    np.testing.assert_array_equal(metrics.pointing_game(sal, mask, tolerance=dist), [True, True, True])
    per_item = np.array([[0, 1, 0, 1], [14, 16, 24, 26], [0, 1, 0, 1]])
    np.testing.assert_array_equal(metrics.pointing_game(sal, per_item), [False, True, False])


def test_energy_in_box_closed_forms():
    rng = np.random.default_rng(4)
    sal = np.ones((2, 1, 8, 8, 4))
    sal[1] = rng.standard_normal((1, 8, 8, 4))
    box = [0, 4, 2, 6, 1, 3]
    e = metrics.energy_in_box(sal, box)
    assert e[0] == pytest.approx(4 * 4 * 2 / 256)  # uniform map: the box's share of the volume
    pos = np.clip(sal[1, 0], 0, None)
    assert e[1] == pytest.approx(pos[0:4, 2:6, 1:3].sum() / pos.sum())
    assert metrics.energy_in_box(-np.ones((1, 1, 4, 4)), np.ones((4, 4), bool))[0] == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda m, x: metrics.deletion(m, x, np.ones((5, 5))), "saliency"),
    (lambda m, x: metrics.deletion(m, x, np.ones((16, 16)), n_steps=0), "n_steps"),
    (lambda m, x: metrics.deletion(m, x, np.ones((16, 16)), batch_size=0), "batch_size"),
    (lambda m, x: metrics.deletion(m, x, np.ones((16, 16)), baseline="zeros"), "baseline"),
    (lambda m, x: metrics.deletion(m, x, np.ones((16, 16)), baseline=np.ones(3)), "baseline"),
    (lambda m, x: metrics.insertion(m, x, np.ones((16, 16)), index=5), "index"),
    (lambda m, x: metrics.insertion(m, x, np.ones((16, 16)), index=[0, 1]), "index"),
    (lambda m, x: metrics.deletion(m, x, np.ones((16, 16)), activate="prob"), "activate"),
    (lambda m, x: metrics.pointing_game(np.ones((16, 16)), [0, 1, 0, 1]), r"smap\[None, None\]"),
    (lambda m, x: metrics.pointing_game(np.ones((1, 1, 16, 16)), [0, 1, 0]), "boxes"),
    (lambda m, x: metrics.pointing_game(np.ones((1, 1, 16, 16)), np.ones((16, 16), int)), "boolean mask"),
    (lambda m, x: metrics.pointing_game(np.ones((1, 1, 16, 16)), np.ones((8, 8), bool)), "mask of shape"),
    (lambda m, x: metrics.pointing_game(np.ones((1, 1, 16, 16)), [0, 1, 0, 1], tolerance=-1), "tolerance"),
])
def test_bad_arguments(weighted_sum, call, match):
    _, model, x = weighted_sum
    with pytest.raises(ValueError, match=match):
        call(model, x)
