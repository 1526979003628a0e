"""Normalisation, colormaps, overlays and MONAI-style ``blend_images`` (NumPy + OpenCV)."""
from __future__ import annotations

import base64
import functools
from dataclasses import dataclass

import cv2
import numpy as np

# OpenCV colormaps by lower-case name ("jet", "magma", "viridis", ...).
CV_COLORMAPS = {name[len("COLORMAP_"):].lower(): getattr(cv2, name)
                for name in dir(cv2) if name.startswith("COLORMAP_")}

# Matplotlib's definitions (matplotlib/_cm.py, _cm_listed.py) of the maps whose OpenCV table
# differs from matplotlib's by more than rounding, or that OpenCV lacks, so that every name
# we share with matplotlib means matplotlib's colours (within 1/255) without importing it.
# Piecewise-linear segments, channel → [(x, y), ...]:
_SEGMENTS = {
    "hsv": {
        "red": [(0.0, 1.0), (0.15873, 1.0), (0.174603, 0.96875), (0.333333, 0.03125), (0.349206, 0.0),
                (0.666667, 0.0), (0.68254, 0.03125), (0.84127, 0.96875), (0.857143, 1.0), (1.0, 1.0)],
        "green": [(0.0, 0.0), (0.15873, 0.9375), (0.174603, 1.0), (0.507937, 1.0), (0.666667, 0.0625),
                  (0.68254, 0.0), (1.0, 0.0)],
        "blue": [(0.0, 0.0), (0.333333, 0.0), (0.349206, 0.0625), (0.507937, 1.0), (0.84127, 1.0),
                 (0.857143, 0.9375), (1.0, 0.09375)],
    },
    "jet": {
        "red": [(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)],
        "green": [(0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)],
        "blue": [(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)],
    },
    "gray": {c: [(0.0, 0.0), (1.0, 1.0)] for c in ("red", "green", "blue")},
    "hot": {
        "red": [(0.0, 0.0416), (0.365079, 1.0), (1.0, 1.0)],
        "green": [(0.0, 0.0), (0.365079, 0.0), (0.746032, 1.0), (1.0, 1.0)],
        "blue": [(0.0, 0.0), (0.746032, 0.0), (1.0, 1.0)],
    },
    "bone": {
        "red": [(0.0, 0.0), (0.746032, 0.652778), (1.0, 1.0)],
        "green": [(0.0, 0.0), (0.365079, 0.319444), (0.746032, 0.777778), (1.0, 1.0)],
        "blue": [(0.0, 0.0), (0.365079, 0.444444), (1.0, 1.0)],
    },
}
_SEGMENTS["grey"] = _SEGMENTS["gray"]


def _matlab_pink() -> dict:
    """Matplotlib's ``pink``: MATLAB's ``pink(64) = sqrt((2 * gray(64) + hot(64)) / 3)`` at
    ``x = k / 63`` (matplotlib lists these 64 points, to 6 decimals), linear in between."""
    m, n = 64, 24  # MATLAB's hot(m): n = fix(3 / 8 * m)
    k = np.arange(1, m + 1)
    hot = np.stack([np.minimum(k / n, 1), np.clip((k - n) / n, 0, 1), np.clip((k - 2 * n) / (m - 2 * n), 0, 1)])
    grey = (k - 1) / (m - 1)
    pink = np.sqrt((2 * grey + hot) / 3)
    return {c: list(zip(grey, pink[i])) for i, c in enumerate(("red", "green", "blue"))}


_SEGMENTS["pink"] = _matlab_pink()

# gnuplot's palette formulas (matplotlib's ``gfunc``), per channel, of x in [0, 1]:
_FUNCTIONS = {
    "ocean": (lambda x: 3 * x - 2, lambda x: np.abs((3 * x - 1) / 2), lambda x: x),  # 23, 28, 3
    "rainbow": (lambda x: np.abs(2 * x - 0.5), lambda x: np.sin(x * np.pi),  # 33, 13, 10
                lambda x: np.cos(x * np.pi / 2)),
}

