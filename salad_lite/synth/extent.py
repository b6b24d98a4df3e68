"""Visible extent of the embedded sets' findings, in pixels of the images a model is trained on.

A finding is visible at a training resolution ``S`` if it changes several
pixels of the ``S x S`` image by a noticeable amount. This module measures
that for the rendered sets (:mod:`salad_lite.synth.chest`, :mod:`salad_lite.synth.limb`):

1. **Contribution in isolation** (:class:`FindingContribution`): the image
   rendered with the finding minus the same image (same seed, pose, imaging
   parameters and noise) rendered without it, in displayed intensity
   (``[0, 1]`` units), at the resolution the set is rendered at.

   * chest: :meth:`ChestRenderer.intensity <salad_lite.synth.chest.ChestRenderer.intensity>`
     with one of the image's lesions minus it with none (float, before the
     8-bit rounding); an image with two findings gives two contributions,
     each with only its own lesion inserted (a Cardiomegaly is the enlarged
     heart against the image's own normal heart);
   * limb: :func:`~salad_lite.synth.limb.render_image` of the spec minus that
     of the spec with ``lesion=None`` (8-bit images: the rounding adds at
     most 1/255), kept within 3 px of the union of both body masks (outside
     lie only the lead markers, whose placement can shift when a fracture
     changes the body outline).

2. **Resampling as the data cache does** (:func:`resample`): the cache resizes
   the major axis to ``S`` with Pillow's bilinear filter, antialiased when
   shrinking (``salad_lite.data.transforms.resize_pad``). Resizing is linear,
   so resizing the difference equals the difference of the resized images
   (up to their 8-bit rounding). The scale from the rendered image to ``S``:

   * chest: ``S / render_size`` (the set is rendered square, 256 px by default);
   * limb: ``S / plate_px``, ``plate_px`` the longer side of the detector
     plate after the MURA pipeline's carrier warp
     (``salad_lite.data.mura_preprocess.carrier_homography``: the mean side
     length less a 1 % inset and 1 px at each end), computed from the
     rendered plate corners (the pipeline finds the same plate to a pixel on
     these images).

3. **Extent** (:func:`measure_extent`), on the resampled difference ``d``: the
   pixels with ``|d| > contrast * dynamic_range`` (default ``contrast`` =
   :data:`DEFAULT_CONTRAST`, 2 %), where ``dynamic_range`` is the 0.5-99.5
   percentile range of the image with the finding (chest: every pixel, NIH
   images are not contrast-stretched; limb: the body-part pixels, the range
   the MURA pipeline's autocontrast stretches to 0..255). Reported: their
   count, the **equivalent diameter** ``2 sqrt(area / pi)`` in pixels, the
   **thickness** (diameter of the largest disc inside the region,
   ``2 max(EDT) - 1`` px: exact for odd widths; a thin rim or a fracture line
   has a large area but a small thickness) and the **peak contrast**
   ``max |d| / dynamic_range``.

A low threshold counts the antialiasing skirt: a sharp-edged finding of
diameter ``D`` source pixels measures about ``D s + 1`` px at scale ``s``, not
``D s``. A finding whose contrast sinks below the threshold after
resampling (a faint nodule averaged away at 64 px) measures 0.
Detector noise (chest: 0.2-1.2 % of the range before resampling; limb: about
1-3 %) is not part of the difference; it averages down when the image shrinks.

This module renders and measures; it writes nothing. ``benchmarks/finding_extent.py``
prints the table over a sample of each embedded set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from salad_lite.synth.chest import ChestImageSpec, ChestRenderer
from salad_lite.synth.limb import ImageSpec, render_image
from salad_lite.utils import is_finite_number, is_int, is_number

__all__ = [
    "CARRIER_INSET",
    "DEFAULT_CONTRAST",
    "DEFAULT_SIZES",
    "ExtentMeasure",
    "FindingContribution",
    "FindingExtent",
    "chest_contributions",
    "chest_finding_extents",
    "extents_at_sizes",
    "limb_contribution",
    "limb_finding_extents",
    "measure_extent",
    "resample",
]

#: Training resolutions compared (pixels per side).
DEFAULT_SIZES: tuple[int, ...] = (64, 128, 256)
#: Visibility threshold as a fraction of the image's dynamic range.
DEFAULT_CONTRAST = 0.02
#: The MURA pipeline's carrier inset (``carrier_homography(corners, inset=0.01)``):
#: each side loses this fraction plus 1 px.
CARRIER_INSET = 0.01
_BODY_MARGIN_PX = 3  # limb differences are kept within this many pixels of the body masks
_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class FindingContribution:
    """One finding's contribution to one image, at the resolution the image is rendered at.

    Attributes:
        image: the image's name (chest ``Image Index``; limb relative path).
        finding: chest NIH finding name, or limb abnormality kind.
        severity: the finding's severity (chest ``[0, 1]``; limb ``[0.2, 1]``).
        delta: float32 ``[H, W]``, image with the finding minus image without it,
            displayed intensity (``[0, 1]`` units; negative = darker).
        dynamic_range: the image's intensity range the contrast threshold is a
            fraction of (``[0, 1]`` units, > 0).
        major_px: the length, in pixels of ``delta``, that the data cache resizes
            to the training size ``S`` (scale ``S / major_px``).
    """

    image: str
    finding: str
    severity: float
    delta: np.ndarray
    dynamic_range: float
    major_px: float


@dataclass(frozen=True)
class ExtentMeasure:
    """The visible region of one difference image (see :func:`measure_extent`).

    Attributes:
        area_px: pixels above the threshold.
        diameter_px: equivalent diameter ``2 sqrt(area / pi)``, pixels.
        thickness_px: diameter of the largest disc inside the region (``2 max EDT - 1``), pixels; 0 if empty.
        peak_contrast: ``max |delta| / dynamic_range`` (dimensionless).
    """

    area_px: int
    diameter_px: float
    thickness_px: float
    peak_contrast: float


@dataclass(frozen=True)
class FindingExtent:
    """A finding's extent at one training size ``size`` (pixels per side); see :class:`ExtentMeasure`."""

    image: str
    finding: str
    severity: float
    size: int
    area_px: int
    diameter_px: float
    thickness_px: float
    peak_contrast: float


