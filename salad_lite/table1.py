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
  the paper compares them with its † models: NIH at AR 10, MURA at AR 5).

Folders (``run_dir`` is shared with the chapters)::

    run_dir/<dataset>/seed<s>/...                          SALAD at the profile's AR: the run of chapters 3-6
    run_dir/<dataset>/table1/<method>/ar<AR>/<dataset>/seed<s>/  any other Table 1 cell (as evaluate_replicate)
    run_dir/<dataset>/table1/<method>/ar<AR>/seed<s>/      a baseline cell: checkpoints, result.json
    run_dir/table1.json, run_dir/table1.csv                the summary of every dataset run in this folder

A finished cell is loaded, never retrained; an interrupted one resumes from its
last epoch; a cell stored under another configuration or other splits is
refused (file named). Command line::

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

from salad_lite.cli_errors import data_script
from salad_lite.config import SaladConfig, profile_config
from salad_lite.data.batches import check_splits, dataset_labels
from salad_lite.experiment import evaluate_replicate, replicate_dir, splits_fingerprint, splits_for
from salad_lite.files import CorruptFileError, read_json, write_json_atomic, write_text_atomic
from salad_lite.methods import BASELINE_IDS, baseline_class, baseline_config
from salad_lite.metrics import auc, auprc, mean_ci
from salad_lite.utils import progress_enabled

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

__all__ = ["ALL_METHODS", "GridSpec", "METHODS", "TABLE1_LOSSES", "TABLE1_METHODS", "chapter_grid_spec", "grid_spec", "main",
           "plan_cells", "run_cell", "run_grid"]

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
#: The AR (%) of the paper's † models, against which Fig. 5 compares the baselines.
PAPER_BASELINE_AR = {"nih": 10, "mura": 5}
GRID_FILES = ("table1.json", "table1.csv")


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
        bad = [a for a in self.ars if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= 15]
        if bad or not self.ars:
            raise ValueError(f"ars must be integer percentages in 0..15 (the held-out sets are shared up to "
                             f"15 %), got {list(self.ars)}")
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int) or self.replicates < 1:
            raise ValueError(f"replicates must be an int >= 1, got {self.replicates!r}")
        if any(m in BASELINE_IDS for m in self.methods) and self.baseline_ar not in self.ars:
            raise ValueError(f"baseline_ar {self.baseline_ar} is not one of ars {list(self.ars)}")

    @property
    def comparison_ar(self) -> int:
        """The AR (%) of the paired ordering checks: the baselines' AR, or the largest AR when that is 0."""
        return self.baseline_ar if self.baseline_ar > 0 else max(self.ars)

    def base_config(self) -> SaladConfig:
        """The profile's SALAD configuration for this dataset (AR and seed are set per cell)."""
        return profile_config(self.profile, self.dataset, self.data_root).replace(**self.overrides)


def grid_spec(profile: str, dataset: str = "nih", data_root: str = "", **changes: Any) -> GridSpec:
    """The grid a book profile runs (chapter 8); ``changes`` override fields of :class:`GridSpec`.

    - ``smoke``: every method once (1 replicate, AR 0 and 5), for CI;
    - ``default``: Table 1's four rows at AR 5 (MemDAE at AR 0), Deep AE, Deep SVDD
      and Deep SAD, 2 replicates; Geometric, GAN-GP and the supervised ResNet-18
      are listed as "run with PROFILE=full" (they do not fit the 30-min CPU budget);
    - ``full``: every row at AR 0/5/10/15, the baselines at the paper's † AR, 4 replicates.

    Raises:
        ValueError: an unknown profile, or a change that :class:`GridSpec` refuses.
    """
    if profile == "smoke":
        spec = dict(methods=ALL_METHODS, ars=(0, 5), replicates=1, baseline_ar=5)
    elif profile == "default":
        heavy = ("geometric", "gan_gp", "supervised")
        spec = dict(methods=tuple(m for m in ALL_METHODS if m not in heavy), ars=(0, 5), replicates=2,
                    baseline_ar=5, full_only=heavy)
    elif profile == "full":
        spec = dict(methods=ALL_METHODS, ars=(0, 5, 10, 15), replicates=4,
                    baseline_ar=PAPER_BASELINE_AR.get(dataset, 5))
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


