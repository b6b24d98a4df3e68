"""salad_lite.explorers: the pure functions behind chapter 5's explorers, their widgets and static figures."""

from __future__ import annotations

import base64
import builtins
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from salad_lite import explorers
from salad_lite.config import ScoreConfig
from salad_lite.scorer import SaladScorer
from tests.conftest import ArrayDataset


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def latents() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    bank = _unit(rng.normal(size=(40, 8)))
    bank_labels = np.r_[np.zeros(34), np.ones(6)].astype(np.int64)
    queries = _unit(rng.normal(size=(12, 8)))
    query_labels = np.r_[np.zeros(7), np.ones(5)].astype(np.int64)
    return {"bank": bank, "bank_labels": bank_labels, "queries": queries, "query_labels": query_labels}


# --------------------------------------------------------------------------- confusion_at / threshold_at
def test_confusion_matches_a_plain_reference() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(200)
    labels = (rng.random(200) < 0.3).astype(int)
    for threshold in (-1.0, 0.0, 0.25, float(scores[17]), 0.9, 2.0):
        result = explorers.confusion_at(scores, labels, threshold)
        tp = fp = tn = fn = 0
        for s, y in zip(scores, labels):  # a loop, the plain definition
            flagged = s >= threshold
            tp += flagged and y == 1
            fp += flagged and y == 0
            tn += (not flagged) and y == 0
            fn += (not flagged) and y == 1
        assert (result.tp, result.fp, result.tn, result.fn) == (tp, fp, tn, fn)
        assert result.matrix.tolist() == [[tn, fp], [fn, tp]]
        assert result.tpr == pytest.approx(tp / (tp + fn)) and result.fpr == pytest.approx(fp / (fp + tn))
    from sklearn.metrics import confusion_matrix

    t = 0.5
    np.testing.assert_array_equal(explorers.confusion_at(scores, labels, t).matrix,
                                  confusion_matrix(labels, (scores >= t).astype(int), labels=[0, 1]))


def test_confusion_with_one_class_has_nan_rate() -> None:
    result = explorers.confusion_at([0.1, 0.2], [0, 0], 0.15)
    assert (result.fp, result.tn) == (1, 1) and result.fpr == 0.5 and math.isnan(result.tpr)


@pytest.mark.parametrize("threshold", [math.nan, math.inf, "0.5", None, True])
def test_confusion_refuses_a_bad_threshold(threshold: object) -> None:
    with pytest.raises(ValueError, match="threshold"):
        explorers.confusion_at([0.1, 0.2], [0, 1], threshold)  # type: ignore[arg-type]


