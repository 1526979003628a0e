"""onnx_xai.visualize against MONAI's functions on the same arrays and hand-computed answers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from onnx_xai import visualize as vis


# ---------------------------------------------------------------- library hygiene
def test_import_pulls_in_neither_torch_nor_matplotlib():
    code = "import sys, onnx_xai.visualize; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------- blend_images vs MONAI
@pytest.mark.parametrize("cmap,tol", [("hsv", 0.0), ("jet", 0.0), ("gray", 0.0), ("viridis", 2e-3), ("magma", 2e-3)])
def test_blend_images_equals_monai_2d(rng, cmap, tol):
    monai_blend = pytest.importorskip("monai.visualize.utils").blend_images

    img = rng.random((1, 20, 30)).astype(np.float32)
    lab = ((rng.random((1, 20, 30)) > 0.5) * rng.random((1, 20, 30))).astype(np.float32)
    ours = vis.blend_images(img, lab, cmap=cmap)
    ref = monai_blend(img, lab, cmap=cmap)
    assert ours.shape == ref.shape == (3, 20, 30)
    np.testing.assert_allclose(ours, ref, atol=tol + 1e-7, rtol=0)


@pytest.mark.parametrize("kwargs", [dict(alpha=0.3), dict(rescale_arrays=False, transparent_background=False),
                                    dict(alpha="array"), dict(cmap="jet", transparent_background=False)])
def test_blend_images_equals_monai_3d_rgb(rng, kwargs):
    monai_blend = pytest.importorskip("monai.visualize.utils").blend_images

    img = rng.random((3, 8, 9, 10))
    lab = rng.integers(0, 4, (1, 8, 9, 10)).astype(np.float32) / 3  # values in [0, 1], zeros = background
    if kwargs.get("alpha") == "array":
        kwargs = dict(alpha=rng.random((1, 8, 9, 10)).astype(np.float32))
    ref = monai_blend(img, lab, **{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()})
    ours = vis.blend_images(img, lab, **kwargs)
    assert ours.shape == (3, 8, 9, 10)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    assert (ours != img.astype(np.float32)).any()


def test_blend_images_hand_computed():
    img = np.array([[[0.0, 1.0]]])  # (1, 1, 2)
    lab = np.array([[[0.0, 1.0]]])
    out = vis.blend_images(img, lab, alpha=0.25)
    # background pixel keeps the grey image; the label pixel is hsv(1.0) = (1, 0, 0.09375)
    np.testing.assert_allclose(out[:, 0, 0], [0, 0, 0])
    np.testing.assert_allclose(out[:, 0, 1], 0.75 * 1.0 + 0.25 * np.array([1.0, 0.0, 0.09375]), atol=1e-6)


@pytest.mark.parametrize("image,label,msg", [
    (np.zeros((2, 4, 4)), np.zeros((1, 4, 4)), "1 or 3 channels"),
    (np.zeros((1, 4, 4)), np.zeros((2, 4, 4)), "1 channel"),
    (np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), "same spatial size"),
])
def test_blend_images_bad_input(image, label, msg):
    with pytest.raises(ValueError, match=msg):
        vis.blend_images(image, label)
    with pytest.raises(ValueError, match="unknown colormap"):
        vis.blend_images(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), cmap="nope")


# ---------------------------------------------------------------- montage vs MONAI matshow3d
MONTAGE_CASES = [
    ("hwd", lambda r: r.random((10, 12, 7)), {}),
    ("bchwd_frames_last", lambda r: r.random((2, 1, 6, 7, 5)), dict(frame_dim=-1, every_n=2, margin=2, frames_per_row=3)),
    ("list_padded", lambda r: [r.random((1, 5, 6, 7)), r.random((1, 8, 3, 7))], dict(fill_value=0)),
    ("rgb_chwd", lambda r: r.random((3, 6, 7, 5)), dict(channel_dim=0)),
    ("rgb_bchwd", lambda r: r.random((1, 3, 6, 7, 5)), dict(channel_dim=1, frame_dim=-1)),
    ("2d", lambda r: r.random((5, 6)), dict(margin=0)),
    ("many_per_row", lambda r: r.random((4, 3, 3)), dict(frames_per_row=10, frame_dim=-2)),
]


@pytest.mark.parametrize("name,make,kwargs", MONTAGE_CASES, ids=[c[0] for c in MONTAGE_CASES])
def test_montage_equals_monai_matshow3d(rng, name, make, kwargs):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    monai_matshow3d = pytest.importorskip("monai.visualize.utils").matshow3d

    vol = make(rng)
    fig, ref = monai_matshow3d(vol, **kwargs)
    plt.close(fig)
    ours = vis.montage(vol, **kwargs)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    np.testing.assert_array_equal(ours, ref)


def test_matshow3d_figure_when_matplotlib_is_there(rng):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    monai_matshow3d = pytest.importorskip("monai.visualize.utils").matshow3d

    vol = rng.random((6, 5, 4))
    fig, im = vis.matshow3d(vol, title="t", frames_per_row=4)
    ref_fig, ref = monai_matshow3d(vol, title="t", frames_per_row=4)
    np.testing.assert_array_equal(im, ref)
    assert fig.axes[0].get_title() == "t" and fig.axes[0].images[0].get_clim() == ref_fig.axes[0].images[0].get_clim()
    plt.close(fig)
    plt.close(ref_fig)


def test_montage_layout_by_hand():
    vol = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)  # 5 frames of 2x3 along dim -3
    grid = vis.montage(vol, margin=1)  # ceil(sqrt(5)) = 3 per row, 2 rows
    assert grid.shape == (2 * 4, 3 * 5)
    np.testing.assert_array_equal(grid[1:3, 6:9], vol[1])  # frame 1: row 0, col 1
    np.testing.assert_array_equal(grid[5:7, 6:9], vol[4])  # frame 4: row 1, col 1
    assert np.isnan(grid[4:, 10:]).all()  # the empty slot
    assert np.isnan(grid[0]).all()  # margin


def test_save_montage_png(tmp_path, rng):
    vol = rng.random((9, 10, 11))
    rgb = vis.save_montage(tmp_path / "m.png", vol, cmap="gray", margin=1)
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "m.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, rgb)
    assert rgb.shape == (3 * 12, 3 * 13, 3)
    assert (rgb[0, 0] == 255).all()  # NaN margin rendered white
    expected = np.round((vol[0] - vol.min()) / (vol.max() - vol.min()) * 255)
    np.testing.assert_array_equal(rgb[1:11, 1:12, 0], expected)
    assert list(tmp_path.iterdir()) == [tmp_path / "m.png"]


def test_montage_bad_input():
    with pytest.raises(ValueError, match="frame_dim"):
        vis.montage(np.zeros((3, 4, 5)), frame_dim=0)
    with pytest.raises(ValueError, match="channel_dim"):
        vis.montage(np.zeros((2, 4, 5, 6)), channel_dim=0)
    with pytest.raises(ValueError, match="float dtype"):
        vis.montage(np.zeros((3, 4, 5)), dtype=np.uint8)
    with pytest.raises(ValueError, match="empty"):
        vis.montage([])


# ---------------------------------------------------------------- normalize / colormaps / overlay
def test_normalize_hand_computed():
    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    np.testing.assert_allclose(vis.normalize(m), [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(vis.normalize(m, flip=True), [[1, 0.75], [0.5, 0]])
    # percentile clip: vmax = percentile([0, 1, 2, 4], 50) = 1.5
    np.testing.assert_allclose(vis.normalize(m, percentile=50), [[0, 1 / 1.5], [1, 1]], rtol=1e-6)
    assert (vis.normalize(np.full((3, 3), 7.0)) == 0).all()
    with pytest.raises(ValueError, match="percentile"):
        vis.normalize(m, percentile=0)
    with pytest.raises(ValueError, match="empty"):
        vis.normalize(np.zeros((0, 3)))


def test_apply_colormap_hand_computed():
    ramp = np.linspace(0, 1, 256).reshape(16, 16)
    jet = vis.apply_colormap(ramp, "jet")
    assert tuple(jet[0, 0]) == (0, 0, 128) and tuple(jet[-1, -1]) == (128, 0, 0)  # dark blue .. dark red
    grey = vis.apply_colormap(ramp, "gray")
    np.testing.assert_array_equal(grey[..., 0].ravel(), np.arange(256))
    with pytest.raises(ValueError, match="2D"):
        vis.apply_colormap(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="unknown colormap"):
        vis.apply_colormap(ramp, "nope")


def test_every_matplotlib_name_has_matplotlibs_colours():
    """A name we share with matplotlib means matplotlib's colours (hot, pink, ocean, rainbow, jet,
    hsv, bone and twilight used to be OpenCV's differing tables), within rounding."""
    mpl = pytest.importorskip("matplotlib")
    lower = {n.lower(): n for n in mpl.colormaps}
    shared = [n for n in vis.colormap_names() if n in lower]
    assert {"hot", "pink", "ocean", "rainbow", "jet", "hsv", "bone", "twilight", "viridis", "rdbu_r",
            "bwr", "seismic", "gray"} <= set(shared)
    v = np.arange(256) / 255.0
    for name in shared:
        ref = mpl.colormaps[lower[name]](v)[:, :3]  # matplotlib's colour for the value k / 255
        assert np.abs(vis.colormap_lut(name) - ref).max() <= 1 / 255 + 1e-9, name
        drawn = vis.apply_colormap(v[None], name, normalize_map=False)[0] / 255.0
        assert np.abs(drawn - ref).max() <= 1 / 255 + 1e-9, name
        if name.upper() != lower[name]:  # any spelling works
            np.testing.assert_array_equal(vis.colormap_lut(lower[name]), vis.colormap_lut(name))


