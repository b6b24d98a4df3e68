"""The paper's comparison as one resumable experiment grid: Table 1's rows and Fig. 5's baselines.

A *cell* is one method at one anomalous ratio (AR, % of abnormal training
images) and one replicate (seed). Every cell follows the book's protocol: it
trains on the AR's training split, selects its checkpoint (and K, for the
rows scored by Eq. 4) on validation, and scores the test split once. The
seeded splits share one validation and one test set across every AR up to
15 % (:data:`salad_lite.data.registry.HELD_OUT_RESERVE_RATIO`), so every cell of a
grid is scored on the same test images and paired comparisons are exact.

Rows (:data:`METHODS`):

- Table 1, named configurations of SALAD (:data:`TABLE1_LOSSES`): MemDAE
  (reconstruction only, AR 0, scored by Eq. 4 against the bank), SALAD w/o
  L_mse, SALAD w/o L_agg and SALAD, at every requested AR > 0;
- Fig. 5's baselines (:mod:`salad_lite.methods`), at one AR (``baseline_ar``;
  the paper compares them with its † models: NIH at AR 10, MURA at AR 5, read from
  :data:`salad_lite.report.PAPER_TABLE1`).

Profiles (:func:`grid_spec`): ``smoke`` runs every method once at AR 0 and 5;
``default`` Table 1's rows at AR 0/5/10/15 and the baselines but
:data:`DEFAULT_FULL_ONLY` at the † AR, with 2 replicates (a default NIH cell takes
5-55 s on a CPU); ``full`` every method with 4 replicates at the paper's full-size
configuration.

Folders (``run_dir`` is shared with the chapters)::

    run_dir/<dataset>/seed<s>/...                          SALAD at the profile's AR: the run of chapters 3-6
    run_dir/<dataset>/table1/<method>/ar<AR>/<dataset>/seed<s>/  any other Table 1 cell (as evaluate_replicate)
    run_dir/<dataset>/table1/<method>/ar<AR>/seed<s>/      a baseline cell: checkpoints, result.json
    run_dir/table1.json, run_dir/table1.csv                the summary of every dataset run in this folder

A finished cell is loaded, never retrained; an interrupted one resumes from its
last epoch; a cell stored under another configuration or other splits is
refused (file named). ``table1.json`` accumulates: a grid's rows replace the
stored rows of the same (method, AR), the other stored rows are kept. JSON holds
no NaN: the 95 % half-width of a single replicate is ``null``. Command line::

    python -m salad_lite.table1 --dataset nih --data-root DIR --profile full --methods all \\
        --ar 0,5,10,15 --replicates 4 --run-dir runs/full --device cuda
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salad_lite.book import check_available_device
from salad_lite.cli_errors import check_run_dir, data_script, refuse_torchrun
from salad_lite.config import SaladConfig, profile_config
from salad_lite.data.batches import check_splits, dataset_labels, splits_fingerprint
from salad_lite.experiment import check_stored_test_scores, evaluate_replicate, replicate_dir, splits_for
from salad_lite.files import CorruptFileError, read_json, write_json_atomic, write_text_atomic
from salad_lite.methods import BASELINE_IDS, baseline_class, baseline_config
from salad_lite.metrics import auc, auprc, mean_ci
from salad_lite.report import PAPER_TABLE1
from salad_lite.utils import is_finite_number, is_int, is_number, progress_enabled

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

__all__ = ["ALL_METHODS", "DEFAULT_FULL_ONLY", "GridSpec", "METHODS", "PAPER_BASELINE_AR", "TABLE1_LOSSES",
           "TABLE1_METHODS", "chapter_grid_spec", "grid_spec", "main", "merge_table", "plan_cells", "run_cell",
           "run_grid", "summarise", "table1_csv"]

#: Table 1's rows as loss settings of :class:`salad_lite.config.LossConfig` (everything else is the profile's).
TABLE1_LOSSES: dict[str, dict[str, Any]] = {
    "memdae": {"use_instance": False, "use_aggregation": False, "num_views": 0},  # reconstruction only
    "salad_no_mse": {"reconstruction": "none"},
    "salad_no_agg": {"use_aggregation": False},
    "salad": {},
}
TABLE1_METHODS: tuple[str, ...] = tuple(TABLE1_LOSSES)
ALL_METHODS: tuple[str, ...] = TABLE1_METHODS + BASELINE_IDS
#: method id -> the name the paper's Table 1 and Fig. 5 use.
METHODS: dict[str, str] = {"memdae": "MemDAE", "salad_no_mse": "SALAD w/o L_mse", "salad_no_agg": "SALAD w/o L_agg",
                           "salad": "SALAD", "deep_ae": "Deep AE", "deep_svdd": "Deep SVDD", "deep_sad": "Deep SAD",
                           "geometric": "Geometric", "gan_gp": "GAN-GP", "supervised": "Supervised ResNet-18"}
#: The baselines that ``default`` lists as "run with PROFILE=full": on the 2-core CPU they cost about 16 of
#: chapter 8's 29 minutes (measured 2026-12-02: Geometric 165 + 121 s, GAN-GP 194 + 110 s, the supervised
#: ResNet-18 245 + 146 s for NIH + MURA, 2 replicates), which would take the book past its 30 minutes.
DEFAULT_FULL_ONLY: tuple[str, ...] = ("geometric", "gan_gp", "supervised")
#: The AR (%) of the paper's † models, against which Fig. 5 compares the baselines (NIH 10, MURA 5): the AR of
#: the row of :data:`salad_lite.report.PAPER_TABLE1` whose ``fig5`` names the data set (one source, as
#: :func:`salad_lite.table1_report.fig5_ar`).
PAPER_BASELINE_AR: dict[str, int] = {dataset: int(row["AR %"]) for row in PAPER_TABLE1 for dataset in row["fig5"]}
#: The baselines' AR for a data set outside the paper's Table 1 (the paper's default anomaly ratio).
DEFAULT_BASELINE_AR = 5


@dataclass(frozen=True)
class GridSpec:
    """What one grid runs: methods x ARs x replicates on one dataset at one book profile.

    ``ars`` are percentages. Table 1's SALAD rows run at every AR > 0 of
    ``ars``, MemDAE at AR 0 only, the baselines at ``baseline_ar`` only.
    ``full_only`` lists methods this profile does not run (shown as "run with
    PROFILE=full").

    Raises:
        ValueError: an unknown method, an AR outside 0..15 (the held-out sets are shared
            up to 15 %), ``replicates`` < 1, or ``baseline_ar`` not in ``ars``.
    """

    dataset: str = "nih"
    data_root: str = ""
    profile: str = "default"
    methods: tuple[str, ...] = ALL_METHODS
    ars: tuple[int, ...] = (0, 5, 10, 15)
    replicates: int = 4
    baseline_ar: int = 5
    full_only: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    """Sections of :meth:`SaladConfig.replace` applied to the profile's config (e.g. ``{"train": {"progress": False}}``)."""

    def __post_init__(self) -> None:
        unknown = [m for m in (*self.methods, *self.full_only) if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)} or 'all'")
        for name, values in (("methods (--methods)", self.methods), ("ars (--ar)", self.ars)):
            repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
            if repeated:  # a repeated AR would run seed 0 twice and count it as two replicates
                raise ValueError(f"{name} lists {repeated} more than once: give each once, got {list(values)}")
        bad = [a for a in self.ars if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= 15]
        if bad or not self.ars:
            raise ValueError(f"ars (--ar) must be integer percentages in 0..15 (the held-out sets are shared up "
                             f"to 15 %), got {list(self.ars)}")
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int) or self.replicates < 1:
            raise ValueError(f"replicates (--replicates) must be an int >= 1, got {self.replicates!r}")
        if any(m in BASELINE_IDS for m in self.methods) and self.baseline_ar not in self.ars:
            raise ValueError(f"baseline_ar {self.baseline_ar} is not one of ars {list(self.ars)}: add it to the "
                             "ARs, or give the baselines one of them (--baseline-ar)")

    def base_config(self) -> SaladConfig:
        """The profile's SALAD configuration for this dataset (AR and seed are set per cell)."""
        return profile_config(self.profile, self.dataset, self.data_root).replace(**self.overrides)


