"""Eq. 4 against a loop reference, chunking, and the scorer's edge cases."""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salad_lite.config import SaladConfig
from salad_lite.experiment import select_scoring
from salad_lite.knn import torch_block_search
from salad_lite.metrics import auc
from salad_lite.scorer import SaladScorer, eq4_scores, eq4_search, min_max_normalise
from salad_lite.trainer import SaladTrainer


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
    t_best, t_rows, t_angles = torch_block_search(queries, bank, 4, rule == "paper", exclude, 40)
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


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_identical_bank_gives_no_nan_and_a_documented_threshold(rule):
    """All rows equal: leave-one-out scores have no spread, so the threshold goes just above them, with a warning."""
    bank = torch.ones(12, 4) / 2.0  # every row the same unit vector; cos may round past 1
    scorer = SaladScorer(k=3, discard_anomalous=False, rule=rule).fit(bank)
    scores = scorer.decision_function(bank[:5] * 1.0000001)
    assert np.isfinite(scores).all() and np.allclose(scores, 0.0)
    with pytest.warns(UserWarning, match=r"degenerate threshold \(.*\): 12 of the bank's 12 leave-one-out scores equal"):
        assert scorer.threshold_ == float(np.nextafter(np.float32(0.0), np.float32(1.0)))  # computed on first use
    assert scorer.predict(bank[:5]).tolist() == [0] * 5  # the bank itself is normal, not all abnormal
    other = unit(4, 4, 30)
    expected = 1.0 / 12 if rule == "paper" else None  # Eq. 4: K equal angles over N equal angles, / K
    got = scorer.decision_function(other)
    if expected is not None:
        assert np.allclose(got, expected, rtol=1e-5)
    assert scorer.predict(other).tolist() == [1] * 4


def test_spread_bank_threshold_is_the_plain_quantile_without_warning():
    bank = unit(40, 6, 31)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scorer = SaladScorer(k=3, discard_anomalous=False, contamination=0.2).fit(bank)
    loo = eq4_scores(bank, bank, 3, exclude=torch.arange(40))
    assert scorer.threshold_ == pytest.approx(float(torch.quantile(loo, 0.8)), rel=1e-6)


def test_batch_of_one_and_single_vector():
    bank = unit(20, 6, 4)
    scorer = SaladScorer(k=5, discard_anomalous=False).fit(bank)
    one = scorer.decision_function(unit(1, 6, 5))
    flat = scorer.decision_function(unit(1, 6, 5)[0])
    assert one.shape == (1,) and flat.shape == (1,) and one[0] == pytest.approx(flat[0])
    assert scorer.predict(unit(1, 6, 5)).shape == (1,)


def test_k_larger_than_bank_is_clamped_silently_by_policy():
    bank = unit(8, 4, 6)
    with warnings.catch_warnings():  # the clamp itself never warns (rule "code" keeps a threshold spread)
        warnings.simplefilter("error")
        scorer = SaladScorer(k=100, discard_anomalous=False, rule="code").fit(bank)
    assert scorer.k == 100 and scorer.k_ == 7  # N' - 1: what a leave-one-out score of the bank can use
    queries = unit(2, 4, 7)
    assert np.allclose(scorer.decision_function(queries), eq4_scores(queries, bank, 7, rule="code").numpy())
    assert SaladScorer(k=5, discard_anomalous=False).fit(bank).k_ == 5
    with pytest.raises(ValueError, match="k must lie in 1..8"):
        eq4_scores(queries, bank, 9)
    for kwargs, message in (({"k": True}, r"k must be an int, got True \(bool\)"),
                            ({"k": 3.0}, r"k must be an int, got 3.0"),
                            ({"k": 3, "block_elements": 0}, r"block_elements must be >= 1"),
                            ({"k": 3, "block_elements": 2.5}, r"block_elements must be an int"),
                            ({"k": 3, "exclude": torch.tensor([0.0, 1.0])}, r"exclude must hold integer key rows")):
        with pytest.raises(ValueError, match=message):
            eq4_scores(queries, bank, **kwargs)


