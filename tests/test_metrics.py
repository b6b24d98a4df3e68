"""Detection metrics and the replicate summary: values against plain references, bad input refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from salad_lite.metrics import auc, auprc, mean_ci, pr_curve_data, roc_curve_data


def test_auc_and_mean_ci_match_plain_references() -> None:
    labels, scores = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    pairs = [(a, n) for a in scores[labels == 1] for n in scores[labels == 0]]
    assert auc(labels, scores) == pytest.approx(np.mean([(a > n) + 0.5 * (a == n) for a, n in pairs]))
    values = [0.6, 0.7, 0.65, 0.8]
    mean, half = mean_ci(values)
    assert mean == pytest.approx(sum(values) / 4)
    assert half == pytest.approx(1.96 * (sum((v - mean) ** 2 for v in values) / 3) ** 0.5)
    assert np.isnan(mean_ci([0.7])[1])  # one replicate: no spread


@pytest.mark.parametrize("metric", [auc, auprc, roc_curve_data, pr_curve_data])
def test_two_dimensional_labels_or_scores_are_refused_not_flattened(metric) -> None:
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])
    with pytest.raises(ValueError, match=r"scores must be 1-D, got shape \(4, 1\)"):
        metric(labels, scores[:, None])
    with pytest.raises(ValueError, match=r"labels must be 1-D, got shape \(2, 2\)"):
        metric(labels.reshape(2, 2), scores)


def test_each_metric_names_itself_in_its_errors() -> None:
    with pytest.raises(ValueError, match=r"^AUPRC needs both normal"):
        auprc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"^AUPRC: scores: 1 of 2 value\(s\) are NaN or inf"):
        auprc([0, 1], [0.1, float("nan")])


@pytest.mark.parametrize(("values", "message"), [
    ([0.7, float("nan")], r"mean_ci values: 1 of 2 value\(s\) are NaN or inf"),
    ([[0.7, 0.8]], r"mean_ci values must be 1-D, got shape \(1, 2\)"),
    (["0.7", "x"], r"mean_ci values must be numbers"),
    (["0.5", "0.7"], r"mean_ci values must be numbers, got text"),
    ([], r"mean_ci needs at least one value"),
])
def test_mean_ci_refuses_what_would_be_a_silent_nan_or_a_flattened_table(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        mean_ci(values)


def test_text_scores_are_refused_not_parsed() -> None:
    with pytest.raises(ValueError, match="AUC: scores must be numbers, got text"):
        auc([0, 1], ["0.2", "0.9"])


def test_complex_dated_and_mixed_inputs_are_refused_not_truncated() -> None:
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.7])
    with pytest.raises(ValueError, match="AUC: scores must be real numbers, got dtype complex128"):
        auc(labels, scores + 1j)  # NumPy would keep the real part only
    with pytest.raises(ValueError, match="must be real numbers, got dtype timedelta64"):
        auc(labels, scores.astype("timedelta64[s]"))
    with pytest.raises(ValueError, match=r"got classes \[0, 1, '1'\]"):
        auc(np.array([0, 1, 0, "1"], dtype=object), scores)