def grid_spec(profile: str, dataset: str = "nih", data_root: str = "", **changes: Any) -> GridSpec:
    """The grid a book profile runs (chapter 8); ``changes`` override fields of :class:`GridSpec`.

    - ``smoke``: every method once (1 replicate, AR 0 and 5; the baselines at AR 5), for CI;
    - ``default``: Table 1's rows at AR 5/10/15 (MemDAE at AR 0) and the baselines at the
      paper's † AR (:data:`PAPER_BASELINE_AR`: NIH 10, MURA 5, another data set 5), 2
      replicates; the costly baselines of :data:`DEFAULT_FULL_ONLY` are listed as "run with
      PROFILE=full" (the real-data command line runs them with ``--methods all``);
    - ``full``: every method (:data:`ALL_METHODS`) with 4 replicates (the paper's count).

    ``smoke`` takes the paper's † AR for the baselines only when it is one of its ARs
    (so AR 5 on every data set). A method of ``full_only`` is listed as "run with
    PROFILE=full" instead of run.

    Raises:
        ValueError: an unknown profile, or a change that :class:`GridSpec` refuses.
    """
    paper_ar = PAPER_BASELINE_AR.get(dataset, DEFAULT_BASELINE_AR)
    if profile == "smoke":
        ars = (0, 5)
        spec = dict(methods=ALL_METHODS, ars=ars, replicates=1,
                    baseline_ar=paper_ar if paper_ar in ars else DEFAULT_BASELINE_AR)
    elif profile in ("default", "full"):
        full_only = DEFAULT_FULL_ONLY if profile == "default" else ()
        spec = dict(methods=tuple(m for m in ALL_METHODS if m not in full_only), ars=(0, 5, 10, 15),
                    replicates=2 if profile == "default" else 4, baseline_ar=paper_ar, full_only=full_only)
    else:
        raise ValueError(f"unknown profile {profile!r}; choose smoke, default or full")
    return GridSpec(**{"dataset": dataset, "data_root": data_root, "profile": profile, **spec, **changes})


