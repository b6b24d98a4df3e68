"""Eq. 4 against a loop reference, chunking, and the scorer's edge cases."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salad_lite.scorer import SaladScorer, _eq4_search_torch, eq4_scores, eq4_search, min_max_normalise


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def eq4_reference(query, bank, k):
    cosines = [max(-1.0, min(1.0, float(query @ m))) for m in bank]
    angles = [math.acos(c) for c in cosines]
    total = sum(angles)
    nearest = sorted(range(len(bank)), key=lambda j: -cosines[j])[:k]
    return sum(angles[j] / total for j in nearest) / k


@pytest.mark.parametrize("block_elements", [5, 64, 1 << 22])
def test_eq4_matches_loop_reference(block_elements):
    queries, bank = unit(6, 5, 0), unit(25, 5, 1)
    got = eq4_scores(queries, bank, 4, block_elements=block_elements)
    for i in range(6):
        assert float(got[i]) == pytest.approx(eq4_reference(queries[i], bank, 4), abs=1e-5)


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_torch_path_matches_cpu_path(rule):
    """The torch search (used on CUDA) gives the CPU kernel's neighbours, cosines and scores."""
    queries, bank = unit(9, 6, 7), unit(60, 6, 8)
    exclude = torch.arange(9) * 5
    scores, best, rows = eq4_search(queries, bank, 4, rule=rule, block_elements=40, exclude=exclude)
    t_best, t_rows, t_angles = _eq4_search_torch(queries, bank, 4, rule, 40, exclude)
    assert torch.equal(rows, t_rows) and torch.allclose(best, t_best, atol=1e-6)
    if rule == "paper":
        t_scores = torch.arccos(t_best.double().clamp(-1, 1)).sum(1) / t_angles / 4
        assert torch.allclose(scores.double(), t_scores, atol=1e-6)
        for i in range(9):
            kept = torch.cat([bank[:5 * i], bank[5 * i + 1:]])
            assert float(scores[i]) == pytest.approx(eq4_reference(queries[i], kept, 4), abs=1e-5)


def test_code_rule_is_mean_of_smallest_angles_over_pi():
    queries, bank = unit(3, 4, 2), unit(10, 4, 3)
    got = eq4_scores(queries, bank, 3, rule="code")
    for i in range(3):
        angles = sorted(math.acos(max(-1, min(1, float(queries[i] @ m)))) for m in bank)
        assert float(got[i]) == pytest.approx(sum(angles[:3]) / 3 / math.pi, abs=1e-5)


def test_identical_vectors_give_no_nan():
    bank = torch.ones(12, 4) / 2.0  # every row the same unit vector; cos may round past 1
    scorer = SaladScorer(k=3, discard_anomalous=False).fit(bank)
    scores = scorer.decision_function(bank[:5] * 1.0000001)
    assert np.isfinite(scores).all() and np.allclose(scores, 0.0)


def test_batch_of_one_and_single_vector():
    bank = unit(20, 6, 4)
    scorer = SaladScorer(k=5, discard_anomalous=False).fit(bank)
    one = scorer.decision_function(unit(1, 6, 5))
    flat = scorer.decision_function(unit(1, 6, 5)[0])
    assert one.shape == (1,) and flat.shape == (1,) and one[0] == pytest.approx(flat[0])
    assert scorer.predict(unit(1, 6, 5)).shape == (1,)


def test_k_larger_than_bank_is_clamped_with_warning():
    bank = unit(8, 4, 6)
    with pytest.warns(UserWarning, match="K=100 exceeds the 8 bank rows left; using K=7"):
        scorer = SaladScorer(k=100, discard_anomalous=False).fit(bank)
    assert scorer.k_ == 7
    with pytest.raises(ValueError, match="K must lie in 1..8"):
        eq4_scores(unit(2, 4, 7), bank, 9)


def test_discard_anomalous_drops_abnormal_rows():
    bank = unit(10, 4, 8)
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0])
    scorer = SaladScorer(k=2, discard_anomalous=True).fit(bank, labels)
    assert scorer.bank_.shape[0] == 7
    assert scorer.kept_rows_.tolist() == [0, 2, 3, 5, 6, 7, 9]
    queries = unit(3, 4, 9)
    expected = eq4_scores(queries, bank[labels == 0], 2).numpy()
    assert np.allclose(scorer.decision_function(queries), expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs the training labels"):
        SaladScorer(k=2).fit(bank)
    with pytest.raises(ValueError, match="every bank row is labelled abnormal"):
        SaladScorer(k=2).fit(bank, np.ones(10))


def test_read_only_labels_fit_without_warnings():
    labels = np.r_[np.zeros(8), np.ones(2)].astype(np.int64)
    labels.setflags(write=False)  # as the cached datasets hand them out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scorer = SaladScorer(k=3).fit(unit(10, 4, 12), labels)
    assert scorer.bank_.shape == (8, 4)


def test_nan_inputs_are_rejected():
    bank = unit(10, 4, 10)
    bad = bank.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="1 row"):
        SaladScorer(k=2, discard_anomalous=False).fit(bad)
    scorer = SaladScorer(k=2, discard_anomalous=False).fit(bank)
    with pytest.raises(ValueError, match="NaN"):
        scorer.decision_function(bad)


def test_scores_rank_outliers_higher_and_threshold_on_validation():
    gen = torch.Generator().manual_seed(11)
    centre = F.normalize(torch.randn(1, 16, generator=gen), dim=1)
    normal_bank = F.normalize(centre + 0.1 * torch.randn(200, 16, generator=gen), dim=1)
    normals = F.normalize(centre + 0.1 * torch.randn(20, 16, generator=gen), dim=1)
    outliers = unit(20, 16, 12)
    scorer = SaladScorer(k=10, discard_anomalous=False).fit(normal_bank)
    s_norm, s_out = scorer.decision_function(normals), scorer.decision_function(outliers)
    assert s_out.min() > s_norm.max()
    threshold = scorer.set_threshold(torch.cat([normals, outliers]), np.r_[np.zeros(20), np.ones(20)])
    assert s_norm.max() < threshold <= s_out.min()
    assert scorer.predict(outliers).sum() == 20 and scorer.predict(normals).sum() == 0


def test_large_bank_in_small_blocks_matches_one_block():
    bank, queries = unit(20_000, 8, 13), unit(7, 8, 14)
    small = eq4_scores(queries, bank, 50, block_elements=4096)
    big = eq4_scores(queries, bank, 50, block_elements=1 << 26)
    assert torch.allclose(small, big, rtol=1e-5)


def test_min_max_normalise():
    scores = np.array([2.0, 4.0, 3.0])
    assert min_max_normalise(scores).tolist() == [0.0, 1.0, 0.5]
    assert min_max_normalise(np.array([1.0, 1.0])).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("n", [10, 1_000_000])
def test_bank_sizes_from_ten_to_a_million(n):
    bank = unit(n, 8, 15)
    scorer = SaladScorer(k=5, discard_anomalous=False).fit(bank)
    scores = scorer.decision_function(unit(4, 8, 16))
    assert scores.shape == (4,) and np.isfinite(scores).all() and (scores > 0).all()
