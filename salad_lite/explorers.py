"""Live explorers of chapter 5 (Eq. 4 scoring), for readers who run the chapter in Jupyter.

Two explorers, both on the **validation** split only (chapter 5 never scores the
test split: chapter 6's protocol scores it once per replicate). They display
what the chapter has already computed and choose nothing:

- the **film explorer**: the most and least anomalous validation films by Eq. 4
  score, each with its score, label and finding (NIH ``Finding Labels``, or the
  set's ``finding`` column) and the K nearest training films its score is
  computed from (:func:`film_gallery_data`, :func:`film_explorer`);
- the **threshold explorer**: K (``cfg.score.k_grid``), the bank policy
  (``discard_anomalous``) and a threshold (a percentile of the validation scores
  or an absolute score) -> the confusion matrix, TPR and FPR on validation
  (:func:`score_grid`, :func:`confusion_at`, :func:`threshold_explorer`).

Everything that is displayed is computed by the pure functions here (unit-tested
without widgets); the ipywidgets UI is a thin layer over them. Output policy
(:func:`explorer_bundle`): one display output carries both the live widget
(``application/vnd.jupyter.widget-view+json``) and a static figure of the same
content as ``text/html`` (an inline PNG inside ``<figure class="salad-explorer">``).
A Jupyter frontend with ipywidgets shows the widget (that MIME type has the top
rank); the static book build drops widget outputs (``scripts/build_book.py``,
``drop_widgets``), so the page shows the figure, and nothing is loaded from a CDN.
Without ipywidgets installed the figure alone is shown.

Source: Eq. 4 of Bozorgtabar et al. (MICCAI 2020), as :mod:`salad_lite.scorer`
computes it; a film is flagged abnormal when ``score >= threshold``
(as :meth:`salad_lite.scorer.SaladScorer.predict`).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from salad_lite.config import ScoreRule
from salad_lite.data.findings import finding_column
from salad_lite.knn import unit_rows
from salad_lite.metrics import auc, binary_labels, finite_scores
from salad_lite.scorer import eq4_search
from salad_lite.utils import is_int, is_number

ThresholdMode = Literal["percentile", "absolute"]
GridScores = dict[tuple[int, bool], np.ndarray]
EXPLORER_CLASS = "salad-explorer"  # the HTML class of the static figures (scripts/check_pages.py counts it)
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
NORMAL_COLOUR, ABNORMAL_COLOUR = "#2b83ba", "#d7191c"  # as salad_lite.viz

__all__ = ["Confusion", "FilmGallery", "GalleryFilm", "confusion_at", "confusion_figure", "eq4_neighbours",
           "explorer_bundle", "film_explorer", "film_explorer_widget", "film_gallery_data", "film_gallery_figure",
           "findings_of", "score_grid", "show_explorer", "threshold_at", "threshold_explorer",
           "threshold_explorer_widget", "widgets_available"]


# --------------------------------------------------------------------------- pure functions
@dataclass(frozen=True)
class Confusion:
    """Counts of a threshold on labelled scores: abnormal (1) is the positive class.

    ``matrix`` is ``[[tn, fp], [fn, tp]]`` (rows: true normal / abnormal; columns:
    flagged normal / abnormal), as ``sklearn.metrics.confusion_matrix``.
    """

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def matrix(self) -> np.ndarray:
        """``[[tn, fp], [fn, tp]]``, int64 [2, 2]."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)

    @property
    def tpr(self) -> float:
        """TP / (TP + FN): the share of abnormal films flagged (NaN without abnormal films)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def fpr(self) -> float:
        """FP / (FP + TN): the share of normal films flagged (NaN without normal films)."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else math.nan

    @property
    def precision(self) -> float:
        """TP / (TP + FP) (NaN when nothing is flagged)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan


def _scores(scores: Any, what: str = "scores") -> np.ndarray:
    """``scores`` as a finite float64 [M] array, M >= 1 (:func:`salad_lite.metrics.finite_scores`); else ValueError."""
    values = finite_scores(scores, what)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array [M], got shape {values.shape}")
    return values


def _finite_number(value: Any, name: str) -> float:
    if not is_number(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _bool_argument(value: Any, name: str) -> bool:
    """``value`` when it is a bool (NumPy's too); ValueError naming ``name`` otherwise (``"no"`` is not False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _int_argument(value: Any, name: str, low: int = 1) -> int:
    """``value`` when it is an int >= ``low`` (not bool; NumPy ints too); ValueError naming ``name`` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _percentile(value: Any, name: str = "percentile") -> float:
    """A finite number in [0, 100]; ValueError naming ``name`` otherwise (never clamped)."""
    number = _finite_number(value, name)
    if not 0.0 <= number <= 100.0:
        raise ValueError(f"{name} must lie in [0, 100], got {number:g}")
    return number


def confusion_at(scores: Any, labels: Any, threshold: float) -> Confusion:
    """The confusion counts of flagging ``score >= threshold`` as abnormal.

    Args:
        scores: [M] anomaly scores, higher = more abnormal (finite).
        labels: [M] 0 (normal) / 1 (abnormal); one class is allowed (TPR or FPR is then NaN).
        threshold: a finite score.

    Raises:
        ValueError: a NaN/inf or non-numeric threshold; NaN/inf scores; scores and
            labels of different lengths; a label other than 0/1 (bool arrays are read as 0/1, as the metrics read them).
    """
    t = _finite_number(threshold, "threshold")
    values = _scores(scores)
    truth = binary_labels(labels, "confusion_at", need_both=False)
    if truth.shape[0] != values.shape[0]:
        raise ValueError(f"scores ({values.shape[0]}) and labels ({truth.shape[0]}) differ in length")
    flagged = values >= t
    positive = truth == 1
    return Confusion(threshold=t, tp=int((flagged & positive).sum()), fp=int((flagged & ~positive).sum()),
                     tn=int((~flagged & ~positive).sum()), fn=int((~flagged & positive).sum()))


def threshold_at(scores: Any, value: float, mode: ThresholdMode = "percentile") -> float:
    """The absolute threshold a control stands for.

    ``mode="percentile"``: ``numpy.percentile(scores, value)`` (linear
    interpolation), ``value`` in [0, 100]: p flags about (100 - p) % of the films
    (0 flags all, 100 only the highest). ``mode="absolute"``: ``value`` itself.

    Raises:
        ValueError: NaN/inf ``value`` or scores; a percentile outside [0, 100]; an unknown mode.
    """
    number = _finite_number(value, "threshold value")
    if mode == "absolute":
        return number
    if mode != "percentile":
        raise ValueError(f"unknown threshold mode {mode!r}; choose percentile or absolute")
    return float(np.percentile(_scores(scores), _percentile(number, "a percentile")))


def _kept_rows(bank_labels: Any, n_bank: int, discard_anomalous: bool) -> np.ndarray:
    labels = binary_labels(bank_labels, "the bank's training labels", need_both=False)
    if labels.ndim != 1 or labels.shape[0] != n_bank:
        raise ValueError(f"bank_labels has {labels.shape[0]} entries but the bank has {n_bank} rows")
    return np.flatnonzero(labels == 0) if discard_anomalous else np.arange(n_bank)


def _check_k(k: Any, n_kept: int, discard_anomalous: bool) -> int:
    if not is_int(k) or k < 1:
        raise ValueError(f"K must be an int >= 1, got {k!r}")
    if k > n_kept - 1:
        raise ValueError(f"K = {k} does not fit the bank: {n_kept} rows are kept (discard_anomalous="
                         f"{discard_anomalous}) and Eq. 4 as SaladScorer and select_scoring use it needs "
                         f"K <= N' - 1 = {n_kept - 1}")
    return int(k)


def eq4_neighbours(query_z: Any, bank: Any, bank_labels: Any, k: int, discard_anomalous: bool,
                   rule: ScoreRule = "paper") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 4 scores of the queries and the K bank rows each score is computed from.

    The same numbers as ``SaladScorer(k, discard_anomalous, rule).fit(bank,
    bank_labels).decision_function(query_z)`` (both call
    :func:`salad_lite.scorer.eq4_search`), plus the neighbours.

    Args:
        query_z: [M, d] latents (normalised here).
        bank: [N, d] scoring bank, row i = training film i.
        bank_labels: [N] training labels 0/1; with ``discard_anomalous`` the rows labelled 1 are left out.
        k: K, 1 <= K <= N' - 1 (N' = rows kept), as ``select_scoring`` allows it.

    Returns:
        ``(scores [M] float32, rows [M, K] int64 training rows nearest first, cosines [M, K] float32)``.

    Raises:
        ValueError: K outside 1..N'-1; ``discard_anomalous`` not a bool; bank labels not 0/1 or of
            another length than the bank;
            NaN/inf/zero-norm latents (counted, from :func:`salad_lite.knn.unit_rows`); another d; a bad rule.
    """
    discard_anomalous = _bool_argument(discard_anomalous, "discard_anomalous")
    bank_t = unit_rows(bank, "bank")  # [N, d]
    kept = _kept_rows(bank_labels, bank_t.shape[0], discard_anomalous)
    k = _check_k(k, kept.size, discard_anomalous)
    queries = torch.as_tensor(query_z)
    if queries.ndim == 1:
        queries = queries[None]
    scores, cosines, rows = eq4_search(queries, bank_t[torch.from_numpy(kept)], k, rule)
    return (scores.cpu().numpy(), kept[rows.cpu().numpy()].astype(np.int64),
            cosines.float().cpu().numpy())


@dataclass(frozen=True)
class GalleryFilm:
    """One validation film of the gallery and the K training films its Eq. 4 score uses.

    ``end``: ``"most"`` or ``"least"`` anomalous; ``rank``: 1 = the most (or least)
    anomalous of all; ``row``: the film's row in the validation split;
    ``neighbours`` [K] training rows, nearest first, with ``cosines`` [K],
    ``neighbour_labels`` [K] and ``neighbour_findings`` [K].
    """

    end: Literal["most", "least"]
    rank: int
    row: int
    score: float
    label: int
    finding: str
    neighbours: np.ndarray
    cosines: np.ndarray
    neighbour_labels: np.ndarray
    neighbour_findings: tuple[str, ...]

    @property
    def title(self) -> str:
        """``"most anomalous #1"`` / ``"least anomalous #2"``."""
        return f"{self.end} anomalous #{self.rank}"


@dataclass(frozen=True)
class FilmGallery:
    """The most and least anomalous validation films (``films``: most #1..#n, then least #1..#n)."""

    k: int
    discard_anomalous: bool
    rule: str
    bank_rows: int  # N': the rows Eq. 4 scored against
    scores: np.ndarray  # [M] every validation film's score
    films: tuple[GalleryFilm, ...]
    bank_size: int | None = None  # N: the bank's rows before a discard (None: not recorded)


def _text_column(values: Sequence[Any] | None, labels: np.ndarray, what: str) -> np.ndarray:
    """Findings as strings [M]; ``None`` -> ``"abnormal"`` / ``"normal"`` from the labels.

    Raises:
        ValueError: a length other than the labels'; a missing entry (None, NaN: its
            position named), as :func:`findings_of` refuses one.
    """
    if values is None:
        return np.where(labels == 1, "abnormal", "normal").astype(object)
    column = np.asarray(list(values), dtype=object)
    if column.shape != labels.shape:
        raise ValueError(f"{what} has {column.shape[0]} entries for {labels.shape[0]} films")
    missing = [i for i, v in enumerate(column) if v is None or (pd.api.types.is_scalar(v) and pd.isna(v))]
    if missing:
        raise ValueError(f"{what} has {len(missing)} missing entr{'y' if len(missing) == 1 else 'ies'} (None/NaN), "
                         f"first at position {missing[0]} ({column[missing[0]]!r}); a film without its finding "
                         f"would be shown as {str(column[missing[0]])!r}")
    return np.array([str(v) for v in column], dtype=object)


def film_gallery_data(query_z: Any, bank: Any, bank_labels: Any, *, k: int, discard_anomalous: bool,
                      query_labels: Any, n: int = 5, rule: ScoreRule = "paper",
                      query_findings: Sequence[Any] | None = None,
                      bank_findings: Sequence[Any] | None = None) -> FilmGallery:
    """The ``n`` most and ``n`` least anomalous query films by Eq. 4, with their K nearest bank films.

    Order: most anomalous first (descending score), least anomalous first (ascending
    score); equal scores rank by ascending row (a stable sort). Neighbours are the
    K bank rows of highest cosine to the query (:func:`eq4_neighbours`).

    Args:
        query_z: [M, d] latents of the films to rank (chapter 5: the validation split).
        bank, bank_labels, k, discard_anomalous, rule: as :func:`eq4_neighbours`.
        query_labels: [M] 0/1; query_findings [M] / bank_findings [N]: the text shown
            (``None``: "normal" / "abnormal" from the labels).
        n: films at each end, 1 <= n <= M // 2 (the two ends do not overlap).

    Raises:
        ValueError: as :func:`eq4_neighbours`; n outside 1..M//2; labels or findings
            whose length differs from their latents.
    """
    scores, rows, cosines = eq4_neighbours(query_z, bank, bank_labels, k, discard_anomalous, rule)
    m = scores.shape[0]
    labels = binary_labels(query_labels, "query_labels", need_both=False)
    if labels.shape[0] != m:
        raise ValueError(f"query_labels has {labels.shape[0]} entries but query_z has {m} rows")
    if not is_int(n) or not 1 <= n <= m // 2:
        raise ValueError(f"n (films at each end) must be an int in 1..{m // 2} for {m} films, got {n!r}")
    bank_lab = binary_labels(bank_labels, "the bank's training labels", need_both=False)
    findings = _text_column(query_findings, labels, "query_findings")
    bank_text = _text_column(bank_findings, bank_lab, "bank_findings")
    order_most = np.argsort(-scores.astype(np.float64), kind="stable")
    order_least = np.argsort(scores.astype(np.float64), kind="stable")
    films = []
    for end, order in (("most", order_most), ("least", order_least)):
        for rank, row in enumerate(order[:n], start=1):
            films.append(GalleryFilm(
                end=end, rank=rank, row=int(row), score=float(scores[row]), label=int(labels[row]),
                finding=str(findings[row]), neighbours=rows[row], cosines=cosines[row],
                neighbour_labels=bank_lab[rows[row]], neighbour_findings=tuple(bank_text[rows[row]])))
    n_kept = int((bank_lab == 0).sum()) if discard_anomalous else bank_lab.shape[0]
    return FilmGallery(k=int(k), discard_anomalous=bool(discard_anomalous), rule=rule, bank_rows=n_kept,
                       scores=scores, films=tuple(films), bank_size=int(bank_lab.shape[0]))


def score_grid(query_z: Any, bank: Any, bank_labels: Any, k_grid: Iterable[int],
               discard_options: Iterable[bool], rule: ScoreRule = "paper") -> GridScores:
    """Eq. 4 scores [M] for every (K, discard_anomalous) of the grid that fits the bank.

    As :func:`salad_lite.experiment.select_scoring`, a K the bank cannot serve
    (K > N' - 1) is skipped, not clamped.

    Returns:
        ``{(k, discard_anomalous): scores [M] float32}`` in grid order.

    Raises:
        ValueError: a K of ``k_grid`` that is not an int >= 1, an entry of ``discard_options``
            that is not a bool (``"no"`` is not False), either of them empty (the entry named);
            no setting fits; bad latents or labels (as :func:`eq4_neighbours`).
    """
    k_grid = [_int_argument(k, f"k_grid[{i}]") for i, k in enumerate(k_grid)]
    discard_options = [_bool_argument(d, f"discard_options[{i}]") for i, d in enumerate(discard_options)]
    if not k_grid or not discard_options:
        raise ValueError(f"k_grid and discard_options need at least one entry each, got {k_grid} and "
                         f"{discard_options}")
    n_bank = unit_rows(bank, "bank").shape[0]  # checks the bank once, before any search
    grid: GridScores = {}
    for discard in discard_options:
        n_kept = _kept_rows(bank_labels, n_bank, discard).size
        for k in k_grid:
            if k <= n_kept - 1:
                grid[(k, discard)] = eq4_neighbours(query_z, bank, bank_labels, k, discard, rule)[0]
    if not grid:
        raise ValueError(f"no K in {k_grid} fits a bank of {n_bank} rows")
    return grid


NO_FINDING_TEXT = "no finding"
"""What a film whose ``finding`` names no finding (``No Finding``, ``normal``...) shows."""


def findings_of(dataset: Any) -> list[str] | None:
    """The findings of each film of a dataset as shown text, or None when its metadata has no ``finding`` column.

    Read by :func:`salad_lite.data.findings.finding_column`: names joined by ``|``
    (``"Effusion|Mass"``), :data:`NO_FINDING_TEXT` for a film that names none.

    Raises:
        ValueError: a missing ``finding`` (None, NaN; its position named).
        TypeError: a ``finding`` that is not text (position named).
    """
    metadata = getattr(dataset, "metadata", None)
    if metadata is None or "finding" not in getattr(metadata, "columns", ()):
        return None
    return ["|".join(names) or NO_FINDING_TEXT for names in finding_column(metadata["finding"], "metadata 'finding'")]


# --------------------------------------------------------------------------- static figures
def _film(dataset: Any, row: int) -> np.ndarray:
    """Film ``row`` of a dataset (sample dicts, ``image`` [1, H, W] in [0, 1]) as uint8 [H, W]."""
    image = dataset[int(row)]["image"]
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image, dtype=np.float64)
    arr = arr[0] if arr.ndim == 3 else arr
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def _label_text(label: int, finding: str) -> str:
    return f"{finding} ({'abnormal' if label == 1 else 'normal'})"