def plan_cells(spec: GridSpec) -> tuple[list[Cell], list[dict[str, Any]]]:
    """The cells ``spec`` runs, in run order, and the (method, AR) pairs it skips with the reason.

    MemDAE needs AR 0; the SALAD rows run at ARs > 0 (as in Table 1); the supervised
    classifier needs abnormal training images, so its AR must be > 0.
    """
    cells, skipped = [], []
    for method in ALL_METHODS:
        if method in spec.full_only:
            skipped.append({"method": METHODS[method], "method_id": method, "ar_percent": None,
                            "reason": "run with PROFILE=full"})
            continue
        if method not in spec.methods:
            continue
        if method == "memdae":
            ars = [0] if 0 in spec.ars else []
            reason = "MemDAE trains without abnormal images: add AR 0"
        elif method in TABLE1_METHODS:
            ars = [a for a in spec.ars if a > 0]
            reason = "Table 1 runs the SALAD rows at AR > 0: add AR 5, 10 or 15"
        else:
            ars = [spec.baseline_ar]
            if method == "supervised" and spec.baseline_ar == 0:
                ars, reason = [], "the supervised classifier needs abnormal training images (AR > 0)"
        if not ars:
            skipped.append({"method": METHODS[method], "method_id": method, "ar_percent": None, "reason": reason})
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
             device: str = "auto") -> dict[str, Any]:
    """Train (or load) one cell, select on validation, score the test split once.

    Returns:
        ``{"method", "method_id", "ar_percent", "seed", "val_auc", "selected_epoch", "k", "k_curve",
        "test_auc", "test_auprc", "test_scores", "test_labels", "test_ids"}``; ``k`` is the K chosen
        on validation (None for a method without K) and ``k_curve`` the validation AUC per K of
        the chosen bank policy (``[{"k", "val_auc"}]``, empty without K).

    Raises:
        ValueError: the cell's folder holds a run of another configuration or other splits
            (file named); a split lacks a class.
        salad_lite.files.CorruptFileError: a stored result or checkpoint is damaged (file named).
    """
    ids = _image_ids(splits["test"])
    row = {"method": METHODS[cell.method], "method_id": cell.method, "ar_percent": cell.ar_percent,
           "seed": cell.seed, "test_ids": ids}
    if cell.method in TABLE1_LOSSES:
        cfg = cell_config(spec, cell)
        result = evaluate_replicate(cfg, splits, _salad_run_dir(spec, cell, run_dir), device)
        selection_path = replicate_dir(_salad_run_dir(spec, cell, run_dir), cfg) / "selection.json"
        grid = read_json(selection_path, "scoring selection").get("grid", []) if selection_path.exists() else []
        k_curve = [{"k": g["k"], "val_auc": g["val_auc"]} for g in grid
                   if g["discard_anomalous"] == result.discard_anomalous]
        return {**row, "val_auc": result.val_auc, "selected_epoch": result.selected_epoch, "k": result.k,
                "k_curve": k_curve, "test_auc": result.test_auc, "test_auprc": result.test_auprc,
                "test_scores": list(result.test_scores), "test_labels": list(result.test_labels)}
    return {**row, **_baseline_cell(spec, cell, splits, run_dir, device)}


_BASELINE_FIELDS = ("val_auc", "selected_epoch", "test_auc", "test_auprc", "test_scores", "test_labels")


