"""Figures for the book: matplotlib for static plots, plotly for interactive ones.

Conventions
- Matplotlib functions return a closed :class:`matplotlib.figure.Figure`; a notebook
  shows it when it is the last expression of a cell (it is never shown twice).
- Plotly functions return a :class:`plotly.graph_objects.Figure`; show it with
  :func:`show_plotly`, which emits HTML that the static book can render with the
  local copy of plotly.js (jupyter-book 1.x drops plotly's own mime type).
- Images are arrays ``[H, W]`` (or tensors ``[1, H, W]`` / ``[H, W]``) with
  intensities in ``[0, 1]`` (0 = black); uint8 arrays are shown on ``[0, 255]``.
- Label 0 = normal, 1 = abnormal, everywhere; scores: higher = more abnormal.

Tables and text (the paper's Table 1, results tables, summaries of a run) are
built by :mod:`salad_lite.report`; this module only draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from salad_lite.metrics import auc, auprc, binary_labels, finite_scores, pr_curve_data, roc_curve_data
from salad_lite.utils import is_int

NORMAL_COLOUR = "#2b83ba"
ABNORMAL_COLOUR = "#d7191c"
LABEL_NAMES = {0: "normal", 1: "abnormal"}
LABEL_COLOURS = {0: NORMAL_COLOUR, 1: ABNORMAL_COLOUR}

__all__ = [
    "ABNORMAL_COLOUR", "LABEL_COLOURS", "LABEL_NAMES", "MURA_STEPS", "NORMAL_COLOUR", "draw_salad_pipeline",
    "image_grid", "neighbour_rows", "plot_bar_counts", "plot_cluster_formation", "plot_k_grid", "plot_loss_curves",
    "plot_mura_steps", "plot_roc_pr", "plot_score_histogram", "plotly_html", "reconstruction_grid", "show_plotly",
    "umap_rounds_figure",
]


# --------------------------------------------------------------------------- plotly output
def plotly_html(fig: go.Figure, *, div_id: str | None = None) -> str:
    """The figure as an HTML fragment (a ``<div>`` and a ``<script>``) without plotly.js.

    The page must load plotly.js itself (the book adds its local copy once per page).
    Animation frames and sliders are kept. ``div_id`` fixes the div's id (default:
    a random UUID, as plotly does).
    """
    return fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id, auto_play=False,
                       config={"displaylogo": False, "responsive": True})


def show_plotly(fig: go.Figure) -> None:
    """Display a plotly figure so that it survives the static book build.

    Emits one output with two representations: ``text/html`` (the fragment of
    :func:`plotly_html`, which jupyter-book 1.x renders with the local plotly.js)
    and plotly's own ``application/vnd.plotly.v1+json`` (which JupyterLab, Notebook 7
    and VS Code render live). Returns ``None`` so that the figure is never shown twice.
    """
    from IPython.display import display

    bundle = {"text/html": plotly_html(fig), "application/vnd.plotly.v1+json": fig.to_plotly_json()}
    display(_json_safe(bundle), raw=True)


def _json_safe(obj: Any) -> Any:
    """Plain JSON types only (numpy arrays/scalars become lists/numbers), for notebook outputs."""
    import json

    from plotly.utils import PlotlyJSONEncoder

    return json.loads(json.dumps(obj, cls=PlotlyJSONEncoder))


# --------------------------------------------------------------------------- helpers
def _as_image(img: Any) -> np.ndarray:
    """An ``[H, W]`` numpy image from an array or a torch tensor ``[H, W]`` / ``[1, H, W]``."""
    if hasattr(img, "detach"):  # torch tensor, without importing torch here
        img = img.detach().cpu().numpy()
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a grayscale image [H, W] or [1, H, W], got shape {tuple(arr.shape)}")
    return arr


def _finish(fig: Figure) -> Figure:
    """Close the figure in pyplot (so the inline backend does not show it a second time)."""
    plt.close(fig)
    return fig


def _records(history: Any) -> list[dict[str, Any]]:
    """History as a list of dicts: accepts a list of dicts, a dict of lists, or a DataFrame."""
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas DataFrame
        return list(history.to_dict("records"))
    if isinstance(history, Mapping):
        lengths = {len(v) for v in history.values()}
        if len(lengths) > 1:
            raise ValueError(f"history columns differ in length: {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in history.items()} for i in range(n)]
    return [dict(r) for r in history]


# --------------------------------------------------------------------------- matplotlib figures
def image_grid(images: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 4, *,
               size: float = 2.2, cmap: str = "gray", suptitle: str | None = None,
               title_colours: Sequence[str] | None = None) -> Figure:
    """A grid of grayscale images.

    ``images``: sequence of ``[H, W]`` arrays (or ``[1, H, W]`` tensors), or one array
    ``[B, H, W]`` / ``[B, 1, H, W]``. Float images are drawn on ``[0, 1]``, uint8 on
    ``[0, 255]``. ``size`` is the side of one panel in inches.
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    items = [_as_image(im) for im in images]
    if not items:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"{len(titles)} titles for {len(items)} images")
    ncols = max(1, min(ncols, len(items)))
    nrows = -(-len(items) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(items):
            continue
        img = items[i]
        vmax = 255 if img.dtype == np.uint8 else 1.0
        ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        if titles is not None:
            colour = title_colours[i] if title_colours is not None else "black"
            ax.set_title(titles[i], fontsize=9, color=colour)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return _finish(fig)


def plot_bar_counts(counts: Mapping[str, int] | Any, *, title: str = "", xlabel: str = "images",
                    highlight: Sequence[str] = (), log: bool = False) -> Figure:
    """Horizontal bar chart of counts (a dict or a pandas Series), largest on top.

    Bars named in ``highlight`` are drawn in the normal colour, the rest in the abnormal one.

    Raises:
        ValueError: a count is not a whole number >= 0 (its name given).
    """
    for name, value in dict(counts).items():
        whole = is_int(value) or isinstance(value, (float, np.floating)) and float(value).is_integer()
        if not whole or value < 0:
            raise ValueError(f"plot_bar_counts: the count of {name!r} must be a whole number >= 0, got {value!r}")
    items = sorted(dict(counts).items(), key=lambda kv: kv[1])
    names = [str(k) for k, _ in items]
    values = [int(v) for _, v in items]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    colours = [NORMAL_COLOUR if n in highlight else ABNORMAL_COLOUR for n in names]
    ax.barh(names, values, color=colours)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(x=0.15)
    fig.tight_layout()
    return _finish(fig)


def plot_loss_curves(history: Any, keys: Sequence[str] | None = None, *, x: str = "epoch",
                     title: str = "Training curves", log: bool = False) -> Figure:
    """One panel per loss term over epochs, with a dashed line where each progressive round starts.

    ``history``: the trainer's records (list of dicts with ``epoch``, ``round`` and loss
    terms), a dict of lists, or a DataFrame. ``keys``: which numeric entries to plot
    (default: every numeric entry except ``epoch``, ``round``, ``seconds``).
    """
    records = _records(history)
    if not records:
        raise ValueError("history is empty: nothing to plot")
    skip = {x, "round", "seconds", "neighbours", "prototype_fraction"}
    if keys is None:
        keys = [k for k in records[0] if k not in skip and isinstance(records[0][k], (int, float, np.floating))]
    keys = list(keys)
    if not keys:
        raise ValueError(f"no numeric entries to plot in history keys {sorted(records[0])}")
    xs = np.array([r.get(x, i) for i, r in enumerate(records)], dtype=float)
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    rounds = [r.get("round") for r in records]
    starts = [xs[i] for i in range(1, len(records)) if rounds[i] is not None and rounds[i] != rounds[i - 1]]
    for ax, key in zip(axes.flat, keys):
        ys = np.array([r.get(key, np.nan) for r in records], dtype=float)
        ok = np.isfinite(ys)
        ax.plot(xs[ok], ys[ok], marker="o", markersize=3, color="#444")
        for s in starts:
            ax.axvline(s - 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
        if log:
            ax.set_yscale("log")
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig)


def _curve_arrays(value: Any) -> dict[str, Any]:
    """ROC and PR arrays from precomputed curves or ``(labels, scores)`` (checked as :func:`~salad_lite.metrics.auc` does)."""
    if isinstance(value, Mapping):
        missing = {"fpr", "tpr", "precision", "recall"} - set(value)
        if missing:
            raise ValueError(f"curve dict lacks {sorted(missing)}; give fpr/tpr/precision/recall or (labels, scores)")
        return dict(value)
    if not (isinstance(value, (Sequence, np.ndarray)) and len(value) == 2):
        raise ValueError(f"a curve must be a dict of arrays or a pair (labels, scores), got {type(value).__name__}")
    labels, scores = value
    return {**roc_curve_data(labels, scores), **pr_curve_data(labels, scores), "auc": auc(labels, scores),
            "auprc": auprc(labels, scores), "prevalence": float(binary_labels(labels).mean())}


def plot_roc_pr(curves: Mapping[str, Any], *, title: str = "") -> Figure:
    """ROC (left) and precision-recall (right) curves of several methods or runs.

    ``curves`` maps a name to either ``(labels [N], scores [N])`` (curves are computed
    here, higher score = more abnormal) or a dict with ``fpr``, ``tpr``, ``precision``,
    ``recall`` arrays and optional ``auc`` / ``auprc`` / ``prevalence`` floats (as
    returned by :mod:`salad_lite.metrics`). The legend shows AUC / AUPRC when known.
    """
    if not curves:
        raise ValueError("plot_roc_pr needs at least one curve")
    if set(curves) & {"fpr", "tpr", "precision", "recall"}:
        raise ValueError("plot_roc_pr takes a name -> curve mapping, got one curve's arrays: wrap it, e.g. "
                         "{'SALAD': curve}")
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10, 4.3))
    prevalence = None
    for name, value in curves.items():
        c = _curve_arrays(value)
        roc_label = f"{name} (AUC {c['auc']:.3f})" if "auc" in c else name
        pr_label = f"{name} (AUPRC {c['auprc']:.3f})" if "auprc" in c else name
        ax_roc.plot(c["fpr"], c["tpr"], label=roc_label)
        ax_pr.step(c["recall"], c["precision"], where="post", label=pr_label)
        prevalence = c.get("prevalence", prevalence)
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    if prevalence is not None:
        ax_pr.axhline(prevalence, color="grey", linestyle=":", linewidth=1, label="chance")
    ax_roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.set(xlabel="recall (abnormal)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
        ax.set_aspect("equal")
        ax.spines[["top", "right"]].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig)


