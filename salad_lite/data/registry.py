"""One call from a dataset name to cached train / validation / test sets.

:func:`load_splits` is what the book uses::

    splits = load_splits("nih", image_size=64, anomaly_ratio=0.05, seed=0)
    splits["train"][0]["image"].shape   # torch.Size([1, 64, 64])

Datasets:

* ``"nih"``: NIH ChestX-ray14 layout (:class:`~salad_lite.data.nih.NIHChestXray`,
  all views) + :func:`~salad_lite.data.splits.one_class_split`. Without
  ``data_root`` the embedded synthetic chest set is used (rendered on first use).
* ``"mura"``: MURA v1.1 layout (:class:`salad_lite.data.mura.MURA`, images
  through the paper's pipeline ``preprocess_mura_image``) +
  ``salad_lite.data.mura.mura_group_split`` (groups = patient + body part). Without ``data_root`` the embedded
  synthetic limb set is used.
* ``"folder"``: your own images under ``data_root``: a CSV manifest (the file
  itself, or ``manifest.csv`` inside the folder, preferred when present) or
  ``normal/`` + ``abnormal/`` class folders; split like NIH.

The preprocessed images of the whole dataset are cached once per image size
under ``<data_root or embedded root>/_cache/`` (falling back to the embedded
root's ``_cache`` when the data folder is read-only), so changing the anomaly
ratio or the seed only recomputes the split. Unreadable images are skipped
with one counted warning (``on_error="skip"``).

Failure leaves no litter: the data root is read and the split is tried on the
file list BEFORE any cache folder or file is created, so a wrong root or a set
that cannot be split raises with nothing written.

The synthetic renderers live in :mod:`salad_lite.synth` (which imports nothing
from this package); :func:`ensure_embedded` passes them the cache folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salad_lite.data.base import CachedXrayDataset, XrayDataset, subset
from salad_lite.data.generic import ImageFolderXray, ManifestXray
from salad_lite.data.nih import NIHChestXray
from salad_lite.data.splits import check_patient_disjoint, one_class_split, patient_id_text, patient_key
from salad_lite.synth import EMBEDDED_ENV, EMBEDDED_SCALES, embedded_root, embedded_scale

__all__ = [
    "DATASETS",
    "EMBEDDED_ENV",
    "EMBEDDED_SCALES",
    "cache_dir_for",
    "cached_splits",
    "dataset_source",
    "describe_splits",
    "embedded_cache_dir",
    "embedded_root",
    "ensure_embedded",
    "image_preprocess",
    "load_splits",
    "split_function",
]

DATASETS: tuple[str, ...] = ("nih", "mura", "folder")
#: mmap the cache instead of loading it when it is larger than this many bytes.
_MMAP_BYTES = 2 * 1024**3


def embedded_cache_dir() -> Path:
    """``<embedded root>/_cache``: the renderers' caches (wheel, phantom, pose bank) and the embedded image caches."""
    return embedded_root() / "_cache"


def ensure_embedded(dataset: str, progress: bool = True, scale: str = "default") -> Path:
    """Return the embedded synthetic set of ``dataset``, rendering it on first use.

    Args:
        dataset: ``"nih"`` (synthetic chest films, NIH layout, about 2,400
            images) or ``"mura"`` (synthetic upper limbs, MURA v1.1 layout).
        progress: show the renderers' progress bars.
        scale: ``"default"`` or ``"small"`` (a few hundred images, for CI), see
            :data:`salad_lite.synth.EMBEDDED_SCALES` (the one place the sizes
            are defined); each scale has its own folder.

    Returns:
        ``nih``: the folder holding ``Data_Entry_2017.csv`` and ``images/``;
        ``mura``: the ``MURA-v1.1`` folder.

    Rendering takes minutes on a laptop CPU; a complete set (checked through
    its manifest) is reused.

    Raises:
        ValueError: unknown dataset or scale.
        FileExistsError: the embedded folder holds a set the renderer did not make.
        CorruptFileError: a render manifest cannot be read (named).
        WheelFetchError: ``nih``: the chest CT cannot be fetched.
    """
    sizes = embedded_scale(scale)
    if dataset not in ("nih", "mura"):
        raise ValueError(f"no embedded set for {dataset!r}; choose 'nih' or 'mura'")
    root = embedded_root()
    suffix = "" if scale == "default" else f"-{scale}"
    if dataset == "nih":
        from salad_lite.synth.chest import render_chest_set

        out = root / f"nih{suffix}"
        render_chest_set(out, n_images=sizes.nih_images, abnormal_fraction=sizes.nih_abnormal_fraction,
                         progress=progress, workers=min(8, os.cpu_count() or 1), cache_dir=embedded_cache_dir())
        return out
    from salad_lite.synth.limb import render_limb_set

    return Path(render_limb_set(root / f"mura{suffix}", n_patients=sizes.mura_patients, progress=progress))


