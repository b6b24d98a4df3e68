"""Published splits: a CSV that names each image's split, checked against the dataset it is applied to.

A split file has one row per image and two columns, the image and its split::

    image,split
    images/00000001_000.png,train
    00000003_001.png,test

Accepted headers (compared ignoring case, spaces, ``-`` and ``_``):

* image column: ``image``, ``path``, ``file``, ``filename``, ``image_index``
  (NIH's ``Image Index``), ``image_path``, ``image_id``, ``img``;
* split column: ``split``, ``subset``, ``set``, ``partition``, ``fold``.

A file without a header is read as ``image,split`` when its first row's second
cell is a split name. Extra columns (a label, a patient id) are ignored: labels
and patients always come from the dataset itself.

Split names (ignoring case): ``train`` / ``training``; ``val`` / ``valid`` /
``validation`` / ``dev``; ``test`` / ``testing``. All three splits must appear.

An image matches a dataset image (the ``path`` column of its metadata, relative
to the dataset root, e.g. ``images/00000001_000.png`` on NIH) when it is that
path, that path under extra leading folders (``MURA-v1.1/train/...`` as MURA's
own CSVs write it), or the file name alone when no two dataset images share it
(``00000001_000.png``, as NIH's ``Image Index`` and the Tang et al. lists write it).
Dataset images the file does not name are left out of every split, with one
:class:`~salad_lite.data.io.DataWarning` counting them and naming the first few.

Checked, each failure a :class:`SplitFileError` (or :class:`~salad_lite.data.splits.PatientLeakError`)
naming the file: the header, empty cells, unknown split names, duplicated
images, images missing from the dataset (the first few named, all counted), and
patients in two splits (:func:`~salad_lite.data.splits.check_patient_disjoint`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from salad_lite.data.base import read_text_csv, without_trailing_unnamed
from salad_lite.data.io import DataWarning
from salad_lite.data.splits import PatientLeakError, check_patient_disjoint

__all__ = ["IMAGE_COLUMNS", "SPLIT_COLUMNS", "SPLIT_NAMES", "SplitFileError", "read_split_file", "split_from_file",
           "split_positions"]

#: Accepted image-column headers (normalised: lower case, no spaces, ``-`` or ``_``).
IMAGE_COLUMNS: tuple[str, ...] = ("image", "path", "file", "filename", "imageindex", "imagepath", "imageid", "img")
#: Accepted split-column headers (normalised as :data:`IMAGE_COLUMNS`).
SPLIT_COLUMNS: tuple[str, ...] = ("split", "subset", "set", "partition", "fold")
#: Split name as written (lower case) -> the package's split name.
SPLIT_NAMES: dict[str, str] = {"train": "train", "training": "train", "val": "val", "valid": "val",
                               "validation": "val", "dev": "val", "test": "test", "testing": "test"}
_SHOWN = 5  # how many offending entries a message names


class SplitFileError(ValueError):
    """A split file is malformed or does not fit the dataset (the message names the file)."""


def _key(header: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(header).strip().lower())


def _first(items: list[str]) -> str:
    return ", ".join(repr(i) for i in items[:_SHOWN]) + (" ..." if len(items) > _SHOWN else "")


def _column(table: pd.DataFrame, accepted: tuple[str, ...], what: str, path: Path) -> str:
    found = [c for c in table.columns if _key(c) in accepted]
    if len(found) != 1:
        problem = "no" if not found else f"{len(found)} ({found}); need exactly one"
        raise SplitFileError(f"split file {path}: {problem} {what} column; the header is {list(table.columns)}, "
                             f"accepted {what} headers: {', '.join(accepted)} (ignoring case, spaces, - and _)")
    return found[0]


def read_split_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check a split file (format: module docstring).

    Returns:
        DataFrame with columns ``image`` (posix path text as written, stripped),
        ``split`` (``train`` / ``val`` / ``test``) and ``line`` (1-based line in the file).

    Raises:
        FileNotFoundError: the file does not exist.
        salad_lite.files.CorruptFileError: it cannot be parsed as CSV.
        SplitFileError: no image or split column; an empty cell; an unknown split
            name; an image listed twice; a split of train / val / test absent.
    """
    path = Path(path)
    table = read_text_csv(path, what="split file")
    first_line = 2
    named = without_trailing_unnamed([str(c) for c in table.columns])  # lines ending in commas too
    if len(named) == 2 and _key(named[0]) not in IMAGE_COLUMNS \
            and named[1].strip().lower() in SPLIT_NAMES:  # no header: the first row is data
        extra = [f"Unnamed: {i}" for i in range(2, table.shape[1])]
        table = read_text_csv(path, what="split file", header=None, names=["image", "split", *extra])
        first_line = 1
    if table.empty:
        raise SplitFileError(f"split file {path} lists no image")
    image_col = _column(table, IMAGE_COLUMNS, "image", path)
    split_col = _column(table, SPLIT_COLUMNS, "split", path)
    images = table[image_col].str.strip().str.replace("\\", "/", regex=False)
    names = table[split_col].str.strip().str.lower()
    lines = np.arange(len(table)) + first_line
    for column, values in ((image_col, images), (split_col, names)):
        empty = np.flatnonzero((values == "").to_numpy())
        if len(empty):
            raise SplitFileError(f"split file {path}: column {column!r} is empty on {len(empty)} line(s), "
                                 f"first lines {lines[empty][:_SHOWN].tolist()}")
    unknown = ~names.isin(list(SPLIT_NAMES))
    if unknown.any():
        bad = sorted(set(table[split_col][unknown]))
        raise SplitFileError(f"split file {path}: unknown split name(s) {_first(bad)} on {int(unknown.sum())} "
                             f"line(s), first line {lines[unknown.to_numpy()][0]}; accepted: "
                             f"{', '.join(SPLIT_NAMES)} (ignoring case)")
    duplicated = images.duplicated(keep=False).to_numpy()
    if duplicated.any():
        twice = sorted(set(images[duplicated]))
        raise SplitFileError(f"split file {path}: {len(twice)} image(s) listed more than once: {_first(twice)} "
                             f"(first on lines {lines[duplicated][:_SHOWN].tolist()})")
    result = pd.DataFrame({"image": images.to_numpy(object), "split": names.map(SPLIT_NAMES).to_numpy(object),
                           "line": lines})
    absent = [s for s in ("train", "val", "test") if s not in set(result["split"])]
    if absent:
        raise SplitFileError(f"split file {path} names no image of split(s) {absent}; it needs train, val and test")
    return result


