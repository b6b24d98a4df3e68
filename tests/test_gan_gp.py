"""GAN-GP (salad_lite.methods.gan_gp): the gradient penalty against closed forms, the critic, learning, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from salad_lite.methods.gan_gp import GANGP, GANGPConfig, critic_for, gradient_penalty
from salad_lite.metrics import auc

SMALL = dict(image_size=32, width=8, latent_dim=16, batch_size=32, lr=1e-3, progress=False)


class HalfSquaredNorm(nn.Module):
    """D(x) = ||x||^2 / 2 per sample: its gradient at x is x itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.flatten(1).pow(2).sum(dim=1)


def test_the_penalty_of_a_linear_critic_is_its_weight_norm_minus_one_squared() -> None:
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real, fake = torch.rand(5, 1, 3, 4), torch.rand(5, 1, 3, 4)
    expected = (critic[1].weight.norm() - 1) ** 2  # grad_x (w.x + b) = w wherever x lies
    penalty = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0))
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    penalty.backward()  # the penalty trains the critic: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    w = critic[1].weight.detach()
    assert torch.allclose(critic[1].weight.grad, 2 * (w.norm() - 1) * w / w.norm(), atol=1e-6)


def test_the_penalty_interpolates_with_one_uniform_draw_per_image() -> None:
    real, fake = torch.rand(4, 1, 2, 2), torch.rand(4, 1, 2, 2)
    eps = torch.rand(4, generator=torch.Generator().manual_seed(3))
    mixed = [eps[i] * real[i] + (1 - eps[i]) * fake[i] for i in range(4)]
    expected = sum((float(m.norm()) - 1) ** 2 for m in mixed) / 4
    penalty = gradient_penalty(HalfSquaredNorm(), real, fake, torch.Generator().manual_seed(3))
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        gradient_penalty(HalfSquaredNorm(), real, fake[:3], torch.Generator())


def test_the_critic_has_no_batch_normalisation_and_scores_each_image() -> None:
    critic = critic_for(GANGPConfig(**SMALL))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in critic.modules())
    x = torch.rand(3, 1, 32, 32)
    assert critic(x).shape == (3,)
    assert torch.allclose(critic(x[:1]), critic(x)[:1], atol=1e-6)  # no image depends on the batch
    with pytest.raises(ValueError, match="GANGPConfig.n_critic"):
        GANGPConfig(n_critic=0)


def test_gan_gp_learns_the_planted_anomaly(planted_splits) -> None:
    model = GANGP(GANGPConfig(epochs=3, **SMALL), device="cpu").fit(planted_splits["train"], planted_splits["val"])
    test = planted_splits["test"]
    assert auc(test.labels, model.decision_function(test)) >= 0.85
    assert model.history[-1]["reconstruction"] < model.history[0]["reconstruction"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(planted_splits, tmp_path, monkeypatch) -> None:
    train, val = planted_splits["train"], planted_splits["val"]
    cfg = GANGPConfig(epochs=3, n_critic=2, **SMALL)
    whole = GANGP(cfg, device="cpu").fit(train, val, tmp_path / "whole")
    run_epoch = GANGP._run_epoch

    def killed_at_epoch_one(self, *args):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(self, *args)

    monkeypatch.setattr(GANGP, "_run_epoch", killed_at_epoch_one)
    with pytest.raises(KeyboardInterrupt):
        GANGP(cfg, device="cpu").fit(train, val, tmp_path / "cut")
    monkeypatch.undo()
    resumed = GANGP(cfg, device="cpu").fit(train, val, tmp_path / "cut")
    keys = ["loss", "reconstruction", "critic", "gradient_penalty", "val_auc"]
    assert np.allclose([[h[k] for k in keys] for h in resumed.history], [[h[k] for k in keys] for h in whole.history])
    assert resumed.selected_epoch == whole.selected_epoch
    assert np.allclose(resumed.decision_function(val), whole.decision_function(val), atol=1e-6)
