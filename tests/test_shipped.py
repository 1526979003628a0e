"""The shipped EfficientNet-Lite0 and the demo command, end to end."""
from __future__ import annotations

import numpy as np

from onnx_xai import Model, assets, cli, softmax
from onnx_xai.preprocess import ImageSpec, read_image


def test_shipped_model_recognises_the_cat():
    path = assets.efficientnet_lite0()
    spec = ImageSpec.for_model(path)
    cat = next(p for p in assets.example_images() if p.stem == "chelsea")
    probs = softmax(Model(path, threads=2).predict(spec.to_input(read_image(cat))))[0]
    top3 = set(np.argsort(-probs)[:3].tolist())
    assert np.argmax(probs) == 285 and spec.labels[285] == "Egyptian cat"
    assert top3 == {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def test_demo_prints_top5(capsys, tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    cat_block = out.split("chelsea.png")[1].split("coffee.png")[0]
    first = cat_block.strip().splitlines()[1]
    assert "Egyptian cat" in first and "285" in first
