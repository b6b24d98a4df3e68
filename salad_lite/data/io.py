"""Reading radiographs from disk as 8-bit grayscale arrays.

:func:`read_grayscale` is the single entry point every loader uses. It turns
any image Pillow can decode into a ``uint8`` array ``[H, W]`` (0 = black) and
fully decodes it, so a truncated or corrupt file fails here, with the file's
name, and not later inside a training loop.

Conversion policy, by Pillow mode:

* ``L``: returned as is. ``1`` (bilevel): 0 / 255.
* ``RGB``, ``CMYK``, ``YCbCr``, ...: ITU-R 601-2 luma (Pillow's ``convert("L")``).
* Modes with alpha (``LA``, ``RGBA``, ``PA``, palette with transparency): a fully
  opaque alpha channel is simply dropped (the case of the few RGBA NIH images).
  Otherwise the gray value is composited onto a **black** background,
  ``gray * alpha / 255``, because black (0) is the radiograph background and the
  padding value used everywhere in this package.
* ``P`` (palette): expanded through its palette, then as above.
* 16-bit and 32-bit integer (``I;16``, ``I;16B``, ``I``): rescaled by the actual
  bit depth of the data. When every value lies in ``[0, 65535]`` the smallest bit
  depth ``b`` (8..16) that holds the image maximum is taken as the stored depth
  and ``gray8 = round(value * 255 / (2**b - 1))``, so a 12-bit detector image
  stored in a 16-bit PNG keeps its relative intensities and is not darkened by
  16x. Values outside that range (negative ``I`` images) and float images
  (``F``) are min-max stretched over their dynamic range. A constant image maps
  to 0.
* Multi-frame files (TIFF, GIF): the first frame. EXIF orientation is applied.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["DataWarning", "ImageReadError", "read_grayscale", "to_uint8_gray"]


_EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError, OSError):
    """An image file is missing, truncated, corrupt or in an unusable format.

    The message always names the file. It subclasses both :class:`ValueError`
    and :class:`OSError`, so callers may catch either.
    """


class DataWarning(UserWarning):
    """A documented data policy dropped or changed something (the message gives a count)."""


def read_grayscale(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an 8-bit grayscale array.

    Args:
        path: the image file (PNG, JPEG, TIFF, ... anything Pillow decodes).

    Returns:
        ``np.ndarray`` of dtype ``uint8``, shape ``[H, W]``, 0 = black. See the
        module docstring for how alpha, palettes and 16-bit data are converted.

    Raises:
        ImageReadError: the file is missing, not an image, truncated or corrupt.
            The pixel data is fully decoded (``Image.load``) before returning, so
            truncation is detected here.
    """
    file = Path(path)
    if not file.is_file():
        raise ImageReadError(f"image file not found: {file}")
    try:
        with Image.open(file) as img:
            img.load()  # force the full decode: truncated files fail here
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            return to_uint8_gray(img)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors...
        raise ImageReadError(f"cannot read image {file}: {type(exc).__name__}: {exc}") from exc


def to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image to ``uint8`` ``[H, W]`` (policy: module docstring)."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA" if (mode == "PA" or "transparency" in img.info) else "RGB")
        mode = img.mode
    if mode == "L":
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return np.array(img.convert("L"), dtype=np.uint8)
    if mode in ("LA", "La", "RGBA", "RGBa"):
        if mode in ("La", "RGBa"):  # premultiplied alpha: the colour is already composited on black
            return np.array(img.convert("L"), dtype=np.uint8)
        alpha = np.array(img.getchannel("A"), dtype=np.uint16)
        gray = np.array(img.convert("L"), dtype=np.uint16)
        if alpha.min() == 255:
            return gray.astype(np.uint8)
        return ((gray * alpha + 127) // 255).astype(np.uint8)  # composite onto black
    if mode.startswith("I") or mode == "F":
        return _rescale_high_depth(np.array(img))
    return np.array(img.convert("L"), dtype=np.uint8)


def _rescale_high_depth(values: np.ndarray) -> np.ndarray:
    """Map a 16/32-bit integer or float array ``[H, W]`` to ``uint8`` (policy: module docstring)."""
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D high-depth image, got shape {values.shape}")
    data = values.astype(np.float64)
    low, high = float(data.min()), float(data.max())
    integral = np.issubdtype(values.dtype, np.integer)
    if integral and low >= 0 and high <= 65535:
        bits = max(8, int(high).bit_length())
        scaled = data * (255.0 / (2**bits - 1))
    elif high > low:
        scaled = (data - low) * (255.0 / (high - low))
    else:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
