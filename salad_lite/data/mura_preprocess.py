"""MURA preprocessing: detector-plate ("carrier") detection, body-part segmentation, resize.

The paper uses its lab's public MURA pipeline; this module re-implements it
from the description in ``docs/salad-reference.md`` (no code taken):

1. **Carrier detection** (:func:`detect_carrier`). Gaussian blur, then Canny
   edges over a sweep of thresholds. Every external contour of the (slightly
   dilated) edge map is replaced by its convex hull and simplified
   (``approxPolyDP``); a candidate is kept if it has 4 vertices, is convex,
   covers at least ``min_area`` of the image (per body part, see
   :data:`CARRIER_MIN_AREA`) and less than ``max_area``, has all corner angles
   within ``angle_tol`` degrees of 90 and lies on edges along most of its
   perimeter (``min_support``) and along each side (``min_side_support``),
   and is brighter (or darker) than its surroundings along all four sides
   (``min_contrast``; a quad whose side runs along the image border is no
   plate). The largest candidate over the whole sweep wins; its corners are
   refined by fitting a line to the edge pixels along each side.
2. **Perspective warp** (:func:`warp_to_carrier`) of the plate to an
   axis-aligned rectangle, cropping a thin inset so no plate rim remains.
3. **Body-part segmentation** (:func:`segment_body_part`): invert if the
   background is bright, median filter (our addition, against detector noise),
   histogram equalisation, Yen threshold (the hysteresis *high* threshold),
   hysteresis thresholding with the *low* threshold searched (see
   :func:`search_low_threshold`), morphological opening, largest connected
   component, hole filling.
4. **Output** (:func:`preprocess_mura_image`): autocontrast (range taken over
   the body-part pixels, 0.5% cut at each end), resize so the major axis is
   ``size`` with zero padding to a square, mask applied (background = 0).

Fallbacks (documented policy): when no carrier is found the whole image is
used; when the segmentation keeps less than ``min_mask_fraction`` of the image
the mask is dropped (everything kept). Both are reported in the ``steps``
dict and counted by :func:`preprocess_mura_batch`, which warns once with the
counts.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from skimage import exposure, filters, morphology
from tqdm.auto import tqdm

from salad_lite.data.io import DataWarning
from salad_lite.data.transforms import autocontrast, resize_pad
from salad_lite.utils import is_int

__all__ = [
    "CARRIER_MIN_AREA",
    "CarrierParams",
    "PreprocessStats",
    "detect_carrier",
    "order_corners",
    "warp_to_carrier",
    "carrier_homography",
    "unwarp_mask",
    "segment_body_part",
    "search_low_threshold",
    "preprocess_mura_image",
    "preprocess_mura_batch",
    "polygon_iou",
    "dice",
]

#: Smallest plate area, as a fraction of the image, accepted per MURA body part
#: (our values: the plate fills most of a MURA frame; finger films are smallest).
CARRIER_MIN_AREA: dict[str, float] = {
    "ELBOW": 0.2, "FINGER": 0.15, "FOREARM": 0.2, "HAND": 0.2, "HUMERUS": 0.2, "SHOULDER": 0.25, "WRIST": 0.2,
}
_DEFAULT_MIN_AREA = 0.15


@dataclass(frozen=True)
class CarrierParams:
    """Parameters of :func:`detect_carrier` (defaults tuned on the synthetic set).

    Attributes:
        blur_sigma: Gaussian blur before Canny, in pixels at ``work_size``.
        canny_high: the sweep of Canny high thresholds (low = ``canny_ratio`` * high).
        canny_ratio: low / high Canny threshold.
        min_area / max_area: accepted plate area, fractions of the image area.
        angle_tol: largest deviation of a corner angle from 90 degrees.
        min_support: fraction of the perimeter that must lie on edge pixels.
        min_side_support: the same, for each side separately (a limb crossing
            the frame is no plate: its "sides" along the image border have no edges).
        min_contrast: the plate must differ from its surroundings by at least
            this many grey levels, with the same sign, along all four sides
            (and have image pixels outside each side).
        min_chain: edge chains at least this long (fraction of the major axis)
            are also pooled into one extra candidate hull.
        work_size: the image is processed with its major axis at most this long.
    """

    blur_sigma: float = 1.5
    canny_high: tuple[int, ...] = (200, 140, 100, 70, 50, 35, 25)
    canny_ratio: float = 0.5
    min_area: float = _DEFAULT_MIN_AREA
    max_area: float = 0.97
    angle_tol: float = 20.0
    min_support: float = 0.7
    min_side_support: float = 0.4
    min_contrast: float = 8.0
    min_chain: float = 0.1
    work_size: int = 512


# --------------------------------------------------------------------------- geometry helpers


def order_corners(corners: np.ndarray) -> np.ndarray:
    """Order 4 points (x, y) as top-left, top-right, bottom-right, bottom-left.

    Args:
        corners: ``[4, 2]`` in any order (a convex quadrilateral).

    Returns:
        ``float64 [4, 2]``: sorted by angle around the centroid, starting with
        the point closest to the image's top-left direction.
    """
    pts = np.asarray(corners, dtype=np.float64).reshape(4, 2)
    centre = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    pts = pts[np.argsort(angles)]  # clockwise on screen (y down), starting near -pi (left)
    start = int(np.argmin(pts[:, 0] + pts[:, 1]))
    return np.roll(pts, -start, axis=0)


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex polygons ``[K, 2]`` (x, y), exact."""
    pa = order_corners(a).astype(np.float32) if len(a) == 4 else np.asarray(a, np.float32)
    pb = order_corners(b).astype(np.float32) if len(b) == 4 else np.asarray(b, np.float32)
    inter, _ = cv2.intersectConvexConvex(pa, pb)
    union = abs(cv2.contourArea(pa)) + abs(cv2.contourArea(pb)) - inter
    return float(inter / union) if union > 0 else 0.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of the same shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def _angles_ok(quad: np.ndarray, tol: float) -> bool:
    for k in range(4):
        p, q, r = quad[k - 1], quad[k], quad[(k + 1) % 4]
        v1, v2 = p - q, r - q
        cos = float(np.dot(v1, v2) / (np.linalg.norm(v1) * np.linalg.norm(v2) + 1e-9))
        if abs(90.0 - math.degrees(math.acos(np.clip(cos, -1, 1)))) > tol:
            return False
    return True


