"""MURA: preprocessing pipeline on the synthetic limbs, loader, group split, bad inputs, prepare script."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import load_script
from salad_lite.data import mura as mura_module
from salad_lite.data.io import DataWarning, read_grayscale
from salad_lite.data.mura import MURA, MuraFormatError, group_table, mura_group_split, read_mura_metadata
from salad_lite.data.mura_preprocess import (
    detect_carrier,
    dice,
    polygon_iou,
    preprocess_mura_batch,
    preprocess_mura_image,
    segment_body_part,
    unwarp_mask,
    warp_to_carrier,
)
from salad_lite.data.splits import PatientLeakError, check_patient_disjoint
from salad_lite.synth.limb import read_annotations, render_limb_set


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic MURA set (10 patients, ~100 images); returns the folder holding MURA-v1.1."""
    out = tmp_path_factory.mktemp("mura_synth")
    render_limb_set(out, n_patients=10, seed=0, progress=False, workers=1)
    return out


def _copy_set(synth: Path, dest: Path) -> Path:
    shutil.copytree(synth / "MURA-v1.1", dest / "MURA-v1.1")
    return dest / "MURA-v1.1"


# ----------------------------------------------------------------------------- preprocessing


def test_carrier_iou_and_mask_dice_on_synthetic_limbs(synth: Path) -> None:
    rows = list(read_annotations(synth))
    sample = rows[:: max(1, len(rows) // 40)][:40]
    ious, dices = [], []
    for row in sample:
        image = read_grayscale(row["image_path"])
        truth = read_grayscale(row["body_mask_path"]) > 127
        corners = detect_carrier(image, body_part=row["body_part"])
        if corners is None:
            ious.append(0.0)
            dices.append(0.0)
            continue
        assert corners.shape == (4, 2)
        ious.append(polygon_iou(corners, row["corners"]))
        mask = segment_body_part(warp_to_carrier(image, corners))
        in_frame = unwarp_mask(mask, corners, image.shape)
        plate = unwarp_mask(np.ones_like(mask), corners, image.shape)  # the warped (inset) plate area
        dices.append(dice(in_frame, truth & plate))
    ious_arr, dices_arr = np.array(ious), np.array(dices)
    assert len(sample) >= 30
    assert (ious_arr >= 0.9).mean() >= 0.9, np.round(ious_arr, 3)
    assert (dices_arr >= 0.85).mean() >= 0.9, np.round(dices_arr, 3)


def test_preprocess_output_steps_and_inverted_films(synth: Path) -> None:
    row = next(r for r in read_annotations(synth) if r["inverted"] == "0" and r["bright_background"] == "0")
    image = read_grayscale(row["image_path"])
    out, steps = preprocess_mura_image(image, size=96, return_steps=True)
    assert out.shape == (96, 96) and out.dtype == np.uint8
    for bad, message in ((dict(body_part="KNEE"), "body_part must be one of MURA's"),
                         (dict(size=7.5), "size must be an int >= 1"),
                         (dict(img=np.zeros((0, 0), np.uint8)), "non-empty uint8")):
        with pytest.raises(ValueError, match=message):
            preprocess_mura_image(**{"img": image, **bad})
    assert steps["carrier_found"] and not steps["inverted"] and not steps["mask_fallback"]
    for key in ("input", "edges", "warped", "equalized", "hysteresis", "mask", "autocontrast", "resized", "output"):
        assert key in steps
    assert steps["high"] >= steps["low"] > 0
    assert out[0, 0] == 0 and out.max() > 200  # masked background is black, autocontrast stretches the body
    # A negative film: the plate is inverted; the segmentation notices and gives the same mask.
    warped = steps["warped"]
    mask_inv, info = segment_body_part(255 - warped, return_info=True)
    assert info["inverted"]
    assert dice(mask_inv, steps["mask"]) > 0.9
    assert np.array_equal(preprocess_mura_image(image, size=96), out)  # deterministic


def test_no_carrier_falls_back_with_a_count() -> None:
    yy, xx = np.mgrid[0:200, 0:160]
    limb = ((xx - 80) / 30.0) ** 2 < 1.0  # a vertical limb filling the frame, no plate
    image = np.where(limb, 170, 20).astype(np.uint8)
    image = np.clip(image + np.random.default_rng(0).normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    assert detect_carrier(image) is None
    out, steps = preprocess_mura_image(image, size=64, return_steps=True)
    assert not steps["carrier_found"] and out.shape == (64, 64)
    assert dice(steps["mask"], limb) > 0.9
    with pytest.warns(DataWarning, match=r"no carrier found in 2 of 2"):
        batch, stats = preprocess_mura_batch([image, image], size=32, progress=False)
    assert batch.shape == (2, 32, 32) and stats.no_carrier == 2 and stats.no_carrier_items == [0, 1]


# ----------------------------------------------------------------------------- loader


def _pandas_reference(mura_dir: Path) -> pd.DataFrame:
    """The images and their labels computed directly from the CSVs with pandas."""
    frames = []
    for split in ("train", "valid"):
        images = pd.read_csv(mura_dir / f"{split}_image_paths.csv", header=None, names=["path"])
        studies = pd.read_csv(mura_dir / f"{split}_labeled_studies.csv", header=None, names=["study", "label"])
        images["study"] = images["path"].str.rsplit("/", n=1).str[0] + "/"
        merged = images.merge(studies, on="study", how="left", validate="many_to_one")
        merged["part"] = merged["path"].str.split("/").str[2].str.removeprefix("XR_")
        merged["patient"] = merged["path"].str.split("/").str[3]
        frames.append(merged)
    return pd.concat(frames, ignore_index=True)


def test_loader_matches_pandas_and_sample_contract(synth: Path) -> None:
    ds = MURA(synth, image_size=48, preprocess="resize")
    ref = _pandas_reference(synth / "MURA-v1.1")
    meta = ds.metadata
    assert len(ds) == len(ref)
    assert ("MURA-v1.1/" + meta["path"]).tolist() == ref["path"].tolist()
    assert meta["label"].tolist() == ref["label"].tolist()
    assert meta["body_part"].tolist() == ref["part"].tolist()
    assert (meta["patient_id"] == "XR_" + ref["part"] + "/" + ref["patient"]).all()
    counts = meta.groupby(["source_split", "body_part", "label"]).size()
    ref_counts = ref.assign(split=ref["path"].str.split("/").str[1]).groupby(["split", "part", "label"]).size()
    assert counts.to_dict() == ref_counts.to_dict()
    np.testing.assert_array_equal(ds.labels, ref["label"].to_numpy())
    # group labels: normal / abnormal / mixed
    per_group = ref.groupby("XR_" + ref["part"] + "/" + ref["patient"])["label"].agg(["min", "max"])
    expected = {g: ("normal" if mx == 0 else "abnormal" if mn == 1 else "mixed") for g, (mn, mx) in per_group.iterrows()}
    assert meta["group_label"].tolist() == [expected[g] for g in meta["patient_id"]]
    assert set(meta["group_label"]) >= {"normal", "abnormal"}
    sample = ds[5]
    assert set(sample) == {"image", "label", "index", "patient_id", "finding"}
    assert sample["image"].shape == (1, 48, 48) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["index"] == 5 and sample["label"] == int(ref["label"][5])
    assert sample["finding"] == ("abnormal" if sample["label"] else "normal")
    # the MURA-v1.1 folder itself is accepted as root, one official file can be read alone
    valid = MURA(synth / "MURA-v1.1", split_files=("valid",), image_size=32, preprocess="resize")
    assert len(valid) == int((meta["source_split"] == "valid").sum())
    wrists = MURA(synth, image_size=32, preprocess="resize", body_parts=["XR_WRIST", "hand"])
    assert set(wrists.metadata["body_part"]) <= {"WRIST", "HAND"} and len(wrists) > 0


def test_pipeline_items(synth: Path) -> None:
    ds = MURA(synth, image_size=64)  # the paper's pipeline
    image = ds[0]["image"]
    assert image.shape == (1, 64, 64)
    assert float(image[0, 0, 0]) == 0.0 and float(image.max()) > 0.7
    assert ds.fallback_counts["processed"] == 1 and ds.fallback_counts["no_carrier"] == 0


def test_group_split_is_groupwise_and_calls_the_leak_check(synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = read_mura_metadata(synth)
    calls: list[dict] = []

    def spy(splits: dict) -> None:
        calls.append(splits)
        check_patient_disjoint(splits)

    monkeypatch.setattr(mura_module, "check_patient_disjoint", spy)
    table = group_table(meta)
    n_normal_groups = int((table["kind"] == "normal").sum())
    for ar in (0.0, 0.1, 0.3):
        split = mura_group_split(meta, anomaly_ratio=ar, seed=1)
        assert set(split) == {"train", "val", "test"}
        everything = np.concatenate(list(split.values()))
        assert sorted(everything.tolist()) == list(range(len(meta)))  # a partition
        groups = {k: set(meta["patient_id"].to_numpy()[v]) for k, v in split.items()}
        assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        labels = meta["label"].to_numpy()
        share = labels[split["train"]].mean()
        assert share <= ar + 1e-9
        if ar == 0.0:
            assert share == 0.0
            assert len(groups["train"]) == round(0.5 * n_normal_groups)
        for held in ("val", "test"):
            assert set(labels[split[held]]) == {0, 1}
    assert share > 0.0  # AR = 0.3: abnormal groups were added
    assert len(calls) == 3
    # same seed, same split; another seed, another split
    np.testing.assert_array_equal(mura_group_split(meta, 0.1, seed=1)["train"], mura_group_split(meta, 0.1, seed=1)["train"])
    assert not np.array_equal(mura_group_split(meta, 0.0, seed=1)["train"], mura_group_split(meta, 0.0, seed=2)["train"])


def test_group_split_by_patient_keeps_body_parts_together() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(40):  # 40 patients, half of them with two body parts
        for part in ["WRIST", "HAND"][: 1 + p % 2]:
            label = int(rng.random() < 0.4)
            rows += [{"patient": f"patient{p:05d}", "patient_id": f"XR_{part}/patient{p:05d}", "label": label}] * 3
    meta = pd.DataFrame(rows)
    by_part = mura_group_split(meta, 0.1, seed=0)
    patients = {k: set(meta["patient"].to_numpy()[v]) for k, v in by_part.items()}
    assert patients["train"] & (patients["val"] | patients["test"])  # the paper's grouping allows this
    by_patient = mura_group_split(meta, 0.1, seed=0, group_column="patient")
    patients = {k: set(meta["patient"].to_numpy()[v]) for k, v in by_patient.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    with pytest.raises(ValueError, match="anomaly_ratio"):
        mura_group_split(meta, 1.0)
    with pytest.raises(ValueError, match="normal group"):
        mura_group_split(meta[meta["label"] == 1], 0.0)


def test_group_split_raises_on_a_leak(synth: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = read_mura_metadata(synth)

    def leaky_isin(element: np.ndarray, test_elements: np.ndarray) -> np.ndarray:
        return np.ones(len(element), dtype=bool)  # every row in every split

    monkeypatch.setattr(mura_module.np, "isin", leaky_isin)
    with pytest.raises(PatientLeakError):
        mura_group_split(meta, 0.0, seed=0)


# ----------------------------------------------------------------------------- bad inputs


def test_wrong_root_names_the_expected_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train_image_paths\.csv.*valid_labeled_studies\.csv"):
        MURA(tmp_path, image_size=32)
    (tmp_path / "MURA-v1.1").mkdir()
    (tmp_path / "MURA-v1.1" / "train_image_paths.csv").write_text("x\n")
    with pytest.raises(FileNotFoundError, match=r"missing: .*train_labeled_studies\.csv"):
        MURA(tmp_path, image_size=32)


def test_missing_images_policy(synth: Path, tmp_path: Path) -> None:
    mura_dir = _copy_set(synth, tmp_path)
    first = (mura_dir / "train_image_paths.csv").read_text().splitlines()[0]
    (tmp_path / first).unlink()
    with pytest.warns(DataWarning, match=r"dropped 1 of \d+ images"):
        ds = MURA(tmp_path, image_size=32, preprocess="resize")
    assert first.removeprefix("MURA-v1.1/") not in set(ds.metadata["path"])
    with pytest.raises(FileNotFoundError, match="image1.png"):
        MURA(tmp_path, image_size=32, preprocess="resize", on_missing="raise")
    for png in (mura_dir / "train").rglob("*.png"):
        png.unlink()
    for png in (mura_dir / "valid").rglob("*.png"):
        png.unlink()
    with pytest.raises(FileNotFoundError, match="none of the"):
        MURA(tmp_path, image_size=32, preprocess="resize")


@pytest.mark.parametrize(
    ("csv_name", "bad_line", "message"),
    [
        ("train_labeled_studies.csv", "MURA-v1.1/train/XR_HAND/patient00001/study1_negative/,2", "label must be 0 or 1"),
        ("train_labeled_studies.csv", "MURA-v1.1/train/XR_HAND/patient00001/study1_negative/", "expected 2"),
        ("train_labeled_studies.csv", "MURA-v1.1/train/hand/p1/,0", "does not look like"),
        ("train_image_paths.csv", "MURA-v1.1/train/XR_HAND/patient00001/image1.png", "does not look like"),
        ("train_image_paths.csv", "MURA-v1.1/train/XR_HAND/patient99999/study1_negative/image1.png", "has no label"),
        ("valid_image_paths.csv", "MURA-v1.1/train/XR_HAND/patient00001/study1_negative/image1.png", "split 'train'"),
        ("train_labeled_studies.csv", "MURA-v1.1/train/XR_KNEE/patient00001/study1_negative/,0",
         "body part XR_KNEE is not one of MURA's XR_ELBOW, "),
        ("train_image_paths.csv", "FIRST_LINE", r"image listed twice \(first at line 1\)"),
    ],
)
def test_malformed_csv_rows(synth: Path, tmp_path: Path, csv_name: str, bad_line: str, message: str) -> None:
    mura_dir = tmp_path / "MURA-v1.1"
    mura_dir.mkdir()
    for name in ("train_image_paths.csv", "train_labeled_studies.csv", "valid_image_paths.csv", "valid_labeled_studies.csv"):
        shutil.copy(synth / "MURA-v1.1" / name, mura_dir / name)
    lines = (mura_dir / csv_name).read_text().splitlines()
    lines.insert(2, lines[0] if bad_line == "FIRST_LINE" else bad_line)
    (mura_dir / csv_name).write_text("\n".join(lines) + "\n")
    with pytest.raises(MuraFormatError, match=rf"{csv_name}.*line 3.*{message}"):
        read_mura_metadata(tmp_path)


def test_empty_csv_and_label_suffix_mismatch(synth: Path, tmp_path: Path) -> None:
    mura_dir = tmp_path / "MURA-v1.1"
    mura_dir.mkdir()
    for name in ("train_image_paths.csv", "train_labeled_studies.csv", "valid_image_paths.csv", "valid_labeled_studies.csv"):
        shutil.copy(synth / "MURA-v1.1" / name, mura_dir / name)
    studies = (mura_dir / "valid_labeled_studies.csv").read_text().splitlines()
    flipped = [s[:-1] + ("0" if s.endswith("1") else "1") if i == 0 else s for i, s in enumerate(studies)]
    (mura_dir / "valid_labeled_studies.csv").write_text("\n".join(flipped) + "\n")
    with pytest.warns(DataWarning, match="1 MURA study has a CSV label"):
        meta = read_mura_metadata(tmp_path)
    study = flipped[0].split(",")[0].removeprefix("MURA-v1.1/").rstrip("/")
    assert set(meta.loc[meta["study_id"] == study, "label"]) == {int(flipped[0][-1])}
    # a labelled study without an image row is left out with a count, never silently
    images = (mura_dir / "valid_image_paths.csv").read_text().splitlines()
    dropped = study + "/"
    (mura_dir / "valid_image_paths.csv").write_text("\n".join(i for i in images if dropped not in i) + "\n")
    with pytest.warns(DataWarning, match=rf"1 labelled MURA study has no image .* left out, e.g. .*"
                                          rf"valid_labeled_studies.csv: {dropped}"):
        meta = read_mura_metadata(tmp_path)
    assert study not in set(meta["study_id"])
    (mura_dir / "train_labeled_studies.csv").write_text("\n")
    with pytest.raises(MuraFormatError, match="train_labeled_studies.csv is empty"):
        read_mura_metadata(tmp_path)


# ----------------------------------------------------------------------------- prepare script


def test_prepare_script(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_script("data_scripts/prepare_mura.py")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    assert "--anomaly-ratio" in capsys.readouterr().out
    assert script.main(["--root", str(tmp_path / "nowhere")]) == 2
    assert "train_image_paths.csv" in capsys.readouterr().err
    args = ["--root", str(synth), "--image-size", "64", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--anomaly-ratio", "0.1", "--workers", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # nothing is dropped on a complete set
        assert script.main(args) == 0
    out = capsys.readouterr().out
    assert "pipeline fallbacks: no carrier in" in out
    for name in ("train", "val", "test"):
        assert name in out
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1
    images = np.load(cached[0])
    assert images.dtype == np.uint8 and images.shape == (len(read_mura_metadata(synth)), 64, 64)
    assert script.main(args) == 0  # second run: from the cache
    assert "existing cache" in capsys.readouterr().out