def test_confusion_refuses_bad_scores_and_labels() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        explorers.confusion_at([0.1, 0.2, 0.3], [0, 1], 0.2)
    with pytest.raises(ValueError, match="NaN or inf"):
        explorers.confusion_at([0.1, math.nan], [0, 1], 0.2)
    with pytest.raises(ValueError, match="labels 0"):
        explorers.confusion_at([0.1, 0.2], [0, 2], 0.2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        explorers.confusion_at([], [], 0.2)


def test_threshold_at_percentile_and_absolute() -> None:
    scores = np.arange(101, dtype=float)
    assert explorers.threshold_at(scores, 90) == 90.0
    assert explorers.threshold_at(scores, 0) == 0.0 and explorers.threshold_at(scores, 100) == 100.0
    assert explorers.threshold_at(scores, 3.5, "absolute") == 3.5
    assert explorers.confusion_at(scores, np.zeros(101), explorers.threshold_at(scores, 90)).fp == 11
    for bad, match in ((101, r"\[0, 100\]"), (-1, r"\[0, 100\]"), (math.nan, "finite")):
        with pytest.raises(ValueError, match=match):
            explorers.threshold_at(scores, bad)
    with pytest.raises(ValueError, match="unknown threshold mode"):
        explorers.threshold_at(scores, 50, "quantile")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- neighbours and the gallery
@pytest.mark.parametrize("discard", [True, False])
def test_eq4_neighbours_scores_equal_the_scorer_and_neighbours_are_nearest_by_cosine(
        latents: dict[str, np.ndarray], discard: bool) -> None:
    k = 5
    scores, rows, cosines = explorers.eq4_neighbours(latents["queries"], latents["bank"], latents["bank_labels"],
                                                     k, discard)
    scorer = SaladScorer(k=k, discard_anomalous=discard).fit(latents["bank"], latents["bank_labels"])
    np.testing.assert_allclose(scores, scorer.decision_function(latents["queries"]), rtol=1e-6, atol=1e-9)
    allowed = np.flatnonzero(latents["bank_labels"] == 0) if discard else np.arange(len(latents["bank"]))
    cos = latents["queries"] @ latents["bank"].T  # [M, N], the plain definition
    for i in range(len(latents["queries"])):
        expected = allowed[np.argsort(-cos[i, allowed], kind="stable")[:k]]
        assert rows[i].tolist() == expected.tolist()
        np.testing.assert_allclose(cosines[i], cos[i, expected], atol=1e-5)
    assert rows.shape == cosines.shape == (len(latents["queries"]), k)
    if discard:
        assert (latents["bank_labels"][rows] == 0).all()


def test_eq4_neighbours_refuse_k_beyond_the_bank_and_bad_inputs(latents: dict[str, np.ndarray]) -> None:
    q, bank, labels = latents["queries"], latents["bank"], latents["bank_labels"]
    with pytest.raises(ValueError, match=r"K = 34 does not fit the bank: 34 rows are kept .* K <= N' - 1 = 33"):
        explorers.eq4_neighbours(q, bank, labels, 34, True)
    explorers.eq4_neighbours(q, bank, labels, 39, False)  # 40 rows kept: K = 39 fits
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="K must be an int"):
            explorers.eq4_neighbours(q, bank, labels, k, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bank_labels has 39 entries but the bank has 40 rows"):
        explorers.eq4_neighbours(q, bank, labels[:-1], 3, True)
    broken = q.copy()
    broken[2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        explorers.eq4_neighbours(broken, bank, labels, 3, True)


def test_gallery_orders_most_and_least_anomalous(latents: dict[str, np.ndarray]) -> None:
    findings = [f"finding {i}" for i in range(12)]
    bank_findings = [f"train finding {i}" for i in range(40)]
    gallery = explorers.film_gallery_data(latents["queries"], latents["bank"], latents["bank_labels"], k=4,
                                          discard_anomalous=True, query_labels=latents["query_labels"], n=3,
                                          query_findings=findings, bank_findings=bank_findings)
    scores = gallery.scores
    assert [f.end for f in gallery.films] == ["most"] * 3 + ["least"] * 3
    assert [f.rank for f in gallery.films] == [1, 2, 3, 1, 2, 3]
    most, least = gallery.films[:3], gallery.films[3:]
    assert [f.row for f in most] == np.argsort(-scores, kind="stable")[:3].tolist()
    assert [f.row for f in least] == np.argsort(scores, kind="stable")[:3].tolist()
    assert [f.score for f in most] == sorted((f.score for f in most), reverse=True)
    assert max(f.score for f in least) <= min(f.score for f in most)
    assert most[0].score == pytest.approx(scores.max()) and least[0].score == pytest.approx(scores.min())
    film = most[0]
    assert film.finding == f"finding {film.row}" and film.label == latents["query_labels"][film.row]
    assert film.neighbour_findings == tuple(f"train finding {r}" for r in film.neighbours)
    cos = latents["bank"][: 34] @ latents["queries"][film.row]  # normal rows are 0..33
    assert film.neighbours.tolist() == np.argsort(-cos, kind="stable")[:4].tolist()
    assert gallery.k == 4 and gallery.bank_rows == 34 and film.title == "most anomalous #1"


def test_gallery_ties_rank_by_row_and_default_findings() -> None:
    bank = _unit(np.random.default_rng(3).normal(size=(6, 4)))
    queries = np.repeat(bank[:1], 4, axis=0)  # four identical queries: equal scores
    gallery = explorers.film_gallery_data(queries, bank, np.zeros(6, int), k=2, discard_anomalous=True,
                                          query_labels=[0, 1, 0, 1], n=2)
    assert [f.row for f in gallery.films] == [0, 1, 0, 1]
    assert [f.finding for f in gallery.films[:2]] == ["normal", "abnormal"]


def test_gallery_refuses_bad_inputs(latents: dict[str, np.ndarray]) -> None:
    args = (latents["queries"], latents["bank"], latents["bank_labels"])
    ok = {"k": 3, "discard_anomalous": True, "query_labels": latents["query_labels"]}
    with pytest.raises(ValueError, match="query_labels has 11 entries but query_z has 12 rows"):
        explorers.film_gallery_data(*args, **{**ok, "query_labels": latents["query_labels"][:-1]})
    for n in (0, 7, 2.5):
        with pytest.raises(ValueError, match=r"n \(films at each end\) must be an int in 1..6"):
            explorers.film_gallery_data(*args, **ok, n=n)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query_findings has 2 entries for 12 films"):
        explorers.film_gallery_data(*args, **ok, query_findings=["a", "b"])
    with pytest.raises(ValueError, match="K = 50 does not fit"):
        explorers.film_gallery_data(*args, **{**ok, "k": 50})


def test_score_grid_skips_ks_the_bank_cannot_serve(latents: dict[str, np.ndarray]) -> None:
    grid = explorers.score_grid(latents["queries"], latents["bank"], latents["bank_labels"], (1, 5, 33, 34, 39),
                                (True, False))
    assert list(grid) == [(1, True), (5, True), (33, True), (1, False), (5, False), (33, False), (34, False),
                          (39, False)]
    scorer = SaladScorer(k=5, discard_anomalous=False).fit(latents["bank"], latents["bank_labels"])
    np.testing.assert_allclose(grid[(5, False)], scorer.decision_function(latents["queries"]), rtol=1e-6)
    with pytest.raises(ValueError, match="no K in"):
        explorers.score_grid(latents["queries"], latents["bank"], latents["bank_labels"], (100,), (True,))


# --------------------------------------------------------------------------- figures, widgets, the bundle
@pytest.fixture(scope="module")
def tiny_trainer(latents: dict[str, np.ndarray]) -> SimpleNamespace:
    """What the chapter-level explorers read from a SaladTrainer, without training."""
    rng = np.random.default_rng(4)
    train = ArrayDataset(rng.integers(0, 255, (40, 16, 16), dtype=np.uint8), latents["bank_labels"], "t")
    val = ArrayDataset(rng.integers(0, 255, (12, 16, 16), dtype=np.uint8), latents["query_labels"], "v")
    train.metadata["finding"] = np.where(latents["bank_labels"] == 1, "Mass", "No Finding")
    embeds = {id(train): latents["bank"], id(val): latents["queries"]}
    return SimpleNamespace(train_set=train, val_set=val, train_labels=latents["bank_labels"],
                           val_labels=latents["query_labels"],
                           cfg=SimpleNamespace(score=ScoreConfig(k_grid=(1, 5, 10, 50), bank="embeddings")),
                           embed=lambda dataset: torch.from_numpy(embeds[id(dataset)]),
                           scoring_bank=lambda: torch.from_numpy(latents["bank"]))


def test_findings_shown_come_from_the_one_parser(tiny_trainer: SimpleNamespace) -> None:
    shown = explorers.findings_of(tiny_trainer.train_set)
    labels = tiny_trainer.train_labels
    assert shown == ["Mass" if label else explorers.NO_FINDING_TEXT for label in labels]
    assert explorers.findings_of(tiny_trainer.val_set) is None  # no 'finding' column: the labels are shown
    films = SimpleNamespace(metadata=pd.DataFrame({"finding": ["Effusion | Mass", "NORMAL", None]}))
    with pytest.raises(ValueError, match=r"metadata 'finding' of image 2 is missing \((None|nan)\)"):
        explorers.findings_of(films)
    films.metadata["finding"] = ["Effusion | Mass", "NORMAL", ""]
    assert explorers.findings_of(films) == ["Effusion|Mass", "no finding", "no finding"]


def test_static_figures(tiny_trainer: SimpleNamespace) -> None:
    t = tiny_trainer
    gallery = explorers.film_explorer(t, 5, True, n=4, show=False)
    fig = explorers.film_gallery_figure(gallery, t.val_set, t.train_set, n_films=2, n_neighbours=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * 4  # 2 films at each end x (film + 3 neighbours)
    assert "most anomalous #1" in fig.axes[0].get_title()
    grid = explorers.threshold_explorer(t, 5, True, show=False)
    assert set(grid) == {(1, True), (5, True), (10, True), (1, False), (5, False), (10, False)}
    fig = explorers.confusion_figure(grid, t.val_labels, [(5, True), (5, False)], (50, 90))
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.get_title()]) == 4
    assert "TPR" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="not in the score grid"):
        explorers.confusion_figure(grid, t.val_labels, [(50, True)])
    with pytest.raises(ValueError, match="not in the grid"):
        explorers.threshold_explorer(t, 50, True, show=False)