def _support(quad: np.ndarray, edges: np.ndarray, step: float = 2.0) -> tuple[float, float]:
    """Edge support of a quad: (fraction of all side samples on edges, smallest per-side fraction)."""
    h, w = edges.shape
    hits = total = 0
    worst = 1.0
    for k in range(4):
        p, q = quad[k], quad[(k + 1) % 4]
        n = max(2, int(np.linalg.norm(q - p) / step))
        ts = np.linspace(0.05, 0.95, n)
        xs = np.clip(np.rint(p[0] + ts * (q[0] - p[0])).astype(int), 0, w - 1)
        ys = np.clip(np.rint(p[1] + ts * (q[1] - p[1])).astype(int), 0, h - 1)
        side_hits = int(edges[ys, xs].sum())
        worst = min(worst, side_hits / n)
        hits += side_hits
        total += n
    return hits / max(total, 1), worst


def _plate_contrast(image: np.ndarray, quad: np.ndarray, offset: float = 4.0) -> float:
    """Signed plate-vs-surround contrast of a quad (grey levels), 0 when it is no plate.

    Along each side, pixels ``offset`` px inside and outside are compared. A
    detector plate is brighter (or darker) than its surroundings on all four
    sides; a side with its outer samples beyond the image, or sides that
    disagree in sign, make it no plate (0). Returns the weakest side's median
    difference (inside - outside), with the common sign.
    """
    h, w = image.shape
    centre = quad.mean(axis=0)
    medians = []
    for k in range(4):
        p, q = quad[k], quad[(k + 1) % 4]
        d = (q - p) / (np.linalg.norm(q - p) + 1e-9)
        inward = np.array([-d[1], d[0]])
        if np.dot(centre - p, inward) < 0:
            inward = -inward
        points = p + np.outer(np.linspace(0.1, 0.9, 40), q - p)
        inner, outer = points + offset * inward, points - offset * inward
        valid = (outer[:, 0] >= 0) & (outer[:, 0] <= w - 1) & (outer[:, 1] >= 0) & (outer[:, 1] <= h - 1)
        if valid.mean() < 0.5:
            return 0.0
        ix = np.clip(np.rint(inner[valid]).astype(int), 0, [w - 1, h - 1])
        ox = np.rint(outer[valid]).astype(int)
        medians.append(float(np.median(image[ix[:, 1], ix[:, 0]].astype(float) - image[ox[:, 1], ox[:, 0]].astype(float))))
    signs = {np.sign(m) for m in medians}
    if len(signs) != 1 or 0.0 in signs:
        return 0.0
    weakest = min(medians, key=abs)
    return weakest


