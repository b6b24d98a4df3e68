"""Augmented views for L_ss (Eq. 1), computed on the batch's own device.

A view is a small random affine warp (rotation, scale, shift, and a
width/height stretch: a wider or narrower build, a deeper or shallower
inspiration), an optional horizontal flip, a brightness/contrast jitter and a
tone curve ``x ** exp(g)`` (a film's processing and exposure): the nuisances an
X-ray acquisition varies, none of which makes a normal image abnormal. The
stretch and the tone curve are off by default (range 0).

Drawing and applying are separate (:func:`augment_params`, :func:`apply_augment`)
so that data-parallel training can draw the parameters of the whole global
batch on every rank and apply each rank's rows to its own images: the views
are then those of the single-process run. :func:`augment_batch` does both.

Every range is checked against :data:`AUGMENT_LIMITS` (:func:`check_augment_range`);
:class:`salad_lite.config.AugmentConfig` applies the same limits.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


#: The allowed values of each range of :func:`augment_params`: ``(low, high, low_open, high_open)``.
#: ``max_scale`` < 1 keeps the scale 1 + s positive (1 or more would shrink an image to a point or mirror
#: it); ``max_contrast`` < 1 keeps the contrast factor positive; rotation up to a half turn.
AUGMENT_LIMITS: dict[str, tuple[float, float, bool, bool]] = {
    "max_rotation_deg": (0.0, 180.0, False, False),
    "max_scale": (0.0, 1.0, False, True),
    "max_shift": (0.0, 1.0, False, False),
    "flip_probability": (0.0, 1.0, False, False),
    "max_brightness": (0.0, 1.0, False, False),
    "max_contrast": (0.0, 1.0, False, True),
    "max_aspect": (0.0, 1.0, False, False),
    "max_gamma": (0.0, 1.0, False, False),
}


def limits_text(name: str) -> str:
    """``"in [0.0, 1.0)"``: the allowed interval of range ``name`` of :data:`AUGMENT_LIMITS`."""
    low, high, low_open, high_open = AUGMENT_LIMITS[name]
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def within_limits(name: str, value: float) -> bool:
    """True when the number ``value`` lies in the interval of range ``name`` (NaN never does)."""
    low, high, low_open, high_open = AUGMENT_LIMITS[name]
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def check_augment_range(name: str, value: Any) -> float:
    """``value`` as a float when it is a real number (not bool) inside :data:`AUGMENT_LIMITS` [``name``].

    Raises:
        ValueError: an unknown ``name``; a value that is not a real number, is NaN/inf or lies
            outside the limits (the parameter and the value named).
    """
    if name not in AUGMENT_LIMITS:
        raise ValueError(f"unknown augmentation range {name!r}; the ranges are {sorted(AUGMENT_LIMITS)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number {limits_text(name)}, got {value!r}")
    if not within_limits(name, float(value)):
        raise ValueError(f"{name} must be {limits_text(name)}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class AugmentParams:
    """Per-image random parameters of one view, CPU float tensors [B] each (drawn in this order).

    ``angle`` (radians) and ``scale``, ``shift_x``, ``shift_y`` (fractions of the half-width),
    ``contrast``, ``brightness`` and ``aspect`` (the log-ratio of the horizontal to the vertical
    scale: a wider or narrower build, a deeper or shallower inspiration) are the signed uniform
    draws; ``gamma`` is the signed draw g of the tone curve ``x ** exp(g)`` (a film's
    processing and exposure); ``flip`` is bool.
    """

    angle: torch.Tensor
    scale: torch.Tensor
    flip: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    contrast: torch.Tensor
    brightness: torch.Tensor
    aspect: torch.Tensor
    gamma: torch.Tensor

    def __len__(self) -> int:
        return self.angle.shape[0]

    def rows(self, start: int, stop: int) -> AugmentParams:
        """The parameters of images ``start..stop-1`` of the batch: [stop - start] each."""
        return AugmentParams(**{f.name: getattr(self, f.name)[start:stop] for f in fields(self)})


def augment_params(batch: int, generator: torch.Generator | None = None, max_rotation_deg: float = 10.0,
                   max_scale: float = 0.1, max_shift: float = 0.05, flip_probability: float = 0.5,
                   max_brightness: float = 0.1, max_contrast: float = 0.2,
                   max_aspect: float = 0.0, max_gamma: float = 0.0) -> AugmentParams:
    """Draw the parameters of one view of each of ``batch`` images from the CPU ``generator``.

    The draws are made on the CPU so that a seed gives the same views on every device.
    ``aspect`` and ``gamma`` are drawn last, and only when their range is not 0, so that
    the defaults leave every other draw as before.

    Raises:
        ValueError: a range that is not a finite number inside :data:`AUGMENT_LIMITS`
            (the parameter and the value named, :func:`check_augment_range`).
    """
    ranges = {"max_rotation_deg": max_rotation_deg, "max_scale": max_scale, "max_shift": max_shift,
              "flip_probability": flip_probability, "max_brightness": max_brightness,
              "max_contrast": max_contrast, "max_aspect": max_aspect, "max_gamma": max_gamma}
    for name, value in ranges.items():
        check_augment_range(name, value)

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(batch, generator=generator) * 2 - 1) * scale

    angle = uniform(math.radians(max_rotation_deg))
    scale = uniform(max_scale)
    flip = torch.rand(batch, generator=generator) < flip_probability
    shift_x = uniform(max_shift)
    shift_y = uniform(max_shift)
    contrast = uniform(max_contrast)
    brightness = uniform(max_brightness)
    aspect = uniform(max_aspect) if max_aspect > 0 else torch.zeros(batch)
    gamma = uniform(max_gamma) if max_gamma > 0 else torch.zeros(batch)
    return AugmentParams(angle, scale, flip, shift_x, shift_y, contrast, brightness, aspect, gamma)


def apply_augment(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Warp and jitter ``x`` [B, C, H, W] in [0, 1] with ``params`` (B rows) -> [B, C, H, W] in [0, 1].

    Raises:
        ValueError: ``params`` has not one row per image.
    """
    batch = x.shape[0]
    if len(params) != batch:
        raise ValueError(f"augmentation parameters for {len(params)} images, the batch has {batch}")
    angle = params.angle.to(x.device)
    scale = 1.0 + params.scale.to(x.device)
    sign = torch.where(params.flip.to(x.device), -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output to input coordinates: diag(1 / stretch, stretch) @ rotation @ flip / scale. The image is
    # thus stretched along its own x / y axes (width / height magnification ratio exp(aspect)) before it is
    # rotated and flipped; after a rotation the stretch no longer lies along the output's axes.
    stretch = torch.exp(params.aspect.to(x.device) / 2)
    theta = torch.stack([
        torch.stack([cos * sign / stretch, -sin / stretch, params.shift_x.to(x.device)], dim=1),
        torch.stack([sin * sign * stretch, cos * stretch, params.shift_y.to(x.device)], dim=1),
    ], dim=1).to(x.dtype)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1.0 + params.contrast.to(x.device)).view(batch, 1, 1, 1).to(x.dtype)
    brightness = params.brightness.to(x.device).view(batch, 1, 1, 1).to(x.dtype)
    if bool(params.gamma.any()):
        exponent = torch.exp(params.gamma.to(x.device)).view(batch, 1, 1, 1).to(x.dtype)
        # x ** e is 0 at x = 0 for every e > 0, but its gradient e * x ** (e - 1) is inf there when e < 1
        # (NaN after the mask): the clamp keeps gradients finite, the mask keeps the zero padding exactly 0.
        warped = warped.clamp_min(1e-6).pow(exponent) * (warped > 0)
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    return ((warped - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, **ranges: float) -> torch.Tensor:
    """One random view of each image: [B, C, H, W] in [0, 1] -> [B, C, H, W] in [0, 1].

    ``generator`` is a CPU generator (random draws are made on the CPU so that a
    seed gives the same views on every device). ``ranges``: the keyword ranges of
    :func:`augment_params` (``max_rotation_deg``, ``max_scale``, ``max_shift``,
    ``flip_probability``, ``max_brightness``, ``max_contrast``, ``max_aspect`` (the
    width/height stretch, log-ratio), ``max_gamma`` (the tone curve ``x ** exp(g)``)),
    each inside :data:`AUGMENT_LIMITS`.

    Raises:
        ValueError: a range outside its limits (named, :func:`check_augment_range`).
        TypeError: an unknown keyword.
    """
    return apply_augment(x, augment_params(x.shape[0], generator, **ranges))
