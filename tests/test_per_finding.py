"""Results per finding: AUC per finding and severity bin against sklearn, the findings of a split, stored PCA scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import SHARED_DATA, ArrayDataset, blob_images
from salad_lite import report, viz
from salad_lite.baselines import pca_baseline
from salad_lite.config import profile_config
from salad_lite.data.base import CachedXrayDataset
from salad_lite.data.findings import (
    MURA_ANNOTATIONS,
    NIH_SYNTH_METADATA,
    finding_column,
    is_normal_finding,
    parse_findings,
    split_findings,
)
from salad_lite.data.registry import load_splits
from salad_lite.files import CorruptFileError

NIH_SUBSET = SHARED_DATA / "nih_subset"

# 8 normal, then 10 abnormal images; image 8 and 9 carry two findings each
LABELS = np.array([0] * 8 + [1] * 10)
FINDINGS = ["No Finding"] * 8 + ["A|B", ("A", "C"), "A", "A", "A", "B", "B", "B", "B", "C"]
SEVERITY = [None] * 8 + [{"A": 0.1, "B": 0.9}, {"A": 1 / 3, "C": 0.5}, 0.0, 0.5, 0.7, 0.2, 0.3, 0.95, 1.0, 0.4]


def _scores(seed: int, runs: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (len(LABELS),) if runs is None else (runs, len(LABELS))
    return rng.normal(size=shape) + 0.8 * LABELS


def _reference(scores: np.ndarray, abnormal: list[int], normal: list[int]) -> tuple[float, float]:
    """Mean and 1.96 std (ddof 1) of sklearn's AUC on the hand-picked images, per run."""
    keep = normal + abnormal
    y = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
    runs = np.atleast_2d(scores)
    values = [roc_auc_score(y, run[keep]) for run in runs]
    return float(np.mean(values)), (float(1.96 * np.std(values, ddof=1)) if len(values) > 1 else float("nan"))


def _row(table: pd.DataFrame, finding: str, severity: str = "all") -> pd.Series:
    rows = table[(table["finding"] == finding) & (table["severity"] == severity)]
    assert len(rows) == 1, (finding, severity, table[["finding", "severity"]])
    return rows.iloc[0]


# ------------------------------------------------------------------------------------------ per_finding_auc
def test_auc_per_finding_matches_sklearn_on_hand_selected_subsets() -> None:
    salad, pca = _scores(0, runs=3), _scores(1)
    table = report.per_finding_auc(LABELS, {"SALAD": salad, "PCA": pca}, FINDINGS, min_images=2)
    normal = list(range(8))
    members = {"A": [8, 9, 10, 11, 12], "B": [8, 13, 14, 15, 16], "C": [9, 17]}  # multi-label: under each finding
    assert table["finding"].tolist() == [report.ANY_FINDING, "A", "B", "C"]  # most frequent first, ties by name
    assert (table["severity"] == "all").all() and (table["note"] == "").all()
    for finding, abnormal in {report.ANY_FINDING: list(range(8, 18)), **members}.items():
        row = _row(table, finding)
        assert (row["n abnormal"], row["n normal"]) == (len(abnormal), 8)
        mean, half = _reference(salad, abnormal, normal)
        assert row["SALAD AUC"] == pytest.approx(mean) and row["SALAD 95% CI"] == pytest.approx(half)
        assert row["PCA AUC"] == pytest.approx(_reference(pca, abnormal, normal)[0])
        assert np.isnan(row["PCA 95% CI"])  # one deterministic run: no spread
    # the first row is the split's test AUC
    assert _row(table, report.ANY_FINDING)["PCA AUC"] == pytest.approx(roc_auc_score(LABELS, pca))


def test_text_and_tuple_findings_count_alike_and_normals_are_ignored() -> None:
    as_text = ["|".join(f) if isinstance(f, tuple) else f for f in FINDINGS]
    as_tuples = [tuple(f.split("|")) if isinstance(f, str) and f != "No Finding" else () for f in as_text]
    normal_noise = ["Z"] * 8 + as_text[8:]  # a normal image's entry is not a finding
    scores = {"m": _scores(2)}
    first = report.per_finding_auc(LABELS, scores, as_text, min_images=2)
    pd.testing.assert_frame_equal(first, report.per_finding_auc(LABELS, scores, as_tuples, min_images=2))
    pd.testing.assert_frame_equal(first, report.per_finding_auc(LABELS, scores, normal_noise, min_images=2))
    assert "Z" not in set(first["finding"])


