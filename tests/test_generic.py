"""Class-folder and manifest loaders, on the Kermany subset (when present) and tmp folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_DATA
from salad_lite.data import DataWarning, LabelError
from salad_lite.data.generic import ImageFolderXray, ManifestXray
from salad_lite.data.registry import load_splits
from salad_lite.data.splits import check_patient_disjoint

KERMANY = SHARED_DATA / "kermany_subset"
needs_kermany = pytest.mark.skipif(not (KERMANY / "manifest.csv").is_file(), reason=f"{KERMANY} not present")


def _png(path: Path, value: int = 100, shape: tuple[int, int] = (10, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)


@needs_kermany
def test_kermany_manifest_matches_csv() -> None:
    manifest = pd.read_csv(KERMANY / "manifest.csv")
    ds = ManifestXray(KERMANY / "manifest.csv", image_size=16)
    assert len(ds) == len(manifest)
    assert ds.labels.tolist() == manifest["label"].tolist()
    assert list(ds.patient_ids) == manifest["patient_id"].astype(str).tolist()
    assert ds.metadata["finding"].tolist() == manifest["finding"].tolist()
    assert ds[5]["image"].shape == (1, 16, 16)


@needs_kermany
def test_kermany_class_folders_with_class_map() -> None:
    with pytest.warns(DataWarning, match=r"image\(s\) have no patient id, so each counts as its own patient"):
        ds = ImageFolderXray(KERMANY, class_map={"NORMAL": 0, "PNEUMONIA": 1}, image_size=16)
    manifest = pd.read_csv(KERMANY / "manifest.csv")
    assert sorted(ds.metadata["path"]) == sorted(manifest["file"])
    by_file = dict(zip(manifest["file"], manifest["label"]))
    assert all(by_file[p] == lab for p, lab in zip(ds.metadata["path"], ds.labels))
    assert list(ds.patient_ids[:3]) == [Path(p).stem for p in ds.metadata["path"][:3]]  # stem default
    with pytest.raises(FileNotFoundError, match="'normal/' and 'abnormal/'"):
        ImageFolderXray(KERMANY)  # folders are NORMAL / PNEUMONIA: needs a class_map


@needs_kermany
def test_load_splits_folder_prefers_manifest(tmp_path: Path) -> None:
    splits = load_splits("folder", data_root=str(KERMANY), image_size=8, anomaly_ratio=0.0,
                         progress=False, cache_dir=str(tmp_path))
    check_patient_disjoint({k: v.patient_ids for k, v in splits.items()})
    assert splits["train"].labels.sum() == 0 and set(splits["test"].labels) == {0, 1}
    total = sum(len(v) for v in splits.values())
    assert 300 <= total <= 600
    assert not (KERMANY / "_cache").exists()  # nothing written into the shared data


def test_default_class_folders_and_stem_ids(tmp_path: Path) -> None:
    _png(tmp_path / "Normal" / "a.png")
    _png(tmp_path / "Normal" / "sub" / "b.jpg", 50)
    _png(tmp_path / "abnormal" / "c.png", 200)
    _png(tmp_path / "ignored" / "d.png")
    (tmp_path / "Normal" / "notes.txt").write_text("not an image")
    ds = ImageFolderXray(tmp_path, image_size=8)
    assert ds.metadata["path"].tolist() == ["Normal/a.png", "Normal/sub/b.jpg", "abnormal/c.png"]
    assert ds.labels.tolist() == [0, 0, 1]
    assert list(ds.patient_ids) == ["a", "b", "c"]
    assert ds.metadata["finding"].tolist() == ["Normal", "Normal", "abnormal"]
    assert ds[2]["image"].shape == (1, 8, 8)
    ids = ImageFolderXray(tmp_path, image_size=8, patient_id_fn=lambda p: p.stem.upper())
    assert list(ids.patient_ids) == ["A", "B", "C"]


def test_a_class_map_finds_a_folder_whatever_its_unicode_spelling(tmp_path: Path) -> None:
    import unicodedata

    decomposed, composed = unicodedata.normalize("NFD", "normál"), unicodedata.normalize("NFC", "normál")
    _png(tmp_path / decomposed / "a.png")  # as some file systems store it
    _png(tmp_path / "abnormal" / "c.png", 200)
    with pytest.warns(DataWarning):
        ds = ImageFolderXray(tmp_path, image_size=8, class_map={composed: 0, "abnormal": 1})  # as it is typed
    assert ds.labels.tolist() == [0, 1] and ds.metadata["path"][0] == f"{decomposed}/a.png"


def test_images_without_patient_ids_are_each_their_own_patient_even_when_stems_repeat(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "0.png")
    _png(tmp_path / "normal" / "sub" / "0.jpg", 50)
    _png(tmp_path / "abnormal" / "0.png", 200)
    _png(tmp_path / "abnormal" / "x.png", 210)
    with pytest.warns(DataWarning, match="4 image"):
        ds = ImageFolderXray(tmp_path, image_size=8)
    assert sorted(ds.patient_ids) == ["abnormal/0", "normal/0", "normal/sub/0", "x"]  # four patients, not two
    (tmp_path / "m.csv").write_text("file,label,patient_id\nnormal/0.png,0,\nabnormal/0.png,1,\n"
                                    "abnormal/x.png,1,\nnormal/sub/0.jpg,0,x\n")
    with pytest.warns(DataWarning, match="3 image"):
        manifest = ManifestXray(tmp_path / "m.csv")
    # x.png's stem is already patient x's id: it would join that patient
    assert list(manifest.patient_ids) == ["normal/0", "abnormal/0", "abnormal/x", "x"]


def test_folder_errors(tmp_path: Path) -> None:
    _png(tmp_path / "normal" / "a.png")
    (tmp_path / "abnormal").mkdir()
    with pytest.raises(ValueError, match="abnormal holds no image"):
        ImageFolderXray(tmp_path)
    with pytest.raises(FileNotFoundError, match="PNEUMONIA does not exist"):
        ImageFolderXray(tmp_path, class_map={"normal": 0, "PNEUMONIA": 1})
    _png(tmp_path / "_neg" / "b.png")
    with pytest.raises(FileNotFoundError, match="_neg does not exist .*starting with '_' marks a folder the loader skips"):
        ImageFolderXray(tmp_path, class_map={"normal": 0, "_neg": 1})
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        ImageFolderXray(tmp_path, class_map={"normal": 0, "abnormal": 2})
    with pytest.raises(ValueError, match="at least one folder to 0 and one to 1"):
        ImageFolderXray(tmp_path, class_map={"normal": 0})
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        ImageFolderXray(tmp_path / "nope")


def test_manifest_defaults_missing_files_and_errors(tmp_path: Path) -> None:
    for name in ("x1.png", "x2.png", "x3.png"):
        _png(tmp_path / "img" / name)
    pd.DataFrame({"file": ["img/x1.png", "img/x2.png", "img/x3.png", "img/gone.png"], "label": [0, 1, 0, 1]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ManifestXray(tmp_path / "m.csv", image_size=8)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 2 and "dropped 1 of 4" in messages[0] and "gone.png" in messages[0]
    assert "3 image(s) have no patient id" in messages[1]  # the documented default, counted over the images kept
    assert list(ds.patient_ids) == ["x1", "x2", "x3"]
    assert ds.metadata["finding"].tolist() == ["normal", "abnormal", "normal"]
    with pytest.raises(FileNotFoundError, match="1 of 4"):
        ManifestXray(tmp_path / "m.csv", on_missing="raise")

    pd.DataFrame({"path": ["img/x1.png"], "label": [0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['file'\]"):
        ManifestXray(tmp_path / "bad.csv")
    pd.DataFrame({"file": ["img/x1.png", "img/x2.png"], "label": [0, 3]}).to_csv(tmp_path / "lab.csv", index=False)
    with pytest.raises(LabelError, match=r"lab\.csv: 1 label\(s\) not understood.*row 1 \(line 3\): '3'"):
        ManifestXray(tmp_path / "lab.csv")
    pd.DataFrame({"file": ["a.png", "b.png"], "label": [0, 1]}).to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(FileNotFoundError, match="none of the 2 images"):
        ManifestXray(tmp_path / "none.csv")
    with pytest.raises(FileNotFoundError, match="not found"):
        ManifestXray(tmp_path / "absent.csv")


# ------------------------------------------------------------------ registry on tmp folders
def _tiny_mura(root: Path) -> Path:
    """A MURA-v1.1 folder: 4 normal and 3 abnormal wrist patients, 2 images each."""
    folder = root / "MURA-v1.1"
    paths, studies = [], []
    rng = np.random.default_rng(0)
    for p in range(7):
        label = int(p >= 4)
        study = f"MURA-v1.1/train/XR_WRIST/patient{p:05d}/study1_{'positive' if label else 'negative'}"
        studies.append(f"{study}/,{label}")
        for k in (1, 2):
            image = rng.integers(0, 60, (40, 30), dtype=np.uint8)
            image[8:32, 10:20] = 200  # a bright "bone" on a dark plate
            (root / study).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / study / f"image{k}.png")
            paths.append(f"{study}/image{k}.png")
    (folder / "train_image_paths.csv").write_text("\n".join(paths) + "\n")
    (folder / "train_labeled_studies.csv").write_text("\n".join(studies) + "\n")
    (folder / "valid_image_paths.csv").write_text(paths[0].replace("train", "valid") + "\n")
    (folder / "valid_labeled_studies.csv").write_text(studies[0].replace("train", "valid") + "\n")
    valid_study = root / studies[0].split(",")[0].replace("train", "valid")
    valid_study.mkdir(parents=True)
    Image.fromarray(np.full((40, 30), 30, np.uint8)).save(valid_study / "image1.png")
    return folder


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_load_splits_mura_and_folder_on_tmp_data(tmp_path: Path) -> None:
    pytest.importorskip("salad_lite.data.mura")
    folder = _tiny_mura(tmp_path / "mura")
    splits = load_splits("mura", data_root=str(folder), image_size=16, anomaly_ratio=0.0, progress=False)
    assert set(splits) == {"train", "val", "test"}
    assert splits["train"].labels.sum() == 0 and splits["test"][0]["image"].shape == (1, 16, 16)
    check_patient_disjoint({k: v.patient_ids for k, v in splits.items()})
    assert (folder / "_cache" / "mura_16px.npy").is_file()  # <data_root>/_cache by default

    for label, name in ((0, "normal"), (1, "abnormal")):
        for k in range(4):
            _png(tmp_path / "own" / name / f"{name}{k}.png", 40 + 50 * label)
    own = load_splits("folder", data_root=str(tmp_path / "own"), image_size=8, anomaly_ratio=0.0, progress=False)
    assert sum(len(v) for v in own.values()) <= 8 and own["train"].labels.sum() == 0
    with pytest.raises(ValueError, match="needs data_root"):
        load_splits("folder")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_splits("chexpert", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_splits("nih", data_root=str(tmp_path / "absent"))