# Evenly spaced colours, linear in between (``LinearSegmentedColormap.from_list``); the
# diverging maps, whose middle colour is the neutral one that 0 gets in a signed map
# (RdBu: ColorBrewer's, by Cynthia Brewer, as matplotlib ships it).
_LISTS = {
    "rdbu": [(0.403921568627451, 0.0, 0.12156862745098039), (0.6980392156862745, 0.09411764705882353,
             0.16862745098039217), (0.8392156862745098, 0.3764705882352941, 0.30196078431372547),
             (0.9568627450980393, 0.6470588235294118, 0.5098039215686274), (0.9921568627450981,
             0.8588235294117647, 0.7803921568627451), (0.9686274509803922, 0.9686274509803922,
             0.9686274509803922), (0.8196078431372549, 0.8980392156862745, 0.9411764705882353),
             (0.5725490196078431, 0.7725490196078432, 0.8705882352941177), (0.2627450980392157,
             0.5764705882352941, 0.7647058823529411), (0.12941176470588237, 0.4, 0.6745098039215687),
             (0.0196078431372549, 0.18823529411764706, 0.3803921568627451)],
    "bwr": [(0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0)],
    "seismic": [(0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0)],
}
_REVERSED = {"rdbu_r": "rdbu"}  # name → the list it reverses
DIVERGING = ("rdbu_r", "rdbu", "bwr", "seismic")
SIGNED_COLORMAP = "rdbu_r"  # default for signed maps: negative blue, 0 light grey, positive red