def _check_contrast(contrast: float) -> None:
    if not is_number(contrast) or not 0.0 < contrast < 1.0:
        raise ValueError(f"contrast must be a fraction of the dynamic range in (0, 1), got {contrast!r}")


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    if isinstance(sizes, (int, np.integer)):
        raise ValueError(f"sizes must be a sequence of image sides, got the single value {sizes!r}")
    out = tuple(sizes)
    if not out:
        raise ValueError("sizes is empty: give at least one training image side (pixels)")
    for size in out:
        if not is_int(size) or size < 1:
            raise ValueError(f"every size must be a positive integer number of pixels, got {size!r} in {out}")
    return tuple(int(s) for s in out)


def _check_delta(delta: np.ndarray) -> np.ndarray:
    if not isinstance(delta, np.ndarray) or delta.ndim != 2 or delta.size == 0:
        raise ValueError(f"delta must be a non-empty 2-D array [H, W]; got {type(delta).__name__} "
                         f"of shape {getattr(delta, 'shape', None)}")
    if not np.issubdtype(delta.dtype, np.number) or np.issubdtype(delta.dtype, np.complexfloating):
        raise ValueError(f"delta must hold real numbers, got dtype {delta.dtype}")
    delta = delta.astype(np.float32, copy=False)
    if not np.isfinite(delta).all():
        raise ValueError(f"delta has {int((~np.isfinite(delta)).sum())} NaN or infinite pixels")
    return delta


