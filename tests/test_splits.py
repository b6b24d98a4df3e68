"""Patient-wise one-class split and the patient-leak check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from salad_lite.data import CachedXrayDataset, subset
from salad_lite.data.registry import describe_splits
from salad_lite.data.generic import image_ids
from salad_lite.data.splits import (
    PatientLeakError,
    check_patient_disjoint,
    one_class_split,
    patient_ids_of,
    patient_key,
)


def _metadata(n_images: int = 1500, n_patients: int = 900, abnormal_share: float = 0.45, seed: int = 0) -> pd.DataFrame:
    """Images with repeat patients; some patients mix normal and abnormal images."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "label": (rng.random(n_images) < abnormal_share).astype(np.int64),
            "patient_id": [f"P{p:05d}" for p in rng.integers(0, n_patients, n_images)],
        }
    )


def test_check_patient_disjoint_names_patients_and_splits() -> None:
    check_patient_disjoint({"train": ["a", "b"], "val": ["c"], "test": ["d", "d"]})
    with pytest.raises(PatientLeakError, match=r"'val' and 'test'.*\['c'\]"):
        check_patient_disjoint({"train": ["a"], "val": ["b", "c"], "test": ["c", "d"]})
    with pytest.raises(ValueError, match="2 patient"):  # PatientLeakError is a ValueError
        check_patient_disjoint({"train": [1, 2, 3], "test": ["2", "3"]})  # ids compared as text


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("anomaly_ratio", [0.0, 0.05, 0.15])
def test_one_class_split_protocol(seed: int, anomaly_ratio: float) -> None:
    meta = _metadata(seed=seed)
    splits = one_class_split(meta, anomaly_ratio=anomaly_ratio, seed=seed)
    assert set(splits) == {"train", "val", "test"}
    labels = meta["label"].to_numpy()
    pids = meta["patient_id"].to_numpy()
    for rows in splits.values():
        assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0)  # sorted, no repeats
    all_rows = np.concatenate(list(splits.values()))
    assert len(all_rows) == len(set(all_rows.tolist()))  # no image in two splits
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(pids[splits[a]]) & set(pids[splits[b]])

    train_labels = labels[splits["train"]]
    share = train_labels.mean()
    if anomaly_ratio == 0:
        assert share == 0.0
    else:
        expected = round(anomaly_ratio / (1 - anomaly_ratio) * (train_labels == 0).sum())
        assert (train_labels == 1).sum() == expected
        assert abs(share - anomaly_ratio) < 0.01
    for name in ("val", "test"):
        held = labels[splits[name]]
        assert 0.4 <= held.mean() <= 0.6, (name, held.mean())  # roughly balanced
    assert 0.35 <= len(splits["val"]) / (len(splits["val"]) + len(splits["test"])) <= 0.65


def test_one_class_split_is_deterministic_and_seed_dependent() -> None:
    meta = _metadata()
    first, again = one_class_split(meta, seed=3), one_class_split(meta, seed=3)
    other = one_class_split(meta, seed=4)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["train"], other["train"])


def test_max_train_and_val_fraction() -> None:
    meta = _metadata()
    capped = one_class_split(meta, anomaly_ratio=0.1, max_train=100)
    assert 85 <= len(capped["train"]) <= 101
    assert abs(meta["label"].to_numpy()[capped["train"]].mean() - 0.1) < 0.02
    # without contamination the cap does not move the held-out sets
    np.testing.assert_array_equal(one_class_split(meta, max_train=50)["test"], one_class_split(meta)["test"])
    small_val = one_class_split(meta, val_fraction=0.2)
    ratio = len(small_val["val"]) / (len(small_val["val"]) + len(small_val["test"]))
    assert 0.15 <= ratio <= 0.3


def _cached(meta: pd.DataFrame) -> CachedXrayDataset:
    n = len(meta)
    return CachedXrayDataset(np.zeros((n, 2, 2), np.uint8),
                             meta.assign(path=[f"{i}.png" for i in range(n)], finding="x"))


