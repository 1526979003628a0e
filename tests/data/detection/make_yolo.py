"""Make ``tiny_yolov8.onnx`` and its torch reference numbers ``tiny_yolov8_ref.npz``.

Run in the grad-cam venv (torch + torchvision + ultralytics + grad-cam), offline::

    YOLO_OFFLINE=1 .ci-venv-gradcam/bin/python tests/data/detection/make_yolo.py

An ultralytics YOLOv8 built from its own ``yolov8.yaml`` layer list at a tiny scale (depth
0.33, width 0.125, max channels 512, 3 classes), seeded random weights, 64×64 input, batch 1 baked in as
ultralytics exports do; output ``(1, 4 + 3, 84)`` (cx, cy, w, h in pixels, then the sigmoid
class scores, for 8×8 + 4×4 + 2×2 anchors). The BatchNorm statistics are randomised so that
the class scores vary. Reference numbers, by torch on the same weights:
``x`` two inputs, ``raw`` the raw outputs, ``cls`` class i for input i and ``anchor`` its best anchor,
``grad`` d raw[0, 4 + cls, anchor] / d x (autograd), ``neck_act`` the activations of layer
21 (the P5 neck output) and ``neck_grad`` the score's autograd gradient there, ``eigen`` pytorch-grad-cam's ``get_2d_projection`` of them.
"""
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
import ultralytics  # noqa: E402

HERE = Path(__file__).parent
SIZE, NC = 64, 3


def build() -> torch.nn.Module:
    cfg_path = Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["scales"] = {"t": [0.33, 0.125, 512]}
    cfg["scale"] = "t"
    cfg["nc"] = NC
    torch.manual_seed(0)
    model = DetectionModel(cfg, ch=3, nc=NC, verbose=False)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    model.eval()
    model.fuse = lambda *a, **k: model
    for m in model.modules():
        if m.__class__.__name__ == "Detect":
            m.export, m.format = True, "onnx"
    return model


class Raw(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        y = self.model(x)
        return y[0] if isinstance(y, (tuple, list)) else y


def main() -> None:
    model = build()
    net = Raw(model).eval()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 1, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        raw = np.stack([net(torch.from_numpy(xi)).numpy() for xi in x])
    print("raw", raw.shape)
    torch.onnx.export(net, torch.from_numpy(x[0]), str(HERE / "tiny_yolov8.onnx"), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False)
    anchors, classes, grads, acts, eigens, neck_grads = [], [], [], [], [], []
    for i, xi in enumerate(x):
        cls = i % NC  # input i: class i's best anchor
        anchor = int(np.argmax(raw[i, 0, 4 + cls]))
        xt = torch.from_numpy(xi).requires_grad_(True)
        feats = {}
        def keep(m, a, o):
            o.retain_grad()
            feats["a"] = o
        h = model.model[21].register_forward_hook(keep)
        net(xt)[0, 4 + cls, anchor].backward()
        h.remove()
        act = feats["a"].detach().numpy()
        neck_grads.append(feats["a"].grad.numpy())
        anchors.append(anchor), classes.append(cls), grads.append(xt.grad.numpy()), acts.append(act)
        eigens.append(get_2d_projection(act))
    np.savez_compressed(HERE / "tiny_yolov8_ref.npz", x=x, raw=raw, anchor=np.array(anchors),
                        cls=np.array(classes), grad=np.stack(grads), neck_act=np.stack(acts), neck_grad=np.stack(neck_grads),
                        eigen=np.stack(eigens), torch_version=torch.__version__,
                        ultralytics_version=ultralytics.__version__)
    print("anchors", anchors, "classes", classes, "size", (HERE / "tiny_yolov8.onnx").stat().st_size)


if __name__ == "__main__":
    main()
