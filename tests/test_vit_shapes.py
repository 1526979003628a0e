"""The tiny ViT of examples/vit (trained on ``synthetic.shapes_2d`` by examples/make_vit_shapes.py):
on fresh scenes with known object masks, attention rollout, gradient rollout and Grad-CAM on
the automatic layer point at the object (pointing game) far more often than chance (the
object's share of the pixels: where a random map's peak lands)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnx_xai import AttentionRollout, GradCAM, GradientRollout, Model, metrics, synthetic
from onnx_xai.preprocess import ImageSpec, read_image

VIT = Path(__file__).resolve().parent.parent / "examples" / "vit"


@pytest.fixture(scope="module")
def scenes():
    """(model, x (40, 1, 64, 64), labels, masks): a seed the model never saw in training."""
    model = Model(VIT / "shapes_vit.onnx", device="cpu", threads=2, verbose=False)
    x, y, masks = synthetic.shapes_2d(40, seed=4)
    return model, x, y, masks


def test_the_vit_classifies_fresh_shapes_and_its_example_pngs(scenes):
    model, x, y, _ = scenes
    assert (model.predict(x).argmax(1) == y).mean() >= 0.85
    spec = ImageSpec.for_model(VIT / "shapes_vit.onnx")  # the sidecar undoes the PNGs' 8-bit encoding
    pngs = sorted(VIT.glob("shape*.png"))
    assert len(pngs) == 2
    for png in pngs:
        label = png.stem.split("_")[1]
        assert spec.labels[model.predict(spec.to_input(read_image(png))).argmax()] == label


@pytest.mark.parametrize("method, floor", [
    (lambda m, x, y: AttentionRollout(m)(x), 0.85),  # measured 0.975
    (lambda m, x, y: GradientRollout(m)(x, y), 0.7),  # 0.8 (0.975 within 4 px)
    # Grad-CAM on the last block's norm1 localises poorly on this 3-block ViT: 0.325
    (lambda m, x, y: GradCAM(m)(x, y), 0.2)], ids=["rollout", "grad-rollout", "gradcam"])
def test_maps_point_at_the_shape(scenes, method, floor):
    model, x, y, masks = scenes
    maps = method(model, x, y)
    assert maps.shape == (40, 1, 64, 64)
    hits = metrics.pointing_game(maps, masks).mean()
    chance = masks.mean()  # the hit rate of a map whose peak is a random pixel
    random_maps = np.random.default_rng(0).random(maps.shape)
    assert chance < 0.08 and metrics.pointing_game(random_maps, masks).mean() < 0.15
    assert hits >= floor and hits >= 3 * chance
