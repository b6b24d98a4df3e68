"""How detectable are a set's findings when the labels are given? The validation split, patient-grouped folds.

Issue 9 asks SALAD, which never sees a label, for a test AUC of
0.75 on the embedded chest set and 0.70 on the limbs. This script measures what
the same films allow a method that *does* see labels, so that a missed target can
be read against the data's own ceiling. Not a timing. Only the validation split
is used (never the test split): it is cut into ``--folds`` patient-disjoint
folds (scikit-learn's ``GroupKFold`` on ``patient_id``), and each fold is scored
by models fitted on the others:

- ``logistic``: L2 logistic regression on the pixel vectors the raw-pixel PCA
  sees (:func:`salad_lite.baselines.pixel_vectors`) at ``--image-size`` (64 px,
  the default profile's), C chosen by an inner patient-grouped 3-fold search on
  the fitting folds;
- ``resnet18``: Fig. 5's supervised ResNet-18 (``methods.supervised``) at
  ``--image-size`` with the default profile's epoch budget, trained on the
  fitting folds. ``last`` is its final epoch; ``best`` is its best epoch *on
  the scored fold*, an optimistic upper bound, not a result;
- ``pca``: the unsupervised reference, the evaluation chapters' raw-pixel PCA
  residual (:func:`salad_lite.baselines.pca_baseline`, at most 64 px) fitted on
  the normal training images, its component count chosen on the fitting folds.

    python benchmarks/label_ceiling.py --dataset nih                      # embedded chest
    python benchmarks/label_ceiling.py --dataset mura                     # embedded limbs
    python benchmarks/label_ceiling.py --dataset mura --image-size 128    # the same at 128 px
    python benchmarks/label_ceiling.py --dataset nih --data-root ../shared/data/nih_subset
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold

from salad_lite.baselines import pca_baseline, pixel_vectors
from salad_lite.config import profile_config
from salad_lite.data import subset
from salad_lite.data.batches import dataset_labels
from salad_lite.experiment import splits_for
from salad_lite.methods import build_method
from salad_lite.metrics import auc

LOGISTIC_C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))


def patient_folds(labels: np.ndarray, patients: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_folds`` (fit, scored) index pairs over N images, no patient on both sides of a pair.

    Raises:
        ValueError: a scored fold lacks a class (too few patients of one class for ``n_folds``).
    """
    folds = list(GroupKFold(n_splits=n_folds).split(np.zeros(len(labels)), labels, patients))
    for i, (_, scored) in enumerate(folds):
        if len(np.unique(labels[scored])) < 2:
            raise ValueError(f"fold {i} of {n_folds} holds one class only; use fewer --folds")
    return folds


def logistic_scores(x: np.ndarray, y: np.ndarray, patients: np.ndarray, fit: np.ndarray,
                    scored: np.ndarray) -> np.ndarray:
    """Logistic-regression logits of ``x[scored]`` [M], fitted on ``x[fit]`` [N, P] with C chosen on grouped folds."""
    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": list(LOGISTIC_C_GRID)}, scoring="roc_auc",
                          cv=GroupKFold(n_splits=3))
    search.fit(x[fit], y[fit], groups=patients[fit])
    return search.decision_function(x[scored])


def pca_fold_auc(train: Any, val: Any, fit: np.ndarray, scored: np.ndarray) -> float:
    """Test AUC of the evaluation chapters' raw-pixel PCA (:func:`salad_lite.baselines.pca_baseline`) on ``val[scored]``.

    Its protocol unchanged: fitted on the normal images of ``train``, the component
    count chosen on ``val[fit]``, ``val[scored]`` scored once.
    """
    return pca_baseline({"train": train, "val": subset(val, fit), "test": subset(val, scored)})["test_auc"]


def measure(dataset: str, data_root: str, n_folds: int, image_size: int = 64) -> dict[str, Any]:
    """Per-fold validation AUCs of ``logistic``, ``resnet18_last``, ``resnet18_best`` and ``pca`` (module docstring)."""
    cfg = profile_config("default", dataset, data_root).replace(  # type: ignore[arg-type]
        model={"image_size": image_size})
    splits = splits_for(cfg, progress=False)
    val, train = splits["val"], splits["train"]
    y = np.asarray(dataset_labels(val))
    patients = val.metadata["patient_id"].astype(str).to_numpy()
    x = pixel_vectors(val, cfg.model.image_size).numpy()
    rows: dict[str, list[float]] = {"logistic": [], "resnet18_last": [], "resnet18_best": [], "pca": []}
    for fit, scored in patient_folds(y, patients, n_folds):
        rows["logistic"].append(auc(y[scored], logistic_scores(x, y, patients, fit, scored)))
        rows["pca"].append(pca_fold_auc(train, val, fit, scored))
        network = build_method("supervised", cfg, device="cpu", progress=False)
        network.fit(subset(val, fit), subset(val, scored))
        epochs = [record["val_auc"] for record in network.history if "val_auc" in record]
        rows["resnet18_last"].append(epochs[-1])
        rows["resnet18_best"].append(max(epochs))
    return {"n_images": len(y), "n_abnormal": int(y.sum()), "folds": n_folds, **rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("nih", "mura"), default="nih")
    parser.add_argument("--data-root", default="", help="a real set's root; empty: the embedded set")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64, help="the films' side in px (the default profile's: 64)")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be >= 2, got {args.folds}")
    torch.manual_seed(0)
    try:
        result = measure(args.dataset, args.data_root, args.folds, args.image_size)
    except (ValueError, FileNotFoundError) as error:  # a bad --image-size or --data-root, a fold of one class
        parser.error(str(error))
    name = args.data_root or f"embedded {args.dataset}"
    print(f"{name} at {args.image_size} px: validation split, {result['n_images']} images "
          f"({result['n_abnormal']} abnormal), {result['folds']} patient-grouped folds")
    print("| scorer | labels | AUC per scored fold | mean |\n|---|---|---|---|")
    for key, labels in (("pca", "no"), ("logistic", "yes"), ("resnet18_last", "yes"),
                        ("resnet18_best", "yes (epoch picked on the scored fold: optimistic)")):
        values = result[key]
        print(f"| {key} | {labels} | {' / '.join(f'{v:.3f}' for v in values)} | {np.mean(values):.3f} |")


if __name__ == "__main__":
    main()
