"""visualize: overlays, colormaps, MONAI-style blends and montages, GIFs, TensorBoard images,
saved explanations (2D overlays, 3D slice grids), atomic file writes and boxes from maps — NumPy +
OpenCV only (matplotlib optional)."""
from .boxes import Box, boxes_from_map, draw_boxes, draw_region, overlay_with_boxes
from .colorbars import add_colorbar, colorbar
from .colors import (ColorScale, apply_colormap, blend_images, color_scale, colormap_lut, colormap_names,
                     is_signed, normalize, overlay, overlay_with_scale)
from .explanation import save_explanation
from .gif import encode_gif, read_gif, save_gif, volume_frames, write_gif
from .io import atomic_write_bytes, encode_png, write_png
from .montage import (matshow3d, montage, render_montage, save_montage, volume_picture,
                      volume_picture_with_scale)
from .tensorboard import add_animated_gif, plot_2d_or_3d_image

__all__ = [
    "normalize", "apply_colormap", "overlay", "blend_images", "colormap_lut", "colormap_names",
    "is_signed", "color_scale", "ColorScale", "overlay_with_scale", "colorbar", "add_colorbar",
    "montage", "render_montage", "save_montage", "matshow3d", "volume_picture", "volume_picture_with_scale",
    "volume_frames", "save_gif", "write_gif", "encode_gif", "read_gif",
    "plot_2d_or_3d_image", "add_animated_gif",
    "save_explanation", "write_png", "encode_png", "atomic_write_bytes", "Box", "boxes_from_map", "draw_boxes",
    "draw_region", "overlay_with_boxes",
]
