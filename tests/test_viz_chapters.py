"""Figure and table helpers of chapters 3-7: right panels, right numbers, clear errors."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from salad_lite import viz  # noqa: E402
from salad_lite.config import profile_config  # noqa: E402


def _image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_reconstruction_grid_titles_carry_the_error() -> None:
    x = torch.zeros(3, 1, 8, 8)
    x_hat = torch.full((3, 1, 8, 8), 0.5)
    fig = viz.reconstruction_grid(x, x_hat)
    titles = [ax.get_title() for ax in _image_axes(fig)]
    assert titles[:3] == ["input"] * 3 and titles[3:] == ["MSE 0.2500"] * 3
    with pytest.raises(ValueError, match="as many reconstructions"):
        viz.reconstruction_grid(x, x_hat[:2])


def test_neighbour_rows_layout_and_checks() -> None:
    query = np.zeros((6, 6))
    rows = {"before": ([np.ones((6, 6))] * 3, [0.1, 0.05, 0.0]), "after": ([np.ones((6, 6))] * 3, [0.9, 0.8, 0.7])}
    fig = viz.neighbour_rows(query, rows)
    axes = _image_axes(fig)
    assert len(axes) == 8  # 2 rows x (query + 3)
    assert axes[0].get_ylabel() == "before" and axes[4].get_ylabel() == "after"
    assert axes[5].get_title() == "cos 0.90"
    with pytest.raises(ValueError, match="same number"):
        viz.neighbour_rows(query, {"a": ([query], [1.0]), "b": ([query, query], [1.0, 0.5])})
    with pytest.raises(ValueError, match="similarities"):
        viz.neighbour_rows(query, {"a": ([query, query], [1.0])})


def test_plot_k_grid_lines_and_chosen_marker() -> None:
    grid = [{"k": k, "discard_anomalous": d, "val_auc": 0.5 + 0.01 * k + 0.1 * d} for d in (True, False)
            for k in (1, 5, 10)]
    fig = viz.plot_k_grid(grid, chosen_k=10, chosen_discard=True)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    ys = {line.get_label(): list(line.get_ydata()) for line in ax.lines}
    assert ys["discard abnormal bank rows"] == pytest.approx([0.61, 0.65, 0.70])
    ringed = ax.collections[0].get_offsets()
    assert np.allclose(ringed, [[10, 0.70]])
    with pytest.raises(ValueError, match="lack"):
        viz.plot_k_grid([{"k": 1}])


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
    curves = viz.summary_curves(summary)
    assert curves["auc"] == 0.8 and curves["prevalence"] == 0.4
    assert len(viz.plot_roc_pr({"run": curves}).axes) == 2
    table = viz.results_table(summary, "mura")
    assert len(table) == len(viz.PAPER_TABLE1) + 1
    assert table["AUC"].iloc[3] == 0.8117  # SALAD, AR 5 %, MURA
    ours = table.iloc[-1]
    assert ours["AUC"] == pytest.approx(0.75) and ours["AR %"] == 5.0 and ours["replicates"] == 2
    baseline = {"reconstruction_test_auc": {"mean": 0.6, "ci95": 0.02},
                "reconstruction_test_auprc": {"mean": 0.55, "ci95": 0.03}}
    pca = {"pca_baseline": {"n_components": 50, "test_auc": 0.7, "test_auprc": 0.65}}
    with_baseline = viz.results_table({**summary, **baseline, **pca}, "mura")
    assert len(with_baseline) == len(table) + 2
    assert with_baseline.iloc[-2]["method"].startswith("same AE, reconstruction error")
    assert with_baseline.iloc[-2]["AUC"] == 0.6 and with_baseline.iloc[-3]["AUC"] == pytest.approx(0.75)
    assert with_baseline.iloc[-1]["method"] == "raw pixels, PCA-50 reconstruction (baseline)"
    assert with_baseline.iloc[-1]["AUC"] == 0.7 and with_baseline.iloc[-1]["replicates"] == 1
    with pytest.raises(ValueError, match="NIH and MURA"):
        viz.results_table(summary, "folder")
    with pytest.raises(ValueError, match="evaluate_replicates"):
        viz.summary_curves({"per_replicate": []})


def test_differences_from_paper_names_the_gaps() -> None:
    class Split:
        def __init__(self, labels):
            self.labels = np.asarray(labels)

    cfg = profile_config("smoke", "nih")
    splits = {"train": Split([0] * 9 + [1]), "val": Split([0, 1]), "test": Split([0, 0, 1])}
    table = viz.differences_from_paper(cfg, splits, _summary())
    assert table.loc["resolution (px)", "paper"] == "256" and table.loc["resolution (px)", "this run"] == "32"
    assert table.loc["training images", "this run"] == "10 (9 normal, 1 abnormal)"
    assert table.loc["K (Eq. 4)", "this run"] == "chosen on validation: 5, 6"
    assert "synthetic" in table.loc["data", "this run"]
