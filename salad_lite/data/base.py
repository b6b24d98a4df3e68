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
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from salad_lite.data.io import DataWarning, ImageReadError, read_grayscale
from salad_lite.data.transforms import resize_pad, to_tensor

__all__ = [
    "REQUIRED_COLUMNS",
    "Preprocess",
    "XrayDataset",
    "CachedXrayDataset",
    "subset",
    "normalise_metadata",
    "drop_missing_files",
    "CACHE_FORMAT_VERSION",
]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label", "patient_id", "finding")
CACHE_FORMAT_VERSION = 1
_STRING_COLUMNS = ("path", "patient_id", "finding")
_NA_STRINGS = ["", "NA", "N/A", "NaN", "nan", "null", "None", "<NA>"]

#: A dataset-specific step applied to the raw ``uint8 [H, W]`` image; it returns a
#: ``uint8`` 2-D array of any size, which is then resized and padded to ``[S, S]``.
Preprocess = Callable[[np.ndarray], np.ndarray]
OnError = Literal["raise", "skip"]
OnMissing = Literal["drop", "raise"]


def normalise_metadata(metadata: pd.DataFrame) -> pd.DataFrame:
    """Check and clean a metadata table: required columns, 0/1 labels, string ids.

    Returns a copy with a fresh ``RangeIndex``; ``label`` as int64, ``path``,
    ``patient_id`` and ``finding`` as Python str (a missing finding becomes "").
    Extra columns are kept.

    Raises:
        ValueError: a required column is missing, a label is not 0/1, or a
            path / patient id is empty.
    """
    if not isinstance(metadata, pd.DataFrame):
        raise TypeError(f"metadata must be a pandas DataFrame, got {type(metadata).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in metadata.columns]
    if missing:
        raise ValueError(
            f"metadata lacks required column(s) {missing}; it has {list(metadata.columns)}"
        )
    meta = metadata.reset_index(drop=True).copy()
    labels = pd.to_numeric(meta["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        rows = list(np.flatnonzero(bad.to_numpy())[:5])
        values = meta["label"].iloc[rows].tolist()
        raise ValueError(f"labels must be 0 (normal) or 1 (abnormal); rows {rows} hold {values}")
    meta["label"] = labels.astype(np.int64)
    meta["finding"] = meta["finding"].fillna("")
    for column in _STRING_COLUMNS:
        meta[column] = meta[column].map(_as_str).astype(object)
    for column in ("path", "patient_id"):
        empty = meta[column] == ""
        if empty.any():
            rows = list(np.flatnonzero(empty.to_numpy())[:5])
            raise ValueError(f"column {column!r} is empty in rows {rows}")
    return meta


def drop_missing_files(
    metadata: pd.DataFrame,
    exists: np.ndarray,
    on_missing: OnMissing = "drop",
    source: str = "the metadata",
) -> pd.DataFrame:
    """Apply the missing-file policy shared by the loaders.

    Args:
        metadata: one row per listed image.
        exists: boolean ``[N]``, True where the listed file is on disk.
        on_missing: ``"drop"`` removes the missing rows with ONE
            :class:`DataWarning` giving their count and the first few names;
            ``"raise"`` raises :class:`FileNotFoundError` on any missing file.
        source: text naming where the list came from (used in messages).

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
            f"(first expected: {first}); is the root folder right?"
        )
    if on_missing == "raise":
        raise FileNotFoundError(f"{n_missing} of {len(metadata)} images listed in {source} are missing: {first}")
    warnings.warn(
        f"dropped {n_missing} of {len(metadata)} images listed in {source} that are missing on disk "
        f"(policy on_missing='drop'): {first}",
        DataWarning,
        stacklevel=3,
    )
    return metadata.loc[exists].reset_index(drop=True)


def _as_str(value: Any) -> str:
    """Strings stay, NaN becomes "", whole floats lose the ".0" (ids read as float)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
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
        path = Path(self._metadata.at[_check_index(i, len(self)), "path"])
        return path if path.is_absolute() or self.root is None else self.root / path

    def load_image(self, i: int) -> np.ndarray:
        """Item ``i`` as ``uint8 [S, S]`` (read, preprocess, resize + pad)."""
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


class CachedXrayDataset(_XrayBase):
    """The same contract as :class:`XrayDataset`, backed by a ``uint8 [N, S, S]`` array.

    Args:
        images: ``uint8 [N, S, S]`` preprocessed images (kept, not copied).
        metadata: aligned table (row i describes ``images[i]``), as for XrayDataset.
        root: where the source files live (informational).
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

        Returns:
            A :class:`CachedXrayDataset` whose images are ``uint8 [N', S, S]``
            (``N' = N`` minus skipped files).

        The cache is stale (and rebuilt) when its JSON key differs from
        ``dataset.cache_key()``, i.e. when the file list, labels, patient ids,
        findings, root, image size or preprocessing changed. Pixels edited in
        place under unchanged file names are not detected: pass ``rebuild=True``.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        key = dataset.cache_key()
        files = _cache_files(cache_dir, name) if cache_dir is not None else None
        if files is not None and not rebuild:
            cached = _load_if_fresh(files, key, on_error, mmap, dataset.root)
            if cached is not None:
                return cached
        built, keep, skipped = _build(dataset, files, progress, on_error, workers)
        meta = dataset.metadata.iloc[keep].reset_index(drop=True)
        if skipped:
            _warn_skipped(skipped, len(dataset))
        if files is None:
            assert isinstance(built, np.ndarray)
            return cls(built, meta, root=dataset.root)
        _save_cache(files, Path(built), meta, key, skipped)
        images = np.load(files["npy"], mmap_mode="r" if mmap else None)
        return cls(images, meta, root=dataset.root)

    @classmethod
    def load(
        cls, cache_dir: str | os.PathLike[str], name: str = "dataset", mmap: bool = False
    ) -> CachedXrayDataset:
        """Open an existing cache without checking its key (raises if files are missing)."""
        files = _cache_files(cache_dir, name)
        for kind in ("npy", "csv"):
            if not files[kind].is_file():
                raise FileNotFoundError(f"no cache file {files[kind]}")
        images = np.load(files["npy"], mmap_mode="r" if mmap else None)
        return cls(images, _read_metadata_csv(files["csv"]))


def subset(dataset: Any, indices: Iterable[int] | np.ndarray) -> Any:
    """A dataset of the same type restricted to ``indices`` (positions or a boolean mask).

    The metadata is reindexed so item ``j`` of the result is row ``indices[j]``
    of ``dataset``; its ``index`` field is renumbered ``0..n-1`` and the column
    ``orig_index`` keeps the row in the root dataset (subsets of subsets compose).
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
    """Read a cached metadata CSV keeping ids and findings as text ("NA" stays "NA")."""
    header = pd.read_csv(path, nrows=0).columns
    na_values = {c: _NA_STRINGS for c in header if c not in _STRING_COLUMNS}
    return pd.read_csv(
        path, dtype={c: str for c in _STRING_COLUMNS}, keep_default_na=False, na_values=na_values
    )


def _load_if_fresh(
    files: dict[str, Path], key: dict[str, Any], on_error: str, mmap: bool, root: Path | None
) -> CachedXrayDataset | None:
    if not all(f.is_file() for f in files.values()):
        return None
    try:
        info = json.loads(files["json"].read_text())
        if info.get("key") != key:
            log.info("cache %s is stale (key changed): rebuilding", files["npy"])
            return None
        skipped = list(info.get("skipped", []))
        if skipped and on_error == "raise":
            log.info("cache %s was built skipping %d files; on_error='raise': rebuilding", files["npy"], len(skipped))
            return None
        images = np.load(files["npy"], mmap_mode="r" if mmap else None)
        meta = _read_metadata_csv(files["csv"])
        dataset = CachedXrayDataset(images, meta, root=root)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        log.warning("cache %s unreadable (%s): rebuilding", files["npy"], exc)
        return None
    if dataset.image_size != key["image_size"]:
        return None
    if skipped:
        _warn_skipped(skipped, key["num_sources"])
    return dataset


def _save_cache(
    files: dict[str, Path], built_npy: Path, meta: pd.DataFrame, key: dict[str, Any], skipped: list[str]
) -> None:
    """Move the built ``.npy`` in place, write the csv, then the JSON key last (it marks a complete cache)."""
    files["json"].unlink(missing_ok=True)  # an interrupted rewrite must not look fresh
    os.replace(built_npy, files["npy"])
    tmp_csv = files["csv"].with_name(files["csv"].name + ".tmp")
    meta.to_csv(tmp_csv, index=False)
    os.replace(tmp_csv, files["csv"])
    tmp_json = files["json"].with_name(files["json"].name + ".tmp")
    tmp_json.write_text(json.dumps({"key": key, "num_images": len(meta), "skipped": skipped}, indent=1))
    os.replace(tmp_json, files["json"])


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
    files["npy"].parent.mkdir(parents=True, exist_ok=True)
    building = files["npy"].with_name(files["npy"].name + ".building.npy")
    compacted = files["npy"].with_name(files["npy"].name + ".compact.npy")
    try:
        buffer = np.lib.format.open_memmap(building, mode="w+", dtype=np.uint8, shape=(n, size, size))
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
