"""The raw-pixel PCA baseline against a plain reference, and its validation-only selection."""

import numpy as np
import pytest
import torch

from conftest import ArrayDataset, blob_images
from salad_lite.baselines import PCAReconstruction, pca_baseline, pixel_vectors


def test_residual_matches_a_numpy_reference():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(30, 12, generator=gen), torch.randn(5, 12, generator=gen)
    got = PCAReconstruction(4).fit(train).decision_function(test)
    x = train.double().numpy()
    mean = x.mean(0)
    _, _, vh = np.linalg.svd(x - mean, full_matrices=False)
    basis = vh[:4].T  # [P, 4]
    centred = test.double().numpy() - mean
    reference = ((centred - centred @ basis @ basis.T) ** 2).sum(1)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-6)
    assert PCAReconstruction(100).fit(train).components_.shape == (12, 12)  # clamped to the data's rank bound
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        PCAReconstruction(0)
    with pytest.raises(ValueError, match="at least 2 training images"):
        PCAReconstruction(3).fit(train[:1])


def test_pixel_vectors_are_centred_unit_rows_of_at_most_max_size():
    labels = np.zeros(3, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, size=32, seed=1), labels)
    v = pixel_vectors(data, max_size=16, batch_size=2)
    assert v.shape == (3, 16 * 16)
    assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(v.mean(dim=1), torch.zeros(3), atol=1e-6)


def test_baseline_finds_planted_disks_and_selects_on_validation(blob_splits):
    test_labels = np.r_[np.zeros(20), np.ones(20)].astype(np.int64)
    splits = {**blob_splits, "test": ArrayDataset(blob_images(test_labels, seed=21), test_labels)}
    result = pca_baseline(splits, component_grid=(2, 5))
    assert result["n_components"] in (2, 5)
    assert result["val_auc"] == max(row["val_auc"] for row in result["grid"])
    assert result["test_auc"] > 0.9 and result["test_auprc"] > 0.9  # a bright planted disk leaves the span