def _render_tag(manifest: Path) -> str:
    """Short hash of an embedded set's render manifest: a re-rendered set gets a fresh cache."""
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:10] if manifest.is_file() else "unversioned"


def _manifest_name(renderer: str) -> str:
    """File name of the render manifest of ``renderer`` (``"chest"`` or ``"limb"``)."""
    if renderer == "chest":
        from salad_lite.synth.chest import MANIFEST_NAME
    else:
        from salad_lite.synth.limb import MANIFEST_NAME
    return MANIFEST_NAME


def cache_dir_for(data_root: Path) -> Path:
    """Where the image cache of ``data_root`` goes; nothing is created here.

    Returns ``<data_root>/_cache`` when it exists and is writable, or can be
    created (``data_root`` writable); otherwise a per-root folder
    ``<embedded root>/_cache/<name>-<hash>``. The folder itself is made only
    when a cache is written (:meth:`CachedXrayDataset.from_dataset`), after
    the data have been read and split: a wrong root never gains a ``_cache``.

    Raises:
        NotADirectoryError: ``data_root`` is not an existing folder.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise NotADirectoryError(f"data root {data_root} is not an existing folder; no cache made")
    preferred = data_root / "_cache"
    if preferred.exists():
        if preferred.is_dir() and os.access(preferred, os.W_OK):
            return preferred
    elif os.access(data_root, os.W_OK):
        return preferred
    tag = hashlib.sha256(str(data_root.resolve()).encode()).hexdigest()[:12]
    return embedded_cache_dir() / f"{data_root.name}-{tag}"


def cached_splits(
    dataset: XrayDataset,
    cache_dir: Path,
    cache_name: str,
    split_fn: Callable[[pd.DataFrame], Mapping[str, np.ndarray]],
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, CachedXrayDataset]:
    """Cache every image of ``dataset`` once, split its metadata, return the split views.

    Args:
        dataset: the lazy dataset (all images of all splits).
        cache_dir: folder of the cache files.
        cache_name: their file stem.
        split_fn: metadata -> split name -> row positions (e.g. a partial of
            :func:`one_class_split`).
        progress: tqdm bar while caching.
        workers: reading threads (default: CPU count, at most 8).

    Returns:
        split name -> :class:`CachedXrayDataset` (images ``uint8 [n, S, S]``),
        after checking that no patient is in two splits.

    ``split_fn`` is first tried on the file list, so a set that cannot be split
    (one class only, too few patients) fails before any image is read or cached.
    It is tried again on the images actually read (unreadable ones are skipped)
    before the cache is committed, so a set that can no longer be split then
    leaves no cache file and no ``_cache`` folder behind.

    Raises:
        ValueError: from ``split_fn`` (bad arguments, a missing class, too few patients).
        PatientLeakError: a patient in two splits.
        ImageReadError: no image of the set can be read.
        CorruptFileError: an existing cache file cannot be read (named).
    """
    check_patient_disjoint({name: dataset.metadata["patient_id"].to_numpy()[np.asarray(rows, dtype=np.int64)]
                            for name, rows in split_fn(dataset.metadata).items()})
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    size = dataset.image_size
    mmap = len(dataset) * size * size > _MMAP_BYTES
    full = CachedXrayDataset.from_dataset(
        dataset, cache_dir=cache_dir, name=cache_name, progress=progress, on_error="skip",
        workers=n_workers, mmap=mmap, check=split_fn,  # split the images read before committing the cache
    )
    positions = split_fn(full.metadata)
    result = {name: subset(full, np.asarray(rows, dtype=np.int64)) for name, rows in positions.items()}
    check_patient_disjoint(result)
    return result


def describe_splits(splits: Mapping[str, Any]) -> pd.DataFrame:
    """Counts per split: images, normal, abnormal, patients, abnormal share (one row per split).

    Args:
        splits: split name -> dataset with ``.labels`` (0/1 ``[n]``) and
            ``.patient_ids`` (``[n]``), e.g. the result of :func:`load_splits`.

    Returns:
        DataFrame indexed by split name, columns ``images``, ``normal``,
        ``abnormal``, ``patients``, ``abnormal_share`` (in ``[0, 1]``, NaN for an empty split).

    Raises:
        TypeError: a split lacks ``.labels`` or ``.patient_ids``.
    """
    rows = []
    for name, ds in splits.items():
        if not (hasattr(ds, "labels") and hasattr(ds, "patient_ids")):
            raise TypeError(f"split {name!r} is a {type(ds).__name__}, without .labels and .patient_ids")
        labels = np.asarray(ds.labels, dtype=np.int64)
        n_abnormal = int(labels.sum())
        rows.append(
            {
                "split": name,
                "images": len(labels),
                "normal": len(labels) - n_abnormal,
                "abnormal": n_abnormal,
                "patients": len({patient_key(patient_id_text(p)) for p in ds.patient_ids}),
                "abnormal_share": round(n_abnormal / len(labels), 4) if len(labels) else float("nan"),
            }
        )
    return pd.DataFrame(rows).set_index("split")


def _folder_dataset(root: Path, image_size: int, class_map: Mapping[str, int] | None) -> XrayDataset:
    manifest = root if root.is_file() else root / "manifest.csv"
    if manifest.is_file():
        if class_map:
            raise ValueError(f"a class map labels class folders, but {root} is read through the manifest "
                             f"{manifest}, whose label column labels each image: drop the class map")
        return ManifestXray(manifest, image_size=image_size)
    return ImageFolderXray(root, image_size=image_size, class_map=class_map or None)


def dataset_source(
    dataset: str,
    root: str | os.PathLike[str],
    image_size: int,
    *,
    view: str = "all",
    csv_path: str | os.PathLike[str] | None = None,
    mura_files: tuple[str, ...] = ("train", "valid"),
    preprocess: str = "pipeline",
    body_parts: tuple[str, ...] | None = None,
    on_missing: str = "drop",
    class_map: Mapping[str, int] | None = None,
) -> tuple[XrayDataset, str]:
    """The lazy dataset (every image of every split) under ``root`` and the name of its image cache.

    The defaults are what :func:`load_splits` reads; the keywords are the
    options of ``salad-lite prepare`` (a variant gets its own cache name).

    Args:
        dataset: ``"nih"``, ``"mura"`` or ``"folder"``.
        root: the data folder (``folder``: also a manifest CSV).
        image_size: side ``S`` of the cached images, pixels.
        view: ``nih``: ``"PA"``, ``"AP"`` or ``"all"``.
        csv_path: ``nih``: the CSV to use instead of the one in ``root``.
        mura_files: ``mura``: the official files read (``train``, ``valid``).
        preprocess: ``mura``: ``"pipeline"`` (paper) or ``"resize"``.
        body_parts: ``mura``: keep only these parts.
        on_missing: ``mura``: listed images missing on disk are ``"drop"``-ped (warned) or ``"raise"``.
        class_map: ``folder``: label (0/1) of each class folder not named normal/abnormal
            (:class:`ImageFolderXray`); refused for a manifest and other datasets.

    Returns:
        ``(lazy dataset, cache name)``; the cache name is ``nih_<view>_<S>px``,
        ``mura[_<variant>]_<S>px`` or ``folder_<stem>[_classmap-<hash>]_<S>px``.

    Raises:
        ValueError: unknown dataset; a class map not for a folder of class folders; the
            loaders' errors (a wrong root or layout, a label not understood: see :class:`NIHChestXray`,
            :class:`~salad_lite.data.mura.MURA`, :class:`ManifestXray`, :class:`ImageFolderXray`).
    """
    root = Path(root)
    if class_map and dataset != "folder":
        raise ValueError(f"a class map labels class folders: it needs dataset 'folder', got {dataset!r}")
    if dataset == "nih":
        lazy: XrayDataset = NIHChestXray(root, csv_path=csv_path, view=view, image_size=image_size)
        return lazy, f"nih_{lazy.view}_{image_size}px"
    if dataset == "mura":
        from salad_lite.data.mura import MURA

        lazy = MURA(root, split_files=mura_files, image_size=image_size, preprocess=preprocess,
                    body_parts=body_parts, on_missing=on_missing)
        variant = [] if preprocess == "pipeline" else [preprocess]
        variant += ["-".join(sorted(p.upper() for p in body_parts))] if body_parts else []
        variant += [] if tuple(mura_files) == ("train", "valid") else ["-".join(mura_files)]
        return lazy, "_".join(["mura", *variant, f"{image_size}px"])
    if dataset == "folder":
        # another class map labels the same files otherwise: its own cache
        variant = f"_classmap-{hashlib.sha256(repr(sorted(class_map.items())).encode()).hexdigest()[:8]}" \
            if class_map else ""
        return _folder_dataset(root, image_size, class_map), f"folder_{root.stem}{variant}_{image_size}px"
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")


HELD_OUT_RESERVE_RATIO = 0.15
"""The seeded splits reserve abnormal training images as for AR 15 % (Table 1's largest): every AR from 0 to
15 % then shares one validation and one test set, so that Table 1's rows are compared on the same test images."""


def split_function(
    dataset: str,
    anomaly_ratio: float = 0.05,
    seed: int = 0,
    max_train_images: int = 0,
    split_file: str | os.PathLike[str] = "",
    group_column: str = "patient_id",
) -> Callable[[pd.DataFrame], Mapping[str, np.ndarray]]:
    """The split of ``dataset``: a published split file, or the package's seeded one-class split.

    Args:
        dataset: ``"nih"`` / ``"folder"`` (:func:`one_class_split`) or ``"mura"``
            (``mura_group_split``, groups = patient + body part, or ``group_column``).
        anomaly_ratio, seed, max_train_images: of the seeded split (ignored with a split file);
            its held-out sets are those of every AR <= :data:`HELD_OUT_RESERVE_RATIO`.
        split_file: a CSV naming each image's split
            (:mod:`salad_lite.data.split_file`): read and checked now.
        group_column: ``mura``: the grouping column.

    Returns:
        metadata -> ``{"train", "val", "test"}`` -> row positions.

    Raises:
        FileNotFoundError, salad_lite.data.split_file.SplitFileError, CorruptFileError:
            the split file is missing or malformed (named).
    """
    if split_file:
        from salad_lite.data.split_file import split_from_file

        return split_from_file(Path(split_file).expanduser())
    if dataset == "mura":
        from salad_lite.data.mura import mura_group_split

        return partial(mura_group_split, anomaly_ratio=anomaly_ratio, seed=seed, group_column=group_column,
                       max_train=max_train_images, reserve_ratio=HELD_OUT_RESERVE_RATIO)
    return partial(one_class_split, anomaly_ratio=anomaly_ratio, seed=seed, max_train=max_train_images,
                   reserve_ratio=HELD_OUT_RESERVE_RATIO)


def image_preprocess(dataset: str, image_size: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The per-image step a dataset's cache applies between reading and resize + pad, for images outside the set.

    ``mura``: the paper's pipeline (``preprocess_mura_image`` at ``image_size``,
    without a known body part); ``nih`` / ``folder``: none (resize + pad only).
    """
    if dataset == "mura":
        from salad_lite.data.mura_preprocess import preprocess_mura_image

        return partial(preprocess_mura_image, size=image_size)
    return None


def load_splits(
    dataset: str,
    data_root: str = "",
    image_size: int = 64,
    anomaly_ratio: float = 0.05,
    seed: int = 0,
    max_train_images: int = 0,
    progress: bool = True,
    cache_dir: str = "",
    embedded_scale: str = "default",
    split_file: str = "",
    class_map: Mapping[str, int] | None = None,
) -> dict[str, CachedXrayDataset]:
    """Train / validation / test sets of a named dataset, cached in memory and on disk.

    Args:
        dataset: ``"nih"``, ``"mura"`` or ``"folder"``.
        data_root: the data folder (NIH root, MURA root, or your folder /
            manifest); empty uses the embedded synthetic set (nih, mura).
        image_size: side ``S`` of the square images, in pixels.
        anomaly_ratio: share of abnormal images in the training split (AR).
        seed: split seed.
        max_train_images: cap on training images (0 = none).
        progress: tqdm bars (rendering, caching).
        cache_dir: where the cache goes (default ``<data_root or embedded>/_cache``).
        embedded_scale: size of the embedded set used without ``data_root``
            (``"default"`` or ``"small"``).
        split_file: a published split (CSV of image and split name,
            :mod:`salad_lite.data.split_file`) instead of the seeded split;
            ``anomaly_ratio``, ``seed`` and ``max_train_images`` are then unused.
        class_map: ``folder``: label of each class folder not named normal/abnormal
            (:func:`dataset_source`).

    Returns:
        ``{"train", "val", "test"}`` -> :class:`CachedXrayDataset`; items are
        sample dicts with ``image`` ``FloatTensor [1, S, S]`` in ``[0, 1]``.
        No patient appears in two splits (checked).

    Raises:
        ValueError: unknown dataset, ``folder`` without ``data_root``, a label
            not understood (file, row and value named), or a set that cannot
            be split (one class, too few patients).
        FileNotFoundError: ``data_root`` does not exist or has not the layout
            of ``dataset`` (nothing is created in it).
        PatientLeakError: a patient in two splits.
        CorruptFileError: an existing cache or manifest file cannot be read (named).
        salad_lite.data.split_file.SplitFileError: the split file is malformed, names an
            image not in the dataset or an unknown split (file named).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if dataset == "folder" and not data_root:
        raise ValueError("dataset='folder' needs data_root (a folder of class folders or a manifest CSV)")
    root = Path(data_root).expanduser() if data_root else None
    if root is not None and not root.exists():
        raise FileNotFoundError(f"data_root {root} does not exist")
    # read the root first: a wrong root raises here, before any _cache folder exists
    if root is not None:
        lazy, name = dataset_source(dataset, root, image_size, class_map=class_map)
    else:
        source = ensure_embedded(dataset, progress=progress, scale=embedded_scale)
        lazy, _ = dataset_source(dataset, source, image_size, class_map=class_map)
        manifest = source / _manifest_name("chest") if dataset == "nih" else source.parent / _manifest_name("limb")
        name = f"embedded_{dataset}{embedded_scale}_{_render_tag(manifest)}_{image_size}px"
    split_fn = split_function(dataset, anomaly_ratio, seed, max_train_images, split_file)
    if cache_dir:
        cache = Path(cache_dir)
    elif root is None:
        cache = embedded_cache_dir()
    else:
        cache = cache_dir_for(root if root.is_dir() else root.parent)
    splits = cached_splits(lazy, cache, name, split_fn, progress=progress)
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise RuntimeError(f"split function for {dataset!r} returned {sorted(splits)}, lacking {sorted(missing)}")
    return {key: splits[key] for key in ("train", "val", "test")}