def test_overlay_known_arrays():
    image = np.full((4, 6, 3), 200, np.uint8)
    heat = np.zeros((2, 3))
    heat[0, 0] = 1.0  # resized bilinearly to 4x6; max stays 1 and min 0
    out = vis.overlay(image, heat, alpha=0.5, colormap="jet")
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    # pixel with map 0 → jet(0) = (0, 0, 128): 0.5 * 200 + 0.5 * (0, 0, 128)
    np.testing.assert_array_equal(out[-1, -1], [100, 100, 164])
    # grey float image in [0, 1], alpha 0 → the image itself
    grey = np.linspace(0, 1, 24).reshape(4, 6)
    np.testing.assert_array_equal(vis.overlay(grey, heat, alpha=0.0)[..., 1], np.round(grey * 255))
    with pytest.raises(ValueError, match="alpha"):
        vis.overlay(image, heat, alpha=1.5)
    with pytest.raises(ValueError, match="image must be"):
        vis.overlay(np.zeros((4, 6, 2)), heat)


# ---------------------------------------------------------------- GIF
def test_gif_round_trip(tmp_path):
    vol = np.zeros((5, 12, 16))  # H=5 frames along -3, each 12x16
    for i in range(5):
        vol[i] = i / 4
    frames = vis.save_gif(tmp_path / "v.gif", vol, frame_dim=-3)
    back = vis.read_gif(tmp_path / "v.gif")
    assert frames.shape == back.shape == (5, 12, 16, 3)
    np.testing.assert_allclose(back[:, 0, 0, 0], [0, 64, 128, 191, 255], atol=3)
    assert [p.name for p in tmp_path.iterdir()] == ["v.gif"]


