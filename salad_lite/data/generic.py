"""Loaders for your own radiographs: class folders or a CSV manifest.

* :class:`ImageFolderXray`: ``root/normal/*.png`` and ``root/abnormal/*.png``
  (searched recursively), or any folder names mapped to labels with
  ``class_map={"NORMAL": 0, "PNEUMONIA": 1}``.
* :class:`ManifestXray`: a CSV with columns ``file`` (path relative to ``root``)
  and ``label`` (0 normal, 1 abnormal), optionally ``patient_id`` and
  ``finding``.

Patient ids: when none is given, each image is its own patient and its id is
the file stem (``IM-0001-0001.png`` -> ``IM-0001-0001``), or its path under the
root without the suffix where several images share a stem (``NORMAL/0.png`` and
``PNEUMONIA/0.png`` are two patients, not one; :func:`image_ids`). Splits are then
image-wise, which leaks if one patient has several images: provide
``patient_id`` (manifest column, or ``patient_id_fn`` for folders) when you know it.
The finding defaults to the class folder name (folders) or ``"normal"`` /
``"abnormal"`` (manifest, for an empty cell).

Text stays text: the manifest is read as text, so ``file``, ``patient_id`` and
``finding`` are kept exactly as written (``0007`` stays ``0007``, a finding
``NA`` or ``2.0`` stays that text); only ``label`` is converted, strictly:
``0`` / ``1`` (or ``0.0`` / ``1.0``) and nothing else, or a
:class:`~salad_lite.data.base.LabelError` naming the manifest, the row, the line
and the value. Empty ``patient_id`` / ``finding`` cells take the defaults above.

Hidden and system files are never images
(:func:`~salad_lite.data.io.is_hidden_or_system`): class folders are listed
without them (macOS ``._a.png``, ``__MACOSX/``, ``Thumbs.db``...), and a manifest
that lists one is an error.

Each image is listed once: a manifest without rows, a manifest or folder
listing one file twice (with the same label or not; links resolved), class
folders differing only in case (``normal/`` and ``Normal/``) and a manifest
row with more fields than the header (an unquoted comma) are errors naming the
file, rows and lines. Linked folders are followed once
(:func:`~salad_lite.data.io.list_files`: a symlink loop is not walked again).
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from salad_lite.data.base import (
    OnMissing,
    Preprocess,
    XrayDataset,
    drop_missing_files,
    parse_binary_labels,
    read_text_csv,
    refuse_duplicate_files,
)
from salad_lite.data.io import DataWarning, is_hidden_or_system, list_files
from salad_lite.data.splits import patient_key

__all__ = ["IMAGE_SUFFIXES", "ImageFolderXray", "ManifestXray"]

#: File suffixes (lower case) that count as images in class folders.
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "label")


def warn_image_wise_patients(count: int, source: str, remedy: str) -> None:
    """The documented policy for images without a patient id, as one counted ``DataWarning``.

    Each such image is its own patient (its id is the file stem, or its path where
    stems repeat: :func:`image_ids`), so the split is image-wise there and leaks if a
    patient has several films.
    """
    warnings.warn(f"{source}: {count} image(s) have no patient id, so each counts as its own patient and the "
                  f"split is image-wise there (it leaks if a patient has several films): {remedy}",
                  DataWarning, stacklevel=3)


def image_ids(paths: list[str], taken: Collection[str] = ()) -> list[str]:
    """One patient id per image without one (relative POSIX paths): the file stem, unique as the policy promises.

    A stem that several of these images share, or that is already a patient's id
    (``taken``), would merge them into one patient, so those images take their path
    without the suffix instead (``NORMAL/0``, ``PNEUMONIA/0``).
    Stems are compared by :func:`~salad_lite.data.splits.patient_key` (``07`` and ``7``
    would be one patient), so such stems take their paths too.
    """
    stems = [PurePosixPath(p).stem for p in paths]
    keys = [patient_key(stem) for stem in stems]
    shared = {key for key, count in Counter(keys).items() if count > 1} | {patient_key(t) for t in taken}
    return [str(PurePosixPath(p).with_suffix("")) if key in shared else stem
            for p, stem, key in zip(paths, stems, keys)]


class ImageFolderXray(XrayDataset):
    """Images in one folder per class.

    Args:
        root: the folder holding the class folders.
        class_map: folder name -> label (0/1). None means the folders
            ``normal`` (0) and ``abnormal`` (1), matched case-insensitively.
            Folders not named in the map are ignored.
        image_size: side ``S`` of the returned images.
        preprocess: optional ``uint8 [H, W] -> uint8`` step before resizing.
        patient_id_fn: file path -> patient id (default: the file stem, see :func:`image_ids`).

    Raises:
        FileNotFoundError: ``root`` or a mapped class folder does not exist.
        ValueError: a class folder holds no image (hidden and system files do
            not count), a label of ``class_map`` is not the int 0 or 1, the
            map does not cover both labels, two folders differ only in case
            (``normal/`` and ``Normal/``, without ``class_map``: both named), or
            one file is listed twice (a link into another class folder; both
            paths named).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        class_map: Mapping[str, int] | None = None,
        image_size: int = 256,
        preprocess: Preprocess | None = None,
        patient_id_fn: Callable[[Path], str] | None = None,
    ) -> None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"image folder root {root_path} is not an existing folder")
        folders = {
            p.name: p for p in root_path.iterdir()
            if p.is_dir() and not p.name.startswith("_") and not is_hidden_or_system(p, root_path)
        }
        if class_map is None:
            lower: dict[str, list[str]] = {}
            for name in sorted(folders):
                lower.setdefault(name.lower(), []).append(name)
            clash = {k: v for k, v in lower.items() if k in ("normal", "abnormal") and len(v) > 1}
            if clash:
                raise ValueError(
                    f"{root_path} holds class folders that differ only in case: "
                    + "; ".join(" and ".join(repr(str(root_path / n)) for n in names) for names in clash.values())
                    + "; merge them, or pass class_map={'FOLDER': 0 or 1, ...}"
                )
            if "normal" not in lower or "abnormal" not in lower:
                raise FileNotFoundError(
                    f"{root_path} needs class folders 'normal/' and 'abnormal/' (found {sorted(folders)}); "
                    "or pass class_map={'FOLDER': 0 or 1, ...}, or list the images in a manifest CSV "
                    "(columns file, label) and give its path as the data root"
                )
            class_map = {lower["normal"][0]: 0, lower["abnormal"][0]: 1}
        bad_labels = {k: v for k, v in class_map.items()
                      if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v not in (0, 1)}
        if bad_labels:
            raise ValueError(f"class_map labels must be 0 (normal) or 1 (abnormal); got {bad_labels}")
        if set(class_map.values()) != {0, 1}:
            raise ValueError(f"class_map must map at least one folder to 0 and one to 1, got {dict(class_map)}")
        rows = []
        by_text = {unicodedata.normalize("NFC", name): path for name, path in folders.items()}
        for folder_name, label in class_map.items():  # é typed as one code point finds é stored as e + accent
            folder = folders.get(folder_name) or by_text.get(unicodedata.normalize("NFC", folder_name))
            if folder is None:
                ignored = " (a name starting with '_' marks a folder the loader skips, such as _cache: rename it)" \
                    if folder_name.startswith("_") and (root_path / folder_name).is_dir() else ""
                raise FileNotFoundError(
                    f"class folder {root_path / folder_name} does not exist (found {sorted(folders)}){ignored}"
                )
            files = list_files(folder, IMAGE_SUFFIXES)  # recursive; never hidden or system files
            if not files:
                raise ValueError(
                    f"class folder {folder} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            rows += [
                {
                    "path": p.relative_to(root_path).as_posix(),
                    "label": int(label),
                    "patient_id": str(patient_id_fn(p)) if patient_id_fn is not None else "",
                    "finding": folder_name,
                }
                for p in files
            ]
        refuse_duplicate_files([row["path"] for row in rows], f"image folder {root_path}", root_path)
        if patient_id_fn is None:
            for row, image_id in zip(rows, image_ids([row["path"] for row in rows])):
                row["patient_id"] = image_id
            warn_image_wise_patients(len(rows), f"image folder {root_path}", "pass patient_id_fn, or use a "
                                     "manifest.csv with a patient_id column")
        self.class_map = dict(class_map)
        super().__init__(pd.DataFrame(rows), image_size=image_size, root=root_path, preprocess=preprocess)


