"""The book's tables and text (salad_lite.report): the paper's Table 1 beside this run, summaries, profiles."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from salad_lite import report, viz  # noqa: E402
from salad_lite.config import profile_config  # noqa: E402


def _summary(aucs=(0.8, 0.7)) -> dict:
    return {"dataset": "nih", "replicates": len(aucs),
            "config": profile_config("smoke", "nih").to_dict(),
            "per_replicate": [{"seed": i, "k": 5 + i, "test_auc": a, "test_auprc": a + 0.05}
                              for i, a in enumerate(aucs)],
            "test_auc": {"mean": float(np.mean(aucs)), "ci95": 0.1},
            "test_auprc": {"mean": float(np.mean(aucs)) + 0.05, "ci95": 0.1},
            "curves_seed0": {"roc": {"fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1]},
                             "pr": {"precision": [0.4, 0.8, 1.0], "recall": [1.0, 0.5, 0.0]}}}


def test_summary_curves_and_results_table() -> None:
    summary = _summary()
    curves = report.summary_curves(summary)
    assert curves["auc"] == 0.8 and curves["prevalence"] == 0.4
    assert len(viz.plot_roc_pr({"run": curves}).axes) == 2
    table = report.results_table(summary, "mura")
    assert len(report.PAPER_TABLE1) == 10 and len(table) == len(report.PAPER_TABLE1) + 1
    assert table["AUC"].iloc[3] == 0.8117  # SALAD, AR 5 %, MURA
    paper = table[table["source"] == "paper, Table 1"]
    assert paper["AUC 95% CI"].notna().all() and paper["AUPRC 95% CI"].notna().all()
    assert paper["AUC 95% CI"].iloc[3] == 0.0028 and paper["AUPRC 95% CI"].iloc[3] == 0.0075
    last = paper.iloc[-1]
    assert (last["method"], last["AR %"], last["AUC"], last["AUPRC 95% CI"]) == ("SALAD", 15, 0.8245, 0.0108)
    ours = table.iloc[-1]
    assert ours["AUC"] == pytest.approx(0.75) and ours["AR %"] == 5.0 and ours["replicates"] == 2
    baseline = {"reconstruction_test_auc": {"mean": 0.6, "ci95": 0.02},
                "reconstruction_test_auprc": {"mean": 0.55, "ci95": 0.03}}
    pca = {"pca_baseline": {"n_components": 50, "test_auc": 0.7, "test_auprc": 0.65}}
    with_baseline = report.results_table({**summary, **baseline, **pca}, "mura")
    assert len(with_baseline) == len(table) + 2
    assert with_baseline.iloc[-2]["method"].startswith("same AE, reconstruction error")
    assert with_baseline.iloc[-2]["AUC"] == 0.6 and with_baseline.iloc[-3]["AUC"] == pytest.approx(0.75)
    assert with_baseline.iloc[-1]["method"] == "raw pixels, PCA-50 reconstruction (baseline)"
    assert with_baseline.iloc[-1]["AUC"] == 0.7 and with_baseline.iloc[-1]["replicates"] == 1
    with pytest.raises(ValueError, match="NIH and MURA"):
        report.results_table(summary, "folder")
    with pytest.raises(ValueError, match="evaluate_replicates"):
        report.summary_curves({"per_replicate": []})
    empty = {**summary, "curves_seed0": {"roc": {"fpr": [], "tpr": []}, "pr": {"precision": [], "recall": []}}}
    with pytest.raises(ValueError, match="curves_seed0 holds an empty curve"):
        report.summary_curves(empty)
    with pytest.raises(ValueError, match="not an evaluate_replicates summary: missing 'config'"):
        report.results_table({k: v for k, v in summary.items() if k != "config"}, "nih")
    with pytest.raises(ValueError, match=r"pca_baseline lacks \['n_components'\]"):
        report.results_table({**summary, "pca_baseline": {"test_auc": 0.5, "test_auprc": 0.5}}, "nih")
    with pytest.raises(ValueError, match="missing or malformed 'tpr'"):
        report.summary_curves({**summary, "curves_seed0": {"roc": {"fpr": [0, 1]}, "pr": {"precision": [1],
                                                                                        "recall": [1]}}})


def test_differences_from_paper_names_the_gaps() -> None:
    class Split:
        def __init__(self, labels):
            self.labels = np.asarray(labels)

    cfg = profile_config("smoke", "nih")
    splits = {"train": Split([0] * 9 + [1]), "val": Split([0, 1]), "test": Split([0, 0, 1])}
    table = report.differences_from_paper(cfg, splits, _summary())
    assert table.loc["resolution (px)", "paper"] == "256" and table.loc["resolution (px)", "this run"] == "32"
    assert table.loc["training images", "this run"] == "10 (9 normal, 1 abnormal)"
    assert table.loc["K (Eq. 4)", "this run"] == "chosen on validation: 5, 6"
    assert "synthetic" in table.loc["data", "this run"]
    assert table.loc["temperature tau (Eqs. 1-2)", "paper"] == "0.1"
    views = report.view_summary(cfg.replace(augment={"max_rotation_deg": 0.0, "max_gamma": 0.25}))
    assert "rotation" not in views and "tone curve ±0.25" in views and "scale ±10%" in views
    assert report.view_summary(cfg.replace(augment={f: 0.0 for f in (
        "max_rotation_deg", "max_scale", "max_shift", "flip_probability", "max_brightness", "max_contrast")})) == "none"


def test_figure_module_keeps_no_tables() -> None:
    for name in ("PAPER_TABLE1", "results_table", "differences_from_paper", "summary_curves"):
        assert not hasattr(viz, name), f"salad_lite.viz.{name} should live in salad_lite.report only"


def test_paper_table1_is_the_whole_table() -> None:
    rows = report.PAPER_TABLE1
    assert [(r["method"], r["AR %"]) for r in rows] == [("MemDAE", 0)] + [
        (m, ar) for ar in (5, 10, 15) for m in ("SALAD w/o L_mse", "SALAD w/o L_agg", "SALAD")]
    for r in rows:
        for d in report.TABLE1_DATASETS:
            for metric in ("auc", "auprc"):
                assert 0.5 < r[f"{d}_{metric}"] < 1 and 0 < r[f"{d}_{metric}_pm"] < 0.02
    assert [(r["method"], r["AR %"]) for r in rows if "nih" in r["fig5"]] == [("SALAD", 10)]
    assert [(r["method"], r["AR %"]) for r in rows if "mura" in r["fig5"]] == [("SALAD", 5)]


def test_paper_row_reads_table1() -> None:
    assert report.paper_row("nih") == {"method": "SALAD", "AR %": 5, "auc": 0.9091, "auc_pm": 0.0069,
                                       "auprc": 0.9552, "auprc_pm": 0.0049}
    assert report.paper_row("mura", "MemDAE", 0)["auprc"] == 0.8823
    assert report.paper_row("nih", "SALAD w/o L_agg", 10)["auc_pm"] == 0.0056
    assert report.paper_row("mura", "SALAD w/o L_mse", 15)["auprc"] == 0.8985
    with pytest.raises(ValueError, match="NIH and MURA"):
        report.paper_row("folder")
    with pytest.raises(ValueError, match="AR 7 %"):
        report.paper_row("nih", ar_percent=7)


def test_metric_lines_and_paper_comparison() -> None:
    summary = _summary((0.8, 0.7))
    lines = report.metric_lines(summary).splitlines()
    assert lines == ["test_auc: 0.7500 ± 0.1000 (95% CI over 2 replicates)",
                     "test_auprc: 0.8000 ± 0.1000 (95% CI over 2 replicates)"]
    text = report.paper_comparison(summary, np.array([0, 0, 0, 1]), "mura")
    assert "AUC 0.750 and AUPRC 0.800" in text and "= 0.250)" in text
    assert "0.812 ± 0.003 / 0.942 ± 0.007" in text and "for SALAD at AR 5 % on MURA" in text
    with pytest.raises(ValueError, match="test_auprc"):
        report.metric_lines({"replicates": 1, "test_auc": {"mean": 0.5, "ci95": 0.0}})
    with pytest.raises(ValueError, match="NIH and MURA"):
        report.paper_comparison(summary, [0, 1], "folder")
    for bad in ([2, 2, 0], ["1", "0", "1"], [], [0, 0]):  # the chance AUPRC needs 0/1 labels of both classes
        with pytest.raises(ValueError, match="the chance AUPRC"):
            report.paper_comparison(summary, bad, "nih")
    # one replicate (the smoke profile; table1.json stores its half-width as null): no "± nan"
    one = {"replicates": 1, "test_auc": {"mean": 0.71, "ci95": float("nan")}, "test_auprc": {"mean": 0.6, "ci95": None}}
    assert report.metric_lines(one).splitlines() == ["test_auc: 0.7100 (1 replicate: no interval)",
                                                     "test_auprc: 0.6000 (1 replicate: no interval)"]
    for bad in ({"mean": float("nan"), "ci95": 0.1}, {"mean": "x", "ci95": 0.1}, {"mean": 5, "ci95": 0.1},
                {"mean": 0.5, "ci95": -0.3}, {"mean": None, "ci95": None}):
        message = r"test_auc must be \{'mean': number in \[0, 1\], 'ci95': number >= 0 or null\}"
        with pytest.raises(ValueError, match=message):
            report.metric_lines({**one, "test_auc": bad})
        with pytest.raises(ValueError, match=message):
            report.paper_comparison({**one, "test_auc": bad}, [0, 1], "nih")
        with pytest.raises(ValueError, match=message):
            report.results_table({**summary, "test_auc": bad}, "nih")
    for count in (2.7, 0, True):
        with pytest.raises(ValueError, match=r"replicates must be an int >= 1"):
            report.metric_lines({**one, "replicates": count})


def test_profile_table_has_one_column_per_profile() -> None:
    table = report.profile_table("mura")
    assert list(table.columns) == ["smoke", "default", "full"]
    assert table.loc["architecture", "full"] == "resnet18" and table.loc["image px", "full"] == 512
    assert table.loc["image px", "smoke"] == profile_config("smoke", "mura").model.image_size
    assert table.loc["max training images", "full"] == "all"


def test_baseline_verdicts_follow_the_intervals() -> None:
    summary = {"test_auc": {"mean": 0.70, "ci95": 0.02},
               "untrained_encoder": {"test_auc": {"mean": 0.69, "ci95": 0.02}},
               "reconstruction_test_auc": {"mean": 0.60, "ci95": 0.05},
               "pca_baseline": {"test_auc": 0.75}}
    lines = report.baseline_verdicts(summary).splitlines()
    assert "not distinguishable from the same network before training (0.690 ± 0.020)" in lines[0]
    assert "clearly above the reconstruction error" in lines[1]
    assert "clearly below the raw-pixel PCA (0.750)." in lines[2]
    assert report.baseline_verdicts({"test_auc": {"mean": 0.5, "ci95": 0.0}}) == ""
    with pytest.raises(ValueError, match="not an evaluate_replicates summary"):
        report.baseline_verdicts({})
    one = {"test_auc": {"mean": 0.71, "ci95": float("nan")}, "reconstruction_test_auc": {"mean": 0.9, "ci95": None},
           "pca_baseline": {"test_auc": 0.70}}
    assert report.baseline_verdicts(one).splitlines() == [  # never "not distinguishable" from a NaN comparison
        "SALAD's test AUC 0.710 against the reconstruction error (0.900): either has no interval (a single "
        "replicate), so no ranking is claimed.",
        "SALAD's test AUC 0.710 against the raw-pixel PCA (0.700): SALAD's has no interval (a single replicate), so "
        "no ranking is claimed."]
    lines = report.baseline_verdicts({**summary, "untrained_encoder": {"test_auc": {"mean": 0.69, "ci95": None}}})
    assert "the baseline's has no interval" in lines.splitlines()[0]
    for bad in ({"pca_baseline": 0.6}, {"untrained_encoder": [0.6]}):
        with pytest.raises(ValueError, match="must be a dict"):
            report.baseline_verdicts({**summary, **bad})
    with pytest.raises(ValueError, match="reconstruction_test_auc must be"):
        report.baseline_verdicts({**summary, "reconstruction_test_auc": {"mean": float("nan"), "ci95": 0.1}})
