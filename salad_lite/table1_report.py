"""Tables and sentences of the Table-1 chapter, built from the method x AR grid's results.

Two inputs, both written by the grid:

``table1`` (the content of its ``table1.json``)::

    {"dataset": "nih" | "mura" | ..., "profile": str, "data_root": str, "replicates": int,
     "baseline_ar": int,
     "rows": [{"method": "SALAD", "method_id": "salad", "ar_percent": 5, "replicates": 2,
               "test_auc": {"mean": float, "ci95": float}, "test_auprc": {...}, "val_auc": {...},
               "per_replicate": [{"seed": 0, "test_auc": .., "test_auprc": .., "val_auc": ..,
                                  "selected_epoch": int, "k": int | None}]}],
     "skipped": [{"method": "Supervised ResNet-18", "method_id": "supervised", "ar_percent": 0,
                  "reason": "the supervised classifier needs abnormal training images (AR > 0)"}]}

A skipped entry names the AR it would have run at; an older ``table1.json`` may hold
``"ar_percent": null`` (or no ``ar_percent``): the method was skipped at every AR, and
every row of that method that did not run shows the reason.

``cells``: one dict per method x AR x seed with ``method``, ``method_id``, ``ar_percent``,
``seed``, ``test_scores`` ``[M]``, ``test_labels`` ``[M]`` (1 = abnormal), ``test_ids`` ``[M]``,
``val_auc``, ``k`` (``None`` for a method without one), ``k_curve`` (``[{"k", "val_auc"}]``
or ``[]``) and, for the Table-1 rows, ``selected_round`` (the aggregation round of the
selected checkpoint, 0 = the end of pre-training, before any round; ``None`` or absent
for a baseline or an older cell).

The seeded splits share one validation and one test set across AR 0 to 15 %
(:data:`salad_lite.data.registry.HELD_OUT_RESERVE_RATIO`), so two cells of a data set
and seed are compared on the same test images; :func:`paired_differences` still
matches them by image id (:func:`salad_lite.paired.align_on_ids`), a safety net for
split files and other data whose test sets differ.

``ci95`` is ``1.96 std`` over the replicates (:func:`salad_lite.metrics.mean_ci`; NaN or
``None`` for one replicate). The paper's numbers come from
:data:`salad_lite.report.PAPER_TABLE1`; the figures are in :mod:`salad_lite.viz`
(:func:`~salad_lite.viz.plot_fig5_bars`, :func:`~salad_lite.viz.plot_roc_methods`,
:func:`~salad_lite.viz.plot_k_curves`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from salad_lite.metrics import mean_ci
from salad_lite.paired import align_on_ids, delong_test, paired_bootstrap_auc
from salad_lite.report import PAPER_TABLE1, TABLE1_DATASETS
from salad_lite.utils import is_number

__all__ = ["FIG5_BASELINES", "FIG5_NO_NUMBER", "OCGAN_NIH_AUC", "PAPER_ORDERINGS", "TABLE1_METHOD_NAMES",
           "chosen_k_summary", "fig5_ar", "fig5_bar_rows", "fig5_table", "k_curves", "ordering_checks",
           "ordering_sentence", "paired_differences", "paper_auc_difference", "table1_side_by_side"]

#: The methods of the paper's Table 1, in its order: display names, the ``method`` field of the grid's rows
#: (their ids, the ``method_id`` field, are :data:`salad_lite.table1.TABLE1_METHODS`).
TABLE1_METHOD_NAMES: tuple[str, ...] = ("MemDAE", "SALAD w/o L_mse", "SALAD w/o L_agg", "SALAD")
#: The Fig. 5 baselines the grid can run, in the order of the chapter's tables and figures.
FIG5_BASELINES: tuple[str, ...] = ("Deep AE", "Deep SVDD", "Deep SAD", "Geometric", "GAN-GP",
                                   "Supervised ResNet-18")
#: The one published number of a Fig. 5 baseline: OCGAN on the NIH subset (Tang et al. 2019), test AUC.
OCGAN_NIH_AUC = 0.841
#: What the ``paper`` column of :func:`fig5_table` says of a baseline: Fig. 5 shows bars without numbers.
FIG5_NO_NUMBER = "Fig. 5: bars only, no number given"

_PAPER_KEYS = [(r["method"], float(r["AR %"])) for r in PAPER_TABLE1]


# --------------------------------------------------------------------------- input checks
def _check_table1(table1: Any) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The ``rows`` and ``skipped`` lists of one data set's table1.json entry, checked.

    Raises:
        ValueError: not such a dict (the whole ``table1.json``, data set -> entry, is
            named as such); a row or skipped entry lacking a field or holding a value of
            the wrong kind (the row and field named); two rows of one (method, AR).
    """
    if isinstance(table1, Mapping) and "rows" not in table1 and table1 and all(
            isinstance(v, Mapping) and "rows" in v for v in table1.values()):
        raise ValueError(f"this is a whole table1.json (data set -> entry: {sorted(map(str, table1))}); pass one "
                         f"data set's entry, e.g. table1[{next(iter(table1))!r}]")
    if not isinstance(table1, Mapping) or not isinstance(table1.get("rows"), Sequence):
        raise ValueError("not a table1.json dict: needs a 'rows' list")
    rows = list(table1["rows"])
    seen: dict[tuple[str, float | None], int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"table1 rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [k for k in ("method", "ar_percent", "test_auc", "test_auprc") if k not in row]
        if missing:
            raise ValueError(f"table1 rows[{i}] lacks {missing}")
        if not isinstance(row["method"], str) or not _is_ar(row["ar_percent"]):
            raise ValueError(f"table1 rows[{i}] needs a text 'method' and an 'ar_percent' in 0..100, got "
                             f"{row['method']!r} and {row['ar_percent']!r}")
        for metric in ("test_auc", "test_auprc"):
            value = row[metric]
            mean = value.get("mean", "missing") if isinstance(value, Mapping) else "missing"
            half = value.get("ci95") if isinstance(value, Mapping) else None
            if not (mean is None or is_number(mean) and (math.isnan(mean) or 0 <= mean <= 1)) or not (
                    half is None or is_number(half) and (math.isnan(half) or 0 <= half < math.inf)):
                raise ValueError(f"table1 rows[{i}][{metric!r}] must be {{'mean': number in [0, 1] or null, "
                                 f"'ci95': number >= 0 or null}}, got {value!r}")
        key = _key(row["method"], row["ar_percent"])
        if key in seen:
            raise ValueError(f"table1 rows[{seen[key]}] and rows[{i}] are both {row['method']} at AR "
                             f"{row['ar_percent']}")
        seen[key] = i
    skipped = list(table1.get("skipped") or [])
    for i, skip in enumerate(skipped):
        if not isinstance(skip, Mapping) or "method" not in skip or not (
                skip.get("ar_percent") is None or _is_ar(skip["ar_percent"])):
            raise ValueError(f"table1 skipped[{i}] must be a dict with 'method' (and 'ar_percent': in 0..100 or "
                             f"null, 'reason'), got {skip!r}")
    return rows, skipped


def _is_ar(value: Any) -> bool:
    """An anomalous ratio in %: a number in 0..100."""
    return is_number(value) and 0 <= value <= 100


def _check_ar(ar_percent: Any) -> float | None:
    """An ``ar_percent`` argument: None, or a number in 0..100 (as a float)."""
    if ar_percent is None:
        return None
    if not _is_ar(ar_percent):
        raise ValueError(f"ar_percent must be an AR in % (a number in 0..100) or None, got {ar_percent!r}")
    return float(ar_percent)


def _num(value: Any) -> float:
    """A float, NaN for ``None`` (a single replicate's CI is stored as null in JSON)."""
    return float("nan") if value is None else float(value)


def _key(method: str, ar: Any) -> tuple[str, float | None]:
    """``(method, AR)`` as a lookup key; an AR of ``None`` (a skipped entry of an older table1.json) stays None."""
    return str(method), None if ar is None else float(ar)


def _skip_lookup(skipped: Sequence[Mapping[str, Any]]) -> Any:
    """``find(method, ar)``: the skipped entry of ``method`` at ``ar``, else one of ``method`` at any AR, else None."""
    exact = {_key(s["method"], s.get("ar_percent")): s for s in skipped if s.get("ar_percent") is not None}
    any_ar = {str(s["method"]): s for s in skipped if s.get("ar_percent") is None}

    def find(method: str, ar: float) -> Mapping[str, Any] | None:
        return exact.get(_key(method, ar)) or any_ar.get(str(method))

    return find


def _ar_text(ar: float) -> int | float:
    return int(ar) if float(ar).is_integer() else float(ar)


def _pm_text(mean: float, half: float) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.4f} (1 run)" if math.isnan(half) else f"{mean:.4f} ± {half:.4f}"