def chapter_grid_spec(settings: Any) -> GridSpec:
    """The grid a chapter runs, from its :class:`salad_lite.book.ChapterSettings`: profile, data set, data root;
    progress bars as the chapter's."""
    return grid_spec(settings.profile, settings.dataset, settings.data_root,
                     overrides={"train": {"progress": settings.cfg.train.progress}})


@dataclass(frozen=True)
class Cell:
    """One method at one AR (%) and one seed."""

    method: str
    ar_percent: int
    seed: int


def _planned_ars(spec: GridSpec, method: str) -> tuple[list[int], int, str]:
    """The ARs ``method`` runs at in ``spec``, the AR a skipped entry names, and why the list may be empty."""
    if method == "memdae":
        return [0] if 0 in spec.ars else [], 0, "MemDAE trains without abnormal images: add AR 0"
    if method in TABLE1_METHODS:
        return [a for a in spec.ars if a > 0], 5, "Table 1 runs the SALAD rows at AR > 0: add AR 5, 10 or 15"
    if method == "supervised" and spec.baseline_ar == 0:
        return [], 0, "the supervised classifier needs abnormal training images (AR > 0)"
    return [spec.baseline_ar], spec.baseline_ar, ""


def plan_cells(spec: GridSpec) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The cells ``spec`` runs, in run order, and the (method, AR) pairs it skips with the reason.

    MemDAE needs AR 0; the SALAD rows run at ARs > 0 (as in Table 1); the supervised
    classifier needs abnormal training images, so its AR must be > 0; a method of
    ``full_only`` is listed (at the AR it would run at) as "run with PROFILE=full".
    """
    cells, skipped = [], []
    for method in ALL_METHODS:
        if method not in spec.methods and method not in spec.full_only:
            continue
        ars, named_ar, reason = _planned_ars(spec, method)
        if method in spec.full_only:
            ars, reason = [], "run with PROFILE=full"
        if not ars:
            skipped.append({"method": METHODS[method], "method_id": method, "ar_percent": named_ar,
                            "reason": reason})
        cells += [Cell(method, ar, seed) for ar in ars for seed in range(spec.replicates)]
    return cells, skipped


def _image_ids(dataset: Any) -> list[str]:
    """A stable id per image (NIH's Image Index, else the file path, else the position), for paired comparisons."""
    meta = getattr(dataset, "metadata", None)
    for column in ("image_index", "path"):
        if meta is not None and column in meta.columns:
            return [str(v) for v in meta[column].tolist()]
    return [str(i) for i in range(len(dataset))]


def cell_config(spec: GridSpec, cell: Cell) -> SaladConfig:
    """The SALAD configuration of a Table 1 cell (or the profile's, at the cell's AR and seed, for a baseline)."""
    cfg = spec.base_config().replace(data={"anomaly_ratio": cell.ar_percent / 100}, train={"seed": cell.seed})
    return cfg.replace(loss=TABLE1_LOSSES[cell.method]) if cell.method in TABLE1_LOSSES else cfg


def cell_folder(spec: GridSpec, cell: Cell, run_dir: str | Path) -> Path:
    """Where a cell's checkpoints and result live (see the module docstring)."""
    if cell.method in TABLE1_LOSSES:
        return replicate_dir(_salad_run_dir(spec, cell, run_dir), cell_config(spec, cell))
    return Path(run_dir) / spec.dataset / "table1" / cell.method / f"ar{cell.ar_percent}" / f"seed{cell.seed}"


def _salad_run_dir(spec: GridSpec, cell: Cell, run_dir: str | Path) -> Path:
    """SALAD at the profile's own AR shares the chapters' run (run_dir itself); other Table 1 cells get their own."""
    if cell.method == "salad" and cell.ar_percent == round(spec.base_config().data.anomaly_ratio * 100):
        return Path(run_dir)
    return Path(run_dir) / spec.dataset / "table1" / cell.method / f"ar{cell.ar_percent}"


def run_cell(spec: GridSpec, cell: Cell, splits: dict[str, Any], run_dir: str | Path,
             device: str = "auto", fingerprint: str | None = None) -> dict[str, Any]:
    """Train (or load) one cell, select on validation, score the test split once.

    ``fingerprint`` is :func:`~salad_lite.data.batches.splits_fingerprint` of ``splits`` when
    the caller has it (hashed here otherwise); a baseline's checkpoints and result record it.

    Returns:
        ``{"method", "method_id", "ar_percent", "seed", "val_auc", "selected_epoch", "selected_round",
        "k", "k_curve", "test_auc", "test_auprc", "test_scores", "test_labels", "test_ids"}``;
        ``selected_round`` is the round of the selected SALAD checkpoint (0 = pre-training; None
        for a baseline), ``k`` the K chosen on validation (None for a method without K) and
        ``k_curve`` the validation AUC per K of the chosen bank policy (``[{"k", "val_auc"}]``,
        empty without K).

    Raises:
        ValueError: the cell's folder holds a run of another configuration or other splits
            (file named); a split lacks a class.
        salad_lite.files.CorruptFileError: a stored result, selection or checkpoint is damaged (file named).
    """
    ids = _image_ids(splits["test"])
    row = {"method": METHODS[cell.method], "method_id": cell.method, "ar_percent": cell.ar_percent,
           "seed": cell.seed, "test_ids": ids}
    if cell.method in TABLE1_LOSSES:
        cfg = cell_config(spec, cell)
        result = evaluate_replicate(cfg, splits, _salad_run_dir(spec, cell, run_dir), device)
        selection_path = replicate_dir(_salad_run_dir(spec, cell, run_dir), cfg) / "selection.json"
        return {**row, "val_auc": result.val_auc, "selected_epoch": result.selected_epoch,
                "selected_round": result.selected_round, "k": result.k,
                "k_curve": _k_curve(selection_path, result.discard_anomalous), "test_auc": result.test_auc,
                "test_auprc": result.test_auprc, "test_scores": list(result.test_scores),
                "test_labels": list(result.test_labels)}
    fingerprint = splits_fingerprint(splits) if fingerprint is None else fingerprint
    return {**row, **_baseline_cell(spec, cell, splits, run_dir, device, fingerprint)}


_SELECTION_ROW = ("k", "discard_anomalous", "val_auc")


def _k_curve(path: Path, discard_anomalous: bool) -> list[dict[str, Any]]:
    """The validation AUC per K of ``selection.json``'s grid for the chosen bank policy ([] without the file).

    Raises:
        salad_lite.files.CorruptFileError: the file is not an object with a ``grid`` list of rows
            holding ``k``, ``discard_anomalous`` and a numeric ``val_auc`` (file and row named).
    """
    if not path.exists():
        return []
    stored = read_json(path, "scoring selection")

    def refuse(what: str) -> None:
        raise CorruptFileError(f"scoring selection {path}: {what}; delete it (and result.json beside it) "
                               "to recompute")

    if not isinstance(stored, dict):
        refuse(f"must hold a JSON object, got {type(stored).__name__}")
    grid = stored.get("grid", [])
    if not isinstance(grid, list):
        refuse(f"'grid' must be a list, got {type(grid).__name__}")
    for i, g in enumerate(grid):
        if not isinstance(g, dict):
            refuse(f"'grid'[{i}] must be an object, got {type(g).__name__}")
        missing = [key for key in _SELECTION_ROW if key not in g]
        if missing:
            refuse(f"'grid'[{i}] lacks {missing}")
        if not is_number(g["val_auc"]) or not is_int(g["k"]):
            refuse(f"'grid'[{i}] needs an integer 'k' and a numeric 'val_auc', got {g['k']!r} and {g['val_auc']!r}")
    return [{"k": g["k"], "val_auc": g["val_auc"]} for g in grid if g["discard_anomalous"] == discard_anomalous]


_BASELINE_FIELDS = ("val_auc", "selected_epoch", "test_auc", "test_auprc", "test_scores", "test_labels")
_BASELINE_RECORD = ("config", "splits_sha256")


def _check_baseline_result(stored: Any, path: Path) -> None:
    """Refuse a stored baseline result whose structure is not the one written (the file and field named).

    Raises:
        salad_lite.files.CorruptFileError: not an object; a field missing; ``config`` not an object;
            ``splits_sha256`` not text; a metric not a finite number; ``selected_epoch`` not an int;
            ``test_scores`` / ``test_labels`` not lists of numbers / 0-1 labels.
    """
    def refuse(what: str) -> None:
        raise CorruptFileError(f"baseline result {path}: {what}; delete it to recompute")

    if not isinstance(stored, dict):
        refuse(f"must hold a JSON object, got {type(stored).__name__}")
    missing = [key for key in (*_BASELINE_FIELDS, *_BASELINE_RECORD) if key not in stored]
    if missing:
        refuse(f"lacks {missing}")
    if not isinstance(stored["config"], dict):
        refuse(f"'config' must be an object, got {type(stored['config']).__name__}")
    if not isinstance(stored["splits_sha256"], str):
        refuse(f"'splits_sha256' must be text, got {stored['splits_sha256']!r}")
    for metric in ("val_auc", "test_auc", "test_auprc"):
        if not is_finite_number(stored[metric]):
            refuse(f"'{metric}' must be a finite number, got {stored[metric]!r}")
    if not is_int(stored["selected_epoch"]):
        refuse(f"'selected_epoch' must be an int, got {stored['selected_epoch']!r}")
    scores, labels = stored["test_scores"], stored["test_labels"]
    if not isinstance(scores, list) or not all(is_number(v) for v in scores):
        refuse("'test_scores' must be a list of numbers")
    if not isinstance(labels, list) or not all(is_int(v) and v in (0, 1) for v in labels):
        refuse("'test_labels' must be a list of 0/1 labels")


def _baseline_cell(spec: GridSpec, cell: Cell, splits: dict[str, Any], run_dir: str | Path,
                   device: str, fingerprint: str) -> dict[str, Any]:
    folder = cell_folder(spec, cell, run_dir)
    cfg = baseline_config(cell.method, cell_config(spec, cell))
    record = {"config": cfg.to_dict(), "splits_sha256": fingerprint}
    path = folder / "result.json"
    if path.exists():
        stored = read_json(path, "baseline result")
        _check_baseline_result(stored, path)
        ignored = {"progress"}
        changed = [key for key in cfg.to_dict() if key not in ignored
                   and stored["config"].get(key) != record["config"][key]]
        if changed:
            raise ValueError(f"{path} was computed with other config fields {changed}; use another run folder, "
                             "or delete it to recompute")
        if stored["splits_sha256"] == record["splits_sha256"]:  # else: scored again (fit refuses other train/val)
            check_stored_test_scores(stored, dataset_labels(splits["test"]), f"baseline result {path}")
            return {**{key: stored[key] for key in _BASELINE_FIELDS}, "selected_round": None, "k": None,
                    "k_curve": []}
    # the checkpoints record the training and validation splits only: a new test split reuses the model
    model = baseline_class(cell.method)(cfg, device=device).fit(splits["train"], splits["val"], folder)
    labels = dataset_labels(splits["test"])
    scores = model.decision_function(splits["test"])
    result = {"val_auc": model.best_val_auc, "selected_epoch": model.selected_epoch,
              "test_auc": auc(labels, scores), "test_auprc": auprc(labels, scores),
              "test_scores": [float(v) for v in scores], "test_labels": [int(v) for v in labels]}
    write_json_atomic(path, {**result, **record}, indent=2)
    return {**result, "selected_round": None, "k": None, "k_curve": []}


@dataclass
class GridResult:
    """What :func:`run_grid` returns: the summary (``table1.json``'s entry for the dataset) and every cell."""

    table: dict[str, Any]
    cells: list[dict[str, Any]]


def run_grid(spec: GridSpec, run_dir: str | Path, device: str = "auto", progress: bool = True) -> GridResult:
    """Run (or load) every cell of ``spec``, then write ``run_dir/table1.json`` and ``table1.csv``.

    The two files hold one entry per dataset run in ``run_dir``; this dataset's entry
    is merged (:func:`merge_table`): this grid's rows replace the stored rows of the
    same (method, AR), the others are kept. The device and a stored ``table1.json``
    are checked before any data is read. Progress: one bar over the cells (with the
    cell running), and each cell's epoch bar.

    Raises:
        ValueError, OSError: a device not on this machine; a blank ``run_dir`` or one that is a file; a
            grid that plans no cell (the skip reasons named); from the data (wrong root, a split that cannot be built); a cell stored under another
            configuration or other splits (file named).
        salad_lite.files.CorruptFileError: a damaged cell result, selection, checkpoint or table1.json
            (named).
    """
    device = check_available_device("device", device)
    check_run_dir(str(run_dir), "run_dir")
    run_dir = Path(run_dir)
    _read_tables(run_dir)  # a damaged table1.json is refused before hours of training, not after
    cells, skipped = plan_cells(spec)
    if not cells:
        reasons = "; ".join(f"{s['method']} at AR {s['ar_percent']} %: {s['reason']}" for s in skipped)
        raise ValueError(f"the grid plans no cell to run ({reasons or 'no method given'})")
    splits_by_ar: dict[int, tuple[dict[str, Any], str]] = {}
    results = []
    bar = tqdm(total=len(cells), desc=f"Table 1 grid ({spec.dataset})", unit="cell") \
        if progress and progress_enabled() and tqdm is not None else None
    try:
        for cell in cells:
            if bar is not None:
                bar.set_postfix_str(f"{METHODS[cell.method]}, AR {cell.ar_percent} %, seed {cell.seed}")
            if cell.ar_percent not in splits_by_ar:
                splits = splits_for(cell_config(spec, cell), progress=False)
                check_splits(splits, required=("train", "val", "test"), both_classes=("val", "test"))
                splits_by_ar[cell.ar_percent] = splits, splits_fingerprint(splits)
            splits, fingerprint = splits_by_ar[cell.ar_percent]
            results.append(run_cell(spec, cell, splits, run_dir, device, fingerprint))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    table = summarise(spec, results, skipped)
    _write_tables(run_dir, spec.dataset, table)
    return GridResult(table=table, cells=results)


def _finite_or_none(value: float) -> float | None:
    """``value``, or None when it is NaN/inf (JSON has no NaN: one replicate has no spread)."""
    return float(value) if np.isfinite(value) else None


_REPLICATE_FIELDS = ("seed", "test_auc", "test_auprc", "val_auc", "selected_epoch", "selected_round", "k")


def summarise(spec: GridSpec, cells: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 1.96 std over replicates per (method, AR): test AUC / AUPRC, validation AUC, per-replicate values.

    ``ci95`` is None (JSON null) for a single replicate: one run says nothing about spread.
    """
    rows = []
    keys = sorted({(c["method_id"], c["ar_percent"]) for c in cells}, key=_row_order)
    for method_id, ar in keys:
        group = sorted((c for c in cells if (c["method_id"], c["ar_percent"]) == (method_id, ar)),
                       key=lambda c: c["seed"])
        row = {"method": METHODS[method_id], "method_id": method_id, "ar_percent": ar, "replicates": len(group)}
        for metric in ("test_auc", "test_auprc", "val_auc"):
            mean, half = mean_ci([c[metric] for c in group])
            row[metric] = {"mean": _finite_or_none(mean), "ci95": _finite_or_none(half)}
        row["per_replicate"] = [{key: c[key] for key in _REPLICATE_FIELDS} for c in group]
        rows.append(row)
    return {"dataset": spec.dataset, "profile": spec.profile, "data_root": spec.data_root,
            "replicates": spec.replicates, "baseline_ar": spec.baseline_ar, "rows": rows, "skipped": list(skipped)}


def _row_order(key: tuple[str, Any]) -> tuple[int, Any]:
    """The usual order of rows: :data:`ALL_METHODS`, then AR."""
    return ALL_METHODS.index(key[0]), key[1]


_ROW_FIELDS = ("method", "method_id", "ar_percent", "replicates", "test_auc", "test_auprc", "val_auc",
               "per_replicate")


def _check_tables(stored: Any, path: Path) -> dict[str, Any]:
    """Refuse a ``table1.json`` whose structure is not the one written; every entry is checked (file named).

    Raises:
        salad_lite.files.CorruptFileError: not an object of data set -> entry; an entry without a
            ``rows`` list; a row lacking a field of :data:`_ROW_FIELDS`, with an unknown method, an
            AR not an integer in 0..100, a (method, AR) of an earlier row, ``replicates`` not an
            int >= 1, a metric not ``{"mean", "ci95"}`` of numbers (or null; a mean in [0, 1]), or a
            ``per_replicate`` row without seed and numeric metrics; ``skipped`` not a list of objects.
    """
    def refuse(what: str) -> None:
        raise CorruptFileError(f"Table 1 summary {path}: {what}; delete it to rewrite (the cells are kept "
                               "and load without training)")

    if not isinstance(stored, dict):
        refuse(f"must map each data set to its table, got {type(stored).__name__}")
    for dataset, table in stored.items():
        where = f"entry {dataset!r}"
        if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            refuse(f"{where} must be an object with a 'rows' list")
        seen: set[tuple[Any, Any]] = set()
        for i, row in enumerate(table["rows"]):
            at = f"{where} rows[{i}]"
            if not isinstance(row, dict):
                refuse(f"{at} must be an object, got {type(row).__name__}")
            missing = [key for key in _ROW_FIELDS if key not in row]
            if missing:
                refuse(f"{at} lacks {missing}")
            if row["method_id"] not in ALL_METHODS or not is_int(row["ar_percent"]) \
                    or not 0 <= row["ar_percent"] <= 100:
                refuse(f"{at} has an unknown method_id {row['method_id']!r} or an ar_percent {row['ar_percent']!r} "
                       "that is not an integer in 0..100")
            if (row["method_id"], row["ar_percent"]) in seen:
                refuse(f"{at} repeats {row['method_id']!r} at AR {row['ar_percent']}")
            seen.add((row["method_id"], row["ar_percent"]))
            if not is_int(row["replicates"]) or row["replicates"] < 1:
                refuse(f"{at}['replicates'] must be an int >= 1, got {row['replicates']!r}")
            for metric in ("test_auc", "test_auprc", "val_auc"):
                value = row[metric]
                if not isinstance(value, dict) or not all(
                        part in value and (value[part] is None or is_number(value[part]))
                        for part in ("mean", "ci95")) or not (value["mean"] is None or 0 <= value["mean"] <= 1):
                    refuse(f"{at}['{metric}'] must be {{'mean': number in [0, 1], 'ci95': number}} (either may be "
                           f"null), got {value!r}")
            reps = row["per_replicate"]
            if not isinstance(reps, list):
                refuse(f"{at}['per_replicate'] must be a list, got {type(reps).__name__}")
            for j, rep in enumerate(reps):
                if not isinstance(rep, dict) or not is_int(rep.get("seed")) or not all(
                        metric in rep and (rep[metric] is None or is_number(rep[metric]))
                        for metric in ("test_auc", "test_auprc", "val_auc")):
                    refuse(f"{at}['per_replicate'][{j}] must be an object with an integer 'seed' and numeric "
                           "'test_auc', 'test_auprc' and 'val_auc'")
        skipped = table.get("skipped", [])
        if not isinstance(skipped, list) or not all(isinstance(s, dict) and "method" in s for s in skipped):
            refuse(f"{where}['skipped'] must be a list of objects with 'method'")
    return stored


def _read_tables(run_dir: Path) -> dict[str, Any]:
    """``run_dir/table1.json`` checked (:func:`_check_tables`), or ``{}`` when there is none."""
    path = run_dir / "table1.json"
    return _check_tables(read_json(path, "Table 1 summary"), path) if path.exists() else {}


def merge_table(stored: dict[str, Any] | None, table: dict[str, Any]) -> dict[str, Any]:
    """A data set's entry of ``table1.json`` after a grid: ``table``'s rows merged into ``stored``'s.

    Rows are keyed by (method_id, AR): this grid's replace the stored ones, the other
    stored rows are kept, all in the usual order (:data:`ALL_METHODS`, then AR). A
    skipped entry is dropped when its (method, AR) now has a row (or it names no AR, as
    an older salad_lite wrote). A stored entry of another profile or data root is
    replaced, not merged: its rows measure another configuration.
    """
    if not stored or (stored.get("profile"), stored.get("data_root")) != (table["profile"], table["data_root"]):
        return table
    rows = {(r["method_id"], r["ar_percent"]): r for r in stored["rows"]}
    rows.update({(r["method_id"], r["ar_percent"]): r for r in table["rows"]})
    skips: dict[tuple[Any, Any], dict[str, Any]] = {}
    for skip in [*stored.get("skipped", []), *table["skipped"]]:
        key = (skip.get("method_id"), skip.get("ar_percent"))
        if is_int(key[1]) and key not in rows:
            skips[key] = skip  # this grid's reason replaces a stored one
    skip_order = sorted(skips, key=lambda k: (ALL_METHODS.index(k[0]) if k[0] in ALL_METHODS else len(ALL_METHODS),
                                              k[1]))
    return {**table, "rows": [rows[key] for key in sorted(rows, key=_row_order)],
            "skipped": [skips[key] for key in skip_order]}


def _no_nan(value: Any) -> Any:
    """``value`` with every NaN/inf float (in nested dicts and lists) replaced by None."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _no_nan(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def _write_tables(run_dir: Path, dataset: str, table: dict[str, Any]) -> None:
    """Merge ``table`` into ``run_dir/table1.json`` (one entry per dataset, :func:`merge_table`); rewrite table1.csv.

    Raises:
        salad_lite.files.CorruptFileError: the stored table1.json is damaged (named; nothing written).
    """
    stored = _read_tables(run_dir)
    stored[dataset] = merge_table(stored.get(dataset), table)
    stored = _no_nan(stored)  # a NaN an older salad_lite stored becomes null: JSON has no NaN
    write_json_atomic(run_dir / "table1.json", stored, indent=2, allow_nan=False)
    write_text_atomic(run_dir / "table1.csv", table1_csv(stored))


def table1_csv(tables: dict[str, dict[str, Any]]) -> str:
    """The CSV text of ``table1.json``'s content: one line per dataset, method and AR (a null ci95 is empty)."""
    def joined(reps: list[dict[str, Any]], key: str, fmt: str = "") -> str:
        return ";".join("" if r.get(key) is None else format(r[key], fmt) for r in reps)

    lines = []
    for dataset, table in tables.items():
        for row in table["rows"]:
            reps = row["per_replicate"]
            lines.append({"dataset": dataset, "method": row["method"], "method_id": row["method_id"],
                          "ar_percent": row["ar_percent"], "replicates": row["replicates"],
                          **{f"{m}_{part}": row[m][part] for m in ("test_auc", "test_auprc", "val_auc")
                             for part in ("mean", "ci95")},
                          "test_auc_per_replicate": joined(reps, "test_auc", ".6f"),
                          "test_auprc_per_replicate": joined(reps, "test_auprc", ".6f"),
                          "val_auc_per_replicate": joined(reps, "val_auc", ".6f"),
                          "selected_epochs": joined(reps, "selected_epoch"),
                          "selected_rounds": joined(reps, "selected_round"),
                          "k": joined(reps, "k")})
    text = io.StringIO()
    pd.DataFrame(lines).to_csv(text, index=False, lineterminator="\n")
    return text.getvalue()


# ---------------------------------------------------------------------------- command line
def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 0,5,10,15; got {text!r}") from None


def _methods(text: str) -> tuple[str, ...]:
    if text.strip() == "all":
        return ALL_METHODS
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in ALL_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or [text]}; choose 'all' or from "
                                         f"{', '.join(ALL_METHODS)}")
    return names