def _show_film(ax: Any, image: np.ndarray, title: str, colour: str, framed: bool) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7, color=colour)
    for spine in ax.spines.values():
        spine.set_visible(framed)
        spine.set_edgecolor(colour)
        spine.set_linewidth(2.5)


def _check_gallery_sets(gallery: FilmGallery, query_set: Any, bank_set: Any) -> None:
    """Refuse datasets that are not the gallery's: lengths (M query films, N bank rows), then the labels
    of the films the gallery names (read from ``.labels`` when the dataset has them).

    Raises:
        ValueError: a length or a label that disagrees (dataset, sizes or row named).
    """
    expected = (("query_set", query_set, len(gallery.scores), "validation films scored"),
                ("bank_set", bank_set, gallery.bank_size, "bank rows"))
    for name, dataset, size, what in expected:
        if size is not None and len(dataset) != size:
            raise ValueError(f"{name} has {len(dataset)} films but the gallery has {size} {what}: pass the "
                             "datasets the gallery was computed on (query_set = the validation split, bank_set = "
                             "the training split)")
    for name, dataset, pairs in (
            ("query_set", query_set, [(f.row, f.label) for f in gallery.films]),
            ("bank_set", bank_set, [(int(r), int(lab)) for f in gallery.films
                                    for r, lab in zip(f.neighbours, f.neighbour_labels)])):
        labels = getattr(dataset, "labels", None)
        if labels is None or callable(labels):
            continue
        labels = np.asarray(labels)
        for row, label in pairs:
            if row >= len(labels):
                raise ValueError(f"{name} has {len(labels)} films but the gallery names its row {row}")
            if int(labels[row]) != label:
                raise ValueError(f"{name} row {row} has label {int(labels[row])} but the gallery's film there has "
                                 f"label {label}: pass the datasets the gallery was computed on")