def test_describe_splits_counts() -> None:
    meta = _metadata()
    splits = one_class_split(meta, anomaly_ratio=0.05)
    full = _cached(meta)
    table = describe_splits({name: subset(full, rows) for name, rows in splits.items()})
    assert table.loc["train", "images"] == len(splits["train"])
    assert table.loc["val", "abnormal"] == meta["label"].to_numpy()[splits["val"]].sum()
    assert table.loc["test", "patients"] == len(set(meta["patient_id"].to_numpy()[splits["test"]]))
    assert (table["normal"] + table["abnormal"] == table["images"]).all()
    with pytest.raises(TypeError, match="split 'train'.*without .labels"):
        describe_splits({"train": [1, 2]})


class _ArrayDataset(torch.utils.data.Dataset):
    """Like the trainer tests' datasets: patient ids only in ``.metadata``."""

    def __init__(self, patients: list[str]) -> None:
        self.metadata = pd.DataFrame({"patient_id": patients, "label": [0] * len(patients)})

    def __len__(self) -> int:
        return len(self.metadata)

    def __getitem__(self, i: int) -> dict:
        return {"patient_id": self.metadata["patient_id"].iloc[i]}


def test_check_patient_disjoint_accepts_datasets_subsets_and_ids() -> None:
    meta = pd.DataFrame({"label": [0, 0, 1, 1], "patient_id": ["0007", "p2", "p3", "p4"]})
    cached = _cached(meta)
    hand_made = {"train": _ArrayDataset(["p7", "p9"]), "val": subset(cached, [0, 2]),
                 "test": torch.utils.data.Subset(_ArrayDataset(["p3", "p8", "p4"]), [1])}
    check_patient_disjoint(hand_made)  # "p7" and "0007" are different ids
    assert patient_ids_of(hand_made["test"]) == ["p8"]
    leaking = {"train": _ArrayDataset(["p1", "0007", "p3"]), "val": cached,
               "test": torch.utils.data.Subset(_ArrayDataset(["p3", "p8"]), [0])}
    with pytest.raises(PatientLeakError) as caught:
        check_patient_disjoint(leaking)
    message = str(caught.value)
    assert "'train' and 'val'" in message and "['0007', 'p3']" in message
    assert "'train' and 'test'" in message and "'val' and 'test'" in message  # every leaking pair is named
    with pytest.raises(TypeError, match="split 'val'.*string"):
        check_patient_disjoint({"train": ["a"], "val": "abc"})
    with pytest.raises(TypeError, match="split 'val' is a dict without patient ids"):
        check_patient_disjoint({"train": ["a"], "val": {"a": 1}})


