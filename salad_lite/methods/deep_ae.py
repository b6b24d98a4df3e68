"""Deep AE (Fig. 5): the reconstruction error of a plain autoencoder trained on its own.

The network is SALAD's autoencoder family (:func:`salad_lite.models.build_model`:
the paper's 6+6-layer conv AE for NIH, the ResNet-18 AE for MURA), trained with
the mean squared error alone, on every training image (it never sees a label).
Unlike the "same AE, reconstruction error" row of chapters 6-7, it is not
SALAD's decoder: no latent loss shapes it. Score: the per-image mean squared
error, higher = more abnormal.
"""

from __future__ import annotations

import dataclasses

import torch

from salad_lite.config import ModelConfig
from salad_lite.methods.base import BaselineConfig, DeepBaseline
from salad_lite.models import build_model

__all__ = ["DeepAE", "DeepAEConfig", "autoencoder_for"]


@dataclasses.dataclass(frozen=True)
class DeepAEConfig(BaselineConfig):
    """Deep AE has no hyperparameter beyond the shared schedule (:class:`BaselineConfig`)."""


def autoencoder_for(cfg: BaselineConfig) -> torch.nn.Module:
    """SALAD's autoencoder (``encode`` -> [B, d] unit vectors, ``forward`` -> (z, x_hat)) sized by ``cfg``."""
    return build_model(ModelConfig(arch=cfg.arch, image_size=cfg.image_size, width=cfg.width,
                                   latent_dim=cfg.latent_dim))


def per_image_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image [B] of ``x``, ``x_hat`` [B, 1, S, S]."""
    return (x_hat.float() - x.float()).pow(2).flatten(1).mean(dim=1)


class DeepAE(DeepBaseline):
    """Reconstruction-error anomaly detector (the Deep AE bar of Fig. 5)."""

    name = "Deep AE"
    method_id = "deep_ae"
    config_class = DeepAEConfig

    def build(self) -> None:
        self.networks["autoencoder"] = autoencoder_for(self.cfg)
        self.optimizers["adam"] = torch.optim.Adam(self.networks["autoencoder"].parameters(), lr=self.cfg.lr,
                                                   weight_decay=self.cfg.weight_decay)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        _, x_hat = self.networks["autoencoder"](x)
        loss = per_image_mse(x, x_hat).mean()
        self.optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["adam"].step()
        return {"loss": loss.item()}

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        _, x_hat = self.networks["autoencoder"](x)
        return per_image_mse(x, x_hat)
