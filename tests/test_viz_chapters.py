"""Figure helpers of chapters 3-7: right panels, right numbers, clear errors (tables: test_report.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from salad_lite import viz  # noqa: E402


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