def test_severity_bins_hold_the_images_of_each_bin() -> None:
    scores = _scores(3)
    table = report.per_finding_auc(LABELS, {"m": scores}, FINDINGS, SEVERITY, min_images=1)
    bins = ["[0.00, 0.33]", "(0.33, 0.67]", "(0.67, 1.00]"]
    assert table["severity"].tolist()[:4] == ["all", *bins]  # each finding: all, then its bins
    normal = list(range(8))
    # A: 0.1, 1/3 (edge: first bin), 0.0, 0.5, 0.7 ; B: 0.9, 0.2, 0.3, 0.95, 1.0 ; any: the image's largest
    expected = {("A", bins[0]): [8, 9, 10], ("A", bins[1]): [11], ("A", bins[2]): [12],
                ("B", bins[0]): [13, 14], ("B", bins[1]): [], ("B", bins[2]): [8, 15, 16],
                ("C", bins[1]): [9, 17], (report.ANY_FINDING, bins[1]): [9, 11, 17],
                (report.ANY_FINDING, bins[0]): [10, 13, 14], (report.ANY_FINDING, bins[2]): [8, 12, 15, 16]}
    for (finding, severity), abnormal in expected.items():
        row = _row(table, finding, severity)
        assert row["n abnormal"] == len(abnormal), (finding, severity)
        if abnormal:
            assert row["m AUC"] == pytest.approx(_reference(scores, abnormal, normal)[0])
        else:
            assert np.isnan(row["m AUC"]) and "too few" in row["note"]
    # other edges, and no bins without severities
    two = report.per_finding_auc(LABELS, {"m": scores}, FINDINGS, SEVERITY, bins=(0.0, 0.5, 1.0), min_images=1)
    assert _row(two, "A", "[0.00, 0.50]")["n abnormal"] == 4
    assert set(report.per_finding_auc(LABELS, {"m": scores}, FINDINGS)["severity"]) == {"all"}


def test_too_few_images_give_nan_and_a_reason_never_a_dropped_row() -> None:
    table = report.per_finding_auc(LABELS, {"m": _scores(4)}, FINDINGS)  # default minimum: 5
    assert report.MIN_FINDING_IMAGES == 5
    assert table["finding"].tolist() == [report.ANY_FINDING, "A", "B", "C"]
    c = _row(table, "C")
    assert c["n abnormal"] == 2 and np.isnan(c["m AUC"]) and np.isnan(c["m 95% CI"])
    assert c["note"] == "too few test images (2 abnormal, 8 normal; each needs >= 5)"
    assert not np.isnan(_row(table, "A")["m AUC"]) and _row(table, "A")["note"] == ""
    few_normals = report.per_finding_auc(LABELS, {"m": _scores(4)}, FINDINGS, min_images=9)
    assert few_normals["m AUC"].isna().all() and few_normals["note"].str.contains("8 normal").all()


def test_groups_shared_by_normals_compare_within_the_group() -> None:
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1, 1])
    parts = ["HAND", "HAND", "HAND", "HAND", "HAND", "WRIST", "WRIST", "WRIST", "WRIST", "WRIST"]
    scores = _scores(5)[:10]
    table = report.per_finding_auc(labels, {"m": scores}, parts, min_images=2, shared_by_normals=True)
    hand = _row(table, "HAND")
    assert (hand["n abnormal"], hand["n normal"]) == (2, 3)
    assert hand["m AUC"] == pytest.approx(_reference(scores, [3, 4], [0, 1, 2])[0])
    assert _row(table, "WRIST")["m AUC"] == pytest.approx(_reference(scores, [7, 8, 9], [5, 6])[0])
    assert _row(table, report.ANY_FINDING)["n normal"] == 5
    unshared = report.per_finding_auc(labels, {"m": scores}, parts, min_images=2)
    assert _row(unshared, "HAND")["n normal"] == 5