def film_gallery_figure(gallery: FilmGallery, query_set: Any, bank_set: Any, *, n_films: int = 3,
                        n_neighbours: int = 4, size: float = 1.45) -> Figure:
    """Static view of the film explorer: up to ``n_films`` films at each end, each with its nearest bank films.

    One row per film: the validation film (framed, coloured by its label) with
    score and finding, then its ``n_neighbours`` nearest training films with their
    cosine and finding.

    ``query_set`` and ``bank_set`` must be the datasets the gallery was computed
    on: their lengths are checked against the gallery's M scores and N bank
    rows, and the label of every film shown against the gallery's (swapped or
    other datasets would show the wrong films).

    Raises:
        ValueError: ``n_films`` or ``n_neighbours`` not an int >= 1 (named); a
            dataset whose length or labels do not match the gallery (the dataset,
            the sizes or the first disagreeing row named).
    """
    n_films = _int_argument(n_films, "n_films")
    n_neighbours = _int_argument(n_neighbours, "n_neighbours")
    _check_gallery_sets(gallery, query_set, bank_set)
    films = [f for f in gallery.films if f.rank <= n_films]
    shown = min(n_neighbours, gallery.k)
    fig = Figure(figsize=(max(size * (shown + 1) + 0.3, 5.0), size * 1.3 * len(films) + 0.8))
    axes = fig.subplots(len(films), shown + 1, squeeze=False)
    for r, film in enumerate(films):
        colour = ABNORMAL_COLOUR if film.label == 1 else NORMAL_COLOUR
        _show_film(axes[r][0], _film(query_set, film.row),
                   f"{film.title}\nval {film.row}, A = {film.score:.4g}\n{_label_text(film.label, film.finding)}",
                   colour, True)
        for c in range(shown):
            lab = int(film.neighbour_labels[c])
            _show_film(axes[r][c + 1], _film(bank_set, film.neighbours[c]),
                       f"train {film.neighbours[c]}, cos {film.cosines[c]:.3f}\n"
                       f"{_label_text(lab, film.neighbour_findings[c])}",
                       ABNORMAL_COLOUR if lab == 1 else "black", False)
    policy = "abnormal rows discarded" if gallery.discard_anomalous else "every row kept"
    fig.suptitle(f"Validation films by Eq. 4 score, K = {gallery.k}\n(bank: {policy}, N' = {gallery.bank_rows}); "
                 f"right: the {shown} nearest of the K training films", fontsize=9)
    fig.tight_layout()
    return fig