def test_score_grid_refuses_settings_that_are_not_ks_and_bools(latents: dict[str, np.ndarray]) -> None:
    args = (latents["queries"], latents["bank"], latents["bank_labels"])
    with pytest.raises(ValueError, match=r"discard_options\[0\] must be True or False, got 'no'"):
        explorers.score_grid(*args, (5,), ["no"])  # bool("no") is True: never silently so
    with pytest.raises(ValueError, match=r"discard_options\[1\] must be True or False, got 0"):
        explorers.score_grid(*args, (5,), [True, 0])
    for bad in ("5", 5.0, True, 0):
        with pytest.raises(ValueError, match=rf"k_grid\[1\] must be an int >= 1, got {bad!r}"):
            explorers.score_grid(*args, [1, bad], (True,))
    with pytest.raises(ValueError, match="need at least one entry each"):
        explorers.score_grid(*args, (), (True,))
    assert list(explorers.score_grid(*args, [np.int64(5)], [np.bool_(False)])) == [(5, False)]
    with pytest.raises(ValueError, match=r"discard_anomalous must be True or False, got 'no'"):
        explorers.eq4_neighbours(*args, 5, "no")  # type: ignore[arg-type]


def test_explorer_arguments_out_of_range_are_refused_not_clamped(tiny_trainer: SimpleNamespace) -> None:
    pytest.importorskip("ipywidgets")
    t = tiny_trainer
    grid = explorers.threshold_explorer(t, 5, True, show=False)
    for bad, match in ((150, r"percentile must lie in \[0, 100\], got 150"), (-1, r"must lie in \[0, 100\]"),
                       (math.nan, "percentile must be finite"), ("90", "percentile must be a number")):
        with pytest.raises(ValueError, match=match):
            explorers.threshold_explorer_widget(grid, t.val_labels, k=5, discard_anomalous=True, percentile=bad)
    gallery = explorers.film_explorer(t, 5, True, n=3, show=False)
    with pytest.raises(ValueError, match=r"n_neighbours must be an int >= 1, got 2.5"):
        explorers.film_explorer_widget(gallery, t.val_set, t.train_set, n_neighbours=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n_films must be an int >= 1, got '2'"):
        explorers.film_gallery_figure(gallery, t.val_set, t.train_set, n_films="2")  # type: ignore[arg-type]


def test_widgets_are_built_and_react(tiny_trainer: SimpleNamespace) -> None:
    widgets = pytest.importorskip("ipywidgets")
    t = tiny_trainer
    assert explorers.widgets_available()
    gallery = explorers.film_explorer(t, 5, True, n=3, show=False)
    ui = explorers.film_explorer_widget(gallery, t.val_set, t.train_set, n_neighbours=4)
    assert isinstance(ui, widgets.VBox)
    chooser, caption, tiles = ui.children
    assert isinstance(chooser, widgets.Dropdown) and len(chooser.options) == 6
    assert len(tiles.children) == 5 and bytes(tiles.children[0].children[0].value).startswith(b"\x89PNG")
    first = caption.value
    assert "most anomalous #1" in first
    chooser.value = 3
    assert "least anomalous #1" in caption.value and caption.value != first

    grid = explorers.threshold_explorer(t, 5, True, show=False)
    ui = explorers.threshold_explorer_widget(grid, t.val_labels, k=5, discard_anomalous=True, percentile=50)
    k_w, discard_w, mode_w, value_w, result = ui.children
    scores = grid[(5, True)]
    expected = explorers.confusion_at(scores, t.val_labels, np.percentile(scores, 50))
    assert f"<td style='border:1px solid #999;padding:4px 12px;text-align:right'>{expected.tp}</td>" in result.value
    assert f"TPR {expected.tpr:.3f}" in result.value
    discard_w.value = False
    assert k_w.options == (1, 5, 10) and k_w.value == 5
    mode_w.value = "absolute"  # the threshold is kept, the slider now in score units
    assert value_w.min == pytest.approx(float(grid[(5, False)].min()))
    value_w.value = float(value_w.max)
    top = explorers.confusion_at(grid[(5, False)], t.val_labels, float(value_w.max))
    assert f"FPR {top.fpr:.3f}" in result.value and top.tp + top.fp == 1
    mode_w.value = "percentile"
    assert 0.0 <= value_w.value <= 100.0 and value_w.max == 100.0


def test_bundle_carries_widget_and_static_figure(tiny_trainer: SimpleNamespace,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ipywidgets")
    shown: list[dict] = []
    monkeypatch.setattr(explorers, "_display", shown.append)
    explorers.film_explorer(tiny_trainer, 5, True, n=3)
    explorers.threshold_explorer(tiny_trainer, 5, True)
    assert [set(b) for b in shown] == [{"text/plain", "text/html", explorers.WIDGET_MIME}] * 2
    for bundle, name in zip(shown, ("films", "threshold")):
        html = bundle["text/html"]
        assert f'<figure class="salad-explorer" data-explorer="{name}">' in html
        data = html.split("data:image/png;base64,")[1].split('"')[0]
        assert base64.b64decode(data).startswith(b"\x89PNG")
        assert "validation" in bundle["text/plain"] and "test" not in bundle["text/plain"]
        assert set(bundle[explorers.WIDGET_MIME]) == {"model_id", "version_major", "version_minor"}


def test_without_ipywidgets_the_static_figure_alone_is_shown(tiny_trainer: SimpleNamespace,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_widgets(name: str, *args: object, **kwargs: object) -> object:
        if name == "ipywidgets" or name.startswith("ipywidgets."):
            raise ImportError("no ipywidgets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_widgets)
    shown: list[dict] = []
    monkeypatch.setattr(explorers, "_display", shown.append)
    assert not explorers.widgets_available()
    explorers.threshold_explorer(tiny_trainer, 5, False)
    assert set(shown[0]) == {"text/plain", "text/html"}
    bundle = explorers.explorer_bundle(None, Figure(), "x", "a <caption>")
    assert "a &lt;caption&gt;" in bundle["text/html"] and explorers.WIDGET_MIME not in bundle


def test_confusion_reads_labels_as_the_metrics_do() -> None:
    as_bools = explorers.confusion_at([0.1, 0.2], np.array([False, True]), 0.15)  # as metrics.auc reads them
    assert as_bools == explorers.confusion_at([0.1, 0.2], [0, 1], 0.15)
    with pytest.raises(ValueError, match=r"confusion_at needs labels 0 \(normal\) and 1 \(abnormal\); got classes \[0, 2\]"):
        explorers.confusion_at([0.1, 0.2], [0, 2], 0.15)


def test_gallery_refuses_missing_findings(latents: dict[str, np.ndarray]) -> None:
    args = (latents["queries"], latents["bank"], latents["bank_labels"])
    ok = {"k": 3, "discard_anomalous": True, "query_labels": latents["query_labels"]}
    for missing in (None, float("nan")):
        findings = ["Mass"] * 12
        findings[4] = missing  # type: ignore[call-overload]
        with pytest.raises(ValueError, match=r"query_findings has 1 missing entry \(None/NaN\), first at position 4"):
            explorers.film_gallery_data(*args, **ok, query_findings=findings)
    with pytest.raises(ValueError, match="bank_findings has 1 missing entry"):
        explorers.film_gallery_data(*args, **ok, bank_findings=[None] + ["Mass"] * 39)


def test_gallery_figure_refuses_datasets_that_are_not_the_gallerys(tiny_trainer: SimpleNamespace) -> None:
    t = tiny_trainer
    gallery = explorers.film_explorer(t, 5, True, n=4, show=False)
    with pytest.raises(ValueError, match="query_set has 40 films but the gallery has 12 validation films scored"):
        explorers.film_gallery_figure(gallery, t.train_set, t.val_set)  # swapped
    rng = np.random.default_rng(9)
    other = ArrayDataset(rng.integers(0, 255, (12, 16, 16), dtype=np.uint8), 1 - t.val_labels, "o")
    with pytest.raises(ValueError, match=r"query_set row \d+ has label \d but the gallery's film there has label"):
        explorers.film_gallery_figure(gallery, other, t.train_set)  # same size, other films
    with pytest.raises(ValueError, match="bank_set has 12 films but the gallery has 40 bank rows"):
        explorers.film_gallery_figure(gallery, t.val_set, t.val_set)