def test_bad_inputs_are_refused_naming_the_field() -> None:
    good = {"m": _scores(6)}
    with pytest.raises(ValueError, match="findings has 17 entries but test_labels has 18"):
        report.per_finding_auc(LABELS, good, FINDINGS[:-1])
    with pytest.raises(ValueError, match=r"scores of 'm' have 17 values per run but test_labels has 18"):
        report.per_finding_auc(LABELS, {"m": _scores(6)[:-1]}, FINDINGS)
    with pytest.raises(ValueError, match=r"scores of 'r' have 17 values per run"):
        report.per_finding_auc(LABELS, {"r": _scores(6, runs=2)[:, :-1]}, FINDINGS)
    with pytest.raises(ValueError, match="severity has 3 entries but test_labels has 18"):
        report.per_finding_auc(LABELS, good, FINDINGS, SEVERITY[:3])
    with pytest.raises(ValueError, match="at least one method"):
        report.per_finding_auc(LABELS, {}, FINDINGS)
    with pytest.raises(ValueError, match="method names must be non-empty text"):
        report.per_finding_auc(LABELS, {"": _scores(6)}, FINDINGS)
    nan = _scores(6)
    nan[3] = np.nan
    with pytest.raises(ValueError, match=r"scores of 'm': 1 of 18 value\(s\) are NaN or inf"):
        report.per_finding_auc(LABELS, {"m": nan}, FINDINGS)
    with pytest.raises(ValueError, match=r"abnormal test image 17 has no finding \(findings\[17\] = 'No Finding'\)"):
        report.per_finding_auc(LABELS, good, FINDINGS[:-1] + ["No Finding"])
    with pytest.raises(TypeError, match=r"findings\[17\] must be text or a tuple of text, got 3"):
        report.per_finding_auc(LABELS, good, FINDINGS[:-1] + [3])
    missing = SEVERITY[:8] + [{"A": 0.1}] + SEVERITY[9:]
    with pytest.raises(ValueError, match=r"severity of finding 'B' of abnormal test image 8 must be a finite number "
                                         r"in \[0, 1\], got None"):
        report.per_finding_auc(LABELS, good, FINDINGS, missing)
    with pytest.raises(ValueError, match=r"finding 'C' of abnormal test image 17 .* got 1.5"):
        report.per_finding_auc(LABELS, good, FINDINGS, SEVERITY[:-1] + [1.5])
    with pytest.raises(ValueError, match="bins must be at least 2 finite, strictly increasing edges"):
        report.per_finding_auc(LABELS, good, FINDINGS, SEVERITY, bins=(0.0, 0.5, 0.5, 1.0))
    with pytest.raises(ValueError, match=r"labels 0 \(normal\) and 1 \(abnormal\); got classes \[0, 1, 2\]"):
        report.per_finding_auc(np.r_[LABELS[:-1], 2], good, FINDINGS)
    with pytest.raises(ValueError, match="min_images must be an int >= 1, got 0"):
        report.per_finding_auc(LABELS, good, FINDINGS, min_images=0)


