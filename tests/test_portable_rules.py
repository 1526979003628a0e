"""The portable backend passes its Relu / Clip rules to onnx-ad per call: onnx-ad keeps its own
rules for every other caller, thread or task (torch-free)."""
from __future__ import annotations

import threading

import numpy as np
import onnx_ad
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_xai.autodiff import portable

X = np.array([-1.0, 2.0, -3.0, 4.0], np.float32)


def negated_relu_sum(op: str = "Relu"):
    """``y = -sum(relu(x))``: the adjoint reaching the Relu is -1, so the guided rule gives 0
    where onnx-ad's (and the plain) rule gives -1 · (x > 0)."""
    extra = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])] if op == "Clip" else []
    nodes = [helper.make_node(op, ["x"] + (["zero"] if op == "Clip" else []), ["r"]),
             helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
             helper.make_node("Neg", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], initializer=extra)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def onnx_ad_gradient(proto) -> np.ndarray:
    adj = onnx_ad.reverse(proto, inputs=["x"], outputs=["y"], prefix="adj_", dim="nadj", layout="onnx")
    sess = ort.InferenceSession(adj.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["adj_x"], {"x": X, "adj_y": np.ones(1, np.float32)})[0].reshape(-1)


def portable_gradient(proto, guided: bool) -> np.ndarray:
    adj, grads, seed = portable.build(proto, ["x"], "y", guided=guided)
    sess = ort.InferenceSession(adj.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([grads["x"]], {"x": X, seed: np.ones(1, np.float32)})[0].reshape(-1)


@pytest.mark.parametrize("op", ["Relu", "Clip"])
def test_guided_rule_applies_to_our_build_only(op):
    proto = negated_relu_sum(op)
    plain = -(X > 0).astype(np.float32)
    np.testing.assert_array_equal(onnx_ad_gradient(proto), plain)
    np.testing.assert_array_equal(portable_gradient(proto, guided=True), np.zeros(4, np.float32))
    np.testing.assert_array_equal(portable_gradient(proto, guided=False), plain)
    np.testing.assert_array_equal(onnx_ad_gradient(proto), plain)  # nothing left behind


def test_rules_of_one_thread_are_not_seen_by_another():
    proto, inside, done = negated_relu_sum(), threading.Event(), threading.Event()
    seen = {}

    def hold_guided_rules():
        with portable.reverse_rules(portable.GUIDED_RULES):
            inside.set()
            done.wait(30)

    holder = threading.Thread(target=hold_guided_rules)
    holder.start()
    try:
        assert inside.wait(30)
        seen["other thread"] = onnx_ad_gradient(proto)
    finally:
        done.set()
        holder.join()
    np.testing.assert_array_equal(seen["other thread"], -(X > 0).astype(np.float32))


def test_only_relu_and_clip_rules_can_be_replaced():
    with pytest.raises(ValueError, match="Relu"):
        with portable.reverse_rules({"Sigmoid": portable.GUIDED_RULES["Relu"]}):
            pass
