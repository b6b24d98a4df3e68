"""The Table-1 chapter's tables, sentences and figures (salad_lite.table1_report, viz) from a grid's results."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from salad_lite import table1_report as t1  # noqa: E402
from salad_lite import viz  # noqa: E402
from salad_lite.report import PAPER_TABLE1  # noqa: E402

METHOD_IDS = {"MemDAE": "memdae", "SALAD w/o L_mse": "salad_no_mse", "SALAD w/o L_agg": "salad_no_agg",
              "SALAD": "salad", "Deep AE": "deep_ae", "Deep SVDD": "deep_svdd", "Geometric": "geometric"}


def _row(method: str, ar: float, aucs: list[float], ks: list[int | None] | None = None) -> dict:
    """One table1.json row with replicate AUCs ``aucs`` (AUPRC = AUC + 0.05), as the grid writes it."""
    ks = ks or [None] * len(aucs)
    per = [{"seed": s, "test_auc": a, "test_auprc": a + 0.05, "val_auc": a - 0.01, "selected_epoch": 3, "k": k}
           for s, (a, k) in enumerate(zip(aucs, ks))]

    def stat(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "ci95": float(1.96 * np.std(values, ddof=1)) if len(values) > 1
                else None}

    return {"method": method, "method_id": METHOD_IDS.get(method, method.lower()), "ar_percent": ar,
            "replicates": len(aucs), "test_auc": stat(aucs), "test_auprc": stat([a + 0.05 for a in aucs]),
            "val_auc": stat([a - 0.01 for a in aucs]), "per_replicate": per}


def make_table1(dataset: str = "nih") -> dict:
    """A smoke-profile grid: MemDAE, the ablations and SALAD at AR 5 and 10, two baselines; some cells skipped."""
    rows = [_row("MemDAE", 0, [0.70, 0.72], [10, 10])]
    for ar, bump in ((5, 0.0), (10, 0.02)):
        rows += [_row("SALAD w/o L_mse", ar, [0.66 + bump, 0.70 + bump], [10, 30]),
                 _row("SALAD w/o L_agg", ar, [0.71 + bump, 0.73 + bump], [30, 30]),
                 _row("SALAD", ar, [0.78 + bump, 0.80 + bump], [30, 30])]
    rows += [_row("Deep SVDD", 5, [0.60, 0.64]), _row("Deep AE", 5, [0.65]),
             _row("SALAD", 20, [0.81, 0.83], [30, 30])]
    skipped = [{"method": m, "ar_percent": 15, "reason": "run with PROFILE=full"}
               for m in ("SALAD w/o L_mse", "SALAD w/o L_agg", "SALAD")]
    skipped += [{"method": "Geometric", "ar_percent": 5, "reason": "run with PROFILE=full"}]
    return {"dataset": dataset, "profile": "smoke", "data_root": "", "replicates": 2, "rows": rows,
            "skipped": skipped}


def _cell(method: str, ar: float, seed: int, ids: list[str], labels: np.ndarray, scores: np.ndarray,
          k: int | None = None, selected_round: int | None = None) -> dict:
    curve = [{"k": kk, "val_auc": 0.7 + 0.01 * np.log(kk) - (0.02 if kk == 100 else 0) + 0.001 * seed}
             for kk in (1, 10, 30, 100)] if k is not None else []
    return {"method": method, "method_id": METHOD_IDS[method], "ar_percent": ar, "seed": seed,
            "test_scores": [float(s) for s in scores], "test_labels": [int(v) for v in labels], "test_ids": ids,
            "val_auc": 0.7, "k": k, "k_curve": curve, "selected_round": selected_round}


def make_cells(salad_shift: float = 2.0, memdae_shift: float = 0.5, seeds: tuple[int, ...] = (0, 1)) -> list[dict]:
    """Per-cell results: AR 5 tests 200 images; AR 0 tests the same 200 (other order) plus 20 more abnormal ones."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 100)
    ids = [f"img{i:03d}" for i in range(200)]
    extra_ids, extra_labels = [f"img{i:03d}" for i in range(200, 220)], np.ones(20, dtype=int)
    cells = []
    for seed in seeds:
        cells.append(_cell("SALAD", 5, seed, ids, labels, salad_shift * labels + rng.normal(size=200), k=30,
                           selected_round=seed))  # seed 0 selects the checkpoint before any round
        cells.append(_cell("SALAD w/o L_agg", 5, seed, ids, labels, 1.0 * labels + rng.normal(size=200),
                           k=10 if seed == 0 else 30, selected_round=2))
        cells.append(_cell("Deep SVDD", 5, seed, ids, labels, 0.3 * labels + rng.normal(size=200)))
        all_labels = np.r_[labels, extra_labels][::-1]
        cells.append(_cell("MemDAE", 0, seed, (ids + extra_ids)[::-1], all_labels,
                           memdae_shift * all_labels + rng.normal(size=220), k=10))
    return cells