def test_text_names_best_and_worst_from_the_numbers() -> None:
    labels = np.array([0] * 6 + [1] * 12)
    findings = ["No Finding"] * 6 + ["Easy"] * 6 + ["Hard"] * 6
    scores = np.r_[np.zeros(6), np.full(6, 5.0), np.r_[-1.0, -1.0, -1.0, -1.0, -1.0, 1.0]]  # Easy 1.0, Hard ~0.17
    pca = np.r_[np.zeros(6), np.linspace(-1, 1, 6), np.full(6, 2.0)]
    table = report.per_finding_auc(labels, {"SALAD": [scores, scores], "PCA": pca}, findings)
    text = report.per_finding_text(table, "SALAD", "PCA")
    assert text.startswith("Of 2 findings, SALAD detects Easy best (AUC 1.000; PCA 0.500) and Hard worst "
                           "(AUC 0.167; PCA 1.000).")
    assert "Its AUC is clearly above PCA's (the lower end of its 95% CI higher) on 1 of 2 findings." in text
    swapped = report.per_finding_text(table, "PCA", "SALAD")
    assert "PCA detects Hard best" in swapped and "Easy worst" in swapped
    with pytest.raises(ValueError, match=r"unknown method 'AE': the table has \['SALAD', 'PCA'\]"):
        report.per_finding_text(table, "AE")
    few = report.per_finding_auc(labels, {"SALAD": scores, "PCA": pca}, findings[:-1] + ["Rare"])
    assert "Too few test images to score: Rare." in report.per_finding_text(few)
    binned = report.per_finding_auc(LABELS, {"SALAD": _scores(7), "PCA": _scores(8)}, FINDINGS, SEVERITY,
                                    min_images=2)
    low = _row(binned, report.ANY_FINDING, "[0.00, 0.33]")["SALAD AUC"]
    assert f"its AUC is {low:.3f} at the mildest severity scored, [0.00, 0.33]" in report.per_finding_text(binned)


def test_a_win_over_the_baseline_needs_the_ci_above_it_not_a_higher_mean() -> None:
    labels = np.array([0] * 6 + [1] * 12)
    findings = ["No Finding"] * 6 + ["Easy"] * 6 + ["Close"] * 6
    base = np.r_[np.zeros(6), np.full(6, 5.0), np.r_[-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]]  # Close: AUC 4 / 6
    tilted = base.copy()
    tilted[12] = 1.0  # replicate 2: Close AUC 5 / 6
    runs = [base, tilted]  # Close: mean 0.75, CI 1.96 * std = 0.23: lower end 0.52
    pca = np.r_[np.zeros(6), np.full(6, -1.0), np.r_[-1.0, -1.0, 1.0, 1.0, 1.0, 0.0]]  # Easy 0, Close 3.5 / 6
    table = report.per_finding_auc(labels, {"SALAD": runs, "PCA": pca}, findings)
    close = _row(table, "Close")
    assert close["SALAD AUC"] > close["PCA AUC"] > close["SALAD AUC"] - close["SALAD 95% CI"]  # higher mean, CI across
    text = report.per_finding_text(table, "SALAD", "PCA")
    assert "clearly above PCA's (the lower end of its 95% CI higher) on 1 of 2 findings." in text  # Easy only
    single = report.per_finding_auc(labels, {"SALAD": base, "PCA": pca}, findings)
    assert ("A single run gives no 95% CI, so no finding is clearly above PCA; its AUC is higher on 2 of 2 findings."
            in report.per_finding_text(single, "SALAD", "PCA"))


def test_labels_must_be_one_dimensional() -> None:
    for shape in ((18, 1), (1, 18)):
        with pytest.raises(ValueError, match=re.escape(f"test_labels must be 1-D [M], got shape {shape}")):
            report.per_finding_auc(LABELS.reshape(shape), {"m": _scores(6)}, FINDINGS)


