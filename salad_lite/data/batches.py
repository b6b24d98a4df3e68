"""Images, labels and patient ids out of any dataset, in batches; the checks every set of splits passes first.

The trainer, the evaluation protocol and the baselines all read datasets through
these helpers, so that none of them imports another to reach its data:

- :func:`gather_images` / :func:`image_batches`: float images ``[B, 1, S, S]``
  in [0, 1], straight from a cached ``uint8`` array when the dataset has one;
- :func:`dataset_labels` / :func:`dataset_patient_ids`: the label and patient
  columns, from ``.labels`` / ``.metadata`` when present, else from the sample dicts;
- :func:`check_splits`: what every entry point that receives splits calls
  once, before any work: every label 0/1 (parsed strictly, the split and
  position named), both classes in the splits that need them (``both_classes``),
  no patient in two splits (:func:`salad_lite.data.splits.check_patient_disjoint`)
  and no NaN/inf pixel in any image (:func:`check_finite_images`);
- :func:`splits_fingerprint` / :func:`check_data_fingerprint`: what identifies a set
  of splits, stored beside every checkpoint and result computed from them, and
  the refusal of a checkpoint trained on other splits.

A dataset is anything with ``len`` and ``dataset[i]`` returning the sample dict
of DESIGN.md. One without a ``metadata`` table (a plain in-memory dataset)
must carry ``"patient_id"`` in its sample dicts to be used beside another split.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from salad_lite.data.base import parse_binary_labels
from salad_lite.data.splits import check_patient_disjoint, patient_id_text, patient_ids_of

__all__ = ["NonFiniteImageError", "OneClassSplitError", "check_data_fingerprint", "check_finite_images",
           "check_splits", "dataset_labels", "dataset_patient_ids", "gather_images", "image_batches",
           "require_both_classes", "splits_fingerprint"]

CHECK_BATCH = 256  # images per batch of the non-finite scan


class NonFiniteImageError(ValueError):
    """An image holds NaN or infinite pixels; the message names the split and the image."""


class OneClassSplitError(ValueError):
    """A split that must hold both classes (validation, test) holds one; the message names it and its counts."""


def gather_images(dataset: Any, indices: np.ndarray) -> torch.Tensor:
    """Images of ``indices`` as float [B, 1, S, S] in [0, 1].

    Uses a dataset's in-memory uint8 ``images`` array [N, S, S] when it has one
    (the cached datasets), otherwise stacks ``dataset[i]["image"]``.

    Args:
        dataset: a dataset of the package's contract.
        indices: 1-D integer positions in ``[0, len(dataset))``; negative
            positions are refused, not counted from the end.

    Raises:
        IndexError: an index is negative or ``>= len(dataset)`` (the first few named).
        TypeError: ``indices`` are not 1-D integers; ``dataset`` is a bare array or tensor.
        ValueError: a sample's pixels lie outside [0, 1] (e.g. 0-255 values; indices named).
    """
    if isinstance(dataset, (np.ndarray, torch.Tensor)):
        raise TypeError(f"expected a dataset of sample dicts (dataset[i]['image']: float [1, S, S] in [0, 1]; see "
                        f"salad_lite.data), got a bare {type(dataset).__name__} of shape {tuple(dataset.shape)}")
    indices = _positions(indices, len(dataset))
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3:
        return torch.from_numpy(images[indices]).unsqueeze(1).float().div_(255.0)
    batch = torch.stack([dataset[int(i)]["image"] for i in indices]).float()
    outside = (((batch < 0) | (batch > 1)) & batch.isfinite()).flatten(1).any(dim=1)  # [B]; NaN/inf: check_splits
    if outside.any():
        low, high = float(batch[batch.isfinite()].min()), float(batch[batch.isfinite()].max())
        hint = "0-255 values: divide by 255" if high > 2 else "e.g. after resampling: clamp to [0, 1]"
        raise ValueError(f"images {indices[outside.numpy()][:5].tolist()} hold pixels outside [0, 1] (range "
                         f"{low!r} to {high!r}): every dataset gives pixels in [0, 1] ({hint})")
    return batch


def image_batches(dataset: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Every image of ``dataset`` in order, as float batches [B, 1, S, S] in [0, 1] on the CPU.

    Raises:
        ValueError: ``batch_size`` < 1; ``dataset`` holds no image (what would be scored or embedded is empty).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError(f"the dataset holds no images ({type(dataset).__name__} of length 0)")
    for start in range(0, len(dataset), batch_size):
        yield gather_images(dataset, np.arange(start, min(start + batch_size, len(dataset))))


def _positions(indices: Any, n: int) -> np.ndarray:
    """``indices`` as int64 [B], each in ``[0, n)``.

    Raises:
        TypeError: not 1-D integers (a bool mask, floats).
        IndexError: an index out of range (the first five named).
    """
    idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be 1-D integers, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise IndexError(f"indices {idx[bad][:5].tolist()} out of range for a dataset of {n} items "
                         f"(valid: 0 to {n - 1}; negative indices are not counted from the end)")
    return idx


def dataset_labels(dataset: Any, split: str = "dataset") -> np.ndarray:
    """Labels [N] (0 normal, 1 abnormal) of a dataset with a ``labels`` attribute or sample dicts, parsed strictly.

    Every label goes through :func:`~salad_lite.data.base.parse_binary_labels`
    (0 / 1, also ``0.0`` / ``1.0``; one-element tensors are read as their value),
    whether it comes from ``.labels`` or from ``dataset[i]["label"]``: ``0.9``,
    ``1.5``, ``" 2"``, ``True`` or NaN are never truncated into a class.

    Args:
        dataset: a dataset of the package's contract.
        split: its name, for the message.

    Raises:
        LabelError: a label is not 0/1; the message names the split, the
            positions (``row``) and the values.
        TypeError: the dataset has neither ``labels`` nor sample dicts with ``"label"``.
    """
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        values = labels.tolist() if isinstance(labels, torch.Tensor) else labels
    else:
        first = dataset[0] if len(dataset) else {}
        if not isinstance(first, Mapping) or "label" not in first:
            raise TypeError(f"split {split!r} ({type(dataset).__name__}) has no labels: give it a `labels` array "
                            "or sample dicts with a 'label' (the package's dataset contract)")
        values = [dataset[i]["label"] for i in range(len(dataset))]
        values = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in values]
    return parse_binary_labels(values, f"split {split!r} ({type(dataset).__name__})")


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
        ValueError: a patient id is missing (None, NaN, empty); the split and
            position are named (:func:`~salad_lite.data.splits.patient_id_text`).
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
        ids.append(patient_id_text(sample["patient_id"], split, i))
    return ids


def splits_fingerprint(splits: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of what identifies the splits: per split its size, labels, patient ids and uint8 pixels.

    Stored beside every checkpoint and result computed from the splits, so that neither
    is ever reused for other splits: a renamed file that reshuffles a seeded split, or
    an edited split file, changes it. The order counts (memory row i is training image i).
    Datasets without a uint8 ``images`` array contribute labels and patients only
    (hashing their pixels would mean reading every image).
    """
    digest = hashlib.sha256()
    for name in sorted(splits):
        dataset = splits[name]
        if dataset is None:
            continue
        digest.update(f"{name}:{len(dataset)}".encode())
        digest.update(dataset_labels(dataset).tobytes())
        digest.update("\x1f".join(dataset_patient_ids(dataset, name)).encode())
        images = getattr(dataset, "images", None)
        if isinstance(images, np.ndarray) and images.dtype == np.uint8:
            digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