def _match(entries: pd.Series, paths: pd.Series) -> np.ndarray:
    """Row of ``paths`` that each entry names (-1: none); matching rules in the module docstring."""
    by_path = {str(PurePosixPath(p)): row for row, p in enumerate(paths)}
    names = pd.Series([PurePosixPath(p).name for p in paths])
    unique_names = names[~names.duplicated(keep=False)]
    by_name = dict(zip(unique_names.to_numpy(), unique_names.index.to_numpy()))
    rows = np.full(len(entries), -1, dtype=np.int64)
    for i, entry in enumerate(entries):
        parts = PurePosixPath(entry).parts
        for start in range(len(parts)):  # the path itself, then without its leading folders
            row = by_path.get("/".join(parts[start:]))
            if row is not None:
                rows[i] = row
                break
        else:
            if len(parts) == 1:
                rows[i] = by_name.get(parts[0], -1)
    return rows


def split_positions(table: pd.DataFrame, metadata: pd.DataFrame, source: str = "split file") -> dict[str, np.ndarray]:
    """Apply a split read by :func:`read_split_file` to a dataset's metadata.

    Args:
        table: the split file's rows (``image``, ``split``, ``line``).
        metadata: the dataset's metadata (``path``, ``patient_id``; row i = item i).
        source: the file, for messages.

    Returns:
        ``{"train", "val", "test"}`` -> sorted ``np.int64`` row positions into ``metadata``.
        Dataset images the file does not name are in no split; one
        :class:`~salad_lite.data.io.DataWarning` counts them and names the first few.

    Raises:
        SplitFileError: an image the file names is not in the dataset (the first
            few named, all counted), or two entries name the same dataset image.
        PatientLeakError: a patient has images in two splits (the file named).
    """
    rows = _match(table["image"], metadata["path"].astype(str))
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        names = table["image"].to_numpy()[missing].tolist()
        raise SplitFileError(
            f"{source}: {len(missing)} of its {len(table)} image(s) are not in the dataset ({len(metadata)} images; "
            f"missing on disk, dropped as unreadable, or another view or subset): {_first(names)}")
    seen = pd.Series(rows).duplicated(keep=False).to_numpy()
    if seen.any():
        raise SplitFileError(f"{source}: lines {table['line'].to_numpy()[seen][:_SHOWN].tolist()} name the same "
                             f"dataset image(s) {_first(sorted(set(metadata['path'].to_numpy()[rows[seen]])))}")
    result = {name: np.sort(rows[(table["split"] == name).to_numpy()]) for name in ("train", "val", "test")}
    unused = np.setdiff1d(np.arange(len(metadata)), rows)
    if len(unused):
        warnings.warn(f"{source}: {len(unused)} of the dataset's {len(metadata)} images are in no split (the file "
                      f"names {len(table)}) and are left unused: "
                      f"{_first(metadata['path'].astype(str).to_numpy()[unused].tolist())}", DataWarning, stacklevel=2)
    patients = metadata["patient_id"].astype(str).to_numpy()
    try:
        check_patient_disjoint({name: patients[positions] for name, positions in result.items()})
    except PatientLeakError as error:
        raise PatientLeakError(f"{source}: {error}") from None
    return result


def split_from_file(path: str | os.PathLike[str]) -> Callable[[pd.DataFrame], Mapping[str, np.ndarray]]:
    """A split function (metadata -> split name -> row positions) that applies the split file ``path``.

    The file is read and checked now (a malformed file fails before any image
    is read); its fit to the dataset is checked on each call (:func:`split_positions`).

    Raises:
        FileNotFoundError, salad_lite.files.CorruptFileError, SplitFileError: as :func:`read_split_file`.
    """
    table = read_split_file(path)
    source = f"split file {path}"

    def apply(metadata: pd.DataFrame) -> dict[str, np.ndarray]:
        return split_positions(table, metadata, source)

    return apply