# --------------------------------------------------------------------------- Table 1 beside the paper
def test_side_by_side_follows_the_papers_order_with_its_plus_minus() -> None:
    table = t1.table1_side_by_side(make_table1("nih"), "nih")
    paper_keys = [(r["method"], r["AR %"]) for r in PAPER_TABLE1]
    assert list(zip(table["method"], table["AR %"]))[:10] == paper_keys
    assert list(zip(table["method"], table["AR %"]))[10:] == [("SALAD", 20)]  # ran, not in the paper
    assert table["paper AUC ±"].iloc[:10].notna().all() and table["paper AUPRC ±"].iloc[:10].notna().all()
    salad10 = table[(table["method"] == "SALAD") & (table["AR %"] == 10)].iloc[0]
    assert (salad10["paper AUC"], salad10["paper AUC ±"], salad10["paper AUPRC ±"]) == (0.9167, 0.0031, 0.0051)
    assert salad10["this run AUC"] == pytest.approx(0.81)
    assert salad10["this run AUC ±"] == pytest.approx(1.96 * np.std([0.80, 0.82], ddof=1))
    assert salad10["replicates"] == 2 and salad10["note"] == ""
    skipped = table[table["AR %"] == 15]
    assert len(skipped) == 3 and (skipped["note"] == "run with PROFILE=full").all()
    assert skipped["this run AUC"].isna().all() and skipped["paper AUC"].notna().all()
    assert table.iloc[-1]["note"] == "not in the paper's Table 1" and np.isnan(table.iloc[-1]["paper AUC"])
    assert not set(table["method"]) & {"Deep SVDD", "Deep AE"}  # baselines live in fig5_table
    mura = t1.table1_side_by_side(make_table1("mura"))  # dataset read from table1
    assert mura["paper AUC"].iloc[3] == 0.8117 and mura["paper AUC ±"].iloc[3] == 0.0028


def test_side_by_side_as_text() -> None:
    grid = make_table1("nih")
    grid["rows"] = [r for r in grid["rows"] if not (r["method"] == "SALAD w/o L_mse" and r["ar_percent"] == 10)]
    text = t1.table1_side_by_side(grid, text=True)
    assert list(text.columns) == ["method", "AR %", "paper AUC", "this run AUC", "paper AUPRC", "this run AUPRC",
                                  "replicates"]
    assert text.iloc[0]["paper AUC"] == "0.8778 ± 0.0072" and text.iloc[0]["paper AUPRC"] == "0.9198 ± 0.0024"
    assert text.iloc[0]["this run AUC"] == f"0.7100 ± {1.96 * np.std([0.70, 0.72], ddof=1):.4f}"
    assert text.iloc[7]["this run AUC"] == "run with PROFILE=full"
    assert text.iloc[4]["this run AUC"] == "not in this grid"  # SALAD w/o L_mse at AR 10 removed above
    other = t1.table1_side_by_side(make_table1("folder"), text=True)
    assert (other["paper AUC"].iloc[:10] == "—").all()


