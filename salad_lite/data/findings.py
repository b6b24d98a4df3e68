"""What each image of a split shows: its findings (and their severity where the data record one).

The evaluation chapters break the test AUC down per finding
(:func:`salad_lite.report.per_finding_auc`); this module reads, for every image of
a split, the findings it carries from the split's metadata table (aligned with
the images) and, for the embedded synthetic sets, from the renderer's side files
next to the images (found through the split's ``root``):

====================  ===========================================  ==========================================
dataset               findings (one or more per abnormal image)    severity
====================  ===========================================  ==========================================
``nih``               ``Finding Labels`` (``|``-separated; the     embedded set: ``severity_<Finding>`` of
                      metadata column ``finding``)                 ``synth_metadata.csv`` in [0, 1];
                                                                   real NIH: none
``mura`` (embedded)   the lesion kind (``abnormality`` of          ``severity`` in [0.2, 1] of the same file
                      ``groundtruth/annotations.csv``: fracture,
                      hardware, lytic)
``mura`` (real)       none recorded: the **body part** groups      none
                      normal and abnormal images alike
``folder``            the metadata ``finding`` of the abnormal     none
                      images (class folder or manifest column),
                      else ``abnormal``
====================  ===========================================  ==========================================

A side file is used only when it sits where the renderer writes it and the
renderer's manifest is beside it, so a real download is never mistaken for an
embedded set.

The one reading of a ``finding`` text lives here: :func:`parse_findings`
(``|``-separated names, stripped, the normal words of :data:`NORMAL_FINDING_WORDS`
dropped ignoring case, a missing value refused) and :func:`is_normal_finding`;
the report, the probes and the explorers use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salad_lite.data.base import read_text_csv, text_to_numbers
from salad_lite.data.batches import dataset_labels
from salad_lite.synth import CHEST_MANIFEST, CHEST_METADATA, LIMB_ANNOTATIONS, LIMB_MANIFEST, embedded_side_file

__all__ = ["FINDING_KINDS", "MURA_ANNOTATIONS", "NIH_SYNTH_METADATA", "NORMAL_FINDING_WORDS", "SplitFindings",
           "finding_column", "is_normal_finding", "parse_findings", "split_findings"]

FINDING_KINDS = ("nih", "mura", "folder")
#: The embedded chest renderer's side table (per-finding severities), in the NIH root
#: (:data:`salad_lite.synth.CHEST_METADATA`).
NIH_SYNTH_METADATA = CHEST_METADATA
#: The embedded limb renderer's side table (lesion kind and severity), beside the ``MURA-v1.1`` folder
#: (:data:`salad_lite.synth.LIMB_ANNOTATIONS`).
MURA_ANNOTATIONS = LIMB_ANNOTATIONS
#: Words that name no finding (compared stripped and lower-cased): a normal image's ``finding``.
NORMAL_FINDING_WORDS = frozenset({"", "no finding", "normal", "none"})


def is_normal_finding(name: str) -> bool:
    """True for a text that names no finding: ``""``, ``"No Finding"``, ``"normal"``, ``"none"`` (any case, spaces).

    Raises:
        TypeError: ``name`` is not text.
    """
    if not isinstance(name, str):
        raise TypeError(f"a finding name must be text, got {name!r}")
    return name.strip().lower() in NORMAL_FINDING_WORDS


def _is_missing(value: Any) -> bool:
    """None, NaN, ``pd.NA``, ``NaT``: a scalar pandas counts as missing."""
    if value is None:
        return True
    try:
        return pd.api.types.is_scalar(value) and bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def parse_findings(value: Any, where: str = "finding") -> tuple[str, ...]:
    """The finding names of one image: ``"Effusion|Mass"`` -> ``("Effusion", "Mass")``.

    ``value`` is one text (names separated by ``|``) or a tuple / list of texts (each
    may itself hold ``|``). Names are stripped; the normal words
    (:func:`is_normal_finding`: ``No Finding``, ``normal``, ``none``, empty, any case)
    are dropped, so a normal image gives ``()``; a repeated name is kept once (first
    place); the case of the other names is kept.

    Args:
        value: the image's ``finding`` entry.
        where: names the entry in error messages (e.g. ``"findings[3]"``).

    Raises:
        ValueError: ``value`` is missing (None, NaN, ``pd.NA``): an image without a
            finding is written ``"No Finding"`` (or ``""``), never left blank by NaN.
        TypeError: ``value`` is neither text nor a tuple / list of texts.
    """
    if isinstance(value, str):
        parts = value.split("|")
    elif isinstance(value, (tuple, list)) and all(isinstance(p, str) for p in value):
        parts = [name for p in value for name in p.split("|")]
    elif _is_missing(value):
        raise ValueError(f"{where} is missing ({value!r}): write 'No Finding' (or '') for an image without a "
                         "finding")
    else:
        raise TypeError(f"{where} must be text or a tuple of text, got {value!r}")
    return tuple(dict.fromkeys(p.strip() for p in parts if not is_normal_finding(p)))


def finding_column(values: Any, what: str = "'finding'") -> list[tuple[str, ...]]:
    """:func:`parse_findings` of every entry of a column (a sequence or Series, in order); errors name the position.

    Raises:
        ValueError, TypeError: as :func:`parse_findings`, naming ``what`` and the position (0-based).
    """
    entries = values.tolist() if isinstance(values, (pd.Series, np.ndarray)) else list(values)
    return [parse_findings(value, f"{what} of image {i}") for i, value in enumerate(entries)]


@dataclass(frozen=True)
class SplitFindings:
    """The findings of every image of a split, aligned with its items (the input of ``per_finding_auc``).

    Attributes:
        labels: ``int64 [M]``, 0 normal / 1 abnormal.
        findings: ``M`` tuples of names; an abnormal image has at least one (several
            for a multi-label NIH film); a normal image has none, unless
            ``shared_by_normals`` (then its group, e.g. its body part).
        severity: ``M`` dicts finding -> severity (a float; empty for normal
            images), or None when the data record no severity.
        grouping: what a finding is here: ``"finding"``, ``"lesion kind"``,
            ``"body part"`` or ``"label"``.
        shared_by_normals: True when normal images carry the groups too (body part):
            each group's abnormal images are then compared with the normal images of
            the same group, not with every normal image.
        source: one sentence saying where the findings come from, for the chapter.
    """

    labels: np.ndarray
    findings: tuple[tuple[str, ...], ...]
    severity: tuple[dict[str, float], ...] | None
    grouping: str
    shared_by_normals: bool
    source: str


def split_findings(dataset: Any, kind: str) -> SplitFindings:
    """The findings (and severities where recorded) of every image of ``dataset``, a split of data set ``kind``.

    Args:
        dataset: a split of the package's contract (``.metadata`` aligned with the
            items, ``.labels``; ``.root`` for the embedded sets' side files), e.g.
            ``load_splits(...)["test"]``.
        kind: ``"nih"``, ``"mura"`` or ``"folder"`` (see the module docstring).

    Returns:
        A :class:`SplitFindings` with ``M = len(dataset)`` entries.

    Raises:
        ValueError: unknown ``kind``; the metadata lacks a column that ``kind``
            needs (named); a missing ``finding`` (None, NaN; the image's position named,
            :func:`parse_findings`); an abnormal image without a finding; an image missing from
            an embedded side file, a side file disagreeing with the split's findings or
            labels, or a severity that is not a finite number (file, image and value named).
        TypeError: a ``finding`` that is not text (position named).
        salad_lite.data.base.LabelError: a label is not 0/1.
        salad_lite.files.CorruptFileError: a side file cannot be read as CSV (named).
    """
    if kind not in FINDING_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {FINDING_KINDS}")
    labels = dataset_labels(dataset, "findings")
    meta = getattr(dataset, "metadata", None)
    if not isinstance(meta, pd.DataFrame) or len(meta) != len(labels):
        raise ValueError(f"the split needs a metadata table aligned with its {len(labels)} images "
                         f"(got {type(meta).__name__})")
    root = getattr(dataset, "root", None)
    root = Path(root) if root is not None else None
    if kind == "nih":
        return _nih_findings(meta, labels, root)
    if kind == "mura":
        return _mura_findings(meta, labels, root)
    return _folder_findings(meta, labels)


def _require(meta: pd.DataFrame, column: str, kind: str) -> None:
    if column not in meta.columns:
        raise ValueError(f"a {kind} split's metadata needs column {column!r}; it has {list(meta.columns)}")


def _abnormal_findings(meta: pd.DataFrame, labels: np.ndarray, what: str) -> tuple[tuple[str, ...], ...]:
    """Per image: the ``finding`` names of an abnormal image, () for a normal one; refuses an abnormal image without."""
    found = tuple(names if label else ()
                  for names, label in zip(finding_column(meta["finding"], f"the {what}"), labels))
    empty = [i for i, names in enumerate(found) if labels[i] and not names]
    if empty:
        raise ValueError(f"{len(empty)} abnormal image(s) have no finding in the {what} (positions {empty[:5]}, "
                         f"'finding' {meta['finding'].iloc[empty[:5]].tolist()})")
    return found


def _severities(table: pd.DataFrame, rows: np.ndarray, columns: list[str], path: Path,
                keys: list[str]) -> np.ndarray:
    """``float [n]`` severities ``table[columns[j]][rows[j]]``, refusing a value that is not a finite number."""
    text = pd.Series([table[c].iloc[r] for c, r in zip(columns, rows)], dtype=object)
    numbers, bad = text_to_numbers(text, required=True)
    if len(bad):
        shown = "; ".join(f"{keys[b]} {columns[b]}={text.iloc[b]!r}" for b in bad[:5])
        raise ValueError(f"{path}: {len(bad)} severity value(s) are not finite numbers: {shown}")
    return numbers.to_numpy(np.float64)


def _lookup(table: pd.DataFrame, key_column: str, keys: list[str], path: Path) -> np.ndarray:
    """Row positions of ``keys`` in ``table[key_column]``; refuses keys that are absent (named)."""
    where = pd.Series(np.arange(len(table)), index=table[key_column].str.strip().to_numpy())
    where = where[~where.index.duplicated()]
    missing = [k for k in keys if k not in where.index]
    if missing:
        raise ValueError(f"{path} has no row for {len(missing)} image(s) of the split, e.g. {missing[:3]}: "
                         "the side file does not belong to these images (re-render the embedded set)")
    return where.loc[keys].to_numpy(np.int64)


def _nih_findings(meta: pd.DataFrame, labels: np.ndarray, root: Path | None) -> SplitFindings:
    _require(meta, "finding", "nih")
    findings = _abnormal_findings(meta, labels, "NIH 'Finding Labels'")
    side = embedded_side_file(root, CHEST_METADATA, CHEST_MANIFEST)
    if side is None:
        return SplitFindings(labels, findings, None, "finding", False,
                             "NIH 'Finding Labels' of each test image (no severity is recorded for these films)")
    _require(meta, "image_index", "nih")
    table = read_text_csv(side, what="embedded NIH side table")
    for column in ("Image Index", "Finding Labels"):
        if column not in table.columns:
            raise ValueError(f"{side} lacks column {column!r}; it has {list(table.columns)}")
    keys = meta["image_index"].astype(str).str.strip().tolist()
    rows = _lookup(table, "Image Index", keys, side)
    disagree = [k for k, r, names in zip(keys, rows, findings)
                if set(parse_findings(table["Finding Labels"].iloc[r])) != set(names)]
    if disagree:
        raise ValueError(f"{side}: 'Finding Labels' of {len(disagree)} image(s) differ from the split's, "
                         f"e.g. {disagree[:3]}: the side file does not belong to these images")
    pairs = [(i, name) for i, names in enumerate(findings) for name in names]
    columns = [f"severity_{name}" for _, name in pairs]
    absent = sorted({c for c in columns if c not in table.columns})
    if absent:
        raise ValueError(f"{side} lacks severity column(s) {absent}")
    values = _severities(table, rows[[i for i, _ in pairs]], columns, side, [keys[i] for i, _ in pairs])
    severity: list[dict[str, float]] = [{} for _ in findings]
    for (i, name), value in zip(pairs, values):
        severity[i][name] = float(value)
    return SplitFindings(labels, findings, tuple(severity), "finding", False,
                         "NIH 'Finding Labels' of each test image; severities in [0, 1] from the embedded "
                         f"renderer's {NIH_SYNTH_METADATA}")


def _mura_findings(meta: pd.DataFrame, labels: np.ndarray, root: Path | None) -> SplitFindings:
    _require(meta, "path", "mura")
    side = embedded_side_file(root.parent if root is not None else None, LIMB_ANNOTATIONS, LIMB_MANIFEST)
    if side is None:
        _require(meta, "body_part", "mura")
        parts = tuple((str(p).strip(),) for p in meta["body_part"])
        return SplitFindings(labels, parts, None, "body part", True,
                             "MURA labels whole studies normal or abnormal and names no finding: each row is "
                             "a body part, its abnormal test images against its normal ones")
    table = read_text_csv(side, what="embedded MURA annotations")
    for column in ("path", "abnormality", "severity", "label"):
        if column not in table.columns:
            raise ValueError(f"{side} lacks column {column!r}; it has {list(table.columns)}")
    folder = root.name if root is not None else ""
    keys = [f"{folder}/{str(p).strip()}" for p in meta["path"]]
    rows = _lookup(table, "path", keys, side)
    kinds = table["abnormality"].iloc[rows].str.strip().to_numpy(object)
    lesioned = np.array([bool(parse_findings(k)) for k in kinds])
    if (lesioned != labels.astype(bool)).any():
        bad = np.flatnonzero(lesioned != labels.astype(bool))[:3]
        raise ValueError(f"{side}: the lesion of {len(np.flatnonzero(lesioned != labels.astype(bool)))} image(s) "
                         f"disagrees with the split's label, e.g. "
                         + "; ".join(f"{keys[b]}: abnormality {kinds[b]!r}, label {labels[b]}" for b in bad))
    findings = tuple((str(k),) if label else () for k, label in zip(kinds, labels))
    abnormal = np.flatnonzero(labels == 1)
    values = _severities(table, rows[abnormal], ["severity"] * len(abnormal), side, [keys[i] for i in abnormal])
    severity: list[dict[str, float]] = [{} for _ in findings]
    for i, value in zip(abnormal, values):
        severity[i][findings[i][0]] = float(value)
    return SplitFindings(labels, findings, tuple(severity), "lesion kind", False,
                         "the lesion drawn in each abnormal embedded limb film (fracture, hardware, lytic) and "
                         f"its severity in [0.2, 1], from the renderer's {MURA_ANNOTATIONS}")


def _folder_findings(meta: pd.DataFrame, labels: np.ndarray) -> SplitFindings:
    if "finding" in meta.columns:
        findings = tuple((names or ("abnormal",)) if label else ()
                         for names, label in zip(finding_column(meta["finding"], "the metadata 'finding'"), labels))
        grouping = "finding" if any(names != ("abnormal",) for names in findings if names) else "label"
    else:
        findings = tuple(("abnormal",) if label else () for label in labels)
        grouping = "label"
    source = ("the 'finding' of each abnormal image (its class folder or manifest column)" if grouping == "finding"
              else "the label only: the data name no finding, so there is one row, abnormal against normal")
    return SplitFindings(labels, findings, None, grouping, False, source)
