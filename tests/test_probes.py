"""probes: the cross-validated k-NN probe of per-image targets, the targets of a split, the book's sentences."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from salad_lite import probes, viz
from salad_lite.data.base import subset
from salad_lite.data.nih import NIHChestXray
from salad_lite.data.registry import ensure_embedded
from salad_lite.synth import CHEST_MANIFEST, CHEST_METADATA

matplotlib.use("Agg")


def _sphere(n: int = 240, d: int = 8, seed: int = 0) -> np.ndarray:
    """n random unit vectors in d dimensions."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_function_of_the_latent_is_predicted_and_noise_is_not() -> None:
    z = _sphere()
    rng = np.random.default_rng(1)
    targets = pd.DataFrame({"known": 3.0 * z[:, 0] + z[:, 1] ** 2,  # a smooth function of the direction
                            "random": rng.normal(size=len(z))})
    table = probes.latent_predictability(torch.from_numpy(z * 5.0), targets, k=10)  # norms do not matter
    assert list(table.columns) == ["target", "kind", "score", "baseline", "n"]
    scores = table.set_index("target")["score"]
    assert table["kind"].tolist() == ["r2", "r2"] and table["baseline"].tolist() == [0.0, 0.0]
    assert scores["known"] > 0.8
    assert scores["random"] < 0.1
    assert (table["n"] == len(z)).all()


def test_classification_accuracy_beside_the_majority_rate() -> None:
    z = _sphere(n=200, d=4)
    rng = np.random.default_rng(2)
    random_labels = (rng.random(200) < 0.3).astype(int)  # 0/1 numbers: classified, not regressed
    targets = pd.DataFrame({"side": np.where(z[:, 0] > 0, "left", "right"),
                            "random": random_labels,
                            "three": np.digitize(z[:, 1], [-0.3, 0.3])})
    table = probes.latent_predictability(z, targets, k=9)
    acc = table[table["kind"] == "accuracy"].set_index("target")
    assert acc.loc["side", "score"] > 0.9
    assert acc.loc["random", "baseline"] == pytest.approx(max(random_labels.mean(), 1 - random_labels.mean()))
    assert acc.loc["random", "score"] < acc.loc["random", "baseline"] + 0.1
    # the three-valued number is continuous by the rule: R², no accuracy row
    assert table.set_index("target").loc["three", "kind"] == "r2"
    three = probes.latent_predictability(z, targets[["three"]], k=9, kinds={"three": "classification"})
    counts = np.bincount(targets["three"])
    assert three["kind"].tolist() == ["accuracy"] and three["baseline"].iloc[0] == pytest.approx(counts.max() / 200)
    # two classes get an AUC row, baseline 0.5
    auc = table[table["kind"] == "auc"].set_index("target")
    assert sorted(auc.index) == ["random", "side"] and (auc["baseline"] == 0.5).all()
    assert auc.loc["side", "score"] > 0.95 and abs(auc.loc["random", "score"] - 0.5) < 0.15


def test_label_auc_and_accuracy_match_a_hand_made_reference() -> None:
    """Out-of-fold vote shares by hand (numpy cosine top-k on the same stratified folds), scored by sklearn."""
    z = _sphere(n=150, d=6, seed=3)
    label = ((z[:, 0] + 0.3 * np.random.default_rng(4).normal(size=150)) > 0.3).astype(int)
    k, folds, seed = 9, 5, 7
    table = probes.latent_predictability(z, pd.DataFrame({"label": label}), k=k, folds=folds, seed=seed)
    share = np.zeros(len(z))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, label):
        sims = z[test] @ z[train].T
        nearest = np.argsort(-sims, axis=1)[:, :k]
        share[test] = label[train][nearest].mean(axis=1)
    rows = table.set_index("kind")
    assert rows.loc["auc", "score"] == pytest.approx(roc_auc_score(label, share), abs=1e-12)
    assert rows.loc["accuracy", "score"] == pytest.approx(accuracy_score(label, share > 0.5), abs=1e-12)
    assert 0.6 < rows.loc["auc", "score"] < 1.0  # a real, imperfect signal