def _draw_confusion(ax: Any, confusion: Confusion, title: str) -> None:
    matrix = confusion.matrix
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max())))
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=11,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], ["flagged\nnormal", "flagged\nabnormal"], fontsize=7)
    ax.set_yticks([0, 1], ["normal", "abnormal"], fontsize=7)
    ax.set_title(f"{title}\nTPR {confusion.tpr:.2f}, FPR {confusion.fpr:.2f}", fontsize=8)


def confusion_figure(grid: Mapping[tuple[int, bool], Any], labels: Any,
                     settings: Sequence[tuple[int, bool]], percentiles: Sequence[float] = (50, 75, 90), *,
                     size: float = 2.3) -> Figure:
    """Static view of the threshold explorer: one row per (K, discard) setting, one column per percentile.

    Each panel is the confusion matrix of ``score >= percentile p of that setting's
    validation scores``, titled with K, the bank policy, p, the threshold, TPR and FPR.

    Raises:
        ValueError: no settings or percentiles; a setting not in ``grid``; as :func:`confusion_at`.
    """
    if not settings or not percentiles:
        raise ValueError("confusion_figure needs at least one setting and one percentile")
    missing = [s for s in settings if tuple(s) not in grid]
    if missing:
        raise ValueError(f"settings {missing} are not in the score grid {sorted(grid)}")
    fig = Figure(figsize=(size * len(percentiles) + 0.4, size * 1.15 * len(settings) + 0.5))
    axes = fig.subplots(len(settings), len(percentiles), squeeze=False)
    for r, (k, discard) in enumerate(settings):
        scores = grid[(k, discard)]
        for c, p in enumerate(percentiles):
            t = threshold_at(scores, p, "percentile")
            policy = "discard" if discard else "keep all"
            _draw_confusion(axes[r][c], confusion_at(scores, labels, t),
                            f"K = {k}, {policy}, p{p:g} (t = {t:.4g})")
    fig.suptitle("Validation confusion matrices: flagged abnormal when score >= threshold", fontsize=9)
    fig.tight_layout()
    return fig