def test_gif_map_over_volume_and_channels(tmp_path):
    vol = np.random.default_rng(1).random((2, 6, 7, 9))  # CHWD
    heat = np.zeros((6, 7, 9))
    heat[..., 4] = 1.0
    frames = vis.save_gif(tmp_path / "m.gif", vol, heat, frame_dim=-1, max_out=2, alpha=1.0, colormap="jet")
    assert frames.shape == (9, 6, 14, 3)  # 9 frames along D, the 2 channels side by side
    assert tuple(frames[4, 0, 0]) == (128, 0, 0) and tuple(frames[0, 0, 0]) == (0, 0, 128)
    assert vis.read_gif(tmp_path / "m.gif").shape == (9, 6, 14, 3)
    with pytest.raises(ValueError, match="spatial shape"):
        vis.save_gif(tmp_path / "x.gif", vol, np.zeros((6, 7, 8)))
    with pytest.raises(ValueError, match="frame_dim"):
        vis.volume_frames(vol, frame_dim=0)
    with pytest.raises(ValueError, match="uint8"):
        vis.write_gif(tmp_path / "y.gif", np.zeros((2, 4, 4)))
    assert not (tmp_path / "x.gif").exists() and not (tmp_path / "y.gif").exists()


def test_gif_scale_factor_is_monais():
    vol = np.full((1, 2, 3, 4), 0.5)
    assert (vis.volume_frames(vol, scale_factor=255) == 127).all()  # int(0.5 * 255)
    assert (vis.volume_frames(vol * 10, scale_factor=255) == 255).all()  # clipped, not wrapped


