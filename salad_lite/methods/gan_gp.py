"""GAN-GP (Fig. 5): an adversarial one-class model trained with the Wasserstein gradient-penalty objective.

In the line of Tang et al. (ISBI 2019, "Abnormal chest X-ray identification with
generative adversarial one-class classifier", the paper's OCGAN reference for
chest X-rays): an autoencoder ``G`` (SALAD's, :func:`salad_lite.methods.deep_ae.autoencoder_for`)
reconstructs every training image (labels are ignored) while a critic ``D``
learns to tell real images from reconstructions, which pushes ``G`` towards
reconstructions that look like normal images. Trained as a WGAN-GP (Gulrajani
et al., NeurIPS 2017, Algorithm 1):

- critic: ``L_D = mean D(G(x)) - mean D(x) + lambda_gp * mean (||grad D(x_interp)||_2 - 1)^2``,
  ``x_interp = eps x + (1 - eps) G(x)``, ``eps ~ U[0, 1]`` per image (:func:`gradient_penalty`);
- generator: ``L_G = lambda_rec * MSE(x, G(x)) - mean D(G(x))``;
- ``n_critic`` critic steps per generator step, Adam with betas (0.5, 0.9)
  (Gulrajani's ``gan_cifar.py``), both at the shared ``lr``.

Gulrajani draw a new real batch for every critic step; here the ``n_critic``
steps reuse the batch of the shared training loop (the reconstructions computed
once, the interpolation redrawn each step), so that every batch gives one
generator step. ``lambda_gp = 10`` and ``n_critic = 5`` are Gulrajani's defaults.
``lambda_rec`` balances a per-pixel mean error (gradients of order 1/S^2 per
pixel) against a critic whose input gradient has unit norm; the default (1000)
lets the reconstruction dominate the generator's loss, the critic acting as a
regulariser (measured on the planted 32 px set: ~70 against ~3 in the first epoch).

The critic is a small conv net without normalisation (:func:`critic_for`):
batch normalisation would make the penalty's per-image gradient depend on the
batch, which Gulrajani rule out (their Sec. 4).

Score: the reconstruction error alone (per-image mean squared error, as Deep AE),
higher = more abnormal. The critic's ``-D(x)`` is not added: a Wasserstein critic
is defined up to a constant that drifts from epoch to epoch, so no fixed weight
would keep the sum comparable between epochs.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from salad_lite.methods.base import BaselineConfig, DeepBaseline, check_fields
from salad_lite.methods.deep_ae import autoencoder_for, per_image_mse
from salad_lite.models import CONV_MAX_CHANNELS, CONV_MIN_FEATURE_SIDE

__all__ = ["GANGP", "GANGPConfig", "critic_for", "gradient_penalty"]

ADAM_BETAS = (0.5, 0.9)  # Gulrajani et al.'s gan_cifar.py


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """WGAN-GP's penalty ``mean_i (||grad_x D(x)|_{x = x_i}||_2 - 1)^2`` (Gulrajani et al. 2017, Eq. 3), a scalar.

    ``x_i = eps_i real_i + (1 - eps_i) fake_i`` with ``eps = torch.rand(B, generator=generator)``
    (CPU ``generator``, one draw per image). ``critic`` maps [B, ...] to [B] (or [B, 1]); ``real`` and
    ``fake`` [B, ...] alike. The graph is kept (``create_graph=True``) so the penalty trains the critic.

    Raises:
        ValueError: ``real`` and ``fake`` differ in shape.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {list(real.shape)} and fake {list(fake.shape)} differ in shape")
    eps = torch.rand(len(real), generator=generator).to(real.device).view(-1, *[1] * (real.ndim - 1))
    mixed = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def critic_for(cfg: BaselineConfig) -> nn.Module:
    """A conv critic without normalisation: images [B, 1, S, S] -> scores [B].

    4x4 stride-2 convs + LeakyReLU(0.2) halve the side down to 4x4 with channels
    ``w, 2w, 4w, 8w, 8w, ...`` (capped at 512; ``w = cfg.width``), as SALAD's conv encoder,
    then a Linear to one score. Used for either ``arch``.
    """
    layers: list[nn.Module] = []
    channels, side = 1, cfg.image_size
    for i in range((cfg.image_size // CONV_MIN_FEATURE_SIDE).bit_length() - 1):  # log2(S / 4) halvings
        out = min(cfg.width * 2 ** min(i, 3), CONV_MAX_CHANNELS)
        layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels, side = out, side // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, 1), nn.Flatten(0))


@dataclasses.dataclass(frozen=True)
class GANGPConfig(BaselineConfig):
    """:class:`BaselineConfig` plus the WGAN-GP weights: ``lambda_rec`` (reconstruction in the generator
    loss), ``lambda_gp`` (gradient penalty, Gulrajani: 10), ``n_critic`` (critic steps per generator
    step, Gulrajani: 5).

    Raises:
        ValueError: a field out of range (named ``GANGPConfig.<field>``).
    """

    lambda_rec: float = 1000.0
    lambda_gp: float = 10.0
    n_critic: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {"lambda_rec": (0.0, None), "lambda_gp": (0.0, None), "n_critic": (1, None)})


class GANGP(DeepBaseline):
    """Autoencoder + Wasserstein critic with gradient penalty; score = reconstruction error; unsupervised."""

    name = "GAN-GP"
    method_id = "gan_gp"
    config_class = GANGPConfig

    def build(self) -> None:
        self.networks["generator"] = autoencoder_for(self.cfg)
        self.networks["critic"] = critic_for(self.cfg)
        for name, network in self.networks.items():
            self.optimizers[name] = torch.optim.Adam(network.parameters(), lr=self.cfg.lr, betas=ADAM_BETAS,
                                                     weight_decay=self.cfg.weight_decay)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        critic, g_opt, d_opt = self.networks["critic"], self.optimizers["generator"], self.optimizers["critic"]
        _, x_hat = self.networks["generator"](x)
        fake = x_hat.detach()
        critic_terms = []
        for _ in range(self.cfg.n_critic):
            wasserstein = critic(fake).mean() - critic(x).mean()
            penalty = gradient_penalty(critic, x, fake, generator)
            d_opt.zero_grad(set_to_none=True)
            (wasserstein + self.cfg.lambda_gp * penalty).backward()
            d_opt.step()
            critic_terms.append(torch.stack([wasserstein.detach(), penalty.detach()]))
        reconstruction = per_image_mse(x, x_hat).mean()
        g_loss = self.cfg.lambda_rec * reconstruction - critic(x_hat).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()  # the critic's gradients are discarded: its next step zeroes them
        g_opt.step()
        wasserstein, penalty = torch.stack(critic_terms).mean(dim=0).tolist()
        return {"loss": g_loss.item(), "reconstruction": reconstruction.item(),
                "critic": wasserstein + self.cfg.lambda_gp * penalty, "gradient_penalty": penalty}

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        _, x_hat = self.networks["generator"](x)
        return per_image_mse(x, x_hat)
