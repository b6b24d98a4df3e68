"""Dataset classes shared by every loader: lazy files, an in-memory cache, subsets.

Every dataset follows the contract of DESIGN.md::

    dataset[i] -> {"image": FloatTensor[1, S, S] in [0, 1], "label": int (0 normal,
                   1 abnormal), "index": i, "patient_id": str, "finding": str}

and exposes ``.metadata`` (a DataFrame, row ``i`` aligned with item ``i``, with
at least the columns ``path``, ``label``, ``patient_id``, ``finding``),
``.labels`` (``np.int64 [N]``) and ``.patient_ids`` (``object [N]`` of str).

* :class:`XrayDataset` reads each file when it is indexed
  (:func:`~salad_lite.data.io.read_grayscale`, an optional dataset-specific
  ``preprocess``, then :func:`~salad_lite.data.transforms.resize_pad`).
* :class:`CachedXrayDataset` holds the preprocessed images as one ``uint8``
  array ``[N, S, S]`` in memory. :meth:`CachedXrayDataset.from_dataset` builds it
  from an :class:`XrayDataset` (with a progress bar) and caches it on disk as
  ``<name>.npy`` + ``<name>.csv`` (metadata) + ``<name>.json`` (a key: hash of
  the source file list with labels, image size, preprocessing); a cache whose
  key differs is stale and rebuilt.
* :func:`subset` returns a view of the same type on some rows; the metadata is
  renumbered ``0..n-1`` and gains an ``orig_index`` column.

Unreadable images while building a cache: ``on_error="raise"`` (default) stops
with :class:`~salad_lite.data.io.ImageReadError` naming the file;
``on_error="skip"`` drops them and emits ONE :class:`~salad_lite.data.io.DataWarning`
giving their count and the first few file names.

Labels are parsed strictly (:func:`parse_binary_labels`): 0 / 1 (also written
``0.0`` / ``1.0``) and nothing else; any other value is a :class:`LabelError`
naming the file or table, the row and the value. Text columns (``path``,
``patient_id``, ``finding``) stay text: ``0007`` stays ``0007`` and ``NA`` stays
``NA``.

Cache files are written atomically (:mod:`salad_lite.files`), the JSON key
last, and all-or-nothing: a write that fails (an exception, Ctrl-C) removes the
files it moved into place and a ``_cache`` folder it created, and a file-system
error names the file. A build first deletes the temporary files a killed build
of the same cache left (``.<name>.npy.building.partial`` and the like). With
``check=`` (what :func:`~salad_lite.data.registry.cached_splits` passes: the
split) the metadata of the images actually read is checked before anything is
committed, so a set that cannot be split once unreadable images are skipped
leaves no file behind. A cache whose key differs is rebuilt; a cache file that cannot be read
(corrupt JSON, a damaged ``.npy`` or ``.csv``) is a
:class:`~salad_lite.files.CorruptFileError` naming the file: delete it to rebuild.
"""

from __future__ import annotations

import copy
import functools
import glob
import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from salad_lite.data.io import DataWarning, ImageReadError, read_grayscale
from salad_lite.data.splits import patient_id_text
from salad_lite.data.transforms import resize_pad, to_tensor
from salad_lite.files import TEMP_SUFFIX, CorruptFileError, atomic_write, read_json, write_json_atomic

__all__ = [
    "REQUIRED_COLUMNS",
    "LabelError",
    "Preprocess",
    "XrayDataset",
    "CachedXrayDataset",
    "subset",
    "normalise_metadata",
    "drop_missing_files",
    "parse_binary_labels",
    "label_error",
    "cell_text",
    "refuse_duplicate_files",
    "read_text_csv",
    "without_trailing_unnamed",
    "text_to_numbers",
    "CACHE_FORMAT_VERSION",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id", "finding")
CACHE_FORMAT_VERSION = 1
#: Number columns of the loaders' metadata, converted explicitly when a cached table is read back.
_INTEGER_COLUMNS = ("label", "orig_index")
_NUMBER_COLUMNS = ("follow_up", "age")
_LABEL_TEXT = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}

#: A dataset-specific step applied to the raw ``uint8 [H, W]`` image; it returns a
#: ``uint8`` 2-D array of any size, which is then resized and padded to ``[S, S]``.
Preprocess = Callable[[np.ndarray], np.ndarray]
OnError = Literal["raise", "skip"]
OnMissing = Literal["drop", "raise"]


class LabelError(ValueError):
    """A label that is not understood; the message names the file (or table), the rows and the values."""


def label_error(
    source: str, rows: Sequence[int], values: Sequence[Any], expected: str, first_line: int | None = None
) -> LabelError:
    """The :class:`LabelError` for labels not understood, naming ``source``, the rows and the values.

    Args:
        source: the file (or a description of the table) the labels came from.
        rows: 0-based data rows of the bad values.
        values: the values as found (shown with ``repr``), aligned with ``rows``.
        expected: what a label may be (for the message).
        first_line: the file line of data row 0 (2 for a CSV with a header);
            None for a table that is not a file.
    """
    where = [f"row {r}" + (f" (line {r + first_line})" if first_line is not None else "") for r in rows]
    shown = "; ".join(f"{w}: {v!r}" for w, v in zip(where[:5], values[:5]))
    more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
    return LabelError(f"{source}: {len(rows)} label(s) not understood, {expected}: {shown}{more}")


