"""NIH ChestX-ray14 (Wang et al., CVPR 2017): loader and label tables.

Layout expected under ``root`` (the official download, or the synthetic set of
:mod:`salad_lite.data.synth_chest`)::

    root/Data_Entry_2017.csv        (any Data_Entry_2017*.csv / .csv.gz)
    root/images/00000001_000.png    (one flat folder)

The Kaggle re-packaging (``root/images_001/images/*.png`` ... ``images_012``) is
accepted too. Labels: ``"No Finding"`` -> 0 (normal), any of the 14 findings ->
1 (abnormal). ``patient_id`` is the CSV's ``Patient ID`` as text.

Missing files (policy ``on_missing="drop"``, the default): images listed in the
CSV but absent from the images folder are dropped with ONE
:class:`~salad_lite.data.io.DataWarning` giving their count (so the full
112,120-row CSV can be used with a partial download); if NONE of them is
present a :class:`FileNotFoundError` is raised. ``on_missing="raise"`` makes
any missing file an error.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd

from salad_lite.data.base import OnMissing, Preprocess, XrayDataset, drop_missing_files

__all__ = [
    "NIH_COLUMNS",
    "NIH_FINDINGS",
    "NIHChestXray",
    "find_nih_csv",
    "find_torchxrayvision_csv",
    "finding_counts",
    "load_nih_labels",
    "nih_metadata",
]

#: CSV columns the loader needs.
NIH_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Patient ID", "View Position")
#: The 14 findings of ChestX-ray14.
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
NORMAL_FINDING = "No Finding"
_VIEWS = ("PA", "AP", "ALL")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def find_torchxrayvision_csv() -> Path:
    """Path of the full NIH CSV shipped in the ``torchxrayvision`` wheel.

    Located with :func:`importlib.util.find_spec`; torchxrayvision itself is not
    imported. Returns ``.../torchxrayvision/data/Data_Entry_2017_v2020.csv.gz``.

    Raises:
        FileNotFoundError: torchxrayvision is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torchxrayvision is not installed: `pip install torchxrayvision` provides the NIH CSV")
    for location in spec.submodule_search_locations:
        csv = Path(location) / "data" / "Data_Entry_2017_v2020.csv.gz"
        if csv.is_file():
            return csv
    raise FileNotFoundError(
        f"torchxrayvision at {list(spec.submodule_search_locations)} has no data/Data_Entry_2017_v2020.csv.gz"
    )


