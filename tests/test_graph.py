"""Graph surgery for gradients: layer names, listing, static shapes, probes, score heads."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_xai import Model, assets, graph

torch = pytest.importorskip("torch")
nn = torch.nn
from torch_models import export_onnx  # noqa: E402


class Twice(nn.Module):
    """A ReLU module called twice inside a nested module, as torchvision's BasicBlock."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.relu(self.conv2(self.relu(self.bn(self.conv(x)))) + x.mean(1, keepdim=True))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer4 = nn.Sequential(Twice(), Twice.__new__(Twice))
        self.layer4[1].__init__()
        self.layer4[1].conv = nn.Conv2d(4, 4, 3, padding=1)
        self.class_layers = nn.Sequential()
        self.class_layers.add_module("relu", nn.ReLU())
        self.class_layers.add_module("pool", nn.AdaptiveAvgPool2d(1))
        self.class_layers.add_module("flatten", nn.Flatten())
        self.class_layers.add_module("out", nn.Linear(4, 3))

    def forward(self, x):
        return self.class_layers(self.layer4(x))


@pytest.fixture(scope="module")
def net_proto():
    torch.manual_seed(0)
    net = Net().eval()
    return net, onnx.load_from_string(export_onnx(net, torch.randn(2, 3, 8, 8)))


def _sess(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_module_paths_map_to_the_last_node_of_the_scope(net_proto):
    _, proto = net_proto
    names = [n.name for n in proto.graph.node]
    assert "/layer4/layer4.1/relu_1/Relu" in names
    assert graph.resolve_layer(proto, "layer4") == "/layer4/layer4.1/relu_1/Relu_output_0"
    assert graph.resolve_layer(proto, "layer4.0") == "/layer4/layer4.0/relu_1/Relu_output_0"
    assert graph.resolve_layer(proto, "layer4.1.relu") == "/layer4/layer4.1/relu_1/Relu_output_0"
    assert graph.resolve_layer(proto, "class_layers.relu") == "/class_layers/relu/Relu_output_0"
    assert graph.resolve_layer(proto, "class_layers.out") == "y"
    # node names and tensor names resolve too
    assert graph.resolve_layer(proto, "/class_layers/relu/Relu") == "/class_layers/relu/Relu_output_0"
    assert graph.resolve_layer(proto, "y") == "y"


def test_unknown_layer_lists_closest_names_and_folded_batchnorm(net_proto):
    _, proto = net_proto
    with pytest.raises(ValueError, match="closest names.*class_layers/relu"):
        graph.resolve_layer(proto, "class_layers.rel")
    with pytest.raises(ValueError, match="folds BatchNorm"):
        graph.resolve_layer(proto, "layer4.0.bn")


def test_layers_list_conv_like_first_with_shapes(tiny_cnn):
    model = Model(tiny_cnn[1])
    got = model.layers()
    assert [l.op_type for l in got[:4]] == ["Conv", "Relu", "Conv", "Relu"]
    assert got[2].shape == (1, 8, 8, 8) and got[0].tensor == "/0/Conv_output_0"
    assert got[-1].tensor == "y" and got[-1].shape == (1, 5)
    assert all(len(l.shape) in (4, 5) for l in got[:4]) and all(len(l.shape) == 2 for l in got[-2:])


def test_shipped_model_layers_and_static_shapes():
    model = Model(assets.efficientnet_lite0())
    layers = model.layers()
    head = [l for l in layers if l.node == "/_swish_1/Clip"]
    assert head and head[0].shape == (1, 1280, 7, 7)
    static = graph.static_shapes(model.proto, {"input": (3, 3, 224, 224)})
    assert not graph._unknown_shapes(static)
    assert graph.tensor_shapes(static)["logits"] == (3, 1000)


def test_static_shapes_resolve_exporter_computed_pads(rng):
    class SamePad(nn.Module):
        def forward(self, x):
            h = x.shape[-1]
            p = (3 - h % 3) % 3
            return nn.functional.pad(x, (p, 0, 0, p)).relu()

    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SamePad(), (torch.randn(1, 2, 7, 7),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, "y": {0: "b"}})
    proto = onnx.load_from_string(buf.getvalue())
    assert "Pad" in [n.op_type for n in proto.graph.node]
    for size, padded in ((7, 9), (8, 9), (6, 6)):
        static = graph.static_shapes(proto, {"x": (2, 2, size, size)})
        assert graph.tensor_shapes(static)["y"] == (2, 2, padded, padded)
        assert not graph._unknown_shapes(static)
    with pytest.raises(ValueError, match="cannot fix"):
        graph.static_shapes(proto, {"x": (2, 2, 7)})


def test_probe_and_score_head_keep_values(tiny_cnn, rng):
    proto = onnx.load_from_string(tiny_cnn[1])
    static = graph.static_shapes(proto, {"x": (2, 3, 16, 16)})
    tensor = graph.resolve_layer(static, "/2/Conv")
    probed = graph.add_probe(static, tensor, "probe", "pre")
    headed = graph.add_score_head(probed, "y", "w", "score")
    onnx.checker.check_model(headed, full_check=True)  # still topologically sorted, typed
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    w = rng.standard_normal((2, 5)).astype(np.float32)
    delta = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    y = _sess(proto).run(None, {"x": x})[0]
    zero = np.zeros((2, 8, 8, 8), np.float32)
    full = graph.expose_tensors(headed, ["pre", tensor])
    got_y, score, pre = _sess(full).run(["y", "score", "pre"], {"x": x, "probe": zero, "w": w})
    np.testing.assert_allclose(got_y, y, atol=1e-6)
    np.testing.assert_allclose(score, (y * w).sum(), rtol=1e-5)
    # the probe is added to the activation: feeding delta shifts the layer by delta
    shifted, pre2 = _sess(full).run([tensor, "pre"], {"x": x, "probe": delta, "w": w})
    np.testing.assert_allclose(shifted, pre2 + delta, atol=1e-6)
    assert graph.depends_on(headed, ["probe"], "score") and not graph.depends_on(headed, ["w"], "y")
