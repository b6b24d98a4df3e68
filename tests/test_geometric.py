"""Geometric (salad_lite.methods.geometric): Golan's 72 transformations, the score, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salad_lite.methods.geometric import (
    TRANSFORMS, Geometric, GeometricConfig, classifier_for, transform_images, transformation_score,
)
from salad_lite.metrics import auc

SMALL = dict(image_size=32, width=8, latent_dim=16, batch_size=32, lr=1e-3, progress=False)


def plain_transform(image: np.ndarray, flip: bool, shift_y: int, shift_x: int, quarter_turns: int) -> np.ndarray:
    """Golan's AffineTransformation on one [S, S] image: np.fliplr, a shift with a symmetric (Keras 'reflect')
    border, np.rot90; shifts in px, + = content moves down / right."""
    if flip:
        image = np.fliplr(image)
    pad = max(abs(shift_y), abs(shift_x), 1)
    padded, n = np.pad(image, pad, mode="symmetric"), image.shape[0]
    image = padded[pad - shift_y:pad - shift_y + n, pad - shift_x:pad - shift_x + n]
    return np.rot90(image, quarter_turns)


def test_the_72_transformations_follow_golans_order_and_reference() -> None:
    assert len(TRANSFORMS) == 72 and TRANSFORMS[0] == (False, 0, 0, 0)
    assert [TRANSFORMS[i] for i in (1, 4, 12, 36, 71)] == [(False, 0, 0, 1), (False, 0, -1, 0), (False, -1, 0, 0),
                                                           (True, 0, 0, 0), (True, 1, 1, 3)]
    image = torch.rand(1, 1, 32, 32)
    out = torch.stack([transform_images(image, i) for i in range(72)]).flatten(1)
    assert len(torch.unique(out, dim=0)) == 72  # every transformation is distinct
    for i, t in enumerate(TRANSFORMS):  # 8 px at 32 px, a quarter of the side
        expected = plain_transform(image[0, 0].numpy(), t.flip, 8 * t.shift_y, 8 * t.shift_x, t.quarter_turns)
        assert np.array_equal(transform_images(image, i)[0, 0].numpy(), expected), t


def test_the_shift_scales_with_the_image_size() -> None:
    image = torch.rand(2, 1, 64, 64)
    index = TRANSFORMS.index((True, 1, -1, 2))
    expected = plain_transform(image[1, 0].numpy(), True, 16, -16, 2)
    assert np.array_equal(transform_images(image, index)[1, 0].numpy(), expected)
    with pytest.raises(IndexError):
        transform_images(image, 72)
    with pytest.raises(ValueError, match="square images"):
        transform_images(image[:, :, :10], 0)


def test_the_score_is_the_negative_mean_log_probability_of_the_applied_transformation() -> None:
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.1, 0.1, 0.8]],
                          [[1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1], [0.25, 0.25, 0.5]]])
    expected = [-(np.log(0.7) + np.log(0.5) + np.log(0.8)) / 3, -(np.log(1 / 3) + np.log(0.3) + np.log(0.5)) / 3]
    assert np.allclose(transformation_score(probs.log()).numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, T, T\]"):
        transformation_score(torch.zeros(2, 3, 4))


def test_the_classifier_and_the_config() -> None:
    assert classifier_for(GeometricConfig(**SMALL), 72).eval()(torch.rand(2, 1, 32, 32)).shape == (2, 72)
    assert classifier_for(GeometricConfig(**{**SMALL, "arch": "resnet18"}), 72).eval()(
        torch.rand(2, 1, 32, 32)).shape == (2, 72)
    with pytest.raises(ValueError, match="GeometricConfig.transforms_per_image"):
        GeometricConfig(transforms_per_image=73)


def test_a_subset_of_transformations_per_image_trains(planted_splits) -> None:
    model = Geometric(GeometricConfig(epochs=1, transforms_per_image=4, **SMALL), device="cpu")
    scores = model.fit(planted_splits["train"], planted_splits["val"]).decision_function(planted_splits["test"])
    assert np.isfinite(model.history[0]["loss"]) and scores.shape == (80,)


def oriented_images(labels: np.ndarray, size: int = 32, seed: int = 0) -> np.ndarray:
    """A planted-anomaly set with a canonical orientation, as radiographs have (upright, one side marked).

    Normal: an upright ellipse brighter at the top, a bright strip along the left edge, noise. Abnormal:
    the same plus the bright planted disk of ``conftest.blob_images``. The blobs of ``planted_splits`` look
    the same under flips and quarter turns, so 8 of the 72 transformations cannot be told apart on a
    normal image and Golan's score is noise there (test AUC 0.75-0.82 measured): the method needs an
    orientation to learn, which X-rays have.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = np.zeros((len(labels), size, size), np.float32)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(0.45, 0.55, 2)
        body = np.clip(1 - ((yy - cy) / 0.35) ** 2 - ((xx - cx) / 0.22) ** 2, 0, 1) ** 0.5
        image = 0.1 + 0.6 * body * (1.2 - yy) + 0.25 * (xx < 0.12) + rng.normal(0, 0.03, (size, size))
        if label:
            py, px = rng.uniform(0.3, 0.7, 2)
            image[((yy - py) ** 2 + (xx - px) ** 2) < 0.15 ** 2] = 1.0
        images[i] = image
    return (np.clip(images, 0, 1) * 255).astype(np.uint8)


def test_geometric_learns_the_planted_anomaly() -> None:
    from conftest import ArrayDataset

    train_labels = np.r_[np.zeros(228), np.ones(12)].astype(np.int64)  # AR 5, as planted_splits
    held_out = np.r_[np.zeros(40), np.ones(40)].astype(np.int64)
    train, val, test = (ArrayDataset(oriented_images(labels, seed=seed), labels, prefix=f"{name}-")
                        for name, labels, seed in (("train", train_labels, 11), ("val", held_out, 12),
                                                   ("test", held_out, 13)))
    model = Geometric(GeometricConfig(epochs=6, **SMALL), device="cpu").fit(train, val)
    assert auc(test.labels, model.decision_function(test)) >= 0.85


def test_geometrics_budget_is_counted_in_images_seen() -> None:
    from salad_lite.config import profile_config
    from salad_lite.methods import baseline_config

    def salad_epochs(profile: str) -> int:
        t = profile_config(profile).train
        return t.pretrain_epochs + t.rounds * t.epochs_per_round

    assert (salad_epochs("default"), salad_epochs("full")) == (15, 550)
    assert baseline_config("geometric", profile_config("default")).epochs == 2
    assert baseline_config("geometric", profile_config("full")).epochs == 62
    assert baseline_config("geometric", profile_config("smoke")).epochs == 2  # at least 2
    assert baseline_config("geometric", profile_config("full")).validate_every == 1
    assert baseline_config("geometric", profile_config("default"), epochs=7).epochs == 7  # an override wins
    assert baseline_config("deep_ae", profile_config("full")).epochs == 550  # the others keep SALAD's