def parse_binary_labels(values: Iterable[Any], source: str, first_line: int | None = None) -> np.ndarray:
    """Labels as ``np.int64 [N]`` of 0 (normal) / 1 (abnormal), parsed strictly.

    Accepted: the integers 0 and 1 (Python or numpy, not bool), the floats 0.0
    and 1.0, and the texts ``"0"``, ``"1"``, ``"0.0"``, ``"1.0"`` (surrounding
    spaces ignored). Anything else (``2``, ``-1``, ``"yes"``, ``""``, NaN,
    ``True``) is not understood.

    Args:
        values: one label per row.
        source: the file or table, for the message.
        first_line: file line of the first value (see :func:`label_error`).

    Raises:
        LabelError: a value is not understood; the message names ``source``,
            the rows (and lines) and the values.
    """
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iu":  # fast path, same rule
        outside = np.flatnonzero((values != 0) & (values != 1))
        if len(outside) == 0:
            return values.astype(np.int64)
    items = list(values)
    out = np.zeros(len(items), dtype=np.int64)
    bad_rows: list[int] = []
    for row, value in enumerate(items):
        label: int | None = None
        if isinstance(value, str):
            label = _LABEL_TEXT.get(value.strip())
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            label = int(value) if value in (0, 1) else None
        elif isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
            label = int(value)
        if label is None:
            bad_rows.append(row)
        else:
            out[row] = label
    if bad_rows:
        raise label_error(source, bad_rows, [items[r] for r in bad_rows], "expected 0 (normal) or 1 (abnormal)",
                          first_line)
    return out


def read_text_csv(path: str | os.PathLike[str], what: str = "CSV file", **kwargs: Any) -> pd.DataFrame:
    """Read a CSV with every cell as text: ids like ``0007`` and findings like ``NA`` or ``2.0`` stay as written.

    Empty cells become ``""`` (never NaN). Numeric columns are converted by the
    caller, explicitly. ``kwargs`` go to :func:`pandas.read_csv` (``usecols``, ``header``...).

    A row with more fields than the header (an unquoted comma inside a cell)
    is an error naming its line: pandas would otherwise shift every column of
    the file when the first data row has the extra field (taking it as an
    index), and the message would blame a later column. A row with fewer
    fields than the header (a truncated last line, a cell forgotten) is an
    error naming its line too: pandas would fill the missing cells with ``""``.
    Unnamed columns at the end of the header (a header line ending in a comma)
    are optional: a row may leave them out.
    Blank lines are skipped, as pandas does.

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptFileError: pandas cannot parse it, or a row has more or fewer
            fields than the header (the message names the file and the lines).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    kwargs.setdefault("index_col", False)  # never take an extra first field as the index
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as error:
        hint = {pd.errors.ParserError: "; a cell holding a comma must be quoted",
                pd.errors.EmptyDataError: "; the file holds no header line",
                UnicodeDecodeError: "; save it as UTF-8 text"}.get(type(error), "")
        raise CorruptFileError(f"{what} {path} cannot be read as CSV ({type(error).__name__}: "
                               f"{str(error).strip()}{hint})") from None
    n_columns = len(table.columns)
    for warning in caught:
        if issubclass(warning.category, pd.errors.ParserWarning) and "does not match" in str(warning.message):
            more, _ = _field_count_lines(path, n_columns, kwargs)
            raise CorruptFileError(f"{what} {path}: {_lines_text(more)} have more fields than the {n_columns} "
                                   f"columns {list(table.columns)} (an unquoted comma inside a cell? quote such cells)")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if n_columns > 1 and len(table) and "usecols" not in kwargs:
        names = [str(name) for name in table.columns]
        unnamed = len(names) - len(without_trailing_unnamed(names))  # a header ending in commas: optional cells
        _, fewer = _field_count_lines(path, n_columns - unnamed, kwargs)
        if fewer:
            raise CorruptFileError(f"{what} {path}: {_lines_text(fewer)} have fewer fields than the "
                                   f"{n_columns - unnamed} named columns {names[:n_columns - unnamed]} (a truncated "
                                   "line, or a cell left out? an empty cell still needs its comma)")
    return table


def without_trailing_unnamed(names: list[str]) -> list[str]:
    """``names`` without the unnamed columns pandas makes of a header's trailing commas (``Unnamed: 11``)."""
    while names and names[-1].startswith("Unnamed: "):
        names = names[:-1]
    return names


def _field_count_lines(path: Path, n_columns: int, kwargs: dict[str, Any]) -> tuple[list[int], list[int]]:
    """The lines of ``path`` with more, and with fewer, than ``n_columns`` fields (read again with the csv
    module; blank lines are skipped, as pandas does)."""
    import csv
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    more: list[int] = []
    fewer: list[int] = []
    skip = 0 if kwargs.get("header", "infer") is None else 1
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not row:
                continue
            if skip:  # the header
                skip -= 1
                continue
            if len(row) > n_columns:
                more.append(reader.line_num)
            elif len(row) < n_columns:
                fewer.append(reader.line_num)
    return more, fewer


def _lines_text(lines: list[int]) -> str:
    """``"2 line(s) (3, 7)"``: a count and the first few line numbers."""
    shown = ", ".join(map(str, lines[:5])) + (" ..." if len(lines) > 5 else "")
    return f"{len(lines)} line(s) ({shown})"


