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
        ValueError: ``labels`` is not 1-D [M] (a [M, 1] column is not flattened silently);
            a label other than 0/1 (the values are named), or, with ``need_both``,
            only one class present.
    """
    labels = _one_dimensional(labels, f"{what}: labels")
    present = set(labels.tolist())  # not np.unique: it cannot sort a mix of text and numbers
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
        ValueError: a value that is not a real number (text, complex, a date or duration), or NaN/inf values (counted).
    """
    try:
        raw = np.asarray(values)
    except (TypeError, ValueError) as error:  # ragged lists
        raise ValueError(f"{name} must be numbers ({error})") from None
    if raw.dtype.kind in "cmM":  # complex would lose its imaginary part; dates and durations are no scores
        raise ValueError(f"{name} must be real numbers, got dtype {raw.dtype}")
    try:
        text = raw.dtype.kind in "US" or (raw.dtype.kind == "O" and any(isinstance(v, (str, bytes))
                                                                          for v in raw.ravel()))
        arr = None if text else raw.astype(np.float64)  # float("0.5") would read text silently
    except (TypeError, ValueError) as error:  # ragged lists, objects that are not numbers
        raise ValueError(f"{name} must be numbers ({error})") from None
    if arr is None:
        raise ValueError(f"{name} must be numbers, got text")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name}: {bad} of {arr.size} value(s) are NaN or inf")
    return arr


def _one_dimensional(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels = binary_labels(labels, what)
    scores = finite_scores(_one_dimensional(scores, f"{what}: scores"), f"{what}: scores")
    if labels.shape != scores.shape:
        raise ValueError(f"{what}: labels ({labels.shape[0]}) and scores ({scores.shape[0]}) differ in length")
    return labels, scores


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` [M] for ``labels`` [M].

    Raises:
        ValueError: labels or scores not 1-D, or of different lengths; a NaN or inf score; a
            label other than 0/1, or only one class present (see :func:`binary_labels`).
    """
    return float(roc_auc_score(*_check(labels, scores, "AUC")))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) of [M] scores, abnormal = positive class.

    Raises:
        ValueError: as :func:`auc`.
    """
    return float(average_precision_score(*_check(labels, scores, "AUPRC")))


def roc_curve_data(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """ROC curve of [M] scores: ``{"fpr", "tpr", "thresholds"}`` arrays.

    Raises:
        ValueError: as :func:`auc`.
    """
    fpr, tpr, thresholds = roc_curve(*_check(labels, scores, "ROC curve"))
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def pr_curve_data(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Precision-recall curve of [M] scores: ``{"precision", "recall", "thresholds"}`` arrays.

    Raises:
        ValueError: as :func:`auc`.
    """
    precision, recall, thresholds = precision_recall_curve(*_check(labels, scores, "precision-recall curve"))
    return {"precision": precision, "recall": recall, "thresholds": thresholds}


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width ``1.96 * std`` over replicates (sample std, ddof=1) of [R] values.

    The half-width is NaN for a single replicate: one run says nothing about spread.

    Raises:
        ValueError: no values; not 1-D [R]; a value that is NaN, inf or not a number.
    """
    arr = finite_scores(_one_dimensional(values, "mean_ci values"), "mean_ci values")
    if arr.size == 0:
        raise ValueError("mean_ci needs at least one value")
    half = float(1.96 * arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return float(arr.mean()), half
