"""Deep SAD (salad_lite.methods.deep_sad): the semi-supervised objective, the unlabelled centre, learning, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ArrayDataset
from test_deep_svdd import SMALL, plain_centre, plain_distances, small_splits, without_seconds
from torch import nn

from salad_lite.methods.deep_sad import DeepSAD, DeepSADConfig, sad_terms
from salad_lite.methods.deep_svdd import DeepSVDD, DeepSVDDConfig
from salad_lite.metrics import auc


def plain_sad_loss(distances: list[float], labels: list[int], eta: float, eps: float = 1e-6) -> float:
    """Ruff's batch loss, one sample at a time: d for an unlabelled image, eta / (d + eps) for a labelled anomaly."""
    terms = [d if y == 0 else eta / (d + eps) for d, y in zip(distances, labels)]
    return sum(terms) / len(terms)


def test_the_objective_matches_a_plain_reference() -> None:
    distances, labels = [0.5, 2.0, 0.25, 3.0], [0, 1, 1, 0]
    model = DeepSAD(DeepSADConfig(epochs=3, eta=2.0, **SMALL), device="cpu")
    got = model.objective(torch.tensor(distances), torch.tensor(labels))
    assert float(got) == pytest.approx(plain_sad_loss(distances, labels, eta=2.0), rel=1e-6)
    terms = sad_terms(torch.tensor(distances), torch.tensor(labels), eta=1.0)
    assert np.allclose(terms.numpy(), [0.5, 1 / (2.0 + 1e-6), 1 / (0.25 + 1e-6), 3.0])
    # no labelled anomaly: Deep SVDD's mean distance, the eta term absent
    assert float(model.objective(torch.tensor(distances), torch.zeros(4, dtype=torch.long))) == pytest.approx(1.4375)


def test_the_centre_averages_the_unlabelled_images_and_the_score_is_the_distance(planted_splits) -> None:
    train = small_splits(planted_splits)["train"]  # 60 normal (unlabelled) + 4 labelled anomalies
    model = DeepSAD(DeepSADConfig(epochs=3, **SMALL), device="cpu")
    model.begin_epoch(model.cfg.pretrain_epochs, train)
    encoder = model.networks["encoder"].eval()
    unlabelled = train.images[train.labels == 0]
    with torch.no_grad():
        rows = encoder(torch.as_tensor(unlabelled[:, None] / 255.0, dtype=torch.float32)).tolist()
        assert np.allclose(model.centre.numpy(), plain_centre(rows), atol=1e-5)
        x = torch.rand(3, 1, 32, 32)
        assert np.allclose(model.score_batch(x).numpy(), plain_distances(encoder(x).tolist(), model.centre.tolist()),
                           atol=1e-5)
    only_anomalies = ArrayDataset(train.images[-4:], np.ones(4, np.int64))
    with pytest.raises(ValueError, match="unlabelled"):
        model.begin_epoch(model.cfg.pretrain_epochs, only_anomalies)


def test_the_network_is_deep_svdds_bias_free_one() -> None:
    model = DeepSAD(DeepSADConfig(**SMALL), device="cpu")
    assert DeepSAD.uses_labels and not DeepSVDD.uses_labels
    for network in model.networks.values():
        assert not [name for name, _ in network.named_parameters() if "bias" in name]
        assert not any(m.affine for m in network.modules() if isinstance(m, nn.BatchNorm2d))
    with pytest.raises(ValueError, match="DeepSADConfig.eta"):
        DeepSADConfig(eta=0.0)


def test_deep_sad_learns_the_planted_anomaly(planted_splits) -> None:
    cfg = DeepSADConfig(epochs=9, **SMALL)  # 3 pre-training epochs; robust over seeds 0-4
    model = DeepSAD(cfg, device="cpu").fit(planted_splits["train"], planted_splits["val"])  # 12 labelled anomalies
    test = planted_splits["test"]
    assert auc(test.labels, model.decision_function(test)) >= 0.85
    assert model.selected_epoch >= cfg.pretrain_epochs


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(planted_splits, tmp_path, monkeypatch) -> None:
    train, val = small_splits(planted_splits).values()
    cfg = DeepSADConfig(epochs=3, **SMALL)
    whole = DeepSAD(cfg, device="cpu").fit(train, val, tmp_path / "whole")
    run_epoch = DeepSAD._run_epoch

    def killed_in_the_sad_phase(self, *args):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(self, *args)

    monkeypatch.setattr(DeepSAD, "_run_epoch", killed_in_the_sad_phase)
    with pytest.raises(KeyboardInterrupt):
        DeepSAD(cfg, device="cpu").fit(train, val, tmp_path / "cut")
    monkeypatch.undo()
    resumed = DeepSAD(cfg, device="cpu").fit(train, val, tmp_path / "cut")
    for got, expected in zip(without_seconds(resumed.history), without_seconds(whole.history), strict=True):
        assert got == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(resumed.centre, whole.centre, atol=1e-6)
    assert resumed.selected_epoch == whole.selected_epoch


def test_without_labelled_anomalies_it_is_deep_svdd(planted_splits) -> None:
    splits = small_splits(planted_splits)
    train, val = splits["train"], splits["val"]
    normal = ArrayDataset(train.images[train.labels == 0], train.labels[train.labels == 0])  # AR 0
    sad = DeepSAD(DeepSADConfig(epochs=3, **SMALL), device="cpu").fit(normal, val)
    svdd = DeepSVDD(DeepSVDDConfig(epochs=3, **SMALL), device="cpu").fit(normal, val)
    for got, expected in zip(without_seconds(sad.history), without_seconds(svdd.history), strict=True):
        assert got == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(sad.centre, svdd.centre)
    assert np.allclose(sad.decision_function(val), svdd.decision_function(val), atol=1e-6)