def plot_score_histogram(scores: Any, labels: Any, *, bins: int = 40, threshold: float | None = None,
                         title: str = "Anomaly scores", xlabel: str = "anomaly score A(x)") -> Figure:
    """Overlaid, density-normalised histograms of the scores of normal and abnormal images.

    ``scores`` ``[N]`` (higher = more abnormal), ``labels`` ``[N]`` in {0, 1}. An optional
    ``threshold`` is drawn as a vertical line.

    Raises:
        ValueError: scores not N finite numbers, labels not N values in {0, 1}.
    """
    scores = finite_scores(scores)
    if scores.ndim != 1:
        raise ValueError(f"plot_score_histogram: scores must be 1-D [N], got shape {scores.shape}")
    labels = binary_labels(labels, "plot_score_histogram", need_both=False)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    edges = np.histogram_bin_edges(scores, bins=bins)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label in (0, 1):
        part = scores[labels == label]
        if part.size:
            ax.hist(part, bins=edges, density=True, alpha=0.55, color=LABEL_COLOURS[label],
                    label=f"{LABEL_NAMES[label]} (n={part.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _finish(fig)


def plot_cluster_formation(rounds: Sequence[int], metrics: Mapping[str, Sequence[float]], *,
                           title: str = "Cluster formation over progressive rounds",
                           xlabel: str = "round") -> Figure:
    """One small line plot per metric against the progressive round.

    ``rounds`` ``[R]``; ``metrics`` maps a name (e.g. ``"neighbour purity"``,
    ``"memory entropy"``, ``"prototypical fraction"``) to ``R`` values.
    """
    rounds = list(rounds)
    if not metrics:
        raise ValueError("plot_cluster_formation needs at least one metric")
    for name, values in metrics.items():
        if len(values) != len(rounds):
            raise ValueError(f"metric {name!r} has {len(values)} values for {len(rounds)} rounds")
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, metrics.items()):
        ax.plot(rounds, values, marker="o", color="#444")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_xticks(rounds)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig)


