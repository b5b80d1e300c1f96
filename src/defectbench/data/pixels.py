"""Pixel values and geometry: how any decoded image becomes the cache's square uint8 picture.

Two declared rules of a dataset entry, never silent clipping or distortion:

* **Intensity** (``bit_depth``): 8-bit files (modes 1, L, P, RGB, ...) are taken as they are.
  Deeper greyscale (16-bit ``I;16*``, 32-bit integer ``I``, float ``F``) is scaled to 0..255 by
  the rule the manifest records per image in its ``pixel_scale`` column:

  ===========  ===================================================================================
  ``8bit``     an 8-bit file (values used as they are)
  ``12bit``    value * 255 / 4095 (12-bit data stored in 16-bit words); a value above 4095 is an error
  ``16bit``    value * 255 / 65535
  ``unit``     float in [0, 1] * 255
  ``minmax``   (value - min) / (max - min) * 255 of that image (a constant image becomes 0)
  ===========  ===================================================================================

  ``bit_depth: auto`` (default) takes the file's own depth: 16-bit files ``16bit``, float files
  ``unit`` when every value lies in [0, 1] (else an error asking for ``minmax``); 32-bit integer
  files have no implied range and must declare one. ``12``/``16`` apply to every deeper-than-8-bit
  file; ``minmax`` applies to every image, 8-bit ones included.
* **Transparency** (``alpha_background``): an image whose alpha channel (or palette transparency)
  is not fully opaque is composited on that grey value / RGB colour; with no background declared
  it is refused (a fully opaque alpha channel carries nothing and is dropped).
* **Geometry** (``resize``, ``resize_to``): the image becomes an R x R square (R = ``resize_to``,
  default the cache size S) by ``squash`` (both sides to R, aspect changed), ``pad`` (long side to
  R, centred on black) or ``center_crop`` (short side to R, centre cut), then the centre S x S is
  cut (PatchCore's "resize 256, center-crop 224" is ``resize_to: 256`` with a 224 px cache).
  Masks go through the same geometry with nearest-neighbour resampling.

>>> from PIL import Image
>>> im = Image.new("I;16", (4, 2)); im.putpixel((0, 0), 4095)
>>> pixel_scale_of(im, "12"), pixel_scale_of(im, "auto")
('12bit', '16bit')
>>> fit_square(Image.new("L", (40, 10)), 8, "pad").size
(8, 8)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

BIT_DEPTHS = ("auto", "8", "12", "16", "minmax")
RESIZE_POLICIES = ("squash", "pad", "center_crop")
PIXEL_SCALES = ("8bit", "12bit", "16bit", "unit", "minmax")
_DEEP_MODES = ("I", "F")  # I;16, I;16B, ... start with "I"
_FULL = {"12bit": 4095.0, "16bit": 65535.0, "unit": 1.0}


class PixelError(ValueError):
    """An image that the declared rules cannot turn into 0..255 pixels (message says what to set)."""


def is_deep(im: Any) -> bool:
    """More than 8 bits per sample (16/32-bit integer or float greyscale)."""
    return im.mode.startswith(_DEEP_MODES)


def _extrema(im: Any) -> tuple[float, float]:
    lo, hi = im.getextrema()
    return float(lo), float(hi)


def pixel_scale_of(im: Any, bit_depth: str | int = "auto") -> str:
    """The ``pixel_scale`` rule for a decoded image under the dataset's ``bit_depth``.

    Raises :class:`PixelError` when the values do not fit the rule (a 12-bit declaration with a
    value above 4095, a float image outside [0, 1] under ``auto``, an undeclared 32-bit image).
    """
    depth = str(bit_depth)
    if depth not in BIT_DEPTHS:
        raise PixelError(f"bit_depth {bit_depth!r}: use one of {', '.join(BIT_DEPTHS)}")
    if depth == "minmax":
        return "minmax"
    if not is_deep(im):
        return "8bit"
    lo, hi = _extrema(im)
    if depth == "auto":
        if im.mode == "F":
            if lo < 0 or hi > 1:
                raise PixelError(f"float image with values {lo:g}..{hi:g} outside [0, 1]; set the dataset's bit_depth: minmax")
            return "unit"
        if im.mode == "I":
            raise PixelError(f"32-bit integer image (values {lo:g}..{hi:g}) has no implied range; set the dataset's bit_depth (12, 16 or minmax)")
        return "16bit"
    if depth == "8":
        if lo < 0 or hi > 255:
            raise PixelError(f"{im.mode} image with values {lo:g}..{hi:g} does not fit bit_depth 8; set bit_depth 12, 16 or minmax")
        return "8bit"
    scale = f"{depth}bit"
    if lo < 0 or hi > _FULL[scale]:
        wider = "16 or minmax" if depth == "12" else "minmax"
        raise PixelError(f"{im.mode} image with values {lo:g}..{hi:g} does not fit bit_depth {depth}; set bit_depth {wider}")
    return scale


def has_transparency(im: Any) -> bool:
    """True when some pixel is not fully opaque (alpha channel or palette/colour-key transparency)."""
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        alpha = im.convert("RGBA").getchannel("A")
        return alpha.getextrema()[0] < 255
    return False


def background_colour(background: int | Sequence[int] | None) -> tuple[int, int, int] | None:
    """``alpha_background`` as an RGB triple (a single number is a grey level)."""
    if background is None:
        return None
    if isinstance(background, (int, float)):
        return (int(background),) * 3
    return tuple(int(v) for v in background)  # type: ignore[return-value]


def to_pixels(im: Any, pixel_scale: str, background: int | Sequence[int] | None = None) -> Any:
    """A PIL image in ``L``, ``RGB`` or ``F`` (values 0..255) following ``pixel_scale``.

    Grey stays one channel (cheaper resize, repeated to 3 at the end); ``F`` keeps the scaled
    deep values unquantised through the resize.
    """
    from PIL import Image

    if has_transparency(im):
        colour = background_colour(background)
        if colour is None:
            raise PixelError("image has transparent pixels; set the dataset's alpha_background (grey 0-255 or [r, g, b]) to flatten it")
        rgba = im.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, colour + (255,))
        flat.alpha_composite(rgba)
        im = flat.convert("RGB")
    if pixel_scale == "8bit":
        return im.convert("L") if im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;") else im.convert("RGB")
    if is_deep(im):
        arr = np.asarray(im, dtype=np.float64)
    else:
        arr = np.asarray(im.convert("L" if im.mode in ("1", "L", "LA") else "RGB"), dtype=np.float64)
    if pixel_scale == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    elif pixel_scale in _FULL:
        arr = arr * (255.0 / _FULL[pixel_scale])
    else:
        raise PixelError(f"pixel_scale {pixel_scale!r}: not one of {', '.join(PIXEL_SCALES)}; rebuild the manifest")
    if arr.ndim == 3:
        return Image.fromarray(np.rint(arr).astype(np.uint8), "RGB")
    return Image.fromarray(arr.astype(np.float32), "F")


def fit_square(im: Any, size: int, resize: str = "squash", resize_to: int | None = None, *, nearest: bool = False) -> Any:
    """``im`` geometrically mapped to ``size`` x ``size`` by the resize policy (module docstring)."""
    from PIL import Image

    r = int(resize_to or size)
    if r < size:
        raise PixelError(f"resize_to {r} is smaller than the image size {size}; set resize_to >= {size} or null")
    resample = Image.NEAREST if nearest else Image.BILINEAR
    w, h = im.size
    if resize == "squash":
        if (w, h) != (r, r):
            im = im.resize((r, r), resample)
    elif resize in ("pad", "center_crop"):
        longest = max(w, h) if resize == "pad" else min(w, h)
        nw, nh = max(1, round(w * r / longest)), max(1, round(h * r / longest))
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), resample)
        if resize == "pad":
            canvas = Image.new(im.mode, (r, r), 0)
            canvas.paste(im, ((r - nw) // 2, (r - nh) // 2))
            im = canvas
        else:
            left, top = (nw - r) // 2, (nh - r) // 2
            im = im.crop((left, top, left + r, top + r))
    else:
        raise PixelError(f"resize {resize!r}: use one of {', '.join(RESIZE_POLICIES)}")
    if r > size:
        left = (r - size) // 2
        im = im.crop((left, left, left + size, left + size))
    return im
