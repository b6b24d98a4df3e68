"""A raw-pixel reference for the evaluation chapters: PCA reconstruction error.

No network and no gradient descent: each image is area-downsampled to at most
``max_size`` pixels a side, centred and scaled to unit L2 norm (so exposure does
not count), and scored by the squared distance to its projection on the top
principal components of the normal training images. Where SALAD does not beat
this, its latent says no more about abnormality than a linear model of the pixels.
PyOD convention: higher scores mean more abnormal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salad_lite.metrics import auc, auprc
from salad_lite.data.batches import check_splits, dataset_labels, image_batches

DEFAULT_COMPONENT_GRID = (10, 50, 100)


def pixel_vectors(dataset: Any, max_size: int = 64, batch_size: int = 512) -> torch.Tensor:
    """Every image of ``dataset`` as a centred unit vector [N, s*s], s = min(image size, ``max_size``).

    A constant image (zero after centring) stays a zero row.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    rows = []
    for x in image_batches(dataset, batch_size):  # [B, 1, S, S]
        if x.shape[-1] > max_size:
            x = F.adaptive_avg_pool2d(x, max_size)  # [B, 1, s, s]
        v = x.flatten(1)  # [B, s*s]
        rows.append(F.normalize(v - v.mean(dim=1, keepdim=True), dim=1))
    return torch.cat(rows)


class PCAReconstruction:
    """Squared residual of the projection onto ``n_components`` principal directions of the training images.

    Raises:
        ValueError: ``n_components`` < 1.
    """

    def __init__(self, n_components: int = 50) -> None:
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_components = n_components

    def fit(self, x: torch.Tensor) -> "PCAReconstruction":
        """``x`` [N, P] training vectors (normal images). Keeps ``mean_`` [P] and ``components_`` [P, q].

        q = min(``n_components``, N - 1, P).

        Raises:
            ValueError: fewer than 2 training vectors.
        """
        if x.shape[0] < 2:
            raise ValueError(f"PCA needs at least 2 training images, got {x.shape[0]}")
        q = min(self.n_components, x.shape[0] - 1, x.shape[1])
        self.mean_ = x.mean(dim=0)  # [P]
        _, _, vh = torch.linalg.svd(x - self.mean_, full_matrices=False)  # vh: [min(N, P), P]
        self.components_ = vh[:q].T.contiguous()  # [P, q]
        return self

    def decision_function(self, x: torch.Tensor) -> np.ndarray:
        """Squared residual norm [M] of ``x`` [M, P] (unit vectors: 0 = in the span, up to 1 + |mean|^2).

        Raises:
            AttributeError: called before :meth:`fit`.
            RuntimeError: ``x`` has another width P than the training vectors (from torch).
        """
        centred = x - self.mean_  # [M, P]
        residual = centred - (centred @ self.components_) @ self.components_.T  # [M, P]
        return residual.pow(2).sum(dim=1).double().numpy()


def pca_baseline(splits: dict[str, Any], component_grid: Sequence[int] = DEFAULT_COMPONENT_GRID,
                 max_size: int = 64) -> dict[str, Any]:
    """Fit on the normal training images, choose the component count on validation, score the test split once.

    Returns ``{"n_components", "val_auc", "grid": [{"n_components", "val_auc"}], "test_auc", "test_auprc",
    "test_scores"}``; ``test_scores`` is the list of the M test images' squared residuals (floats, test
    order, higher = more abnormal), for results per finding (:func:`salad_lite.report.per_finding_auc`).

    Raises:
        salad_lite.data.splits.PatientLeakError: a patient is in two splits
            (checked first, with the pixels, by :func:`salad_lite.data.batches.check_splits`).
        salad_lite.data.batches.NonFiniteImageError: an image holds NaN/inf pixels.
        KeyError: ``splits`` lacks train, val or test.
        ValueError: no normal training image, or a split lacks a class (from :func:`salad_lite.metrics.auc`).
    """
    check_splits(splits, required=("train", "val", "test"), both_classes=("val", "test"))
    train_labels = dataset_labels(splits["train"])
    train = pixel_vectors(splits["train"], max_size)[torch.from_numpy(train_labels == 0)]  # [N0, P]
    val, val_labels = pixel_vectors(splits["val"], max_size), dataset_labels(splits["val"])
    grid = [{"n_components": n, "val_auc": auc(val_labels, PCAReconstruction(n).fit(train).decision_function(val))}
            for n in component_grid]
    best = max(grid, key=lambda row: (row["val_auc"], -row["n_components"]))
    test_labels = dataset_labels(splits["test"])
    model = PCAReconstruction(best["n_components"]).fit(train)
    scores = model.decision_function(pixel_vectors(splits["test"], max_size))
    return {"n_components": best["n_components"], "val_auc": best["val_auc"], "grid": grid,
            "test_auc": auc(test_labels, scores), "test_auprc": auprc(test_labels, scores),
            "test_scores": [float(v) for v in scores]}
