"""Patient-wise one-class splits and the patient-leak check.

:func:`one_class_split` follows the protocol of Tang et al. (2019) used by the
paper on NIH: training holds normal images only (plus, with an anomaly ratio
AR > 0, a controlled share of abnormal images), validation and test are mixed
normal/abnormal, roughly balanced, and no patient appears in two splits.
Every split function calls :func:`check_patient_disjoint` before returning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from salad_lite.utils import check_seed, is_int, is_number

__all__ = ["MissingPatientIdError", "PatientLeakError", "check_patient_disjoint", "check_split_arguments",
           "one_class_split", "patient_id_text", "patient_ids_of", "patient_key"]


class PatientLeakError(ValueError):
    """The same patient appears in two splits."""


class MissingPatientIdError(ValueError):
    """A patient id is missing (None, NaN, empty) or not an id (inf); the message names the split and position."""


def patient_id_text(value: Any, split: str = "split", position: int | None = None) -> str:
    """One patient id as the text every comparison uses.

    The rule (the same for hand-made splits, metadata tables and CSV text):
    surrounding whitespace is stripped (``"train-0 "`` is ``"train-0"``); an
    integer-valued number becomes its integer text (``7``, ``7.0`` and
    ``np.float32(7)`` are ``"7"``, like the text ``"7"``); other numbers are
    ``str(value)``; text is kept as written otherwise (``"0007"``, ``"None"``
    and ``"nan"`` are ids). A missing id (``None``, NaN, ``pd.NA``, an empty or
    blank text) or an infinite number is an error: it would merge unrelated
    images into one patient.

    Args:
        value: the id as found.
        split: the split or table, for the message.
        position: the item's position, for the message.

    Raises:
        MissingPatientIdError: ``value`` is missing or infinite (split, position and value named).
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
    elif value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        text = ""
    elif isinstance(value, (float, np.floating)):
        finite = bool(np.isfinite(value))  # NaN was caught above: this refuses inf
        text = "" if not finite else str(int(value)) if float(value).is_integer() else str(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        text = str(int(value))
    else:
        text = str(value).strip()
    if not text:
        where = f" at position {position}" if position is not None else ""
        raise MissingPatientIdError(
            f"split {split!r}: patient id{where} is {value!r}, not an id; every image needs its patient's id "
            "(a missing id would merge unrelated images into one patient)")
    return text


def patient_key(text: str) -> str:
    """The key that groups and compares patients: a purely numeric id loses its leading zeros.

    ``"03140"``, ``"003140"`` and ``"3140"`` are one patient (``"000"`` is ``"0"``):
    a number written with or without zero padding (NIH file names pad patient
    numbers to 8 digits, spreadsheets drop the zeros) must not put one patient
    into two splits. Any other text is its own key (``"p0007"``, ``"XR_HAND/patient00001"``,
    ``"7a"``). The ids shown and stored stay as written (:func:`patient_id_text`);
    only the split and the leak check use this key. Merging ids this way can
    only make splits coarser, never leak.

    Args:
        text: an id as returned by :func:`patient_id_text`.

    Returns:
        The key (``str``).
    """
    if text.isascii() and text.isdigit():
        return text.lstrip("0") or "0"
    return text


def patient_ids_of(split: Any, name: str = "split") -> list[str]:
    """The patient ids of one split, as str, in item order.

    Args:
        split: a dataset with ``.metadata["patient_id"]`` (every salad_lite
            dataset, and the test helpers' array datasets), a dataset with
            ``.patient_ids``, a ``torch.utils.data.Subset`` of either, or the ids
            themselves (list, tuple, numpy array, pandas Series, set).
        name: the split's name, for the message.

    Every id goes through :func:`patient_id_text` (stripped, ``7.0`` is
    ``"7"``, a missing id refused).

    Raises:
        TypeError: ``split`` is a string, or a dataset without patient ids
            (the message names the split and its type).
        MissingPatientIdError: an id is missing (the split and position named).
    """
    if isinstance(split, (str, bytes)):
        raise TypeError(f"split {name!r}: expected a dataset or a sequence of patient ids, got the string {split!r}")
    metadata = getattr(split, "metadata", None)
    if isinstance(metadata, pd.DataFrame) and "patient_id" in metadata.columns:
        return _id_texts(metadata["patient_id"].to_numpy(), name)
    ids = getattr(split, "patient_ids", None)
    if ids is not None and not callable(ids):
        return _id_texts(ids, name)
    parent, indices = getattr(split, "dataset", None), getattr(split, "indices", None)
    if parent is not None and indices is not None:  # torch.utils.data.Subset
        parent_ids = patient_ids_of(parent, name)
        return [parent_ids[int(i)] for i in indices]
    plain = isinstance(split, (list, tuple, set, frozenset, np.ndarray, pd.Series, pd.Index))
    if plain or (isinstance(split, Iterable) and not hasattr(split, "__getitem__")):
        return _id_texts(split, name)
    raise TypeError(
        f"split {name!r} is a {type(split).__name__} without patient ids "
        "(.metadata['patient_id'] or .patient_ids); pass a dataset or a sequence of patient ids"
    )


def _id_texts(ids: Iterable[Any], name: str) -> list[str]:
    """:func:`patient_id_text` of every id, positions counted from 0."""
    return [patient_id_text(value, name, position) for position, value in enumerate(ids)]


def check_patient_disjoint(splits: Mapping[str, Any]) -> None:
    """Raise :class:`PatientLeakError` if any patient id occurs in two splits.

    Args:
        splits: split name -> that split's patients: a dataset (anything with
            ``.metadata["patient_id"]`` or ``.patient_ids``, or a
            ``torch.utils.data.Subset`` of one) or the patient ids themselves
            (repeats allowed; ids are compared by :func:`patient_key` of the
            text of :func:`patient_id_text`: ``"0007"`` is patient ``"7"``).
            See :func:`patient_ids_of`.

    Raises:
        PatientLeakError: names every pair of splits that share patients, how
            many they share and the first few ids.
        TypeError: a split is neither a dataset with patient ids nor a sequence of ids.
        MissingPatientIdError: an id is missing (split and position named).
    """
    written: dict[str, dict[str, str]] = {}  # split -> patient key -> the id as first written there
    for name, ids in splits.items():
        keys: dict[str, str] = {}
        for text in patient_ids_of(ids, name):
            keys.setdefault(patient_key(text), text)
        written[name] = keys
    names = list(written)
    leaks = []
    for a_pos, a in enumerate(names):
        for b in names[a_pos + 1 :]:
            shared = written[a].keys() & written[b].keys()
            if shared:
                first = sorted(written[a][key] if written[a][key] == written[b][key]
                               else f"{written[a][key]} (written {written[b][key]!r} in {b!r})"
                               for key in shared)[:5]
                leaks.append(f"{len(shared)} patient(s) appear in both {a!r} and {b!r}: {first}"
                             + (" ..." if len(shared) > 5 else ""))
    if leaks:
        raise PatientLeakError("; ".join(leaks) + " (a patient's images must all be in one split)")


def _take_until(order: np.ndarray, counts: pd.Series, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Split patients in ``order`` into (first, rest): first = shortest prefix with >= target images."""
    if target <= 0:
        return order[:0], order
    cumulative = counts.loc[order].to_numpy().cumsum()
    cut = int(np.searchsorted(cumulative, target, side="left")) + 1
    return order[:cut], order[cut:]


def _rows(metadata: pd.DataFrame, patients: np.ndarray, label: int | None = None) -> np.ndarray:
    mask = metadata["patient_id"].isin(set(patients)).to_numpy()
    if label is not None:
        mask = mask & (metadata["label"].to_numpy() == label)
    return np.flatnonzero(mask).astype(np.int64)


def check_split_arguments(anomaly_ratio: float, max_train: int, seed: int = 0, reserve_ratio: float | None = None,
                          **fractions: float) -> None:
    """Raise ``ValueError`` naming the bad value.

    AR and ``reserve_ratio`` (None = unused) are numbers in [0, 1), each fraction a
    number in (0, 1) (NaN is none of these), ``max_train`` an int >= 0 and ``seed``
    an int in NumPy's range (:func:`salad_lite.utils.check_seed`).
    """
    ranges = {"anomaly_ratio": (anomaly_ratio, True),
              **({} if reserve_ratio is None else {"reserve_ratio": (reserve_ratio, True)}),
              **{name: (value, False) for name, value in fractions.items()}}
    for name, (value, closed_at_0) in ranges.items():
        if not is_number(value) or not (0.0 <= value < 1.0 if closed_at_0 else 0.0 < value < 1.0):
            raise ValueError(f"{name} must be a number in {'[' if closed_at_0 else '('}0, 1), got {value!r}")
    if not is_int(max_train) or max_train < 0:
        raise ValueError(f"max_train must be an int >= 0 (0 = no cap), got {max_train!r} ({type(max_train).__name__})")
    check_seed(seed)


def one_class_split(
    metadata: pd.DataFrame,
    anomaly_ratio: float = 0.0,
    val_fraction: float = 0.5,
    seed: int = 0,
    max_train: int = 0,
    reserve_ratio: float | None = None,
) -> dict[str, np.ndarray]:
    """Patient-wise one-class split (Tang et al. 2019 style).

    Args:
        metadata: one row per image with ``label`` (0/1) and ``patient_id``.
        anomaly_ratio: AR, the share of ABNORMAL images in the training split
            (0 <= AR < 1): ``n_abnormal_train / n_train == AR`` up to rounding.
        val_fraction: share of the held-out patients that go to validation
            (by image count); the rest is the test split.
        seed: random seed of the patient shuffles.
        max_train: cap on the number of training images (0 = no cap).
        reserve_ratio: reserve abnormal patients as for this AR (at least
            ``anomaly_ratio``); ``None`` = ``anomaly_ratio``. The held-out sets
            then do not depend on the AR: every AR up to ``reserve_ratio`` gets the
            same validation and test images (Table 1's AR sweep on one test set).

    Returns:
        ``{"train", "val", "test"}`` -> sorted ``np.int64`` row positions into
        ``metadata``.

    The rule, by patient (patients are grouped by :func:`patient_key`:
    ``"03140"`` and ``"3140"`` are one patient, ordered by their ids as written, so
    a set whose ids are written one way splits as it always did; a patient with any abnormal image is an abnormal
    patient; all images of a patient go to one split; the two groups of
    patients are shuffled with ``seed``):

    1. With AR > 0 (or a ``reserve_ratio`` > 0), the first abnormal patients are
       reserved for training, enough for the largest possible training set at
       ``max(AR, reserve_ratio)``.
    2. Held-out: the remaining abnormal patients and normal-only patients (taken
       from the first half of the normal-only images) are trimmed, whole
       patients in shuffled order, so that held-out normal images (including
       the normal images of abnormal patients) about equal held-out abnormal
       images; validation and test are therefore roughly balanced. Each pool is
       divided ``val_fraction`` / rest between validation and test.
    3. Training: all other normal-only patients (cut at ``max_train * (1 - AR)``
       images) plus exactly ``round(AR / (1 - AR) * n_normal_train)`` abnormal
       images of the reserved patients (only their abnormal images).

    Images of trimmed or unneeded reserved patients are left unused. Without
    contamination (AR = 0) the held-out sets do not depend on ``max_train``.

    Raises:
        ValueError: a class is missing, there are too few patients for every
            split to hold both classes, or an argument is out of range.
        LabelError: a label is not 0/1 (row and value named).
        MissingPatientIdError: a patient id is missing (row named).
        PatientLeakError: never expected; checked before returning.
    """
    check_split_arguments(anomaly_ratio, max_train, seed, reserve_ratio, val_fraction=val_fraction)
    reserve_ar = anomaly_ratio if reserve_ratio is None else max(anomaly_ratio, reserve_ratio)
    for column in ("label", "patient_id"):
        if column not in metadata.columns:
            raise ValueError(f"metadata lacks column {column!r}; it has {list(metadata.columns)}")
    from salad_lite.data.base import parse_binary_labels  # base imports this module

    texts = _id_texts(metadata["patient_id"], "one_class_split metadata")
    written: dict[str, str] = {}  # patient key -> the smallest spelling: consistently written ids split as before
    for text in texts:
        key = patient_key(text)
        written[key] = min(written.get(key, text), text)
    meta = pd.DataFrame({"label": parse_binary_labels(metadata["label"].tolist(), "one_class_split metadata"),
                         "patient_id": [written[patient_key(text)] for text in texts]})
    n_normal_images = int((meta["label"] == 0).sum())
    n_abnormal_images = int((meta["label"] == 1).sum())
    if n_normal_images == 0:
        raise ValueError("one_class_split: no normal images (label 0): a one-class split needs normal training data")
    if n_abnormal_images == 0:
        raise ValueError("one_class_split: no abnormal images (label 1): validation and test need both classes")

    per_patient = meta.groupby("patient_id", sort=True)["label"]
    is_abnormal_patient = per_patient.max() == 1
    normal_patients = np.asarray(is_abnormal_patient.index[~is_abnormal_patient.to_numpy()], dtype=object)
    abnormal_patients = np.asarray(is_abnormal_patient.index[is_abnormal_patient.to_numpy()], dtype=object)
    if len(normal_patients) < 3:
        raise ValueError(
            f"one_class_split: {len(normal_patients)} patient(s) with only normal images; need at least 3 "
            "(train, validation and test each need one)"
        )
    if len(abnormal_patients) < 2 + (reserve_ar > 0):
        raise ValueError(
            f"one_class_split: {len(abnormal_patients)} patient(s) with abnormal images; need at least "
            f"{2 + (reserve_ar > 0)} (validation and test{' and training' if reserve_ar > 0 else ''})"
        )
    images_per_patient = per_patient.size()
    abnormal_per_patient = per_patient.sum()

    rng = np.random.default_rng(seed)
    normal_order = rng.permutation(normal_patients)
    abnormal_order = rng.permutation(abnormal_patients)

    normal_total = int(images_per_patient.loc[normal_patients].sum())
    normal_cap = normal_total if max_train == 0 else max(1, int(np.floor(max_train * (1.0 - anomaly_ratio))))
    ratio = anomaly_ratio / (1.0 - anomaly_ratio)  # abnormal per normal training image

    # 1. reserve abnormal patients for contamination, enough for the largest possible training set at reserve_ar
    reserve_cap = normal_total if max_train == 0 else max(1, int(np.floor(max_train * (1.0 - reserve_ar))))
    reserve = int(round(reserve_ar / (1.0 - reserve_ar) * min(reserve_cap, normal_total)))
    contaminating, held_abnormal = _take_until(abnormal_order, abnormal_per_patient, reserve)
    if len(held_abnormal) < 2:
        raise ValueError(
            f"one_class_split: anomaly_ratio={reserve_ar} needs up to {reserve} abnormal training images, "
            f"leaving fewer than 2 abnormal patients for validation and test; lower the anomaly ratio or the cap on "
            "training images"
        )

    # 2. held-out: balance the classes (counting the normal images of abnormal patients
    #    too) using at most the first half of the normal-only images; whole patients,
    #    at least two per pool (one for validation, one for test)
    held_normal_candidates, _ = _take_until(normal_order, images_per_patient, normal_total / 2)
    if len(normal_order) - len(held_normal_candidates) < 1 or len(held_normal_candidates) < 2:
        held_normal_candidates = normal_order[:2]  # >= 3 normal-only patients: one stays for training
    abnormal_cum = abnormal_per_patient.loc[held_abnormal].to_numpy().cumsum()
    normal_in_abnormal_cum = (images_per_patient - abnormal_per_patient).loc[held_abnormal].to_numpy().cumsum()
    candidates_total = int(images_per_patient.loc[held_normal_candidates].sum())
    needed = abnormal_cum - normal_in_abnormal_cum  # normal-only images that balance each prefix
    n_abnormal_kept = max(2, int(np.searchsorted(needed, candidates_total, side="right")))
    held_abnormal = held_abnormal[:n_abnormal_kept]
    normal_needed = max(0, int(needed[n_abnormal_kept - 1]))
    n_held_normal = max(2, len(_take_until(held_normal_candidates, images_per_patient, normal_needed)[0]))
    held_normal = held_normal_candidates[:n_held_normal]

    # 3. training: every other normal-only patient (up to the cap) ...
    train_pool = normal_order[n_held_normal:]
    counts = images_per_patient.loc[train_pool].to_numpy().cumsum()
    train_pool = train_pool[: max(1, int(np.searchsorted(counts, normal_cap, side="right")))]
    train_rows = _rows(meta, train_pool)
    # ... plus exactly round(AR / (1 - AR) * n_normal_train) abnormal images
    n_abnormal_train = int(round(ratio * len(train_rows)))
    if n_abnormal_train > 0:
        candidates = _rows(meta, contaminating, label=1)
        # in patient order; the last patient may contribute only part of its abnormal images
        by_patient_order = {p: k for k, p in enumerate(contaminating)}
        rank = np.array([by_patient_order[p] for p in meta["patient_id"].to_numpy()[candidates]])
        candidates = candidates[np.argsort(rank, kind="stable")][:n_abnormal_train]
        train_rows = np.concatenate([train_rows, np.sort(candidates)])

    splits: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    for pool, counts in ((held_normal, images_per_patient), (held_abnormal, abnormal_per_patient)):
        total = int(counts.loc[pool].sum())
        val_part, test_part = _take_until(pool, counts, val_fraction * total)
        if len(test_part) == 0:  # keep one patient of each class for the test split
            val_part, test_part = pool[:-1], pool[-1:]
        if len(val_part) == 0:
            val_part, test_part = pool[:1], pool[1:]
        splits["val"].append(_rows(meta, val_part))
        splits["test"].append(_rows(meta, test_part))

    result = {
        "train": np.sort(train_rows).astype(np.int64),
        "val": np.sort(np.concatenate(splits["val"])).astype(np.int64),
        "test": np.sort(np.concatenate(splits["test"])).astype(np.int64),
    }
    for name in ("val", "test"):
        present = set(meta["label"].to_numpy()[result[name]].tolist())
        if present != {0, 1}:
            raise ValueError(f"one_class_split: split {name!r} lacks a class (labels present: {sorted(present)})")
    pids = meta["patient_id"].to_numpy()
    check_patient_disjoint({name: pids[rows] for name, rows in result.items()})
    return result
