"""NIH ChestX-ray14 loader: real subset (when present), bad inputs, split, registry, script."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, SHARED_DATA, load_script
from salad_lite.data import DataWarning, subset
from salad_lite.data.nih import NIHChestXray, find_torchxrayvision_csv, finding_counts, load_nih_labels
from salad_lite.data.registry import embedded_root, load_splits
from salad_lite.data.splits import check_patient_disjoint, one_class_split

NIH_SUBSET = SHARED_DATA / "nih_subset"
NIH_HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]

needs_subset = pytest.mark.skipif(not (NIH_SUBSET / "images").is_dir(), reason=f"{NIH_SUBSET} not present")


def _subset_csv() -> pd.DataFrame:
    return pd.read_csv(next(NIH_SUBSET.glob("Data_Entry_2017*.csv")))


def _fake_nih(root: Path, n: int = 8, views: str = "PAAP") -> pd.DataFrame:
    """A tiny NIH-layout folder: CSV with the real header + small PNGs."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"{i // 2 + 1:08d}_{i % 2:03d}.png"
        Image.fromarray(np.full((12, 10), 20 * i, np.uint8)).save(root / "images" / name)
        finding = "No Finding" if i % 3 else "Effusion|Mass"
        rows.append([name, finding, i % 2, i // 2 + 1, 40, "F", views[(2 * i) % len(views):][:2], 10, 12, 0.1, 0.1])
    table = pd.DataFrame(rows, columns=NIH_HEADER)
    table.to_csv(root / "Data_Entry_2017.csv", index=False)
    return table


# ------------------------------------------------------------------ the real subset
@needs_subset
def test_real_subset_counts_and_labels_match_the_csv() -> None:
    csv = _subset_csv()
    ds = NIHChestXray(NIH_SUBSET, view="all", image_size=32)
    assert len(ds) == len(csv)
    expected = dict(zip(csv["Image Index"], (csv["Finding Labels"] != "No Finding").astype(int)))
    got = dict(zip(ds.metadata["image_index"], ds.labels))
    assert got == expected
    assert int((ds.labels == 0).sum()) == int((csv["Finding Labels"] == "No Finding").sum())
    assert set(ds.patient_ids) == set(csv["Patient ID"].astype(str))
    sample = ds[0]
    assert sample["image"].shape == (1, 32, 32)
    assert sample["finding"] == csv.set_index("Image Index").loc[ds.metadata["image_index"][0], "Finding Labels"]


@needs_subset
@pytest.mark.parametrize("view", ["PA", "AP"])
def test_real_subset_view_filter(view: str) -> None:
    csv = _subset_csv()
    ds = NIHChestXray(NIH_SUBSET, view=view.lower(), image_size=16)
    chosen = csv[csv["View Position"] == view]
    assert len(ds) == len(chosen) > 0
    assert set(ds.metadata["view"]) == {view}
    assert sorted(ds.metadata["image_index"]) == sorted(chosen["Image Index"])


@needs_subset
def test_real_subset_split_is_patient_disjoint() -> None:
    ds = NIHChestXray(NIH_SUBSET, view="all", image_size=16)
    splits = one_class_split(ds.metadata, anomaly_ratio=0.05, seed=0)
    parts = {name: subset(ds, rows) for name, rows in splits.items()}
    check_patient_disjoint({name: part.patient_ids for name, part in parts.items()})
    csv = _subset_csv().set_index("Image Index")
    for name, part in parts.items():  # labels still agree with the CSV after subsetting
        truth = (csv.loc[part.metadata["image_index"], "Finding Labels"] != "No Finding").astype(int)
        np.testing.assert_array_equal(part.labels, truth.to_numpy())
    assert parts["train"].labels.mean() == pytest.approx(0.05, abs=0.01)


@needs_subset
def test_load_splits_on_real_subset_and_prepare_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    splits = load_splits("nih", data_root=str(NIH_SUBSET), image_size=16, anomaly_ratio=0.05,
                         progress=False, cache_dir=str(tmp_path / "cache"))
    assert set(splits) == {"train", "val", "test"}
    assert sum(len(s) for s in splits.values()) < 603
    assert splits["train"][0]["image"].shape == (1, 16, 16)
    assert set(splits["val"].labels) == {0, 1}
    check_patient_disjoint({k: v.patient_ids for k, v in splits.items()})
    assert (tmp_path / "cache" / "nih_all_16px.npy").is_file()

    module = load_script("data_scripts/prepare_nih.py")
    code = module.main(["--root", str(NIH_SUBSET), "--view", "PA", "--image-size", "32",
                        "--cache-dir", str(tmp_path / "c2"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "train" in out and "abnormal" in out
    assert (tmp_path / "c2" / "nih_PA_32px.npy").is_file()
    assert module.main(["--root", str(tmp_path / "nowhere")]) == 2
    assert "not an existing folder" in capsys.readouterr().err


# ------------------------------------------------------------------ bad inputs (tmp dirs)
def test_fake_root_labels_views_and_kaggle_layout(tmp_path: Path) -> None:
    table = _fake_nih(tmp_path / "nih")
    ds = NIHChestXray(tmp_path / "nih", view="all", image_size=8)
    assert ds.labels.tolist() == [int(f != "No Finding") for f in table["Finding Labels"]]
    assert len(NIHChestXray(tmp_path / "nih", view="PA", image_size=8)) == (table["View Position"] == "PA").sum()
    kaggle = tmp_path / "kaggle"
    (kaggle / "images_001").mkdir(parents=True)
    (tmp_path / "nih" / "images").rename(kaggle / "images_001" / "images")
    (tmp_path / "nih" / "Data_Entry_2017.csv").rename(kaggle / "Data_Entry_2017.csv")
    moved = NIHChestXray(kaggle, view="all", image_size=8)
    assert moved.metadata["path"][0].startswith("images_001/images/")
    assert moved[0]["image"].shape == (1, 8, 8)


def test_one_file_name_in_two_images_folders_is_refused_naming_both(tmp_path: Path) -> None:
    table = _fake_nih(tmp_path)
    name = table["Image Index"][3]
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    Image.fromarray(np.full((12, 10), 250, np.uint8)).save(tmp_path / "images_001" / "images" / name)
    with pytest.raises(ValueError, match=rf"1 image name\(s\) are in two images folders.*images/{name} and "
                                         rf"images_001/images/{name}"):
        NIHChestXray(tmp_path, view="all", image_size=8)
    (tmp_path / "images_001" / "images" / name).unlink()
    (tmp_path / "images_001" / "images" / name).symlink_to(tmp_path / "images" / name)  # one file, two names
    assert len(NIHChestXray(tmp_path, view="all", image_size=8)) == 8


def test_images_under_another_letter_case_get_a_hint(tmp_path: Path) -> None:
    table = _fake_nih(tmp_path)
    for name in table["Image Index"]:
        (tmp_path / "images" / name).rename(tmp_path / "images" / name.replace(".png", ".PNG"))
    with pytest.raises(FileNotFoundError, match=r"none of the 8 images.*8 of them exist under another letter case "
                                                r"\(the CSV's '00000001_000.png' is 'images/00000001_000.PNG' on disk\)"):
        NIHChestXray(tmp_path, view="all", image_size=8)


def test_blank_or_unknown_views_are_counted_when_a_view_is_chosen(tmp_path: Path) -> None:
    table = _fake_nih(tmp_path)
    table.loc[[0, 5], "View Position"] = ["", "LL"]
    table.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.warns(DataWarning, match=r"left out 2 of 8 rows whose View Position is blank or unknown "
                                         r"\(\['', 'LL'\]"):
        ds = NIHChestXray(tmp_path, view="PA", image_size=8)
    assert len(ds) == (table["View Position"] == "PA").sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert len(NIHChestXray(tmp_path, view="all", image_size=8)) == 8  # kept: nothing left out
        table.loc[[0, 5], "View Position"] = "AP"
        table.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
        NIHChestXray(tmp_path, view="PA", image_size=8)  # the other view is left out by choice, not counted


def test_missing_images_are_dropped_with_one_counted_warning(tmp_path: Path) -> None:
    table = _fake_nih(tmp_path)
    for name in table["Image Index"][[1, 4]]:
        (tmp_path / "images" / name).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = NIHChestXray(tmp_path, view="all", image_size=8)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and "dropped 2 of 8" in messages[0] and table["Image Index"][1] in messages[0]
    assert len(ds) == 6 and table["Image Index"][4] not in set(ds.metadata["image_index"])
    assert all((tmp_path / p).is_file() for p in ds.metadata["path"])
    with pytest.raises(FileNotFoundError, match="2 of 8"):
        NIHChestXray(tmp_path, view="all", on_missing="raise")
    for path in (tmp_path / "images").iterdir():
        path.unlink()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / "unrelated.png")
    with pytest.raises(FileNotFoundError, match="none of the 8 images"):
        NIHChestXray(tmp_path, view="all")


def test_csv_missing_columns_wrong_root_and_bad_view(tmp_path: Path) -> None:
    table = _fake_nih(tmp_path)
    table.drop(columns=["Patient ID", "View Position"]).to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.raises(ValueError, match=r"\['Patient ID', 'View Position'\]"):
        NIHChestXray(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        NIHChestXray(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no Data_Entry_2017"):
        NIHChestXray(tmp_path / "images")
    table.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.raises(ValueError, match="view must be"):
        NIHChestXray(tmp_path, view="lateral")
    table.assign(**{"View Position": "AP"}).to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with pytest.raises(ValueError, match="no image with View Position 'PA'"):
        NIHChestXray(tmp_path, view="PA")
    empty = tmp_path / "no_images"
    empty.mkdir()
    table.to_csv(empty / "Data_Entry_2017.csv", index=False)
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        NIHChestXray(empty)


# ------------------------------------------------------------------ label tables, embedded root
def test_torchxrayvision_csv_found_without_import() -> None:
    if importlib.util.find_spec("torchxrayvision") is None:
        pytest.skip("torchxrayvision not installed")
    was_imported = "torchxrayvision" in sys.modules
    csv = find_torchxrayvision_csv()
    assert csv.name == "Data_Entry_2017_v2020.csv.gz" and csv.is_file()
    assert ("torchxrayvision" in sys.modules) == was_imported
    labels = load_nih_labels(csv)
    assert len(labels) == 112_120 and labels["patient_id"].nunique() == 30_805
    assert int((labels["label"] == 0).sum()) == 60_361
    assert labels["view"].value_counts().to_dict() == {"PA": 67_310, "AP": 44_810}
    counts = finding_counts(labels)
    assert counts["No Finding"] == 60_361 and counts.index[1] == "Infiltration"


def test_embedded_root_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SALAD_LITE_DATA", str(tmp_path))
    assert embedded_root() == tmp_path
    monkeypatch.delenv("SALAD_LITE_DATA")
    assert embedded_root() == REPO / "data" / "embedded"
