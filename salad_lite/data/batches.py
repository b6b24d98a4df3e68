"""Images, labels and patient ids out of any dataset, in batches; the checks every set of splits passes first.

The trainer, the evaluation protocol and the baselines all read datasets through
these helpers, so that none of them imports another to reach its data:

- :func:`gather_images` / :func:`image_batches`: float images ``[B, 1, S, S]``
  in [0, 1], straight from a cached ``uint8`` array when the dataset has one;
- :func:`dataset_labels` / :func:`dataset_patient_ids`: the label and patient
  columns, from ``.labels`` / ``.metadata`` when present, else from the sample dicts;
- :func:`check_splits`: what every entry point that receives splits calls
  once, before any work: no patient in two splits
  (:func:`salad_lite.data.splits.check_patient_disjoint`) and no NaN/inf pixel
  in any image (:func:`check_finite_images`).

A dataset is anything with ``len`` and ``dataset[i]`` returning the sample dict
of DESIGN.md. One without a ``metadata`` table (a plain in-memory dataset)
must carry ``"patient_id"`` in its sample dicts to be used beside another split.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from salad_lite.data.splits import check_patient_disjoint, patient_ids_of

__all__ = ["NonFiniteImageError", "check_finite_images", "check_splits", "dataset_labels", "dataset_patient_ids",
           "gather_images", "image_batches"]

CHECK_BATCH = 256  # images per batch of the non-finite scan


class NonFiniteImageError(ValueError):
    """An image holds NaN or infinite pixels; the message names the split and the image."""


def gather_images(dataset: Any, indices: np.ndarray) -> torch.Tensor:
    """Images of ``indices`` as float [B, 1, S, S] in [0, 1].

    Uses a dataset's in-memory uint8 ``images`` array [N, S, S] when it has one
    (the cached datasets), otherwise stacks ``dataset[i]["image"]``.

    Raises:
        IndexError: an index outside the dataset (from the dataset or NumPy).
    """
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3:
        return torch.from_numpy(images[indices]).unsqueeze(1).float().div_(255.0)
    return torch.stack([dataset[int(i)]["image"] for i in indices]).float()


def image_batches(dataset: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Every image of ``dataset`` in order, as float batches [B, 1, S, S] in [0, 1] on the CPU.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(dataset), batch_size):
        yield gather_images(dataset, np.arange(start, min(start + batch_size, len(dataset))))


def dataset_labels(dataset: Any) -> np.ndarray:
    """Labels [N] (0 normal, 1 abnormal) of a dataset with a ``labels`` attribute or sample dicts."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.array([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


def dataset_patient_ids(dataset: Any, split: str = "dataset") -> list[str]:
    """Patient ids [N] (str) of a dataset, from :func:`~salad_lite.data.splits.patient_ids_of` or the sample dicts.

    ``patient_ids_of`` reads ``.metadata["patient_id"]`` / ``.patient_ids`` (and
    subsets of such datasets); a dataset without either is read item by item,
    taking ``dataset[i]["patient_id"]``.

    Args:
        dataset: a dataset of the package's contract.
        split: its name, for the error message.

    Raises:
        TypeError: the dataset has no patient-id column and its samples are not
            dicts with a ``"patient_id"`` key (a bare tensor dataset): patient
            leakage between splits could not be checked.
    """
    try:
        return patient_ids_of(dataset, split)
    except TypeError:
        pass
    ids = []
    for i in range(len(dataset)):
        sample = dataset[i]
        if not isinstance(sample, Mapping) or "patient_id" not in sample:
            raise TypeError(f"split {split!r} ({type(dataset).__name__}) has no patient ids: give it a "
                            "metadata table with a 'patient_id' column or sample dicts with 'patient_id', "
                            "so that no patient can sit in two splits")
        ids.append(str(sample["patient_id"]))
    return ids


def _holds_only_uint8(dataset: Any) -> bool:
    """True when the dataset's images are decoded from uint8 and so cannot be NaN or infinite."""
    from salad_lite.data.base import CachedXrayDataset, XrayDataset

    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.integer):
        return True
    return isinstance(dataset, (CachedXrayDataset, XrayDataset))  # both decode uint8 files / arrays


def _describe_image(dataset: Any, index: int) -> str:
    metadata = getattr(dataset, "metadata", None)
    parts = [f"index {index}"]
    for column in ("path", "patient_id"):
        if metadata is not None and column in getattr(metadata, "columns", ()) and index < len(metadata):
            parts.append(f"{column} {metadata[column].iloc[index]!s}")
    return ", ".join(parts)


def check_finite_images(dataset: Any, split: str = "dataset", batch_size: int = CHECK_BATCH) -> None:
    """Refuse a dataset with any NaN or infinite pixel, naming the split and the first bad images.

    Datasets whose images are uint8 (an integer ``images`` array, or the
    package's :class:`~salad_lite.data.base.XrayDataset` /
    :class:`~salad_lite.data.base.CachedXrayDataset`, which decode uint8) cannot
    hold one and are skipped at no cost; any other dataset is read once in
    batches of ``batch_size``.

    Raises:
        NonFiniteImageError: names the split, how many images are bad and the
            first three (index, and path / patient id when the metadata has them).
    """
    if _holds_only_uint8(dataset):
        return
    bad: list[int] = []
    for start, batch in zip(range(0, len(dataset), batch_size), image_batches(dataset, batch_size)):
        finite = torch.isfinite(batch).flatten(1).all(dim=1)  # [B]
        bad.extend(start + int(i) for i in torch.nonzero(~finite).flatten())
    if bad:
        named = "; ".join(_describe_image(dataset, i) for i in bad[:3])
        raise NonFiniteImageError(f"split {split!r}: {len(bad)} image(s) hold NaN/inf pixels, first: {named}"
                                  + (" ..." if len(bad) > 3 else ""))


def check_splits(splits: Mapping[str, Any], required: tuple[str, ...] = ()) -> None:
    """The checks every entry point that receives splits runs once, before any training or scoring.

    Args:
        splits: split name -> dataset; ``None`` values are skipped.
        required: split names that must be present (``("train", "val", "test")``).

    Raises:
        KeyError: a required split is missing (all missing names given).
        salad_lite.data.splits.PatientLeakError: a patient appears in two splits
            (only checked when there are two or more splits).
        TypeError: with two or more splits, a dataset without patient ids (see
            :func:`dataset_patient_ids`).
        NonFiniteImageError: an image holds NaN/inf pixels (see :func:`check_finite_images`).
    """
    present = {name: dataset for name, dataset in splits.items() if dataset is not None}
    missing = [name for name in required if name not in present]
    if missing:
        raise KeyError(f"splits lack {missing}: got {sorted(splits)}, need {list(required)}")
    if len(present) > 1:
        check_patient_disjoint({name: dataset_patient_ids(dataset, name) for name, dataset in present.items()})
    for name, dataset in present.items():
        check_finite_images(dataset, name)