def check_data_fingerprint(stored: Any, current: str, source: Any) -> None:
    """Refuse a checkpoint trained on other splits than ``current`` (a :func:`splits_fingerprint`).

    ``stored`` is the fingerprint read from the checkpoint's metadata ``source`` (a
    path, named in the message). A checkpoint written before salad_lite recorded
    its splits (``stored`` None or "") is accepted with a warning.

    Raises:
        ValueError: the fingerprints differ: the training or validation images,
            labels, patients or their order changed since the checkpoint was written.
    """
    if stored is None or stored == "":
        warnings.warn(f"{source} predates salad_lite's record of the splits a run was trained on: it is used, "
                      "but whether these are its training and validation images cannot be checked", stacklevel=3)
    elif stored != current:
        raise ValueError(
            f"{source} was trained on other training or validation images (their pixels, labels, patients or "
            "order differ: another data root holds other images, a file added, removed or renamed reshuffles a "
            "seeded split, and an edited --split-file moves images); using it could score training images as test "
            f"images. Restore the data and split, or train again in another run folder (fingerprint {stored!r}, "
            f"now {current!r})")


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
        ValueError: pixels outside [0, 1] (:func:`gather_images`; the split named).
    """
    if _holds_only_uint8(dataset) or len(dataset) == 0:
        return
    bad: list[int] = []
    batches = image_batches(dataset, batch_size)
    for start in range(0, len(dataset), batch_size):
        try:
            batch = next(batches)
        except ValueError as error:  # pixels outside [0, 1]: named with the split, as NaN/inf are
            raise ValueError(f"split {split!r}: {error}") from None
        finite = torch.isfinite(batch).flatten(1).all(dim=1)  # [B]
        bad.extend(start + int(i) for i in torch.nonzero(~finite).flatten())
    if bad:
        named = "; ".join(_describe_image(dataset, i) for i in bad[:3])
        raise NonFiniteImageError(f"split {split!r}: {len(bad)} image(s) hold NaN/inf pixels, first: {named}"
                                  + (" ..." if len(bad) > 3 else ""))


def check_splits(
    splits: Mapping[str, Any], required: tuple[str, ...] = (), both_classes: tuple[str, ...] = ()
) -> None:
    """The checks every entry point that receives splits runs once, before any training or scoring.

    In order: the required splits are present; every label of every split is
    0/1 (:func:`dataset_labels`); the splits named in ``both_classes`` hold
    normal and abnormal images; no patient is in two splits; no pixel is NaN/inf.

    Args:
        splits: split name -> dataset; ``None`` values are skipped.
        required: split names that must be present (``("train", "val", "test")``).
        both_classes: split names that must hold both classes, because a choice
            or a metric compares them (``("val", "test")``); a split given
            as ``None`` is skipped. The default checks no split: a training
            split is normally all normal.

    Raises:
        KeyError: a required split is missing (all missing names given), or
            ``both_classes`` names a key absent from ``splits`` (a typo).
        LabelError: a label is not 0/1 (split, position and value named).
        OneClassSplitError: a split of ``both_classes`` holds one class only
            (named, with its counts), as :func:`salad_lite.metrics.binary_labels` refuses.
        salad_lite.data.splits.PatientLeakError: a patient appears in two splits
            (only checked when there are two or more splits).
        TypeError: with two or more splits, a dataset without patient ids (see
            :func:`dataset_patient_ids`).
        ValueError: a patient id is missing (split and position named).
        NonFiniteImageError: an image holds NaN/inf pixels (see :func:`check_finite_images`).
    """
    present = {name: dataset for name, dataset in splits.items() if dataset is not None}
    missing = [name for name in required if name not in present]
    if missing:
        raise KeyError(f"splits lack {missing}: got {sorted(splits)}, need {list(required)}")
    unknown = [name for name in both_classes if name not in splits]
    if unknown:
        raise KeyError(f"both_classes names {unknown}, which are not among the splits {sorted(splits)}")
    if len(present) > 1:
        check_patient_disjoint({name: dataset_patient_ids(dataset, name) for name, dataset in present.items()})
    for name, dataset in present.items():
        labels = dataset_labels(dataset, name)
        if name in both_classes:
            require_both_classes(labels, name)
    for name, dataset in present.items():
        check_finite_images(dataset, name)


def require_both_classes(labels: np.ndarray, split: str) -> None:
    """Raise :class:`OneClassSplitError` unless ``labels`` (0/1 [N]) hold both classes."""
    n_abnormal = int(labels.sum())
    if n_abnormal == 0 or n_abnormal == len(labels):
        raise OneClassSplitError(
            f"split {split!r} needs both normal (0) and abnormal (1) images: it holds {len(labels) - n_abnormal} "
            f"normal and {n_abnormal} abnormal (AUC, thresholds and the choices made on it compare the classes)")