def test_columns_that_cannot_be_scored_are_skipped_with_one_counted_warning() -> None:
    z = _sphere(n=60)
    targets = pd.DataFrame({"ok": z[:, 0], "holes": np.where(np.arange(60) % 7 == 0, np.nan, 1.0 * z[:, 1]),
                            "none": [None] * 3 + ["a", "b"] * 28 + ["a"], "flat": 4.0})
    with pytest.warns(probes.ProbeWarning) as caught:
        table = probes.latent_predictability(z, targets, k=5)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "3 of 4" in message and "'holes' (9 missing" in message and "'none' (3 missing" in message
    assert "'flat' (a single value)" in message
    assert table["target"].tolist() == ["ok"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", probes.ProbeWarning)
        with pytest.raises(ValueError, match="no target column can be scored"):
            probes.latent_predictability(z, targets[["holes", "flat"]], k=5)


def test_an_infinite_target_is_skipped_like_a_missing_one() -> None:
    z = _sphere(n=60)
    targets = pd.DataFrame({"ok": z[:, 0], "blown": np.where(np.arange(60) == 4, np.inf, z[:, 1]),
                            "both": np.where(np.arange(60) == 2, -np.inf, np.where(np.arange(60) == 3, np.nan, 1.0)),
                            "text": ["a", "b"] * 29 + ["a", float("inf")]})
    with pytest.warns(probes.ProbeWarning) as caught:
        table = probes.latent_predictability(z, targets, k=5)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "3 of 4" in message and "'blown' (1 infinite value(s))" in message
    assert "'both' (1 missing value(s), 1 infinite value(s))" in message and "'text' (1 infinite value(s))" in message
    assert table["target"].tolist() == ["ok"]


@pytest.mark.parametrize("argument, value, message", [
    ("k", 3.7, r"k must be an int in 1\.\.32 .*got 3\.7"),
    ("k", True, r"k must be an int in 1\.\.32 .*got True"),
    ("k", "5", r"k must be an int .*got '5'"),
    ("folds", "3", r"folds must be an int in 2\.\.40 \(the number of images\), got '3'"),
    ("folds", 3.0, r"folds must be an int .*got 3\.0"),
    ("folds", False, r"folds must be an int .*got False"),
    ("seed", -1, r"seed must lie in 0\.\.4294967295 \(NumPy's seed range\), got seed=-1"),
    ("seed", 2**32, r"seed must lie in 0\.\.4294967295"),
    ("seed", 1.5, r"seed must be an int .*got 1\.5"),
])
def test_k_folds_and_seed_must_be_ints_in_range(argument: str, value: object, message: str) -> None:
    z = _sphere(n=40)
    arguments = {"k": 5, "folds": 5, "seed": 0, argument: value}
    with pytest.raises(ValueError, match=message):
        probes.latent_predictability(z, pd.DataFrame({"y": z[:, 0]}), **arguments)
    assert len(probes.latent_predictability(z, pd.DataFrame({"y": z[:, 0]}), k=np.int64(5), folds=np.int32(4),
                                            seed=np.uint32(2**32 - 1))) == 1  # NumPy ints are ints


def test_bad_inputs_are_refused() -> None:
    z = _sphere(n=40)
    targets = pd.DataFrame({"y": z[:, 0]})
    with pytest.raises(ValueError, match="39 rows for 40 latents"):
        probes.latent_predictability(z, targets.iloc[:39], k=5)
    with pytest.raises(ValueError, match=r"k must lie in 1\.\.32"):  # 40 - ceil(40 / 5)
        probes.latent_predictability(z, targets, k=33)
    with pytest.raises(ValueError, match="k must lie"):
        probes.latent_predictability(z, targets, k=0)
    with pytest.raises(ValueError, match="folds must lie"):
        probes.latent_predictability(z, targets, k=5, folds=1)
    with pytest.raises(TypeError, match="DataFrame"):
        probes.latent_predictability(z, z[:, 0], k=5)
    with pytest.raises(ValueError, match="no column"):
        probes.latent_predictability(z, pd.DataFrame(index=range(40)), k=5)
    with pytest.raises(ValueError, match="repeats column"):
        probes.latent_predictability(z, pd.concat([targets, targets], axis=1), k=5)
    with pytest.raises(ValueError, match="unknown column"):
        probes.latent_predictability(z, targets, k=5, kinds={"x": "regression"})
    with pytest.raises(ValueError, match="kind"):
        probes.latent_predictability(z, targets, k=5, kinds={"y": "ranking"})
    bad = z.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probes.latent_predictability(bad, targets, k=5)
    bad[3] = 0.0
    with pytest.raises(ValueError, match="norm"):
        probes.latent_predictability(bad, targets, k=5)


# --------------------------------------------------------------------------- the targets of a split
@pytest.fixture(scope="module")
def nih_small() -> Path:
    """The small embedded NIH-layout set (rendered on first use, shared with the CLI and chapter tests)."""
    return ensure_embedded("nih", progress=False, scale="small")


def test_the_side_file_names_are_defined_once() -> None:
    from salad_lite.data import findings
    from salad_lite.synth import LIMB_ANNOTATIONS, LIMB_MANIFEST, chest, limb

    assert probes.SYNTH_METADATA is CHEST_METADATA and findings.NIH_SYNTH_METADATA is CHEST_METADATA
    assert findings.MURA_ANNOTATIONS is LIMB_ANNOTATIONS
    assert chest.MANIFEST_NAME is CHEST_MANIFEST and limb.MANIFEST_NAME is LIMB_MANIFEST
    for module in (probes, findings, chest, limb):  # no module spells a name out again
        source = Path(module.__file__).read_text()
        for name in (CHEST_METADATA, CHEST_MANIFEST, LIMB_MANIFEST, LIMB_ANNOTATIONS):
            assert f'"{name}"' not in source, (module.__name__, name)


def test_renderer_parameters_are_aligned_with_the_split(nih_small: Path) -> None:
    lazy = NIHChestXray(nih_small, view="all", image_size=32)
    order = np.random.default_rng(0).permutation(len(lazy))[:50]
    part = subset(lazy, order)  # shuffled rows: alignment must follow the image names
    table = probes.image_parameters(part)
    assert len(table) == 50 and list(table.index) == list(range(50))
    render = pd.read_csv(nih_small / probes.SYNTH_METADATA, keep_default_na=False).set_index("Image Index")
    names = part.metadata["image_index"].tolist()
    np.testing.assert_allclose(table["breast_mm"], render.loc[names, "breast_mm"].astype(float))
    np.testing.assert_allclose(table["shift_y_mm"], render.loc[names, "shift_y_mm"].astype(float))
    assert table["marker"].tolist() == render.loc[names, "marker"].replace("", "none").tolist()
    assert table["label"].tolist() == render.loc[names, "label"].astype(int).tolist()
    assert set(probes.RENDER_NUMBERS) <= set(table.columns) and "Image Index" not in table.columns
    findings = [c for c in table.columns if c.startswith("finding_")]
    assert findings and "finding_No Finding" not in findings
    has_any = table[findings].sum(axis=1) > 0
    assert (has_any.astype(int) == table["label"]).all()  # an abnormal image has at least one finding
    assert table[list(probes.RENDER_NUMBERS)].dtypes.map(lambda t: t == np.float64).all()


def test_real_data_give_the_metadata_columns_only(nih_small: Path, tmp_path: Path) -> None:
    lazy = NIHChestXray(nih_small, view="all", image_size=32)
    table = probes.image_parameters(lazy, root=tmp_path)  # no renderer table there
    assert set(table.columns) >= {"label", "view", "age", "sex"}
    assert not set(probes.RENDER_NUMBERS) & set(table.columns)
    z = np.random.default_rng(0).normal(size=(len(lazy), 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", probes.ProbeWarning)  # a finding column may be constant
        probe = probes.latent_predictability(z, table, k=10)
    assert {"label", "view", "age"} <= set(probe["target"])


def test_renderer_tables_that_do_not_fit_are_refused(nih_small: Path, tmp_path: Path) -> None:
    lazy = NIHChestXray(nih_small, view="all", image_size=32)
    render = pd.read_csv(nih_small / probes.SYNTH_METADATA, dtype=str, keep_default_na=False)
    render.iloc[1:].to_csv(tmp_path / probes.SYNTH_METADATA, index=False)
    # without the renderer's manifest beside it, a table of that name is not the renderer's: not read
    alone = probes.image_parameters(lazy, root=tmp_path)
    assert not set(probes.RENDER_NUMBERS) & set(alone.columns)
    shutil.copy(nih_small / CHEST_MANIFEST, tmp_path / CHEST_MANIFEST)  # as split_findings requires it
    with pytest.raises(ValueError, match="misses 1 of the split's"):
        probes.image_parameters(lazy, root=tmp_path)
    broken = render.copy()
    broken.loc[5, "fov_mm"] = "wide"
    broken.to_csv(tmp_path / probes.SYNTH_METADATA, index=False)
    with pytest.raises(ValueError, match="'fov_mm' holds 1 value"):
        probes.image_parameters(lazy, root=tmp_path)
    pd.concat([render, render.iloc[:1]]).to_csv(tmp_path / probes.SYNTH_METADATA, index=False)
    with pytest.raises(ValueError, match="twice"):
        probes.image_parameters(lazy, root=tmp_path)
    with pytest.raises(TypeError, match="metadata"):
        probes.image_parameters(object())


def test_finding_columns_use_the_one_findings_parser() -> None:
    metadata = pd.DataFrame({"label": [0, 0, 1, 1, 0], "finding": ["normal", "No finding", "abnormal", "Mass",
                                                                    " NONE "]})
    table = probes.image_parameters(SimpleNamespace(metadata=metadata, root=None))
    findings = [c for c in table.columns if c.startswith("finding_")]
    assert findings == ["finding_Mass", "finding_abnormal"]  # no column for a normal word in any case
    assert table["finding_abnormal"].tolist() == [0, 0, 1, 0, 0] and table["finding_Mass"].tolist() == [0, 0, 0, 1, 0]
    for missing in (np.nan, None):
        metadata["finding"] = pd.Series(["No Finding", "Mass", missing, "Mass", ""], dtype=object)
        with pytest.raises(ValueError, match=r"metadata 'finding' of image 2 is missing \((nan|None)\)"):
            probes.image_parameters(SimpleNamespace(metadata=metadata, root=None))


# --------------------------------------------------------------------------- sentences and figure
def _probe_table(breast: float, label_acc: float, label_auc: float) -> pd.DataFrame:
    return pd.DataFrame([
        {"target": "label", "kind": "accuracy", "score": label_acc, "baseline": 0.51, "n": 100},
        {"target": "label", "kind": "auc", "score": label_auc, "baseline": 0.5, "n": 100},
        {"target": "breast_mm", "kind": "r2", "score": breast, "baseline": 0.0, "n": 100},
        {"target": "fov_mm", "kind": "r2", "score": 0.2, "baseline": 0.0, "n": 100},
        {"target": "marker", "kind": "accuracy", "score": 0.9, "baseline": 0.8, "n": 100},
    ])


def test_sentences_name_the_numbers() -> None:
    before, after = _probe_table(0.40, 0.55, 0.58), _probe_table(0.69, 0.53, 0.61)
    text = probes.describe_probe(after, before=before)
    assert "breast_mm (R² 0.69, +0.29 from 0.40 at pre-training); fov_mm (R² 0.20, ±0.00 from 0.20" in text
    assert "accuracy 0.53 against a majority rate of 0.51, -0.02 from 0.55 at pre-training" in text
    assert "AUC of the neighbours' vote 0.61 (0.5 = chance, +0.03 from 0.58" in text
    assert "from" not in probes.describe_probe(after)
    with pytest.raises(ValueError, match="no R²"):
        probes.describe_probe(after[after["kind"] == "auc"])
    with pytest.raises(ValueError, match=r"table lacks the columns \['baseline', 'kind', 'score', 'target'\]"):
        probes.describe_probe(pd.DataFrame())
    with pytest.raises(ValueError, match=r"before lacks the columns \['baseline'\]"):
        probes.describe_probe(after, before=before.drop(columns="baseline"))
    formation = pd.DataFrame({"neighbour_cosine": [0.80, 0.86], "knn_purity": [0.60, 0.55],
                              "chance_purity": [0.5, 0.5], "silhouette": [0.010, 0.012]},
                             index=pd.Index([0, 3], name="round"))
    lines = probes.describe_formation(formation).splitlines()
    assert lines[0] == "neighbour_cosine: rose from round 0 to 3, 0.800 -> 0.860 (+0.060)"
    assert lines[1] == "knn_purity: fell from round 0 to 3, 0.600 -> 0.550 (-0.050); chance 0.500"
    assert lines[2] == "silhouette: rose from round 0 to 3, 0.010 -> 0.012 (+0.002, under 0.005: negligible)"
    flat = probes.describe_formation(formation.assign(silhouette=0.0101)).splitlines()[2]
    assert flat == "silhouette: unchanged from round 0 to 3, 0.010 -> 0.010 (±0.000, under 0.005: negligible)"
    with pytest.raises(ValueError, match="two rounds"):
        probes.describe_formation(formation.iloc[:1])


def test_probe_figure_has_one_panel_per_kind_and_one_bar_per_stage() -> None:
    before, after = _probe_table(0.40, 0.55, 0.58), _probe_table(0.69, 0.53, 0.61)
    fig = viz.plot_latent_probe({"pre-training": before, "round 3": after})
    axes = [ax for ax in fig.axes if ax.patches]
    panels = [ax.get_xlabel().split(" (")[0] for ax in axes]
    assert panels == ["R²", "accuracy − majority rate", "AUC of the neighbours' vote"]
    r2_bars = [p.get_width() for p in axes[0].patches]
    assert sorted(r2_bars) == pytest.approx(sorted([0.40, 0.2, 0.69, 0.2]))
    accuracy = sorted(round(p.get_width(), 6) for p in axes[1].patches)  # drawn as accuracy - majority rate
    assert accuracy == pytest.approx(sorted([0.04, 0.02, 0.1, 0.1]))
    auc = axes[2].patches[0]
    assert auc.get_x() == pytest.approx(0.5)  # AUC bars start at chance
    one = viz.plot_latent_probe(after, kinds=("r2",), max_per_panel=1)
    assert [t.get_text() for t in one.axes[0].get_yticklabels()] == ["breast_mm"]
    with pytest.raises(ValueError, match="lacks"):
        viz.plot_latent_probe({"x": after.drop(columns="baseline")})


# --------------------------------------------------------------------------- alignment, text columns, bad latents
def _aligned_case(n: int = 60) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(3)
    latents = rng.normal(size=(n, 6))
    return latents, pd.DataFrame({"v": latents[:, 0] * 2 + 0.01 * rng.normal(size=n)})


def test_targets_must_be_indexed_0_to_n_minus_1_in_order() -> None:
    latents, targets = _aligned_case()
    shuffled = targets.sample(frac=1.0, random_state=0)
    with pytest.raises(ValueError, match=r"targets' index must be 0\.\.59 in order .*reset_index\(drop=True\)"):
        probes.latent_predictability(latents, shuffled, k=5)
    with pytest.raises(ValueError, match="index must be"):
        probes.latent_predictability(latents, targets.set_axis(range(1, 61)), k=5)
    assert len(probes.latent_predictability(latents, targets, k=5)) == 1  # a plain frame still passes


def test_numbers_written_as_text_stay_classes_with_a_warning_unless_regressed() -> None:
    latents, targets = _aligned_case()
    as_text = targets.assign(v=targets["v"].map(lambda v: f" {v:.6f}"), grade=[str(i % 5) for i in range(60)])
    with pytest.warns(UserWarning, match=r"column 'v' holds numbers stored as text or objects with 60 values: probed as 60 "
                                         r"classes; pass kinds=\{'v': 'regression'\}"):
        texts = probes.latent_predictability(latents, as_text, k=5)
    assert texts["kind"].tolist() == ["accuracy", "accuracy"]  # grades "0".."4" are classes, as before
    numbers = probes.latent_predictability(latents, targets, k=5)
    regressed = probes.latent_predictability(latents, as_text[["v"]], k=5, kinds={"v": "regression"})
    assert regressed["kind"].tolist() == ["r2"]
    np.testing.assert_allclose(regressed["score"], numbers["score"], atol=1e-6)
    mixed = targets.assign(v=["a"] + [str(i % 3) for i in range(59)])
    assert probes.latent_predictability(latents, mixed, k=5)["kind"].iloc[0] == "accuracy"  # text stays text
    with pytest.raises(ValueError, match=r"kinds\['v'\] is 'regression' but column 'v' is not numbers \(e\.g\. 'a'\)"):
        probes.latent_predictability(latents, mixed, k=5, kinds={"v": "regression"})


def test_latents_that_are_not_numbers_are_refused_by_name() -> None:
    _, targets = _aligned_case(4)
    with pytest.raises(ValueError, match=r"latents must be numbers \[rows, d\].*got str"):
        probes.latent_predictability(np.array([["a", "b"]] * 4), targets, k=1, folds=2)


def test_sentences_refuse_nan_and_bad_arguments_by_name() -> None:
    table = _probe_table(0.69, 0.53, 0.61)
    with pytest.raises(ValueError, match=r"table holds 1 score\(s\) that are not finite numbers, first nan of target "
                                         r"'breast_mm' \(r2\)"):
        probes.describe_probe(table.assign(score=[0.53, 0.61, np.nan, 0.2, 0.9]))
    with pytest.raises(ValueError, match="before holds 1 baseline"):
        probes.describe_probe(table, before=table.assign(baseline=[np.nan, 0.5, 0, 0, 0.8]))
    for top in (-1, 0, 2.5, True, "3"):
        with pytest.raises(ValueError, match=r"top must (be an int|lie) in 1\.\."):
            probes.describe_probe(table, top=top)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"label='lable' is not a target of the probe table \(targets: \['breast_mm'"):
        probes.describe_probe(table, label="lable")
    no_label = table[table["target"] != "label"]  # a one-class split skips the label: the default then says nothing
    assert "The label" not in probes.describe_probe(no_label) and "Best predicted" in probes.describe_probe(no_label)
    assert "The label" not in probes.describe_probe(table, label=None)
    assert "The marker: k-NN accuracy 0.90" in probes.describe_probe(table, label="marker")
    formation = pd.DataFrame({"neighbour_cosine": [0.80, 0.86], "knn_purity": [0.5, np.nan],
                              "chance_purity": [0.5, 0.5], "silhouette": [0.010, 0.012]},
                             index=pd.Index([0, 3], name="round"))
    with pytest.raises(ValueError, match=r"'knn_purity' at round 3 is nan, not a finite number"):
        probes.describe_formation(formation)
    assert "knn_purity" not in probes.describe_formation(formation, columns=("neighbour_cosine", "silhouette"))
    for tolerance in (-0.1, np.nan, np.inf, "0.1", True):
        with pytest.raises(ValueError, match="tolerance must be a finite number >= 0"):
            probes.describe_formation(formation, columns=("silhouette",), tolerance=tolerance)  # type: ignore[arg-type]
