"""The synthetic MURA-like renderer: layout, ground truth, lesions, determinism, manifest reuse."""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from salad_lite.synth.limb import (
    MANIFEST_NAME,
    Lesion,
    plan_limb_set,
    read_annotations,
    render_image,
    render_limb_set,
)

IMAGE_RE = re.compile(r"^MURA-v1\.1/(train|valid)/XR_[A-Z]+/patient\d{5}/study\d+_(positive|negative)/image\d+\.png$")
STUDY_RE = re.compile(r"^MURA-v1\.1/(train|valid)/XR_[A-Z]+/patient\d{5}/study\d+_(positive|negative)/,[01]$")


@pytest.fixture(scope="module")
def limb_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("limbs")
    render_limb_set(out, n_patients=10, seed=0, progress=False, workers=1)
    return out


def test_mura_layout(limb_set: Path) -> None:
    root = limb_set / "MURA-v1.1"
    listed: dict[str, list[str]] = {}
    for split in ("train", "valid"):
        lines = (root / f"{split}_image_paths.csv").read_text().splitlines()
        assert lines and all(IMAGE_RE.match(line) for line in lines), lines[:3]
        assert all(line.split("/")[1] == split for line in lines)
        studies = (root / f"{split}_labeled_studies.csv").read_text().splitlines()
        assert studies and all(STUDY_RE.match(line) for line in studies), studies[:3]
        for line in studies:  # folder suffix agrees with the label
            assert line.endswith(",1") == ("_positive/" in line)
        assert {line.rsplit("/", 1)[0] + "/" for line in lines} == {s.split(",")[0] for s in studies}
        listed[split] = lines
    patients = {split: {line.split("/")[3] for line in lines} for split, lines in listed.items()}
    assert patients["train"] and patients["valid"] and not patients["train"] & patients["valid"]
    every = listed["train"] + listed["valid"]
    studies_per_patient: dict[str, set[str]] = {}
    images_per_study: dict[str, int] = {}
    for line in every:
        parts = line.split("/")
        studies_per_patient.setdefault(parts[3], set()).add("/".join(parts[2:5]))
        images_per_study["/".join(parts[:5])] = images_per_study.get("/".join(parts[:5]), 0) + 1
    assert max(len(s) for s in studies_per_patient.values()) >= 2
    assert max(images_per_study.values()) >= 3
    sizes = set()
    for line in every[::7]:
        with Image.open(limb_set / line) as img:
            assert img.mode == "L" and img.format == "PNG"
            sizes.add(img.size)
            assert img.size[0] != img.size[1]
    assert len(sizes) > 3  # varied sizes
    assert {line.endswith(",1") for line in (root / "train_labeled_studies.csv").read_text().splitlines()} == {True, False}


def test_ground_truth(limb_set: Path) -> None:
    rows = list(read_annotations(limb_set))
    n_images = sum(len((limb_set / "MURA-v1.1" / f"{s}_image_paths.csv").read_text().splitlines()) for s in ("train", "valid"))
    assert len(rows) == n_images
    assert {r["abnormality"] for r in rows if r["label"] == 1} <= {"fracture", "hardware", "lytic"}
    assert {r["abnormality"] for r in rows if r["label"] == 0} == {"none"}
    for row in rows[::5]:
        image = np.asarray(Image.open(row["image_path"]))
        body = np.asarray(Image.open(row["body_mask_path"])) > 127
        bone = np.asarray(Image.open(row["bone_mask_path"])) > 127
        assert body.shape == bone.shape == image.shape
        assert bone.any() and not (bone & ~body).any()  # bones lie inside the body part
        corners = row["corners"]
        h, w = image.shape
        assert (corners[:, 0] >= -0.5).all() and (corners[:, 0] <= w - 0.5).all()
        assert (corners[:, 1] >= -0.5).all() and (corners[:, 1] <= h - 0.5).all()
        # The plate differs from the background: compare a ring just inside vs just outside its edges.
        plate = np.zeros(image.shape, np.uint8)
        cv2.fillPoly(plate, [np.rint(corners).astype(np.int32)], 1)
        inside = ndimage.binary_erosion(plate, iterations=3) & ~ndimage.binary_erosion(plate, iterations=6) & ~body
        outside = ndimage.binary_dilation(plate, iterations=6) & ~ndimage.binary_dilation(plate, iterations=3)
        assert abs(float(image[inside].mean()) - float(image[outside].mean())) > 15
        assert not (body & ~plate.astype(bool) & ~ndimage.binary_dilation(plate, iterations=2)).any()


@pytest.mark.parametrize("kind", ["fracture", "hardware", "lytic"])
def test_lesions_change_the_bone(kind: str) -> None:
    spec = next(s for s in plan_limb_set(10, seed=0) if s.part in ("FOREARM", "WRIST", "HUMERUS", "ELBOW"))
    lesion = Lesion(kind, severity=1.0, bone_rank=0, position=0.5, angle=0.5, side=1.0)
    normal = render_image(dataclasses.replace(spec, lesion=None, label=0))
    abnormal = render_image(dataclasses.replace(spec, lesion=lesion, label=1))
    diff = abnormal.image.astype(int) - normal.image.astype(int)
    changed = np.abs(diff) > 25
    assert changed.sum() > 30, "the lesion must be visible"
    near_bone = ndimage.binary_dilation(normal.bone_mask | abnormal.bone_mask, iterations=6)
    assert changed[~near_bone].sum() <= 0.02 * changed.sum(), "the lesion lies on a bone"
    if kind == "hardware":
        assert diff.max() > 80  # metal is far brighter than bone
    if kind == "lytic":
        assert diff[changed].mean() < 0  # lucent