def _baseline_cell(spec: GridSpec, cell: Cell, splits: dict[str, Any], run_dir: str | Path,
                   device: str) -> dict[str, Any]:
    folder = cell_folder(spec, cell, run_dir)
    cfg = baseline_config(cell.method, cell_config(spec, cell))
    record = {"config": cfg.to_dict(), "splits_sha256": splits_fingerprint(splits)}
    path = folder / "result.json"
    if path.exists():
        stored = read_json(path, "baseline result")
        if not isinstance(stored, dict) or any(key not in stored for key in (*_BASELINE_FIELDS, *record)):
            raise CorruptFileError(f"baseline result {path} lacks a field of {[*_BASELINE_FIELDS, *record]}; "
                                   "delete it to recompute")
        ignored = {"progress"}
        changed = [key for key in cfg.to_dict() if key not in ignored
                   and stored["config"].get(key) != record["config"][key]]
        if changed or stored["splits_sha256"] != record["splits_sha256"]:
            what = f"config fields {changed}" if changed else "the splits (images, labels or patients)"
            raise ValueError(f"{path} was computed with other {what}; use another run folder, or delete it "
                             "to recompute")
        return {**{key: stored[key] for key in _BASELINE_FIELDS}, "k": None, "k_curve": []}
    model = baseline_class(cell.method)(cfg, device=device).fit(splits["train"], splits["val"], folder)
    labels = dataset_labels(splits["test"])
    scores = model.decision_function(splits["test"])
    result = {"val_auc": model.best_val_auc, "selected_epoch": model.selected_epoch,
              "test_auc": auc(labels, scores), "test_auprc": auprc(labels, scores),
              "test_scores": [float(v) for v in scores], "test_labels": [int(v) for v in labels]}
    write_json_atomic(path, {**result, **record}, indent=2)
    return {**result, "k": None, "k_curve": []}


@dataclass
class GridResult:
    """What :func:`run_grid` returns: the summary (``table1.json``'s entry for the dataset) and every cell."""

    table: dict[str, Any]
    cells: list[dict[str, Any]]


def run_grid(spec: GridSpec, run_dir: str | Path, device: str = "auto", progress: bool = True) -> GridResult:
    """Run (or load) every cell of ``spec``, then write ``run_dir/table1.json`` and ``table1.csv``.

    The two files hold one entry per dataset run in ``run_dir``: this dataset's is
    replaced, the others are kept. Progress: one bar over the cells (with the cell
    running), and each cell's epoch bar.

    Raises:
        KeyError, ValueError, OSError: from the data (wrong root, a split that cannot be built),
            a cell stored under another configuration or other splits (file named).
        salad_lite.files.CorruptFileError: a damaged cell result, checkpoint or table1.json (named).
    """
    cells, skipped = plan_cells(spec)
    splits_by_ar: dict[int, dict[str, Any]] = {}
    results = []
    bar = tqdm(total=len(cells), desc=f"Table 1 grid ({spec.dataset})", unit="cell") \
        if progress and progress_enabled() and tqdm is not None else None
    for cell in cells:
        if bar is not None:
            bar.set_postfix_str(f"{METHODS[cell.method]}, AR {cell.ar_percent} %, seed {cell.seed}")
        if cell.ar_percent not in splits_by_ar:
            splits = splits_for(cell_config(spec, cell), progress=False)
            check_splits(splits, required=("train", "val", "test"), both_classes=("val", "test"))
            splits_by_ar[cell.ar_percent] = splits
        results.append(run_cell(spec, cell, splits_by_ar[cell.ar_percent], run_dir, device))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    table = summarise(spec, results, skipped)
    _write_tables(Path(run_dir), spec.dataset, table)
    return GridResult(table=table, cells=results)