def normalise_metadata(metadata: pd.DataFrame, source: str = "metadata table") -> pd.DataFrame:
    """Check and clean a metadata table: required columns, 0/1 labels, string ids.

    Args:
        metadata: one row per image (see the module docstring).
        source: names the table in messages (a file name when it was read from one).

    Returns:
        A copy with a fresh ``RangeIndex``; ``label`` as int64, ``path``,
        ``patient_id`` and ``finding`` as Python str (a missing finding becomes
        ""; patient ids follow :func:`~salad_lite.data.splits.patient_id_text`:
        stripped, ``7.0`` is ``"7"``). Extra columns are kept.

    Raises:
        TypeError: ``metadata`` is not a DataFrame.
        ValueError: a required column is missing, or a path is empty.
        MissingPatientIdError: a patient id is missing (None, NaN, blank; row named).
        LabelError: a label is not 0/1 (:func:`parse_binary_labels`).
    """
    if not isinstance(metadata, pd.DataFrame):
        raise TypeError(f"metadata must be a pandas DataFrame, got {type(metadata).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in metadata.columns]
    if missing:
        raise ValueError(
            f"metadata lacks required column(s) {missing}; it has {list(metadata.columns)}"
        )
    meta = metadata.reset_index(drop=True).copy()
    meta["label"] = parse_binary_labels(meta["label"].tolist(), source)
    meta["finding"] = meta["finding"].fillna("")
    for column in ("path", "finding"):
        meta[column] = meta[column].map(cell_text).astype(object)
    meta["patient_id"] = pd.Series(
        [patient_id_text(value, source, row) for row, value in enumerate(meta["patient_id"].tolist())],
        dtype=object)
    empty = meta["path"] == ""
    if empty.any():
        rows = list(np.flatnonzero(empty.to_numpy())[:5])
        raise ValueError(f"{source}: column 'path' is empty in rows {rows}")
    return meta


def refuse_duplicate_files(
    paths: Sequence[str],
    source: str,
    root: str | os.PathLike[str] | None = None,
    first_line: int | None = None,
) -> None:
    """Refuse a file list that names one file twice (whatever the labels of the two rows).

    Two entries are the same file when their real paths are equal (``root /
    path``, links resolved: ``./a.png``, ``sub/../a.png`` and a link to
    ``a.png`` are ``a.png``); without ``root`` the texts are compared after
    normalising ``./``, ``..`` and ``\\``.

    Args:
        paths: one path per row (relative to ``root``, or absolute).
        source: the manifest, CSV or folder, for the message.
        root: the folder relative paths start from; None compares the texts.
        first_line: file line of row 0 (2 below a header); None for a listing.

    Raises:
        ValueError: a file is listed more than once; the message names the
            source, the file, and its rows (and lines) for the first few.
    """
    if root is None:
        keys = [os.path.normpath(str(p).replace("\\", "/")) for p in paths]
    else:
        base = Path(root)
        keys = [os.path.normcase(os.path.realpath(base / p)) for p in paths]
    rows_of: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        rows_of.setdefault(key, []).append(row)
    twice = [rows for rows in rows_of.values() if len(rows) > 1]
    if not twice:
        return

    def where(row: int) -> str:
        return f"row {row}" + (f" (line {row + first_line})" if first_line is not None else "") + f" {paths[row]!r}"

    shown = "; ".join(", ".join(where(r) for r in rows) for rows in twice[:3])
    raise ValueError(f"{source}: {len(twice)} file(s) listed more than once (an image must be listed once, with one "
                     f"label): {shown}" + (" ..." if len(twice) > 3 else ""))


def drop_missing_files(
    metadata: pd.DataFrame,
    exists: np.ndarray,
    on_missing: OnMissing = "drop",
    source: str = "the metadata",
    hint: str = "",
) -> pd.DataFrame:
    """Apply the missing-file policy shared by the loaders.

    Args:
        metadata: one row per listed image.
        exists: boolean ``[N]``, True where the listed file is on disk.
        on_missing: ``"drop"`` removes the missing rows with ONE
            :class:`DataWarning` giving their count and the first few names;
            ``"raise"`` raises :class:`FileNotFoundError` on any missing file.
        source: text naming where the list came from (used in messages).
        hint: text appended to every message (e.g. that the files exist under
            another letter case); "" for none.

    Returns:
        The rows whose file exists, index reset.

    Raises:
        FileNotFoundError: every listed file is missing (whatever the policy),
            or any is missing with ``on_missing="raise"``.
    """
    if on_missing not in ("drop", "raise"):
        raise ValueError(f"on_missing must be 'drop' or 'raise', got {on_missing!r}")
    exists = np.asarray(exists, dtype=bool)
    if exists.shape != (len(metadata),):
        raise ValueError(f"exists must have shape ({len(metadata)},), got {exists.shape}")
    n_missing = int((~exists).sum())
    if n_missing == 0:
        return metadata.reset_index(drop=True)
    names = metadata["path"].to_numpy()[~exists][:3].tolist() if "path" in metadata else []
    first = ", ".join(map(str, names)) + (", ..." if n_missing > 3 else "")
    if n_missing == len(metadata):
        raise FileNotFoundError(
            f"none of the {len(metadata)} images listed in {source} exist on disk "
            f"(first expected: {first}); is the root folder right?{hint}"
        )
    if on_missing == "raise":
        raise FileNotFoundError(f"{n_missing} of {len(metadata)} images listed in {source} are missing: {first}{hint}")
    warnings.warn(
        f"dropped {n_missing} of {len(metadata)} images listed in {source} that are missing on disk "
        f"(policy on_missing='drop'): {first}{hint}",
        DataWarning,
        stacklevel=3,
    )
    return metadata.loc[exists].reset_index(drop=True)


def cell_text(value: Any) -> str:
    """The text a CSV cell would hold: strings stay, None / NaN / ``pd.NA`` become "", whole floats lose the ".0"."""
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _resolve_indices(n: int, indices: Iterable[int] | np.ndarray) -> np.ndarray:
    """Validated int64 positions from a sequence of ints or a boolean mask of length ``n``."""
    idx = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices))
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"a boolean mask must have shape ({n},), got {idx.shape}")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be a 1-D sequence of ints, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    out_of_range = (idx < 0) | (idx >= n)
    if out_of_range.any():
        raise IndexError(f"subset indices {idx[out_of_range][:5].tolist()} out of range for {n} items")
    return idx