def test_one_class_split_errors() -> None:
    meta = _metadata(n_images=200, n_patients=100)
    with pytest.raises(ValueError, match="no abnormal images"):
        one_class_split(meta.assign(label=0))
    with pytest.raises(ValueError, match="no normal images"):
        one_class_split(meta.assign(label=1))
    with pytest.raises(ValueError, match="anomaly_ratio"):
        one_class_split(meta, anomaly_ratio=1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        one_class_split(meta, val_fraction=0.0)
    for bad, message in ((dict(reserve_ratio=-1.0), r"reserve_ratio must be a number in \[0, 1\), got -1.0"),
                         (dict(reserve_ratio=float("nan")), r"reserve_ratio must be .*got nan"),
                         (dict(anomaly_ratio=float("nan")), r"anomaly_ratio must be .*got nan"),
                         (dict(val_fraction=float("nan")), r"val_fraction must be a number in \(0, 1\)"),
                         (dict(max_train=1.5), r"max_train must be an int >= 0 \(0 = no cap\), got 1.5 \(float\)"),
                         (dict(seed=-1), r"seed must be an int in \[0, 4294967295\], got -1"),
                         (dict(seed="3"), r"seed must be an int in \[0, 4294967295\], got '3'")):
        with pytest.raises(ValueError, match=message):  # never max(AR, NaN) = AR, or NumPy's unnamed error
            one_class_split(meta, **bad)
    with pytest.raises(ValueError, match="patient_id"):
        one_class_split(meta.drop(columns="patient_id"))
    two_normal = pd.DataFrame({"label": [0, 0, 1, 1, 1], "patient_id": ["a", "b", "c", "d", "e"]})
    with pytest.raises(ValueError, match="2 patient\\(s\\) with only normal images; need at least 3"):
        one_class_split(two_normal)
    few_abnormal = pd.DataFrame({"label": [0] * 10 + [1] * 3, "patient_id": list("abcdefghij") + ["x", "y", "z"]})
    with pytest.raises(ValueError, match="abnormal patients for validation and test"):
        one_class_split(few_abnormal, anomaly_ratio=0.3)


def test_numeric_patient_ids_with_and_without_leading_zeros_are_one_patient() -> None:
    assert [patient_key(t) for t in ("03140", "3140", "000", "0", "p0007", "07a", "XR_HAND/patient00001")] == [
        "3140", "3140", "0", "0", "p0007", "07a", "XR_HAND/patient00001"]
    with pytest.raises(PatientLeakError, match=r"1 patient\(s\) appear in both 'train' and 'val': "
                                               r"\[\"0007 \(written '7' in 'val'\)\"\]"):
        check_patient_disjoint({"train": ["0007", "p1"], "val": [7.0, "p2"]})
    # half of patient 3140's films written '03140': the split keeps all 12 in one split, ids stay as written
    meta = _metadata(300, 150)
    meta.loc[:11, "patient_id"] = ["3140", "03140"] * 6
    meta.loc[:11, "label"] = 0
    for seed in range(5):
        splits = one_class_split(meta, seed=seed)
        holding = [name for name, rows in splits.items() if set(rows) & set(range(12))]
        assert len(holding) == 1, (seed, holding)
        assert set(range(12)) <= set(splits[holding[0]])
    # ids written one way split as they always did: the order of the patients is their written order
    padded = _metadata(300, 150)
    padded["patient_id"] = [f"{int(p[1:]):08d}" for p in padded["patient_id"]]  # "P00012" -> "00000012"
    prefixed = padded.assign(patient_id=["p" + p for p in padded["patient_id"]])  # text: never merged
    for seed in range(3):
        assert {k: v.tolist() for k, v in one_class_split(padded, seed=seed).items()} == {
            k: v.tolist() for k, v in one_class_split(prefixed, seed=seed).items()}
    # images without a patient id: stems that are one number take their paths
    assert image_ids(["normal/07.png", "abnormal/7.png", "normal/8.png"], taken={"009"}) == [
        "normal/07", "abnormal/7", "8"]
    assert image_ids(["normal/9.png"], taken={"009"}) == ["normal/9"]


def test_a_split_file_that_leaves_images_out_counts_them(tmp_path) -> None:
    import warnings

    from salad_lite.data import DataWarning
    from salad_lite.data.split_file import read_split_file, split_positions

    meta = pd.DataFrame({"path": [f"images/{k}.png" for k in range(8)], "patient_id": [str(k) for k in range(8)],
                         "label": [0] * 8})
    split = tmp_path / "split.csv"
    split.write_text("image,split\n0.png,train\n1.png,val\n2.png,test\n")
    with pytest.warns(DataWarning, match=r"5 of the dataset's 8 images are in no split \(the file names 3\) and are "
                                         r"left unused: 'images/3.png'"):
        result = split_positions(read_split_file(split), meta, f"split file {split}")
    assert {k: v.tolist() for k, v in result.items()} == {"train": [0], "val": [1], "test": [2]}
    split.write_text("image,split\n" + "".join(f"{k}.png,{('train', 'val', 'test')[k % 3]}\n" for k in range(8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        split_positions(read_split_file(split), meta)  # every image named: no warning
