"""Paired AUC comparisons (salad_lite.paired): DeLong against a plain reference, bootstrap coverage, alignment."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from salad_lite import paired


def _reference_components(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong's structural components the slow way: psi(x, y) = 1 if x > y, 1/2 if equal, over every pair."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return float(psi.mean()), psi.mean(axis=1), psi.mean(axis=0)


def _reference_delong(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    auc_a, v10_a, v01_a = _reference_components(labels, a)
    auc_b, v10_b, v01_b = _reference_components(labels, b)
    n1, n0 = len(v10_a), len(v01_a)
    var = (np.var(v10_a - v10_b, ddof=1) / n1) + (np.var(v01_a - v01_b, ddof=1) / n0)
    se = float(np.sqrt(var))
    z = (auc_a - auc_b) / se
    return {"auc_a": auc_a, "auc_b": auc_b, "se": se, "z": z, "p_value": float(2 * norm.sf(abs(z)))}


def _scores(m: int, shift_a: float, shift_b: float, seed: int, rho: float = 0.5, decimals: int | None = None):
    """Labels ~half abnormal; a = shift_a * y + noise, b = shift_b * y + noise, noises correlated by ``rho``."""
    rng = np.random.default_rng(seed)
    y = np.zeros(m, dtype=int)
    y[: m // 2] = 1
    rng.shuffle(y)
    common = rng.normal(size=m)
    a = shift_a * y + np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(size=m)
    b = shift_b * y + np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(size=m)
    if decimals is not None:
        a, b = np.round(a, decimals), np.round(b, decimals)
    return y, a, b


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many ties, the midranks matter
def test_structural_components_match_the_plain_pairwise_computation(decimals) -> None:
    y, a, _ = _scores(37, 1.0, 0.0, seed=3, decimals=decimals)
    order = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)])
    auc_fast, v10, v01 = paired._structural_components(a[order], int(y.sum()))
    auc_ref, v10_ref, v01_ref = _reference_components(y, a)
    assert auc_fast == pytest.approx(auc_ref, abs=1e-12) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    np.testing.assert_allclose(v10, v10_ref, atol=1e-12)
    np.testing.assert_allclose(v01, v01_ref, atol=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])
def test_delong_matches_the_plain_reference(decimals) -> None:
    y, a, b = _scores(41, 1.2, 0.6, seed=11, decimals=decimals)
    fast, ref = paired.delong_test(y, a, b), _reference_delong(y, a, b)
    for key in ("auc_a", "auc_b", "se", "z", "p_value"):
        assert fast[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert fast["difference"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert fast["ci_low"] == pytest.approx(fast["difference"] - 1.96 * fast["se"])
    assert fast["ci_high"] == pytest.approx(fast["difference"] + 1.96 * fast["se"])
    swapped = paired.delong_test(y, b, a)
    assert swapped["difference"] == pytest.approx(-fast["difference"]) and swapped["p_value"] == pytest.approx(
        fast["p_value"])


def test_delong_and_bootstrap_agree_on_a_medium_example() -> None:
    y, a, b = _scores(600, 1.0, 0.7, seed=5)
    d, boot = paired.delong_test(y, a, b), paired.paired_bootstrap_auc(y, a, b, n_boot=2000, seed=1)
    assert boot["difference"] == pytest.approx(d["difference"], abs=1e-12)
    assert boot["se"] == pytest.approx(d["se"], rel=0.15)
    assert boot["ci_low"] == pytest.approx(d["ci_low"], abs=0.02) and boot["ci_high"] == pytest.approx(
        d["ci_high"], abs=0.02)
    # pairing matters: the independent-samples SE (sum of the two variances) is much larger here
    independent = np.sqrt(sum(np.var(v, ddof=1) / len(v) for s in (a, b)
                              for v in _reference_components(y, s)[1:]))
    assert d["se"] < 0.8 * independent


def test_bootstrap_ci_covers_the_true_difference() -> None:
    # a = 1.5 y + N(0, 1), b = 0.5 y + N(0, 1): population AUCs Phi(1.5 / sqrt 2) and Phi(0.5 / sqrt 2)
    true = norm.cdf(1.5 / np.sqrt(2)) - norm.cdf(0.5 / np.sqrt(2))
    covered = 0
    for rep in range(40):
        y, a, b = _scores(300, 1.5, 0.5, seed=100 + rep, rho=0.0)
        res = paired.paired_bootstrap_auc(y, a, b, n_boot=500, seed=rep)
        assert res["ci_low"] < res["difference"] < res["ci_high"]
        assert res["ci_low"] > 0  # the difference (~0.20) is far above the noise (SE ~0.03)
        covered += res["ci_low"] <= true <= res["ci_high"]
    assert covered >= 34  # nominal 95% of 40 = 38; the binomial spread allows a few misses


def test_bootstrap_is_seeded_stratified_and_fast() -> None:
    y, a, b = _scores(1000, 1.0, 0.8, seed=2)
    start = time.perf_counter()
    res = paired.paired_bootstrap_auc(y, a, b, n_boot=2000, seed=0)
    assert time.perf_counter() - start < 1.0
    assert res["n_boot"] == 2000 and res == paired.paired_bootstrap_auc(y, a, b, n_boot=2000, seed=0)
    assert res != paired.paired_bootstrap_auc(y, a, b, n_boot=2000, seed=1)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y, a)) and res["auc_b"] == pytest.approx(roc_auc_score(y, b))
    # with 2 abnormal images of 200, an unstratified resample would often have none; stratified never fails
    y2 = np.zeros(200, dtype=int)
    y2[:2] = 1
    rare = paired.paired_bootstrap_auc(y2, np.arange(200.0)[::-1], np.zeros(200), n_boot=300)
    assert rare["auc_a"] == 1.0 and rare["auc_b"] == 0.5 and rare["ci_low"] == rare["ci_high"] == 0.5


def test_identical_scorers_have_no_difference() -> None:
    y, a, _ = _scores(80, 1.0, 0.0, seed=4)
    d = paired.delong_test(y, a, a)
    assert d["difference"] == 0 and d["se"] == 0 and d["z"] == 0 and d["p_value"] == 1.0
    boot = paired.paired_bootstrap_auc(y, a, a, n_boot=50)
    assert boot["ci_low"] == boot["ci_high"] == 0.0


def test_errors_name_the_argument() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.linspace(0, 1, 6)
    with pytest.raises(ValueError, match="scores_b has 5 values but labels has 6"):
        paired.paired_bootstrap_auc(y, s, s[:5])
    with pytest.raises(ValueError, match="scores_a: 1 of 6 value"):
        paired.delong_test(y, np.r_[s[:5], np.nan], s)
    with pytest.raises(ValueError, match="labels must hold both"):
        paired.delong_test(np.zeros(6, dtype=int), s, s)
    with pytest.raises(ValueError, match="labels must be 0"):
        paired.paired_bootstrap_auc(np.array([0, 1, 2, 1, 0, 1]), s, s)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_boot"):
            paired.paired_bootstrap_auc(y, s, s, n_boot=bad)
    for bad in (1.5, -1, True, 2**40):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 4294967295\]"):
            paired.paired_bootstrap_auc(y, s, s, seed=bad)
    with pytest.raises(ValueError, match="scores_a must be numbers, got text"):
        paired.delong_test(y, s.astype(str), s)
    with pytest.raises(ValueError, match="at least 2 images of each class"):
        paired.delong_test(np.array([0, 0, 0, 1]), s[:4], s[:4])


def test_align_on_ids_keeps_the_common_images_in_order_a() -> None:
    ids_a, ids_b = ["x1", "x2", "x3", "x4", "x5", "x6"], ["x6", "x5", "x9", "x4", "x3", "x2"]
    la, lb = [0, 1, 0, 1, 0, 1], [1, 0, 1, 1, 0, 1]
    sa, sb = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [6.0, 5.0, 9.0, 4.0, 3.0, 2.0]
    aligned = paired.align_on_ids(ids_a, sa, ids_b, sb, la, lb)
    ids, labels, a, b = aligned
    assert ids == ["x2", "x3", "x4", "x5", "x6"] and aligned.ids is ids
    assert labels.tolist() == [1, 0, 1, 0, 1]
    assert a.tolist() == [0.2, 0.3, 0.4, 0.5, 0.6] and b.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_align_on_ids_errors() -> None:
    ids = ["a", "b", "c", "d", "e"]
    s = [0.0, 1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="image 'c' has label 0 in labels_a but 1 in labels_b"):
        paired.align_on_ids(ids, s, ids, s, [0, 1, 0, 1, 0], [0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="share 3 test image.*1 abnormal and 2 normal"):
        paired.align_on_ids(ids, s, ["a", "b", "c"], s[:3], [0, 1, 0, 1, 0], [0, 1, 0])
    with pytest.raises(ValueError, match="ids_b holds image id 'a' more than once"):
        paired.align_on_ids(ids, s, ["a", "a"], s[:2], [0, 1, 0, 1, 0], [0, 0])
    with pytest.raises(ValueError, match="labels_a has 4 values but ids_a has 5"):
        paired.align_on_ids(ids, s, ids, s, [0, 1, 0, 1], [0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="scores_b"):
        paired.align_on_ids(ids, s, ids, [0, 1, np.inf, 3, 4], [0, 1, 0, 1, 0], [0, 1, 0, 1, 0])


def test_align_on_ids_refuses_tables_it_would_flatten() -> None:
    ids, labels = list(range(6)), np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.8, 0.9, 0.3, 0.2, 0.4])
    with pytest.raises(ValueError, match=r"scores_a must be 1-D \[M\], got shape \(3, 2\)"):
        paired.align_on_ids(ids, scores.reshape(2, 3).T, ids, scores, labels, labels)
    with pytest.raises(ValueError, match=r"labels_b must be 1-D \[M\], got shape \(6, 1\)"):
        paired.align_on_ids(ids, scores, ids, scores, labels, labels[:, None])
    with pytest.raises(ValueError, match="labels_a must be 0 .* got classes"):
        paired.align_on_ids(ids, scores, ids, scores, np.array([0, 1, 0, 1, "1", 0], dtype=object), labels)


def test_a_degenerate_delong_warns_and_ids_of_another_type_are_hinted() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    with pytest.warns(RuntimeWarning, match="DeLong's variance is 0 although the AUCs differ"):
        result = paired.delong_test(labels, labels.astype(float), np.zeros(6))
    assert result["p_value"] == 0.0
    ids_a, ids_b = list(range(6)), [float(i) for i in range(6)]
    with pytest.raises(ValueError, match=r"share 0 test image\(s\).*compared as text: e.g. '0' in ids_a, '0.0' in ids_b"):
        paired.align_on_ids(ids_a, labels, ids_b, labels, labels, labels)
    import pandas as pd

    aligned = paired.align_on_ids(pd.Index(ids_a), labels, pd.Series(ids_a), labels, labels, labels)
    assert aligned.ids == [str(i) for i in ids_a]


def test_scalar_ids_are_named() -> None:
    for ids in (5, np.int64(5), np.array(5)):
        with pytest.raises(ValueError, match="ids_a must be a sequence of image ids"):
            paired.align_on_ids(ids, [0.1, 0.2], ["a", "b"], [0.1, 0.2], [0, 1], [0, 1])