def _subset_metadata(metadata: pd.DataFrame, idx: np.ndarray) -> pd.DataFrame:
    """Rows ``idx`` (validated positions) of ``metadata``, renumbered 0..n-1, with ``orig_index``.

    ``orig_index`` is the row in the ROOT dataset: subsets of subsets compose.
    """
    meta = metadata.iloc[idx].copy()
    if "orig_index" in metadata.columns:
        meta["orig_index"] = metadata["orig_index"].to_numpy(np.int64)[idx]
    else:
        meta["orig_index"] = idx
    return meta.reset_index(drop=True)


def _check_index(i: int, n: int) -> int:
    if isinstance(i, torch.Tensor):
        i = int(i.item())
    if not isinstance(i, (int, np.integer)):
        raise TypeError(f"dataset index must be an int, got {type(i).__name__}")
    i = int(i)
    if i < -n or i >= n:
        raise IndexError(f"index {i} out of range for a dataset of {n} items")
    return i + n if i < 0 else i


class _XrayBase(Dataset):
    """Metadata accessors shared by the lazy and the cached dataset."""

    _metadata: pd.DataFrame
    image_size: int

    @property
    def metadata(self) -> pd.DataFrame:
        """Row ``i`` describes item ``i`` (treat as read-only)."""
        return self._metadata

    @property
    def labels(self) -> np.ndarray:
        """``np.int64 [N]``: 0 normal, 1 abnormal."""
        return self._metadata["label"].to_numpy(np.int64)

    @property
    def patient_ids(self) -> np.ndarray:
        """``object [N]`` of str patient ids."""
        return self._metadata["patient_id"].to_numpy(object)

    def __len__(self) -> int:
        return len(self._metadata)

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels, patient ids, findings) as arrays, rebuilt when ``_metadata`` is replaced."""
        cached = self.__dict__.get("_column_cache")
        if cached is None or cached[0] is not self._metadata:
            meta = self._metadata
            cached = (meta, meta["label"].to_numpy(np.int64), meta["patient_id"].to_numpy(object),
                      meta["finding"].to_numpy(object))
            self._column_cache = cached
        return cached[1], cached[2], cached[3]

    def _sample(self, i: int, image: np.ndarray) -> dict[str, Any]:
        labels, patients, findings = self._columns()
        return {
            "image": to_tensor(image),  # [1, S, S] float32 in [0, 1]
            "label": int(labels[i]),
            "index": i,
            "patient_id": str(patients[i]),
            "finding": str(findings[i]),
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = _check_index(i, len(self))
        return self._sample(i, self.load_image(i))

    def load_image(self, i: int) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def select(self, indices: Iterable[int] | np.ndarray):
        """A dataset of the same type holding rows ``indices`` (see :func:`subset`)."""
        idx = _resolve_indices(len(self), indices)
        view = copy.copy(self)
        view._metadata = _subset_metadata(self._metadata, idx)
        return view

    def __repr__(self) -> str:
        counts = np.bincount(self.labels, minlength=2) if len(self) else np.zeros(2, int)
        return (
            f"{type(self).__name__}(n={len(self)}, normal={counts[0]}, abnormal={counts[1]}, "
            f"patients={self._metadata['patient_id'].nunique()}, image_size={self.image_size})"
        )


class XrayDataset(_XrayBase):
    """Radiographs read lazily from files listed in a metadata table.

    Args:
        metadata: DataFrame with at least ``path`` (relative to ``root`` or
            absolute), ``label`` (0/1), ``patient_id``, ``finding``.
        image_size: side ``S`` of the square images returned, in pixels.
        root: folder the relative paths start from (None: paths as given).
        preprocess: optional ``uint8 [H, W] -> uint8 [h, w]`` step applied after
            reading (e.g. the MURA segmentation); its output is then resized and
            zero-padded to ``[S, S]`` unless it already has that shape.

    ``dataset[i]["image"]`` is a ``FloatTensor [1, S, S]`` in ``[0, 1]``.

    Raises:
        ValueError: ``image_size`` <= 0, or the metadata fails
            :func:`normalise_metadata` (missing column, empty id).
        LabelError: a label is not 0/1.
        ImageReadError: (when an item is read) the file is missing or unreadable.
    """

    def __init__(
        self,
        metadata: pd.DataFrame,
        image_size: int,
        root: str | os.PathLike[str] | None = None,
        preprocess: Preprocess | None = None,
    ) -> None:
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.root = Path(root) if root not in (None, "") else None
        self.preprocess = preprocess
        self._metadata = normalise_metadata(metadata)

    def image_path(self, i: int) -> Path:
        """The file behind item ``i``."""
        return self._resolve(self._metadata.at[_check_index(i, len(self)), "path"])

    def image_paths(self) -> list[Path]:
        """The files behind every item, in row order."""
        return [self._resolve(path) for path in self._metadata["path"]]

    def _resolve(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() or self.root is None else self.root / path

    def load_image(self, i: int) -> np.ndarray:
        """Item ``i`` as ``uint8 [S, S]`` (read, preprocess, resize + pad).

        Raises:
            IndexError: ``i`` out of range.
            ImageReadError: the file is missing or unreadable (named).
            ValueError: ``preprocess`` returned something that is not a uint8 2-D array.
        """
        path = self.image_path(i)
        image = read_grayscale(path)
        if self.preprocess is not None:
            image = np.asarray(self.preprocess(image))
            if image.ndim != 2 or image.dtype != np.uint8:
                raise ValueError(
                    f"preprocess {_describe_callable(self.preprocess)} returned shape {image.shape} "
                    f"dtype {image.dtype} for {path}; expected a uint8 2-D array"
                )
        if image.shape != (self.image_size, self.image_size):
            image = resize_pad(image, self.image_size)
        return image

    def cache_key(self) -> dict[str, Any]:
        """What a cache of this dataset depends on (stored in the cache's JSON)."""
        root = str(self.root.resolve()) if self.root is not None else ""
        digest = hashlib.sha256()
        digest.update(root.encode())
        for path, label, patient, finding in zip(
            self._metadata["path"], self._metadata["label"], self._metadata["patient_id"],
            self._metadata["finding"],
        ):
            digest.update(f"\n{path}\t{label}\t{patient}\t{finding}".encode())
        return {
            "format": CACHE_FORMAT_VERSION,
            "image_size": self.image_size,
            "num_sources": len(self),
            "sources_sha256": digest.hexdigest(),
            "root": root,
            "preprocess": _describe_callable(self.preprocess),
        }


def _describe_callable(fn: Callable[..., Any] | None) -> str:
    """A stable text naming a preprocessing function (and bound arguments of a partial)."""
    if fn is None:
        return "none"
    if isinstance(fn, functools.partial):
        args = ", ".join([repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in sorted(fn.keywords.items())])
        return f"{_describe_callable(fn.func)}({args})"
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


def _file_stamps(dataset: XrayDataset) -> list[str | None]:
    """``"<size in bytes>:<mtime in ns>"`` of each source file (row order), None where it is missing."""
    stamps: list[str | None] = []
    for path in dataset.image_paths():
        try:
            stat = path.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append(f"{stat.st_size}:{stat.st_mtime_ns}")
    return stamps


def _sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _changed_files(stored: Any, current: list[str | None]) -> int:
    """How many source files differ from the stamps stored with a cache (a missing file is not counted)."""
    if not isinstance(stored, list) or len(stored) != len(current):
        return len(current)
    return sum(now is not None and now != then for then, now in zip(stored, current))


class CachedXrayDataset(_XrayBase):
    """The same contract as :class:`XrayDataset`, backed by a ``uint8 [N, S, S]`` array.

    Args:
        images: ``uint8 [N, S, S]`` preprocessed images (kept, not copied).
        metadata: aligned table (row i describes ``images[i]``), as for XrayDataset.
        root: where the source files live (informational).

    Raises:
        ValueError: ``images`` is not ``uint8 [N, S, S]`` square, or its length
            differs from the metadata's; the metadata fails :func:`normalise_metadata`.
        LabelError: a label is not 0/1.
    """

    def __init__(
        self,
        images: np.ndarray,
        metadata: pd.DataFrame,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(
                f"images must be a uint8 array [N, S, S]; got shape {getattr(images, 'shape', None)} "
                f"dtype {getattr(images, 'dtype', None)}"
            )
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be square, got shape {images.shape}")
        meta = normalise_metadata(metadata)
        if len(meta) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(meta)} metadata rows")
        self._images = images
        self._metadata = meta
        self.image_size = int(images.shape[1])
        self.root = Path(root) if root not in (None, "") else None

    @property
    def images(self) -> np.ndarray:
        """``uint8 [N, S, S]`` (``to_tensor(ds.images)`` gives ``[N, 1, S, S]`` in [0, 1])."""
        return self._images

    def load_image(self, i: int) -> np.ndarray:
        """Item ``i`` as ``uint8 [S, S]``."""
        return self._images[_check_index(i, len(self))]

    def select(self, indices: Iterable[int] | np.ndarray) -> CachedXrayDataset:
        """A cached dataset on rows ``indices`` (images copied, metadata renumbered)."""
        idx = _resolve_indices(len(self), indices)
        view = copy.copy(self)
        view._metadata = _subset_metadata(self._metadata, idx)
        view._images = np.ascontiguousarray(self._images[idx])  # [n, S, S]
        return view

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dataset(
        cls,
        dataset: XrayDataset,
        cache_dir: str | os.PathLike[str] | None = None,
        name: str = "dataset",
        progress: bool = True,
        on_error: OnError = "raise",
        workers: int = 1,
        rebuild: bool = False,
        mmap: bool = False,
        check: Callable[[pd.DataFrame], object] | None = None,
    ) -> CachedXrayDataset:
        """Load every image of ``dataset`` into memory, reusing an on-disk cache when valid.

        Args:
            dataset: the lazy dataset to materialise.
            cache_dir: folder for ``<name>.npy/.csv/.json``; None keeps it in memory only.
            name: file stem of the cache.
            progress: show a tqdm bar while reading.
            on_error: ``"raise"`` (stop at the first unreadable file) or ``"skip"``
                (drop unreadable files, one :class:`DataWarning` with the count).
            workers: reading threads (Pillow releases the GIL while decoding).
            rebuild: ignore an existing cache.
            mmap: memory-map the cached ``.npy`` read-only instead of loading it.
            check: called with the metadata of the images read (skipped ones
                dropped) before a newly built cache is written; whatever it
                raises propagates and nothing of this build stays on disk. Not
                called when a fresh cache is reused (check its result yourself).

        Returns:
            A :class:`CachedXrayDataset` whose images are ``uint8 [N', S, S]``
            (``N' = N`` minus skipped files).

        The cache is stale (and rebuilt) when its JSON key differs from
        ``dataset.cache_key()``, i.e. when the file list, labels, patient ids,
        findings, root, image size or preprocessing changed, and also when a
        source file's size or modification time differs from the one recorded
        at build time (a file replaced or repaired in place, one skipped as
        unreadable and since fixed). A source file that is gone does not make the
        cache stale: the cache serves without its sources.

        Raises:
            ValueError: ``on_error`` is neither ``"raise"`` nor ``"skip"``, or the
                cache name is not a plain file stem.
            ImageReadError: an image cannot be read (``on_error="raise"``), or
                none can (either policy).
            CorruptFileError: an existing cache file cannot be read, or its
                metadata CSV was edited after the cache was written (named;
                delete it to rebuild).
            OSError: the cache cannot be written (the file named; nothing of
                this build is left).
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        key = dataset.cache_key()
        files = _cache_files(cache_dir, name) if cache_dir is not None else None
        stamps = _file_stamps(dataset) if files is not None else []
        if files is not None and not rebuild:
            cached = _load_if_fresh(files, key, stamps, on_error, mmap, dataset.root)
            if cached is not None:
                return cached
        folder_created = files is not None and not files["npy"].parent.exists()
        try:
            built, keep, skipped = _build(dataset, files, progress, on_error, workers)
            meta = dataset.metadata.iloc[keep].reset_index(drop=True)
            if skipped:
                _warn_skipped(skipped, len(dataset))
            if check is not None:
                check(meta)
            if files is None:
                assert isinstance(built, np.ndarray)
                return cls(built, meta, root=dataset.root)
            _save_cache(files, Path(built), meta, key, stamps, skipped)
        except BaseException:
            if files is not None:
                _remove_cache_temps(files)
                if folder_created:
                    _remove_if_empty(files["npy"].parent)
            raise
        images = _load_npy(files["npy"], mmap)
        return cls(images, meta, root=dataset.root)

    @classmethod
    def load(
        cls, cache_dir: str | os.PathLike[str], name: str = "dataset", mmap: bool = False
    ) -> CachedXrayDataset:
        """Open an existing cache without checking its key.

        Raises:
            FileNotFoundError: the ``.npy`` or ``.csv`` file is missing.
            CorruptFileError: a cache file cannot be read (named).
            LabelError: a cached label is not 0/1 (file, row and value named).
        """
        files = _cache_files(cache_dir, name)
        for kind in ("npy", "csv"):
            if not files[kind].is_file():
                raise FileNotFoundError(f"no cache file {files[kind]}")
        images = _load_npy(files["npy"], mmap)
        return cls(images, _read_metadata_csv(files["csv"]))


def subset(dataset: Any, indices: Iterable[int] | np.ndarray) -> Any:
    """A dataset of the same type restricted to ``indices`` (positions or a boolean mask).

    The metadata is reindexed so item ``j`` of the result is row ``indices[j]``
    of ``dataset``; its ``index`` field is renumbered ``0..n-1`` and the column
    ``orig_index`` keeps the row in the root dataset (subsets of subsets compose).

    Raises:
        TypeError: ``dataset`` has no ``.select`` (not a salad_lite dataset).
        IndexError: an index is out of range.
        ValueError: ``indices`` is neither 1-D ints nor a boolean mask of length N.
    """
    select = getattr(dataset, "select", None)
    if select is None:
        raise TypeError(f"subset() needs a salad_lite dataset with .select(), got {type(dataset).__name__}")
    return select(indices)


# ---------------------------------------------------------------------- cache helpers
def _cache_files(cache_dir: str | os.PathLike[str], name: str) -> dict[str, Path]:
    if not name or any(sep in name for sep in ("/", "\\")):
        raise ValueError(f"cache name must be a plain file stem, got {name!r}")
    folder = Path(cache_dir)
    return {kind: folder / f"{name}.{kind}" for kind in ("npy", "csv", "json")}


def _read_metadata_csv(path: Path) -> pd.DataFrame:
    """Read a cached metadata CSV: text stays text ("NA" stays "NA", "0007" stays "0007"), numbers converted explicitly.

    Raises:
        CorruptFileError: the file cannot be parsed, or a number column holds a
            value that is not a number (file, column, row and value named).
        LabelError: a label is not 0/1 (file, row, line and value named).
    """
    table = read_text_csv(path, what="cached metadata")
    if "label" in table.columns:
        table["label"] = parse_binary_labels(table["label"].tolist(), str(path), first_line=2)
    for column in _INTEGER_COLUMNS[1:] + _NUMBER_COLUMNS:
        if column not in table.columns:
            continue
        numbers, bad = text_to_numbers(table[column], required=column in _INTEGER_COLUMNS)
        if len(bad):
            raise CorruptFileError(
                f"cached metadata {path}: column {column!r} holds non-numbers in rows {bad[:3].tolist()} "
                f"({table[column].iloc[bad[:3]].tolist()}); delete the cache to rebuild"
            )
        table[column] = numbers
    return table


def text_to_numbers(text: pd.Series, required: bool = False) -> tuple[pd.Series, np.ndarray]:
    """Convert a text column to numbers explicitly; returns (numbers, positions of values that are not numbers).

    Empty cells become NaN (an error position when ``required``); ``NaN``,
    ``inf`` and other texts that are not finite numbers are error positions.
    The result is int64 when every value is a whole number and none is
    missing, else float64.
    """
    stripped = text.astype(str).str.strip()
    empty = (stripped == "").to_numpy()
    numbers = pd.to_numeric(stripped.mask(empty, np.nan), errors="coerce")
    infinite = np.isinf(numbers.to_numpy(np.float64))  # "inf" is no more a number here than "NaN"
    bad = (numbers.isna().to_numpy() & (~empty | required)) | infinite
    return (numbers.mask(infinite, np.nan) if infinite.any() else numbers), np.flatnonzero(bad)


def _load_if_fresh(
    files: dict[str, Path], key: dict[str, Any], stamps: list[str | None], on_error: str, mmap: bool,
    root: Path | None,
) -> CachedXrayDataset | None:
    """The cached dataset when its key equals ``key`` and no source file changed since the build
    (``stamps``, as :func:`_file_stamps`); None when absent, stale or built skipping files.

    Raises:
        CorruptFileError: a cache file exists but cannot be read, or its metadata CSV was
            changed after the cache was written (named).
    """
    if not all(f.is_file() for f in files.values()):
        return None
    info = read_json(files["json"], what="cache key")
    if not isinstance(info, dict):
        raise CorruptFileError(f"cache key {files['json']} is not a JSON object; delete it to rebuild")
    if info.get("key") != key:
        log.info("cache %s is stale (key changed): rebuilding", files["npy"])
        return None
    if "metadata_sha256" not in info:  # written before the metadata was hashed
        log.info("cache %s has no metadata hash: rebuilding", files["npy"])
        return None
    if info["metadata_sha256"] != _sha256_of(files["csv"]):
        raise CorruptFileError(f"cache metadata {files['csv']} differs from the one written with the cache "
                               f"(edited by hand?); delete {files['json']} to rebuild the cache from the images")
    changed = _changed_files(info.get("stamps"), stamps)
    if changed:
        log.info("cache %s is stale (%d source files changed since it was built): rebuilding", files["npy"], changed)
        return None
    skipped = list(info.get("skipped", []))
    if skipped and on_error == "raise":
        log.info("cache %s was built skipping %d files; on_error='raise': rebuilding", files["npy"], len(skipped))
        return None
    images = _load_npy(files["npy"], mmap)
    meta = _read_metadata_csv(files["csv"])
    try:
        dataset = CachedXrayDataset(images, meta, root=root)
    except ValueError as error:
        raise CorruptFileError(
            f"cache {files['npy']} does not match its metadata {files['csv']} ({error}); delete them to rebuild"
        ) from None
    if dataset.image_size != key["image_size"]:
        return None
    if skipped:
        _warn_skipped(skipped, key["num_sources"])
    return dataset


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    """``np.load`` naming the file when it is damaged (truncated, not an array, a pickle).

    Raises:
        CorruptFileError: the file is not a readable ``.npy`` array.
    """
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise CorruptFileError(f"cache {path} is not a readable .npy array ({error}); delete it to rebuild") from None


def _save_cache(
    files: dict[str, Path], built_npy: Path, meta: pd.DataFrame, key: dict[str, Any],
    stamps: list[str | None], skipped: list[str],
) -> None:
    """Move the built ``.npy`` in place, write the csv, then the JSON key last (it marks a complete cache).

    All-or-nothing: on any exception (Ctrl-C included) the files this call put
    in place are removed, so no ``.npy`` is left without its key; every write
    goes through :mod:`salad_lite.files` (no temporary file is left either).

    Raises:
        OSError: a cache file cannot be written or moved into place; the
            message names it (same errno, so the subclass is kept).
    """
    placed: list[Path] = []
    current = files["json"]
    try:
        files["json"].unlink(missing_ok=True)  # an interrupted rewrite must not look fresh
        current = files["npy"]
        os.replace(built_npy, files["npy"])
        placed.append(files["npy"])
        current = files["csv"]
        with atomic_write(files["csv"], "w") as handle:
            meta.to_csv(handle, index=False, lineterminator="\n")
        placed.append(files["csv"])
        current = files["json"]
        write_json_atomic(files["json"], {"key": key, "num_images": len(meta), "skipped": skipped,
                                          "metadata_sha256": _sha256_of(files["csv"]), "stamps": stamps},
                          indent=1)
    except BaseException as error:
        for path in placed:
            path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _named_os_error(error, current, "cannot write image cache file") from error
        raise


def _named_os_error(error: OSError, path: Path, doing: str) -> OSError:
    """``error`` again (same errno, hence the same subclass), its message naming ``path``."""
    reason = error.strerror or str(error)
    return OSError(error.errno, f"{doing} {path}: {reason}") if error.errno else OSError(f"{doing} {path}: {reason}")


def _cache_temps(files: dict[str, Path]) -> list[Path]:
    """The temporary files of this cache in its folder: ``.<name>.npy.building.partial``, ``.<name>.csv.*.partial``..."""
    folder = files["npy"].parent
    if not folder.is_dir():
        return []
    return sorted(path for target in files.values()
                  for path in folder.glob(f".{glob.escape(target.name)}.*{TEMP_SUFFIX}"))


def _remove_cache_temps(files: dict[str, Path]) -> list[Path]:
    """Delete the temporary files of this cache (left by a killed or failed build); returns them.

    Only this cache's own names are matched, so another cache being built in
    the same folder is not touched (one writer per cache).
    """
    stale = _cache_temps(files)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it exists and is empty (a ``_cache`` folder a failed build created)."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _build(
    dataset: XrayDataset, files: dict[str, Path] | None, progress: bool, on_error: str, workers: int
) -> tuple[np.ndarray | Path, np.ndarray, list[str]]:
    """Read every item into memory (no ``files``) or straight into a ``.npy`` on disk.

    Returns (images ``uint8 [N', S, S]`` or the path of the built ``.npy``,
    kept positions, skipped file names). Writing to disk through a memmap keeps
    large sets (full NIH at 256 px: 7 GB) out of RAM.
    """
    n, size = len(dataset), dataset.image_size
    if files is None:
        buffer = np.zeros((n, size, size), dtype=np.uint8)
        ok, skipped = _read_into(dataset, buffer, progress, on_error, workers)
        keep = np.flatnonzero(ok)
        return (buffer if ok.all() else buffer[keep]), keep, skipped
    folder = files["npy"].parent
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _named_os_error(error, folder, "cannot create the image cache folder") from error
    removed = _remove_cache_temps(files)  # what a killed build of this cache left (up to 7 GB for full NIH)
    if removed:
        log.info("removed %d stale temporary file(s) of cache %s", len(removed), files["npy"])
    # dot-files ending in TEMP_SUFFIX, cleared by _remove_cache_temps here and after a failure
    building = folder / f".{files['npy'].name}.building{TEMP_SUFFIX}"
    compacted = folder / f".{files['npy'].name}.compact{TEMP_SUFFIX}"
    try:
        try:
            buffer = np.lib.format.open_memmap(building, mode="w+", dtype=np.uint8, shape=(n, size, size))
        except OSError as error:
            raise _named_os_error(error, building, "cannot create the image cache file") from error
        ok, skipped = _read_into(dataset, buffer, progress, on_error, workers)
        keep = np.flatnonzero(ok)
        if not ok.all():  # drop the skipped rows, block by block
            out = np.lib.format.open_memmap(compacted, mode="w+", dtype=np.uint8, shape=(len(keep), size, size))
            for start in range(0, len(keep), 1024):
                out[start : start + 1024] = buffer[keep[start : start + 1024]]
            out.flush()
            del out, buffer
            os.replace(compacted, building)
        else:
            buffer.flush()
            del buffer
    except BaseException:
        building.unlink(missing_ok=True)
        compacted.unlink(missing_ok=True)
        if created:
            _remove_if_empty(folder)  # failure leaves no litter: not even the empty cache folder
        raise
    return building, keep, skipped


def _read_into(
    dataset: XrayDataset, out: np.ndarray, progress: bool, on_error: str, workers: int, block: int = 256
) -> tuple[np.ndarray, list[str]]:
    """Fill ``out[i]`` (``uint8 [S, S]``) with item i; returns (ok mask ``[N]``, skipped file names)."""
    n, size = len(dataset), dataset.image_size
    ok = np.ones(n, dtype=bool)
    skipped: list[str] = []

    def read(i: int) -> tuple[int, np.ndarray | None, ImageReadError | None]:
        try:
            return i, dataset.load_image(i), None
        except ImageReadError as exc:
            return i, None, exc

    pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    bar = tqdm(total=n, desc=f"caching {size}px images", unit="img", disable=not progress)
    try:
        for start in range(0, n, block):  # blocks: an error stops the work within one block
            indices = range(start, min(n, start + block))
            results = pool.map(read, indices) if pool is not None else map(read, indices)
            for i, image, error in results:
                if error is not None:
                    if on_error == "raise":
                        raise error
                    ok[i] = False
                    skipped.append(str(dataset.image_path(i)))
                else:
                    out[i] = image
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if n and not ok.any():
        raise ImageReadError(f"none of the {n} images could be read; first failures: {skipped[:3]}")
    return ok, skipped


def _warn_skipped(skipped: list[str], total: int) -> None:
    first = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    warnings.warn(
        f"skipped {len(skipped)} of {total} images that could not be read "
        f"(policy on_error='skip'): {first}",
        DataWarning,
        stacklevel=3,
    )