# matplotlib's ``twilight`` (a listed map of 510 colours; ``twilight_shifted`` is derived from
# it), rounded to uint8 and base64-encoded: OpenCV's 256-entry version is up to 2/255 off.
_TWILIGHT = (
    '4tni4dni4dni4Nni4Nni39nh3tnh3tnh3dng3Nng3Nnf29jf2tjf2dje2Nje19fd1tfd1dbc1Nbc09bb0tXb0dXa0NTZztPZ'
    'zdPYzNLYy9LXydHXyNDWx9DVxc/VxM7Uws7Uwc3Tv8zTvszSvMvRu8rRucnQuMnQtsjPtcfPs8bOssbOsMXNr8TNrcPNrMLM'
    'qsLMqcHLp8DLpr/KpL7Ko77Kob3JoLzJnrvJnbrInLnImrjImbjIl7fHlrbHlbXHk7TGkrPGkbLGj7HGjrHFjbDFjK/Fiq7F'
    'ia3FiKzEh6vEhqrEhanEhKjEgqfDgabDgKXDf6XDfqTDfaPDfKLCe6HCeqDCeZ/CeJ7Cd53CdpzBdpvBdZrBdJnBc5jBcpfB'
    'cZbBcZXAcJTAb5PAbpLAbpHAbZDAbI+/bI6/a42/a4y/aou/aYq/aYm+aIi+aIe+Z4a+Z4W+ZoS9ZoO9ZoK9ZYC9ZX+9ZH68'
    'ZH28ZHy8Y3u8Y3q7Y3m7Yni7Yne7Yna6YnW6YXO6YXK6YXG5YXC5YW+5YG64YG24YGy4YGq3YGm3YGi2YGe2YGa2X2W1X2S1'
    'X2K0X2G0X2C0X1+zX16zX12yX1uyX1qxX1mxX1iwX1ewX1WvXlSuXlOuXlKtXlGtXk+sXk6rXk2rXkyqXkupXkmpXkioXken'
    'XkamXkWmXkOlXUKkXUGjXUCiXT6hXT2hXTygXTufXTqeXDidXDecXDabXDWaXDSZWzKYWzGWWzCVWy+UWi6TWi2SWiuQWSqP'
    'WSmOWSiNWCeLWCaKVyWIVySHVyOFViKEViGCVSCBVR9/VB5+Ux58Ux16Uhx5URt3URp1UBp0TxlyTxlwThhvTRdtTBdrTBZp'
    'SxZoShVmSRVkSBVjRxRhRxRfRhReRRNcRBNaQxNZQhJXQRJWQRJUQBJTPxJRPhFQPRFOPRFNPBFLOxFKOhFJOhFIORFGOBFF'
    'NxFENxFDNhFCNhFBNRFANBE/NBE+MxE9MxE8MhI7MhI6MRI6MRM5MBM4MBQ3LxQ2MBQ3MRM3MRM3MhI3MxI3MxI3NBI4NBI4'
    'NRE4NhE4NhE5NxE5OBE5ORE6OhE6OhE6OxE7PBE7PRE8PhE8PxI9QBI9QRI9QhI+QxI+RBI/RhJARxNASBNBSRNBShNCSxNC'
    'TRRDThRDTxREUBREUhVFUxVFVBVGVhVGVxZHWBZHWRZIWxZIXBdJXRdJXxdKYBhKYRhLYxhLZBlLZRlMZxlMaBpNaRpNaxtN'
    'bBtObRtObxxOcBxOcR1Pch1PdB5PdR5Pdh9PeB9PeSBQeiBQeyFQfSFQfiJQfyNQgCNQgSRQgyVQhCVQhSZQhidQhydQiChQ'
    'iilQiypQjCpQjStQjixQjy1QkC5QkS9Qki9QkzBQlDFQlTJQljNQlzRQmDVQmTZQmjdQmzhQnDlQnTpQnjtQnzxQoD1QoD5Q'
    'oT9QokBQo0FQpEJQpUNQpURQpkVQp0ZQqEdQqUhQqUlQqkpQq0tQrExQrE1RrU5RrlBRr1FRr1JRsFNRsVRSsVVSslZSs1dS'
    's1lTtFpTtVtTtVxUtl1Utl5Ut19VuGFVuGJVuWNWuWRWumVXumZXu2hXu2lYvGpYvGtZvWxavW5avm9bvnBbv3Fcv3JdwHRd'
    'wHVewHZfwXdfwXlgwnphwntiwnxjw31jw39kxIBlxIFmxIJnxYRoxYVpxYZqxodrxolsxoptxotux4xvx45xx49yyJBzyJF0'
    'yJJ1yJR3yZV4yZZ5yZd7ypl8ypp9ypt/ypyAy52Cy5+Dy6CFzKGGzKKHzKOJzKWLzaaMzaeOzaiPzqmRzquSzqyUz62Wz66X'
    'z6+Z0LCb0LKc0LOe0bSg0bWh0baj0rel0rin07mo07qq1Lys1L2t1L6v1b+x1cCz1sG01sK218O418S52MW72Ma92Me+2cjA'
    '2cnC2srD2svF28vG28zI3M3K3M7L3M/N3dDO3dDP3dHR3tLS3tPT3tPU39TW39TX39XY4NbZ4Nba4Nfa4Nfb4dfc4djd4dje'
    '4djf4tjf4tng4tnh4tnh4tni'
)


def _twilight(shifted: bool) -> np.ndarray:
    data = np.frombuffer(base64.b64decode("".join(_TWILIGHT)), np.uint8).reshape(510, 3) / 255.0
    if shifted:  # matplotlib: (second half + first half), reversed
        data = np.concatenate([data[255:], data[:255]])[::-1]
    return data


def _listed_lut(data: np.ndarray) -> np.ndarray:
    """256 entries of a listed map of N colours as matplotlib samples it: value ``k / 255``
    takes colour ``floor(k / 255 * N)`` (the last one at 1)."""
    idx = np.minimum((np.arange(256) / 255.0 * len(data)).astype(np.int64), len(data) - 1)
    return data[idx]