def test_discard_anomalous_drops_abnormal_rows():
    bank = unit(10, 4, 8)
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0])
    scorer = SaladScorer(k=2, discard_anomalous=True).fit(bank, labels)
    assert scorer.bank_.shape[0] == 7
    assert scorer.kept_rows_.tolist() == [0, 2, 3, 5, 6, 7, 9]
    queries = unit(3, 4, 9)
    expected = eq4_scores(queries, bank[labels == 0], 2).numpy()
    assert np.allclose(scorer.decision_function(queries), expected, atol=1e-6)
    with pytest.raises(ValueError, match="every bank row is labelled abnormal"):
        SaladScorer(k=2).fit(bank, np.ones(10))
    with pytest.raises(ValueError, match=r"training labels needs labels 0 \(normal\) and 1 \(abnormal\); got classes \[0, 2\]"):
        SaladScorer(k=2).fit(bank, np.where(labels == 1, 2, 0))
    with pytest.raises(ValueError, match="labels has 9 entries but the bank has 10 rows"):
        SaladScorer(k=2, discard_anomalous=False).fit(bank, labels[:9])


def test_fit_without_labels_keeps_every_row_even_when_discarding():
    """PyOD's fit(X, y=None): with no labels nothing is known to be abnormal, so nothing is dropped."""
    bank, queries = unit(10, 4, 8), unit(3, 4, 9)
    scorer = SaladScorer(k=2, discard_anomalous=True).fit(bank)
    assert scorer.bank_.shape[0] == 10 and scorer.kept_rows_.tolist() == list(range(10))
    assert np.allclose(scorer.decision_function(queries), eq4_scores(queries, bank, 2).numpy(), atol=1e-6)


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


def test_zero_latents_are_refused_everywhere_with_a_count():
    bank = unit(10, 4, 20)
    zeros = bank.clone()
    zeros[[2, 7]] = 0.0
    with pytest.raises(ValueError, match=r"bank has 2 zero-norm row\(s\) of 10"):
        SaladScorer(k=2, discard_anomalous=False).fit(zeros)
    with pytest.raises(ValueError, match=r"bank has 2 zero-norm row"):
        eq4_scores(unit(3, 4, 21), zeros, 2)
    with pytest.raises(ValueError, match=r"queries has 2 zero-norm row"):
        eq4_search(zeros, bank, 2)
    scorer = SaladScorer(k=2, discard_anomalous=False).fit(bank)
    with pytest.raises(ValueError, match=r"z has 2 zero-norm row\(s\) of 10 .*first: row 2"):
        scorer.decision_function(zeros)
    with pytest.raises(ValueError, match=r"z has 1 zero-norm row"):
        scorer.predict(torch.zeros(4))


def test_one_class_validation_is_refused_by_every_validation_choice():
    """set_threshold, select_scoring and the trainer's per-epoch validation need both classes, as metrics.auc."""
    bank, z_val = unit(20, 4, 22), unit(6, 4, 23)
    scorer = SaladScorer(k=3, discard_anomalous=False).fit(bank)
    for labels in (np.zeros(6), np.ones(6)):
        with pytest.raises(ValueError, match=r"set_threshold .* needs both normal \(0\) and abnormal \(1\) labels"):
            scorer.set_threshold(z_val, labels)
    with pytest.raises(ValueError, match=r"got classes \[0, 2\]"):
        scorer.set_threshold(z_val, np.array([0, 2, 0, 2, 0, 2]))
    with pytest.raises(ValueError, match="y_val has 4 labels but z_val has 6 rows"):
        scorer.set_threshold(z_val, np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"labels must be 1-D, got shape \(6, 1\)"):  # never flattened silently
        scorer.set_threshold(z_val, np.array([0, 1, 0, 1, 0, 1])[:, None])
    trainer = SimpleNamespace(val_labels=np.zeros(6, dtype=np.int64), cfg=SaladConfig())  # refused before any use
    with pytest.raises(ValueError, match=r"select_scoring \(validation AUC\) needs both"):
        select_scoring(trainer)
    with pytest.raises(ValueError, match=r"checkpoint selection \(validation AUC\) needs both"):
        SaladTrainer.validate(trainer)