def _png(fig: Figure, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --------------------------------------------------------------------------- widgets
def widgets_available() -> bool:
    """True when ipywidgets can be imported (the live explorers need it)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _thumbnail(image: np.ndarray, side: int = 128) -> bytes:
    """PNG bytes of a uint8 [H, W] film, scaled (nearest) so that its longer side is ``side`` px."""
    from PIL import Image

    picture = Image.fromarray(image)
    scale = side / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="png")
    return buffer.getvalue()


def _film_caption(film: GalleryFilm) -> str:
    colour = ABNORMAL_COLOUR if film.label == 1 else NORMAL_COLOUR
    return (f"<b>{html.escape(film.title)}</b>: validation film {film.row}, Eq. 4 score "
            f"<b>{film.score:.6g}</b>, <span style='color:{colour}'>"
            f"{html.escape(_label_text(film.label, film.finding))}</span>")


def film_explorer_widget(gallery: FilmGallery, query_set: Any, bank_set: Any, *, n_neighbours: int = 5) -> Any:
    """An ipywidgets ``VBox``: a film chooser, the film's caption and its nearest training films.

    Children: ``[Dropdown (films), HTML (caption), HBox (film + neighbours: VBox(Image, HTML))]``.

    Raises:
        ImportError: ipywidgets is not installed.
        ValueError: ``n_neighbours`` not an int >= 1; datasets that are not the gallery's
            (as :func:`film_gallery_figure`).
    """
    import ipywidgets as widgets

    n_neighbours = _int_argument(n_neighbours, "n_neighbours")
    _check_gallery_sets(gallery, query_set, bank_set)
    shown = min(n_neighbours, gallery.k)
    options = [(f"{f.title} (A = {f.score:.4g}, {f.finding})", i) for i, f in enumerate(gallery.films)]
    chooser = widgets.Dropdown(options=options, value=0, description="film",
                               layout=widgets.Layout(width="560px"))
    caption = widgets.HTML()
    images = [widgets.Image(format="png", layout=widgets.Layout(width="120px", height="120px"))
              for _ in range(shown + 1)]
    labels = [widgets.HTML() for _ in range(shown + 1)]
    tiles = widgets.HBox([widgets.VBox([im, lab]) for im, lab in zip(images, labels)])

    def update(change: Any = None) -> None:
        film = gallery.films[chooser.value]
        caption.value = (_film_caption(film) + f"<br>its {shown} nearest of the K = {gallery.k} training films "
                         f"(N' = {gallery.bank_rows}) that its score is computed from:")
        images[0].value = _thumbnail(_film(query_set, film.row))
        labels[0].value = f"<small>validation {film.row}</small>"
        for c in range(shown):
            lab = int(film.neighbour_labels[c])
            images[c + 1].value = _thumbnail(_film(bank_set, film.neighbours[c]))
            labels[c + 1].value = (f"<small>train {film.neighbours[c]}, cos {film.cosines[c]:.3f}<br>"
                                   f"{html.escape(_label_text(lab, film.neighbour_findings[c]))}</small>")

    chooser.observe(update, names="value")
    update()
    return widgets.VBox([chooser, caption, tiles])


def _set_range(slider: Any, low: float, high: float, value: float, step: float) -> None:
    """Move a FloatSlider to [low, high] at ``value`` (in that range) without the slider clamping it on the way."""
    slider.min = min(low, slider.min)  # widen first, so that min <= value <= max holds after every step
    slider.max = max(high, slider.max)
    slider.value = value
    slider.min, slider.max, slider.step = low, high, step


def _confusion_html(confusion: Confusion, scores: np.ndarray, labels: np.ndarray) -> str:
    m = confusion.matrix
    cell = "style='border:1px solid #999;padding:4px 12px;text-align:right'"
    return (f"<table style='border-collapse:collapse'><tr><th></th><th {cell}>flagged normal</th>"
            f"<th {cell}>flagged abnormal</th></tr>"
            f"<tr><th {cell}>normal</th><td {cell}>{m[0, 0]}</td><td {cell}>{m[0, 1]}</td></tr>"
            f"<tr><th {cell}>abnormal</th><td {cell}>{m[1, 0]}</td><td {cell}>{m[1, 1]}</td></tr></table>"
            f"threshold {confusion.threshold:.6g}: TPR {confusion.tpr:.3f}, FPR {confusion.fpr:.3f}, "
            f"precision {confusion.precision:.3f}; validation AUC of this setting {auc(labels, scores):.4f}")


def threshold_explorer_widget(grid: Mapping[tuple[int, bool], Any], labels: Any, *, k: int | None = None,
                              discard_anomalous: bool | None = None, percentile: float = 90.0) -> Any:
    """An ipywidgets ``VBox``: K, bank policy, threshold mode and value -> validation confusion matrix.

    Children: ``[Dropdown K, ToggleButtons discard, ToggleButtons mode, FloatSlider value, HTML result]``.
    The result is :func:`confusion_at` of the chosen setting's scores at
    :func:`threshold_at` of the slider. Switching the mode keeps the threshold.

    Raises:
        ImportError: ipywidgets is not installed.
        ValueError: an empty grid; labels of another length than the scores; (k, discard) not in the grid;
            a ``percentile`` that is not a finite number in [0, 100] (refused, not clamped by the slider).
    """
    import ipywidgets as widgets

    percentile = _percentile(percentile)
    if not grid:
        raise ValueError("the score grid is empty")
    truth = binary_labels(labels, "threshold explorer labels", need_both=False)
    for key, scores in grid.items():
        if len(scores) != truth.shape[0]:
            raise ValueError(f"setting {key}: {len(scores)} scores for {truth.shape[0]} labels")
    first = next(iter(grid))
    k = first[0] if k is None else k
    discard_anomalous = first[1] if discard_anomalous is None else discard_anomalous
    if (k, discard_anomalous) not in grid:
        raise ValueError(f"(K = {k}, discard_anomalous = {discard_anomalous}) is not in the grid {sorted(grid)}")
    policies = list(dict.fromkeys(d for _, d in grid))

    def ks_for(discard: bool) -> list[int]:
        return sorted(kk for kk, d in grid if d == discard)

    discard_w = widgets.ToggleButtons(options=[("discard abnormal bank rows" if d else "keep every row", d)
                                               for d in policies], value=discard_anomalous, description="bank")
    k_w = widgets.Dropdown(options=ks_for(discard_anomalous), value=k, description="K")
    mode_w = widgets.ToggleButtons(options=["percentile", "absolute"], value="percentile",
                                   description="threshold")
    value_w = widgets.FloatSlider(value=percentile, min=0.0, max=100.0, step=0.5, description="value",
                                  readout_format=".4g", continuous_update=False,
                                  layout=widgets.Layout(width="560px"))
    result = widgets.HTML()

    def scores_now() -> np.ndarray:
        return np.asarray(grid[(k_w.value, discard_w.value)], dtype=np.float64)

    def refresh(change: Any = None) -> None:
        scores = scores_now()
        t = threshold_at(scores, value_w.value, mode_w.value)
        result.value = _confusion_html(confusion_at(scores, truth, t), scores, truth)

    def on_discard(change: Any) -> None:
        options = ks_for(discard_w.value)
        keep = k_w.value if k_w.value in options else options[0]
        k_w.options = options  # resets the value to the first option
        k_w.value = keep
        refresh()

    def on_mode(change: Any) -> None:
        scores = scores_now()
        old = threshold_at(scores, value_w.value, change["old"])  # the threshold shown so far
        if change["new"] == "absolute":
            low, high = float(scores.min()), float(scores.max())
            _set_range(value_w, low, high, min(max(old, low), high), (high - low) / 200 or 1e-9)
        else:
            _set_range(value_w, 0.0, 100.0, float(100.0 * np.mean(scores < old)), 0.5)
        refresh()

    discard_w.observe(on_discard, names="value")
    k_w.observe(refresh, names="value")
    mode_w.observe(on_mode, names="value")
    value_w.observe(refresh, names="value")
    refresh()
    return widgets.VBox([k_w, discard_w, mode_w, value_w, result])


# --------------------------------------------------------------------------- one output, live or static
def explorer_bundle(widget: Any | None, figure: Figure, name: str, caption: str) -> dict[str, Any]:
    """The display bundle of an explorer: the live widget (if any) plus its static figure.

    Keys: ``text/plain`` (``caption``), ``text/html`` (``<figure class="salad-explorer"
    data-explorer="<name>">`` holding the figure as an inline PNG and the caption) and,
    with a widget, ``application/vnd.jupyter.widget-view+json``. Frontends pick the
    richest type they can render: Jupyter with ipywidgets the widget, the static
    book (widget outputs dropped by ``scripts/build_book.py``) the figure.
    """
    data = base64.b64encode(_png(figure)).decode("ascii")
    alt = html.escape(caption, quote=True)
    bundle: dict[str, Any] = {
        "text/plain": caption,
        "text/html": (f'<figure class="{EXPLORER_CLASS}" data-explorer="{html.escape(name, quote=True)}">'
                      f'<img alt="{alt}" src="data:image/png;base64,{data}" style="max-width:100%">'
                      f"<figcaption>{html.escape(caption)}</figcaption></figure>"),
    }
    if widget is not None:
        bundle[WIDGET_MIME] = widget._repr_mimebundle_()[WIDGET_MIME]
    return bundle


def _display(bundle: dict[str, Any]) -> None:
    from IPython.display import display

    display(bundle, raw=True)


def show_explorer(widget: Any | None, figure: Figure, name: str, caption: str) -> None:
    """Display :func:`explorer_bundle` as one output (live widget in Jupyter, static figure elsewhere)."""
    _display(explorer_bundle(widget, figure, name, caption))


def film_explorer(trainer: Any, k: int, discard_anomalous: bool, *, n: int = 5, n_neighbours: int = 5,
                  static_films: int = 3, val_z: Any = None, bank: Any = None, show: bool = True) -> FilmGallery:
    """Chapter 5's film explorer on the trainer's VALIDATION split (display only; it chooses nothing).

    Ranks the validation films by Eq. 4 (``k``, ``discard_anomalous``,
    ``trainer.cfg.score.rule``) and shows the ``n`` most and least anomalous with
    their nearest training films: a live widget in Jupyter, a static figure of
    ``static_films`` per end elsewhere (:func:`explorer_bundle`). The test split is
    never touched. ``val_z`` [M, d] / ``bank`` [N, d] reuse latents already computed
    (default: ``trainer.embed(trainer.val_set)`` / ``trainer.scoring_bank()``).

    Raises:
        ValueError: as :func:`film_gallery_data`.
    """
    val_z = trainer.embed(trainer.val_set) if val_z is None else val_z
    bank = trainer.scoring_bank() if bank is None else bank
    gallery = film_gallery_data(val_z, bank, trainer.train_labels, k=k, discard_anomalous=discard_anomalous,
                                query_labels=trainer.val_labels, n=n, rule=trainer.cfg.score.rule,
                                query_findings=findings_of(trainer.val_set),
                                bank_findings=findings_of(trainer.train_set))
    if show:
        figure = film_gallery_figure(gallery, trainer.val_set, trainer.train_set, n_films=min(static_films, n),
                                     n_neighbours=min(4, n_neighbours))
        widget = (film_explorer_widget(gallery, trainer.val_set, trainer.train_set, n_neighbours=n_neighbours)
                  if widgets_available() else None)
        caption = (f"Film explorer (validation split, K = {gallery.k}): the {n} most and least anomalous "
                   f"validation films and their nearest training films. Static view; in Jupyter with "
                   f"ipywidgets a menu steps through all {2 * n}.")
        show_explorer(widget, figure, "films", caption)
    return gallery


def threshold_explorer(trainer: Any, k: int, discard_anomalous: bool, *, val_z: Any = None, bank: Any = None,
                       percentiles: Sequence[float] = (50, 75, 90), show: bool = True) -> GridScores:
    """Chapter 5's K / bank / threshold explorer on the trainer's VALIDATION split (display only).

    Scores the validation split for every (K, discard) of ``cfg.score.k_grid`` x
    ``cfg.score.discard_options`` that fits the bank (:func:`score_grid`) and shows
    the confusion matrix of a chosen threshold: a live widget in Jupyter (starting
    at ``k``, ``discard_anomalous``), elsewhere a static figure of the chosen
    setting and the other bank policy at ``percentiles``. The test split is never
    touched. ``val_z`` / ``bank`` as :func:`film_explorer`.

    Returns:
        The score grid ``{(k, discard): scores [M]}``.

    Raises:
        ValueError: as :func:`score_grid`; (k, discard_anomalous) not in the grid.
    """
    val_z = trainer.embed(trainer.val_set) if val_z is None else val_z
    bank = trainer.scoring_bank() if bank is None else bank
    score_cfg = trainer.cfg.score
    grid = score_grid(val_z, bank, trainer.train_labels, score_cfg.k_grid, score_cfg.discard_options,
                      score_cfg.rule)
    if (k, discard_anomalous) not in grid:
        raise ValueError(f"(K = {k}, discard_anomalous = {discard_anomalous}) is not in the grid {sorted(grid)}")
    if show:
        settings = [(k, discard_anomalous)]
        other = (k, not discard_anomalous)
        if other in grid:
            settings.append(other)
        figure = confusion_figure(grid, trainer.val_labels, settings, percentiles)
        widget = (threshold_explorer_widget(grid, trainer.val_labels, k=k, discard_anomalous=discard_anomalous,
                                            percentile=float(percentiles[-1]))
                  if widgets_available() else None)
        caption = (f"Threshold explorer (validation split): confusion matrices at the "
                   f"{', '.join(f'{p:g}' for p in percentiles)}th percentiles of the validation scores. "
                   f"Static view; in Jupyter with ipywidgets K, the bank policy and the threshold are controls.")
        show_explorer(widget, figure, "threshold", caption)
    return grid
