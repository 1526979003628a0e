"""Synthetic data: masks match their geometry; the shipped toy models classify held-out data;
RISE on them points at the object far more often than a random map."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnx_xai import RISE, Model, metrics, synthetic

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_shape_masks_have_their_geometric_area():
    side = 21.0
    areas = {k: synthetic.shape_mask(k, 64, (32.0, 32.0), side).sum() for k in synthetic.SHAPES_2D}
    assert areas["square"] == pytest.approx(side ** 2, rel=0.1)
    assert areas["disc"] == pytest.approx(np.pi * (side / 2) ** 2, rel=0.1)
    assert areas["triangle"] == pytest.approx(side ** 2 / 2, rel=0.1)
    arm = side / 3  # two bars of width side/3, the centre counted once
    assert areas["cross"] == pytest.approx(2 * side * arm - arm ** 2, rel=0.15)


def test_generators_shapes_labels_and_object_contrast():
    x, y, m = synthetic.shapes_2d(40, seed=5)
    assert x.shape == (40, 1, 64, 64) and x.dtype == np.float32 and m.shape == (40, 64, 64)
    assert set(y) <= set(range(4)) and len(set(y)) == 4
    inside = np.array([x[i, 0][m[i]].mean() - x[i, 0][~m[i]].mean() for i in range(40)])
    assert np.all(inside > 0.5)  # objects are ~+1 over the background
    x3, y3, m3 = synthetic.blobs_3d(20, seed=5)
    assert x3.shape == (20, 1, 24, 24, 24) and m3.shape == (20, 24, 24, 24)
    sign = np.array([x3[i, 0][m3[i]].mean() - x3[i, 0][~m3[i]].mean() for i in range(20)])
    np.testing.assert_array_equal(sign < 0, y3 == 1)  # dark blobs are class 1
    np.testing.assert_array_equal(synthetic.shapes_2d(3, seed=9)[0], synthetic.shapes_2d(3, seed=9)[0])
    with pytest.raises(ValueError, match="n must"):
        synthetic.shapes_2d(0)
    with pytest.raises(ValueError, match="size"):
        synthetic.blobs_3d(2, size=8)
    with pytest.raises(ValueError, match="kind"):
        synthetic.shape_mask("star", 32, (16, 16), 8)


@pytest.mark.parametrize("stem, make, floor", [
    ("synthetic_shapes2d", lambda: synthetic.shapes_2d(300, seed=7), 0.85),
    ("synthetic_blobs3d", lambda: synthetic.blobs_3d(100, seed=7), 0.95)])
def test_shipped_toy_models_classify_fresh_data(stem, make, floor):
    x, y, _ = make()
    model = Model(MODELS / f"{stem}.onnx", device="cpu")
    acc = (model.predict(x, batch_size=100).argmax(1) == y).mean()
    assert acc >= floor
    side = json.loads((MODELS / f"{stem}.json").read_text())
    assert side["cam_layer"] in {n.name for n in model.proto.graph.node}


def test_rise_points_at_the_shape_on_the_2d_model():
    x, y, m = synthetic.shapes_2d(12, seed=11)
    model = Model(MODELS / "synthetic_shapes2d.onnx", device="cpu", threads=2, verbose=False)
    # raw logits: this model is so confident that softmax saturates and blurs the map
    rise = RISE(model, n_masks=300, cell_size=7, n_batch=150, seed=0, activate=False)
    maps = np.concatenate([rise(x[i:i + 1], index=int(y[i])) for i in range(12)])
    hits = metrics.pointing_game(maps, m).mean()
    chance = m.mean()  # a random map's peak lands on the object with this probability
    assert hits >= 0.75 and chance < 0.15
