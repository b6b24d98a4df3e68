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

  The risk of this rule, stated plainly: the bit depth is GUESSED per image from
  its maximum pixel, so brightness is not comparable across such images. A
  12-bit film (maximum 4095) with a single pixel at 4096 or above is read as
  13-bit and comes out half as bright; a dark 16-bit film whose maximum is
  below 32768 comes out twice as bright. PNG's ``sBIT`` chunk is not a sound
  fix (Pillow does not read it, and by the PNG standard its samples are already
  scaled to the full depth, which writers of unscaled 12-bit data do not
  follow). Convert a set of high-depth films to 8-bit with one rule of your own
  (one window for the whole set) when intensities must agree across films;
  NIH ChestX-ray14 and MURA are 8-bit and unaffected.
* Multi-frame files (TIFF, GIF): the first frame. EXIF orientation is applied.

Hidden and system files are never images (:func:`is_hidden_or_system`, the one
rule every loader and listing applies, through :func:`list_files` or directly):
dot-files and dot-folders (``.DS_Store``, macOS AppleDouble ``._a.png``,
``.Trashes``), ``__MACOSX`` folders of zip archives, Windows thumbnail and
folder files (``Thumbs.db``, ``ehthumbs.db``, ``desktop.ini``, ``$RECYCLE.BIN``,
``System Volume Information``), Office lock files (``~$...``) and the macOS
custom-icon file ``Icon\r``. Listings skip them without a warning: they are
not data.

Linked folders are followed (a data folder may link to another disk), but a
folder is listed once: a linked folder whose real path was already listed, or
that leads back to a folder above it (``normal/loop -> ..``, a symlink loop),
is not entered again. :func:`list_files` counts such links and emits ONE
:class:`DataWarning` per listing naming the first; without this rule a loop
multiplies every image and lists ``normal/loop/abnormal/x.png`` under the
wrong class.

Pixels: a decoded image with NaN or infinite values (a float TIFF) is an
:class:`ImageReadError` naming the file and counting the bad pixels, never a
black image; only float images (``F``) can hold them, every other mode
decodes to integers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "SYSTEM_FILE_NAMES",
    "DataWarning",
    "ImageReadError",
    "is_hidden_or_system",
    "list_files",
    "read_grayscale",
    "to_uint8_gray",
]

#: Names (lower case) of operating-system metadata files and folders that are never data.
SYSTEM_FILE_NAMES: frozenset[str] = frozenset({
    "__macosx", "thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r",
    "$recycle.bin", "system volume information",
})


_EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError, OSError):
    """An image file is missing, truncated, corrupt or in an unusable format.

    The message always names the file. It subclasses both :class:`ValueError`
    and :class:`OSError`, so callers may catch either.
    """


class DataWarning(UserWarning):
    """A documented data policy dropped or changed something (the message gives a count)."""


def _is_hidden_name(name: str) -> bool:
    if name in (".", ".."):
        return False
    return name.startswith((".", "~$")) or name.lower() in SYSTEM_FILE_NAMES


