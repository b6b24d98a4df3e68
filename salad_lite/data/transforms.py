"""Shared image preprocessing: resize + pad, autocontrast, conversion to tensors.

Intensity convention (the package contract, see DESIGN.md): images travel as
``uint8`` arrays ``[H, W]`` until the last step, and as float32 tensors with
values in ``[0, 1]`` (``value / 255``, 0 = black) afterwards. There is **no**
mean/std standardisation: the decoders end with a sigmoid and reconstruct
``[0, 1]`` intensities directly. Contrast is only changed where a dataset asks
for it explicitly (:func:`autocontrast`, used by the MURA pipeline); padding is
always black (0).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["resize_pad", "autocontrast", "to_tensor", "standard_preprocess"]


def _check_gray_uint8(img: np.ndarray, name: str = "img") -> None:
    if not isinstance(img, np.ndarray) or img.ndim != 2 or img.dtype != np.uint8:
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise ValueError(f"{name} must be a uint8 array [H, W]; got shape {shape}, dtype {dtype}")
    if img.size == 0:
        raise ValueError(f"{name} is empty (shape {img.shape})")


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Resize the major axis to ``size`` (aspect kept) and zero-pad to a centred square.

    Args:
        img: ``uint8`` ``[H, W]``.
        size: side of the output square, in pixels (> 0).

    Returns:
        ``uint8`` ``[size, size]``. The image is resampled bilinearly (Pillow's
        resampling is antialiased when shrinking) so that ``max(H, W) == size``;
        the minor axis becomes ``max(1, round(minor * size / major))`` and the
        black (0) borders are split evenly, the extra pixel (if odd) going to
        the bottom / right.
    """
    _check_gray_uint8(img)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    height, width = img.shape
    scale = size / max(height, width)
    new_h = min(size, max(1, round(height * scale)))
    new_w = min(size, max(1, round(width * scale)))
    if (new_h, new_w) == (height, width):
        resized = img
    else:
        resized = np.asarray(
            Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8
        )
    if (new_h, new_w) == (size, size):
        return np.ascontiguousarray(resized)
    out = np.zeros((size, size), dtype=np.uint8)
    top = (size - new_h) // 2
    left = (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def autocontrast(img: np.ndarray, cutoff: float = 0.0, mask: np.ndarray | None = None) -> np.ndarray:
    """Stretch intensities linearly so the darkest pixels become 0 and the brightest 255.

    Args:
        img: ``uint8`` ``[H, W]``.
        cutoff: percent of pixels (0 <= cutoff < 50) ignored at EACH end of the
            histogram when finding the darkest and brightest values (like
            ``PIL.ImageOps.autocontrast``); values beyond them are clipped.
        mask: optional boolean ``[H, W]``; only pixels where it is True set the
            range (all pixels are still stretched).

    Returns:
        ``uint8`` ``[H, W]``. A constant image (or an empty mask) is returned unchanged.
    """
    _check_gray_uint8(img)
    if not 0.0 <= cutoff < 50.0:
        raise ValueError(f"cutoff must be in [0, 50) percent, got {cutoff}")
    values = img if mask is None else img[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        return img.copy()
    if cutoff > 0:
        low, high = np.percentile(values, [cutoff, 100.0 - cutoff])
    else:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return img.copy()
    stretched = (img.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(stretched), 0, 255).astype(np.uint8)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """Convert ``uint8`` images to float32 tensors in ``[0, 1]``.

    Args:
        img: ``uint8`` ``[H, W]`` (one image) or ``[N, H, W]`` (a stack).

    Returns:
        ``FloatTensor`` ``[1, H, W]`` or ``[N, 1, H, W]``, ``value / 255``.
    """
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(
            f"to_tensor expects a uint8 array [H, W] or [N, H, W]; got "
            f"{type(img).__name__} shape {getattr(img, 'shape', None)} dtype {getattr(img, 'dtype', None)}"
        )
    tensor = torch.from_numpy(img.astype(np.float32)).div_(255.0)  # a writable copy
    return tensor.unsqueeze(-3)  # [H,W] -> [1,H,W]; [N,H,W] -> [N,1,H,W]


def standard_preprocess(img: np.ndarray, size: int, contrast: bool = False) -> np.ndarray:
    """The default chest-film pipeline: optional :func:`autocontrast`, then :func:`resize_pad`.

    Args:
        img: ``uint8`` ``[H, W]`` as read by :func:`salad_lite.data.io.read_grayscale`.
        size: output side in pixels.
        contrast: stretch the intensity range first.

    Returns:
        ``uint8`` ``[size, size]``.
    """
    if contrast:
        img = autocontrast(img)
    return resize_pad(img, size)
