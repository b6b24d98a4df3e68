"""The views of Eq. 1: ranges from the config, the stretch and the tone curve, and the draws the defaults keep."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from salad_lite.augment import AUGMENT_LIMITS, AugmentParams, apply_augment, augment_batch, augment_params
from salad_lite.config import AugmentConfig, ConfigError, profile_config
from salad_lite.trainer import SaladTrainer


def _identity(batch: int, **changes: torch.Tensor) -> AugmentParams:
    zeros = torch.zeros(batch)
    fields = {f.name: zeros for f in dataclasses.fields(AugmentParams)}
    fields["flip"] = torch.zeros(batch, dtype=torch.bool)
    return AugmentParams(**{**fields, **changes})


def test_zero_ranges_of_the_new_views_leave_every_earlier_draw_unchanged() -> None:
    old = augment_params(8, torch.Generator().manual_seed(3))
    new = augment_params(8, torch.Generator().manual_seed(3), max_aspect=0.0, max_gamma=0.0)
    for f in dataclasses.fields(AugmentParams):
        assert torch.equal(getattr(old, f.name), getattr(new, f.name)), f.name
    drawn = augment_params(8, torch.Generator().manual_seed(3), max_aspect=0.2, max_gamma=0.3)
    assert torch.equal(drawn.angle, old.angle) and torch.equal(drawn.brightness, old.brightness)
    assert drawn.aspect.abs().max() <= 0.2 and drawn.aspect.abs().max() > 0
    assert drawn.gamma.abs().max() <= 0.3 and drawn.gamma.abs().max() > 0


def test_identity_parameters_return_the_image() -> None:
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(apply_augment(x, _identity(2)), x, atol=1e-5)


def test_aspect_stretches_width_against_height() -> None:
    x = torch.zeros(1, 1, 64, 64)
    x[..., 24:40, 24:40] = 1.0  # a 16 x 16 square
    aspect = torch.tensor([0.5])  # width / height = e^0.5
    out = apply_augment(x, _identity(1, aspect=aspect))[0, 0] > 0.5
    width, height = int(out.any(0).sum()), int(out.any(1).sum())
    assert width > 16 * 1.2 and height < 16 * 0.85
    assert width / height == pytest.approx(float(torch.exp(aspect)), rel=0.15)


def test_gamma_is_the_tone_curve_x_to_the_exp_g() -> None:
    x = torch.full((1, 1, 8, 8), 0.25)
    x[..., :4] = 0.64  # two tones, so that the mean-preserving jitter has something to keep
    out = apply_augment(x, _identity(1, gamma=torch.tensor([0.5])))
    exponent = torch.exp(torch.tensor(0.5))
    expected = torch.where(x > 0.5, 0.64 ** exponent, 0.25 ** exponent)
    assert torch.allclose(out, expected, atol=1e-5)


def test_config_ranges_are_checked_by_name() -> None:
    with pytest.raises(ConfigError, match="augment.max_aspect"):
        AugmentConfig(max_aspect=-0.1)
    with pytest.raises(ConfigError, match="augment.flip_probability"):
        AugmentConfig(flip_probability=1.5)
    with pytest.raises(ConfigError, match="augment.max_scale"):
        AugmentConfig(max_scale=1.0)
    cfg = profile_config("smoke").replace(augment={"max_gamma": 0.2})
    assert type(cfg).from_json(cfg.to_json()).augment.max_gamma == 0.2
    old = cfg.to_dict()
    del old["augment"]  # a run stored before the section existed loads with the earlier views
    assert type(cfg).from_dict(old).augment == AugmentConfig()


@pytest.mark.parametrize("name, value, expected", [
    ("max_aspect", -0.2, r"in \[0.0, 1.0\]"),  # a negative range silently gave zeros
    ("max_gamma", -0.1, r"in \[0.0, 1.0\]"),
    ("max_scale", 5.0, r"in \[0.0, 1.0\)"),  # 1 + s < 0 inverts the warp
    ("max_scale", 1.0, r"in \[0.0, 1.0\)"),
    ("max_rotation_deg", -10.0, r"in \[0.0, 180.0\]"),
    ("max_contrast", float("nan"), r"in \[0.0, 1.0\)"),
    ("max_shift", float("inf"), r"in \[0.0, 1.0\]"),
    ("flip_probability", 1.5, r"in \[0.0, 1.0\]"),
    ("max_brightness", True, r"a number in \[0.0, 1.0\]"),
    ("max_gamma", "0.2", r"a number in \[0.0, 1.0\]"),
])
def test_a_range_outside_its_limits_is_refused_naming_it(name: str, value: object, expected: str) -> None:
    message = rf"^{name} must be {expected}, got {re.escape(repr(value))}$"
    with pytest.raises(ValueError, match=message):
        augment_params(4, torch.Generator().manual_seed(0), **{name: value})
    with pytest.raises(ValueError, match=message):
        augment_batch(torch.rand(2, 1, 8, 8), torch.Generator().manual_seed(0), **{name: value})
    with pytest.raises(ConfigError, match=rf"augment\.{name} must be"):  # the config applies the same limits
        AugmentConfig(**{name: value})


def test_config_and_augment_share_the_limits() -> None:
    for name, (low, high, low_open, high_open) in AUGMENT_LIMITS.items():
        edge = AugmentConfig(**{name: high}) if not high_open else None
        assert edge is None or getattr(edge, name) == high
        if high_open:
            with pytest.raises(ConfigError, match=rf"augment\.{name}"):
                AugmentConfig(**{name: high})
            with pytest.raises(ValueError, match=rf"^{name} must be"):
                augment_params(2, **{name: high})
        else:
            augment_params(2, **{name: high})
        assert not low_open and AugmentConfig(**{name: low}) is not None
    assert set(AUGMENT_LIMITS) == {f.name for f in dataclasses.fields(AugmentConfig)}


def test_the_tone_curve_keeps_the_padding_at_zero_and_gradients_finite() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 0.5
    x.requires_grad_(True)
    shifted = _identity(1, gamma=torch.tensor([-0.7]), shift_x=torch.tensor([0.5]))  # exponent < 1, padding
    out = apply_augment(x, shifted)
    assert float(out.detach()[0, 0, :, -3:].abs().max()) == 0.0  # the zero padding of the shift stays exactly 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_the_trainer_draws_its_views_in_the_configured_ranges(blob_splits: dict) -> None:
    cfg = profile_config("smoke").replace(augment={"max_rotation_deg": 0.0, "max_aspect": 0.3, "max_gamma": 0.4})
    trainer = SaladTrainer(cfg, blob_splits["train"], blob_splits["val"], device="cpu")
    params = trainer._view_params(64, torch.Generator().manual_seed(0))
    assert float(params.angle.abs().max()) == 0.0
    assert 0 < float(params.aspect.abs().max()) <= 0.3
    assert 0 < float(params.gamma.abs().max()) <= 0.4