def test_severity_bins_close_on_the_right_and_close_edges_print_apart() -> None:
    edges = (0.0, 0.101, 0.104, 1.0)
    assert report.severity_bin_labels(edges) == ["[0.000, 0.101]", "(0.101, 0.104]", "(0.104, 1.000]"]
    assert report.severity_bin_labels(report.DEFAULT_SEVERITY_BINS) == ["[0.00, 0.33]", "(0.33, 0.67]",
                                                                      "(0.67, 1.00]"]
    assert report.severity_bin_index([0.0, 1 / 3, 0.34, 2 / 3, 1.0, 1.2, np.nan], report.DEFAULT_SEVERITY_BINS
                                     ).tolist() == [0, 0, 1, 1, 2, -1, -1]  # an inner edge belongs to the bin below
    severity = [None] * 8 + [0.102, 0.103, 0.101, 0.104, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    findings = ["No Finding"] * 8 + ["A"] * 10
    table = report.per_finding_auc(LABELS, {"m": _scores(3)}, findings, severity, bins=edges, min_images=1)
    counts = table[table["finding"] == report.ANY_FINDING].set_index("severity")["n abnormal"]
    assert counts.to_dict() == {"all": 10, "[0.000, 0.101]": 1, "(0.101, 0.104]": 3, "(0.104, 1.000]": 6}


def test_figure_has_a_severity_panel_only_with_bins() -> None:
    scores = {"SALAD": _scores(9, runs=2), "PCA": _scores(10)}
    plain = report.per_finding_auc(LABELS, scores, FINDINGS)
    binned = report.per_finding_auc(LABELS, scores, FINDINGS, SEVERITY, min_images=2)
    assert len(viz.plot_per_finding_auc(plain).axes) == 1
    assert len(viz.plot_per_finding_auc(binned).axes) == 2
    with pytest.raises(ValueError, match=r"table lacks column\(s\) \['AE AUC', 'AE 95% CI'\]"):
        viz.plot_per_finding_auc(plain, ("SALAD", "AE"))


# ------------------------------------------------------------------------------------------ the findings parser
def test_one_parser_reads_findings_everywhere() -> None:
    assert parse_findings(" Effusion | Mass|Effusion") == ("Effusion", "Mass")  # stripped, a repeat kept once
    assert parse_findings(("A", "B|C")) == ("A", "B", "C")
    for normal in ("", "No Finding", "no finding", "NORMAL", " none ", "No Finding|"):
        assert parse_findings(normal) == () and all(is_normal_finding(p) for p in normal.split("|"))
    assert not is_normal_finding("Mass")
    for missing in (None, float("nan"), np.nan, pd.NA):
        with pytest.raises(ValueError, match=r"findings\[4\] is missing"):
            parse_findings(missing, "findings[4]")
    with pytest.raises(TypeError, match=r"x must be text or a tuple of text, got 3"):
        parse_findings(3, "x")
    assert finding_column(pd.Series(["normal", "A|B"])) == [(), ("A", "B")]
    with pytest.raises(ValueError, match=r"'finding' of image 1 is missing \(nan\)"):
        finding_column(pd.Series(["A", np.nan], dtype=object))


def test_a_missing_finding_is_refused_naming_its_position() -> None:
    labels = np.array([0, 0, 1, 1])
    for kind in ("nih", "folder"):
        data = ArrayDataset(blob_images(labels, size=8), labels)
        data.metadata["finding"] = pd.Series(["No Finding", "No Finding", "Mass", np.nan], dtype=object)
        with pytest.raises(ValueError, match=r"(NIH 'Finding Labels'|metadata 'finding') of image 3 is missing \(nan\)"):
            split_findings(data, kind)  # never the finding "nan"
    with pytest.raises(ValueError, match=r"findings\[17\] is missing \(None\)"):
        report.per_finding_auc(LABELS, {"m": _scores(6)}, FINDINGS[:-1] + [None])
    with pytest.raises(ValueError, match=r"findings\[2\] is missing \(nan\)"):  # a normal image's too
        report.per_finding_auc(LABELS, {"m": _scores(6)}, FINDINGS[:2] + [np.nan] + FINDINGS[3:])


# ------------------------------------------------------------------------------------------ findings of a split
@pytest.fixture(scope="module")
def embedded_tests() -> dict[str, CachedXrayDataset]:
    """The test splits of the small embedded sets, at the smoke profile's sizes (the caches the smoke tests use)."""
    out = {}
    for dataset in ("nih", "mura"):
        cfg = profile_config("smoke", dataset)
        out[dataset] = load_splits(dataset, image_size=cfg.model.image_size, anomaly_ratio=cfg.data.anomaly_ratio,
                                   max_train_images=cfg.data.max_train_images, progress=False,
                                   embedded_scale="small")["test"]
    return out


def test_embedded_nih_findings_and_severities_come_from_the_side_table(embedded_tests) -> None:
    test = embedded_tests["nih"]
    found = split_findings(test, "nih")
    meta = test.metadata
    np.testing.assert_array_equal(found.labels, test.labels)
    assert len(found.findings) == len(test) and found.grouping == "finding" and not found.shared_by_normals
    for names, text, label in zip(found.findings, meta["finding"], test.labels):
        assert names == (tuple(text.split("|")) if label else ())
    assert any(len(names) > 1 for names in found.findings), "the small set has multi-label films"
    side = pd.read_csv(test.root / NIH_SYNTH_METADATA).set_index("Image Index")
    assert found.severity is not None
    for index, names, levels in zip(meta["image_index"], found.findings, found.severity):
        assert set(levels) == set(names)
        for name in names:
            assert levels[name] == pytest.approx(side.at[index, f"severity_{name}"])


def test_embedded_mura_findings_are_lesion_kinds_with_severity(embedded_tests) -> None:
    test = embedded_tests["mura"]
    found = split_findings(test, "mura")
    assert found.grouping == "lesion kind" and found.severity is not None
    side = pd.read_csv(test.root.parent / MURA_ANNOTATIONS).set_index("path")
    for path, names, levels, label in zip(test.metadata["path"], found.findings, found.severity, test.labels):
        truth = side.loc[f"MURA-v1.1/{path}"]
        assert names == ((truth["abnormality"],) if label else ())
        assert levels == ({truth["abnormality"]: pytest.approx(truth["severity"])} if label else {})
    assert {n for names in found.findings for n in names} <= {"fracture", "hardware", "lytic"}


def test_real_mura_without_side_files_groups_by_body_part(embedded_tests, tmp_path: Path) -> None:
    test = embedded_tests["mura"]
    real_like = CachedXrayDataset(test.images, test.metadata, root=tmp_path / "MURA-v1.1")  # no groundtruth/
    found = split_findings(real_like, "mura")
    assert found.grouping == "body part" and found.shared_by_normals and found.severity is None
    assert [names[0] for names in found.findings] == test.metadata["body_part"].tolist()
    assert "body part" in found.source


def test_a_side_table_that_disagrees_with_the_split_is_refused(embedded_tests, tmp_path: Path) -> None:
    test = embedded_tests["nih"]
    (tmp_path / "synth_chest_manifest.json").write_text("{}")
    side = pd.read_csv(test.root / NIH_SYNTH_METADATA, dtype=str, keep_default_na=False)
    first_abnormal = test.metadata["image_index"][test.labels == 1].iloc[0]
    changed = side.copy()
    changed.loc[changed["Image Index"] == first_abnormal, "Finding Labels"] = "Hernia"
    changed.to_csv(tmp_path / NIH_SYNTH_METADATA, index=False)
    moved = CachedXrayDataset(test.images, test.metadata, root=tmp_path)
    with pytest.raises(ValueError, match=rf"'Finding Labels' of 1 image\(s\) differ from the split's, "
                                         rf"e.g. \['{first_abnormal}'\]"):
        split_findings(moved, "nih")
    side[side["Image Index"] != first_abnormal].to_csv(tmp_path / NIH_SYNTH_METADATA, index=False)
    with pytest.raises(ValueError, match=rf"has no row for 1 image\(s\) of the split, e.g. \['{first_abnormal}'\]"):
        split_findings(moved, "nih")
    (tmp_path / "synth_chest_manifest.json").unlink()  # no manifest: not an embedded set, no severities
    assert split_findings(moved, "nih").severity is None


def test_folder_sets_use_the_finding_column_or_the_label_alone() -> None:
    labels = np.array([0, 0, 1, 1])
    data = ArrayDataset(blob_images(labels, size=8), labels)
    found = split_findings(data, "folder")  # no 'finding' column: one group, the label
    assert found.findings == ((), (), ("abnormal",), ("abnormal",)) and found.grouping == "label"
    data.metadata["finding"] = ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
    found = split_findings(data, "folder")
    assert found.findings == ((), (), ("PNEUMONIA",), ("PNEUMONIA",)) and found.grouping == "finding"
    with pytest.raises(ValueError, match="unknown dataset kind 'chexpert'"):
        split_findings(data, "chexpert")
    with pytest.raises(ValueError, match="a nih split's metadata needs column 'finding'"):
        split_findings(ArrayDataset(blob_images(labels, size=8), labels), "nih")


@pytest.mark.skipif(not (NIH_SUBSET / "images").is_dir(), reason=f"{NIH_SUBSET} not present")
def test_real_nih_findings_come_from_finding_labels_without_severity() -> None:
    from salad_lite.data import subset
    from salad_lite.data.nih import NIHChestXray

    data = NIHChestXray(NIH_SUBSET, view="all", image_size=16)  # lazy: no image is read
    part = subset(data, np.arange(0, len(data), 3))
    found = split_findings(part, "nih")
    assert found.severity is None and found.grouping == "finding"
    csv = pd.read_csv(next(NIH_SUBSET.glob("Data_Entry_2017*.csv")), dtype=str).set_index("Image Index")
    for index, names in zip(part.metadata["image_index"], found.findings):
        text = csv.at[index, "Finding Labels"]
        assert names == (() if text == "No Finding" else tuple(text.split("|")))
    assert any(len(names) > 1 for names in found.findings) or len(set(found.findings)) > 2


# ------------------------------------------------------------------------------------------ stored PCA scores
def test_pca_test_scores_are_stored_and_an_old_file_is_recomputed(blob_splits, tmp_path: Path) -> None:
    import salad_lite.experiment as experiment

    test_labels = np.r_[np.zeros(10), np.ones(10)].astype(np.int64)
    splits = {**blob_splits, "test": ArrayDataset(blob_images(test_labels, seed=30), test_labels, prefix="t-")}
    path = tmp_path / "pca_baseline.json"
    stored = experiment._pca_baseline_once(splits, path)
    direct = pca_baseline(splits)
    assert stored["test_scores"] == pytest.approx(direct["test_scores"]) and len(stored["test_scores"]) == 20
    assert stored["test_auc"] == pytest.approx(roc_auc_score(test_labels, stored["test_scores"]))
    on_disk = json.loads(path.read_text())
    assert on_disk["test_scores"] == stored["test_scores"]

    old = {k: v for k, v in on_disk.items() if k != "test_scores"}  # written before the scores were stored
    path.write_text(json.dumps(old))
    again = experiment._pca_baseline_once(splits, path)
    assert again["test_scores"] == pytest.approx(direct["test_scores"])
    assert "test_scores" in json.loads(path.read_text())

    path.write_text(json.dumps({**old, "test_scores": [0.1] * 19}))
    with pytest.raises(CorruptFileError, match=rf"{path}: 'test_scores' must be 20 finite numbers .* got 19 values"):
        experiment._pca_baseline_once(splits, path)
    path.write_text(json.dumps({**old, "splits_sha256": "0" * 64, "test_scores": [0.5] * 20}))  # other splits:
    again = experiment._pca_baseline_once(splits, path)  # computed again, as it depends on the splits alone
    assert again["test_scores"] == pytest.approx(direct["test_scores"]) and again["splits_sha256"] != "0" * 64


def test_one_finite_score_check_for_metrics_report_and_explorers(monkeypatch: pytest.MonkeyPatch) -> None:
    from salad_lite import explorers, metrics

    with pytest.raises(ValueError, match=r"^AUC: scores: 1 of 4 value\(s\) are NaN or inf$"):
        metrics.auc([0, 0, 1, 1], [0.1, np.inf, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"^scores: 2 of 3 value\(s\) are NaN or inf$"):
        explorers.confusion_at([np.nan, 1.0, -np.inf], [0, 1, 1], 0.5)
    with pytest.raises(ValueError, match=r"^scores of 'm' must be numbers"):
        report.per_finding_auc(LABELS, {"m": ["x"] * 18}, FINDINGS)
    calls = []
    real = metrics.finite_scores
    for module in (metrics, explorers, report):  # each goes through the one helper
        monkeypatch.setattr(module, "finite_scores", lambda v, n="scores": calls.append(n) or real(v, n))
    metrics.auc([0, 1], [0.1, 0.2])
    explorers.confusion_at([0.1, 0.2], [0, 1], 0.15)
    report.per_finding_auc(LABELS, {"m": _scores(1)}, FINDINGS)
    assert calls[:3] == ["AUC: scores", "scores", "scores of 'm'"]  # then the AUCs' own checks