def _refine(quad: np.ndarray, edge_points: np.ndarray, band: float) -> np.ndarray:
    """Fit a line to the edge pixels near each side and intersect neighbouring lines."""
    lines = []
    for k in range(4):
        p, q = quad[k], quad[(k + 1) % 4]
        d = q - p
        length = float(np.linalg.norm(d))
        if length < 1:
            return quad
        d = d / length
        rel = edge_points - p
        along = rel @ d
        across = rel @ np.array([-d[1], d[0]])
        near = (np.abs(across) <= band) & (along > 0.1 * length) & (along < 0.9 * length)
        if near.sum() < 10:
            return quad
        vx, vy, x0, y0 = cv2.fitLine(edge_points[near].astype(np.float32), cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
        lines.append((np.array([x0, y0], np.float64), np.array([vx, vy], np.float64)))
    refined = []
    for k in range(4):
        (p1, d1), (p2, d2) = lines[k - 1], lines[k]
        mat = np.array([d1, -d2]).T
        if abs(np.linalg.det(mat)) < 1e-6:
            return quad
        t = np.linalg.solve(mat, p2 - p1)
        refined.append(p1 + t[0] * d1)
    refined_arr = np.array(refined)
    if np.abs(refined_arr - quad).max() > 2 * band + 2:
        return quad
    return refined_arr


# --------------------------------------------------------------------------- carrier


def detect_carrier(
    img: np.ndarray,
    body_part: str | None = None,
    params: CarrierParams | None = None,
    return_edges: bool = False,
) -> np.ndarray | None | tuple[np.ndarray | None, np.ndarray]:
    """Find the detector plate in a radiograph photographed/scanned with its surroundings.

    Args:
        img: ``uint8 [H, W]``.
        body_part: MURA body part (``"WRIST"``, ``"XR_WRIST"``...) selecting the
            minimum plate area in :data:`CARRIER_MIN_AREA`; None uses ``params.min_area``.
        params: detection parameters (default :class:`CarrierParams`).
        return_edges: also return the Canny edge map (``bool [H', W']`` at the
            working resolution) of the threshold that produced the winner (or the
            last one tried).

    Returns:
        ``float64 [4, 2]`` corner coordinates (x, y) in pixels of ``img``
        (pixel centres at integers), ordered top-left, top-right, bottom-right,
        bottom-left; ``None`` when no quadrilateral passes the tests. With
        ``return_edges``: ``(corners_or_None, edges)``.

    Raises:
        ValueError: ``img`` is not a non-empty uint8 [H, W] array; ``body_part`` is not one of MURA's seven.
    """
    if not isinstance(img, np.ndarray) or img.ndim != 2 or img.dtype != np.uint8 or img.size == 0:
        raise ValueError(f"detect_carrier expects a non-empty uint8 [H, W] image, got {getattr(img, 'shape', None)} "
                         f"{getattr(img, 'dtype', None)}")
    params = params or CarrierParams()
    min_area = params.min_area
    if body_part is not None:
        part = body_part.upper().removeprefix("XR_") if isinstance(body_part, str) else body_part
        if part not in CARRIER_MIN_AREA:
            raise ValueError(f"body_part must be one of MURA's {sorted(CARRIER_MIN_AREA)} (or None), got {body_part!r}")
        min_area = CARRIER_MIN_AREA[part]
    h, w = img.shape
    scale = min(1.0, params.work_size / max(h, w))
    work = img if scale == 1.0 else cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    wh, ww = work.shape
    blurred = cv2.GaussianBlur(work, (0, 0), params.blur_sigma)
    image_area = float(wh * ww)
    kernel = np.ones((3, 3), np.uint8)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    last_edges = np.zeros_like(work, dtype=bool)
    for high in params.canny_high:
        edges = cv2.Canny(blurred, int(high * params.canny_ratio), int(high), L2gradient=True)
        last_edges = edges > 0
        thick = cv2.dilate(edges, kernel)
        near_edge = cv2.dilate(edges, kernel, iterations=2) > 0  # +-2 px tolerance for the support test
        contours, _ = cv2.findContours(thick, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        # Candidates: each contour's hull, plus the hull of all longer edge chains
        # together (a plate whose rim is broken into pieces by weak contrast).
        long_chains = [c for c in contours if cv2.arcLength(c, False) >= params.min_chain * max(wh, ww)]
        hulls = [cv2.convexHull(c) for c in contours]
        if len(long_chains) > 1:
            hulls.append(cv2.convexHull(np.concatenate(long_chains)))
        for hull in hulls:
            area = cv2.contourArea(hull)
            if area < min_area * image_area or area > params.max_area * image_area:
                continue
            perimeter = cv2.arcLength(hull, True)
            for eps in (0.02, 0.04):  # a clipped corner or a marker can add a short fifth side
                approx = cv2.approxPolyDP(hull, eps * perimeter, True).reshape(-1, 2).astype(np.float64)
                if len(approx) <= 4:
                    break
            if len(approx) != 4 or not cv2.isContourConvex(approx.astype(np.float32)):
                continue
            quad = order_corners(approx)
            if not _angles_ok(quad, params.angle_tol):
                continue
            support, worst_side = _support(quad, near_edge)
            if support < params.min_support or worst_side < params.min_side_support:
                continue
            ys, xs = np.nonzero(edges)
            quad = order_corners(_refine(quad, np.stack([xs, ys], axis=1).astype(np.float64), band=3.0))
            if abs(_plate_contrast(blurred, quad)) < params.min_contrast:
                continue
            quad_area = abs(cv2.contourArea(quad.astype(np.float32)))
            if best is None or quad_area > best[0] * 1.02:
                best = (quad_area, quad, last_edges)
    corners = None
    edges_out = last_edges
    if best is not None:
        corners = (best[1] + 0.5) / scale - 0.5 if scale != 1.0 else best[1]
        edges_out = best[2]
    return (corners, edges_out) if return_edges else corners


def carrier_homography(corners: np.ndarray, inset: float = 0.01) -> tuple[np.ndarray, tuple[int, int]]:
    """Homography from image pixels to the axis-aligned plate rectangle, and its size.

    Args:
        corners: ``[4, 2]`` (x, y), any order.
        inset: fraction of each side cropped away (plus 1 px) so the plate rim
            is not in the result.

    Returns:
        ``(H [3, 3] float64, (height, width))`` with ``H`` mapping (x, y, 1) in
        the source image to the warped image.
    """
    quad = order_corners(corners)
    tl, tr, br, bl = quad
    width = 0.5 * (np.linalg.norm(tr - tl) + np.linalg.norm(br - bl))
    height = 0.5 * (np.linalg.norm(bl - tl) + np.linalg.norm(br - tr))
    dx, dy = inset * width + 1.0, inset * height + 1.0
    out_w, out_h = max(2, int(round(width - 2 * dx))), max(2, int(round(height - 2 * dy)))
    dst = np.array([[-dx - 0.5, -dy - 0.5], [out_w + dx - 0.5, -dy - 0.5],
                    [out_w + dx - 0.5, out_h + dy - 0.5], [-dx - 0.5, out_h + dy - 0.5]], np.float32)
    homography = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    return homography.astype(np.float64), (out_h, out_w)


def warp_to_carrier(img: np.ndarray, corners: np.ndarray, inset: float = 0.01) -> np.ndarray:
    """Perspective-warp the plate ``corners`` of ``img`` to an upright rectangle.

    Args:
        img: ``[H, W]`` image (any dtype OpenCV warps; uint8 in this package).
        corners: ``[4, 2]`` plate corners (x, y), any order.
        inset: see :func:`carrier_homography`.

    Returns:
        The plate, ``[h, w]`` with ``w`` / ``h`` the mean lengths of its
        horizontal / vertical sides (minus the inset), same dtype as ``img``.
    """
    homography, (out_h, out_w) = carrier_homography(corners, inset)
    return cv2.warpPerspective(img, homography, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def unwarp_mask(mask: np.ndarray, corners: np.ndarray, shape: tuple[int, int], inset: float = 0.01) -> np.ndarray:
    """Map a mask of the warped plate back into the original frame ``shape`` = (H, W).

    Returns ``bool [H, W]`` (False outside the plate).
    """
    homography, _ = carrier_homography(corners, inset)
    back = cv2.warpPerspective(mask.astype(np.float32), np.linalg.inv(homography), (shape[1], shape[0]),
                               flags=cv2.INTER_LINEAR, borderValue=0.0)
    return back > 0.5


# --------------------------------------------------------------------------- segmentation


def _bright_background(img: np.ndarray, border: float = 0.05) -> bool:
    h, w = img.shape
    bh, bw = max(1, int(h * border)), max(1, int(w * border))
    ring = np.concatenate([img[:bh].ravel(), img[-bh:].ravel(), img[:, :bw].ravel(), img[:, -bw:].ravel()])
    return float(np.median(ring)) > 127.0


def search_low_threshold(equalized: np.ndarray, high: float, gradient: np.ndarray,
                         candidates: Sequence[float] | None = None, edge_factor: float = 2.5,
                         tolerance: float = 0.05) -> tuple[float, np.ndarray, np.ndarray]:
    """Search the hysteresis low threshold by the edge support of the mask boundary.

    For each candidate low threshold (from ``high`` downwards) the hysteresis
    mask is computed and scored by its *edge support*: the fraction of its
    boundary pixels where the gradient magnitude
    exceeds ``edge_factor`` times the noise level (median gradient of the
    pixels below ``high``). A boundary lying on the skin line scores high; a
    mask that leaks into the flat, noisy background scores low. The chosen
    threshold is the lowest one (the largest mask) whose support is within
    ``tolerance`` of the best support, so the skin line wins over the bone
    edges when both are well supported. The image border is not part of the
    boundary (a limb leaves the plate there). All candidate masks come from one
    grayscale reconstruction (8-connected hysteresis).

    Args:
        equalized: float ``[H, W]`` in ``[0, 1]`` (histogram-equalised image).
        high: the hysteresis high threshold (Yen), same units.
        gradient: float ``[H, W]``, gradient magnitude of the smoothed image.
        candidates: low thresholds to try (default 50 values in ``[0.02, 1] * high``).
        edge_factor: gradient / noise ratio that counts as an edge.
        tolerance: support slack that favours larger masks.

    Returns:
        ``(low, mask, table)``: the threshold, its boolean mask ``[H, W]`` and a
        float ``[K, 3]`` table of (low, mask area fraction, support) per candidate.
    """
    if candidates is None:
        candidates = np.linspace(1.0, 0.02, 50) * high
    lows = sorted((float(c) for c in candidates), reverse=True)
    below = gradient[equalized < high]
    noise = float(np.median(below)) if below.size else float(np.median(gradient))
    strong = gradient > edge_factor * (noise + 1e-3)
    kernel = np.ones((3, 3), np.uint8)
    # Hysteresis for every low threshold at once: the grayscale reconstruction of
    # the seeds (> high) under the image gives, per pixel, the best "lowest
    # value along a path to a seed"; the mask at ``low`` is where it exceeds low.
    seeds = np.where(equalized > high, equalized, 0.0)
    reach = morphology.reconstruction(seeds, equalized, method="dilation")
    masks, table = [], []
    for low in lows:
        mask = reach > low
        eroded = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        boundary = mask & ~eroded
        boundary[0, :] = boundary[-1, :] = boundary[:, 0] = boundary[:, -1] = False  # the plate edge is no skin line
        support = float(strong[boundary].mean()) if boundary.any() else 0.0
        masks.append(mask)
        table.append((low, float(mask.mean()), support))
    table_arr = np.asarray(table, dtype=np.float64)
    good = np.flatnonzero(table_arr[:, 2] >= table_arr[:, 2].max() - tolerance)
    best = int(good.max())
    return lows[best], masks[best], table_arr


def segment_body_part(img: np.ndarray, return_info: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Segment the body part (soft tissue + bone) on a plate image.

    Args:
        img: ``uint8 [H, W]``, the warped plate (or a whole image).
        return_info: also return a dict with the intermediate images and
            thresholds (``inverted``, ``equalized``, ``high``, ``low``,
            ``hysteresis``, ``opened``).

    Returns:
        ``bool [H, W]``, True on the body part (one connected component, holes
        filled); with ``return_info``: ``(mask, info)``.
    """
    if not isinstance(img, np.ndarray) or img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"segment_body_part expects a uint8 [H, W] image, got {getattr(img, 'shape', None)}")
    inverted = _bright_background(img)
    work = 255 - img if inverted else img
    smooth = cv2.medianBlur(work, 5)
    equalized = exposure.equalize_hist(smooth)  # float [0, 1]
    high = float(filters.threshold_yen(equalized))
    blurred = cv2.GaussianBlur(smooth.astype(np.float32), (0, 0), 1.0)
    gradient = np.hypot(cv2.Sobel(blurred, cv2.CV_32F, 1, 0), cv2.Sobel(blurred, cv2.CV_32F, 0, 1))
    low, hyst, table = search_low_threshold(equalized, high, gradient)
    radius = max(1, int(round(0.01 * min(img.shape))))
    footprint = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(hyst.astype(np.uint8), cv2.MORPH_OPEN, footprint) > 0
    labels, n = ndimage.label(opened)
    if n == 0:
        mask = np.zeros_like(opened)
    else:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    if return_info:
        info = {"inverted": inverted, "equalized": equalized, "high": high, "low": low,
                "low_search": table, "hysteresis": hyst, "opened": opened}
        return mask, info
    return mask


# --------------------------------------------------------------------------- whole pipeline


def preprocess_mura_image(img: np.ndarray, size: int = 512, return_steps: bool = False,
                          body_part: str | None = None, min_mask_fraction: float = 0.02
                          ) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """The full MURA pipeline: carrier warp, segmentation, autocontrast, resize + pad, mask.

    Args:
        img: ``uint8 [H, W]`` raw MURA image.
        size: output side; the major axis is resized to it, the minor axis
            zero-padded (centred).
        return_steps: also return every intermediate step (for figures).
        body_part: optional MURA part, selects the carrier's minimum area.
        min_mask_fraction: a segmentation covering less of the plate is
            discarded (fallback: no masking).

    Returns:
        ``uint8 [size, size]`` (0 outside the body part); with ``return_steps``,
        ``(output, steps)`` where ``steps`` holds ``input``, ``edges``,
        ``corners`` (``[4, 2]`` or None), ``carrier_found``, ``warped``,
        ``inverted``, ``equalized``, ``high``, ``low``, ``hysteresis``,
        ``mask``, ``mask_fallback``, ``autocontrast``, ``resized``, ``output``.

    Raises:
        ValueError: ``img`` is not a non-empty uint8 [H, W] array, ``size`` not an int >= 1,
            ``body_part`` not one of MURA's seven.
    """
    if not is_int(size) or size < 1:
        raise ValueError(f"size must be an int >= 1 (pixels), got {size!r}")
    corners, edges = detect_carrier(img, body_part=body_part, return_edges=True)
    warped = img if corners is None else warp_to_carrier(img, corners)
    mask, info = segment_body_part(warped, return_info=True)
    if info["inverted"]:
        warped_pos = 255 - warped
    else:
        warped_pos = warped
    mask_fallback = bool(mask.mean() < min_mask_fraction)
    if mask_fallback:
        mask = np.ones_like(mask)
    contrasted = autocontrast(warped_pos, cutoff=0.5, mask=mask)
    resized = resize_pad(contrasted, size)
    mask_resized = resize_pad(mask.astype(np.uint8) * 255, size) >= 128
    output = np.where(mask_resized, resized, 0).astype(np.uint8)
    if not return_steps:
        return output
    steps = {
        "input": img, "edges": edges, "corners": corners, "carrier_found": corners is not None,
        "warped": warped, "inverted": info["inverted"], "equalized": info["equalized"],
        "high": info["high"], "low": info["low"], "low_search": info["low_search"], "hysteresis": info["hysteresis"], "opened": info["opened"],
        "mask": mask, "mask_fallback": mask_fallback, "autocontrast": contrasted, "resized": resized,
        "output": output,
    }
    return output, steps


@dataclass
class PreprocessStats:
    """Counts of the documented fallbacks over a batch."""

    total: int = 0
    no_carrier: int = 0
    mask_fallback: int = 0
    no_carrier_items: list[int] = field(default_factory=list)
    mask_fallback_items: list[int] = field(default_factory=list)


def preprocess_mura_batch(images: Iterable[np.ndarray], size: int = 512, body_parts: Sequence[str | None] | None = None,
                          progress: bool = True, total: int | None = None, warn: bool = True
                          ) -> tuple[np.ndarray, PreprocessStats]:
    """Run :func:`preprocess_mura_image` on many images and count the fallbacks.

    Args:
        images: iterable of ``uint8 [H, W]``.
        size: output side.
        body_parts: optional body part per image (same order).
        progress: tqdm bar.
        total: number of images (for the bar when ``images`` has no ``len``).
        warn: emit one :class:`~salad_lite.data.io.DataWarning` with the
            fallback counts when any occurred.

    Returns:
        ``(uint8 [N, size, size], stats)``.
    """
    if total is None and hasattr(images, "__len__"):
        total = len(images)  # type: ignore[arg-type]
    outputs: list[np.ndarray] = []
    stats = PreprocessStats()
    for i, img in enumerate(tqdm(images, total=total, desc=f"MURA preprocessing ({size}px)", unit="img",
                                 disable=not progress)):
        part = body_parts[i] if body_parts is not None else None
        out, steps = preprocess_mura_image(img, size=size, return_steps=True, body_part=part)
        outputs.append(out)
        stats.total += 1
        if not steps["carrier_found"]:
            stats.no_carrier += 1
            stats.no_carrier_items.append(i)
        if steps["mask_fallback"]:
            stats.mask_fallback += 1
            stats.mask_fallback_items.append(i)
    if warn and (stats.no_carrier or stats.mask_fallback):
        warnings.warn(
            f"MURA preprocessing fallbacks: no carrier found in {stats.no_carrier} of {stats.total} images "
            f"(whole image used); segmentation discarded in {stats.mask_fallback} (no mask applied)",
            DataWarning, stacklevel=2)
    stacked = np.stack(outputs) if outputs else np.zeros((0, size, size), np.uint8)
    return stacked, stats
