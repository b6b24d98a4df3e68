"""Supervised ResNet-18 (salad_lite.methods.supervised): class weights, loss, BN recalibration, learning, AR 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ArrayDataset

from salad_lite.methods.supervised import (
    SupervisedConfig, SupervisedResNet18, positive_weight, recalibrate_batch_norm, resnet18_classifier,
    supervised_loss,
)
from salad_lite.metrics import auc

SMALL = dict(image_size=32, width=8, latent_dim=16, batch_size=32, lr=1e-3, progress=False)


def test_pos_weight_and_loss_match_a_hand_computation() -> None:
    assert positive_weight(np.array([0, 0, 0, 1, 0, 0, 1, 0])) == 3.0
    logits, labels = [0.5, -1.0, 2.0, 0.3], [0, 1, 0, 1]
    sigmoid = [1 / (1 + math.exp(-l)) for l in logits]
    terms = [-3.0 * math.log(s) if y else -math.log(1 - s) for s, y in zip(sigmoid, labels)]
    loss = supervised_loss(torch.tensor(logits), torch.tensor(labels), pos_weight=3.0)
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_the_classifier_takes_one_channel_images() -> None:
    network = resnet18_classifier(5).eval()
    assert network(torch.rand(2, 1, 32, 32)).shape == (2, 5)


def test_recalibration_recomputes_the_running_statistics(planted_splits) -> None:
    val = planted_splits["val"]  # 80 images: 5 equal batches of 16, so the mean of the batch means is the pixel mean
    norm = torch.nn.BatchNorm2d(1)
    recalibrate_batch_norm(norm, val, batch_size=16, device=torch.device("cpu"))
    assert norm.running_mean.item() == pytest.approx(val.images.mean() / 255.0, rel=1e-5)
    assert norm.momentum == 0.1 and norm.training


def test_supervised_learns_the_planted_anomaly(planted_splits) -> None:
    model = SupervisedResNet18(SupervisedConfig(epochs=3, **SMALL), device="cpu")
    model.fit(planted_splits["train"], planted_splits["val"])
    assert model.uses_labels and model.pos_weight == 228 / 12
    test = planted_splits["test"]
    assert auc(test.labels, model.decision_function(test)) >= 0.85


def test_a_training_split_without_abnormal_images_is_refused(planted_splits) -> None:
    train = planted_splits["train"]
    normal = train.labels == 0
    ar0 = ArrayDataset(train.images[normal], train.labels[normal], prefix="train-")
    with pytest.raises(ValueError, match="needs abnormal .*0 abnormal and 228 normal"):
        SupervisedResNet18(SupervisedConfig(epochs=1, **SMALL), device="cpu").fit(ar0, planted_splits["val"])


def test_fit_passes_the_data_fingerprint_on(planted_splits, monkeypatch) -> None:
    from salad_lite.methods.base import DeepBaseline

    received = {}

    def base_fit(self, train_set, val_set, folder=None, data_fingerprint=""):
        received.update(folder=folder, data_fingerprint=data_fingerprint)
        return self

    monkeypatch.setattr(DeepBaseline, "fit", base_fit)
    model = SupervisedResNet18(SupervisedConfig(epochs=1, **SMALL), device="cpu")
    model.fit(planted_splits["train"], planted_splits["val"], "somewhere", data_fingerprint="abc")
    assert received == {"folder": "somewhere", "data_fingerprint": "abc"}
