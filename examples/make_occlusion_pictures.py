"""Occlusion pictures of the shipped model on the cat photo (class 285, "Egyptian cat").

Writes examples/pictures/cat_occlusion_monai.png (MONAI-style OcclusionSensitivity: the drop
of the class probability when each region is hidden) and cat_occlusion_matlab.png (MATLAB-style
occlusion_sensitivity with softmax scores), each as photo | overlay.

    python examples/make_occlusion_pictures.py
"""
from pathlib import Path

import numpy as np

import onnx_xai
from onnx_xai import visualize
from onnx_xai.preprocess import ImageSpec, read_image, resize_image

OUT = Path(__file__).resolve().parent / "pictures"
CAT = 285


def main() -> None:
    path = onnx_xai.assets.efficientnet_lite0()
    spec = ImageSpec.for_model(path)
    image = read_image(Path(__file__).resolve().parent / "images" / "chelsea.png")
    x = spec.to_input(image)
    model = onnx_xai.Model(path, threads=2)
    photo = resize_image(image, spec.size)

    occ, _ = onnx_xai.OcclusionSensitivity(model, mask_size=16, overlap=0.6)(x)
    base = onnx_xai.softmax(model.predict(x))[0, CAT]
    drop = base - occ[0, CAT]  # MONAI returns the occluded probability: larger drop = more important
    matlab = onnx_xai.occlusion_sensitivity(model, x[0].transpose(1, 2, 0), CAT, activation="softmax")

    OUT.mkdir(exist_ok=True)
    for name, smap in (("cat_occlusion_monai.png", drop), ("cat_occlusion_matlab.png", matlab)):
        picture = np.hstack([photo, visualize.overlay(photo, smap, alpha=0.5)])
        visualize.write_png(OUT / name, picture)
        print(f"wrote {OUT / name}; peak at {np.unravel_index(np.argmax(smap), smap.shape)}")


if __name__ == "__main__":
    main()