def resample(values: np.ndarray, scale: float) -> np.ndarray:
    """Resize a float map by ``scale`` as the data cache resizes its images.

    Pillow's bilinear filter (antialiased when shrinking), as
    ``salad_lite.data.transforms.resize_pad`` uses on uint8 images, here on
    float32 (mode ``F``) so a signed difference keeps its sign and precision.

    Args:
        values: ``[H, W]`` real array (any units; here intensity differences).
        scale: output pixels per input pixel, > 0.

    Returns:
        float32 ``[max(1, round(H scale)), max(1, round(W scale))]``, the same units.

    Raises:
        ValueError: ``values`` not a finite real 2-D array, or ``scale`` not a positive finite number.
    """
    values = _check_delta(values)
    if not is_finite_number(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    height, width = values.shape
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (new_h, new_w) == (height, width):
        return values.copy()
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)


def measure_extent(delta: np.ndarray, dynamic_range: float, contrast: float = DEFAULT_CONTRAST) -> ExtentMeasure:
    """The region of ``delta`` above the visibility threshold, on ``delta``'s own pixel grid.

    Args:
        delta: ``[H, W]`` finite real intensity difference (``[0, 1]`` units).
        dynamic_range: the image's intensity range (same units), > 0.
        contrast: threshold as a fraction of ``dynamic_range``, in ``(0, 1)``:
            a pixel counts if ``|delta| > contrast * dynamic_range``.

    Returns:
        :class:`ExtentMeasure`; all zero for a difference that never reaches the threshold.

    Raises:
        ValueError: a bad ``delta``, ``dynamic_range`` or ``contrast`` (the value is named).
    """
    delta = _check_delta(delta)
    _check_contrast(contrast)
    if not is_finite_number(dynamic_range) or dynamic_range <= 0:
        raise ValueError(f"dynamic_range must be a positive finite intensity range, got {dynamic_range!r}")
    magnitude = np.abs(delta)
    region = magnitude > contrast * dynamic_range
    area = int(region.sum())
    if area == 0:
        return ExtentMeasure(0, 0.0, 0.0, float(magnitude.max() / dynamic_range))
    depth = ndimage.distance_transform_edt(np.pad(region, 1))  # the image border counts as outside
    return ExtentMeasure(area_px=area, diameter_px=2.0 * math.sqrt(area / math.pi),
                         thickness_px=float(2.0 * depth.max() - 1.0),
                         peak_contrast=float(magnitude.max() / dynamic_range))


def extents_at_sizes(contribution: FindingContribution, sizes: Sequence[int] = DEFAULT_SIZES,
                     contrast: float = DEFAULT_CONTRAST) -> list[FindingExtent]:
    """Resample one contribution to each training size (:func:`resample`) and measure it there.

    Returns:
        One :class:`FindingExtent` per size, in the order of ``sizes``.

    Raises:
        ValueError: empty or non-positive ``sizes``, bad ``contrast``, or a malformed contribution.
    """
    sizes = _check_sizes(sizes)
    _check_contrast(contrast)
    if not math.isfinite(contribution.major_px) or contribution.major_px <= 0:
        raise ValueError(f"{contribution.image}: major_px must be positive, got {contribution.major_px!r}")
    out = []
    for size in sizes:
        measured = measure_extent(resample(contribution.delta, size / contribution.major_px),
                                  contribution.dynamic_range, contrast)
        out.append(FindingExtent(contribution.image, contribution.finding, contribution.severity, size,
                                 measured.area_px, measured.diameter_px, measured.thickness_px,
                                 measured.peak_contrast))
    return out


def _robust_range(values: np.ndarray) -> float:
    low, high = np.percentile(values, _PERCENTILES)
    return float(high - low)


