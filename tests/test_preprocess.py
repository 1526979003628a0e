"""The sidecar reader and the image spec built from it (file, model input shape, command-line
overrides), and samples read from files (torch-free)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from onnx_xai import Model, assets
from onnx_xai.preprocess import (ImageSpec, load_sample, read_image, read_sidecar, sidecar_labels)

SHAPES = assets.model_dir() / "synthetic_shapes2d.onnx"
BLOBS = assets.model_dir() / "synthetic_blobs3d.onnx"


def test_shipped_sidecar_gives_the_same_spec_from_file_and_from_dict():
    path = assets.efficientnet_lite0()
    from_file = ImageSpec.for_model(path)
    from_dict = ImageSpec.from_sidecar(read_sidecar(path), path.parent)
    assert from_file == from_dict
    assert from_file.size == (224, 224) and len(from_file.labels) == 1000 and len(from_file.mean) == 3


def test_input_shape_fills_size_and_grey_overrides_win(tmp_path):
    model = Model(SHAPES, verbose=False)
    spec = ImageSpec.from_sidecar(read_sidecar(SHAPES), SHAPES.parent, model.input.shape)
    assert spec.size == tuple(model.input.shape[2:]) and spec.color == "gray"
    assert spec.labels == ["square", "disc", "triangle", "cross"]  # the sidecar's "classes"
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    spec = ImageSpec.from_sidecar(read_sidecar(SHAPES), SHAPES.parent, model.input.shape,
                                  {"size": (8, 9), "scale": 2.0, "labels": str(labels), "mean": None})
    assert (spec.size, spec.scale, spec.labels, spec.mean) == ((8, 9), 2.0, ["a", "b", "c", "d"], (0.0,))


def test_volume_sidecar_size_is_no_image_size():
    spec = ImageSpec.from_sidecar(read_sidecar(BLOBS), BLOBS.parent, Model(BLOBS, verbose=False).input.shape)
    assert spec.size is None and spec.extra["size"] == 24 and spec.extra["cam_layer"] == "/10/Relu"


def test_channel_count_mismatch_names_its_source():
    with pytest.raises(ValueError, match="the sidecar's 'mean' has 2 values but the model's input has 3"):
        ImageSpec.from_sidecar({"mean": [0.5, 0.5]}, None, ("N", 3, 224, 224))
    with pytest.raises(ValueError, match="--std has 2 values but the model's input has 3"):
        ImageSpec.from_sidecar({}, None, ("N", 3, 224, 224), {"std": (1.0, 2.0)})


def test_unreadable_sidecars_are_value_errors(tmp_path):
    model = tmp_path / "m.onnx"
    assert read_sidecar(model) == {}
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the preprocessing sidecar"):
        read_sidecar(model)
    (tmp_path / "m.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        ImageSpec.for_model(model)
    assert sidecar_labels({"classes": [1, 2]}) == ["1", "2"] and sidecar_labels({}) is None


def test_samples_from_images_and_arrays(tmp_path):
    model = Model(SHAPES, verbose=False)
    spec = ImageSpec.from_sidecar(read_sidecar(SHAPES), SHAPES.parent, model.input.shape)
    image = np.zeros((40, 30, 3), np.uint8)
    image[10:20, 5:15] = 200
    cv2.imwrite(str(tmp_path / "a.png"), image)
    sample = load_sample(tmp_path / "a.png", model, spec)
    assert sample.x.shape == (1,) + tuple(model.input.shape[1:]) and sample.display.dtype == np.uint8
    np.testing.assert_array_equal(sample.x, model.check_input(spec.to_input(read_image(tmp_path / "a.png"))))
    np.save(tmp_path / "b.npy", sample.x[0])
    from_array = load_sample(tmp_path / "b.npy", model, spec)
    np.testing.assert_array_equal(from_array.x, sample.x)
    assert from_array.display.shape == tuple(model.input.shape[2:])  # one channel: its mean, float
    np.save(tmp_path / "c.npy", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="c.npy: array of shape"):
        load_sample(tmp_path / "c.npy", model, spec)
    with pytest.raises(ValueError, match="not an image"):
        load_sample(tmp_path / "d.txt", model, spec)