def _anchors(key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, colours (n, 3)) of a list-defined map (reversed ones included), else None."""
    base = _REVERSED.get(key, key)
    if base not in _LISTS:
        return None
    colours = np.asarray(_LISTS[base], np.float64)
    if base != key:
        colours = colours[::-1]
    return np.linspace(0.0, 1.0, len(colours)), colours


def _matplotlib_lut(key: str) -> np.ndarray | None:
    """``(256, 3)`` float table of ``key`` from matplotlib's definition, or None when we take
    OpenCV's table (equal to matplotlib's within rounding, or a name matplotlib lacks)."""
    x = np.linspace(0.0, 1.0, 256)
    if key in _SEGMENTS:
        return np.stack([np.interp(x, *zip(*_SEGMENTS[key][c])) for c in ("red", "green", "blue")], axis=1)
    if key in _FUNCTIONS:
        return np.clip(np.stack([np.broadcast_to(f(x), x.shape) for f in _FUNCTIONS[key]], axis=1), 0.0, 1.0)
    anchors = _anchors(key)
    if anchors is not None:
        return np.stack([np.interp(x, anchors[0], anchors[1][:, c]) for c in range(3)], axis=1)
    if key in ("twilight", "twilight_shifted"):
        return _listed_lut(_twilight(key == "twilight_shifted"))
    return None


_OURS = set(_SEGMENTS) | set(_FUNCTIONS) | set(_LISTS) | set(_REVERSED) | {"twilight", "twilight_shifted"}


def as_array(x, name: str) -> np.ndarray:
    """``x`` as a non-empty numeric NumPy array; ``ValueError`` naming ``name`` otherwise."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything NumPy cannot take
        raise ValueError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def colormap_names() -> list[str]:
    """Names accepted by :func:`apply_colormap` / :func:`blend_images` (``gray`` included).

    A name matplotlib also has (``jet``, ``hot``, ``viridis``, ``rdbu_r`` = ``RdBu_r``, ...)
    gives matplotlib's colours (within 1/255); ``parula`` and ``deepgreen`` are OpenCV's.
    """
    return sorted(set(CV_COLORMAPS) | _OURS)


def _check_cmap(name: str) -> str:
    key = str(name).lower()
    if key not in CV_COLORMAPS and key not in _OURS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {colormap_names()}")
    return key


def colormap_lut(name: str) -> np.ndarray:
    """``(256, 3)`` float RGB table in [0, 1] with matplotlib's values for ``name``: entry
    ``k`` is matplotlib's colour for the value ``k / 255``.

    ``hsv``, ``jet``, ``gray``, ``hot``, ``bone``, ``pink``, ``ocean``, ``rainbow``,
    ``twilight(_shifted)`` and the diverging ``rdbu``, ``rdbu_r``, ``bwr``, ``seismic`` are
    rebuilt from matplotlib's definitions (segment data, gnuplot formulas, colour lists); the
    other maps (``viridis``, ``magma``, ...) come from OpenCV, equal to matplotlib's within
    1/255 (``parula``, ``deepgreen``: OpenCV only).
    """
    key = _check_cmap(name)
    lut = _matplotlib_lut(key)
    if lut is not None:
        return lut
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], CV_COLORMAPS[key])[0]
    return bgr[:, ::-1].astype(np.float64) / 255.0


def normalize(map, percentile: float | None = None, flip: bool = False) -> np.ndarray:
    """Scale ``map`` (any shape) linearly to [0, 1] as float32.

    ``percentile=p`` clips at the top like FastEstimator/PAIR saliency: ``vmin = min(map)``,
    ``vmax = percentile(map, p)``, then ``clip((map - vmin) / (vmax - vmin), 0, 1)``.
    ``flip=True`` returns ``1 - result`` (MONAI's CAM default normaliser maps max→0, min→1).
    A constant map gives zeros. NaNs are ignored for the range and stay NaN.
    """
    arr = as_array(map, "map").astype(np.float64)
    if percentile is not None and not 0 < float(percentile) <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise ValueError("map has no finite values to normalise")
    vmin = finite.min()
    vmax = np.percentile(finite, percentile) if percentile is not None else finite.max()
    out = np.zeros_like(arr) if vmax <= vmin else np.clip((arr - vmin) / (vmax - vmin), 0.0, 1.0)
    out[np.isnan(arr)] = np.nan
    if flip:
        out = 1.0 - out
    return out.astype(np.float32)


