"""Deep SAD (Fig. 5; Ruff et al., "Deep Semi-Supervised Anomaly Detection", ICLR 2020).

Deep SVDD (:mod:`.deep_svdd`: the same bias-free network, autoencoder
pre-training and centre fix) with a few labelled anomalies pushed away from the
centre. The paper's objective (Sec. 3) with n unlabelled and m labelled samples,

    1/(n+m) [ sum_i ||phi(x_i) - c||^2  +  eta sum_j (||phi(x~_j) - c||^2)^(-1) ]  +  weight decay,

is minimised per batch as in Ruff's code: the mean over the batch of the
per-sample term (:func:`sad_terms`), with eps = 1e-6 added to the inverted
distance. Score: ||phi(x) - c||^2, higher = more abnormal.

How the training labels are read (``uses_labels``): an image labelled 1 is a
labelled anomaly (the abnormal training images of an AR split); an image
labelled 0 is unlabelled, as in Ruff's setting where the unlabelled data are
mostly normal (Deep SAD's labelled normals, y~ = +1, do not occur here). The
autoencoder pre-trains on every training image (as Ruff's code), but the centre
is the mean phi of the unlabelled images only (Ruff's code averages every
training image, labelled anomalies included). Without a labelled anomaly (AR 0)
Deep SAD is Deep SVDD.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from salad_lite.data.batches import dataset_labels
from salad_lite.methods.base import check_fields
from salad_lite.methods.deep_svdd import DeepSVDD, DeepSVDDConfig

__all__ = ["DeepSAD", "DeepSADConfig", "INVERSE_EPS", "sad_terms"]

INVERSE_EPS = 1e-6  # Ruff's DeepSADTrainer.eps


@dataclasses.dataclass(frozen=True)
class DeepSADConfig(DeepSVDDConfig):
    """Deep SVDD's config (:class:`DeepSVDDConfig`) plus ``eta`` > 0, the weight of the labelled anomalies (Ruff: 1).

    Raises:
        ValueError: a field out of range (named ``<Config>.<field>``).
    """

    eta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {"eta": (0.0, None)})
        if self.eta <= 0:
            raise ValueError(f"{type(self).__name__}.eta must be > 0, got {self.eta!r}")


def sad_terms(distances: torch.Tensor, y: torch.Tensor, eta: float, eps: float = INVERSE_EPS) -> torch.Tensor:
    """Per-sample Deep SAD terms [B]: d_i for y_i = 0 (unlabelled), eta / (d_i + eps) for y_i = 1 (labelled anomaly).

    ``distances`` [B] are the squared distances ||phi(x_i) - c||^2, ``y`` [B] the 0/1 labels.
    """
    return torch.where(y == 1, eta / (distances + eps), distances)


class DeepSAD(DeepSVDD):
    """Semi-supervised Deep SAD (the Deep SAD bar of Fig. 5).

    Raises (from :meth:`fit`):
        ValueError: no training image is labelled 0 (the centre needs unlabelled images).
    """

    name = "Deep SAD"
    method_id = "deep_sad"
    config_class = DeepSADConfig
    uses_labels = True

    def centre_indices(self, train_set: Any) -> np.ndarray:
        """Positions of the unlabelled (y = 0) training images."""
        indices = np.flatnonzero(dataset_labels(train_set, "train") == 0)
        if len(indices) == 0:
            raise ValueError(f"{self.name}: the centre needs unlabelled (label 0) training images; none found")
        return indices

    def objective(self, distances: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sad_terms(distances, y, self.cfg.eta).mean()
