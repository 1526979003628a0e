"""Pictures made with onnx_xai.visualize, written to examples/pictures/.

    python examples/make_visualize_pictures.py

- cat_overlay.png: the shipped EfficientNet-Lite0 on the cat photo, with a quick occlusion map
  (mean-colour 56-pixel patches, stride 14, drop of the top class' probability) as a heatmap and the
  boxes of its hottest regions. Stand-in until the occlusion / Grad-CAM methods land.
- volume_montage.png: a matshow3d-style montage of a synthetic 3D volume (a sphere and a blob).
- volume_map.gif: the same volume as an animated GIF with a map over it.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from onnx_xai import Model, softmax, visualize as vis
from onnx_xai.assets import efficientnet_lite0, example_images
from onnx_xai.preprocess import ImageSpec, read_image

OUT = Path(__file__).resolve().parent / "pictures"


def quick_occlusion(model: Model, x: np.ndarray, cls: int, patch: int = 56, stride: int = 14) -> np.ndarray:
    """``(H, W)`` mean drop of softmax[cls] when a zero (= mean colour) patch covers each pixel,
    negative drops set to 0, smoothed (Gaussian, sigma 8 px)."""
    _, _, h, w = x.shape
    base = softmax(model.predict(x))[0, cls]
    starts = [(r, c) for r in range(0, h - patch + 1, stride) for c in range(0, w - patch + 1, stride)]
    batch = np.repeat(x, len(starts), axis=0)
    for i, (r, c) in enumerate(starts):
        batch[i, :, r:r + patch, c:c + patch] = 0.0
    probs = softmax(model.predict(batch, batch_size=64))[:, cls]
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (r, c), p in zip(starts, probs):
        total[r:r + patch, c:c + patch] += base - p
        count[r:r + patch, c:c + patch] += 1
    drop = np.maximum(total / np.maximum(count, 1), 0).astype(np.float32)
    return cv2.GaussianBlur(drop, (0, 0), 8)


def cat_overlay() -> None:
    path = efficientnet_lite0()
    model, spec = Model(path), ImageSpec.for_model(path)
    cat = next(p for p in example_images() if p.stem == "chelsea")
    image = read_image(cat)
    x = spec.to_input(image)
    cls = int(np.argmax(model.predict(x)[0]))
    heat = quick_occlusion(model, x, cls)
    label = spec.labels[cls] if spec.labels else str(cls)
    paths = vis.save_explanation(OUT / "cat_occlusion", image, heat,
                                 {"model": path.name, "image": cat.name, "class": cls, "label": label,
                                  "method": "quick occlusion (56 px patches, stride 14, blurred)"})
    boxes = vis.boxes_from_map(heat, threshold=0.7, max_boxes=1, image_size=image.shape[:2])
    picture = vis.draw_boxes(vis.overlay(image, heat, alpha=0.45), boxes, color=(255, 255, 255),
                             labels=[f"{label} {b.peak:.2f}" for b in boxes])
    vis.write_png(OUT / "cat_overlay.png", picture)
    print(f"class {cls} ({label}); boxes {boxes}; wrote {paths['png'].name} and cat_overlay.png")


def synthetic_volume(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """``(n, n, n)`` volume (a bright shell + a Gaussian blob + noise) and a map on the blob."""
    z, y, x = np.mgrid[:n, :n, :n] / (n - 1) - 0.5
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    blob = np.exp(-((x - 0.12) ** 2 + (y + 0.1) ** 2 + (z - 0.05) ** 2) / 0.006)
    vol = (np.abs(r - 0.35) < 0.04) * 0.8 + 0.6 * blob
    vol += np.random.default_rng(0).normal(0, 0.05, vol.shape)
    return vol.astype(np.float32), blob.astype(np.float32)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    cat_overlay()
    vol, heat = synthetic_volume()
    grid = vis.save_montage(OUT / "volume_montage.png", vol, every_n=3, margin=2, cmap="gray")
    print(f"montage {grid.shape}")
    frames = vis.save_gif(OUT / "volume_map.gif", vol, heat, frame_dim=-3, alpha=0.4, colormap="jet",
                          duration_ms=120)
    print(f"gif {frames.shape}")