def test_set_threshold_warns_when_no_threshold_separates_the_classes():
    bank = unit(20, 4, 24)
    scorer = SaladScorer(k=3, discard_anomalous=False).fit(bank)
    z_val = unit(1, 4, 25).repeat(6, 1)  # equal scores for both classes
    with pytest.warns(UserWarning, match="do not separate the classes"):
        threshold = scorer.set_threshold(z_val, np.array([0, 1, 0, 1, 0, 1]))
    assert scorer.predict(z_val).sum() == 0 and threshold > scorer.decision_function(z_val).max()


def test_select_scoring_takes_its_grid_from_the_config():
    bank, val_z = unit(30, 4, 26), unit(12, 4, 27)
    cfg = SaladConfig().replace(score={"k_grid": (1, 3, 29, 40), "discard_options": (False,)})
    trainer = SimpleNamespace(cfg=cfg, val_labels=np.r_[np.zeros(6), np.ones(6)].astype(np.int64),
                              train_labels=np.zeros(30, dtype=np.int64), val_set=None,
                              scoring_bank=lambda: bank, embed=lambda dataset: val_z,
                              selected={"selected_epoch": 4})
    selection = select_scoring(trainer)
    assert [(row["k"], row["discard_anomalous"]) for row in selection["grid"]] == [(1, False), (3, False), (29, False)]
    assert {key: selection[key] for key in ("k_grid", "discard_options", "rule", "selected_epoch")} == {
        "k_grid": [1, 3, 29, 40], "discard_options": [False], "rule": "paper", "selected_epoch": 4}  # its basis
    expected = eq4_scores(val_z, bank, 3).numpy()
    row = selection["grid"][1]
    assert row["val_auc"] == pytest.approx(auc(trainer.val_labels, expected))
    assert selection["k"] in (1, 3, 29)


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


def test_a_clamped_k_gives_a_named_degenerate_threshold():
    """K >= N' - 1 (the paper's K = 100 on a 20-row bank): every leave-one-out Eq. 4 score is 1/K."""
    bank = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    scorer = SaladScorer(k=100, discard_anomalous=False).fit(bank)  # scoring alone needs no threshold: silent
    with pytest.warns(UserWarning, match=r"degenerate threshold \(K = N' - 1 = 19: each leave-one-out score is 1/K\)"):
        assert scorer.k_ == 19 and scorer.threshold_ > 1 / 19
    own = scorer.decision_function(bank)
    assert scorer.predict(bank).sum() == 0 and own.max() < scorer.threshold_


@pytest.mark.parametrize("kwargs, fragment", [
    ({"discard_anomalous": "no"}, "discard_anomalous must be True or False"),
    ({"discard_anomalous": 1}, "discard_anomalous must be True or False"),
    ({"contamination": "0.1"}, "contamination must be a number"),
    ({"contamination": float("nan")}, "contamination must be a number"),
    ({"contamination": np.complex128(0.1)}, "contamination must be a number"),
    ({"block_elements": 1.5}, "block_elements must be an int"),
    ({"block_elements": float("nan")}, "block_elements must be an int"),
    ({"device": "gpu"}, "device 'gpu' is not a device salad_lite runs on"),
])
def test_scorer_parameters_are_checked(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        SaladScorer(**kwargs)
    assert SaladScorer(contamination=np.float32(0.25), discard_anomalous=np.True_).discard_anomalous  # NumPy scalars


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5", None, True, np.complex128(0.5)])
def test_threshold_must_be_finite(value):
    scorer = SaladScorer(k=2).fit(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="threshold_ must be a finite number"):
        scorer.threshold_ = value


@pytest.mark.parametrize("k", [True, 2.5, float("nan"), 0, -3])
def test_k_must_be_a_positive_int(k):
    with pytest.raises(ValueError, match="K must be an int >= 1"):
        SaladScorer(k=k)


def test_labels_must_be_one_dimensional():
    bank = unit(20, 4, 30)
    with pytest.raises(ValueError, match=r"labels must be 1-D \[N\], got shape \(4, 5\)"):
        SaladScorer(k=3).fit(bank, np.zeros((4, 5)))