def apply_colormap(map, colormap: str = "jet", *, normalize_map: bool = True) -> np.ndarray:
    """Colour a 2D ``(H, W)`` map → ``(H, W, 3)`` uint8 **RGB** with matplotlib's colours.

    The map is first scaled to [0, 1] with :func:`normalize` (``normalize_map=False``: it must
    already lie in [0, 1]); value ``v`` takes entry ``round(255 * v)`` of the table
    (:func:`colormap_lut`). The diverging maps (``rdbu_r``, ``rdbu``, ``bwr``, ``seismic``)
    are sampled exactly at ``v``, so 0.5 (the 0 of a signed map) gets their neutral colour.
    ``colormap="gray"`` gives a grey ramp.
    """
    arr = as_array(map, "map")
    arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
    if arr.ndim != 2:
        raise ValueError(f"map must be 2D (H, W) or (1, H, W), got shape {arr.shape}")
    key = _check_cmap(colormap)
    arr = normalize(arr) if normalize_map else arr.astype(np.float32)
    if normalize_map is False and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
        raise ValueError("with normalize_map=False the map must lie in [0, 1]")
    v = np.nan_to_num(arr, nan=0.0)
    anchors = _anchors(key)
    if anchors is not None:
        rgb = np.stack([np.interp(v, anchors[0], anchors[1][:, c]) for c in range(3)], axis=-1)
        return np.round(rgb * 255).astype(np.uint8)
    idx = np.round(v * 255).astype(np.uint8)
    if key in ("gray", "grey"):
        return np.repeat(idx[..., None], 3, axis=2)
    lut = _table(key)
    if lut is not None:
        return lut[idx]
    return cv2.applyColorMap(idx, CV_COLORMAPS[key])[..., ::-1].copy()


@functools.lru_cache(maxsize=None)
def _table(key: str) -> np.ndarray | None:
    """Matplotlib's table of ``key`` as uint8 (read-only), or None for OpenCV's."""
    lut = _matplotlib_lut(key)
    if lut is None:
        return None
    out = np.round(lut * 255).astype(np.uint8)
    out.flags.writeable = False
    return out


# ---------------------------------------------------------------- signed maps, colour scales
SIGNED_TOLERANCE = 1e-3


