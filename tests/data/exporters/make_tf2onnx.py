"""Make ``tf2onnx_cnn.onnx`` (a seeded-random Keras CNN converted by tf2onnx; NHWC input
``(N, 32, 32, 3)``) and ``tf2onnx_cnn_ref.npz`` (TensorFlow's own numbers on fixed inputs).

Run in a TensorFlow venv (not the test venv; the tests only read the files):

    python3 -m venv .venv-tf && .venv-tf/bin/pip install tensorflow-cpu tf2onnx
    .venv-tf/bin/python tests/data/exporters/make_tf2onnx.py

Made with tensorflow-cpu 2.21.0, keras 3.15.1, tf2onnx 1.17.0, opset 13.

The npz holds: ``x`` (4, 32, 32, 3) inputs; ``logits`` (4, 5) TF's outputs; ``classes``
(4,) the explained classes; ``input_grads`` (4, 32, 32, 3) d logit[class] / d x by
GradientTape; ``features`` (4, 16, 16, 16) NHWC activations of ``conv3`` (after its ReLU);
``feature_grads`` their GradientTape gradients; ``gradcam`` (4, 1, 16, 16) the raw Grad-CAM
map computed here with NumPy from TF's tensors: relu(Σ_k mean_hw(dS/dA_k) · A_k).
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

HERE = Path(__file__).resolve().parent


def build() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inp = tf.keras.Input((32, 32, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    h = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(h)
    h = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(h)
    out = layers.Dense(5, name="logits")(layers.GlobalAveragePooling2D(name="gap")(h))
    return tf.keras.Model(inp, out, name="tfcnn")


def main() -> None:
    net = build()
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="image"),)
    fn = tf.function(lambda x: net(x))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=13,
                                             output_path=str(HERE / "tf2onnx_cnn.onnx"))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    xt = tf.constant(x)
    classes = np.array([0, 3, 1, 4])
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = net(xt)
        picked = tf.gather(logits, classes, axis=1, batch_dims=1)
    input_grads = tape.gradient(picked, xt).numpy()
    features_model = tf.keras.Model(net.input, [net.get_layer("conv3").output, net.output])
    with tf.GradientTape() as tape:
        feats, out = features_model(xt)
        score = tf.gather(out, classes, axis=1, batch_dims=1)
    feature_grads = tape.gradient(score, feats).numpy()
    a = feats.numpy()
    w = feature_grads.mean(axis=(1, 2), keepdims=True)
    gradcam = np.maximum((w * a).sum(-1), 0.0)[:, None]
    np.savez(HERE / "tf2onnx_cnn_ref.npz", x=x, logits=logits.numpy(), classes=classes,
             input_grads=input_grads, features=a, feature_grads=feature_grads, gradcam=gradcam)
    print("nodes:", [(n.op_type, n.name) for n in proto.graph.node])


if __name__ == "__main__":
    main()
