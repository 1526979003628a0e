"""TensorBoard helpers with MONAI's arguments for any SummaryWriter-like object (no torch import).

The writer only needs ``add_image(tag, img, step, dataformats=...)`` and, for volumes,
``add_video(tag, vid, global_step, fps=...)`` (torch's and tensorboardX's writers have both;
they need ``moviepy`` to encode the video as a GIF).
"""
from __future__ import annotations

import numpy as np

from .colors import as_array, rescale01


def _numpy(x) -> np.ndarray:
    """A NumPy view of an array or of a torch tensor (duck-typed; torch is never imported)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return as_array(x, "data")


def _check_writer(writer, *methods: str) -> None:
    missing = [m for m in methods if not callable(getattr(writer, m, None))]
    if missing:
        raise ValueError(f"writer must be SummaryWriter-like with {', '.join(methods)}(); "
                         f"{type(writer).__name__} lacks {', '.join(missing)}")


def add_animated_gif(writer, tag: str, image_tensor, max_out: int = 3, frame_dim: int = -3,
                     scale_factor: float = 1.0, global_step: int | None = None, fps: int = 4) -> None:
    """Animate a ``CHWD`` image along ``frame_dim`` (over CHWD; default -3, the first spatial dim).

    One video per channel for the first ``max_out`` channels, tagged ``{tag}/image`` (max_out
    == 1) or ``{tag}/image/{i}`` as MONAI; values are multiplied by ``scale_factor`` and clipped
    to uint8. Sent as ``writer.add_video(tag, vid (1, T, 1, H, W) uint8, global_step, fps=fps)``.
    """
    _check_writer(writer, "add_video")
    img = _numpy(image_tensor)
    if img.ndim != 4:
        raise ValueError(f"image_tensor must be CHWD (4 dims), got shape {img.shape}")
    if frame_dim not in (-3, -2, -1, 1, 2, 3):
        raise ValueError(f"frame_dim must be a spatial dim of CHWD (1, 2, 3 or -3, -2, -1), got {frame_dim!r}")
    fd = frame_dim - 1 if frame_dim > 0 else frame_dim  # over HWD
    suffix = "/image" if max_out == 1 else "/image/{}"
    for i in range(min(int(max_out), img.shape[0])):
        frames = np.moveaxis(img[i], fd, 0).astype(np.float64) * scale_factor
        frames = np.clip(frames, 0, 255).astype(np.uint8)
        writer.add_video(tag + suffix.format(i), frames[None, :, None], global_step, fps=fps)


def plot_2d_or_3d_image(data, step: int, writer, index: int = 0, max_channels: int = 1, frame_dim: int = -3,
                        max_frames: int = 24, tag: str = "output") -> None:
    """Plot ``data[index]`` (``data``: ``NCHW[D]`` or a list of ``CHW[D]``) as MONAI does.

    - 2D ``HW``: ``add_image(f"{tag}_HW", rescaled to [0, 1], step, dataformats="HW")``.
    - 3D ``CHW``: RGB when C == 3 and ``max_channels == 3`` (``f"{tag}_CHW"``, values as given),
      else the first ``max_channels`` channels, each rescaled, as ``f"{tag}_HW_{j}"``.
    - 4D+ (``CHWD``): a tensorboardX writer with C == 3 and ``max_channels == 3`` gets one RGB
      video ``add_video(tag, (1, C, H, W, T), fps=max_frames, dataformats="NCHWT")``; otherwise
      each of the first ``max_channels`` channels is rescaled to 0..255 and animated along
      ``frame_dim`` (over ``NCHWD``) by :func:`add_animated_gif` with tag ``f"{tag}_HWD"``.
    """
    _check_writer(writer, "add_image")
    if isinstance(data, (list, tuple)) and not data:
        raise ValueError("data is empty")
    try:
        item = data[index]
    except (IndexError, TypeError) as exc:
        raise ValueError(f"index {index!r} is not valid for data of length {len(data)}") from exc
    d = _numpy(item)
    fd = frame_dim - 1 if frame_dim > 0 else frame_dim  # over CHWD
    if d.ndim < 2:
        raise ValueError(f"data[index] must be HW, CHW or CHW[D], got shape {d.shape}")
    if d.ndim == 2:
        writer.add_image(f"{tag}_HW", rescale01(d), step, dataformats="HW")
        return
    if d.ndim == 3:
        if d.shape[0] == 3 and max_channels == 3:
            writer.add_image(f"{tag}_CHW", d, step, dataformats="CHW")
            return
        for j, ch in enumerate(d[:max_channels]):
            writer.add_image(f"{tag}_HW_{j}", rescale01(ch), step, dataformats="HW")
        return
    d = d.reshape((-1,) + d.shape[-3:])
    if d.shape[0] == 3 and max_channels == 3 and type(writer).__module__.startswith("tensorboardX"):
        _check_writer(writer, "add_video")
        writer.add_video(tag, np.moveaxis(d, fd, -1)[None], step, fps=max_frames, dataformats="NCHWT")
        return
    n = min(int(max_channels), d.shape[0])
    d = np.stack([rescale01(ch) * 255 for ch in d[:n]])
    add_animated_gif(writer, f"{tag}_HWD", d, max_out=n, frame_dim=fd, global_step=step)