def find_nih_csv(root: str | os.PathLike[str]) -> Path:
    """The ``Data_Entry_2017*.csv[.gz]`` file in ``root`` (shortest name first, then alphabetical).

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no such file.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"NIH root {folder} is not an existing folder")
    candidates = sorted(
        (p for p in folder.glob("Data_Entry_2017*.csv*") if p.name.endswith((".csv", ".csv.gz"))),
        key=lambda p: (len(p.name), p.name),
    )
    if not candidates:
        listing = sorted(p.name for p in folder.iterdir())[:10]
        raise FileNotFoundError(
            f"no Data_Entry_2017*.csv in NIH root {folder} (it holds {listing}); "
            "pass csv_path=... or point root at the folder holding the CSV and images/"
        )
    return candidates[0]


def nih_metadata(table: pd.DataFrame, source: str = "the CSV") -> pd.DataFrame:
    """Turn NIH CSV rows into the package's metadata table (all rows, no file checks).

    Args:
        table: rows of a ``Data_Entry_2017`` CSV (columns as NIH publishes them).
        source: text naming the CSV in error messages.

    Returns:
        DataFrame with ``path`` (``images/<Image Index>``), ``label`` (0 for
        "No Finding", else 1), ``patient_id`` (str), ``finding`` (the
        ``Finding Labels`` text), ``view``, ``image_index``, plus ``follow_up``,
        ``age``, ``sex`` when the CSV has them.

    Raises:
        ValueError: required columns are missing (they are named).
    """
    missing = [c for c in NIH_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{source} lacks NIH column(s) {missing}; found {list(table.columns)}. "
            f"A Data_Entry_2017 CSV needs {list(NIH_COLUMNS)}"
        )
    findings = table["Finding Labels"].fillna("").astype(str).str.strip()
    meta = pd.DataFrame(
        {
            "path": ("images/" + table["Image Index"].astype(str).str.strip()).to_numpy(object),
            "label": (findings != NORMAL_FINDING).astype(np.int64).to_numpy(),
            "patient_id": table["Patient ID"].astype(str).str.strip().to_numpy(object),
            "finding": findings.to_numpy(object),
            "view": table["View Position"].astype(str).str.strip().str.upper().to_numpy(object),
            "image_index": table["Image Index"].astype(str).str.strip().to_numpy(object),
        }
    )
    for source_column, column in (("Follow-up #", "follow_up"), ("Patient Age", "age"), ("Patient Gender", "sex")):
        if source_column in table.columns:
            meta[column] = table[source_column].to_numpy()
    empty = meta["finding"] == ""
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())[:5].tolist()
        raise ValueError(f"{source}: empty 'Finding Labels' in rows {rows}")
    return meta


def load_nih_labels(csv_path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """NIH label table for statistics (no images needed).

    Args:
        csv_path: a ``Data_Entry_2017*.csv[.gz]``; None uses the full CSV shipped
            with torchxrayvision (:func:`find_torchxrayvision_csv`).

    Returns:
        :func:`nih_metadata` of every row (112,120 rows for the full CSV).
    """
    path = Path(csv_path) if csv_path is not None else find_torchxrayvision_csv()
    if not path.is_file():
        raise FileNotFoundError(f"NIH CSV {path} not found")
    return nih_metadata(pd.read_csv(path), source=str(path))


def finding_counts(metadata: pd.DataFrame) -> pd.Series:
    """Images per finding (multi-label rows count once per finding), "No Finding" included.

    Args:
        metadata: a table with a ``finding`` column of ``|``-separated labels.

    Returns:
        Series finding -> count, sorted descending.
    """
    exploded = metadata["finding"].astype(str).str.split("|").explode().str.strip()
    return exploded.value_counts().rename("images")


def _index_images(root: Path) -> dict[str, str]:
    """Image file name -> path relative to ``root`` for the flat and Kaggle layouts."""
    folders = [root / "images"] if (root / "images").is_dir() else []
    folders += sorted(p / "images" for p in root.glob("images_*") if (p / "images").is_dir())
    index: dict[str, str] = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                if Path(entry.name).suffix.lower() in _IMAGE_SUFFIXES:
                    index.setdefault(entry.name, os.path.relpath(entry.path, root))
    return index


class NIHChestXray(XrayDataset):
    """NIH ChestX-ray14 images and labels (sample dicts as :class:`XrayDataset`).

    Args:
        root: folder holding the CSV and ``images/``.
        csv_path: the CSV to use instead of the one in ``root`` (e.g.
            :func:`find_torchxrayvision_csv` with a partial image download).
        view: ``"PA"``, ``"AP"`` or ``"all"`` (case-insensitive).
        image_size: side ``S`` of the returned images (resize major axis + pad).
        preprocess: optional ``uint8 [H, W] -> uint8`` step before resizing.
        on_missing: ``"drop"`` (counted warning) or ``"raise"``; see module doc.

    Raises:
        FileNotFoundError: wrong root (no folder, no CSV, no images folder) or
            none of the listed images present.
        ValueError: CSV lacking columns, unknown view, or no image of that view.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        csv_path: str | os.PathLike[str] | None = None,
        view: str = "PA",
        image_size: int = 256,
        preprocess: Preprocess | None = None,
        on_missing: OnMissing = "drop",
    ) -> None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"NIH root {root_path} is not an existing folder")
        if view.upper() not in _VIEWS:
            raise ValueError(f"view must be 'PA', 'AP' or 'all', got {view!r}")
        csv = Path(csv_path) if csv_path is not None else find_nih_csv(root_path)
        if not csv.is_file():
            raise FileNotFoundError(f"NIH CSV {csv} not found")
        images = _index_images(root_path)
        if not images:
            raise FileNotFoundError(
                f"NIH root {root_path} has no images/ folder with images (nor Kaggle-style images_*/images/)"
            )
        meta = nih_metadata(pd.read_csv(csv), source=str(csv))
        self.view = view.upper() if view.upper() != "ALL" else "all"
        if self.view != "all":
            meta = meta[meta["view"] == self.view].reset_index(drop=True)
            if meta.empty:
                raise ValueError(f"{csv} lists no image with View Position {self.view!r}")
        relative = meta["image_index"].map(images)
        meta = drop_missing_files(meta, relative.notna().to_numpy(), on_missing, source=str(csv))
        meta["path"] = relative.dropna().to_numpy(object)
        self.csv_path = csv
        super().__init__(meta, image_size=image_size, root=root_path, preprocess=preprocess)
