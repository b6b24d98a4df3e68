"""The MURA v1.1 loader and the paper's group-wise split.

MURA v1.1 (Rajpurkar et al. 2017) ships, inside a folder ``MURA-v1.1``::

    train_image_paths.csv      no header, one image per line:
                               MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    train_labeled_studies.csv  no header, one study per line: <study folder>/,<0|1>  (1 = abnormal)
    valid_image_paths.csv, valid_labeled_studies.csv
    train/ valid/  XR_<PART>/patientNNNNN/studyN_{positive,negative}/imageN.png

Labels are per study; every image inherits its study's label. The paper
groups images by **patient + body part** (:func:`mura_group_split`): a group
is ``normal`` (all images normal), ``abnormal`` (all abnormal) or ``mixed``
(both; counted as abnormal).

Policies (all errors name the offending file):

* Wrong root: :class:`FileNotFoundError` listing the four expected CSV files.
* Malformed CSV rows (wrong field count, label not exactly 0 or 1, a path that
  does not follow the layout above, duplicate studies with different labels,
  an image whose study has no label, an image listed twice, a body part not
  among MURA's seven, an image that is a hidden or system file such as
  ``._image1.png``): :class:`MuraFormatError` with the file, the line numbers
  and the offending text. An empty or non-UTF-8 CSV is malformed too.
* A study label that disagrees with its folder's ``_positive``/``_negative``
  suffix: the CSV label is used, one :class:`~salad_lite.data.io.DataWarning`
  gives the count.
* A labelled study with no image row: left out, one ``DataWarning`` gives the
  count and the first study.
* Listed images missing on disk: ``on_missing="drop"`` (default) removes them
  with one ``DataWarning`` giving the count and the first names;
  ``on_missing="raise"`` raises :class:`FileNotFoundError`. If *all* are missing
  the root is wrong: ``FileNotFoundError`` whatever the policy.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from salad_lite.data.base import OnMissing, XrayDataset, _check_index, drop_missing_files
from salad_lite.data.io import DataWarning, is_hidden_or_system, read_grayscale
from salad_lite.data.mura_preprocess import preprocess_mura_image
from salad_lite.data.splits import check_patient_disjoint, check_split_arguments
from salad_lite.data.transforms import resize_pad

__all__ = [
    "MURA",
    "MURA_FOLDER",
    "MURA_BODY_PARTS",
    "MuraFormatError",
    "find_mura_folder",
    "read_mura_metadata",
    "group_table",
    "mura_group_split",
]

MURA_FOLDER = "MURA-v1.1"
MURA_BODY_PARTS: tuple[str, ...] = ("ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST")
SplitFile = Literal["train", "valid"]

_STUDY_RE = re.compile(
    r"^(?:[^/]+/)?(?P<split>train|valid)/XR_(?P<part>[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+_(?P<suffix>positive|negative))/?$"
)
_IMAGE_RE = re.compile(
    r"^(?:[^/]+/)?(?P<split>train|valid)/XR_(?P<part>[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+_(?:positive|negative))/(?P<image>[^/]+\.(?:png|PNG|jpg|jpeg))$"
)


class MuraFormatError(ValueError):
    """A MURA CSV is empty, or has rows that do not follow the v1.1 format."""


def find_mura_folder(root: str | os.PathLike[str], split_files: Sequence[str] = ("train", "valid")) -> Path:
    """The folder holding the MURA CSVs: ``root`` itself or ``root / "MURA-v1.1"``.

    Raises:
        FileNotFoundError: neither holds ``<split>_image_paths.csv`` and
            ``<split>_labeled_studies.csv`` for every requested split; the
            message lists the files that were expected.
    """
    root = Path(root).expanduser()
    needed = [f"{s}_{kind}.csv" for s in split_files for kind in ("image_paths", "labeled_studies")]
    for folder in (root, root / MURA_FOLDER):
        if all((folder / name).is_file() for name in needed):
            return folder
    where = root / MURA_FOLDER if (root / MURA_FOLDER).is_dir() else root
    missing = [str(where / name) for name in needed if not (where / name).is_file()]
    raise FileNotFoundError(
        f"{root} is not a MURA v1.1 root: expected the files {', '.join(needed)} in {root} or in "
        f"{root / MURA_FOLDER}; missing: {', '.join(missing)}"
    )


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a CSV with their 1-based line numbers (BOM and whitespace stripped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise MuraFormatError(f"{path} is not UTF-8 text ({error})") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise MuraFormatError(f"{path} is empty")
    return lines


def _raise_bad(path: Path, bad: list[tuple[int, str, str]]) -> None:
    if bad:
        shown = "; ".join(f"line {n}: {text!r} ({why})" for n, text, why in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise MuraFormatError(f"{len(bad)} malformed row(s) in {path}: {shown}{more}")


_UNKNOWN_PART = "body part XR_{part} is not one of MURA's " + ", ".join(f"XR_{p}" for p in MURA_BODY_PARTS)


def _read_studies(path: Path, split: str) -> dict[str, int]:
    """``study key (split/XR_PART/patient/study) -> label`` from a ``*_labeled_studies.csv``."""
    studies: dict[str, int] = {}
    bad: list[tuple[int, str, str]] = []
    for n, line in _read_lines(path):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2:
            bad.append((n, line, f"expected 2 comma-separated fields, got {len(fields)}"))
            continue
        match = _STUDY_RE.match(fields[0])
        if match is None:
            bad.append((n, line, "study path does not look like <split>/XR_<PART>/patientN/studyN_<positive|negative>/"))
            continue
        if match["split"] != split:
            bad.append((n, line, f"study of split {match['split']!r} listed in the {split!r} file"))
            continue
        if match["part"] not in MURA_BODY_PARTS:
            bad.append((n, line, _UNKNOWN_PART.format(part=match["part"])))
            continue
        if fields[1] not in ("0", "1"):
            bad.append((n, line, f"label must be 0 or 1, got {fields[1]!r}"))
            continue
        key = f"{match['split']}/XR_{match['part']}/{match['patient']}/{match['study']}"
        label = int(fields[1])
        if key in studies and studies[key] != label:
            bad.append((n, line, "study listed twice with different labels"))
            continue
        studies[key] = label
    _raise_bad(path, bad)
    return studies


def read_mura_metadata(root: str | os.PathLike[str], split_files: Sequence[str] = ("train", "valid")) -> pd.DataFrame:
    """Parse the MURA CSVs into one row per listed image (files are not checked).

    Args:
        root: the ``MURA-v1.1`` folder or the folder containing it.
        split_files: which official files to read (``"train"``, ``"valid"``).

    Returns:
        DataFrame with columns ``path`` (relative to the ``MURA-v1.1`` folder,
        e.g. ``train/XR_WRIST/patient00001/study1_positive/image1.png``),
        ``label`` (the study label, 0/1), ``patient_id`` (``XR_WRIST/patient00001``:
        patient + body part, the paper's group), ``finding`` (``"abnormal"`` /
        ``"normal"``), ``patient``, ``body_part`` (``WRIST``), ``study``
        (``study1_positive``), ``study_id`` (``train/XR_WRIST/patient00001/study1_positive``),
        ``image`` (file name), ``source_split`` (``train``/``valid``),
        ``group_label`` (``normal`` / ``abnormal`` / ``mixed``). Row order = CSV order.

    Raises:
        FileNotFoundError: wrong root (see :func:`find_mura_folder`).
        MuraFormatError: malformed rows (see the module docstring).
    """
    unknown = [s for s in split_files if s not in ("train", "valid")]
    if unknown or not split_files:
        raise ValueError(f"split_files must be a non-empty subset of ('train', 'valid'), got {tuple(split_files)}")
    folder = find_mura_folder(root, split_files)
    rows: list[dict[str, object]] = []
    suffix_mismatch = 0
    unlisted: list[str] = []  # labelled studies without an image row
    for split in split_files:
        studies_csv = folder / f"{split}_labeled_studies.csv"
        images_csv = folder / f"{split}_image_paths.csv"
        studies = _read_studies(studies_csv, split)
        for key, label in studies.items():
            suffix_mismatch += int(key.endswith("_positive") != bool(label))
        bad: list[tuple[int, str, str]] = []
        first_line: dict[str, int] = {}  # image path -> the line that listed it first
        for n, line in _read_lines(images_csv):
            if "," in line:
                bad.append((n, line, "expected one path per line, found a comma"))
                continue
            match = _IMAGE_RE.match(line)
            if match is None:
                bad.append((n, line, "path does not look like <split>/XR_<PART>/patientN/studyN_<...>/<image>.png"))
                continue
            if match["split"] != split:
                bad.append((n, line, f"image of split {match['split']!r} listed in the {split!r} file"))
                continue
            if is_hidden_or_system(Path(match["image"])):
                bad.append((n, line, "a hidden or system file (e.g. macOS '._' metadata) is never an image"))
                continue
            study_id = f"{split}/XR_{match['part']}/{match['patient']}/{match['study']}"
            if study_id not in studies:
                bad.append((n, line, f"its study {study_id}/ has no label in {studies_csv.name}"))
                continue
            path = f"{study_id}/{match['image']}"
            if path in first_line:
                bad.append((n, line, f"image listed twice (first at line {first_line[path]})"))
                continue
            first_line[path] = n
            label = studies[study_id]
            rows.append({
                "path": path, "label": label,
                "patient_id": f"XR_{match['part']}/{match['patient']}",
                "finding": "abnormal" if label else "normal", "patient": match["patient"],
                "body_part": match["part"], "study": match["study"], "study_id": study_id,
                "image": match["image"], "source_split": split,
            })
        _raise_bad(images_csv, bad)
        listed = {path.rsplit("/", 1)[0] for path in first_line}
        unlisted += [f"{studies_csv}: {key}/" for key in studies if key not in listed]
    if suffix_mismatch:
        warnings.warn(
            f"{suffix_mismatch} MURA {'study has' if suffix_mismatch == 1 else 'studies have'} a CSV label that "
            "disagrees with the folder suffix (_positive/_negative); the CSV label was used", DataWarning,
            stacklevel=2)
    if unlisted:
        warnings.warn(f"{len(unlisted)} labelled MURA {'study has' if len(unlisted) == 1 else 'studies have'} no "
                      f"image in the image_paths CSV and {'is' if len(unlisted) == 1 else 'are'} left out, e.g. "
                      f"{unlisted[0]}", DataWarning, stacklevel=2)
    meta = pd.DataFrame(rows)
    meta["group_label"] = _group_labels(meta)
    return meta


def _group_labels(meta: pd.DataFrame, group_column: str = "patient_id") -> pd.Series:
    """Per row: its group's label, ``normal`` / ``abnormal`` / ``mixed``."""
    stats = meta.groupby(group_column)["label"].agg(["min", "max"])
    kind = np.where(stats["max"] == 0, "normal", np.where(stats["min"] == 1, "abnormal", "mixed"))
    return meta[group_column].map(pd.Series(kind, index=stats.index)).astype(object)