def chest_contributions(renderer: ChestRenderer, spec: ChestImageSpec,
                        render_size: int = 256) -> list[FindingContribution]:
    """Each finding of a chest image in isolation, rendered at ``render_size`` (the set's size).

    Args:
        renderer: :meth:`ChestRenderer.load() <salad_lite.synth.chest.ChestRenderer.load>`.
        spec: one image of :func:`~salad_lite.synth.chest.plan_chest_set`.
        render_size: side the set's PNGs are rendered at (its manifest's ``image_size``), >= 16.

    Returns:
        One :class:`FindingContribution` per finding of ``spec`` (empty for a normal image);
        ``major_px = render_size``.

    Raises:
        ValueError: ``render_size`` < 16 (the renderer's own minimum).
    """
    if not is_int(render_size) or render_size < 16:
        raise ValueError(f"render_size must be an integer >= 16 (pixels), got {render_size!r}")
    lesions = renderer.lesions(spec)
    if not lesions:
        return []
    without = renderer.intensity(spec, render_size, ())
    out = []
    for lesion in lesions:
        with_one = renderer.intensity(spec, render_size, [lesion])
        out.append(FindingContribution(spec.image_index, lesion.finding, float(lesion.severity),
                                       (with_one - without).astype(np.float32), _robust_range(with_one),
                                       float(render_size)))
    return out


def _plate_major_px(corners: np.ndarray, inset: float = CARRIER_INSET) -> float:
    """Longer side (px) of the plate after the carrier warp: mean side length, less ``inset`` and 1 px per end."""
    tl, tr, br, bl = np.asarray(corners, dtype=np.float64)
    width = 0.5 * (np.linalg.norm(tr - tl) + np.linalg.norm(br - bl))
    height = 0.5 * (np.linalg.norm(bl - tl) + np.linalg.norm(br - tr))
    return float(max(width, height) * (1.0 - 2.0 * inset) - 2.0)


def limb_contribution(spec: ImageSpec) -> FindingContribution | None:
    """A limb image's lesion in isolation, in the rendered frame (``None`` for a normal image).

    ``delta`` = the rendered image minus the same spec rendered with ``lesion=None``
    (``[0, 1]`` units, 8-bit steps), zero farther than 3 px from both body masks;
    ``dynamic_range`` = the 0.5-99.5 percentile range over the body-part pixels;
    ``major_px`` = the plate's longer side after the carrier warp.
    """
    if spec.lesion is None:
        return None
    with_lesion = render_image(spec)
    without = render_image(replace(spec, lesion=None))
    delta = (with_lesion.image.astype(np.float32) - without.image.astype(np.float32)) / np.float32(255.0)
    near_body = ndimage.binary_dilation(with_lesion.body_mask | without.body_mask, iterations=_BODY_MARGIN_PX)
    delta[~near_body] = 0.0
    body = with_lesion.image[with_lesion.body_mask] if with_lesion.body_mask.any() else with_lesion.image
    return FindingContribution(spec.rel_path, spec.lesion.kind, float(spec.lesion.severity), delta,
                               _robust_range(body.astype(np.float32) / np.float32(255.0)),
                               _plate_major_px(with_lesion.corners))


def chest_finding_extents(renderer: ChestRenderer, spec: ChestImageSpec, sizes: Sequence[int] = DEFAULT_SIZES,
                          contrast: float = DEFAULT_CONTRAST, render_size: int = 256) -> list[FindingExtent]:
    """:func:`chest_contributions` measured at every size: ``len(findings) * len(sizes)`` rows (none if normal).

    Raises:
        ValueError: bad ``sizes``, ``contrast`` or ``render_size`` (checked before rendering).
    """
    sizes = _check_sizes(sizes)
    _check_contrast(contrast)
    return [row for part in chest_contributions(renderer, spec, render_size)
            for row in extents_at_sizes(part, sizes, contrast)]


def limb_finding_extents(spec: ImageSpec, sizes: Sequence[int] = DEFAULT_SIZES,
                         contrast: float = DEFAULT_CONTRAST) -> list[FindingExtent]:
    """:func:`limb_contribution` measured at every size: ``len(sizes)`` rows (none for a normal image).

    Raises:
        ValueError: bad ``sizes`` or ``contrast`` (checked before rendering).
    """
    sizes = _check_sizes(sizes)
    _check_contrast(contrast)
    part = limb_contribution(spec)
    return [] if part is None else extents_at_sizes(part, sizes, contrast)