def test_deterministic_and_worker_independent(tmp_path: Path) -> None:
    a = render_limb_set(tmp_path / "a", n_patients=2, seed=5, progress=False, workers=1)
    b = render_limb_set(tmp_path / "b", n_patients=2, seed=5, progress=False, workers=2)
    c = render_limb_set(tmp_path / "c", n_patients=2, seed=6, progress=False, workers=1)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 10
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    gt_a = (tmp_path / "a" / "groundtruth" / "annotations.csv").read_bytes()
    assert gt_a == (tmp_path / "b" / "groundtruth" / "annotations.csv").read_bytes()
    pngs_a = {p.read_bytes() for p in a.rglob("*.png")}
    pngs_c = {p.read_bytes() for p in c.rglob("*.png")}
    assert not pngs_a & pngs_c  # another seed gives other images


def test_manifest_reuse_rerender_and_foreign_folder(tmp_path: Path) -> None:
    root = render_limb_set(tmp_path / "s", n_patients=2, seed=1, progress=False)
    some_png = next(root.rglob("*.png"))
    stamp = some_png.stat().st_mtime_ns
    assert render_limb_set(tmp_path / "s", n_patients=2, seed=1, progress=False) == root
    assert some_png.stat().st_mtime_ns == stamp  # complete set with the same parameters: not re-rendered
    some_png.unlink()  # incomplete: rendered again
    render_limb_set(tmp_path / "s", n_patients=2, seed=1, progress=False)
    assert some_png.is_file()
    render_limb_set(tmp_path / "s", n_patients=2, seed=2, progress=False)  # other parameters: replaced
    with open(tmp_path / "s" / "groundtruth" / "annotations.csv", newline="") as fh:
        listed = {row["path"] for row in csv.DictReader(fh)}
    on_disk = {str(p.relative_to(tmp_path / "s")) for p in root.rglob("*.png")}
    assert listed == on_disk
    assert '"seed": 2' in (tmp_path / "s" / MANIFEST_NAME).read_text()
    foreign = tmp_path / "real" / "MURA-v1.1"
    foreign.mkdir(parents=True)
    (foreign / "train_image_paths.csv").write_text("MURA-v1.1/train/XR_HAND/patient00001/study1_negative/image1.png\n")
    with pytest.raises(FileExistsError, match="not made by render_limb_set"):
        render_limb_set(tmp_path / "real", n_patients=2, progress=False)
    assert (foreign / "train_image_paths.csv").is_file()


def test_the_smallest_set_is_one_the_mura_loader_reads(tmp_path: Path) -> None:
    """Two patients (one training, one validation) is the least a loadable MURA layout holds; one is refused."""
    from salad_lite.data.mura import read_mura_metadata
    from salad_lite.synth import LIMB_MIN_PATIENTS

    assert LIMB_MIN_PATIENTS == 2
    with pytest.raises(ValueError, match=r"n_patients must be an int >= 2 \(.*validation patient"):
        render_limb_set(tmp_path / "one", n_patients=1, progress=False, workers=1)
    assert not (tmp_path / "one").exists()
    root = render_limb_set(tmp_path / "two", n_patients=2, seed=0, progress=False, workers=1)
    meta = read_mura_metadata(root)  # reads both official CSVs, each with rows
    assert set(meta["source_split"]) == {"train", "valid"}


@pytest.mark.parametrize("call, message", [
    (lambda: plan_limb_set(1), "n_patients must be an int >= 2"),
    (lambda: plan_limb_set(2.5), "n_patients must be an int >= 2.*got 2.5"),
    (lambda: plan_limb_set(True), "n_patients must be an int >= 2.*got True"),
    (lambda: plan_limb_set(float("inf")), "n_patients must be an int >= 2.*got inf"),
    (lambda: plan_limb_set(float("nan")), "n_patients must be an int >= 2.*got nan"),
    (lambda: plan_limb_set(2, seed=-1), r"seed must be an int in \[0, 4294967295\], got -1"),
    (lambda: plan_limb_set(2, seed=None), "seed must be an int.*got None"),
    (lambda: render_limb_set(Path("unused"), n_patients=2, workers=0), r"workers must be an int in \[1, "),
    (lambda: render_limb_set(Path("unused"), n_patients=2, workers=-4), r"workers must be an int in \[1, "),
    (lambda: render_limb_set(Path("unused"), n_patients=2, workers=10_000), "this machine's CPUs"),
    (lambda: render_limb_set(Path("unused"), n_patients=2.5), "n_patients must be an int"),
])
def test_bad_arguments_are_refused_by_name(call, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        call()
    assert not Path("unused").exists()