def _skip_reason(skip: Mapping[str, Any]) -> str:
    return str(skip.get("reason") or "skipped")


# --------------------------------------------------------------------------- Table 1 beside the paper
def fig5_ar(dataset: str) -> int:
    """AR (%) of the paper's † model for ``dataset``, the one compared with the baselines in Fig. 5 (NIH 10, MURA 5).

    A data set outside Table 1 gets 5, the paper's default anomaly ratio.
    """
    for row in PAPER_TABLE1:
        if dataset in row["fig5"]:
            return int(row["AR %"])
    return 5


def table1_side_by_side(table1: Mapping[str, Any], dataset: str | None = None, *, text: bool = False) -> pd.DataFrame:
    """The paper's Table 1 and this run's numbers, row for row in the paper's order (method x AR).

    Rows: the 10 rows of :data:`~salad_lite.report.PAPER_TABLE1`, then any Table-1
    method the grid ran at an AR the paper does not report (paper columns NaN). The
    Fig. 5 baselines are in :func:`fig5_table`.

    Args:
        table1: the grid's ``table1.json`` dict (see the module docstring).
        dataset: whose paper columns to show (``nih`` / ``mura``); default
            ``table1["dataset"]``. Another name leaves the paper columns empty.
        text: cells as strings ``"0.9091 ± 0.0069"`` (for display) instead of numbers.

    Returns:
        With ``text=False``: columns ``method``, ``AR %``, ``paper AUC``, ``paper AUC ±``,
        ``this run AUC``, ``this run AUC ±``, ``paper AUPRC``, ``paper AUPRC ±``,
        ``this run AUPRC``, ``this run AUPRC ±``, ``replicates``, ``note``; the
        paper's ± is its own error figure, this run's is ``1.96 std`` over its
        replicates. ``note`` holds the skip reason of a row the run skipped (e.g.
        "run with PROFILE=full") or "not in this grid". With ``text=True``: ``method``,
        ``AR %``, ``paper AUC``, ``this run AUC``, ``paper AUPRC``, ``this run AUPRC``,
        ``replicates``, where a skipped row's "this run" cells hold the reason.

    Raises:
        ValueError: ``table1`` is not a table1.json dict (the missing field is named).
    """
    rows, skipped = _check_table1(table1)
    dataset = str(table1.get("dataset", "")) if dataset is None else dataset
    has_paper = dataset in TABLE1_DATASETS
    ran = {_key(r["method"], r["ar_percent"]): r for r in rows}
    find_skip = _skip_lookup(skipped)
    skip_keys = [_key(s["method"], s.get("ar_percent")) for s in skipped if s.get("ar_percent") is not None]
    keys = list(_PAPER_KEYS)
    extra = {k for k in list(ran) + skip_keys if k[0] in TABLE1_METHOD_NAMES and k not in keys}
    keys += sorted(extra, key=lambda k: (k[1], TABLE1_METHOD_NAMES.index(k[0])))
    paper = {(r["method"], float(r["AR %"])): r for r in PAPER_TABLE1}
    out = []
    for key in keys:
        method, ar = key
        line: dict[str, Any] = {"method": method, "AR %": _ar_text(ar)}
        p = paper.get(key) if has_paper else None
        for metric, label in (("auc", "AUC"), ("auprc", "AUPRC")):
            line[f"paper {label}"] = p[f"{dataset}_{metric}"] if p else float("nan")
            line[f"paper {label} ±"] = p[f"{dataset}_{metric}_pm"] if p else float("nan")
            r = ran.get(key)
            line[f"this run {label}"] = _num(r[f"test_{metric}"]["mean"]) if r else float("nan")
            line[f"this run {label} ±"] = _num(r[f"test_{metric}"].get("ci95")) if r else float("nan")
        r = ran.get(key)
        line["replicates"] = int(r.get("replicates", len(r.get("per_replicate", [])))) if r else 0
        if r:
            note = "" if p or not has_paper else "not in the paper's Table 1"
        elif find_skip(method, ar) is not None:
            note = _skip_reason(find_skip(method, ar))
        else:
            note = "not in this grid"
        line["note"] = note
        out.append(line)
    frame = pd.DataFrame(out)
    if not text:
        return frame
    shown = pd.DataFrame({"method": frame["method"], "AR %": frame["AR %"]})
    for label in ("AUC", "AUPRC"):
        shown[f"paper {label}"] = [_pm_text(m, h) or "—" for m, h in
                                   zip(frame[f"paper {label}"], frame[f"paper {label} ±"])]
        shown[f"this run {label}"] = [_pm_text(m, h) or note for m, h, note in
                                      zip(frame[f"this run {label}"], frame[f"this run {label} ±"], frame["note"])]
    shown["replicates"] = frame["replicates"]
    return shown


