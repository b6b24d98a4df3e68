"""NIH ChestX-ray14 (Wang et al., CVPR 2017): loader and label tables.

Layout expected under ``root`` (the official download, or the synthetic set of
:mod:`salad_lite.synth.chest`)::

    root/Data_Entry_2017.csv        (any Data_Entry_2017*.csv / .csv.gz)
    root/images/00000001_000.png    (one flat folder)

The Kaggle re-packaging (``root/images_001/images/*.png`` ... ``images_012``) is
accepted too; a file name found in two of these folders is an error naming
both files (which one the CSV means is unknown). Labels: ``"No Finding"`` -> 0 (normal), one or more of the 14
findings joined by ``|`` -> 1 (abnormal). The labels are parsed strictly: names
are matched ignoring case and surrounding spaces (``no finding`` is normal, and
is stored as ``No Finding``); an unknown name, an empty cell, or ``No Finding``
combined with a finding is a :class:`~salad_lite.data.base.LabelError` naming
the CSV, the row, the line and the value. The CSV is read as text:
``patient_id`` is the CSV's ``Patient ID`` exactly as written (``0007`` stays
``0007``); ``Follow-up #`` and ``Patient Age`` are converted to numbers
explicitly (an age written ``058Y`` is 58); when present, every cell of them
must hold a finite number (an empty cell is refused like ``NaN``). A row with
fewer or more fields than the header (a truncated last line) is refused naming
its line (:func:`~salad_lite.data.base.read_text_csv`). Hidden and system files in the
images folders (``._x.png``, ``Thumbs.db``) are never images
(:func:`~salad_lite.data.io.is_hidden_or_system`).

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
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from salad_lite.data.base import (
    OnMissing,
    Preprocess,
    XrayDataset,
    drop_missing_files,
    cell_text,
    label_error,
    read_text_csv,
    refuse_duplicate_files,
    text_to_numbers,
)
from salad_lite.data.io import DataWarning, is_hidden_or_system, list_files

__all__ = [
    "NIH_COLUMNS",
    "NIH_FINDINGS",
    "NIHChestXray",
    "find_nih_csv",
    "find_torchxrayvision_csv",
    "finding_counts",
    "load_nih_labels",
    "nih_metadata",
    "parse_finding_labels",
]

#: CSV columns the loader needs.
NIH_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Patient ID", "View Position")
#: The 14 findings of ChestX-ray14.
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
NORMAL_FINDING = "No Finding"
_CANONICAL = {name.lower(): name for name in (*NIH_FINDINGS, NORMAL_FINDING)}
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
        (p for p in folder.glob("Data_Entry_2017*.csv*")
         if p.name.endswith((".csv", ".csv.gz")) and not is_hidden_or_system(p, folder)),
        key=lambda p: (len(p.name), p.name),
    )
    if not candidates:
        listing = sorted(p.name for p in folder.iterdir() if not is_hidden_or_system(p, folder))[:10]
        raise FileNotFoundError(
            f"no Data_Entry_2017*.csv in NIH root {folder} (it holds {listing}); "
            "pass csv_path=... or point root at the folder holding the CSV and images/"
        )
    return candidates[0]


def parse_finding_labels(findings: pd.Series, source: str = "the CSV", first_line: int | None = 2) -> pd.DataFrame:
    """Parse NIH ``Finding Labels`` strictly into (canonical text, 0/1 label).

    Args:
        findings: one ``Finding Labels`` cell per row, as text.
        source: the CSV, for the message.
        first_line: file line of row 0 (2 below a header; None for a table).

    Returns:
        DataFrame aligned with ``findings``: ``finding`` (the names in NIH's
        spelling, joined by ``|``) and ``label`` (int64: 0 for ``No Finding``,
        1 for one or more of :data:`NIH_FINDINGS`).

    Raises:
        LabelError: an empty cell, an unknown name (``Fracture``, ``2``), or
            ``No Finding`` combined with a finding; the message names
            ``source``, the rows, lines and values.
    """
    texts = findings.astype(str).tolist()
    canonical: list[str] = []
    labels = np.zeros(len(texts), dtype=np.int64)
    bad: list[int] = []
    for row, text in enumerate(texts):
        names = [_CANONICAL.get(part.strip().lower()) for part in text.split("|")]
        if not text.strip() or None in names or (NORMAL_FINDING in names and len(names) > 1):
            bad.append(row)
            canonical.append(text)
            continue
        canonical.append("|".join(names))  # type: ignore[arg-type]
        labels[row] = int(names != [NORMAL_FINDING])
    if bad:
        raise label_error(
            source, bad, [texts[r] for r in bad],
            f"expected {NORMAL_FINDING!r} or one or more of the 14 findings joined by '|'", first_line,
        )
    return pd.DataFrame({"finding": pd.Series(canonical, dtype=object), "label": labels})


def _numbers(table: pd.DataFrame, column: str, source: str, strip: str = "") -> np.ndarray:
    """A numeric CSV column converted explicitly (``strip``: unit letters to drop, e.g. ``Y`` of ``058Y``).

    Every cell must hold a finite number: an empty cell is refused like the text ``NaN`` (a column
    that is present is filled in every row; an NIH CSV without ages simply lacks the column).
    """
    text = table[column].str.strip().str.rstrip(strip) if strip else table[column]
    numbers, bad = text_to_numbers(text, required=True)
    if len(bad):
        shown = "; ".join(f"row {r} (line {r + 2}): {table[column].iloc[r]!r}" for r in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"{source}: column {column!r} holds values that are not finite numbers: {shown}{more} "
                         "(an empty cell is not a number either)")
    return numbers.to_numpy()


def nih_metadata(table: pd.DataFrame, source: str = "the CSV") -> pd.DataFrame:
    """Turn NIH CSV rows into the package's metadata table (all rows, no file checks).

    Args:
        table: rows of a ``Data_Entry_2017`` CSV (columns as NIH publishes them),
            read as text (:func:`~salad_lite.data.base.read_text_csv`); other
            dtypes are turned into text first.
        source: text naming the CSV in error messages.

    Returns:
        DataFrame with ``path`` (``images/<Image Index>``), ``label`` (0 for
        "No Finding", else 1), ``patient_id`` (str, as written), ``finding``
        (the ``Finding Labels`` names in NIH's spelling), ``view``,
        ``image_index``, plus ``follow_up``, ``age`` (numbers), ``sex`` when
        the CSV has them.

    A table that was not read as text (a DataFrame built by hand or read with
    pandas' defaults) is first turned into the text a CSV holds: missing
    values (None, NaN) become empty cells and whole floats lose their ``.0``
    (``Patient ID`` 7.0 is ``"7"``), so that the rules below are those of the CSV.

    Raises:
        ValueError: required columns are missing (they are named), an
            ``Image Index`` or ``Patient ID`` is empty, an image is listed
            twice, an image index names a hidden or system file, or a
            follow-up / age is not a finite number (``NaN``, ``inf`` and an
            empty cell alike: a column that is present is filled in every
            row); the column, rows and lines are named.
        LabelError: a ``Finding Labels`` cell is not understood
            (:func:`parse_finding_labels`).
    """
    missing = [c for c in NIH_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{source} lacks NIH column(s) {missing}; found {list(table.columns)}. "
            f"A Data_Entry_2017 CSV needs {list(NIH_COLUMNS)}"
        )
    table = table.reset_index(drop=True).copy()
    for column in table.columns:  # a table not read as text: the text a CSV would hold
        if table[column].map(lambda v: not isinstance(v, str)).any():
            table[column] = table[column].map(cell_text).astype(object)
    parsed = parse_finding_labels(table["Finding Labels"], source)
    index = table["Image Index"].str.strip()
    patients = table["Patient ID"].str.strip()
    for column, values in (("Image Index", index), ("Patient ID", patients)):
        empty = np.flatnonzero((values == "").to_numpy())
        if len(empty):
            raise ValueError(f"{source}: column {column!r} is empty in {len(empty)} row(s), first rows "
                             f"{empty[:5].tolist()} (lines {(empty[:5] + 2).tolist()})")
    hidden = index.map(lambda name: is_hidden_or_system(Path(name))).to_numpy(bool)
    if hidden.any():
        rows = np.flatnonzero(hidden)[:5].tolist()
        raise ValueError(f"{source}: 'Image Index' names hidden or system files, which are never images, "
                         f"in rows {rows}: {index.iloc[rows].tolist()}")
    refuse_duplicate_files(index.tolist(), f"{source} (column 'Image Index')", first_line=2)
    meta = pd.DataFrame(
        {
            "path": ("images/" + index).to_numpy(object),
            "label": parsed["label"].to_numpy(),
            "patient_id": patients.to_numpy(object),
            "finding": parsed["finding"].to_numpy(object),
            "view": table["View Position"].astype(str).str.strip().str.upper().to_numpy(object),
            "image_index": index.to_numpy(object),
        }
    )
    if "Follow-up #" in table.columns:
        meta["follow_up"] = _numbers(table, "Follow-up #", source)
    if "Patient Age" in table.columns:
        meta["age"] = _numbers(table, "Patient Age", source, strip="Yy")
    if "Patient Gender" in table.columns:
        meta["sex"] = table["Patient Gender"].str.strip().to_numpy(object)
    return meta


def load_nih_labels(csv_path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """NIH label table for statistics (no images needed).

    Args:
        csv_path: a ``Data_Entry_2017*.csv[.gz]``; None uses the full CSV shipped
            with torchxrayvision (:func:`find_torchxrayvision_csv`).

    Returns:
        :func:`nih_metadata` of every row (112,120 rows for the full CSV).

    Raises:
        FileNotFoundError: the CSV does not exist (or torchxrayvision is missing).
        ValueError, LabelError: see :func:`nih_metadata`.
        CorruptFileError: the file cannot be parsed as CSV.
    """
    path = Path(csv_path) if csv_path is not None else find_torchxrayvision_csv()
    return nih_metadata(read_text_csv(path, what="NIH CSV"), source=str(path))


def finding_counts(metadata: pd.DataFrame) -> pd.Series:
    """Images per finding (multi-label rows count once per finding), "No Finding" included.

    Args:
        metadata: a table with a ``finding`` column of ``|``-separated labels.

    Returns:
        Series finding -> count, sorted descending.

    Raises:
        KeyError: ``metadata`` has no ``finding`` column.
    """
    exploded = metadata["finding"].astype(str).str.split("|").explode().str.strip()
    return exploded.value_counts().rename("images")


def _index_images(root: Path) -> dict[str, str]:
    """Image file name -> path relative to ``root`` for the flat and Kaggle layouts.

    Raises:
        ValueError: one file name is in two of the images folders (``images/`` and
            ``images_001/images/``, say): which copy is the CSV's image is unknown, so
            both files are named (a file listed twice is an error). Two names of one
            file (a link) are one file.
    """
    folders = [root / "images"] if (root / "images").is_dir() else []
    folders += sorted(p / "images" for p in root.glob("images_*")
                      if (p / "images").is_dir() and not is_hidden_or_system(p, root))
    index: dict[str, str] = {}
    twice: list[tuple[str, str]] = []
    for folder in folders:
        for path in list_files(folder, _IMAGE_SUFFIXES, recursive=False):  # no hidden / system files
            relative = os.path.relpath(path, root)
            first = index.setdefault(path.name, relative)
            if first != relative and not os.path.samefile(root / first, path):
                twice.append((first, relative))
    if twice:
        shown = "; ".join(f"{a} and {b}" for a, b in twice[:3]) + (" ..." if len(twice) > 3 else "")
        raise ValueError(f"NIH root {root}: {len(twice)} image name(s) are in two images folders, so which file "
                         f"the CSV's row means is unknown: {shown}; keep one copy of each")
    return index


def _case_hint(missing: list[str], images: dict[str, str]) -> str:
    """A hint for CSV names missing on disk that exist under another letter case (``.PNG`` for ``.png``)."""
    by_lower = {name.lower(): name for name in images}
    other = [(name, by_lower[name.lower()]) for name in missing if name.lower() in by_lower]
    if not other:
        return ""
    listed, found = other[0]
    return (f"; {len(other)} of them exist under another letter case (the CSV's {listed!r} is "
            f"{images[found]!r} on disk): file names are compared exactly, rename the files or the CSV entries")


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

    With ``view`` ``"PA"`` or ``"AP"``, rows of the other view are left out by
    choice; rows whose ``View Position`` is blank or neither are left out with
    ONE :class:`~salad_lite.data.io.DataWarning` counting them.

    Raises:
        FileNotFoundError: wrong root (no folder, no CSV, no images folder) or
            none of the listed images present (with a hint when they exist
            under another letter case, ``.PNG`` for ``.png``).
        ValueError: CSV lacking columns, listing no image or one image twice,
            an empty ``Image Index`` / ``Patient ID``, unknown view, no image of
            that view, or one file name in two images folders (both named).
        LabelError: a ``Finding Labels`` cell not understood (CSV, row, line and value named).
        CorruptFileError: the CSV cannot be parsed.
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
        meta = nih_metadata(read_text_csv(csv, what="NIH CSV"), source=str(csv))
        if meta.empty:
            raise ValueError(f"NIH CSV {csv} lists no images (a header without rows)")
        self.view = view.upper() if view.upper() != "ALL" else "all"
        if self.view != "all":
            unknown = ~meta["view"].isin(_VIEWS[:2])
            if unknown.any():
                values = sorted(set(meta.loc[unknown, "view"]))
                warnings.warn(f"{csv}: left out {int(unknown.sum())} of {len(meta)} rows whose View Position is blank "
                              f"or unknown ({values[:5]}; expected 'PA' or 'AP'), so not {self.view!r}; "
                              "view='all' keeps them", DataWarning, stacklevel=2)
            meta = meta[meta["view"] == self.view].reset_index(drop=True)
            if meta.empty:
                raise ValueError(f"{csv} lists no image with View Position {self.view!r}")
        relative = meta["image_index"].map(images)
        hint = _case_hint(meta.loc[relative.isna(), "image_index"].tolist(), images)
        meta = drop_missing_files(meta, relative.notna().to_numpy(), on_missing, source=str(csv), hint=hint)
        meta["path"] = relative.dropna().to_numpy(object)
        self.csv_path = csv
        super().__init__(meta, image_size=image_size, root=root_path, preprocess=preprocess)
