"""Supervised ResNet-18 (Fig. 5): a binary classifier trained on the training split's labels.

The upper reference of the figure: it sees what the unsupervised methods do not,
the labels of the training split, whose abnormal images (the anomaly ratio AR
of the grid) are its positives. The network is torchvision's ResNet-18
(``resnet18(weights=None, num_classes=1)``, random init) with a 1-channel stem,
whatever ``arch`` says (``width`` and ``latent_dim`` are not used either).

Objective: binary cross-entropy on the logit (``BCEWithLogitsLoss``) with the
positives weighted by ``pos_weight = n_negative / n_positive`` of the training
split, so that both classes weigh the same in the loss (AR 5: 19 normals per
abnormal image, each abnormal image counts 19 times). Score: the logit, higher
= more abnormal. No augmentation.

BatchNorm: after the last step of every epoch the running statistics are
recomputed on the training set with the epoch's final weights
(:func:`recalibrate_batch_norm`, torch's ``swa_utils.update_bn``). With few
steps per epoch, weights that move fast and batches of 5 % positives, the
running averages (momentum 0.1) lag the weights so much that the eval-mode
network can rank the classes upside down (measured: validation AUC 0.06 after
two epochs on the planted set, 1.0 once recalibrated).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn
from torchvision.models import resnet18

from salad_lite.data.batches import dataset_labels, gather_images
from salad_lite.methods.base import BaselineConfig, DeepBaseline
from salad_lite.trainer import epoch_batches

__all__ = ["SupervisedConfig", "SupervisedResNet18", "positive_weight", "recalibrate_batch_norm", "resnet18_classifier",
           "supervised_loss"]


def resnet18_classifier(num_outputs: int, in_channels: int = 1) -> nn.Module:
    """torchvision's ResNet-18 (random init) with an ``in_channels`` stem: [B, C, S, S] -> logits [B, num_outputs].

    The stem conv is replaced (and Kaiming-initialised, as torchvision does) like the
    encoder of :class:`salad_lite.models.ResNetAutoencoder`; it runs from 32 px up.
    """
    network = resnet18(weights=None, num_classes=num_outputs)
    network.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(network.conv1.weight, mode="fan_out", nonlinearity="relu")
    return network


def positive_weight(labels: np.ndarray, name: str = "the supervised classifier") -> float:
    """``n_negative / n_positive`` of training labels [N] (0 = normal, 1 = abnormal), BCE's ``pos_weight``.

    Raises:
        ValueError: the labels hold no abnormal image (supervision needs positives) or no
            normal one; the message names ``name`` and the counts.
    """
    labels = np.asarray(labels)
    positives = int((labels == 1).sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        missing = "abnormal (positive)" if positives == 0 else "normal (negative)"
        raise ValueError(f"{name} needs {missing} training images: the training split holds {positives} abnormal "
                         f"and {negatives} normal image(s); supervision needs both classes "
                         "(an anomaly ratio of 0 leaves it without positives)")
    return negatives / positives


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Class-weighted binary cross-entropy, mean over the batch (a scalar).

    ``-mean_i [w y_i log sigmoid(l_i) + (1 - y_i) log(1 - sigmoid(l_i))]`` with ``w = pos_weight``,
    for logits ``l`` [B] and labels ``y`` [B] (0/1), as ``torch.nn.BCEWithLogitsLoss(pos_weight=w)``.
    """
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)


def recalibrate_batch_norm(network: nn.Module, dataset: Any, batch_size: int, device: torch.device) -> None:
    """Recompute the running statistics of every BatchNorm of ``network`` on ``dataset`` with its current weights.

    Train-mode forward passes without gradient over ``dataset`` in batches of ``batch_size``
    (a fixed shuffled order, a last batch of one joined to the previous one), each batch
    weighing the same (``torch.optim.swa_utils.update_bn``); the network's mode is restored.
    """
    batches = epoch_batches(len(dataset), batch_size, torch.Generator().manual_seed(0))
    update_bn((gather_images(dataset, batch) for batch in batches), network, device=device)


@dataclasses.dataclass(frozen=True)
class SupervisedConfig(BaselineConfig):
    """The supervised classifier has no hyperparameter beyond the shared schedule (:class:`BaselineConfig`)."""


class SupervisedResNet18(DeepBaseline):
    """ResNet-18 trained on the training labels with class-weighted BCE; score = the logit."""

    name = "Supervised ResNet-18"
    method_id = "supervised"
    config_class = SupervisedConfig
    uses_labels = True
    pos_weight: float = 1.0  # n_negative / n_positive of the training split, set by fit

    def build(self) -> None:
        self.networks["classifier"] = resnet18_classifier(1)
        self.optimizers["adam"] = torch.optim.Adam(self.networks["classifier"].parameters(), lr=self.cfg.lr,
                                                   weight_decay=self.cfg.weight_decay)

    def fit(self, train_set: Any, val_set: Any, folder: str | Path | None = None,
            data_fingerprint: str = "") -> "SupervisedResNet18":
        """:meth:`DeepBaseline.fit` with ``pos_weight`` taken from ``train_set``'s labels.

        Raises:
            ValueError: the training split holds no abnormal image (e.g. anomaly ratio 0) or no
                normal one; and everything :meth:`DeepBaseline.fit` raises.
        """
        self.pos_weight = positive_weight(dataset_labels(train_set), self.name)
        return super().fit(train_set, val_set, folder, data_fingerprint=data_fingerprint)

    def end_epoch(self, epoch: int, train_set: Any) -> None:
        """Recalibrate BatchNorm's running statistics on the training set (see the module docstring)."""
        recalibrate_batch_norm(self.networks["classifier"], train_set, self.cfg.batch_size, self.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        classifier = self.networks["classifier"]
        loss = supervised_loss(classifier(x).squeeze(1), y, self.pos_weight)
        self.optimizers["adam"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["adam"].step()
        return {"loss": loss.item()}

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.networks["classifier"](x).squeeze(1)