def test_fig5_table_lists_the_baselines_and_the_one_known_number() -> None:
    table = t1.fig5_table(make_table1("nih"))
    assert list(table["method"]) == ["SALAD", "Deep AE", "Deep SVDD", "Geometric", "OCGAN"]
    salad = table.iloc[0]
    assert salad["AR %"] == 10 and salad["AUC"] == pytest.approx(0.81) and "0.9167 ± 0.0031" in salad["paper"]
    deep_ae = table.iloc[1]
    assert deep_ae["replicates"] == 1 and np.isnan(deep_ae["AUC ±"]) and deep_ae["paper"] == t1.FIG5_NO_NUMBER
    assert table.iloc[3]["note"] == "run with PROFILE=full" and np.isnan(table.iloc[3]["AUC"])
    assert "0.841" in table.iloc[-1]["paper"] and "Tang et al. 2019" in table.iloc[-1]["paper"]
    mura = t1.fig5_table(make_table1("mura"))
    assert mura.iloc[0]["AR %"] == 5 and "(NIH only)" in mura.iloc[-1]["paper"]
    with pytest.raises(ValueError, match="rows"):
        t1.fig5_table({"dataset": "nih"})
    with pytest.raises(ValueError, match=r"rows\[0\] lacks \['test_auprc'\]"):
        t1.table1_side_by_side({"rows": [{"method": "SALAD", "ar_percent": 5, "test_auc": {"mean": 0.5}}]})


def test_a_malformed_table1_entry_is_named_not_converted() -> None:
    grid = make_table1("nih")
    with pytest.raises(ValueError, match=r"a whole table1.json \(data set -> entry: \['nih'\]\); pass one .*"
                                         r"table1\['nih'\]"):
        t1.fig5_table({"nih": grid})
    first = grid["rows"][0]
    for change, message in (({"ar_percent": "five"}, r"rows\[0\] needs a text 'method' and an 'ar_percent' in 0"),
                            ({"ar_percent": 250}, r"rows\[0\] needs .* got 'MemDAE' and 250"),
                            ({"test_auc": {"mean": 0.5, "ci95": -1}}, r"'ci95': number >= 0 or null"),
                            ({"ar_percent": None}, r"rows\[0\] needs .* got 'MemDAE' and None"),
                            ({"test_auc": {"mean": "0.9", "ci95": 0.1}}, r"rows\[0\]\['test_auc'\] must be"),
                            ({"test_auc": {"mean": 7.5, "ci95": 0.1}}, r"'mean': number in \[0, 1\]"),
                            ({"test_auprc": {"mean": 0.5, "ci95": "x"}}, r"'ci95': number >= 0 or null")):
        with pytest.raises(ValueError, match=message):
            t1.table1_side_by_side({**grid, "rows": [{**first, **change}, *grid["rows"][1:]]})
    with pytest.raises(ValueError, match=r"rows\[0\] and rows\[\d+\] are both MemDAE at AR 0"):
        t1.fig5_table({**grid, "rows": [*grid["rows"], first]})
    with pytest.raises(ValueError, match=r"skipped\[0\] must be a dict with 'method'"):
        t1.fig5_table({**grid, "skipped": [{"method": "Deep SAD", "ar_percent": "x"}]})
    for bad in (float("nan"), "10", -5):
        with pytest.raises(ValueError, match=r"ar_percent must be an AR in % \(a number in 0..100\)"):
            t1.fig5_table(grid, bad)
        with pytest.raises(ValueError, match=r"ar_percent must be an AR in % \(a number in 0..100\)"):
            t1.fig5_bar_rows(grid, bad)


