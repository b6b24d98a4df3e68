"""Augmented views for L_ss (Eq. 1), computed on the batch's own device.

A view is a small random affine warp (rotation, scale, shift), an optional
horizontal flip and a brightness/contrast jitter: the nuisances an X-ray
acquisition varies, none of which makes a normal image abnormal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, max_rotation_deg: float = 10.0,
                  max_scale: float = 0.1, max_shift: float = 0.05, flip_probability: float = 0.5,
                  max_brightness: float = 0.1, max_contrast: float = 0.2) -> torch.Tensor:
    """One random view of each image: [B, C, H, W] in [0, 1] -> [B, C, H, W] in [0, 1].

    ``generator`` is a CPU generator (random draws are made on the CPU so that a
    seed gives the same views on every device).
    """
    batch = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return ((torch.rand(batch, generator=generator) * 2 - 1) * scale).to(x.device)

    angle = uniform(math.radians(max_rotation_deg))
    scale = 1.0 + uniform(max_scale)
    flip = (torch.rand(batch, generator=generator) < flip_probability).to(x.device)
    sign = torch.where(flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * sign, -sin, uniform(max_shift)], dim=1),
        torch.stack([sin * sign, cos, uniform(max_shift)], dim=1),
    ], dim=1).to(x.dtype)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    contrast = (1.0 + uniform(max_contrast)).view(batch, 1, 1, 1).to(x.dtype)
    brightness = uniform(max_brightness).view(batch, 1, 1, 1).to(x.dtype)
    mean = warped.mean(dim=(1, 2, 3), keepdim=True)
    return ((warped - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
