"""Detection metrics (scikit-learn) and replicate summaries. Label 1 = abnormal, higher score = more abnormal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def binary_labels(labels: np.ndarray, what: str = "AUC", need_both: bool = True) -> np.ndarray:
    """``labels`` [M] as int64 0/1 (0 = normal, 1 = abnormal), checked.

    Args:
        labels: [M] array-like of 0/1 (bool and 0.0/1.0 are accepted).
        what: the quantity that needs them, for the error message.
        need_both: refuse a set with one class only. Anything that compares the
            classes (AUC, a ROC threshold, a choice made on validation) needs both.

    Raises:
        ValueError: a label other than 0/1 (the values are named), or, with
            ``need_both``, only one class present.
    """
    labels = np.asarray(labels).ravel()
    present = set(np.unique(labels).tolist())
    if not present <= {0, 1}:
        raise ValueError(f"{what} needs labels 0 (normal) and 1 (abnormal); got classes {sorted(present, key=str)}")
    if need_both and present != {0, 1}:
        raise ValueError(f"{what} needs both normal (0) and abnormal (1) labels; got classes {sorted(present)}")
    return labels.astype(np.int64)


def finite_scores(values: Any, name: str = "scores") -> np.ndarray:
    """``values`` as a float64 array of the same shape, every value finite: the one check of scores.

    Args:
        values: array-like of numbers (any shape).
        name: names them in the error, e.g. ``"scores of 'PCA'"``.

    Raises:
        ValueError: a value that is not a number, or NaN/inf values (counted).
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers ({error})") from None
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name}: {bad} of {arr.size} value(s) are NaN or inf")
    return arr


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.shape[0]}) and scores ({scores.shape[0]}) differ in length")
    return binary_labels(labels, "AUC"), finite_scores(scores)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve.

    Raises:
        ValueError: labels and scores differ in length; a NaN or inf score; a label
            other than 0/1, or only one class present (see :func:`binary_labels`).
    """
    return float(roc_auc_score(*_check(labels, scores)))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision), abnormal = positive class.

    Raises:
        ValueError: labels and scores differ in length; a NaN or inf score; a label
            other than 0/1, or only one class present (see :func:`binary_labels`).
    """
    return float(average_precision_score(*_check(labels, scores)))


def roc_curve_data(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """ROC curve: ``{"fpr", "tpr", "thresholds"}`` arrays.

    Raises:
        ValueError: labels and scores differ in length; a NaN or inf score; a label
            other than 0/1, or only one class present (see :func:`binary_labels`).
    """
    fpr, tpr, thresholds = roc_curve(*_check(labels, scores))
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def pr_curve_data(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Precision-recall curve: ``{"precision", "recall", "thresholds"}`` arrays.

    Raises:
        ValueError: labels and scores differ in length; a NaN or inf score; a label
            other than 0/1, or only one class present (see :func:`binary_labels`).
    """
    precision, recall, thresholds = precision_recall_curve(*_check(labels, scores))
    return {"precision": precision, "recall": recall, "thresholds": thresholds}


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width ``1.96 * std`` over replicates (sample std, ddof=1).

    The half-width is NaN for a single replicate: one run says nothing about spread.

    Raises:
        ValueError: no values.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_ci needs at least one value")
    half = float(1.96 * arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return float(arr.mean()), half