def _finite(map) -> np.ndarray:
    arr = as_array(map, "map").astype(np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise ValueError("map has no finite values to draw")
    return finite


def is_signed(map, tolerance: float = SIGNED_TOLERANCE) -> bool:
    """Whether ``map`` has both signs beyond ``tolerance`` × max |map| (NaNs ignored).

    An occlusion drop, a signed gradient or integrated gradients usually is; a CAM (>= 0),
    a normalised map or one with float noise just below 0 is not.
    """
    finite = _finite(map)
    t = float(tolerance) * np.abs(finite).max()
    return bool(finite.min() < -t and finite.max() > t)


@dataclass(frozen=True)
class ColorScale:
    """How a map's values become colours; what a colour bar shows (see :func:`color_scale`).

    Unsigned: ``vmin`` → the colormap's first colour, ``vmax`` → its last (a constant map:
    the first colour). Signed: ``vmin = -vmax``, 0 → the middle colour (the neutral one of a
    diverging map), ``±vmax`` → the ends. Values beyond the range are clipped; ``clipped``
    says the range came from a percentile that cuts some values off.
    """

    vmin: float
    vmax: float
    signed: bool
    colormap: str
    clipped: bool = False

    def scale(self, map) -> np.ndarray:
        """Values → [0, 1] float32 (NaN stays NaN)."""
        arr = as_array(map, "map").astype(np.float64)
        if self.signed:
            out = (np.full_like(arr, 0.5) if self.vmax <= 0 else
                   0.5 + 0.5 * np.clip(arr / self.vmax, -1.0, 1.0))
        elif self.vmax <= self.vmin:
            out = np.zeros_like(arr)
        else:
            out = np.clip((arr - self.vmin) / (self.vmax - self.vmin), 0.0, 1.0)
        out[np.isnan(arr)] = np.nan
        return out.astype(np.float32)

    def colors(self, map) -> np.ndarray:
        """A 2D map → ``(H, W, 3)`` uint8 RGB."""
        return apply_colormap(self.scale(map), self.colormap, normalize_map=False)


def color_scale(map, *, signed: bool | str = "auto", percentile: float | None = None,
                colormap: str | None = None, tolerance: float = SIGNED_TOLERANCE) -> ColorScale:
    """The colour scale to draw ``map`` with.

    ``signed``: ``"auto"`` (signed when :func:`is_signed`, i.e. both signs beyond
    ``tolerance`` × max |map|), ``True`` or ``False``. A signed scale is centred on 0:
    ``±max |map|``, or ``±percentile(|map|, p)`` with ``percentile=p`` (e.g. 99 for gradient
    maps, whose few extreme values would wash out the rest); default colormap ``"rdbu_r"``
    (negative blue, 0 light grey, positive red). An unsigned scale is ``min(map)`` ..
    ``max(map)``, or .. ``percentile(map, p)`` (as :func:`normalize`); default ``"jet"``.
    """
    if signed not in ("auto", True, False):
        raise ValueError(f"signed must be 'auto', True or False, got {signed!r}")
    if percentile is not None and not 0 < float(percentile) <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    finite = _finite(map)
    if signed == "auto":
        signed = is_signed(finite, tolerance)
    if signed:
        mag = np.abs(finite)
        top = float(np.percentile(mag, percentile)) if percentile is not None else float(mag.max())
        lo, hi, clipped = -top, top, bool(top < mag.max())
    else:
        lo = float(finite.min())
        hi = float(np.percentile(finite, percentile)) if percentile is not None else float(finite.max())
        clipped = bool(hi < finite.max())
    key = _check_cmap(colormap if colormap is not None else SIGNED_COLORMAP if signed else "jet")
    return ColorScale(lo, hi, bool(signed), key, clipped)


def image_to_rgb_float(image) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1|3|4)`` uint8 or float → ``(H, W, 3)`` float32 in [0, 1]."""
    img = as_array(image, "image")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == bool or np.issubdtype(img.dtype, np.integer):
        hi = 65535.0 if img.dtype == np.uint16 else 255.0
        return np.clip(img.astype(np.float32) / hi, 0, 1)
    img = img.astype(np.float32)
    if np.nanmin(img) < 0 or np.nanmax(img) > 1:  # float outside [0, 1]: min-max scale
        img = normalize(img)
    return img


def overlay(image, map, alpha: float = 0.5, colormap: str | None = None, *,
            percentile: float | None = None, signed: bool | str = "auto") -> np.ndarray:
    """Heatmap over an image → ``(H, W, 3)`` uint8 RGB.

    ``image``: ``(H, W)`` grey or ``(H, W, 3)`` RGB, uint8 (0..255) or float ([0, 1]; other
    ranges are min-max scaled). ``map``: ``(h, w)`` or ``(1, h, w)``, resized bilinearly to
    ``(H, W)``, then coloured on :func:`color_scale`: min-max ``jet`` for a map of one sign;
    a map with both signs (``signed="auto"``) centred on 0 with the diverging ``rdbu_r``
    (0 → light grey). ``percentile``: clip the top (unsigned) or ``±percentile(|map|)``.
    Result: ``round(255 * ((1 - alpha) * image + alpha * colormap(map)))``.
    :func:`overlay_with_scale` also returns the scale (for a colour bar).
    """
    return overlay_with_scale(image, map, alpha, colormap, percentile=percentile, signed=signed)[0]


def overlay_with_scale(image, map, alpha: float = 0.5, colormap: str | None = None, *,
                       percentile: float | None = None,
                       signed: bool | str = "auto") -> tuple[np.ndarray, ColorScale]:
    """:func:`overlay` and the :class:`ColorScale` it used."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    img = image_to_rgb_float(image)
    m = as_array(map, "map").astype(np.float32)
    m = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
    if m.ndim != 2:
        raise ValueError(f"map must be 2D (h, w) or (1, h, w), got shape {m.shape}")
    h, w = img.shape[:2]
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    scale = color_scale(m, signed=signed, percentile=percentile, colormap=colormap)
    heat = scale.colors(m).astype(np.float32) / 255.0
    out = (1.0 - alpha) * img + alpha * heat
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8), scale