def fig5_table(table1: Mapping[str, Any], ar_percent: float | None = None) -> pd.DataFrame:
    """This run's Fig. 5 comparison: SALAD at the paper's † AR, then the baselines, then OCGAN (literature only).

    Fig. 5 of the paper shows bars only, so the ``paper`` column gives no number for a
    baseline, except the one published figure: OCGAN on NIH, AUC 0.841 (Tang et al.
    2019). Baselines appear in :data:`FIG5_BASELINES` order (any other method the grid
    ran that is not a Table-1 method follows, in the order of its rows); a row the run
    skipped keeps its place with the reason in ``note``.

    Args:
        table1: the grid's ``table1.json`` dict.
        ar_percent: the SALAD row's AR; default :func:`fig5_ar` of ``table1["dataset"]``.

    Returns:
        Columns ``method``, ``AR %``, ``AUC``, ``AUC ±``, ``AUPRC``, ``AUPRC ±``,
        ``replicates``, ``paper``, ``note``.

    Raises:
        ValueError: ``table1`` is not a table1.json entry (:func:`_check_table1`), or
            ``ar_percent`` is not a number in 0..100 or None.
    """
    rows, skipped = _check_table1(table1)
    ar_percent = _check_ar(ar_percent)
    dataset = str(table1.get("dataset", ""))
    ar_salad = float(fig5_ar(dataset) if ar_percent is None else ar_percent)
    baseline_names = list(FIG5_BASELINES) + [m for m in dict.fromkeys(str(r["method"]) for r in rows)
                                             if m not in FIG5_BASELINES and m not in TABLE1_METHOD_NAMES]
    out = []

    def add(method: str, ar: float, row: Mapping[str, Any] | None, paper: str, note: str) -> None:
        line: dict[str, Any] = {"method": method, "AR %": _ar_text(ar)}
        for metric, label in (("auc", "AUC"), ("auprc", "AUPRC")):
            line[label] = _num(row[f"test_{metric}"]["mean"]) if row else float("nan")
            line[f"{label} ±"] = _num(row[f"test_{metric}"].get("ci95")) if row else float("nan")
        line["replicates"] = int(row.get("replicates", len(row.get("per_replicate", [])))) if row else 0
        line["paper"], line["note"] = paper, note
        out.append(line)

    salad = [r for r in rows if r["method"] == "SALAD" and float(r["ar_percent"]) == ar_salad]
    salad_skip = [s for s in [_skip_lookup(skipped)("SALAD", ar_salad)] if s is not None]
    paper_salad = next((p for p in PAPER_TABLE1 if p["method"] == "SALAD" and float(p["AR %"]) == ar_salad), None)
    salad_paper = (f"Table 1: AUC {paper_salad[f'{dataset}_auc']:.4f} ± {paper_salad[f'{dataset}_auc_pm']:.4f}"
                   if paper_salad and dataset in TABLE1_DATASETS else "")
    if salad or salad_skip:
        add("SALAD", ar_salad, salad[0] if salad else None, salad_paper,
            "" if salad else _skip_reason(salad_skip[0]))
    for name in baseline_names:
        mine = sorted((r for r in rows if r["method"] == name), key=lambda r: float(r["ar_percent"]))
        for r in mine:
            add(name, float(r["ar_percent"]), r, FIG5_NO_NUMBER, "")
        ran_ars = {float(r["ar_percent"]) for r in mine}
        for s in skipped:
            if s["method"] != name:
                continue
            if s.get("ar_percent") is None:  # an older table1.json: skipped at every AR
                if not mine:
                    add(name, _num(table1.get("baseline_ar")), None, FIG5_NO_NUMBER, _skip_reason(s))
            elif float(s["ar_percent"]) not in ran_ars:
                add(name, float(s["ar_percent"]), None, FIG5_NO_NUMBER, _skip_reason(s))
    add("OCGAN", float("nan"), None,
        f"Tang et al. 2019: NIH AUC {OCGAN_NIH_AUC:.3f}" + ("" if dataset == "nih" else " (NIH only)"),
        "not run here; the one published number of a Fig. 5 method")
    frame = pd.DataFrame(out)
    return frame