# ---------------------------------------------------------------- TensorBoard helpers
class FakeWriter:
    def __init__(self):
        self.calls = []

    def add_image(self, tag, img, step, dataformats="CHW"):
        self.calls.append(("image", tag, np.array(img), step, dataformats))

    def add_video(self, tag, vid, global_step=None, fps=4, dataformats="NTCHW"):
        self.calls.append(("video", tag, np.array(vid), global_step, fps, dataformats))


@pytest.mark.parametrize("shape,max_channels", [((2, 5, 6), 1), ((2, 3, 5, 6), 2), ((2, 3, 5, 6), 3),
                                                 ((1, 4, 5, 6), 3)])
def test_plot_2d_images_same_calls_as_monai(rng, shape, max_channels):
    monai_plot = pytest.importorskip("monai.visualize.img2tensorboard").plot_2d_or_3d_image

    data = rng.random(shape).astype(np.float32) * 7 - 2
    ours, ref = FakeWriter(), FakeWriter()
    vis.plot_2d_or_3d_image(data, 3, ours, index=1 if shape[0] > 1 else 0, max_channels=max_channels, tag="t")
    monai_plot(data, 3, ref, index=1 if shape[0] > 1 else 0, max_channels=max_channels, tag="t")
    assert [c[1] for c in ours.calls] == [c[1] for c in ref.calls] and ours.calls
    for a, b in zip(ours.calls, ref.calls):
        assert a[0] == b[0] and a[3] == b[3] and a[4] == b[4]
        np.testing.assert_allclose(a[2], b[2], atol=1e-6)