def _absolute(path: str) -> str:
    """An absolute path (``""`` stays ``""``), as :mod:`salad_lite.cli` records it: the chapters' run folder
    stores the data root absolute, so the SALAD cell it shares is found for a relative path to the same data."""
    return str(Path(path).expanduser().resolve()) if path else ""


def _pm(stat: dict[str, Any]) -> str:
    """``mean ± ci95``, or ``mean (1 run)`` when the half-width is null."""
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.4f} (1 run)" if stat["ci95"] is None else f"{stat['mean']:.4f} ± {stat['ci95']:.4f}"


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``python -m salad_lite.table1``."""
    parser = argparse.ArgumentParser(prog="python -m salad_lite.table1", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="nih", choices=("nih", "mura", "folder"))
    parser.add_argument("--data-root", default="", help="the data set's folder; empty = the embedded synthetic set")
    parser.add_argument("--profile", default="default", choices=("smoke", "default", "full"))
    parser.add_argument("--methods", type=_methods, default=None,
                        help=f"'all' or a comma-separated list of {', '.join(ALL_METHODS)} (default: the profile's)")
    parser.add_argument("--ar", type=_int_list, default=None, help="anomalous ratios in %%, e.g. 0,5,10,15")
    parser.add_argument("--replicates", type=int, default=None, help="seeds 0..R-1 (default: the profile's)")
    parser.add_argument("--baseline-ar", type=int, default=None, help="the AR %% of Fig. 5's baselines")
    parser.add_argument("--run-dir", required=True, help="the run folder (shared with the chapters)")
    parser.add_argument("--device", default="auto", help="auto, cpu, mps, cuda or cuda:<index>")
    return parser


@data_script
def main(argv: list[str] | None = None) -> int:
    """Run the grid from the command line; prints the summary table. Exit 2 on a bad argument or data problem."""
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_torchrun(parser, "the Table 1 grid")
    if args.dataset == "folder" and not args.data_root.strip():
        parser.error("--dataset folder reads your own images: --data-root must name their folder or manifest CSV "
                     "(there is no embedded 'folder' set)")
    check_run_dir(args.run_dir)
    device = check_available_device("--device", args.device)  # before any data is read
    changes = {key: value for key, value in (("methods", args.methods), ("ars", args.ar),
                                             ("replicates", args.replicates), ("baseline_ar", args.baseline_ar))
               if value is not None}
    if args.methods is not None:
        changes["full_only"] = ()
    spec = grid_spec(args.profile, args.dataset, _absolute(args.data_root), **changes)
    result = run_grid(spec, args.run_dir, device)
    table = pd.DataFrame([{"method": r["method"], "AR %": r["ar_percent"], "replicates": r["replicates"],
                           "AUC": _pm(r["test_auc"]), "AUPRC": _pm(r["test_auprc"])}
                          for r in result.table["rows"]])
    print(table.to_string(index=False))
    for skip in result.table["skipped"]:
        print(f"skipped {skip['method']}: {skip['reason']}")
    print(f"wrote {Path(args.run_dir) / 'table1.json'} and table1.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
