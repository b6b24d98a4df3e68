"""Figure helpers of the book: right panels, right data, clear errors, book-safe plotly output."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from salad_lite import viz  # noqa: E402


def _image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_image_grid_accepts_arrays_and_tensors() -> None:
    images = [np.random.rand(8, 8), torch.rand(1, 8, 8), np.full((8, 8), 200, dtype=np.uint8)]
    fig = viz.image_grid(images, titles=["a", "b", "c"], ncols=2)
    axes = _image_axes(fig)
    assert len(axes) == 3 and len(fig.axes) == 4  # 2 x 2 grid, one panel empty
    assert [ax.get_title() for ax in axes] == ["a", "b", "c"]
    assert axes[2].images[0].get_clim() == (0, 255)  # uint8 drawn on [0, 255]
    batch = viz.image_grid(torch.rand(5, 1, 6, 6), ncols=5)
    assert len(_image_axes(batch)) == 5


def test_image_grid_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="titles"):
        viz.image_grid([np.zeros((4, 4))], titles=["a", "b"])
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\)"):
        viz.image_grid([np.zeros((2, 3, 4, 4))])


def test_plotly_html_has_no_plotly_js_and_does_not_autoplay() -> None:
    fig = viz.umap_rounds_figure([np.zeros((3, 2)), np.ones((3, 2))], [0, 1, 0])
    html = viz.plotly_html(fig, div_id="umap")
    assert 'id="umap"' in html and "Plotly.newPlot" in html and "Plotly.addFrames" in html
    assert "<script src" not in html and "cdn.plot.ly" not in html
    assert "Plotly.animate" not in html  # the slider starts at round 0
    assert len(html) < 100_000  # plotly.js (4.6 MB) is not inlined


def test_show_plotly_emits_html_and_plotly_json(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    calls = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: calls.append((obj, raw)))
    result = viz.show_plotly(viz.umap_rounds_figure([np.random.rand(4, 2)], [0, 0, 1, 1]))
    assert result is None
    (bundle, raw), = calls
    assert raw and set(bundle) == {"text/html", "application/vnd.plotly.v1+json"}
    assert "plotly-graph-div" in bundle["text/html"]
    import json

    json.dumps(bundle)  # plain JSON, no numpy arrays: notebooks can store it
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["name"] == "normal"


def test_umap_rounds_figure_frames_slider_and_fixed_axes() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 8 + [1] * 2)
    rounds = [rng.normal(size=(10, 2)) * s for s in (1.0, 3.0, 0.5)]
    fig = viz.umap_rounds_figure(rounds, labels, findings=["No Finding"] * 8 + ["Mass"] * 2,
                                 titles=["pre-training", "round 1", "round 2"])
    assert len(fig.frames) == 3 and [f.name for f in fig.frames] == ["0", "1", "2"]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["pre-training", "round 1", "round 2"]
    assert [t.name for t in fig.data] == ["normal", "abnormal"]
    assert len(fig.frames[1].data[0].x) == 8 and len(fig.frames[1].data[1].x) == 2
    lo, hi = fig.layout.xaxis.range
    every_x = np.concatenate([r[:, 0] for r in rounds])
    assert lo < every_x.min() and hi > every_x.max()  # one range for all rounds
    np.testing.assert_allclose(fig.frames[1].data[1].x, rounds[1][8:, 0])


def test_umap_rounds_figure_rejects_misaligned_input() -> None:
    with pytest.raises(ValueError, match="round 1"):
        viz.umap_rounds_figure([np.zeros((4, 2)), np.zeros((3, 2))], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="titles"):
        viz.umap_rounds_figure([np.zeros((2, 2))], [0, 1], titles=["a", "b"])


def test_plot_roc_pr_from_scores_and_from_curves() -> None:
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.4, 0.35, 0.05])
    fig = viz.plot_roc_pr({"SALAD": (labels, scores)})
    roc_legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert roc_legend[0].startswith("SALAD (AUC 0.933")  # 14 of 15 pairs ordered
    from salad_lite import metrics

    curves = {**metrics.roc_curve_data(labels, scores), **metrics.pr_curve_data(labels, scores), "auc": 0.5}
    fig2 = viz.plot_roc_pr({"given": curves})
    assert fig2.axes[0].get_legend().get_texts()[0].get_text() == "given (AUC 0.500)"
    with pytest.raises(ValueError, match="lacks"):
        viz.plot_roc_pr({"bad": {"fpr": [0, 1]}})
    for one_curve in (curves, {"fpr": curves["fpr"]}):
        with pytest.raises(ValueError, match="got one curve's arrays: wrap it"):
            viz.plot_roc_pr(one_curve)
    stacked = viz.plot_roc_pr({"SALAD": np.stack([labels, scores])})  # a [2, N] array is a (labels, scores) pair
    assert stacked.axes[0].get_legend().get_texts()[0].get_text().startswith("SALAD (AUC 0.933")
    for bad_labels, bad_scores in ((labels + 1, scores), (labels, np.r_[scores[:-1], np.nan])):
        with pytest.raises(ValueError, match="labels 0 \\(normal\\) and 1|NaN or inf"):
            viz.plot_roc_pr({"SALAD": (bad_labels, bad_scores)})  # checked as auc checks them


def test_score_histogram_splits_by_label() -> None:
    fig = viz.plot_score_histogram(np.r_[np.zeros(30), np.ones(10)], np.r_[np.zeros(30), np.ones(10)],
                                   threshold=0.5)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["normal (n=30)", "abnormal (n=10)", "threshold 0.5"]
    with pytest.raises(ValueError, match="differ in shape"):
        viz.plot_score_histogram([0.1, 0.2], [0])
    with pytest.raises(ValueError, match=r"labels 0 \(normal\) and 1 \(abnormal\); got classes \[0, 1, 2\]"):
        viz.plot_score_histogram([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        viz.plot_score_histogram([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match=r"scores must be 1-D \[N\], got shape \(2, 1\)"):
        viz.plot_score_histogram([[0.1], [0.2]], [0, 1])


def test_loss_curves_mark_round_starts() -> None:
    history = [{"epoch": e, "round": 0 if e < 3 else 1 + (e - 3) // 2, "loss": 1.0 / (e + 1),
                "mse": 0.5, "seconds": 1.0} for e in range(7)]
    fig = viz.plot_loss_curves(history)
    titles = [ax.get_title() for ax in fig.axes if ax.lines]
    assert titles == ["loss", "mse"]  # epoch, round and seconds are not plotted
    dashed = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in dashed] == [2.5, 4.5]  # rounds 1 and 2 start at epochs 3 and 5
    with pytest.raises(ValueError, match="empty"):
        viz.plot_loss_curves([])


def test_cluster_formation_and_bar_counts() -> None:
    fig = viz.plot_cluster_formation([1, 2, 3], {"purity": [0.5, 0.6, 0.8], "entropy": [3.0, 2.5, 2.0]})
    assert [ax.get_title() for ax in fig.axes if ax.lines] == ["purity", "entropy"]
    with pytest.raises(ValueError, match="'purity' has 2 values for 3 rounds"):
        viz.plot_cluster_formation([1, 2, 3], {"purity": [0.5, 0.6]})
    bars = viz.plot_bar_counts({"No Finding": 10, "Mass": 3, "Nodule": 5}, highlight=["No Finding"])
    labels = [t.get_text() for t in bars.axes[0].get_yticklabels()]
    assert labels == ["Mass", "Nodule", "No Finding"]  # largest on top
    for bad in (float("nan"), -1, 2.5, "3"):
        with pytest.raises(ValueError, match="the count of 'a' must be a whole number >= 0"):
            viz.plot_bar_counts({"a": bad, "b": 1})


def test_pipeline_diagram_draws() -> None:
    fig = viz.draw_salad_pipeline()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "memory bank" in texts and "Eq. 4" in texts
    assert len(fig.axes[0].images) >= 5  # training stack, reconstruction, test image


def test_mura_steps_outline_corners_and_flag_fallbacks() -> None:
    img = np.zeros((20, 16), dtype=np.uint8)
    corners = np.array([[1, 1], [14, 1], [14, 18], [1, 18]], dtype=float)
    steps = {"input": img, "edges": img, "corners": corners, "carrier_found": True, "warped": img,
             "equalized": img, "hysteresis": img > 0, "mask": np.ones((20, 16), bool), "mask_fallback": True,
             "autocontrast": img, "output": img}
    fig = viz.plot_mura_steps(steps, true_corners=corners + 0.5)
    axes = _image_axes(fig)
    assert len(axes) == len(viz.MURA_STEPS)
    assert len(axes[0].lines) == 2  # detected (solid) and true (dashed) plate outlines
    assert axes[5].get_title() == "6 body-part mask (fallback: all)"
    assert axes[5].images[0].get_array().max() == 255  # boolean mask drawn as 0/255
