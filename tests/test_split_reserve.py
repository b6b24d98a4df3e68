"""Seeded splits with ``reserve_ratio``: every AR up to it shares one validation and one test set.

``one_class_split`` (NIH, folder) and ``mura_group_split`` (MURA) on synthetic metadata
tables: 400 patients, many with several images, about 40% of them abnormal; the MURA
table groups images by patient + body part. ``reserve_ratio=None`` must keep the
functions' earlier output (fingerprints below, computed with the code before
``reserve_ratio`` existed), whose held-out sets depend on the AR.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from salad_lite.data.mura import mura_group_split
from salad_lite.data.splits import one_class_split

ARS = (0.0, 0.03, 0.05, 0.10, 0.15)
RESERVE = 0.15
PARTS = ("WRIST", "HAND", "ELBOW")


def nih_like(n_patients: int = 400, seed: int = 0) -> pd.DataFrame:
    """One row per image: ``patient_id``, ``label``; ~40% abnormal patients, 1 to ~5 images each."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for p in range(n_patients):
        n_images = 1 + int(rng.poisson(1.0))
        abnormal = rng.random() < 0.4
        for i in range(n_images):
            patients.append(f"p{p:04d}")
            labels.append(int(abnormal and (i == 0 or rng.random() < 0.6)))
    return pd.DataFrame({"patient_id": patients, "label": labels})


def mura_like(n_patients: int = 400, seed: int = 0) -> pd.DataFrame:
    """MURA-like rows: ``patient``, ``patient_id`` (the group: body part + patient), ``body_part``, ``label``."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        abnormal = rng.random() < 0.4
        for k, part in enumerate(PARTS[: 1 + int(rng.integers(0, 3))]):
            group_abnormal = abnormal and (k == 0 or rng.random() < 0.5)
            for i in range(1 + int(rng.poisson(1.0))):
                rows.append({"patient": f"patient{p:05d}", "patient_id": f"XR_{part}/patient{p:05d}",
                             "body_part": part, "label": int(group_abnormal and (i == 0 or rng.random() < 0.7))})
    return pd.DataFrame(rows)


def fingerprint(split: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: hashlib.sha256(np.asarray(v, dtype=np.int64).tobytes()).hexdigest()[:16] for k, v in split.items()}


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return {"nih": nih_like(), "mura": mura_like()}


SPLITTERS = {"nih": one_class_split, "mura": mura_group_split}


@pytest.mark.parametrize("max_train", [0, 300])
@pytest.mark.parametrize("kind", ["nih", "mura"])
def test_held_out_sets_do_not_depend_on_the_ar(tables, kind: str, max_train: int) -> None:
    meta, split_fn = tables[kind], SPLITTERS[kind]
    labels, groups = meta["label"].to_numpy(), meta["patient_id"].to_numpy()
    splits = {ar: split_fn(meta, ar, seed=3, max_train=max_train, reserve_ratio=RESERVE) for ar in ARS}
    first = splits[ARS[0]]
    for ar, split in splits.items():
        for held in ("val", "test"):
            np.testing.assert_array_equal(split[held], first[held], err_msg=f"{kind} {held} at AR {ar}")
            assert set(labels[split[held]]) == {0, 1}
        share = labels[split["train"]].mean()
        if kind == "nih":  # exactly round(AR / (1 - AR) * n_normal_train) abnormal images
            assert share == pytest.approx(ar, abs=0.002)
        else:  # whole groups, mixed ones bring normal images too: at most AR, not far below
            assert 0.75 * ar - 1e-9 <= share <= ar + 1e-9
        if max_train:
            assert len(split["train"]) <= max_train
        sets = {name: set(groups[rows]) for name, rows in split.items()}
        assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
        rows = np.concatenate(list(split.values()))
        assert len(rows) == len(set(rows.tolist()))  # no image in two splits
    assert labels[first["train"]].sum() == 0  # AR 0: normal images only


# Before reserve_ratio existed (commit 5294a6a), seed 3 on these tables gave these splits.
OLD = {("nih", 0.05, 300): {"test": "5d8121507c9b486e", "train": "27d1fd94ed2d0dd1", "val": "458e3c93af5e49c3"},
       ("nih", 0.15, 0): {"test": "ab2342ed26ef1fb0", "train": "19d6293dd25bc0d7", "val": "1802762355f10fc6"},
       ("mura", 0.05, 300): {"test": "a5e61f234cb7e10b", "train": "424954ded3c1493f", "val": "5eeb98c804ee4839"},
       ("mura", 0.15, 0): {"test": "37ddfb26a808e05d", "train": "3a2775a35afa65ec", "val": "6718fe4767d2bdf8"}}


@pytest.mark.parametrize("kind", ["nih", "mura"])
def test_without_reserve_ratio_the_old_ar_dependent_split(tables, kind: str) -> None:
    meta, split_fn = tables[kind], SPLITTERS[kind]
    for (k, ar, max_train), expected in OLD.items():
        if k == kind:
            assert fingerprint(split_fn(meta, ar, seed=3, max_train=max_train)) == expected
            assert fingerprint(split_fn(meta, ar, seed=3, max_train=max_train, reserve_ratio=None)) == expected
    old0, old15 = (split_fn(meta, ar, seed=3) for ar in (0.0, 0.15))
    assert not np.array_equal(old0["test"], old15["test"])  # AR-dependent held-out sets
    new0, new15 = (split_fn(meta, ar, seed=3, reserve_ratio=RESERVE) for ar in (0.0, 0.15))
    np.testing.assert_array_equal(new0["test"], new15["test"])
    # at the reserve's own AR, the reserve changes nothing
    assert fingerprint(new15) == fingerprint(old15) == OLD[(kind, 0.15, 0)]


def test_mura_fallback_takes_held_out_groups_from_the_reserve() -> None:
    """Too few abnormal groups left after the reserve: the two held out come from it, the same at every AR."""
    rows = [{"patient_id": f"N{g:02d}", "label": 0} for g in range(20) for _ in range(5)]
    rows += [{"patient_id": f"A{g}", "label": int(i == 0)} for g in range(3) for i in range(5)]  # 3 mixed groups
    meta = pd.DataFrame(rows)
    labels, groups = meta["label"].to_numpy(), meta["patient_id"].to_numpy()
    splits = {ar: mura_group_split(meta, ar, seed=0, reserve_ratio=RESERVE) for ar in (0.0, 0.03, 0.05, 0.15)}
    for ar, split in splits.items():
        for held in ("val", "test"):
            np.testing.assert_array_equal(split[held], splits[0.0][held], err_msg=f"{held} at AR {ar}")
            assert set(labels[split[held]]) == {0, 1}
        assert labels[split["train"]].mean() <= ar + 1e-9
    held_abnormal = {g for g in groups[np.r_[splits[0.0]["val"], splits[0.0]["test"]]] if g.startswith("A")}
    assert len(held_abnormal) == 2
    assert labels[splits[0.05]["train"]].sum() == 1  # the third group trains at AR > 0
    # without reserve_ratio: the old rule moves groups out of the AR's training split
    old = mura_group_split(meta, 0.05, seed=0)
    assert labels[old["train"]].sum() == 1 and {g for g in groups[old["test"]] if g.startswith("A")}