def paper_auc_difference(dataset: str, a: tuple[str, float] = ("SALAD", 5),
                         b: tuple[str, float] = ("MemDAE", 0)) -> float | None:
    """The paper's Table-1 AUC of ``a`` minus that of ``b`` (``(method, AR %)`` pairs) on ``dataset``.

    ``None`` when ``dataset`` is not in Table 1 or a pair is not one of its rows.
    """
    if dataset not in TABLE1_DATASETS:
        return None
    values = {(r["method"], float(r["AR %"])): r[f"{dataset}_auc"] for r in PAPER_TABLE1}
    ka, kb = _key(*a), _key(*b)
    if ka not in values or kb not in values:
        return None
    return float(values[ka] - values[kb])


# --------------------------------------------------------------------------- paired differences
def _cells_of(cells: Sequence[Mapping[str, Any]], which: tuple[str, float], name: str) -> dict[int, Mapping[str, Any]]:
    method_id, ar = which
    found: dict[int, Mapping[str, Any]] = {}
    for i, cell in enumerate(cells):
        missing = [k for k in ("method_id", "ar_percent", "seed", "test_scores", "test_labels", "test_ids")
                   if k not in cell]
        if missing:
            raise ValueError(f"cells[{i}] lacks {missing}")
        if cell["method_id"] == method_id and float(cell["ar_percent"]) == float(ar):
            seed = int(cell["seed"])
            if seed in found:
                raise ValueError(f"cells hold two results for {method_id!r} at AR {ar} %, seed {seed}")
            found[seed] = cell
    if not found:
        have = sorted({(str(c["method_id"]), float(c["ar_percent"])) for c in cells})
        raise ValueError(f"no cell for {name} = {which!r}; the cells have (method_id, AR %) {have}")
    return found