class ManifestXray(XrayDataset):
    """Images listed in a CSV manifest.

    Args:
        csv: the manifest, columns ``file``, ``label`` [, ``patient_id``, ``finding``];
            other columns are kept in ``.metadata``.
        root: folder the ``file`` paths start from (default: the CSV's folder).
        image_size: side ``S`` of the returned images.
        preprocess: optional ``uint8 [H, W] -> uint8`` step before resizing.
        on_missing: listed files absent on disk: ``"drop"`` (one counted
            warning) or ``"raise"``; all absent is always an error.

    Raises:
        FileNotFoundError: the CSV or root does not exist, or no listed file does.
        ValueError: a required column is missing (named), the manifest lists no
            image, a ``file`` cell is empty, it names a hidden or system file,
            or one file is listed twice (rows and lines named, whatever the labels).
        LabelError: a label is not 0/1 (manifest, row, line and value named).
        CorruptFileError: the manifest cannot be parsed as CSV, or a row has
            more fields than the header (an unquoted comma; lines named).
    """

    def __init__(
        self,
        csv: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        image_size: int = 256,
        preprocess: Preprocess | None = None,
        on_missing: OnMissing = "drop",
    ) -> None:
        csv_path = Path(csv)
        if not csv_path.is_file():
            raise FileNotFoundError(f"manifest {csv_path} not found")
        root_path = Path(root) if root not in (None, "") else csv_path.parent
        if not root_path.is_dir():
            raise FileNotFoundError(f"manifest root {root_path} is not an existing folder")
        table = read_text_csv(csv_path, what="manifest")
        missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(
                f"manifest {csv_path} lacks column(s) {missing}; found {list(table.columns)}; "
                "required: file, label (optional: patient_id, finding)"
            )
        if table.empty:
            raise ValueError(f"manifest {csv_path} lists no images (a header without rows)")
        table["file"] = table["file"].str.strip()
        for problem, bad in (
            ("empty 'file'", (table["file"] == "").to_numpy()),
            ("'file' naming a hidden or system file (never an image)",
             table["file"].map(lambda f: f != "" and is_hidden_or_system(Path(f))).to_numpy(bool)),
        ):
            if bad.any():
                rows = np.flatnonzero(bad)[:5].tolist()
                raise ValueError(f"manifest {csv_path}: {problem} in rows {rows} (lines {[r + 2 for r in rows]}): "
                                 f"{table['file'].iloc[rows].tolist()}")
        refuse_duplicate_files(table["file"].tolist(), f"manifest {csv_path}", root_path, first_line=2)
        meta = table.rename(columns={"file": "path"}).copy()
        meta["label"] = parse_binary_labels(table["label"].tolist(), f"manifest {csv_path}", first_line=2)
        blank = pd.Series("", index=meta.index, dtype=object)
        patients = meta["patient_id"].str.strip() if "patient_id" in meta.columns else blank
        no_id = patients == ""
        own = pd.Series(image_ids(meta.loc[no_id, "path"].tolist(), taken=set(patients[~no_id])),
                        index=meta.index[no_id], dtype=object)
        meta["patient_id"] = patients.where(~no_id, own)
        default_finding = meta["label"].map({0: "normal", 1: "abnormal"})
        findings = meta["finding"] if "finding" in meta.columns else blank
        meta["finding"] = findings.where(findings.str.strip() != "", default_finding)
        exists = np.array([(root_path / f).is_file() for f in meta["path"]], dtype=bool)
        meta = drop_missing_files(meta, exists, on_missing, source=str(csv_path))
        kept_without_id = int((no_id.to_numpy() & exists).sum())  # counted over the images kept
        if kept_without_id:
            warn_image_wise_patients(kept_without_id, f"manifest {csv_path}", "fill its patient_id column")
        self.csv_path = csv_path
        super().__init__(meta, image_size=image_size, root=root_path, preprocess=preprocess)
