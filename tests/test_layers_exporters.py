"""Layer names across torch exporters and the automatic CAM layer (issue 18 items 5 and 8).

A torchvision-free ResNet exported by the TorchScript exporter and by the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, module paths in ``pkg.torch.onnx.name_scopes``):
dotted module names resolve to the tensors a torch forward hook sees, in both graphs; Grad-CAM
through those names equals a torch Grad-CAM from hooks and autograd. The automatic layer is a
real feature map on a CNN, a net ending in a 1×1-conv logits head and a YOLO-like detector
ending in a DFL box decoder; a net without one gets an error listing candidates; ``onnx-xai
layers`` marks the automatic layer.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter writes ONNX through it
nn = torch.nn
from torch_models import SmallResNet, export_onnx, randomize_bn  # noqa: E402

from onnx_xai import Model, cli, graph  # noqa: E402
from onnx_xai.autolayer import auto_layer  # noqa: E402
from onnx_xai.errors import UnsupportedModelError  # noqa: E402
from onnx_xai.methods.cam import GradCAM  # noqa: E402

SIZE = 32


def export_dynamo(module: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX bytes from the dynamo exporter, batch dynamic, input ``x``, output ``y``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=["x"],
                                    output_names=["y"], verbose=False,
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    buf = io.BytesIO()
    onnx.save(program.model_proto, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def resnet():
    """(torch net, {"torchscript": Model, "dynamo": Model})."""
    torch.manual_seed(0)
    net = randomize_bn(SmallResNet()).eval()
    example = torch.randn(2, 3, SIZE, SIZE)
    return net, {"torchscript": Model(export_onnx(net, example), verbose=False),
                 "dynamo": Model(export_dynamo(net, example), verbose=False)}


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)


def _hooked(net, names, x):
    """Outputs of the modules ``names`` from torch forward hooks."""
    seen, hooks = {}, []
    modules = dict(net.named_modules())
    for name in names:
        hooks.append(modules[name].register_forward_hook(lambda m, i, o, name=name: seen.update({name: o})))
    with torch.no_grad():
        net(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return {k: v.numpy() for k, v in seen.items()}


MODULES = ["layer1", "layer2.0", "layer3", "layer4", "layer4.0", "layer4.1.relu", "avgpool"]


def test_module_paths_resolve_to_the_hooked_tensors_in_both_exports(resnet, x):
    net, models = resnet
    hooked = _hooked(net, MODULES, x)
    proto = models["dynamo"].proto
    assert not any(n.name.startswith("/layer4") for n in proto.graph.node)  # names are node_relu_N
    for kind, model in models.items():
        tensors = [graph.resolve_layer(model.proto, name) for name in MODULES]
        got = model.with_outputs(tensors).predict(x, outputs=tensors, verbose=False)
        for name, t in zip(MODULES, tensors):
            ref = hooked[name]
            assert got[t].shape == ref.shape, (kind, name)
            assert np.abs(got[t] - ref).max() <= 1e-4 * max(np.abs(ref).max(), 1.0), (kind, name)


def test_unknown_module_lists_the_closest_module_paths(resnet):
    with pytest.raises(ValueError, match=r"closest names: \['layer4'"):
        graph.resolve_layer(resnet[1]["dynamo"].proto, "layer5")


def test_gradcam_through_dotted_names_equals_torch(resnet, x):
    net, models = resnet
    store = {}
    hook = net.layer4.register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = net(torch.from_numpy(x))
    hook.remove()
    classes = np.array([1, 4])
    grad, = torch.autograd.grad(logits[torch.arange(2), torch.as_tensor(classes)].sum(), store["a"])
    a, g = store["a"].detach().double().numpy(), grad.double().numpy()
    ref = np.maximum((g.mean((2, 3), keepdims=True) * a).sum(1), 0)
    maps = {kind: GradCAM(model, "layer4").compute_map(x, classes)[:, 0] for kind, model in models.items()}
    for kind, got in maps.items():
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), kind
    assert np.abs(maps["dynamo"] - maps["torchscript"]).max() <= 1e-5 * np.abs(ref).max()


# ---------------------------------------------------------------------- automatic layer
class ConvHead(nn.Module):
    """SqueezeNet-like: features, then a 1×1 conv giving class logit maps, ReLU, global pool.
    Its last 4-D tensors are the logits of the head: not a feature map to explain."""

    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, classes, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.head(self.features(x))


class TinyYolo(nn.Module):
    """YOLOv8-like: backbone, a neck map read by a box branch and a class branch, and a DFL
    box decoder (softmax over ``reg`` bins, then a fixed 1×1 conv: a ``(B, 1, 4, N)`` tensor)."""

    def __init__(self, classes=3, reg=4):
        super().__init__()
        self.reg, self.classes = reg, classes
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU(),
                                      nn.Conv2d(16, 16, 3, 2, 1), nn.SiLU())
        self.neck = nn.Sequential(nn.Conv2d(16, 16, 1), nn.SiLU())
        self.box = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.SiLU(), nn.Conv2d(16, 4 * reg, 1))
        self.cls = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.SiLU(), nn.Conv2d(16, classes, 1))
        self.dfl = nn.Conv2d(reg, 1, 1, bias=False)
        self.dfl.weight.data[:] = torch.arange(reg, dtype=torch.float32).view(1, reg, 1, 1)

    def forward(self, x):
        p = self.neck(self.backbone(x))
        b, n = x.shape[0], p.shape[2] * p.shape[3]
        box = self.box(p).view(b, 4 * self.reg, n)
        dist = self.dfl(box.view(b, 4, self.reg, n).transpose(2, 1).softmax(1)).view(b, 4, n)
        return torch.cat([dist, self.cls(p).view(b, self.classes, n).sigmoid()], 1)


def _model(net, size=64, dynamo=False):
    torch.manual_seed(0)
    example = torch.randn(2, 3, size, size)
    return Model(export_dynamo(net, example) if dynamo else export_onnx(net, example), verbose=False)


def test_automatic_layer_on_a_resnet_is_layer4(resnet):
    for kind, model in resnet[1].items():
        choice = auto_layer(model)
        assert choice.tensor == graph.resolve_layer(model.proto, "layer4"), kind
        assert choice.rule.startswith("classifier") and choice.fold is None


def test_automatic_layer_skips_a_conv_logits_head():
    torch.manual_seed(0)
    model = _model(ConvHead().eval(), SIZE)
    last4d = [n.output[0] for n in model.proto.graph.node if n.op_type == "Relu"][-1]
    choice = auto_layer(model)
    assert choice.tensor == graph.resolve_layer(model.proto, "features")
    assert choice.tensor != last4d  # the ReLU of the class-logit maps is the last 4-D tensor


def test_automatic_layer_of_a_detector_is_the_neck_not_the_box_decoder():
    torch.manual_seed(0)
    for dynamo in (False, True):
        model = _model(TinyYolo().eval(), 64, dynamo)
        choice = auto_layer(model)
        assert choice.tensor == graph.resolve_layer(model.proto, "neck"), dynamo
        assert choice.rule.startswith("detector")
        dfl = graph.resolve_layer(model.proto, "dfl")
        assert model.with_outputs([dfl]).predict(np.zeros((1, 3, 64, 64), np.float32), outputs=dfl,
                                                 verbose=False).shape == (1, 1, 4, 64)


def test_no_good_layer_says_so_and_lists_candidates():
    torch.manual_seed(0)
    only_logits = nn.Sequential(nn.Conv2d(3, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(UnsupportedModelError, match=r"no good CAM layer \(every spatial map is part of "
                                                    r"the head.*candidates: .*\(5, 32, 32\)"):
        auto_layer(_model(only_logits, SIZE))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    with pytest.raises(UnsupportedModelError, match="no spatial feature map.*target_layers"):
        auto_layer(_model(mlp, 8))
    with pytest.raises(UnsupportedModelError, match="no good CAM layer"):
        GradCAM(_model(mlp, 8))


def test_cli_layers_marks_the_automatic_layer(resnet, tmp_path, capsys):
    path = tmp_path / "resnet_dynamo.onnx"
    path.write_bytes(resnet[1]["dynamo"].proto.SerializeToString())
    assert cli.main(["layers", str(path)]) == 0
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if line.startswith("*")]
    tensor = graph.resolve_layer(resnet[1]["dynamo"].proto, "layer4")
    assert len(marked) == 1 and marked[0].split()[-1] == tensor
    assert f"default CAM layer (node_{tensor})" in out
    path = tmp_path / "mlp.onnx"
    path.write_bytes(_model(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval(), 8).proto.SerializeToString())
    assert cli.main(["layers", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no automatic CAM layer: found no good CAM layer" in out and not any(
        line.startswith("*") for line in out.splitlines())


class OddTokens(nn.Module):
    """A patch conv whose 4×4 grid is reshaped to 8 rows of 8: no patch grid in either axis."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 4, 8, 8)
        self.mix = nn.Linear(8, 8)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        t = self.mix(self.patch(x).reshape(x.shape[0], 8, 8))
        return self.fc(t.flatten(1))


def test_a_token_layer_without_a_grid_asks_for_reshape_transform(x):
    torch.manual_seed(0)
    net = OddTokens().eval()
    model = _model(net, SIZE)
    with pytest.raises(ValueError, match=r"layer 'mix' has shape \(8, 8\) per sample: neither axis "
                                         r"holds a patch grid.*pass reshape_transform="):
        GradCAM(model, "mix").compute_map(x)
    # the user's reshape makes it work, and equals torch's Grad-CAM on the same reshape
    fold = lambda t: t.reshape(len(t), 4, 4, 4)  # noqa: E731  (B, 8, 8) → (B, 4 channels, 4, 4)
    got = GradCAM(model, "mix", reshape_transform=fold).compute_map(x, 1)[:, 0]
    store = {}
    hook = net.mix.register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = net(torch.from_numpy(x))
    hook.remove()
    grad, = torch.autograd.grad(logits[:, 1].sum(), store["a"])
    a, g = (v.detach().double().numpy().reshape(2, 4, 4, 4) for v in (store["a"], grad))
    ref = np.maximum((g.mean((2, 3), keepdims=True) * a).sum(1), 0)
    assert np.abs(ref).max() > 0 and np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