def group_table(metadata: pd.DataFrame, group_column: str = "patient_id") -> pd.DataFrame:
    """One row per group: ``images``, ``abnormal_images``, ``kind`` (normal / abnormal / mixed).

    Args:
        metadata: one row per image with ``label`` and ``group_column``.
        group_column: ``patient_id`` (patient + body part, the paper) or
            ``patient`` (no patient in two splits even across body parts).

    Raises:
        ValueError: ``metadata`` lacks ``label`` or ``group_column``.
    """
    for column in ("label", group_column):
        if column not in metadata.columns:
            raise ValueError(f"metadata lacks column {column!r}; it has {list(metadata.columns)}")
    grouped = metadata.groupby(metadata[group_column].astype(str), sort=True)["label"]
    table = pd.DataFrame({"images": grouped.size(), "abnormal_images": grouped.sum().astype(np.int64)})
    table["kind"] = np.where(table["abnormal_images"] == 0, "normal",
                             np.where(table["abnormal_images"] == table["images"], "abnormal", "mixed"))
    return table


def mura_group_split(
    metadata: pd.DataFrame,
    anomaly_ratio: float = 0.0,
    seed: int = 0,
    group_column: str = "patient_id",
    normal_train_fraction: float = 0.5,
    max_train: int = 0,
    reserve_ratio: float | None = None,
) -> dict[str, np.ndarray]:
    """The paper's MURA split, group-wise (patient + body part).

    1. Groups are labelled normal / abnormal / mixed (mixed counts as abnormal).
    2. Training: ``normal_train_fraction`` (50%) of the normal groups, shuffled
       with ``seed`` (fewer when ``max_train`` caps the normal images at
       ``max_train * (1 - AR)``), plus abnormal/mixed groups, in shuffled
       order, each added only if the share of abnormal images in training stays
       ``<= anomaly_ratio`` (AR). AR = 0 gives a purely normal training set.
    3. Every remaining group is held out: the remaining normal groups and the
       remaining abnormal/mixed groups are each divided in half (by group
       count, the odd one to test) between validation and test.

    Args:
        metadata: one row per image with ``label`` and ``group_column``.
        anomaly_ratio: AR in ``[0, 1)``.
        seed: shuffle seed.
        group_column: the grouping key (``patient_id`` = patient + body part as
            in the paper; ``patient`` keeps a patient's body parts together).
        normal_train_fraction: share of normal groups used for training.
        max_train: cap on training images (0 = none).
        reserve_ratio: ``None`` (default) = the rule above. Otherwise the
            held-out sets do not depend on the AR, for every AR up to
            ``reserve_ratio`` (Table 1's AR sweep on one test set): the abnormal
            groups that step 2 would add at ``max(AR, reserve_ratio)`` are
            reserved, the training split takes its abnormal groups from them at
            AR, and the reserved groups it does not take stay unused; the normal
            groups that ``max_train`` cuts from training stay unused too. When
            fewer than 2 abnormal groups would be held out, the missing ones are
            the last reserved groups, taken out of the reserve before any AR
            draws on it (without ``reserve_ratio`` they are the last abnormal
            groups of the AR's training split, so the held-out sets depend on AR).

    Returns:
        ``{"train", "val", "test"}`` -> sorted ``np.int64`` row positions.

    Raises:
        ValueError: bad arguments, or fewer than 3 normal groups / 2 abnormal groups.
        PatientLeakError: a group in two splits (checked by
            :func:`~salad_lite.data.splits.check_patient_disjoint`).
    """
    check_split_arguments(anomaly_ratio, max_train, seed, reserve_ratio, normal_train_fraction=normal_train_fraction)
    table = group_table(metadata, group_column)
    normal = table.index[table["kind"] == "normal"].to_numpy(dtype=object)
    abnormal = table.index[table["kind"] != "normal"].to_numpy(dtype=object)
    if len(normal) < 3:
        raise ValueError(f"mura_group_split: {len(normal)} normal group(s); need at least 3 (train, val, test)")
    if len(abnormal) < 2:
        raise ValueError(f"mura_group_split: {len(abnormal)} abnormal/mixed group(s); need at least 2 (val, test)")
    rng = np.random.default_rng(seed)
    normal = rng.permutation(normal)
    abnormal = rng.permutation(abnormal)

    n_train_normal = min(len(normal) - 2, max(1, int(round(normal_train_fraction * len(normal)))))

    def normal_training(ratio: float) -> list[object]:
        """The normal training groups: the first ``n_train_normal``, cut at ``max_train * (1 - ratio)`` images."""
        groups = list(normal[:n_train_normal])
        if max_train > 0:
            cap = max(1, int(np.floor(max_train * (1.0 - ratio))))
            cumulative = table.loc[groups, "images"].to_numpy().cumsum()
            groups = groups[: max(1, int(np.searchsorted(cumulative, cap, side="right")))]
        return groups

    def contaminate(candidates: Any, ratio: float, normal_groups: list[object]) -> tuple[list[object], list[object]]:
        """Add abnormal groups in order while the training split's abnormal share stays <= ratio."""
        n_images, n_abnormal = int(table.loc[normal_groups, "images"].sum()), 0
        chosen: list[object] = []
        rest: list[object] = []
        for group in candidates:
            add_images = int(table.at[group, "images"])
            add_abnormal = int(table.at[group, "abnormal_images"])
            fits = ratio > 0 and (n_abnormal + add_abnormal) <= ratio * (n_images + add_images) + 1e-9
            fits = fits and (max_train == 0 or n_images + add_images <= max_train)
            if fits:
                chosen.append(group)
                n_images += add_images
                n_abnormal += add_abnormal
            else:
                rest.append(group)
        return chosen, rest

    train_groups = normal_training(anomaly_ratio)
    if reserve_ratio is None:
        in_train = set(train_groups)
        held_normal = [g for g in normal if g not in in_train]
        contaminating, held_abnormal = contaminate(abnormal, anomaly_ratio, train_groups)
    else:
        held_normal = list(normal[n_train_normal:])
        reserve_ar = max(anomaly_ratio, reserve_ratio)
        reserved, held_abnormal = contaminate(abnormal, reserve_ar, normal_training(reserve_ar))
        if len(held_abnormal) < 2:  # keep two abnormal groups for validation and test: the reserve's last,
            n_move = 2 - len(held_abnormal)  # taken out before any AR draws on it, so no AR depends on them
            held_abnormal = reserved[-n_move:] + held_abnormal
            reserved = reserved[:-n_move]
        contaminating = contaminate(reserved, anomaly_ratio, train_groups)[0]
    train_groups += contaminating
    if len(held_abnormal) < 2:  # without reserve_ratio: keep two abnormal groups for validation and test
        moved = [g for g in train_groups if table.at[g, "kind"] != "normal"][-(2 - len(held_abnormal)):]
        train_groups = [g for g in train_groups if g not in set(moved)]
        held_abnormal = moved + held_abnormal

    val_groups: list[object] = []
    test_groups: list[object] = []
    for pool in (held_normal, held_abnormal):
        half = len(pool) // 2
        val_groups += list(pool[:half])
        test_groups += list(pool[half:])

    keys = metadata[group_column].astype(str).to_numpy()
    result: dict[str, np.ndarray] = {}
    for name, groups in (("train", train_groups), ("val", val_groups), ("test", test_groups)):
        result[name] = np.flatnonzero(np.isin(keys, np.asarray(groups, dtype=object))).astype(np.int64)
    check_patient_disjoint({name: keys[rows] for name, rows in result.items()})
    return result