def rescale01(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] in float32; a constant array becomes zeros (MONAI's rescale_array)."""
    x = x.astype(np.float32)
    lo, hi = np.min(x), np.max(x)
    if hi == lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _lut_lookup(values: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Matplotlib's float lookup: index ``floor(v * N)``, v == 1 → last, under → first,
    over → last, NaN → black."""
    n = lut.shape[0]
    scaled = values * values.dtype.type(n)  # in the input's float precision, as matplotlib
    with np.errstate(invalid="ignore"):
        idx = np.clip(np.nan_to_num(scaled, nan=0.0), -1, n).astype(np.int64)
    idx[scaled == n] = n - 1
    idx = np.clip(idx, 0, n - 1)
    out = lut[idx]
    out[np.isnan(values)] = 0.0
    return out


def blend_images(image, label, alpha=0.5, cmap: str = "hsv", rescale_arrays: bool = True,
                 transparent_background: bool = True) -> np.ndarray:
    """Blend ``image`` ``(1|3, H, W[, D])`` with ``label`` ``(1, H, W[, D])`` → RGB ``(3, H, W[, D])``.

    MONAI's semantics: both min-max rescaled to [0, 1] (``rescale_arrays``), a grey image
    repeated to RGB, the label coloured with the matplotlib colormap ``cmap`` (computed here
    without matplotlib), ``out = (1 - a) * image + a * cmap(label)`` with ``a = alpha`` (a
    float or an array the size of the image) and ``a = 0`` where ``label == 0`` if
    ``transparent_background``. Returns float32.
    """
    img = as_array(image, "image")
    lab = as_array(label, "label")
    if lab.ndim < 3 or lab.shape[0] != 1:
        raise ValueError(f"label must be (1, H, W[, D]) with 1 channel, got shape {lab.shape}")
    if img.ndim < 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image must be (1|3, H, W[, D]) with 1 or 3 channels, got shape {img.shape}")
    if img.shape[1:] != lab.shape[1:]:
        raise ValueError(f"image {img.shape} and label {lab.shape} must have the same spatial size")
    lut = colormap_lut(cmap)
    if isinstance(alpha, (int, float, np.number)):
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        w_label = np.full(lab.shape, alpha, dtype=np.float32)
    else:
        w_label = as_array(alpha, "alpha").astype(np.float32)
        if w_label.shape[1:] != img.shape[1:]:
            raise ValueError(f"alpha array must match the image's spatial size {img.shape[1:]}, "
                             f"got shape {w_label.shape}")
        w_label = w_label.copy()
    if rescale_arrays:
        img, lab = rescale01(img), rescale01(lab)
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    lab = lab if np.issubdtype(lab.dtype, np.floating) else lab.astype(np.float32)
    label_rgb = np.moveaxis(_lut_lookup(lab[0], lut), -1, 0).astype(np.float32)
    if transparent_background:
        w_label = np.broadcast_to(w_label, np.broadcast_shapes(w_label.shape, lab.shape)).copy()
        w_label[np.broadcast_to(lab == 0, w_label.shape)] = 0
    return ((1 - w_label) * img + w_label * label_rgb).astype(np.float32)