#: Steps of ``preprocess_mura_image(..., return_steps=True)`` shown by :func:`plot_mura_steps`, with titles.
MURA_STEPS: tuple[tuple[str, str], ...] = (
    ("input", "1 input + plate corners"), ("edges", "2 Canny edges"), ("warped", "3 plate, warped"),
    ("equalized", "4 equalised"), ("hysteresis", "5 hysteresis"), ("mask", "6 body-part mask"),
    ("autocontrast", "7 autocontrast"), ("output", "8 resized, padded, masked"),
)


def _as_uint8(img: Any) -> np.ndarray:
    """uint8 ``[H, W]`` view of a step image: masks (bool) become 0/255, floats in [0, 1] are scaled."""
    arr = np.asarray(img)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        return (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr.astype(np.uint8)


def plot_mura_steps(steps: Mapping[str, Any], true_corners: Any | None = None, *, ncols: int = 4,
                    size: float = 2.4, title: str = "") -> Figure:
    """The MURA preprocessing of one image, step by step.

    ``steps``: the dict returned by ``preprocess_mura_image(img, return_steps=True)``
    (images ``[H, W]``; ``corners`` ``[4, 2]`` pixel ``(x, y)`` or None). The detected
    plate is outlined on the input (solid), and ``true_corners`` ``[4, 2]`` (e.g. the
    synthetic set's ground truth) dashed.
    """
    keys = [(k, t) for k, t in MURA_STEPS if steps.get(k) is not None]
    images = [_as_uint8(steps[k]) for k, _ in keys]
    titles = [t for _, t in keys]
    if steps.get("mask_fallback"):
        titles[[k for k, _ in keys].index("mask")] += " (fallback: all)"
    if not steps.get("carrier_found", True):
        titles[0] = "1 input (no plate found)"
    fig = image_grid(images, titles, ncols=ncols, size=size, suptitle=title or None)
    ax = fig.axes[0]
    for corners, style, label in ((steps.get("corners"), "-", "detected"), (true_corners, "--", "true")):
        if corners is None:
            continue
        c = np.asarray(corners, dtype=float)
        closed = np.vstack([c, c[:1]])
        ax.plot(closed[:, 0], closed[:, 1], style, color="#ffb000" if label == "detected" else "#00c8ff",
                linewidth=1.4, label=label)
    if ax.lines:
        ax.legend(fontsize=7, loc="lower right", framealpha=0.7)
    return fig


# --------------------------------------------------------------------------- plotly figures
def umap_rounds_figure(embeddings_per_round: Sequence[np.ndarray], labels: Any,
                       findings: Sequence[str] | None = None, titles: Sequence[str] | None = None, *,
                       marker_size: int = 5, height: int = 560) -> go.Figure:
    """2-D embeddings of the same N images after each round, with a slider (and play button) over rounds.

    ``embeddings_per_round``: R arrays ``[N, 2]`` whose coordinates are already aligned
    across rounds (e.g. ``umap.AlignedUMAP`` or one projection reused with ``transform``);
    ``labels`` ``[N]`` in {0, 1}; ``findings`` ``[N]`` strings shown on hover;
    ``titles`` R slider labels (default ``"round 0" ..``). Axis ranges are fixed over
    all rounds so that movement is real movement. Works in the static book: the frames
    and the slider are plain plotly.js.
    """
    coords = [np.asarray(e, dtype=float) for e in embeddings_per_round]
    if not coords:
        raise ValueError("umap_rounds_figure needs at least one round")
    labels = np.asarray(labels).ravel()
    n = labels.size
    for r, c in enumerate(coords):
        if c.shape != (n, 2):
            raise ValueError(f"round {r}: embedding shape {c.shape}, expected ({n}, 2) to match the labels")
    titles = list(titles) if titles is not None else [f"round {r}" for r in range(len(coords))]
    if len(titles) != len(coords):
        raise ValueError(f"{len(titles)} titles for {len(coords)} rounds")
    hover = np.asarray(findings if findings is not None else [LABEL_NAMES.get(int(l), str(l)) for l in labels])
    if hover.size != n:
        raise ValueError(f"{hover.size} findings for {n} labels")
    index = np.arange(n)
    present = [lab for lab in (0, 1) if np.any(labels == lab)]

    def traces(c: np.ndarray) -> list[go.Scatter]:
        out = []
        for lab in present:
            m = labels == lab
            out.append(go.Scatter(
                x=c[m, 0], y=c[m, 1], mode="markers", name=LABEL_NAMES[lab],
                marker={"size": marker_size, "color": LABEL_COLOURS[lab], "opacity": 0.75},
                customdata=np.stack([index[m], hover[m]], axis=1),
                hovertemplate="#%{customdata[0]}<br>%{customdata[1]}<extra></extra>"))
        return out

    stacked = np.concatenate(coords)
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    pad = 0.05 * np.maximum(hi - lo, 1e-9)
    frames = [go.Frame(data=traces(c), name=str(r), layout={"title": {"text": titles[r]}})
              for r, c in enumerate(coords)]
    steps = [{"label": titles[r], "method": "animate",
              "args": [[str(r)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                                  "transition": {"duration": 0}}]} for r in range(len(coords))]
    fig = go.Figure(data=traces(coords[0]), frames=frames)
    fig.update_layout(
        title={"text": titles[0]}, height=height, template="plotly_white",
        xaxis={"range": [lo[0] - pad[0], hi[0] + pad[0]], "title": "UMAP 1", "zeroline": False},
        yaxis={"range": [lo[1] - pad[1], hi[1] + pad[1]], "title": "UMAP 2", "zeroline": False},
        legend={"itemsizing": "constant"},
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "shown: "}, "x": 0.12, "len": 0.88,
                  "xanchor": "left", "y": 0, "yanchor": "top", "pad": {"t": 50, "b": 10}}],
        updatemenus=[{"type": "buttons", "showactive": False, "x": 0.1, "y": 0, "xanchor": "right",
                      "yanchor": "top", "pad": {"t": 75, "r": 10}, "direction": "left",
                      "buttons": [{"label": "play", "method": "animate",
                                   "args": [None, {"frame": {"duration": 900, "redraw": True},
                                                   "fromcurrent": True, "transition": {"duration": 300}}]}]}],
    )
    return fig