class MURA(XrayDataset):
    """MURA v1.1 radiographs as sample dicts (see DESIGN.md).

    Args:
        root: the ``MURA-v1.1`` folder or its parent.
        split_files: official files to read: ``("train", "valid")`` (all images,
            for the paper's own split) or one of them.
        image_size: side ``S`` of the square output, pixels.
        preprocess: ``"pipeline"`` (default): the paper's pipeline
            (:func:`~salad_lite.data.mura_preprocess.preprocess_mura_image`,
            with each image's body part); ``"resize"`` / ``None``: only resize
            the major axis to ``S`` and zero-pad; or any callable
            ``uint8 [H, W] -> uint8 [h, w]`` (then resized and padded).
        body_parts: keep only these parts (``"WRIST"`` or ``"XR_WRIST"``).
        on_missing: ``"drop"`` (warn once with the count) or ``"raise"``.

    ``dataset[i]`` is ``{"image": FloatTensor[1, S, S] in [0, 1], "label",
    "index", "patient_id", "finding"}``; ``dataset.metadata`` holds the columns
    of :func:`read_mura_metadata`.

    Raises:
        FileNotFoundError: wrong root (the expected CSV files are listed), or
            listed images missing (all of them, or any with ``on_missing="raise"``).
        MuraFormatError: malformed CSV rows (file, lines and text named).
        ValueError: unknown body part, no image of the requested parts, or a
            bad ``preprocess``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split_files: Sequence[SplitFile] = ("train", "valid"),
        image_size: int = 512,
        preprocess: Literal["pipeline", "resize"] | Callable[[np.ndarray], np.ndarray] | None = "pipeline",
        body_parts: Sequence[str] | None = None,
        on_missing: OnMissing = "drop",
    ) -> None:
        folder = find_mura_folder(root, split_files)
        meta = read_mura_metadata(folder, split_files)
        if body_parts is not None:
            wanted = {p.upper().removeprefix("XR_") for p in body_parts}
            unknown = wanted - set(MURA_BODY_PARTS)
            if unknown:
                raise ValueError(f"unknown body part(s) {sorted(unknown)}; MURA has {MURA_BODY_PARTS}")
            meta = meta[meta["body_part"].isin(wanted)].reset_index(drop=True)
            if meta.empty:
                raise ValueError(f"no image of body part(s) {sorted(wanted)} in {folder}")
        exists = np.array([(folder / p).is_file() for p in meta["path"]], dtype=bool)
        meta = drop_missing_files(meta, exists, on_missing, source=f"{folder}/*_image_paths.csv")
        meta["group_label"] = _group_labels(meta)
        self.use_pipeline = preprocess == "pipeline"
        if preprocess == "pipeline":
            fn: Callable[[np.ndarray], np.ndarray] | None = _MuraPipeline(int(image_size))
        elif preprocess in ("resize", None):
            fn = None
        elif callable(preprocess):
            fn = preprocess
        else:
            raise ValueError(f"preprocess must be 'pipeline', 'resize', None or a callable, got {preprocess!r}")
        super().__init__(meta, image_size=image_size, root=folder, preprocess=fn)
        self.folder = folder
        self.split_files = tuple(split_files)
        #: Pipeline fallbacks counted over the images loaded so far (shared by subsets):
        #: ``processed``, ``no_carrier`` (whole image used), ``mask_fallback`` (no mask applied).
        self.fallback_counts = {"processed": 0, "no_carrier": 0, "mask_fallback": 0}
        self._stats_lock = threading.Lock()

    def load_image(self, i: int) -> np.ndarray:
        """Item ``i`` as ``uint8 [S, S]`` (read, preprocess, resize + pad)."""
        if not self.use_pipeline:
            return super().load_image(i)
        i = _check_index(i, len(self))
        path = self.image_path(i)
        part = str(self._metadata.at[i, "body_part"])
        image = read_grayscale(path)
        out, steps = preprocess_mura_image(image, size=self.image_size, body_part=part, return_steps=True)
        with self._stats_lock:
            self.fallback_counts["processed"] += 1
            self.fallback_counts["no_carrier"] += int(not steps["carrier_found"])
            self.fallback_counts["mask_fallback"] += int(steps["mask_fallback"])
        return out if out.shape == (self.image_size, self.image_size) else resize_pad(out, self.image_size)


class _MuraPipeline:
    """``preprocess_mura_image`` bound to a size (named in cache keys)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return preprocess_mura_image(image, size=self.size)

    def __repr__(self) -> str:
        return f"MuraPipeline(size={self.size})"
