"""Deep SVDD, one-class (Fig. 5; Ruff et al., "Deep One-Class Classification", ICML 2018).

A network phi maps the training images into a hypersphere of minimum volume
around a fixed centre c (the paper's one-class objective, Eq. 4):

    min_W  1/n sum_i ||phi(x_i; W) - c||^2  +  lambda/2 sum_l ||W_l||^2,

the weight decay term being Adam's ``weight_decay``. The anomaly score is
||phi(x) - c||^2 (Eq. 5), higher = more abnormal. It is unsupervised: it trains
on every training image and never reads a label.

As in the paper (Sec. 3.3, the trivial solutions) and its code:

- phi is bias-free (no bias term, BatchNorm without affine parameters): with a
  bias, the constant map phi = c is a trivial solution of the objective. Here
  phi is SALAD's encoder for ``cfg.arch`` (:mod:`salad_lite.models`) made
  bias-free by :func:`strip_biases`; its output is the projection to
  ``latent_dim``, not L2-normalised.
- phi is first pre-trained as the encoder of an autoencoder (MSE) whose decoder
  is SALAD's decoder, made bias-free too: ``cfg.pretrain_epochs`` of the
  ``epochs`` (default a third; they are never validated nor selected).
- c is the mean of the pre-trained phi on the training images (eval mode),
  with every coordinate |c_j| < 0.1 pushed to +-0.1 (Ruff's code:
  a coordinate near zero can be matched trivially by zero weights).

phi keeps SALAD's BatchNorm (Ruff's networks have BatchNorm too), so the
centre and the scores use its running statistics (eval mode) while training
uses batch statistics. The running statistics lag a fast-moving network: on a
tiny budget (a few 8-batch epochs) the eval-mode scores can rank the anomalies
lowest while the train-mode distances separate them; validation selection
sees the eval-mode scores.

The pre-training optimiser (encoder + decoder) and the SVDD one (encoder only)
are two Adam optimisers, ``self.optimizers["pretrain"]`` and ``["svdd"]``;
both and c are checkpointed, so a run resumes at any epoch. The history holds
``ae_mse`` for a pre-training epoch, ``loss`` (the objective) and ``val_auc`` for
an SVDD one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from salad_lite.data.batches import gather_images
from salad_lite.methods.base import BaselineConfig, DeepBaseline, check_fields
from salad_lite.methods.deep_ae import autoencoder_for, per_image_mse

__all__ = ["CENTRE_EPS", "DeepSVDD", "DeepSVDDConfig", "hypersphere_centre", "squared_distances", "strip_biases"]

CENTRE_EPS = 0.1  # Ruff's init_center_c: |c_j| < eps -> +-eps


@dataclasses.dataclass(frozen=True)
class DeepSVDDConfig(BaselineConfig):
    """The shared schedule (:class:`BaselineConfig`) plus the share of ``epochs`` spent pre-training the autoencoder.

    ``pretrain_fraction`` in [0, 1]: :attr:`pretrain_epochs` = round(epochs x fraction),
    capped so that at least one SVDD epoch remains (default: a third, e.g. 5 of 15).
    A fraction rather than a count, because :func:`salad_lite.methods.baseline_config`
    sets ``epochs`` to SALAD's whole budget.

    Raises:
        ValueError: a field out of range (named ``<Config>.<field>``).
    """

    pretrain_fraction: float = 1 / 3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {"pretrain_fraction": (0.0, 1.0)})

    @property
    def pretrain_epochs(self) -> int:
        """Autoencoder epochs before the SVDD ones (0 <= it < ``epochs``)."""
        return min(self.epochs - 1, round(self.epochs * self.pretrain_fraction))


def strip_biases(module: nn.Module) -> nn.Module:
    """Make ``module`` bias-free, in place: no bias in any Conv/Linear, BatchNorm without affine parameters.

    The remaining weights keep their initialisation. Returns ``module``.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            layer.register_parameter("bias", None)
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            layer.affine = False
            layer.register_parameter("weight", None)
            layer.register_parameter("bias", None)
    return module


def squared_distances(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """||phi(x_i) - c||^2 [B] of features [B, d] to the centre [d] (Ruff 2018, Eq. 5)."""
    return (features.float() - centre).pow(2).sum(dim=1)


def hypersphere_centre(features: torch.Tensor, eps: float = CENTRE_EPS) -> torch.Tensor:
    """The centre c [d]: the mean of ``features`` [N, d], each |c_j| < ``eps`` set to -eps if c_j < 0 else +eps.

    (Ruff's code leaves an exact 0 at 0; here it becomes +eps.)

    Raises:
        ValueError: ``features`` is not [N, d] with N >= 1.
    """
    if features.ndim != 2 or len(features) == 0:
        raise ValueError(f"the centre needs features [N >= 1, d], got {list(features.shape)}")
    c = features.float().mean(dim=0)
    return torch.where(c.abs() < eps, torch.where(c < 0, -eps, eps), c)


class DeepSVDD(DeepBaseline):
    """One-class Deep SVDD (the Deep SVDD bar of Fig. 5); networks ``encoder`` (phi) and ``decoder``."""

    name = "Deep SVDD"
    method_id = "deep_svdd"
    config_class = DeepSVDDConfig

    def build(self) -> None:
        autoencoder = strip_biases(autoencoder_for(self.cfg))
        self.networks["encoder"], self.networks["decoder"] = autoencoder.encoder, autoencoder.decoder
        encoder_and_decoder = [*autoencoder.encoder.parameters(), *autoencoder.decoder.parameters()]
        self.optimizers["pretrain"] = torch.optim.Adam(encoder_and_decoder, lr=self.cfg.lr,
                                                       weight_decay=self.cfg.weight_decay)
        self.optimizers["svdd"] = torch.optim.Adam(autoencoder.encoder.parameters(), lr=self.cfg.lr,
                                                   weight_decay=self.cfg.weight_decay)
        self.centre = torch.zeros(self.cfg.latent_dim, device=self.device)  # set after pre-training

    def centre_indices(self, train_set: Any) -> np.ndarray:
        """Positions of the training images whose mean phi is the centre: all of them."""
        return np.arange(len(train_set))

    def objective(self, distances: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch loss from the squared distances [B]: their mean (labels ``y`` ignored)."""
        return distances.mean()

    def begin_epoch(self, epoch: int, train_set: Any) -> None:
        """Before the first SVDD epoch: c from the pre-trained encoder (eval mode) on :meth:`centre_indices`."""
        if epoch != self.cfg.pretrain_epochs:
            return
        encoder = self.networks["encoder"].eval()
        indices, step = self.centre_indices(train_set), 256
        with torch.no_grad():
            features = [encoder(gather_images(train_set, indices[i:i + step]).to(self.device))
                        for i in range(0, len(indices), step)]
        self.centre = hypersphere_centre(torch.cat(features))

    def selectable(self, epoch: int) -> bool:
        return epoch >= self.cfg.pretrain_epochs

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"centre": self.centre}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.centre = tensors["centre"]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        features = self.networks["encoder"](x)
        if self.epoch < self.cfg.pretrain_epochs:
            key, optimizer = "ae_mse", self.optimizers["pretrain"]
            loss = per_image_mse(x, self.networks["decoder"](features)).mean()
        else:
            key, optimizer = "loss", self.optimizers["svdd"]
            loss = self.objective(squared_distances(features, self.centre), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {key: loss.item()}

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return squared_distances(self.networks["encoder"](x), self.centre)