# --------------------------------------------------------------------------- the SALAD pipeline (paper Fig. 1)
def _box(ax: Any, xy: tuple[float, float], w: float, h: float, text: str, colour: str,
         fontsize: float = 10.5) -> tuple[float, float, float, float]:
    ax.add_patch(FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=colour, edgecolor="#333", linewidth=1))
    ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=fontsize, wrap=True)
    return xy[0], xy[1], w, h


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], text: str = "",
           colour: str = "#333", style: str = "-|>", rad: float = 0.0, text_offset: tuple[float, float] = (0, 0.12),
           linestyle: str = "-") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=colour,
                                 linewidth=1.3, connectionstyle=f"arc3,rad={rad}", linestyle=linestyle))
    if text:
        mx, my = (start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1]
        ax.text(mx, my, text, ha="center", va="center", fontsize=9.5, color=colour)


def _toy_xray(size: int = 48, lesion: bool = False, seed: int = 0) -> np.ndarray:
    """A tiny drawn chest-like image [size, size] in [0, 1] (two dark lungs in a bright body)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    body = np.exp(-(((xx - 0.5) / 0.42) ** 6 + ((yy - 0.55) / 0.5) ** 6))
    lungs = sum(np.exp(-(((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.28) ** 2)) for cx in (0.32, 0.68))
    img = 0.75 * body - 0.55 * lungs * body + 0.08 * np.exp(-((xx - 0.5) / 0.05) ** 2)
    if lesion:
        img += 0.45 * np.exp(-(((xx - 0.7) / 0.07) ** 2 + ((yy - 0.45) / 0.07) ** 2))
    img += 0.03 * np.random.default_rng(seed).standard_normal(img.shape)
    return np.clip(img, 0, 1)


def draw_salad_pipeline() -> Figure:
    """The SALAD method as a diagram (after Fig. 1 of Bozorgtabar et al., MICCAI 2020).

    Top row: training. X-rays pass an encoder to unit latents on a hypersphere; a
    decoder reconstructs them (L_mse); a memory bank keeps one slot per training
    image, updated with momentum; instance discrimination (L_ss) separates every
    image from the others, neighbourhood aggregation (L_agg) pulls prototypical
    images towards their memory neighbours, with neighbourhoods that grow over the
    progressive rounds. Bottom row: inference scores a test image by its mean
    angular distance to its K nearest normal memory entries (Eq. 4).
    """
    fig, ax = plt.subplots(figsize=(10, 5.4))
    ax.set_xlim(0, 12)
    ax.set_ylim(0, 6.4)
    ax.set_axis_off()
    enc_c, lat_c, mem_c, loss_c, inf_c = "#cfe2f3", "#fff2cc", "#d9ead3", "#f4cccc", "#ead1dc"

    # input and reconstruction thumbnails
    for k, (x0, y0) in enumerate([(0.15, 4.45), (0.35, 4.25), (0.55, 4.05)]):
        ax.imshow(_toy_xray(lesion=(k == 1), seed=k), cmap="gray", vmin=0, vmax=1,
                  extent=(x0, x0 + 1.1, y0, y0 + 1.1), zorder=2 + k)
    ax.text(0.95, 3.8, "unlabelled training\nX-rays $x$ (mostly normal)", ha="center", va="top", fontsize=9.5)
    ax.imshow(_toy_xray(seed=5), cmap="gray", vmin=0, vmax=1, extent=(10.6, 11.7, 4.3, 5.4))
    ax.text(11.15, 4.15, r"reconstruction $\hat{x}$", ha="center", va="top", fontsize=9.5)

    _box(ax, (2.0, 4.35), 1.6, 0.95, r"encoder" "\n" r"$f_{\mathrm{enc}}$", enc_c)
    _box(ax, (8.3, 4.35), 1.6, 0.95, r"decoder" "\n" r"$g_{\mathrm{dec}}$", enc_c)
    _arrow(ax, (1.7, 4.8), (2.0, 4.8))
    _arrow(ax, (9.9, 4.8), (10.55, 4.8))

    # latent hypersphere with clusters
    cx, cy, r = 5.95, 4.8, 0.95
    ax.add_patch(Circle((cx, cy), r, facecolor=lat_c, edgecolor="#333", linewidth=1))
    rng = np.random.default_rng(3)
    for (ax_c, ay_c), colour in [((-0.45, 0.3), NORMAL_COLOUR), ((0.35, 0.35), NORMAL_COLOUR),
                                 ((0.0, -0.45), NORMAL_COLOUR)]:
        pts = rng.normal(scale=0.1, size=(9, 2)) + (ax_c, ay_c)
        ax.scatter(cx + pts[:, 0], cy + pts[:, 1], s=9, color=colour, zorder=3)
    ax.scatter([cx + 0.55], [cy - 0.2], s=22, color=ABNORMAL_COLOUR, marker="x", zorder=3)
    ax.text(cx, cy + r + 0.25, r"latent $z$ on the unit sphere ($d = 200$)", ha="center", fontsize=9.5)
    _arrow(ax, (3.6, 4.8), (cx - r, 4.8), r"$z = f_{\mathrm{enc}}(x)$" "\n" r"$\Vert z \Vert = 1$", text_offset=(0, 0.32))
    _arrow(ax, (cx + r, 4.8), (8.3, 4.8))
    _box(ax, (8.45, 5.55), 1.3, 0.55, r"$L_{\mathrm{mse}}(x, \hat{x})$", loss_c, 10)
    _arrow(ax, (9.1, 5.3), (9.1, 5.55), style="-")

    # memory bank
    bank_x, bank_y, bank_w, bank_h = 4.6, 1.95, 2.7, 1.35
    _box(ax, (bank_x, bank_y), bank_w, bank_h, "", mem_c)
    for i in range(9):
        ax.add_patch(FancyBboxPatch((bank_x + 0.2 + i * 0.265, bank_y + 0.42), 0.18, 0.5,
                                    boxstyle="square,pad=0", facecolor="white", edgecolor="#666", linewidth=0.6))
    ax.text(bank_x + bank_w / 2, bank_y + 1.13, r"memory bank $M$", ha="center", va="center", fontsize=10)
    ax.text(bank_x + bank_w / 2, bank_y + 0.2, r"one slot $m_i$ per training image", ha="center", va="center",
            fontsize=9)
    _arrow(ax, (cx, cy - r), (cx, bank_y + bank_h), r"$m_i \leftarrow \mathrm{norm}((1-t)\, m_i + t\, z_i)$",
           text_offset=(1.25, 0.0))

    # latent losses
    _box(ax, (1.0, 1.95), 2.9, 1.35, r"instance discrimination $L_{\mathrm{ss}}$" "\n" r"(Eq. 1): each $z_i$ close to" "\n"
         "its own slot and augmented\nviews, far from the others", loss_c, 9.5)
    _box(ax, (8.0, 1.95), 3.1, 1.35, r"neighbourhood aggregation $L_{\mathrm{agg}}$" "\n" r"(Eq. 2): prototypical $z_i$ pulled" "\n"
         r"to their $k$ nearest slots;" "\n" r"rounds $r = 1..R$ grow $k$ and the" "\n" "prototypical set", loss_c, 9.5)
    _arrow(ax, (bank_x, bank_y + 0.68), (3.9, bank_y + 0.68), style="<|-|>")
    _arrow(ax, (bank_x + bank_w, bank_y + 0.68), (8.0, bank_y + 0.68), style="<|-|>")
    ax.text(6.0, 1.65, r"$L = L_{\mathrm{mse}} + \lambda\,(L_{\mathrm{ss}} + L_{\mathrm{agg}}),\ \lambda = 0.25;\quad "
            r"p_{ij} = \mathrm{softmax}_j(z_i \cdot m_j / \tau)$",
            ha="center", fontsize=10.5, style="italic")

    # inference row
    ax.plot([0.2, 11.8], [1.3, 1.3], color="#999", linewidth=0.8, linestyle="--")
    ax.text(0.25, 1.12, "inference", fontsize=10.5, weight="bold", va="top")
    ax.imshow(_toy_xray(lesion=True, seed=9), cmap="gray", vmin=0, vmax=1, extent=(1.4, 2.2, 0.15, 0.95))
    ax.text(1.8, 0.05, r"test $x$", ha="center", va="top", fontsize=9.5)
    _box(ax, (2.8, 0.3), 1.3, 0.55, r"$f_{\mathrm{enc}}$", enc_c, 10)
    _box(ax, (4.8, 0.3), 3.6, 0.55, r"$K$ nearest normal memory slots", mem_c, 10)
    _box(ax, (9.0, 0.2), 2.7, 0.75, r"$A(x)$ = mean angle to" "\n" r"those $K$ slots (Eq. 4)", inf_c, 10)
    _arrow(ax, (2.25, 0.57), (2.8, 0.57))
    _arrow(ax, (4.1, 0.57), (4.8, 0.57), r"$z$")
    _arrow(ax, (8.4, 0.57), (9.0, 0.57))
    ax.text(10.35, 1.1, "high = abnormal", ha="center", fontsize=9.5, color=ABNORMAL_COLOUR)
    fig.tight_layout()
    return _finish(fig)


# --------------------------------------------------------------------------- chapters 3-7: training, scoring, evaluation
def reconstruction_grid(inputs: Any, reconstructions: Any, *, size: float = 1.7,
                        title: str = "Inputs (top) and reconstructions (bottom)") -> Figure:
    """Two rows: images ``[B, 1, H, W]`` (or ``[B, H, W]``) in [0, 1] above their reconstructions.

    Each reconstruction is titled with its mean squared error per pixel.
    """
    xs = [_as_image(x) for x in inputs]
    ys = [_as_image(y) for y in reconstructions]
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"need as many reconstructions as inputs (>= 1), got {len(xs)} and {len(ys)}")
    mse = [float(np.mean((x.astype(float) - y.astype(float)) ** 2)) for x, y in zip(xs, ys)]
    titles = ["input"] * len(xs) + [f"MSE {m:.4f}" for m in mse]
    return image_grid([*xs, *ys], titles, ncols=len(xs), size=size, suptitle=title)


def neighbour_rows(query: Any, rows: Mapping[str, tuple[Sequence[Any], Sequence[float]]], *,
                   size: float = 1.6, title: str = "") -> Figure:
    """The query image, then one row of neighbour images per named state (e.g. before / after training).

    ``query``: image ``[H, W]`` / ``[1, H, W]``; ``rows``: name -> (k images, k cosine
    similarities), nearest first. Every row starts with the query (framed) so that
    rows can be compared at a glance.
    """
    if not rows:
        raise ValueError("neighbour_rows needs at least one row")
    lengths = {name: len(images) for name, (images, _) in rows.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"every row needs the same number (>= 1) of neighbours, got {lengths}")
    for name, (images, sims) in rows.items():
        if len(sims) != len(images):
            raise ValueError(f"row {name!r}: {len(sims)} similarities for {len(images)} images")
    k = next(iter(lengths.values()))
    q = _as_image(query)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(size * (k + 1), size * len(rows) + 0.5), squeeze=False)
    for r, (name, (images, sims)) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            img = q if c == 0 else _as_image(images[c - 1])
            ax.imshow(img, cmap="gray", vmin=0, vmax=255 if img.dtype == np.uint8 else 1.0,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=10)
                ax.set_title("query", fontsize=9)
                for spine in ax.spines.values():
                    spine.set_edgecolor("#ffb000")
                    spine.set_linewidth(2.5)
            else:
                ax.set_title(f"cos {float(sims[c - 1]):.2f}", fontsize=9)
                for spine in ax.spines.values():
                    spine.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig)


def plot_k_grid(grid: Sequence[Mapping[str, Any]], *, chosen_k: int | None = None,
                chosen_discard: bool | None = None, metric: str = "val_auc",
                title: str = "Scoring choices on the validation split") -> Figure:
    """Validation metric against K (log axis), one line per bank policy (discard abnormal rows or keep them).

    ``grid``: rows with ``k``, ``discard_anomalous`` and ``metric`` (the ``"grid"`` of
    :func:`salad_lite.experiment.select_scoring`). The chosen pair is ringed.
    """
    rows = list(grid)
    if not rows:
        raise ValueError("plot_k_grid needs at least one grid row")
    missing = {"k", "discard_anomalous", metric} - set(rows[0])
    if missing:
        raise ValueError(f"grid rows lack {sorted(missing)}; expected select_scoring()['grid']")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    styles = {True: ("discard abnormal bank rows", NORMAL_COLOUR, "-"),
              False: ("keep every bank row", "#7b3294", "--")}
    for discard, (label, colour, line) in styles.items():
        part = sorted((r for r in rows if bool(r["discard_anomalous"]) == discard), key=lambda r: r["k"])
        if part:
            ax.plot([r["k"] for r in part], [r[metric] for r in part], marker="o", color=colour,
                    linestyle=line, label=label)
    if chosen_k is not None:
        hit = [r for r in rows if r["k"] == chosen_k
               and (chosen_discard is None or bool(r["discard_anomalous"]) == chosen_discard)]
        if hit:
            ax.scatter([chosen_k], [hit[0][metric]], s=180, facecolors="none", edgecolors="black",
                       linewidths=1.6, zorder=5, label=f"chosen: K = {chosen_k}")
    ax.set_xscale("log")
    ks = sorted({int(r["k"]) for r in rows})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set(xlabel="K (nearest bank entries)", ylabel=metric.replace("_", " "), title=title)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _finish(fig)


#: Panels of :func:`plot_latent_probe`: probe kind -> (x-axis label, value drawn, the "knows nothing" line).
_PROBE_PANELS: dict[str, tuple[str, str]] = {
    "r2": ("R² (continuous targets)", "0 = the mean"),
    "accuracy": ("accuracy − majority rate (categories)", "0 = the majority class"),
    "auc": ("AUC of the neighbours' vote (two classes)", "0.5 = chance"),
}


def plot_latent_probe(tables: Mapping[str, Any] | Any, *, max_per_panel: int = 10,
                      keep: Sequence[str] = ("label",), kinds: Sequence[str] = ("r2", "accuracy", "auc"),
                      title: str = "What the nearest latent neighbours predict") -> Figure:
    """Horizontal bars of k-NN probe scores per target, one panel per kind, one bar colour per stage.

    ``tables``: one ``latent_predictability`` table (columns ``target``,
    ``kind``, ``score``, ``baseline``), or stage name -> table (e.g.
    ``{"pre-training": ..., "round 3": ...}``), drawn side by side in each
    panel, the last stage darkest. Panels (those of ``kinds`` present): R²
    (0 = predicting the mean), accuracy minus the majority-class rate
    (0 = always the commonest class) and AUC (0.5 = chance); every bar starts
    at the "knows nothing" value, so its length is what the latent knows.

    Each panel keeps its ``max_per_panel`` targets with the highest last-stage
    value, plus those named in ``keep`` (e.g. the label), best at the top.
    """
    import pandas as pd
    from matplotlib.colors import LinearSegmentedColormap

    stages = dict(tables) if isinstance(tables, Mapping) else {"": tables}
    if not stages:
        raise ValueError("plot_latent_probe needs at least one probe table")
    frames = []
    for stage, table in stages.items():
        frame = pd.DataFrame(table)
        missing = {"target", "kind", "score", "baseline"} - set(frame.columns)
        if missing:
            raise ValueError(f"probe table {stage!r} lacks {sorted(missing)}; expected latent_predictability()")
        frames.append(frame.assign(stage=stage))
    data = pd.concat(frames, ignore_index=True)
    data["value"] = np.where(data["kind"] == "accuracy", data["score"] - data["baseline"], data["score"])
    panels = [k for k in kinds if k in set(data["kind"])]
    if not panels:
        raise ValueError(f"no probe row of kind {list(kinds)}")
    names = list(stages)
    last = names[-1]
    shade = LinearSegmentedColormap.from_list("probe_stages", ["#bdbdbd", "#1a4f72"])
    colours = [shade(1.0)] if len(names) == 1 else list(shade(np.linspace(0, 1, len(names))))
    chosen = {}
    for kind in panels:
        part = data[(data["kind"] == kind) & (data["stage"] == last)].sort_values("value", ascending=False)
        top = list(part["target"].head(max_per_panel))
        top += [t for t in keep if t in set(part["target"]) and t not in top]
        chosen[kind] = top[::-1]  # best at the top of the panel
    rows = max(len(t) for t in chosen.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), max(2.6, 1.2 + 0.28 * rows * len(names))),
                             squeeze=False)
    height = 0.8 / len(names)
    for ax, kind in zip(axes[0], panels):
        targets = chosen[kind]
        origin = 0.5 if kind == "auc" else 0.0
        for s, stage in enumerate(names):
            part = data[(data["kind"] == kind) & (data["stage"] == stage)].set_index("target")
            values = [float(part.loc[t, "value"]) if t in part.index else np.nan for t in targets]
            y = np.arange(len(targets)) - 0.4 + height * (len(names) - 1 - s + 0.5)
            ax.barh(y, np.asarray(values) - origin, left=origin, height=height * 0.95, color=colours[s],
                    label=stage or None)
        ax.axvline(origin, color="black", linewidth=0.8)
        ax.set_yticks(np.arange(len(targets)))
        ax.set_yticklabels(targets, fontsize=8)
        for tick in ax.get_yticklabels():
            if tick.get_text() in keep:
                tick.set_fontweight("bold")
        label, nothing = _PROBE_PANELS.get(kind, (kind, ""))
        ax.set_xlabel(f"{label}\n({nothing})" if nothing else label, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    if len(names) > 1 or names[0]:
        axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig)


__all__.append("plot_latent_probe")


def plot_per_finding_auc(table: Any, methods: Sequence[str] = ("SALAD", "PCA"), *, overall: str = "any finding",
                         title: str = "Test AUC per finding") -> Figure:
    """Test AUC per finding, one dot per method with its 95% CI bar (left); per severity bin when the table has bins.

    ``table``: the DataFrame of :func:`salad_lite.report.per_finding_auc` (columns ``finding``,
    ``severity``, ``n abnormal``, ``<method> AUC``, ``<method> 95% CI``, ``note``). The left
    panel shows the rows over all severities, top to bottom in table order (``overall``
    first), with ``n abnormal`` beside each name; a row with too few images reads
    "too few". CI bars are drawn inside [0, 1]. The right panel, drawn only when the table has severity bins, shows the
    ``overall`` row per bin. A dotted line marks chance (AUC 0.5).

    Raises:
        ValueError: ``methods`` is empty, or ``table`` lacks a column it needs (named).
    """
    methods = list(methods)
    if not methods:
        raise ValueError("plot_per_finding_auc needs at least one method")
    needed = ["finding", "severity", "n abnormal"] + [f"{m} {c}" for m in methods for c in ("AUC", "95% CI")]
    missing = [c for c in needed if c not in getattr(table, "columns", ())]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; expected report.per_finding_auc's table")
    whole = table[table["severity"] == "all"]
    bins = table[(table["finding"] == overall) & (table["severity"] != "all")]
    panels = 2 if len(bins) else 1
    height = 1.2 + 0.42 * len(whole)
    fig, axes = plt.subplots(1, panels, figsize=(6.4 if panels == 1 else 10.5, max(2.6, height)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if panels == 2 else None)
    colours = [ABNORMAL_COLOUR, NORMAL_COLOUR, "#7b3294", "#008837", "#e66101"]
    offsets = np.linspace(-0.15, 0.15, len(methods)) if len(methods) > 1 else np.zeros(1)

    def dots(ax: Any, rows: Any, names: list[str]) -> None:
        y = np.arange(len(rows))[::-1]
        for k, method in enumerate(methods):
            mean = rows[f"{method} AUC"].to_numpy(float)
            half = np.nan_to_num(rows[f"{method} 95% CI"].to_numpy(float))
            known = np.nan_to_num(mean, nan=0.5)
            xerr = np.vstack([np.minimum(half, known), np.minimum(half, 1.0 - known)])  # drawn inside [0, 1]
            ax.errorbar(mean, y + offsets[k], xerr=xerr, fmt="o", color=colours[k % len(colours)],
                        capsize=3, markersize=5, label=method)
        unscored = np.all([np.isnan(rows[f"{m} AUC"].to_numpy(float)) for m in methods], axis=0)
        for yy in y[unscored]:
            ax.text(0.5, yy, "too few", ha="center", va="center", fontsize=8, color="grey")
        ax.axvline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=8)
        ax.set_ylim(-0.6, max(len(rows), 3) - 0.4)
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("test AUC (normal vs this group)")
        ax.spines[["top", "right"]].set_visible(False)

    names = [f"{f} (n={n})" for f, n in zip(whole["finding"], whole["n abnormal"])]
    dots(axes[0, 0], whole, names)
    axes[0, 0].set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    if panels == 2:
        names = [f"{b} (n={n})" for b, n in zip(bins["severity"], bins["n abnormal"])]
        dots(axes[0, 1], bins, names)
        axes[0, 1].set_title(f"{overall}, by severity", fontsize=10)
    fig.tight_layout()
    return _finish(fig)



# --------------------------------------------------------------------------- Table-1 chapter (method x AR grid)
def plot_fig5_bars(table1: Mapping[str, Any], ar_percent: float | None = None, *, paper: bool = True,
                   title: str = "Test AUC and AUPRC per method (cf. the paper's Fig. 5)") -> Figure:
    """Fig. 5 of the paper for this run: one bar per method, test AUC (left) and AUPRC (right), error bar 1.96 std.

    ``table1``: the grid's ``table1.json`` dict (see :mod:`salad_lite.table1_report`).
    Bars in a fixed order (:func:`salad_lite.table1_report.fig5_bar_rows`): MemDAE
    (AR 0), the Table-1 rows at ``ar_percent`` (default: the paper's † AR), then the
    baselines; rows the run skipped are left out. Error bars are each row's ``ci95``
    (none for a single replicate). With ``paper``, the paper's Table-1 value of a row
    (mean ± its error figure) is drawn as a black tick on the bar; Fig. 5 gives no
    number for a baseline, so baselines have none.

    Raises:
        ValueError: ``table1`` is not a table1.json dict, or has no row to draw.
    """
    from salad_lite.table1_report import fig5_bar_rows

    bars = fig5_bar_rows(table1, ar_percent)
    if bars.empty:
        raise ValueError("plot_fig5_bars: the table1 dict has no row that ran (all skipped or none)")
    x = np.arange(len(bars))
    colours = [ABNORMAL_COLOUR if t else "#7f7f7f" for t in bars["table1"]]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * len(bars) + 3.0), 4.2), sharey=False)
    paper_handle = None
    for ax, metric in zip(axes, ("AUC", "AUPRC")):
        heights = bars[metric].to_numpy(float)
        errors = np.nan_to_num(bars[f"{metric} ±"].to_numpy(float))
        ax.bar(x, heights, yerr=errors, color=colours, capsize=3, edgecolor="black", linewidth=0.5,
               error_kw={"elinewidth": 1})
        if paper:
            known = bars[f"paper {metric}"].notna().to_numpy()
            if known.any():
                paper_handle = ax.errorbar(x[known], bars[f"paper {metric}"].to_numpy(float)[known],
                                           yerr=bars[f"paper {metric} ±"].to_numpy(float)[known], fmt="_",
                                           color="black", markersize=14, capsize=2,
                                           label="paper, Table 1 (mean ± its CI)")
        if metric == "AUC":
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        low = np.nanmin(np.r_[heights - errors, bars[f"paper {metric}"].to_numpy(float)])
        ax.set_ylim(max(0.0, min(0.5, np.floor(low * 10) / 10)), 1.0)
        ax.set_xticks(x)
        ax.set_xticklabels(bars["label"], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"test {metric} (mean ± 1.96 std)", fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title)
    if paper_handle is not None:
        fig.legend(handles=[paper_handle], loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _finish(fig)


def plot_roc_methods(cells: Sequence[Mapping[str, Any]], seed: int = 0, ar_percent: float | None = None, *,
                     title: str = "") -> Figure:
    """Fig. 6a of the paper for this run: the test ROC curve of every method for one replicate, AUC in the legend.

    ``cells``: the grid's per-cell results (``method``, ``ar_percent``, ``seed``,
    ``test_labels``, ``test_scores``; see :mod:`salad_lite.table1_report`). Draws every
    cell of ``seed`` (with ``ar_percent``, only the cells at that AR and at AR 0, where
    MemDAE lives), one line each, then the chance diagonal.

    Raises:
        ValueError: no cell for ``seed`` (and ``ar_percent``); labels and scores of a
            cell differ in length, hold NaN/inf, or have one class only.
    """
    from salad_lite.metrics import auc, roc_curve_data

    chosen = [c for c in cells if int(c["seed"]) == int(seed)
              and (ar_percent is None or float(c["ar_percent"]) in (float(ar_percent), 0.0))]
    if not chosen:
        raise ValueError(f"plot_roc_methods: no cell for seed {seed}" + (
            f" at AR {ar_percent} %" if ar_percent is not None else ""))
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    for cell in chosen:
        labels, scores = np.asarray(cell["test_labels"]), np.asarray(cell["test_scores"], dtype=float)
        curve = roc_curve_data(labels, scores)
        ar = float(cell["ar_percent"])
        name = f"{cell['method']} (AR {int(ar) if ar.is_integer() else ar}%)"
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.4, label=f"{name}: AUC {auc(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title=title or f"Test ROC per method, replicate seed {seed}")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _finish(fig)


def plot_k_curves(k_table: Any, *, title: str = "Validation AUC over K, per method and replicate") -> Figure:
    """Validation AUC against K (log axis): one line per method x AR x replicate, a star at each replicate's chosen K.

    ``k_table``: the tidy DataFrame of :func:`salad_lite.table1_report.k_curves`
    (``method``, ``ar_percent``, ``seed``, ``k``, ``val_auc``, ``chosen``). The lines of
    one method and AR share a colour (one line style per replicate), so a reader sees
    whether the chosen K is the same across replicates or moves with the noise.

    Raises:
        ValueError: ``k_table`` lacks a column it needs, or is empty.
    """
    needed = ["method", "ar_percent", "seed", "k", "val_auc", "chosen"]
    missing = [c for c in needed if c not in getattr(k_table, "columns", ())]
    if missing:
        raise ValueError(f"k_table lacks column(s) {missing}; expected table1_report.k_curves' table")
    if len(k_table) == 0:
        raise ValueError("plot_k_curves: the K table is empty (no method with a K curve)")
    palette = [ABNORMAL_COLOUR, NORMAL_COLOUR, "#7b3294", "#008837", "#e66101", "#525252", "#a6611a", "#1b9e77"]
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    groups = list(k_table.groupby(["method", "ar_percent"], sort=False))
    for g, ((method, ar), part) in enumerate(groups):
        colour = palette[g % len(palette)]
        for r, (seed, run) in enumerate(part.groupby("seed", sort=True)):
            run = run.sort_values("k")
            ax.plot(run["k"], run["val_auc"], color=colour, linestyle=styles[r % len(styles)], marker=".",
                    linewidth=1.2, label=f"{method} (AR {ar}%)" if r == 0 else None)
            pick = run[run["chosen"].astype(bool)]
            ax.scatter(pick["k"], pick["val_auc"], marker="*", s=130, color=colour, edgecolors="black",
                       linewidths=0.6, zorder=5)
    ax.scatter([], [], marker="*", s=130, color="white", edgecolors="black", label="chosen K (one per replicate)")
    ax.set_xscale("log")
    ks = sorted({int(k) for k in k_table["k"]})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.set(xlabel="K (nearest bank entries, Eq. 4)", ylabel="validation AUC", title=title)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _finish(fig)


__all__ += ["plot_fig5_bars", "plot_k_curves", "plot_roc_methods"]
