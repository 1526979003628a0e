"""Write the example photos in examples/images/ from scikit-image's bundled sample data.

    pip install scikit-image opencv-python-headless
    python examples/make_example_images.py
"""
from pathlib import Path

import cv2
import skimage.data

HERE = Path(__file__).resolve().parent / "images"

if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    for name in ("chelsea", "coffee"):
        rgb = getattr(skimage.data, name)()
        cv2.imwrite(str(HERE / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        print(f"wrote {HERE / name}.png {rgb.shape}")