def test_skipped_at_any_ar_shows_the_reason_on_every_row_of_the_method() -> None:
    """An older table1.json names no AR for a skipped method (null or no key): every row of it shows the reason."""
    grid = make_table1("nih")
    grid["rows"] = [r for r in grid["rows"] if r["method"] != "SALAD w/o L_mse"]
    grid["skipped"] = [{"method": "SALAD w/o L_mse", "method_id": "salad_no_mse", "ar_percent": None,
                        "reason": "run with PROFILE=full"},
                       {"method": "Geometric", "reason": "run with PROFILE=full"},  # no ar_percent at all
                       {"method": "SALAD", "ar_percent": 15, "reason": "AR 15 left out"}]
    grid["baseline_ar"] = 5
    table = t1.table1_side_by_side(grid)
    no_mse = table[table["method"] == "SALAD w/o L_mse"]
    assert list(no_mse["AR %"]) == [5, 10, 15] and (no_mse["note"] == "run with PROFILE=full").all()
    assert table[(table["method"] == "SALAD") & (table["AR %"] == 15)].iloc[0]["note"] == "AR 15 left out"
    assert len(table) == 11  # the paper's 10 rows and SALAD at AR 20; no row for an AR-less entry
    text = t1.table1_side_by_side(grid, text=True)
    assert (text[text["method"] == "SALAD w/o L_mse"]["this run AUC"] == "run with PROFILE=full").all()
    fig5 = t1.fig5_table(grid)
    geometric = fig5[fig5["method"] == "Geometric"]
    assert len(geometric) == 1 and geometric.iloc[0]["note"] == "run with PROFILE=full"
    assert geometric.iloc[0]["AR %"] == 5  # the grid's baseline AR
    grid["skipped"].append({"method": "SALAD", "ar_percent": None, "reason": "no SALAD"})
    grid["rows"] = [r for r in grid["rows"] if r["method"] != "SALAD"]
    assert t1.fig5_table(grid).iloc[0]["note"] == "no SALAD"
    notes = list(t1.table1_side_by_side(grid).query("method == 'SALAD'")["note"])
    assert notes == ["no SALAD", "no SALAD", "AR 15 left out"]  # an entry naming the AR wins
    assert len(t1.fig5_bar_rows(grid)) == 4  # MemDAE, SALAD w/o L_agg, Deep AE, Deep SVDD


def test_display_names_and_ids_are_two_constants() -> None:
    from salad_lite import table1

    assert t1.TABLE1_METHOD_NAMES == ("MemDAE", "SALAD w/o L_mse", "SALAD w/o L_agg", "SALAD")
    assert not hasattr(t1, "TABLE1_METHODS") and "TABLE1_METHOD_NAMES" in t1.__all__
    assert tuple(table1.METHODS[m] for m in table1.TABLE1_METHODS) == t1.TABLE1_METHOD_NAMES


def test_paper_auc_difference() -> None:
    assert t1.paper_auc_difference("mura") == pytest.approx(0.8117 - 0.7660)
    assert t1.paper_auc_difference("nih", ("SALAD", 10), ("SALAD w/o L_agg", 10)) == pytest.approx(0.9167 - 0.8913)
    assert t1.paper_auc_difference("folder") is None and t1.paper_auc_difference("nih", ("SALAD", 7)) is None
    assert t1.fig5_ar("nih") == 10 and t1.fig5_ar("mura") == 5 and t1.fig5_ar("folder") == 5


# --------------------------------------------------------------------------- paired differences and the sentence
@pytest.mark.parametrize("method", ["bootstrap", "delong"])
def test_paired_differences_align_ar0_on_the_common_images(method) -> None:
    cells = make_cells()
    table = t1.paired_differences(cells, ("salad", 5), ("memdae", 0), method=method, n_boot=400)
    assert list(table["seed"]) == [0, 1, "pooled"]
    reps = table.iloc[:2]
    assert (reps["n common"] == 200).all() and (reps["n abnormal"] == 100).all()  # the 20 extra AR-0 images dropped
    assert (reps["ci_low"] > 0).all() and (reps["difference"] > 0.2).all()
    assert reps["p_value"].isna().all() == (method == "bootstrap")
    if method == "delong":
        assert (reps["p_value"] < 1e-4).all()
    pooled = table.iloc[-1]
    assert pooled["difference"] == pytest.approx(reps["difference"].mean())
    half = 1.96 * reps["difference"].std(ddof=1)
    assert pooled["ci_low"] == pytest.approx(pooled["difference"] - half) and pooled["method"] == "mean over replicates"
    # the AUC of a cell on the common images is its plain AUC there
    from sklearn.metrics import roc_auc_score

    salad0 = next(c for c in cells if c["method_id"] == "salad" and c["seed"] == 0)
    assert reps.iloc[0]["AUC a"] == pytest.approx(roc_auc_score(salad0["test_labels"], salad0["test_scores"]))