def is_hidden_or_system(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> bool:
    """True when ``path`` is a hidden or operating-system file, or lies in a hidden or system folder.

    Args:
        path: a file or folder.
        root: the folder a listing started from. Every component of ``path``
            below ``root`` is checked (``root/__MACOSX/normal/a.png`` is
            hidden); folders above ``root`` are not (data under
            ``~/.cache/xrays`` is fine). Without ``root``, a relative path is
            checked in every component and an absolute one by its name only.

    Returns:
        True for dot-files and dot-folders (AppleDouble ``._*``, ``.DS_Store``),
        ``__MACOSX``, ``Thumbs.db``, ``ehthumbs.db``, ``desktop.ini``,
        ``Icon\r``, ``$RECYCLE.BIN``, ``System Volume Information`` and ``~$``
        lock files (names compared case-insensitively); see :data:`SYSTEM_FILE_NAMES`.

    Raises:
        ValueError: ``path`` does not lie under ``root``.
    """
    path = Path(path)
    if root is not None:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            raise ValueError(f"{path} does not lie under {root}") from None
    else:
        parts = (path.name,) if path.is_absolute() else path.parts
    return any(_is_hidden_name(part) for part in parts)


def list_files(
    folder: str | os.PathLike[str], suffixes: Iterable[str] | None = None, recursive: bool = True
) -> list[Path]:
    """The files under ``folder``, sorted, without hidden or system files and folders.

    Args:
        folder: where to look.
        suffixes: keep only these suffixes (``".png"``; compared in lower case); None keeps all.
        recursive: descend into sub-folders (hidden and system folders are never entered;
            linked folders are followed, each real folder once: module docstring).

    Returns:
        Paths under ``folder`` (``folder / relative``), sorted, for which
        :func:`is_hidden_or_system` is False. A :class:`DataWarning` counts the
        linked folders not entered (symlink loops, folders already listed) and
        names the first.

    Raises:
        NotADirectoryError: ``folder`` is not an existing folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not an existing folder")
    wanted = None if suffixes is None else {s.lower() for s in suffixes}
    found: list[Path] = []
    visited = {os.path.realpath(folder)}  # real paths of the folders listed or queued
    loops: list[str] = []  # linked folders not entered again
    for current, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = _folders_to_enter(current, dirs, visited, loops) if recursive else []
        for name in names:
            if _is_hidden_name(name) or (wanted is not None and Path(name).suffix.lower() not in wanted):
                continue
            path = Path(current) / name
            if path.is_file():
                found.append(path)
    if loops:
        warnings.warn(
            f"{folder}: {len(loops)} linked folder(s) lead to a folder already listed or back to a folder above "
            f"them (a symlink loop) and were not entered again, first: {loops[0]}",
            DataWarning,
            stacklevel=2,
        )
    return sorted(found)


def _folders_to_enter(current: str, dirs: list[str], visited: set[str], loops: list[str]) -> list[str]:
    """The sub-folders of ``current`` a listing enters, sorted: not hidden, and each real folder once.

    Real folders are taken before linked ones, so a link to a sibling never
    displaces the folder itself. A linked folder whose real path is in
    ``visited`` or is an ancestor of ``current`` (a loop; also a bind mount)
    is appended to ``loops`` (as ``folder -> real path``) and skipped; the real
    paths entered are added to ``visited``.
    """
    here = os.path.realpath(current)
    candidates = sorted(d for d in dirs if not _is_hidden_name(d))
    linked = {d for d in candidates if os.path.islink(os.path.join(current, d))}
    keep: list[str] = []
    for name in [d for d in candidates if d not in linked] + [d for d in candidates if d in linked]:
        real = os.path.realpath(os.path.join(current, name))
        if real in visited or os.path.commonpath([real, here]) == real:
            loops.append(f"{os.path.join(current, name)} -> {real}")
            continue
        visited.add(real)
        keep.append(name)
    return sorted(keep)


def read_grayscale(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an 8-bit grayscale array.

    Args:
        path: the image file (PNG, JPEG, TIFF, ... anything Pillow decodes).

    Returns:
        ``np.ndarray`` of dtype ``uint8``, shape ``[H, W]``, 0 = black. See the
        module docstring for how alpha, palettes and 16-bit data are converted.

    Raises:
        ImageReadError: the file is missing (or is a folder), not an image, truncated or corrupt,
            or it holds NaN / infinite pixels (counted). The pixel data is fully
            decoded (``Image.load``) before returning, so truncation is detected here.
    """
    file = Path(path)
    if file.is_dir():
        raise ImageReadError(f"image {file} is a folder, not an image file")
    if not file.is_file():
        raise ImageReadError(f"image file not found: {file}")
    try:
        with Image.open(file) as img:
            img.load()  # force the full decode: truncated files fail here
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
            return to_uint8_gray(img)
    except ImageReadError as exc:  # the pixels are unusable: name the file
        raise ImageReadError(f"image {file}: {exc}") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib errors...
        raise ImageReadError(f"cannot read image {file}: {type(exc).__name__}: {exc}") from exc


def to_uint8_gray(img: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image to ``uint8`` ``[H, W]`` (policy: module docstring).

    Raises:
        ImageReadError: a float image holds NaN or infinite pixels (the message
            counts them; :func:`read_grayscale` adds the file name).
        ValueError: a high-depth image that is not 2-D.
    """
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
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(data)))
        raise ImageReadError(f"{bad} of {data.size} pixels are not finite ({n_nan} NaN, {bad - n_nan} inf)")
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
