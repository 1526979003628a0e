"""Grad-CAM of the shipped EfficientNet-Lite0 on the cat photo: overlay + boxes from the map.

    python examples/make_cam_picture.py   → examples/pictures/cat_gradcam.png
"""
from pathlib import Path

import cv2

from onnx_xai import GradCAM, Model, assets
from onnx_xai.methods.cam import minmax_normalizer
from onnx_xai.preprocess import ImageSpec, read_image
from onnx_xai.visualize import boxes_from_map, draw_boxes, overlay, write_png

HERE = Path(__file__).resolve().parent


def main() -> None:
    path = assets.efficientnet_lite0()
    image_path = next(p for p in assets.example_images() if p.stem == "chelsea")
    spec = ImageSpec.for_model(path)
    image = read_image(image_path)
    x = spec.to_input(image)
    model = Model(path, device="cpu", verbose=False)
    heat = GradCAM(model, "_swish_1", postprocessing=minmax_normalizer)(x, class_idx=285)[0, 0]
    shown = cv2.resize(image, spec.size[::-1], interpolation=cv2.INTER_AREA)
    boxes = boxes_from_map(heat, threshold=0.5, max_boxes=3)
    picture = draw_boxes(overlay(shown, heat, alpha=0.45), boxes, color=(255, 255, 255),
                         labels=[f"Egyptian cat {b.peak:.2f}" if i == 0 else f"{b.peak:.2f}"
                                 for i, b in enumerate(boxes)])
    print(write_png(HERE / "pictures" / "cat_gradcam.png", picture), boxes)


if __name__ == "__main__":
    main()