def summarise(spec: GridSpec, cells: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 1.96 std over replicates per (method, AR): test AUC / AUPRC, validation AUC, per-replicate values."""
    rows = []
    keys = sorted({(c["method_id"], c["ar_percent"]) for c in cells},
                  key=lambda key: (ALL_METHODS.index(key[0]), key[1]))
    for method_id, ar in keys:
        group = sorted((c for c in cells if (c["method_id"], c["ar_percent"]) == (method_id, ar)),
                       key=lambda c: c["seed"])
        row = {"method": METHODS[method_id], "method_id": method_id, "ar_percent": ar, "replicates": len(group)}
        for metric in ("test_auc", "test_auprc", "val_auc"):
            mean, half = mean_ci([c[metric] for c in group])
            row[metric] = {"mean": mean, "ci95": half}
        row["per_replicate"] = [{key: c[key] for key in ("seed", "test_auc", "test_auprc", "val_auc",
                                                         "selected_epoch", "k")} for c in group]
        rows.append(row)
    return {"dataset": spec.dataset, "profile": spec.profile, "data_root": spec.data_root,
            "replicates": spec.replicates, "baseline_ar": spec.baseline_ar, "rows": rows, "skipped": list(skipped)}


def _write_tables(run_dir: Path, dataset: str, table: dict[str, Any]) -> None:
    """Merge ``table`` into ``run_dir/table1.json`` (one entry per dataset) and rewrite ``table1.csv``."""
    path = run_dir / "table1.json"
    stored = read_json(path, "Table 1 summary") if path.exists() else {}
    if not isinstance(stored, dict) or not all(isinstance(v, dict) and "rows" in v for v in stored.values()):
        raise CorruptFileError(f"{path} must map each dataset to its table (with 'rows'); delete it to rewrite")
    stored[dataset] = table
    write_json_atomic(path, stored, indent=2)
    write_text_atomic(run_dir / "table1.csv", table1_csv(stored))


def table1_csv(tables: dict[str, dict[str, Any]]) -> str:
    """The CSV text of ``table1.json``'s content: one line per dataset, method and AR."""
    lines = []
    for dataset, table in tables.items():
        for row in table["rows"]:
            reps = row["per_replicate"]
            lines.append({"dataset": dataset, "method": row["method"], "method_id": row["method_id"],
                          "ar_percent": row["ar_percent"], "replicates": row["replicates"],
                          **{f"{m}_{part}": row[m][part] for m in ("test_auc", "test_auprc", "val_auc")
                             for part in ("mean", "ci95")},
                          "test_auc_per_replicate": ";".join(f"{r['test_auc']:.6f}" for r in reps),
                          "test_auprc_per_replicate": ";".join(f"{r['test_auprc']:.6f}" for r in reps),
                          "val_auc_per_replicate": ";".join(f"{r['val_auc']:.6f}" for r in reps),
                          "selected_epochs": ";".join(str(r["selected_epoch"]) for r in reps),
                          "k": ";".join("" if r["k"] is None else str(r["k"]) for r in reps)})
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
    parser.add_argument("--device", default="auto")
    return parser


@data_script
def main(argv: list[str] | None = None) -> int:
    """Run the grid from the command line; prints the summary table. Exit 2 on a bad argument or data problem."""
    args = build_parser().parse_args(argv)
    changes = {key: value for key, value in (("methods", args.methods), ("ars", args.ar),
                                             ("replicates", args.replicates), ("baseline_ar", args.baseline_ar))
               if value is not None}
    if args.methods is not None:
        changes["full_only"] = ()
    spec = grid_spec(args.profile, args.dataset, args.data_root, **changes)
    result = run_grid(spec, args.run_dir, args.device)
    table = pd.DataFrame([{"method": r["method"], "AR %": r["ar_percent"], "replicates": r["replicates"],
                           "AUC": f"{r['test_auc']['mean']:.4f} ± {r['test_auc']['ci95']:.4f}",
                           "AUPRC": f"{r['test_auprc']['mean']:.4f} ± {r['test_auprc']['ci95']:.4f}"}
                          for r in result.table["rows"]])
    print(table.to_string(index=False))
    for skip in result.table["skipped"]:
        print(f"skipped {skip['method']}: {skip['reason']}")
    print(f"wrote {Path(args.run_dir) / 'table1.json'} and table1.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
