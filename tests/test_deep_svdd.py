"""Deep SVDD (salad_lite.methods.deep_svdd): centre, distances, bias-free network, learning, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ArrayDataset
from torch import nn

from salad_lite.methods.deep_svdd import DeepSVDD, DeepSVDDConfig, hypersphere_centre, squared_distances
from salad_lite.metrics import auc

SMALL = dict(image_size=32, width=8, latent_dim=16, batch_size=32, lr=1e-3, progress=False)


def plain_centre(rows: list[list[float]], eps: float = 0.1) -> list[float]:
    """Ruff's centre, one coordinate at a time: the mean, pushed to +-eps when |mean| < eps."""
    centre = []
    for j in range(len(rows[0])):
        mean = sum(row[j] for row in rows) / len(rows)
        centre.append(mean if abs(mean) >= eps else (-eps if mean < 0 else eps))
    return centre


def plain_distances(rows: list[list[float]], centre: list[float]) -> list[float]:
    return [sum((value - c) ** 2 for value, c in zip(row, centre)) for row in rows]


def small_splits(splits: dict) -> dict:
    """A quarter of the planted training set (60 normal + 4 abnormal images) and 20 validation images."""
    train, val = splits["train"], splits["val"]
    keep = np.r_[0:60, 228:232]
    held = np.r_[0:10, 40:50]
    return {"train": ArrayDataset(train.images[keep], train.labels[keep], prefix="train-"),
            "val": ArrayDataset(val.images[held], val.labels[held], prefix="val-")}


def without_seconds(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]


def test_centre_and_distances_match_a_plain_reference() -> None:
    features = torch.tensor([[0.5, 0.04, -0.3, 0.0], [0.3, -0.1, 0.25, 0.0], [0.1, 0.0, 0.02, 0.0]])
    rows = features.tolist()
    centre = plain_centre(rows)  # [0.3, -0.1 (mean -0.02), -0.1 (mean -0.01), 0.1 (mean 0)]
    assert np.allclose(hypersphere_centre(features).numpy(), centre)
    assert np.allclose(squared_distances(features, torch.tensor(centre)).numpy(), plain_distances(rows, centre))
    with pytest.raises(ValueError, match="N >= 1"):
        hypersphere_centre(torch.empty(0, 4))


def test_the_model_fixes_its_centre_and_scores_the_distance(planted_splits) -> None:
    train = small_splits(planted_splits)["train"]
    model = DeepSVDD(DeepSVDDConfig(epochs=3, **SMALL), device="cpu")
    model.begin_epoch(0, train)  # a pre-training epoch: the centre is not set yet
    assert not model.centre.any()
    model.begin_epoch(model.cfg.pretrain_epochs, train)
    encoder = model.networks["encoder"].eval()
    with torch.no_grad():
        rows = encoder(torch.as_tensor(train.images[:, None] / 255.0, dtype=torch.float32)).tolist()
    assert np.allclose(model.centre.numpy(), plain_centre(rows), atol=1e-5)  # every image, labels ignored
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expected = plain_distances(encoder(x).tolist(), model.centre.tolist())
        assert np.allclose(model.score_batch(x).numpy(), expected, atol=1e-5)
    distances, labels = torch.tensor([0.5, 2.0, 3.5]), torch.tensor([0, 1, 1])
    assert float(model.objective(distances, labels)) == pytest.approx(sum([0.5, 2.0, 3.5]) / 3)


@pytest.mark.parametrize("arch, size", [("conv", 32), ("resnet18", 64)])
def test_the_network_is_bias_free_and_unnormalised(arch: str, size: int) -> None:
    model = DeepSVDD(DeepSVDDConfig(arch=arch, image_size=size, width=8, latent_dim=16, progress=False), device="cpu")
    for network in model.networks.values():
        assert not [name for name, _ in network.named_parameters() if "bias" in name]
        norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert norms and not any(m.affine for m in norms)
    encoder = model.networks["encoder"].eval()
    with torch.no_grad():
        features = encoder(torch.rand(4, 1, size, size))
    assert features.shape == (4, 16) and not torch.allclose(features.norm(dim=1), torch.ones(4))


def test_pretraining_epochs_take_a_share_of_the_budget() -> None:
    assert DeepSVDDConfig(epochs=15).pretrain_epochs == 5
    assert DeepSVDDConfig(epochs=1).pretrain_epochs == 0
    assert DeepSVDDConfig(epochs=4, pretrain_fraction=1.0).pretrain_epochs == 3  # one SVDD epoch remains
    with pytest.raises(ValueError, match="DeepSVDDConfig.pretrain_fraction"):
        DeepSVDDConfig(pretrain_fraction=1.5)


def test_deep_svdd_learns_the_planted_anomaly(planted_splits) -> None:
    cfg = DeepSVDDConfig(epochs=9, **SMALL)  # 3 pre-training epochs; robust over seeds 0-4
    model = DeepSVDD(cfg, device="cpu").fit(planted_splits["train"], planted_splits["val"])
    test = planted_splits["test"]
    assert auc(test.labels, model.decision_function(test)) >= 0.85
    pretraining, svdd = model.history[:cfg.pretrain_epochs], model.history[cfg.pretrain_epochs:]
    assert all("ae_mse" in h and "val_auc" not in h for h in pretraining)  # never selectable
    assert all("loss" in h and "val_auc" in h for h in svdd)
    assert model.selected_epoch == cfg.pretrain_epochs + int(np.argmax([h["val_auc"] for h in svdd]))


@pytest.mark.parametrize("cut", [1, 2])  # 1: right after pre-training (the centre is recomputed); 2: mid-SVDD
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(planted_splits, tmp_path, monkeypatch,
                                                                 cut: int) -> None:
    train, val = small_splits(planted_splits).values()
    cfg = DeepSVDDConfig(epochs=3, **SMALL)
    assert cfg.pretrain_epochs == 1
    whole = DeepSVDD(cfg, device="cpu").fit(train, val, tmp_path / "whole")
    run_epoch = DeepSVDD._run_epoch

    def killed(self, *args):
        if self.epoch == cut:
            raise KeyboardInterrupt
        return run_epoch(self, *args)

    monkeypatch.setattr(DeepSVDD, "_run_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        DeepSVDD(cfg, device="cpu").fit(train, val, tmp_path / "cut")
    monkeypatch.undo()
    resumed = DeepSVDD(cfg, device="cpu").fit(train, val, tmp_path / "cut")
    for got, expected in zip(without_seconds(resumed.history), without_seconds(whole.history), strict=True):
        assert got == pytest.approx(expected, abs=1e-6)
    assert whole.centre.abs().min() >= 0.1
    assert torch.allclose(resumed.centre, whole.centre, atol=1e-6)
    assert resumed.selected_epoch == whole.selected_epoch
    assert np.allclose(resumed.decision_function(val), whole.decision_function(val), atol=1e-5)
