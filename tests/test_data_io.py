"""read_grayscale, transforms, XrayDataset / CachedXrayDataset / subset and the on-disk cache."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from salad_lite.data import (
    CachedXrayDataset,
    DataWarning,
    ImageReadError,
    XrayDataset,
    autocontrast,
    read_grayscale,
    resize_pad,
    subset,
    to_tensor,
)
from salad_lite.data.transforms import standard_preprocess
from salad_lite.files import CorruptFileError


def _gradient(height: int = 20, width: int = 30) -> np.ndarray:
    """uint8 [H, W] with distinct values."""
    return (np.arange(height * width).reshape(height, width) % 251).astype(np.uint8)


# ------------------------------------------------------------------ read_grayscale
def test_reads_plain_grayscale_exactly(tmp_path: Path) -> None:
    img = _gradient()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = read_grayscale(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, img)


def test_rgba_opaque_drops_alpha_and_transparent_composites_on_black(tmp_path: Path) -> None:
    gray = _gradient()
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_grayscale(tmp_path / "opaque.png"), gray)

    alpha = np.zeros_like(gray)
    alpha[:, 15:] = 255
    alpha[:, 10:15] = 128
    Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA").save(tmp_path / "half.png")
    out = read_grayscale(tmp_path / "half.png")
    np.testing.assert_array_equal(out[:, :10], 0)  # fully transparent -> black
    np.testing.assert_array_equal(out[:, 15:], gray[:, 15:])
    expected = (gray[:, 10:15].astype(int) * 128 + 127) // 255
    np.testing.assert_array_equal(out[:, 10:15], expected)


def test_la_rgb_and_palette(tmp_path: Path) -> None:
    gray = _gradient()
    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_grayscale(tmp_path / "la.png"), gray)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 0.299 * 255
    Image.fromarray(rgb, "RGB").save(tmp_path / "red.png")
    assert abs(int(read_grayscale(tmp_path / "red.png")[0, 0]) - 76) <= 1
    Image.fromarray(gray).convert("P").save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    np.testing.assert_array_equal(read_grayscale(tmp_path / "pal.png"), gray)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = np.zeros((10, 20), np.uint8)
    img[:, :2] = 255  # bright left edge
    exif = Image.Image().getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    out = read_grayscale(tmp_path / "rot.jpg")
    assert out.shape == (20, 10) and out[:2].mean() > 200  # the left edge is now on top


@pytest.mark.parametrize("max_value, bits", [(4095, 12), (65535, 16), (1000, 10)])
def test_16bit_png_rescaled_by_its_bit_depth(tmp_path: Path, max_value: int, bits: int) -> None:
    data = np.linspace(0, max_value, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = read_grayscale(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    expected = np.rint(data.astype(float) * 255 / (2**bits - 1)).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.max() == round(max_value * 255 / (2**bits - 1))


def test_signed_32bit_is_min_max_stretched(tmp_path: Path) -> None:
    data = np.array([[-55, 0], [100, 200]], dtype=np.int32)  # range 255: exact integers
    Image.fromarray(data, "I").save(tmp_path / "i32.tif")
    out = read_grayscale(tmp_path / "i32.tif")
    np.testing.assert_array_equal(out, [[0, 55], [155, 255]])


def test_missing_truncated_and_corrupt_files_raise_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="image file not found: .*nope.png"):
        read_grayscale(tmp_path / "nope.png")
    (tmp_path / "x.png").mkdir()
    with pytest.raises(ImageReadError, match=r"image .*x\.png is a folder, not an image file"):
        read_grayscale(tmp_path / "x.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png") as info:
        read_grayscale(tmp_path / "cut.png")
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageReadError, match="junk.png"):
        read_grayscale(tmp_path / "junk.png")


# ------------------------------------------------------------------ transforms
def test_resize_pad_keeps_aspect_and_centres() -> None:
    wide = np.full((20, 40), 200, np.uint8)  # H=20, W=40 -> 8 x 16 inside 16 x 16
    out = resize_pad(wide, 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    rows = np.flatnonzero(out.any(axis=1))
    assert rows[0] == 4 and rows[-1] == 11
    np.testing.assert_array_equal(out[:4], 0)
    np.testing.assert_array_equal(out[12:], 0)
    tall = np.full((30, 10), 9, np.uint8)
    cols = np.flatnonzero(resize_pad(tall, 12).any(axis=0))
    assert (cols[0], cols[-1]) == (4, 7)
    np.testing.assert_array_equal(resize_pad(_gradient(16, 16), 16), _gradient(16, 16))
    with pytest.raises(ValueError, match="uint8"):
        resize_pad(np.zeros((4, 4), np.float32), 8)


def test_autocontrast_to_tensor_and_standard_preprocess() -> None:
    img = np.array([[50, 100], [150, 200]], np.uint8)
    out = autocontrast(img)
    assert out.min() == 0 and out.max() == 255 and out[0, 1] == 85
    np.testing.assert_array_equal(autocontrast(np.full((3, 3), 7, np.uint8)), 7)
    tensor = to_tensor(img)
    assert tensor.shape == (1, 2, 2) and tensor.dtype == torch.float32
    assert torch.isclose(tensor.max(), torch.tensor(200 / 255))
    assert to_tensor(np.zeros((5, 3, 3), np.uint8)).shape == (5, 1, 3, 3)
    assert standard_preprocess(img, 8, contrast=True).max() == 255


# ------------------------------------------------------------------ datasets and cache
def _make_set(folder: Path, n: int = 12, size: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + i), dtype=np.uint8)).save(folder / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "label": i % 2, "patient_id": f"p{i // 2}", "finding": "x" * (i % 2)})
    return pd.DataFrame(rows)


def test_xray_dataset_sample_contract(tmp_path: Path) -> None:
    meta = _make_set(tmp_path)
    ds = XrayDataset(meta, image_size=16, root=tmp_path)
    sample = ds[3]
    assert set(sample) == {"image", "label", "index", "patient_id", "finding"}
    assert sample["image"].shape == (1, 16, 16) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert (sample["label"], sample["index"], sample["patient_id"], sample["finding"]) == (1, 3, "p1", "x")
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [i % 2 for i in range(12)]
    assert list(ds.patient_ids[:3]) == ["p0", "p0", "p1"]
    assert ds[-1]["index"] == 11
    with pytest.raises(IndexError):
        ds[12]
    with pytest.raises(ValueError, match="patient_id"):
        XrayDataset(meta.drop(columns="patient_id"), 16, tmp_path)
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        XrayDataset(meta.assign(label=2), 16, tmp_path)
    (tmp_path / "img0.png").unlink()  # lazy: only item 0 fails, when read
    assert ds[1]["index"] == 1
    with pytest.raises(ImageReadError, match="img0.png"):
        ds[0]


def test_cache_round_trip_and_stale_rebuild(tmp_path: Path) -> None:
    meta = _make_set(tmp_path / "src")
    lazy = XrayDataset(meta, image_size=16, root=tmp_path / "src")
    cache = tmp_path / "cache"
    built = CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False)
    assert {p.name for p in cache.iterdir()} == {"demo.npy", "demo.csv", "demo.json"}
    assert built.images.shape == (12, 16, 16) and built.images.dtype == np.uint8
    for i in (0, 5, 11):
        torch.testing.assert_close(built[i]["image"], lazy[i]["image"])
        assert built[i]["patient_id"] == lazy[i]["patient_id"]
    key = json.loads((cache / "demo.json").read_text())["key"]
    assert key["image_size"] == 16 and key["num_sources"] == 12

    # fresh cache: loaded, not re-read (the sources may even be gone)
    np.save(cache / "demo.npy", np.full((12, 16, 16), 7, np.uint8))  # marks "came from disk"
    again = CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False)
    assert int(again.images.max()) == 7
    assert again.metadata["patient_id"].tolist() == meta["patient_id"].tolist()
    assert again.metadata["finding"].tolist() == meta["finding"].tolist()  # "" survives the CSV

    # stale: a label changed -> rebuilt from the files
    relabelled = XrayDataset(meta.assign(label=1 - meta["label"]), image_size=16, root=tmp_path / "src")
    rebuilt = CachedXrayDataset.from_dataset(relabelled, cache_dir=cache, name="demo", progress=False)
    assert int(rebuilt.images.max()) > 7 and rebuilt.labels.tolist() == (1 - meta["label"]).tolist()
    # stale: another size
    smaller = XrayDataset(meta, image_size=8, root=tmp_path / "src")
    assert CachedXrayDataset.from_dataset(smaller, cache_dir=cache, name="demo", progress=False).image_size == 8
    # a damaged key file -> an error naming it (not a silent rebuild); deleting it rebuilds
    (cache / "demo.json").write_text("{broken")
    with pytest.raises(CorruptFileError, match=r"demo\.json.*delete it to rebuild"):
        CachedXrayDataset.from_dataset(smaller, cache_dir=cache, name="demo", progress=False)
    (cache / "demo.json").unlink()
    assert len(CachedXrayDataset.from_dataset(smaller, cache_dir=cache, name="demo", progress=False)) == 12
    assert {p.name for p in cache.iterdir()} == {"demo.npy", "demo.csv", "demo.json"}  # no temporary file left
    loaded = CachedXrayDataset.load(cache, "demo", mmap=True)
    assert loaded.image_size == 8 and len(loaded) == 12


def test_unreadable_images_raise_or_skip_with_one_counted_warning(tmp_path: Path) -> None:
    meta = _make_set(tmp_path)
    for i in (2, 5, 7, 9):
        (tmp_path / f"img{i}.png").write_bytes(b"garbage")
    lazy = XrayDataset(meta, image_size=8, root=tmp_path)
    with pytest.raises(ImageReadError, match="img2.png"):
        CachedXrayDataset.from_dataset(lazy, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "c", progress=False, on_error="skip", workers=2)
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    assert len(data_warnings) == 1
    message = str(data_warnings[0].message)
    assert "skipped 4 of 12" in message and "img2.png" in message
    assert len(kept) == 8 and "img5.png" not in set(kept.metadata["path"])
    assert kept.metadata["path"].tolist() == [f"img{i}.png" for i in (0, 1, 3, 4, 6, 8, 10, 11)]
    # the cache remembers the skips: on_error="raise" rebuilds (and raises)
    with pytest.raises(ImageReadError):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "c", progress=False)


def test_subset_same_type_renumbered_with_orig_index(tmp_path: Path) -> None:
    meta = _make_set(tmp_path)
    lazy = XrayDataset(meta, image_size=8, root=tmp_path)
    cached = CachedXrayDataset.from_dataset(lazy, progress=False)
    for ds in (lazy, cached):
        part = subset(ds, [9, 2, 4])
        assert type(part) is type(ds) and len(part) == 3
        assert part.metadata["orig_index"].tolist() == [9, 2, 4]
        assert part[0]["index"] == 0 and part[0]["patient_id"] == "p4"
        torch.testing.assert_close(part[0]["image"], ds[9]["image"])
        inner = subset(part, [2])
        assert inner.metadata["orig_index"].tolist() == [4] and inner[0]["index"] == 0
        mask = np.zeros(12, bool)
        mask[[1, 3]] = True
        assert subset(ds, mask).metadata["orig_index"].tolist() == [1, 3]
        assert len(ds) == 12  # the parent is untouched
    with pytest.raises(IndexError):
        subset(cached, [12])


def test_cache_is_rebuilt_when_a_source_file_changes_in_place(tmp_path: Path) -> None:
    meta = _make_set(tmp_path / "src")
    lazy = XrayDataset(meta, image_size=16, root=tmp_path / "src")
    cache = tmp_path / "cache"
    CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False)
    np.save(cache / "demo.npy", np.full((12, 16, 16), 7, np.uint8))  # marks "came from the cache"
    assert int(CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False).images.max()) == 7
    # a file replaced in place (same name, other pixels): its stamp differs, so the cache is rebuilt
    replaced = tmp_path / "src" / meta["path"].iloc[3]
    Image.fromarray(np.full((20, 20), 200, np.uint8)).save(replaced)
    os.utime(replaced, ns=(replaced.stat().st_atime_ns, replaced.stat().st_mtime_ns + 10**9))
    rebuilt = CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False)
    assert int(rebuilt.images[3].max()) == 200 and int(rebuilt.images.max()) > 7
    # a source file that is gone does not make the cache stale: it serves without its sources
    np.save(cache / "demo.npy", np.full((12, 16, 16), 7, np.uint8))
    replaced.unlink()
    assert int(CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False).images.max()) == 7


def test_a_skipped_file_that_was_repaired_is_read_on_the_next_build(tmp_path: Path) -> None:
    meta = _make_set(tmp_path)
    good = (tmp_path / "img2.png").read_bytes()
    (tmp_path / "img2.png").write_bytes(b"garbage")
    lazy = XrayDataset(meta, image_size=8, root=tmp_path)
    with pytest.warns(DataWarning, match="skipped 1 of 12"):
        assert len(CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "c", progress=False,
                                                  on_error="skip")) == 11
    (tmp_path / "img2.png").write_bytes(good)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        repaired = CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "c", progress=False, on_error="skip")
    assert len(repaired) == 12 and "img2.png" in set(repaired.metadata["path"])


def test_a_hand_edited_cache_metadata_csv_is_refused(tmp_path: Path) -> None:
    meta = _make_set(tmp_path / "src")
    lazy = XrayDataset(meta, image_size=8, root=tmp_path / "src")
    cache = tmp_path / "cache"
    CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False)
    table = pd.read_csv(cache / "demo.csv", keep_default_na=False)
    table.loc[0, "label"] = 1 - table.loc[0, "label"]  # a flipped label, every other byte the same
    table.to_csv(cache / "demo.csv", index=False, lineterminator="\n")
    with pytest.raises(CorruptFileError, match=r"demo\.csv differs from the one written with the cache"):
        CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False)
    (cache / "demo.json").unlink()  # as the message says: rebuilt from the images
    assert CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False).labels.tolist() \
        == meta["label"].tolist()
    # a cache written before the metadata was hashed is rebuilt, not refused
    info = json.loads((cache / "demo.json").read_text())
    del info["metadata_sha256"]
    (cache / "demo.json").write_text(json.dumps(info))
    np.save(cache / "demo.npy", np.full((12, 8, 8), 7, np.uint8))
    assert int(CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="demo", progress=False).images.max()) > 7


@pytest.mark.parametrize(("content", "message"), [
    (b"", r"EmptyDataError: .*; the file holds no header line\)"),
    (b"path,label\n\xff\xfe\x00bad,0\n", r"UnicodeDecodeError: .*; save it as UTF-8 text\)"),
    (b'path,label\n"unclosed,0\n', r"ParserError: .*; a cell holding a comma must be quoted\)"),
])
def test_an_unreadable_csv_gets_the_hint_of_its_fault_only(tmp_path: Path, content: bytes, message: str) -> None:
    from salad_lite.data.base import read_text_csv

    path = tmp_path / "manifest.csv"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=message) as caught:
        read_text_csv(path, "manifest")
    assert str(path) in str(caught.value) and str(caught.value).count("; ") == 1