def test_plot_3d_volume_sends_gif_frames(rng):
    data = rng.random((1, 2, 4, 5, 6))  # NCHWD
    w = FakeWriter()
    vis.plot_2d_or_3d_image(data, 7, w, max_channels=2, frame_dim=-1, tag="vol")
    assert [c[1] for c in w.calls] == ["vol_HWD/image/0", "vol_HWD/image/1"]
    kind, _, vid, step, _, _ = w.calls[1]
    assert kind == "video" and step == 7 and vid.dtype == np.uint8
    assert vid.shape == (1, 6, 1, 4, 5)  # (N, T=D frames, C, H, W)
    ch = data[0, 1]
    expected = ((ch - ch.min()) / (ch.max() - ch.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(vid[0, :, 0], np.moveaxis(expected, -1, 0))


def test_plot_rgb_volume_as_video_for_tensorboardx(rng):
    XWriter = type("SummaryWriter", (FakeWriter,), {"__module__": "tensorboardX.writer"})
    data = rng.random((1, 3, 4, 5, 6))
    w = XWriter()
    vis.plot_2d_or_3d_image(data, 1, w, max_channels=3, max_frames=12)
    (kind, tag, vid, step, fps, fmt), = w.calls
    assert (kind, tag, fps, fmt) == ("video", "output", 12, "NCHWT") and vid.shape == (1, 3, 5, 6, 4)


def test_add_animated_gif_tags_and_bad_writer(rng):
    w = FakeWriter()
    vis.add_animated_gif(w, "g", rng.random((3, 4, 5, 6)), max_out=1, scale_factor=255, global_step=2)
    assert [c[1] for c in w.calls] == ["g/image"] and w.calls[0][2].shape == (1, 4, 1, 5, 6)
    with pytest.raises(ValueError, match="add_video"):
        vis.add_animated_gif(object(), "g", np.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="CHWD"):
        vis.add_animated_gif(w, "g", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="add_image"):
        vis.plot_2d_or_3d_image(np.zeros((1, 4, 4)), 0, object())


# ---------------------------------------------------------------- save_explanation
def test_save_explanation_writes_valid_files_and_no_temps(tmp_path, rng):
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    heat = rng.random((1, 5, 6)).astype(np.float32)
    paths = vis.save_explanation(tmp_path / "cat", image, heat, {"class": 285, "score": np.float32(0.9)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.json", "cat.npy", "cat.png"]
    np.testing.assert_array_equal(np.load(paths["npy"]), heat)
    png = cv2.cvtColor(cv2.imread(str(paths["png"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(png[:20, :30], vis.overlay(image, heat))  # the overlay, then its colour bar
    assert png.shape[0] == vis.colorbars.MIN_HEIGHT and (png[20:, :30] == 255).all()  # short: padded below
    meta = json.loads(paths["json"].read_text())
    assert meta["class"] == 285 and abs(meta["score"] - 0.9) < 1e-6
    assert meta["map"]["shape"] == [1, 5, 6] and meta["map"]["max"] == pytest.approx(float(heat.max()))
    assert meta["colour_scale"]["signed"] is False and meta["colour_scale"]["colormap"] == "jet"
    bare = vis.save_explanation(tmp_path / "bare", image, heat, colorbar=False)["png"]
    np.testing.assert_array_equal(cv2.imread(str(bare))[..., ::-1], vis.overlay(image, heat))


def test_save_explanation_bad_input_writes_nothing(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="JSON"):
        vis.save_explanation(tmp_path / "a", image, np.ones((4, 4)), {"x": object()})
    with pytest.raises(ValueError, match="one 2D map"):
        vis.save_explanation(tmp_path / "a", image, np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="does not exist"):
        vis.save_explanation(tmp_path / "missing" / "a", image, np.ones((4, 4)))
    assert os.listdir(tmp_path) == []


def test_save_explanation_interrupted_write_leaves_no_temp(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        vis.save_explanation(tmp_path / "a", np.zeros((8, 8, 3), np.uint8), np.ones((4, 4)))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- boxes
def test_boxes_from_map_components_hottest_first():
    m = np.zeros((8, 10))
    m[1:3, 1:4] = 0.6  # component A, peak 0.6
    m[5:8, 6:9] = 0.8
    m[6, 7] = 1.0  # component B, peak 1.0
    boxes = vis.boxes_from_map(m, threshold=0.5)
    assert [tuple(b[:4]) for b in boxes] == [(6, 5, 9, 8), (1, 1, 4, 3)]
    assert boxes[0].peak == 1.0 and boxes[1].peak == pytest.approx(0.6)
    assert [tuple(b[:4]) for b in vis.boxes_from_map(m, threshold=1.0)] == [(7, 6, 8, 7)]  # hottest cell
    assert len(vis.boxes_from_map(m, threshold=0.5, max_boxes=1)) == 1
    # the fastai walkthrough: an 8x8 map over a 1024x1024 image → 128-pixel cells
    (b,) = vis.boxes_from_map(m[:8, :8], threshold=1.0, image_size=(1024, 1024))
    assert tuple(b[:4]) == (7 * 128, 6 * 128, 8 * 128, 7 * 128)
    assert vis.boxes_from_map(np.ones((4, 4))) == []
    with pytest.raises(ValueError, match="threshold"):
        vis.boxes_from_map(m, threshold=2)


def test_draw_boxes():
    img = np.zeros((10, 12, 3), np.uint8)
    out = vis.draw_boxes(img, [(2, 3, 7, 9)], color=(0, 255, 0), thickness=1)
    assert tuple(out[3, 2]) == (0, 255, 0) and tuple(out[8, 6]) == (0, 255, 0)  # corners x0,y0 and x1-1,y1-1
    assert tuple(out[5, 4]) == (0, 0, 0) and img.max() == 0  # inside untouched, input not modified
    with pytest.raises(ValueError, match="empty"):
        vis.draw_boxes(img, [(5, 5, 5, 8)])


# ---------------------------------------------------------------- signed maps, colour bars
RDBU_R_NEUTRAL = (247, 247, 247)  # matplotlib's RdBu_r at 0.5: #f7f7f7


def test_signed_map_centred_on_zero_in_a_diverging_map():
    mpl = pytest.importorskip("matplotlib")
    rdbu_r = mpl.colormaps["RdBu_r"].resampled(2 ** 16 + 1)  # entries at k / 2**16: exact at 0.5, 0.75, ...
    m = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
    assert vis.is_signed(m) and not vis.is_signed(np.abs(m))
    assert not vis.is_signed(np.array([1.0, 0.5, -1e-6]))  # float noise below 0 is not a sign
    scale = vis.color_scale(m)
    assert (scale.signed, scale.vmin, scale.vmax, scale.colormap) == (True, -2.0, 2.0, "rdbu_r")
    out = vis.overlay(np.zeros((1, 5, 3), np.uint8), m, alpha=1.0)  # the map's colours alone
    assert tuple(out[0, 2]) == RDBU_R_NEUTRAL  # 0 → the neutral colour exactly
    expected = np.round(rdbu_r(np.array([0.0, 0.25, 0.5, 0.75, 1.0]))[:, :3] * 255)
    np.testing.assert_allclose(out[0], expected, atol=1)
    assert out[0, 4, 0] > out[0, 4, 2] and out[0, 3, 0] > out[0, 3, 2]  # positive: red
    assert out[0, 0, 2] > out[0, 0, 0] and out[0, 1, 2] > out[0, 1, 0]  # negative: blue
    # the scale is symmetric: -1 and +1 are equally far from the neutral colour
    lopsided = vis.overlay(np.zeros((1, 3, 3), np.uint8), np.array([[-1.0, 0.0, 4.0]]), alpha=1.0)
    assert tuple(lopsided[0, 1]) == RDBU_R_NEUTRAL
    np.testing.assert_allclose(lopsided[0, 0], np.round(np.array(rdbu_r(0.5 - 0.5 / 4)[:3]) * 255), atol=1)
    # signed=False: the old min-max drawing (jet: min dark blue, max dark red); True forces centring
    old = vis.overlay(np.zeros((1, 5, 3), np.uint8), m, alpha=1.0, signed=False)
    assert tuple(old[0, 0]) == (0, 0, 128) and tuple(old[0, -1]) == (128, 0, 0)
    forced = vis.overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0.0, 1.0]]), alpha=1.0, signed=True)
    assert tuple(forced[0, 0]) == RDBU_R_NEUTRAL
    with pytest.raises(ValueError, match="signed"):
        vis.overlay(np.zeros((1, 5, 3), np.uint8), m, signed="yes")


def test_percentile_clip_of_signed_and_unsigned_maps(rng):
    grad = rng.normal(size=(40, 50))
    grad[3, 4] = 1000.0  # one extreme gradient would wash everything else out
    scale = vis.color_scale(grad, percentile=99)
    top = np.percentile(np.abs(grad), 99)
    assert scale.signed and scale.clipped and scale.vmax == pytest.approx(top) and scale.vmin == -scale.vmax
    t = scale.scale(np.array([0.0, top / 2, -top, 1000.0, -1000.0]))
    np.testing.assert_allclose(t, [0.5, 0.75, 0.0, 1.0, 0.0], atol=1e-6)
    unclipped = vis.color_scale(grad)
    assert unclipped.vmax == 1000.0 and not unclipped.clipped
    image = np.zeros((40, 50, 3), np.uint8)
    clipped = vis.overlay(image, grad, alpha=1.0, percentile=99)
    washed = vis.overlay(image, grad, alpha=1.0)
    # without the clip nearly every pixel is the neutral grey; with it the map shows
    assert (np.abs(washed.astype(int) - 247).max(axis=2) <= 3).mean() > 0.99
    assert (np.abs(clipped.astype(int) - 247).max(axis=2) <= 3).mean() < 0.2
    # unsigned: vmax = percentile(map), as normalize()
    pos = np.abs(grad)
    s2 = vis.color_scale(pos, percentile=90)
    assert not s2.signed and s2.vmin == pos.min() and s2.vmax == pytest.approx(np.percentile(pos, 90))
    np.testing.assert_allclose(s2.scale(pos), vis.normalize(pos, percentile=90), atol=1e-6)
    with pytest.raises(ValueError, match="percentile"):
        vis.color_scale(grad, percentile=0)


def _bar_column(png: np.ndarray, x0: int) -> np.ndarray:
    """The colours down the middle of the bar of the panel starting at column ``x0``."""
    return png[:, x0 + vis.colorbars.GAP + vis.colorbars.BAR_WIDTH // 2]


def _bar_rows(col: np.ndarray) -> tuple[int, int]:
    """First and last row of the bar (non-white, inside the grey frame)."""
    rows = np.nonzero((col != 255).any(axis=1))[0]
    return rows[0] + 1, rows[-1] - 1


def test_save_explanation_colour_bar_signed(tmp_path):
    image = np.full((120, 160, 3), 128, np.uint8)
    m = np.zeros((120, 160))
    m[20:50, 20:60] = 0.8
    m[70:100, 90:140] = -0.3
    paths = vis.save_explanation(tmp_path / "occ", image, m, {"method": "occlusion"})
    png = cv2.imread(str(paths["png"]))[..., ::-1]
    overlay, scale = vis.overlay_with_scale(image, m)
    bar = vis.colorbars.colorbar(scale, 120)
    assert png.shape == (120, 160 + bar.shape[1], 3) and bar.shape[1] > vis.colorbars.BAR_WIDTH
    np.testing.assert_array_equal(png[:, :160], overlay)
    np.testing.assert_array_equal(png[:, 160:], bar)
    assert tuple(overlay[0, 0]) == tuple(np.round(0.5 * 128 + 0.5 * np.array(RDBU_R_NEUTRAL)))  # 0 → neutral
    col = _bar_column(png, 160)
    top, bottom = _bar_rows(col)
    assert (bottom - top) % 2 == 0
    assert tuple(col[(top + bottom) // 2]) == RDBU_R_NEUTRAL  # the middle of the bar is 0
    assert col[top, 0] > 90 and col[top, 2] < 40  # +0.8 at the top: dark red
    assert col[bottom, 2] > 90 and col[bottom, 0] < 10  # -0.8 at the bottom: dark blue
    labels = png[:, 160 + vis.colorbars.GAP + vis.colorbars.BAR_WIDTH + 6:]
    dark = labels.max(axis=2) < 100
    assert dark[:15].any() and dark[-15:].any() and dark[55:65].any()  # text at the top, bottom, middle
    meta = json.loads(paths["json"].read_text())
    assert meta["colour_scale"] == {"vmin": pytest.approx(-0.8), "vmax": pytest.approx(0.8), "signed": True,
                                    "colormap": "rdbu_r", "clipped": False}


def test_colour_bar_unsigned_and_labels():
    scale = vis.color_scale(np.array([0.0, 0.5, 1.0]))
    panel = vis.colorbars.colorbar(scale, 100)
    col = _bar_column(panel, 0)
    top, bottom = _bar_rows(col)
    assert tuple(col[top]) == (128, 0, 0) and tuple(col[bottom]) == (0, 0, 128)  # jet: max .. min
    assert vis.colorbars._labels(scale) == [(1.0, "1"), (0.0, "0")]
    signed = vis.color_scale(np.array([-0.004, 0.01, 2e-5]), percentile=50)
    assert [text for _, text in vis.colorbars._labels(signed)] == [">0.004", "<-0.004", "0"]
    pic = vis.add_colorbar(np.zeros((200, 10, 3), np.uint8), scale)
    assert pic.shape == (200, 10 + vis.colorbars.colorbar(scale, 200).shape[1], 3)
    with pytest.raises(ValueError, match="uint8"):
        vis.add_colorbar(np.zeros((20, 10)), scale)


def test_volume_slice_grid_signed_with_colour_bar(rng):
    volume_picture = vis.volume_picture
    vol = rng.random((24, 24, 8)).astype(np.float32)
    m = np.zeros((24, 24, 8), np.float32)
    m[2:8, 2:8] = 1.0
    m[14:20, 14:20] = -0.5
    pic = volume_picture(vol, m, alpha=1.0)
    grid = volume_picture(vol, m, alpha=1.0, colorbar=False)
    assert pic.shape[0] == grid.shape[0] and pic.shape[1] > grid.shape[1] + vis.colorbars.BAR_WIDTH
    np.testing.assert_array_equal(pic[:, :grid.shape[1]], grid)
    assert tuple(grid[50, 50]) == RDBU_R_NEUTRAL  # a 0 voxel (slice 0, scaled 4x) → neutral
    assert grid[5 * 4, 5 * 4, 0] > grid[5 * 4, 5 * 4, 2]  # +1: red
    assert grid[16 * 4, 16 * 4, 2] > grid[16 * 4, 16 * 4, 0]  # -0.5: blue
    col = _bar_column(pic, grid.shape[1])
    top, bottom = _bar_rows(col)
    assert tuple(col[(top + bottom) // 2]) == RDBU_R_NEUTRAL
    assert volume_picture(vol).shape == grid.shape  # the input alone: no bar


def test_save_explanation_of_a_volume_writes_its_slice_grid(tmp_path, rng):
    vol = rng.random((24, 24, 8)).astype(np.float32)
    m = rng.standard_normal((1, 24, 24, 8)).astype(np.float32)
    paths = vis.save_explanation(tmp_path / "v", vol, m, {"method": "x"}, percentile=99.0)
    png = cv2.cvtColor(cv2.imread(str(paths["png"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(png, vis.volume_picture(vol, m[0], percentile=99.0))
    np.testing.assert_array_equal(np.load(paths["npy"]), m)
    record = json.loads(paths["json"].read_text())
    assert record["map"]["shape"] == [1, 24, 24, 8] and record["colour_scale"]["signed"] is True
    assert record["method"] == "x" and record["colour_scale"]["clipped"] is True
    with pytest.raises(ValueError, match="one 2D map"):  # a stack of 2D maps over a 2D image
        vis.save_explanation(tmp_path / "w", vol[..., 0], m[0])


def test_gif_frames_signed_map():
    vol = np.zeros((4, 5, 6))
    m = np.zeros((4, 5, 6))
    m[0, 0, 0], m[0, 0, 1] = 1.0, -1.0
    frames = vis.volume_frames(vol, m, alpha=1.0)
    assert tuple(frames[0, 1, 1]) == RDBU_R_NEUTRAL
    assert frames[0, 0, 0, 0] > frames[0, 0, 0, 2] and frames[0, 0, 1, 2] > frames[0, 0, 1, 0]