def paired_differences(cells: Sequence[Mapping[str, Any]], a: tuple[str, float] = ("salad", 5),
                       b: tuple[str, float] = ("memdae", 0), method: Literal["bootstrap", "delong"] = "bootstrap",
                       n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Test AUC of cell ``a`` minus cell ``b``, paired on the same test images, per replicate, plus a pooled line.

    Replicate ``s`` of ``a`` is compared with replicate ``s`` of ``b`` (seeds both
    cells have). The seeded splits give every AR from 0 to 15 % the same test
    images, so ``n common`` is the whole test set; the images are still matched by
    id (:func:`salad_lite.paired.align_on_ids`), and when two test sets differ
    (a split file, other data) only the images both scored are kept and ``n common``
    says how many.

    Args:
        cells: the grid's per-cell results (see the module docstring).
        a, b: ``(method_id, AR %)`` of the two cells.
        method: ``"bootstrap"`` (:func:`~salad_lite.paired.paired_bootstrap_auc`,
            percentile CI) or ``"delong"`` (:func:`~salad_lite.paired.delong_test`,
            normal CI and p-value).
        n_boot, seed: the bootstrap's resamples and seed (replicate ``s`` resamples with ``seed + s``).

    Returns:
        One row per seed: ``seed``, ``n common``, ``n abnormal``, ``AUC a``, ``AUC b``,
        ``difference``, ``ci_low``, ``ci_high``, ``p_value`` (DeLong only, else NaN),
        ``method``, ``identical scores`` (the two cells gave every common image the
        same score: they selected identical models), ``round a`` / ``round b`` (the
        cells' ``selected_round``, 0 = before any aggregation round; blank ``""`` for a
        cell without one); then the row ``seed = "pooled"``: the mean difference over the
        replicates with ``mean ± 1.96 std`` of the per-replicate differences (the
        training variation, NaN for one replicate), its method "mean over replicates",
        ``identical scores`` true when every replicate's are, rounds blank.

    Raises:
        ValueError: ``method`` unknown; a cell lacks a field; no cell for ``a`` or
            ``b`` (the cells present are listed); no seed in common; labels that
            disagree on a common image or too few common images (from
            :func:`~salad_lite.paired.align_on_ids`).
    """
    if method not in ("bootstrap", "delong"):
        raise ValueError(f"method must be 'bootstrap' or 'delong', got {method!r}")
    cells = list(cells)
    cells_a, cells_b = _cells_of(cells, a, "a"), _cells_of(cells, b, "b")
    seeds = sorted(set(cells_a) & set(cells_b))
    if not seeds:
        raise ValueError(f"cells a = {a!r} (seeds {sorted(cells_a)}) and b = {b!r} (seeds {sorted(cells_b)}) "
                         "share no seed")
    out = []
    for s in seeds:
        ca, cb = cells_a[s], cells_b[s]
        aligned = align_on_ids(ca["test_ids"], ca["test_scores"], cb["test_ids"], cb["test_scores"],
                               ca["test_labels"], cb["test_labels"])
        if method == "bootstrap":
            res = paired_bootstrap_auc(aligned.labels, aligned.scores_a, aligned.scores_b, n_boot=n_boot,
                                       seed=seed + s)
            p_value = float("nan")
        else:
            res = delong_test(aligned.labels, aligned.scores_a, aligned.scores_b)
            p_value = res["p_value"]
        out.append({"seed": s, "n common": len(aligned.ids), "n abnormal": int(aligned.labels.sum()),
                    "AUC a": res["auc_a"], "AUC b": res["auc_b"], "difference": res["difference"],
                    "ci_low": res["ci_low"], "ci_high": res["ci_high"], "p_value": p_value, "method": method,
                    "identical scores": bool(np.array_equal(aligned.scores_a, aligned.scores_b)),
                    "round a": _round_text(ca.get("selected_round")),
                    "round b": _round_text(cb.get("selected_round"))})
    mean, half = mean_ci([r["difference"] for r in out])
    out.append({"seed": "pooled", "n common": int(np.mean([r["n common"] for r in out])),
                "n abnormal": int(np.mean([r["n abnormal"] for r in out])),
                "AUC a": float(np.mean([r["AUC a"] for r in out])), "AUC b": float(np.mean([r["AUC b"] for r in out])),
                "difference": mean, "ci_low": mean - half, "ci_high": mean + half, "p_value": float("nan"),
                "method": "mean over replicates", "identical scores": all(r["identical scores"] for r in out),
                "round a": "", "round b": ""})
    return pd.DataFrame(out)


def _round_text(value: Any) -> int | str:
    """A cell's ``selected_round`` for the table: the round as int, ``""`` for None (a baseline, an older cell)."""
    return "" if value is None else int(value)


def ordering_sentence(diff_table: pd.DataFrame, a_name: str, b_name: str,
                      paper_difference: float | None = None, *, aggregation_of_a: bool = False) -> str:
    """One sentence, computed from ``diff_table``: does the paper's ordering ``a > b`` hold on this data?

    Read from the per-replicate rows of :func:`paired_differences` (the pooled row is
    left out). The verdict is symmetric:

    - "holds" when every replicate's 95% CI lies above 0;
    - "is reversed on this data" when every CI lies below 0;
    - otherwise "is not resolved by this run (CIs include 0 in n of R replicates)",
      whatever the sign of the mean difference.

    When the two cells gave identical test scores (``identical scores``: they
    selected identical models, the difference is exactly 0) the sentence says so:
    in every replicate, the ordering is not tested at all; in some, a note names how
    many. ``paper_difference`` (e.g. :func:`paper_auc_difference`) is quoted for
    context. With ``aggregation_of_a`` (``a`` against SALAD w/o L_agg) and a
    ``round a`` column, the replicates whose ``a`` selected round 0 (the checkpoint
    before any aggregation round, on which L_agg never acted) are counted in a note.

    Raises:
        ValueError: ``diff_table`` lacks the columns of :func:`paired_differences` or
            has no replicate row.
    """
    needed = {"seed", "difference", "ci_low", "ci_high"}
    if not isinstance(diff_table, pd.DataFrame) or not needed <= set(diff_table.columns):
        raise ValueError(f"not a paired_differences table: needs columns {sorted(needed)}")
    reps = diff_table[diff_table["seed"].astype(str) != "pooled"]
    if reps.empty:
        raise ValueError("the paired_differences table has no replicate row")
    n = len(reps)
    diffs = reps["difference"].to_numpy(float)
    low, high = reps["ci_low"].to_numpy(float), reps["ci_high"].to_numpy(float)
    mean = float(diffs.mean())
    above, below = int((low > 0).sum()), int((high < 0).sum())
    include = n - above - below
    identical = (reps["identical scores"].to_numpy(bool) if "identical scores" in reps.columns
                 else np.zeros(n, dtype=bool)) & (diffs == 0)
    n_identical = int(identical.sum())
    paper = (f" (the paper's Table 1: {paper_difference:+.4f})" if paper_difference is not None
             and not math.isnan(paper_difference) else "")
    replicates = "replicate" if n == 1 else "replicates"
    if n_identical == n:
        verdict = "is not tested by this run"
        where = "the one replicate" if n == 1 else f"all {n} replicates"
        detail = (f"the two cells selected identical models: their test scores are identical in {where}, "
                  "so the difference is exactly 0")
    elif above == n:
        verdict, detail = "holds on this data", f"every replicate's 95% CI lies above 0 ({n} {replicates})"
    elif below == n:
        verdict, detail = "is reversed on this data", f"every replicate's 95% CI lies below 0 ({n} {replicates})"
    else:
        parts = [f"lie above 0 in {above}"] * bool(above) + [f"lie below 0 in {below}"] * bool(below)
        verdict = (f"is not resolved by this run (CIs include 0 in {include} of {n} {replicates}"
                   + "".join(f", {p}" for p in parts) + ")")
        detail = ""
    notes = [detail] if detail else []
    if 0 < n_identical < n:
        notes.append(f"the two cells selected identical models in {n_identical} of {n} {replicates} "
                     "(identical test scores, difference exactly 0)")
    if aggregation_of_a and "round a" in reps.columns:
        rounds = [r for r in reps["round a"].tolist() if r is not None and str(r) != "" and not _is_nan(r)]
        n_zero = sum(int(r) == 0 for r in rounds)
        if n_zero:
            notes.append(f"in {n_zero} of {n} {replicates} {a_name}'s selected checkpoint predates every "
                         "aggregation round, so L_agg never acted on it")
    return (f"The paper's ordering {a_name} > {b_name} {verdict}: the test-AUC difference {a_name} − {b_name} "
            f"is {mean:+.4f} on average over {n} {replicates}{paper}" + "".join(f"; {x}" for x in notes) + ".")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --------------------------------------------------------------------------- K curves
def k_curves(cells: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Validation AUC over K per method, AR and seed (methods with a K only), tidy, with the chosen K.

    Returns:
        Columns ``method``, ``method_id``, ``ar_percent``, ``seed``, ``k``, ``val_auc``,
        ``chosen_k`` (the cell's ``k``) and ``chosen`` (this row is the chosen K), sorted
        by method, AR, seed and K. Cells with ``k`` None or an empty ``k_curve`` are
        left out; an empty table keeps the columns.

    Raises:
        ValueError: a cell with a K curve lacks ``method``, ``ar_percent`` or ``seed``;
            a ``k_curve`` entry lacks ``k`` or ``val_auc``.
    """
    columns = ["method", "method_id", "ar_percent", "seed", "k", "val_auc", "chosen_k", "chosen"]
    out = []
    for i, cell in enumerate(cells):
        curve = cell.get("k_curve") or []
        if cell.get("k") is None or not curve:
            continue
        missing = [k for k in ("method", "ar_percent", "seed") if k not in cell]
        if missing:
            raise ValueError(f"cells[{i}] lacks {missing}")
        for j, point in enumerate(curve):
            if not isinstance(point, Mapping) or "k" not in point or "val_auc" not in point:
                raise ValueError(f"cells[{i}]['k_curve'][{j}] must be {{'k', 'val_auc'}}, got {point!r}")
            out.append({"method": str(cell["method"]), "method_id": str(cell.get("method_id", cell["method"])),
                        "ar_percent": _ar_text(float(cell["ar_percent"])), "seed": int(cell["seed"]),
                        "k": int(point["k"]), "val_auc": float(point["val_auc"]), "chosen_k": int(cell["k"]),
                        "chosen": int(point["k"]) == int(cell["k"])})
    frame = pd.DataFrame(out, columns=columns)
    return frame.sort_values(["method", "ar_percent", "seed", "k"], kind="stable").reset_index(drop=True)


def chosen_k_summary(k_table: pd.DataFrame) -> pd.DataFrame:
    """Per method and AR: the K chosen on validation by each replicate, and whether they agree.

    ``k_table``: :func:`k_curves`' table. Returns columns ``method``, ``AR %``,
    ``chosen K per seed`` (e.g. ``"0: 10, 1: 30"``), ``distinct K`` and ``stable``
    (every replicate chose the same K).

    Raises:
        ValueError: ``k_table`` lacks the columns of :func:`k_curves`.
    """
    needed = {"method", "ar_percent", "seed", "chosen_k"}
    if not isinstance(k_table, pd.DataFrame) or not needed <= set(k_table.columns):
        raise ValueError(f"not a k_curves table: needs columns {sorted(needed)}")
    out = []
    per_seed = k_table.drop_duplicates(["method", "ar_percent", "seed"])
    for (method, ar), part in per_seed.groupby(["method", "ar_percent"], sort=False):
        ks = [int(k) for k in part["chosen_k"]]
        out.append({"method": method, "AR %": ar,
                    "chosen K per seed": ", ".join(f"{int(s)}: {k}" for s, k in zip(part["seed"], ks)),
                    "distinct K": len(set(ks)), "stable": len(set(ks)) == 1})
    return pd.DataFrame(out, columns=["method", "AR %", "chosen K per seed", "distinct K", "stable"])


# --------------------------------------------------------------------------- rows of the Fig. 5 bars
def fig5_bar_rows(table1: Mapping[str, Any], ar_percent: float | None = None) -> pd.DataFrame:
    """The bars of :func:`salad_lite.viz.plot_fig5_bars`, in their fixed order; skipped rows left out.

    Order: MemDAE (AR 0), then SALAD w/o L_mse, SALAD w/o L_agg and SALAD at
    ``ar_percent``, then the baselines in :data:`FIG5_BASELINES` order (any other
    method after them), each at ``ar_percent`` when it ran there, else at its
    lowest AR. ``ar_percent`` defaults to the paper's † AR (:func:`fig5_ar`) when the
    grid ran a Table-1 method there, else the lowest non-zero AR of a Table-1 row.

    Returns:
        Columns ``method``, ``AR %``, ``label`` (``"SALAD (AR 5%)"``), ``table1``
        (a Table-1 method), ``AUC``, ``AUC ±``, ``AUPRC``, ``AUPRC ±`` (this run,
        ``1.96 std``; NaN for one replicate) and ``paper AUC``, ``paper AUC ±``,
        ``paper AUPRC``, ``paper AUPRC ±`` (NaN where the paper has no number).

    Raises:
        ValueError: ``table1`` is not a table1.json entry (:func:`_check_table1`), or
            ``ar_percent`` is not a number in 0..100 or None.
    """
    rows, _ = _check_table1(table1)
    ar_percent = _check_ar(ar_percent)
    dataset = str(table1.get("dataset", ""))
    t1_ars = sorted({float(r["ar_percent"]) for r in rows if r["method"] in TABLE1_METHOD_NAMES} - {0.0})
    if ar_percent is None:
        ar = float(fig5_ar(dataset))
        ar = ar if ar in t1_ars or not t1_ars else t1_ars[0]
    else:
        ar = float(ar_percent)
    paper = {(p["method"], float(p["AR %"])): p for p in PAPER_TABLE1} if dataset in TABLE1_DATASETS else {}
    by_key = {_key(r["method"], r["ar_percent"]): r for r in rows}
    chosen: list[Mapping[str, Any]] = []
    memdae = sorted((r for r in rows if r["method"] == "MemDAE"), key=lambda r: float(r["ar_percent"]))
    if memdae:
        chosen.append(memdae[0])
    chosen += [by_key[(m, ar)] for m in TABLE1_METHOD_NAMES[1:] if (m, ar) in by_key]
    others = list(FIG5_BASELINES) + [m for m in dict.fromkeys(str(r["method"]) for r in rows)
                                     if m not in FIG5_BASELINES and m not in TABLE1_METHOD_NAMES]
    for name in others:
        mine = sorted((r for r in rows if r["method"] == name), key=lambda r: float(r["ar_percent"]))
        if mine:
            chosen.append(by_key.get((name, ar), mine[0]))
    out = []
    for r in chosen:
        key = _key(r["method"], r["ar_percent"])
        p = paper.get(key)
        line: dict[str, Any] = {"method": key[0], "AR %": _ar_text(key[1]),
                                "label": f"{key[0]} (AR {_ar_text(key[1])}%)", "table1": key[0] in TABLE1_METHOD_NAMES}
        for metric, label in (("auc", "AUC"), ("auprc", "AUPRC")):
            line[label] = _num(r[f"test_{metric}"]["mean"])
            line[f"{label} ±"] = _num(r[f"test_{metric}"].get("ci95"))
        for metric, label in (("auc", "AUC"), ("auprc", "AUPRC")):
            line[f"paper {label}"] = p[f"{dataset}_{metric}"] if p else float("nan")
            line[f"paper {label} ±"] = p[f"{dataset}_{metric}_pm"] if p else float("nan")
        out.append(line)
    columns = ["method", "AR %", "label", "table1", "AUC", "AUC ±", "AUPRC", "AUPRC ±", "paper AUC", "paper AUC ±",
               "paper AUPRC", "paper AUPRC ±"]
    return pd.DataFrame(out, columns=columns)



#: The paper's two ablation claims the chapter tests: SALAD beats MemDAE, and L_agg adds to SALAD.
PAPER_ORDERINGS: tuple[tuple[str, str], ...] = (("salad", "memdae"), ("salad", "salad_no_agg"))


def ordering_checks(cells: Sequence[Mapping[str, Any]], dataset: str, ar_percent: int,
                    method: Literal["bootstrap", "delong"] = "delong") -> tuple[pd.DataFrame, list[str]]:
    """The paired differences of :data:`PAPER_ORDERINGS` at ``ar_percent`` (MemDAE at AR 0), and one sentence each.

    Returns:
        ``(table, sentences)``: :func:`paired_differences`' rows of both comparisons under a
        ``comparison`` column, and :func:`ordering_sentence` for each. A comparison whose
        cells the grid did not run is left out. The sentence of SALAD against SALAD w/o
        L_agg notes the replicates whose SALAD cell selected round 0 (``selected_round``:
        a checkpoint before any aggregation round, on which L_agg never acted).
    """
    names = {row["method_id"]: row["method"] for row in cells}
    tables, sentences = [], []
    for a_id, b_id in PAPER_ORDERINGS:
        a, b = (a_id, ar_percent), (b_id, 0 if b_id == "memdae" else ar_percent)
        if not any((c["method_id"], c["ar_percent"]) == a for c in cells) or \
                not any((c["method_id"], c["ar_percent"]) == b for c in cells):
            continue
        diff = paired_differences(cells, a, b, method=method)
        tables.append(diff.assign(comparison=f"{names[a_id]} (AR {a[1]}) - {names[b_id]} (AR {b[1]})"))
        paper = paper_auc_difference(dataset, (names[a_id], a[1]), (names[b_id], b[1]))
        sentences.append(ordering_sentence(diff, f"{names[a_id]} (AR {a[1]} %)", f"{names[b_id]} (AR {b[1]} %)",
                                           paper, aggregation_of_a=b_id == "salad_no_agg"))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return table.set_index(["comparison", "seed"]) if tables else table, sentences
