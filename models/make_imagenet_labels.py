"""Write models/imagenet_labels.txt (1000 ImageNet class names, one per line, index = line).

The list is read from the torchvision wheel on PyPI (``torchvision/models/_meta.py``),
which is fetched with ``pip download`` and parsed without importing torchvision:

    python models/make_imagenet_labels.py
"""
import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        "torchvision==0.29.1"], check=True)
        wheel = next(Path(tmp).glob("torchvision-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            source = zf.read("torchvision/models/_meta.py").decode()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_IMAGENET_CATEGORIES":
            labels = ast.literal_eval(node.value)
            break
    else:
        raise RuntimeError("_IMAGENET_CATEGORIES not found in torchvision/models/_meta.py")
    assert len(labels) == 1000
    (HERE / "imagenet_labels.txt").write_text("\n".join(labels) + "\n")
    print(f"wrote {HERE / 'imagenet_labels.txt'}")


if __name__ == "__main__":
    main()