def test_paired_differences_errors() -> None:
    cells = make_cells()
    with pytest.raises(ValueError, match=r"no cell for b = \('memdae', 5\).*\('memdae', 0.0\)"):
        t1.paired_differences(cells, ("salad", 5), ("memdae", 5))
    with pytest.raises(ValueError, match="share no seed"):
        t1.paired_differences([c for c in make_cells(seeds=(0,)) if c["method_id"] == "salad"]
                              + [c for c in make_cells(seeds=(1,)) if c["method_id"] == "memdae"])
    with pytest.raises(ValueError, match="method must be"):
        t1.paired_differences(cells, method="ttest")
    bad = make_cells(seeds=(0,))
    memdae = next(c for c in bad if c["method_id"] == "memdae")
    memdae["test_labels"] = [1 - v for v in memdae["test_labels"]]
    with pytest.raises(ValueError, match=r"image 'img\d+' has label"):
        t1.paired_differences(bad)


def _diffs(rows: list[tuple[float, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame([{"seed": i, "difference": d, "ci_low": lo, "ci_high": hi}
                          for i, (d, lo, hi) in enumerate(rows)])
    return pd.concat([frame, pd.DataFrame([{"seed": "pooled", "difference": -1.0, "ci_low": -2.0, "ci_high": 0.0}])],
                     ignore_index=True)  # the pooled row must be ignored


def test_ordering_sentence_three_outcomes() -> None:
    holds = t1.ordering_sentence(_diffs([(0.05, 0.01, 0.09), (0.04, 0.005, 0.07)]), "SALAD", "MemDAE", 0.0457)
    assert "SALAD > MemDAE holds on this data" in holds and "is +0.0450 on average over 2 replicates (the paper's Table 1: +0.0457)" in holds
    assert "every replicate's 95% CI lies above 0" in holds
    below = t1.ordering_sentence(_diffs([(-0.05, -0.09, -0.01), (-0.04, -0.07, -0.005)]), "SALAD", "MemDAE")
    assert "SALAD > MemDAE is reversed on this data" in below and "every replicate's 95% CI lies below 0" in below
    assert "Table 1" not in below
    unresolved = t1.ordering_sentence(_diffs([(0.05, 0.01, 0.09), (0.02, -0.01, 0.05), (0.01, -0.02, 0.04)]),
                                      "SALAD", "SALAD w/o L_agg", 0.0254)
    assert "is not resolved by this run (CIs include 0 in 2 of 3 replicates, lie above 0 in 1)" in unresolved
    with pytest.raises(ValueError, match="paired_differences"):
        t1.ordering_sentence(pd.DataFrame({"seed": [0]}), "A", "B")
    with pytest.raises(ValueError, match="no replicate row"):
        t1.ordering_sentence(_diffs([]), "A", "B")


def test_ordering_sentence_is_symmetric_a_negative_mean_is_not_a_reversal() -> None:
    """Only CIs all below 0 reverse the ordering; a mean <= 0 with CIs across 0 is unresolved, as a mean > 0 is."""
    mean_negative = t1.ordering_sentence(_diffs([(-0.02, -0.05, 0.01), (0.01, -0.02, 0.04)]), "A", "B", 0.03)
    assert "A > B is not resolved by this run (CIs include 0 in 2 of 2 replicates)" in mean_negative
    assert "does not hold" not in mean_negative and "reversed" not in mean_negative
    mixed = t1.ordering_sentence(_diffs([(-0.05, -0.09, -0.01), (-0.01, -0.04, 0.02)]), "A", "B")
    assert "is not resolved by this run (CIs include 0 in 1 of 2 replicates, lie below 0 in 1)" in mixed
    assert "reversed" not in mixed and "does not hold" not in mixed
    zero = t1.ordering_sentence(_diffs([(0.0, -0.03, 0.03), (0.0, -0.02, 0.02)]), "A", "B")
    assert "is not resolved" in zero and "identical models" not in zero  # equal AUCs, different scores
    # mirror images get mirrored verdicts
    pos = t1.ordering_sentence(_diffs([(0.03, 0.01, 0.05), (0.02, 0.005, 0.04)]), "A", "B")
    neg = t1.ordering_sentence(_diffs([(-0.03, -0.05, -0.01), (-0.02, -0.04, -0.005)]), "A", "B")
    assert "A > B holds on this data" in pos and "A > B is reversed on this data" in neg
    with pytest.raises(ValueError, match="paired_differences"):
        t1.ordering_sentence(pd.DataFrame({"seed": [0]}), "A", "B")
    with pytest.raises(ValueError, match="no replicate row"):
        t1.ordering_sentence(_diffs([]), "A", "B")


def test_ordering_sentence_from_computed_differences() -> None:
    strong = t1.paired_differences(make_cells(2.0, 0.5), n_boot=300)
    assert " holds on this data" in t1.ordering_sentence(strong, "SALAD", "MemDAE", t1.paper_auc_difference("nih"))
    reversed_ = t1.paired_differences(make_cells(0.3, 2.0), n_boot=300)
    assert " is reversed on this data" in t1.ordering_sentence(reversed_, "SALAD", "MemDAE")


def _same_model(cells: list[dict], seeds: tuple[int, ...]) -> list[dict]:
    """``cells`` where SALAD w/o L_agg scored every test image as SALAD did, in ``seeds``."""
    out = [dict(c) for c in cells]
    for c in out:
        if c["method_id"] == "salad_no_agg" and c["seed"] in seeds:
            salad = next(s for s in out if s["method_id"] == "salad" and s["seed"] == c["seed"])
            c["test_scores"], c["test_ids"] = list(salad["test_scores"]), list(salad["test_ids"])
    return out


@pytest.mark.parametrize("method", ["bootstrap", "delong"])
def test_identical_models_are_named_not_judged(method) -> None:
    both = t1.paired_differences(_same_model(make_cells(), (0, 1)), ("salad", 5), ("salad_no_agg", 5),
                                 method=method, n_boot=200)
    assert list(both["identical scores"]) == [True, True, True] and (both["difference"] == 0).all()
    sentence = t1.ordering_sentence(both, "SALAD", "SALAD w/o L_agg")
    assert "is not tested by this run" in sentence
    assert "the two cells selected identical models: their test scores are identical in all 2 replicates" in sentence
    assert "holds" not in sentence and "reversed" not in sentence and "not resolved" not in sentence
    one = t1.paired_differences(_same_model(make_cells(), (1,)), ("salad", 5), ("salad_no_agg", 5),
                                method=method, n_boot=200)
    assert list(one["identical scores"]) == [False, True, False]
    sentence = t1.ordering_sentence(one, "SALAD", "SALAD w/o L_agg")
    assert "is not resolved" in sentence and "selected identical models in 1 of 2 replicates" in sentence
    different = t1.paired_differences(make_cells(), ("salad", 5), ("salad_no_agg", 5), method=method, n_boot=200)
    assert not different["identical scores"].any()
    assert "identical" not in t1.ordering_sentence(different, "SALAD", "SALAD w/o L_agg")


def test_selected_rounds_are_shown_and_round_zero_against_no_agg_is_noted() -> None:
    cells = make_cells()
    table = t1.paired_differences(cells, ("salad", 5), ("salad_no_agg", 5), n_boot=200)
    assert list(table["round a"]) == [0, 1, ""] and list(table["round b"]) == [2, 2, ""]
    memdae = t1.paired_differences(cells, ("salad", 5), ("memdae", 0), n_boot=200)
    assert list(memdae["round b"]) == ["", "", ""]  # MemDAE's cells carry None
    old = [{k: v for k, v in c.items() if k != "selected_round"} for c in cells]  # older cells: no key
    old_table = t1.paired_differences(old, ("salad", 5), ("salad_no_agg", 5), n_boot=200)
    assert list(old_table["round a"]) == ["", "", ""]
    table, sentences = t1.ordering_checks(cells, "nih", 5, method="delong")
    assert len(sentences) == 2
    note = ("in 1 of 2 replicates SALAD (AR 5 %)'s selected checkpoint predates every aggregation round, "
            "so L_agg never acted on it")
    assert note not in sentences[0]  # SALAD against MemDAE: no note
    assert sentences[1].startswith("The paper's ordering SALAD (AR 5 %) > SALAD w/o L_agg (AR 5 %)")
    assert note in sentences[1]
    assert table.loc[("SALAD (AR 5) - SALAD w/o L_agg (AR 5)", 0), "round a"] == 0
    _, old_sentences = t1.ordering_checks(old, "nih", 5, method="delong")
    assert "predates" not in old_sentences[1]
    later = [c | {"selected_round": 3} if c["method_id"] == "salad" else c for c in cells]
    assert "predates" not in t1.ordering_checks(later, "nih", 5)[1][1]


# --------------------------------------------------------------------------- K curves
def test_k_curves_are_tidy_and_mark_the_chosen_k() -> None:
    table = t1.k_curves(make_cells())
    assert list(table.columns) == ["method", "method_id", "ar_percent", "seed", "k", "val_auc", "chosen_k", "chosen"]
    assert set(table["method"]) == {"SALAD", "SALAD w/o L_agg", "MemDAE"}  # Deep SVDD has no K
    assert len(table) == 3 * 2 * 4
    chosen = table[table["chosen"]]
    assert len(chosen) == 6 and (chosen["k"] == chosen["chosen_k"]).all()
    summary = t1.chosen_k_summary(table).set_index("method")
    assert summary.loc["SALAD", "stable"] and summary.loc["SALAD", "chosen K per seed"] == "0: 30, 1: 30"
    assert not summary.loc["SALAD w/o L_agg", "stable"] and summary.loc["SALAD w/o L_agg", "distinct K"] == 2
    assert t1.k_curves([c for c in make_cells() if c["k"] is None]).empty
    with pytest.raises(ValueError, match=r"k_curve'\]\[0\]"):
        t1.k_curves([make_cells()[0] | {"k_curve": [{"k": 1}]}])


# --------------------------------------------------------------------------- figures
def test_fig5_bars_one_bar_per_method_in_fixed_order() -> None:
    rows = t1.fig5_bar_rows(make_table1("nih"))
    assert list(rows["label"]) == ["MemDAE (AR 0%)", "SALAD w/o L_mse (AR 10%)", "SALAD w/o L_agg (AR 10%)",
                                   "SALAD (AR 10%)", "Deep AE (AR 5%)", "Deep SVDD (AR 5%)"]  # Geometric skipped
    assert rows["paper AUC"].iloc[:4].notna().all() and rows["paper AUC"].iloc[4:].isna().all()
    assert list(t1.fig5_bar_rows(make_table1("nih"), 5)["AR %"])[:4] == [0, 5, 5, 5]
    fig = viz.plot_fig5_bars(make_table1("nih"))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.patches) == 6
        assert [t.get_text() for t in ax.get_xticklabels()] == list(rows["label"])
    assert fig.axes[0].patches[3].get_height() == pytest.approx(0.81)
    assert fig.axes[1].patches[3].get_height() == pytest.approx(0.86)
    with pytest.raises(ValueError, match="no row"):
        viz.plot_fig5_bars({"dataset": "nih", "rows": [], "skipped": []})


def test_roc_methods_one_line_per_cell() -> None:
    cells = make_cells()
    fig = viz.plot_roc_methods(cells, seed=1)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 4 + 1  # 4 cells of seed 1 + chance
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("SALAD (AR 5%): AUC 0.") and labels[3].startswith("MemDAE (AR 0%)")
    assert len(viz.plot_roc_methods(cells, seed=0, ar_percent=5).axes[0].lines) == 5  # AR 0 (MemDAE) kept
    with pytest.raises(ValueError, match="seed 9"):
        viz.plot_roc_methods(cells, seed=9)


def test_k_curves_figure_one_line_per_replicate() -> None:
    table = t1.k_curves(make_cells())
    fig = viz.plot_k_curves(table)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and len(ax.lines) == 6  # 3 methods x 2 seeds
    stars = [c for c in ax.collections if len(c.get_offsets())]
    assert sum(len(c.get_offsets()) for c in stars) == 6  # one chosen K per replicate
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="empty"):
        viz.plot_k_curves(table.iloc[:0])
    with pytest.raises(ValueError, match="chosen"):
        viz.plot_k_curves(table.drop(columns="chosen"))
