"""Augmented views for L_ss (Eq. 1), computed on the batch's own device.

A view is a small random affine warp (rotation, scale, shift), an optional
horizontal flip and a brightness/contrast jitter: the nuisances an X-ray
acquisition varies, none of which makes a normal image abnormal.

Drawing and applying are separate (:func:`augment_params`, :func:`apply_augment`)
so that data-parallel training can draw the parameters of the whole global
batch on every rank and apply each rank's rows to its own images: the views
are then those of the single-process run. :func:`augment_batch` does both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


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
    """

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
    stretch = torch.exp(params.aspect.to(x.device) / 2)  # output width / height scale ratio = exp(aspect)
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
        warped = warped.clamp_min(1e-6).pow(exponent) * (warped > 0)  # the zero padding stays 0
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    return ((warped - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, **ranges: float) -> torch.Tensor:
    """One random view of each image: [B, C, H, W] in [0, 1] -> [B, C, H, W] in [0, 1].

    ``generator`` is a CPU generator (random draws are made on the CPU so that a
    seed gives the same views on every device). ``ranges``: the keyword ranges of
    :func:`augment_params` (``max_rotation_deg``, ``max_scale``, ``max_shift``,
    ``flip_probability``, ``max_brightness``, ``max_contrast``).
    """
    return apply_augment(x, augment_params(x.shape[0], generator, **ranges))
