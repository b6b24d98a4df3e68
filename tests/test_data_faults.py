"""Bad inputs of the data layer, kind by kind (issue 8): strict labels (3), hidden and system
files (7), no litter and named corrupt files (10), text that stays text (11), and the layout
of the renderers (one writer, one place for the embedded sizes, no import back into data)."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REPO, load_script
from salad_lite.data import (
    CachedXrayDataset,
    DataWarning,
    ImageFolderXray,
    ImageReadError,
    LabelError,
    ManifestXray,
    NIHChestXray,
    XrayDataset,
    is_hidden_or_system,
    list_files,
    load_splits,
    read_grayscale,
)
from salad_lite.data.base import normalise_metadata, parse_binary_labels, read_text_csv
from salad_lite.data.batches import (
    NonFiniteImageError,
    OneClassSplitError,
    check_finite_images,
    check_splits,
    dataset_labels,
    dataset_patient_ids,
    gather_images,
    image_batches,
)
from salad_lite.data.mura import MuraFormatError, read_mura_metadata
from salad_lite.data.nih import nih_metadata, parse_finding_labels
from salad_lite.data.splits import MissingPatientIdError, PatientLeakError, check_patient_disjoint, patient_ids_of
from salad_lite.files import TEMP_SUFFIX, CorruptFileError
from salad_lite.synth import EMBEDDED_SCALES
from salad_lite.synth.writer import MANIFEST_FORMAT, SetWriter

NIH_HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]
#: Texts that pandas would turn into numbers or missing values by default.
TRICKY_TEXT = ["0007", "1", "2.0", "NA", "None", "null", "nan", "N/A", "<NA>", "NaN"]


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12), value, np.uint8)).save(path)


def _litter(folder: Path) -> None:
    """The hidden and system files a copy from macOS or Windows leaves next to real images."""
    for real in sorted(p for p in folder.iterdir() if p.suffix == ".png"):
        (folder / f"._{real.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # AppleDouble, not a PNG
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "ehthumbs.db", "Icon\r", "~$notes.png"):
        (folder / name).write_bytes(b"junk")
    _png(folder / ".hidden" / "secret.png")  # a dot-folder: never entered
    (folder / "__MACOSX").mkdir(exist_ok=True)
    (folder / "__MACOSX" / "._x.png").write_bytes(b"junk")
    _png(folder / "__MACOSX" / "y.png")


def _nih_folder(root: Path, findings: list[str], patients: list[str] | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, finding in enumerate(findings):
        name = f"{i + 1:08d}_000.png"
        _png(root / "images" / name, 10 * i)
        patient = patients[i] if patients else str(i + 1)
        rows.append([name, finding, "000", patient, "058Y", "F", "PA", 12, 10, 0.1, 0.1])
    pd.DataFrame(rows, columns=NIH_HEADER).to_csv(root / "Data_Entry_2017.csv", index=False)
    return root


def _mura_csvs(root: Path, label: str = "1", images: tuple[str, ...] = ("image1.png",)) -> Path:
    """The two train CSVs of a one-study MURA folder (no image files); returns the MURA-v1.1 folder."""
    folder = root / "MURA-v1.1"
    folder.mkdir(parents=True)
    study = "MURA-v1.1/train/XR_HAND/patient00001/study1_positive"
    (folder / "train_labeled_studies.csv").write_text(f"{study}/,{label}\n")
    (folder / "train_image_paths.csv").write_text("".join(f"{study}/{name}\n" for name in images))
    return folder


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _assert_clean_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr or ": error: " in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# ------------------------------------------------------------------ kind 3: labels parsed strictly
def test_binary_labels_accept_only_zero_and_one() -> None:
    assert parse_binary_labels([0, 1, "0", " 1 ", "1.0", 0.0, np.int64(1)], "t").tolist() == [0, 1, 0, 1, 1, 0, 1]
    for bad in (2, -1, "2", "yes", "", float("nan"), True, "1.5", None):
        with pytest.raises(LabelError, match=r"m\.csv: 1 label\(s\) not understood.*row 1 \(line 3\)"):
            parse_binary_labels([0, bad], "m.csv", first_line=2)


def test_nih_findings_parsed_strictly(tmp_path: Path) -> None:
    parsed = parse_finding_labels(pd.Series(["no finding", " NO FINDING ", "effusion|Mass", "Hernia"]))
    assert parsed["label"].tolist() == [0, 0, 1, 1]
    assert parsed["finding"].tolist() == ["No Finding", "No Finding", "Effusion|Mass", "Hernia"]
    for bad in ("Fracture", "2", "", "No Finding|Mass", "Effusion|"):
        root = _nih_folder(tmp_path / f"nih{abs(hash(bad))}", ["No Finding", "Effusion", bad, "Mass"])
        with pytest.raises(LabelError) as caught:
            NIHChestXray(root, view="all", image_size=8)
        message = str(caught.value)
        assert "Data_Entry_2017.csv" in message and "row 2 (line 4)" in message and repr(bad) in message


def test_nih_lowercase_no_finding_is_normal(tmp_path: Path) -> None:
    root = _nih_folder(tmp_path, ["no finding", "Effusion", "No Finding"])
    ds = NIHChestXray(root, view="all", image_size=8)
    assert ds.labels.tolist() == [0, 1, 0]
    assert ds.metadata["finding"].tolist() == ["No Finding", "Effusion", "No Finding"]
    assert ds.metadata["age"].tolist() == [58, 58, 58] and ds.metadata["follow_up"].tolist() == [0, 0, 0]


def test_manifest_and_class_map_labels_strict(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / name)
    for bad in ("2", "yes", "", "-1", "True"):
        (tmp_path / "m.csv").write_text(f"file,label\na.png,0\nb.png,1\nc.png,{bad}\n")
        with pytest.raises(LabelError, match=rf"m\.csv: 1 label\(s\).*row 2 \(line 4\): {bad!r}"):
            ManifestXray(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("file,label\na.png,0.0\nb.png,1.0\nc.png, 1\n")
    assert ManifestXray(tmp_path / "m.csv").labels.tolist() == [0, 1, 1]
    _png(tmp_path / "folders" / "n" / "a.png")
    _png(tmp_path / "folders" / "x" / "b.png")
    for bad in (2, True, 1.0, "1"):
        with pytest.raises(ValueError, match="class_map labels must be 0"):
            ImageFolderXray(tmp_path / "folders", class_map={"n": 0, "x": bad})


def test_mura_label_other_than_0_1_names_file_and_line(tmp_path: Path) -> None:
    _mura_csvs(tmp_path, label="2")
    with pytest.raises(MuraFormatError, match=r"train_labeled_studies\.csv: line 1: .*label must be 0 or 1, got '2'"):
        read_mura_metadata(tmp_path, split_files=("train",))


def test_cached_metadata_labels_strict(tmp_path: Path) -> None:
    meta = pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1], "patient_id": ["p", "q"], "finding": ["", "x"]})
    ds = CachedXrayDataset(np.zeros((2, 4, 4), np.uint8), meta)
    np.save(tmp_path / "d.npy", ds.images)
    ds.metadata.assign(label=["0", "2"]).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(LabelError, match=r"d\.csv: 1 label\(s\).*row 1 \(line 3\): '2'"):
        CachedXrayDataset.load(tmp_path, "d")


# ------------------------------------------------------------------ kind 7: hidden and system files
def test_hidden_rule() -> None:
    for name in ("._a.png", ".DS_Store", "Thumbs.db", "THUMBS.DB", "desktop.ini", "ehthumbs.db", "Icon\r",
                 "__MACOSX", "~$lock.png", "$RECYCLE.BIN", ".hidden"):
        assert is_hidden_or_system(Path("/data") / name), name
    assert is_hidden_or_system("sub/__MACOSX/normal/a.png")  # relative: every component
    assert is_hidden_or_system(Path("/d/.cache/x/a.png"), root="/d")
    assert not is_hidden_or_system(Path("/home/u/.cache/x/a.png"), root="/home/u/.cache/x")  # above the root: fine
    assert not is_hidden_or_system("../images/a.png") and not is_hidden_or_system("Icon.png")
    with pytest.raises(ValueError, match="does not lie under"):
        is_hidden_or_system("/a/b.png", root="/c")


def test_image_folder_ignores_apple_double_and_system_files(tmp_path: Path) -> None:
    for k in range(7):
        _png(tmp_path / "normal" / f"n{k}.png", 20 * k)
    for k in range(6):
        _png(tmp_path / "abnormal" / f"a{k}.png", 200)
    _litter(tmp_path / "normal")
    _litter(tmp_path / "abnormal")
    _png(tmp_path / ".Trashes" / "normal" / "t.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "unreadable file" warning: they are not listed at all
        ds = ImageFolderXray(tmp_path, image_size=8, patient_id_fn=lambda path: path.stem)
        cached = CachedXrayDataset.from_dataset(ds, progress=False, on_error="skip")
    assert len(ds) == 13 and len(cached) == 13
    assert not any(is_hidden_or_system(p) for p in ds.metadata["path"])
    assert sorted(Path(p).name for p in ds.metadata["path"]) == sorted(
        [f"n{k}.png" for k in range(7)] + [f"a{k}.png" for k in range(6)])
    listed = list_files(tmp_path / "normal", {".png"})
    assert [p.name for p in listed] == [f"n{k}.png" for k in range(7)]


def test_nih_index_skips_hidden_files_and_refuses_listed_ones(tmp_path: Path) -> None:
    root = _nih_folder(tmp_path, ["No Finding", "Effusion"])
    _litter(root / "images")
    ds = NIHChestXray(root, view="all", image_size=8)
    assert len(ds) == 2
    table = pd.read_csv(root / "Data_Entry_2017.csv", dtype=str)
    table.loc[1, "Image Index"] = "._00000001_000.png"
    table.to_csv(root / "Data_Entry_2017.csv", index=False)
    with pytest.raises(ValueError, match=r"hidden or system files.*rows \[1\].*\._00000001_000\.png"):
        NIHChestXray(root, view="all", image_size=8)


def test_manifest_and_mura_refuse_listed_hidden_files(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "._a.png").write_bytes(b"junk")
    (tmp_path / "m.csv").write_text("file,label\na.png,0\n._a.png,1\n")
    with pytest.raises(ValueError, match=r"m\.csv: 'file' naming a hidden or system file.*lines \[3\]"):
        ManifestXray(tmp_path / "m.csv")
    _mura_csvs(tmp_path, images=("image1.png", "._image1.png"))
    with pytest.raises(MuraFormatError, match=r"train_image_paths\.csv: line 2: .*hidden or system file"):
        read_mura_metadata(tmp_path, split_files=("train",))


# ------------------------------------------------------------------ kind 10: no litter, named corrupt files
def test_wrong_root_creates_no_cache_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="normal/' and 'abnormal/'"):
        load_splits("folder", data_root=str(empty), progress=False)
    with pytest.raises(FileNotFoundError, match="no Data_Entry_2017"):
        load_splits("nih", data_root=str(empty), progress=False)
    with pytest.raises(FileNotFoundError, match="not a MURA v1.1 root"):
        load_splits("mura", data_root=str(empty), progress=False)
    assert list(empty.iterdir()) == []


def test_unsplittable_set_creates_no_cache(tmp_path: Path) -> None:
    root = _nih_folder(tmp_path / "nih", ["No Finding"] * 6)
    with pytest.raises(ValueError, match="no abnormal images"):
        load_splits("nih", data_root=str(root), image_size=8, progress=False)
    assert not (root / "_cache").exists()


def test_cache_write_failure_leaves_no_litter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in range(4):
        _png(tmp_path / "src" / f"{k}.png", 30 * k)
    meta = pd.DataFrame({"path": [f"{k}.png" for k in range(4)], "label": [0, 0, 1, 1],
                         "patient_id": list("abcd"), "finding": ""})
    lazy = XrayDataset(meta, image_size=8, root=tmp_path / "src")

    def broken_to_csv(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "cache", name="d", progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "cache").exists()  # nothing left, not even the cache folder this call created
    (tmp_path / "cache").mkdir()
    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match=r"cannot write image cache file .*d\.csv: disk full"):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "cache", name="d", progress=False)
    monkeypatch.undo()
    leftovers = [p.name for p in (tmp_path / "cache").iterdir()]
    assert leftovers == [], leftovers  # no temporary file, no .npy without its key, never marked fresh
    # a failed read of every image leaves not even the (new) cache folder
    for k in range(4):
        (tmp_path / "src" / f"{k}.png").write_bytes(b"garbage")
    with pytest.raises(Exception, match="none of the 4 images"):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "new", name="d", progress=False, on_error="skip")
    assert not (tmp_path / "new").exists()


def test_corrupt_cache_files_are_named(tmp_path: Path) -> None:
    for k in range(4):
        _png(tmp_path / "src" / f"{k}.png", 30 * k)
    meta = pd.DataFrame({"path": [f"{k}.png" for k in range(4)], "label": [0, 0, 1, 1],
                         "patient_id": list("abcd"), "finding": ""})
    lazy = XrayDataset(meta, image_size=8, root=tmp_path / "src")
    CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "c", name="d", progress=False)
    npy = (tmp_path / "c" / "d.npy").read_bytes()
    (tmp_path / "c" / "d.npy").write_bytes(npy[:100])  # truncated
    with pytest.raises(CorruptFileError, match=r"d\.npy.*delete it to rebuild"):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "c", name="d", progress=False)
    (tmp_path / "c" / "d.npy").write_bytes(npy)
    (tmp_path / "c" / "d.json").write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match=r"d\.json is not a JSON object"):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "c", name="d", progress=False)


def test_set_writer_manifest_versioned_and_refuses_foreign_or_corrupt(tmp_path: Path) -> None:
    writer = SetWriter(tmp_path, "m.json", maker="render_x", generator="g", version=3, params={"n": 2},
                       outputs=("images", "list.csv"))
    assert not writer.is_complete()
    writer.start()
    assert json.loads((tmp_path / "m.json").read_text())["complete"] is False
    _png(tmp_path / "images" / "a.png")
    writer.write_csv("list.csv", [["images/a.png", 0]], header=["file", "label"])
    assert (tmp_path / "list.csv").read_text() == "file,label\nimages/a.png,0\n"
    with pytest.raises(FileNotFoundError, match="did not write 1 of its 3 files"):
        writer.finish({"images": 1}, ["list.csv", "images/a.png", "images/b.png"])
    assert not writer.is_complete()
    writer.finish({"images": 1}, ["list.csv", "images/a.png"])
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["format"] == MANIFEST_FORMAT and manifest["params"] == {"generator": "g", "version": 3, "n": 2}
    assert writer.is_complete()
    newer = SetWriter(tmp_path, "m.json", maker="render_x", generator="g", version=4, params={"n": 2},
                      outputs=("images", "list.csv"))
    assert not newer.is_complete()  # another version: re-rendered
    (tmp_path / "images" / "a.png").unlink()
    assert not writer.is_complete()  # a listed file missing: re-rendered
    newer.start()
    assert not (tmp_path / "images").exists() and not (tmp_path / "list.csv").exists()
    (tmp_path / "m.json").write_text("{oops")
    with pytest.raises(CorruptFileError, match=r"render_x manifest .*m\.json is not valid JSON"):
        writer.is_complete()
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not made by render_x"):
        SetWriter(foreign, "m.json", "render_x", "g", 1, {}, ("images",)).start()
    assert (foreign / "images").is_dir()


def test_writer_csv_failure_leaves_no_temporary_file(tmp_path: Path) -> None:
    writer = SetWriter(tmp_path, "m.json", "render_x", "g", 1, {}, ("t.csv",))

    def rows():
        yield ["a", 1]
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        writer.write_csv("t.csv", rows())
    assert list(tmp_path.iterdir()) == []


def test_interrupted_limb_render_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from salad_lite.synth import limb

    calls = {"n": 0}
    real = limb._render_and_save

    def dies_on_third(job):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(limb, "_render_and_save", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        limb.render_limb_set(tmp_path, n_patients=2, seed=1, progress=False, workers=1)
    monkeypatch.undo()
    manifest = json.loads((tmp_path / limb.MANIFEST_NAME).read_text())
    assert manifest["complete"] is False  # ours, incomplete: redone, not refused
    root = limb.render_limb_set(tmp_path, n_patients=2, seed=1, progress=False, workers=1)
    listed = (root / "train_image_paths.csv").read_text().split()
    assert listed and all((tmp_path / line).is_file() for line in listed)
    assert json.loads((tmp_path / limb.MANIFEST_NAME).read_text())["complete"] is True


def test_phantom_cache_save_is_atomic(tmp_path: Path) -> None:
    from salad_lite.synth import chest

    class Unsaveable:
        def __array__(self, dtype=None):  # noqa: ANN001, ANN204
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError, match="cannot serialise"):
        chest._atomic_save_npz(tmp_path / "p.npz", a=np.zeros(3), b=Unsaveable())
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ kind 11: text stays text
def test_manifest_ids_and_findings_stay_text_through_the_cache(tmp_path: Path) -> None:
    n = len(TRICKY_TEXT) + 1
    for k in range(n):
        _png(tmp_path / f"{k}.png", 20 * k)
    findings = TRICKY_TEXT + [""]
    table = pd.DataFrame({"file": [f"{k}.png" for k in range(n)], "label": [k % 2 for k in range(n)],
                          "patient_id": TRICKY_TEXT + [""], "finding": findings, "site": TRICKY_TEXT + [""]})
    table.to_csv(tmp_path / "m.csv", index=False)
    ds = ManifestXray(tmp_path / "m.csv", image_size=8)
    assert list(ds.patient_ids) == TRICKY_TEXT + [str(n - 1)]  # empty: the file stem
    expected_findings = TRICKY_TEXT + ["abnormal" if (n - 1) % 2 else "normal"]
    assert ds.metadata["finding"].tolist() == expected_findings  # empty: the label's default
    assert ds.metadata["site"].tolist() == TRICKY_TEXT + [""]
    assert ds[0]["patient_id"] == "0007" and ds[3]["finding"] == "NA"
    built = CachedXrayDataset.from_dataset(ds, cache_dir=tmp_path / "c", name="m", progress=False)
    again = CachedXrayDataset.from_dataset(ds, cache_dir=tmp_path / "c", name="m", progress=False)
    assert again is not built
    for cached in (built, again):
        assert list(cached.patient_ids) == list(ds.patient_ids)
        assert cached.metadata["finding"].tolist() == expected_findings
        assert cached.metadata["site"].tolist() == TRICKY_TEXT + [""]
        assert cached.labels.dtype == np.int64


def test_nih_patient_ids_stay_text(tmp_path: Path) -> None:
    patients = ["0007", "NA", "null", "7"]
    root = _nih_folder(tmp_path, ["No Finding", "Mass", "No Finding", "Effusion"], patients=patients)
    ds = NIHChestXray(root, view="all", image_size=8)
    assert list(ds.patient_ids) == patients  # stored as written ("0007" and "7" are one patient in a split)
    cached = CachedXrayDataset.from_dataset(ds, cache_dir=tmp_path / "c", name="n", progress=False)
    reread = CachedXrayDataset.load(tmp_path / "c", "n")
    assert list(reread.patient_ids) == patients and reread.metadata["age"].tolist() == [58] * 4
    assert reread.metadata["follow_up"].dtype == cached.metadata["follow_up"].dtype == np.int64


# ------------------------------------------------------------------ renderers: layout of synth/
def test_synth_imports_nothing_from_the_data_layer() -> None:
    """No circle: the renderers never import the data layer (the registry passes them what they need)."""
    imported = set()
    for path in sorted((REPO / "salad_lite" / "synth").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((path.name, alias.name) for alias in node.names)
    assert ("chest.py", "salad_lite.synth.writer") in imported and ("limb.py", "salad_lite.synth.writer") in imported
    assert not [pair for pair in imported if pair[1].startswith("salad_lite.data")]


def test_embedded_sizes_defined_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from salad_lite.data import registry
    from salad_lite.synth import chest, limb

    default = EMBEDDED_SCALES["default"]
    assert inspect.signature(chest.render_chest_set).parameters["n_images"].default == default.nih_images
    assert (inspect.signature(chest.render_chest_set).parameters["abnormal_fraction"].default
            == default.nih_abnormal_fraction)
    assert inspect.signature(limb.render_limb_set).parameters["n_patients"].default == default.mura_patients
    args = load_script("data_scripts/make_embedded.py").build_parser().parse_args([])
    assert (args.nih_images, args.abnormal_fraction, args.mura_patients) == (
        default.nih_images, default.nih_abnormal_fraction, default.mura_patients)

    seen = {}

    def fake_render(out_dir, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.update(kwargs, out_dir=out_dir)
        return out_dir / "Data_Entry_2017.csv"

    monkeypatch.setenv("SALAD_LITE_DATA", str(tmp_path))
    monkeypatch.setattr(chest, "render_chest_set", fake_render)
    assert registry.ensure_embedded("nih", progress=False, scale="small") == tmp_path / "nih-small"
    small = EMBEDDED_SCALES["small"]
    assert seen["n_images"] == small.nih_images and seen["abnormal_fraction"] == small.nih_abnormal_fraction
    assert seen["cache_dir"] == tmp_path / "_cache"  # the registry passes the cache folder
    with pytest.raises(ValueError, match="unknown embedded scale 'huge'"):
        registry.ensure_embedded("nih", scale="huge")


# ------------------------------------------------------------------ kind 8: scripts end in "error: ...", exit 2
def _assert_main_fails_cleanly(capsys: pytest.CaptureFixture[str], script: str, argv: list[str],
                               *fragments: str) -> None:
    code = load_script(f"data_scripts/{script}.py").main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: "), (code, err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_prepare_nih_without_abnormal_images_subprocess(tmp_path: Path) -> None:
    root = _nih_folder(tmp_path / "nih", ["No Finding"] * 6)
    result = _run_script("data_scripts/prepare_nih.py", "--root", str(root), "--view", "all", "--image-size", "32",
                         "--no-progress")
    _assert_clean_failure(result, "no abnormal images")
    assert not (root / "_cache").exists()


def test_prepare_mura_bad_label_subprocess(tmp_path: Path) -> None:
    _mura_csvs(tmp_path, label="2")
    result = _run_script("data_scripts/prepare_mura.py", "--root", str(tmp_path), "--split-files", "train",
                         "--no-progress")
    _assert_clean_failure(result, "train_labeled_studies.csv", "line 1", "got '2'")


def test_make_embedded_foreign_folder_subprocess(tmp_path: Path) -> None:
    (tmp_path / "mura" / "MURA-v1.1").mkdir(parents=True)
    result = _run_script("data_scripts/make_embedded.py", "--out", str(tmp_path), "--only", "mura",
                         "--mura-patients", "2", "--no-progress")
    _assert_clean_failure(result, "not made by render_limb_set")
    assert (tmp_path / "mura" / "MURA-v1.1").is_dir()


def test_prepare_nih_data_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _nih_folder(tmp_path / "nih", ["No Finding", "Mass"] * 4)
    args = ["--view", "all", "--image-size", "32", "--no-progress", "--cache-dir", str(tmp_path / "c")]
    _assert_main_fails_cleanly(capsys, "prepare_nih", ["--root", str(tmp_path / "nowhere"), *args],
                               "not an existing folder")
    table = pd.read_csv(root / "Data_Entry_2017.csv", dtype=str)
    table.loc[5, "Finding Labels"] = "2"
    table.to_csv(root / "Data_Entry_2017.csv", index=False)
    _assert_main_fails_cleanly(capsys, "prepare_nih", ["--root", str(root), *args],
                               "Data_Entry_2017.csv", "row 5 (line 7): '2'")
    table.loc[5, "Finding Labels"] = "Mass"
    table.to_csv(root / "Data_Entry_2017.csv", index=False)
    (tmp_path / "c").mkdir()
    for suffix, body in ((".npy", b"x"), (".csv", b"x"), (".json", b"{oops")):
        (tmp_path / "c" / f"nih_all_32px{suffix}").write_bytes(body)
    _assert_main_fails_cleanly(capsys, "prepare_nih", ["--root", str(root), *args], "nih_all_32px.json",
                               "not valid JSON")
    with pytest.raises(SystemExit) as caught:  # refused where it enters, as an argument
        load_script("data_scripts/prepare_nih.py").main(["--root", str(root), "--anomaly-ratio", "1.5", *args])
    assert caught.value.code == 2 and "argument --anomaly-ratio: must be a number in [0, 1)" in capsys.readouterr().err


def test_prepare_mura_data_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _mura_csvs(tmp_path)
    (folder / "train_image_paths.csv").write_bytes(b"\xff\xfe not text")
    args = ["--split-files", "train", "--image-size", "64", "--no-progress"]
    _assert_main_fails_cleanly(capsys, "prepare_mura", ["--root", str(tmp_path / "no"), *args],
                               "not a MURA v1.1 root")
    _assert_main_fails_cleanly(capsys, "prepare_mura", ["--root", str(tmp_path), *args],
                               "train_image_paths.csv is not UTF-8")
    _assert_main_fails_cleanly(capsys, "prepare_mura", ["--root", str(tmp_path), "--synthetic", "2", *args],
                               "not made by render_limb_set")
    assert (folder / "train_labeled_studies.csv").is_file()


def test_make_embedded_data_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mura" / "MURA-v1.1").mkdir(parents=True)
    (tmp_path / "mura" / "synth_limb_manifest.json").write_text("")
    args = ["--out", str(tmp_path), "--only", "mura", "--mura-patients", "2", "--no-progress"]
    _assert_main_fails_cleanly(capsys, "make_embedded", args, "synth_limb_manifest.json", "empty")
    with pytest.raises(SystemExit) as caught:  # argparse: usage + "error: ...", status 2
        load_script("data_scripts/make_embedded.py").main([*args, "--cache-profile", "smoke"])
    assert caught.value.code == 2 and "--cache-profile works with the default" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["--out", ""], "argument --out: must name a folder (leave --out out for the default root"),
    (["--out", "  "], "argument --out: must name a folder"),
    (["--nih-images", "3", "--nih-size", "16", "--mura-patients", "0"], "argument --mura-patients: must be an int >= 2"),
    (["--mura-patients", "1"], "argument --mura-patients: must be an int >= 2"),
    (["--seed", "-1"], "argument --seed: must be an int in [0, 4294967295], got '-1'"),
    (["--workers", "0"], "argument --workers: must be an int in [1, "),
    (["--workers", "-4"], "argument --workers: must be an int in [1, "),
    (["--workers", "100000"], "(this machine's CPUs), got '100000'"),
    (["--nih-size", "8"], "argument --nih-size: must be an int >= 16"),
    (["--nih-images", "0"], "argument --nih-images: must be an int >= 1"),
    (["--abnormal-fraction", "nan"], "argument --abnormal-fraction: must be a number in [0, 1], got 'nan'"),
    (["--nih-images", "10", "--abnormal-fraction", "0.04"], "rounds to 0 abnormal films"),
])
def test_make_embedded_checks_every_argument_before_rendering(
        argv: list[str], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A bad option is an argparse error naming it, before anything is rendered; an empty --out is not the default."""
    from salad_lite.synth import chest, limb

    default_root = tmp_path / "default"
    (default_root / "nih").mkdir(parents=True)
    (default_root / "nih" / "keep.txt").write_text("the book's set")
    monkeypatch.setenv("SALAD_LITE_DATA", str(default_root))

    def no_rendering(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("rendered before the arguments were checked")

    monkeypatch.setattr(chest, "render_chest_set", no_rendering)
    monkeypatch.setattr(limb, "render_limb_set", no_rendering)
    out = [] if argv[0] == "--out" else ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as caught:
        load_script("data_scripts/make_embedded.py").main([*out, *argv, "--no-progress"])
    assert caught.value.code == 2
    assert fragment in capsys.readouterr().err
    assert (default_root / "nih" / "keep.txt").is_file() and not (tmp_path / "out").exists()


def test_make_embedded_names_a_set_folder_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mura").write_text("not a folder")  # the second set's folder: refused before the first is rendered
    with pytest.raises(SystemExit) as caught:
        load_script("data_scripts/make_embedded.py").main(["--out", str(tmp_path), "--nih-images", "4",
                                                           "--mura-patients", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and f"{tmp_path / 'mura'} is a file, not a folder" in err, err
    assert not (tmp_path / "nih").exists()


def test_set_writer_names_a_set_folder_that_is_a_file(tmp_path: Path) -> None:
    from salad_lite.synth import limb

    (tmp_path / "nih").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"nih is a file, not a folder"):
        limb.render_limb_set(tmp_path / "nih", n_patients=2, progress=False, workers=1)
    with pytest.raises(NotADirectoryError, match=r"nih is a file, not a folder"):
        limb.render_limb_set(tmp_path / "nih" / "sub", n_patients=2, progress=False, workers=1)


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from salad_lite.cli_errors import data_script

    @data_script
    def buggy(argv: list[str] | None = None) -> int:
        raise TypeError("a bug, not a data problem")

    with pytest.raises(TypeError):
        buggy([])
    monkeypatch.setenv("SALAD_LITE_TRACEBACK", "1")

    @data_script
    def data_problem(argv: list[str] | None = None) -> int:
        raise FileNotFoundError("x")

    with pytest.raises(FileNotFoundError):
        data_problem([])


# ================================================================== review of issue 8: the data-layer kinds again
def _class_folders(root: Path, n: int = 6) -> Path:
    for k in range(n):
        _png(root / "normal" / f"n{k}.png", 10 + k)
        _png(root / "abnormal" / f"a{k}.png", 100 + k)
    return root


def test_symlink_loops_are_listed_once_with_one_warning(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "f")
    (root / "normal" / "loop").symlink_to("..", target_is_directory=True)  # back to the root: a loop
    (root / "normal" / "self").symlink_to(".", target_is_directory=True)
    with pytest.warns(DataWarning, match=r"2 linked folder\(s\).*first: .*normal/loop") as caught:
        dataset = ImageFolderXray(root, image_size=8, patient_id_fn=lambda path: path.stem)
    assert len([w for w in caught if issubclass(w.category, DataWarning)]) == 1  # one listing, one warning
    assert len(dataset) == 12 and dataset.labels.tolist() == [0] * 6 + [1] * 6
    assert not any("loop" in p or "self" in p for p in dataset.metadata["path"])
    # a sibling link to a real folder: the real folder is listed, the link is not entered again
    other = tmp_path / "g"
    _png(other / "real" / "x.png")
    (other / "a_link").symlink_to("real", target_is_directory=True)  # sorts first, still loses to the real folder
    with pytest.warns(DataWarning, match="a_link"):
        assert [p.relative_to(other).as_posix() for p in list_files(other)] == ["real/x.png"]
    # a folder linked from outside the tree is followed (data on another disk)
    outside = tmp_path / "elsewhere"
    _png(outside / "y.png")
    (other / "more").symlink_to(outside, target_is_directory=True)
    with pytest.warns(DataWarning):
        assert sorted(p.name for p in list_files(other)) == ["x.png", "y.png"]


def test_a_file_in_two_class_folders_is_refused(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "f", n=2)
    (root / "normal" / "more").symlink_to(root / "abnormal", target_is_directory=True)
    with pytest.raises(ValueError, match=r"listed more than once.*'normal/more/a0.png'.*'abnormal/a0.png'"):
        ImageFolderXray(root, image_size=8)


def _float_tiff(path: Path, bad: float | None) -> Path:
    values = np.linspace(0, 4000, 100, dtype=np.float32).reshape(10, 10)
    if bad is not None:
        values[3, 4] = bad
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values, mode="F").save(path)
    return path


@pytest.mark.parametrize(("bad", "counted"), [(float("nan"), "1 NaN, 0 inf"), (float("inf"), "0 NaN, 1 inf")])
def test_non_finite_pixels_in_a_file_are_a_read_error(tmp_path: Path, bad: float, counted: str) -> None:
    tif = _float_tiff(tmp_path / "x.tif", bad)
    with pytest.raises(ImageReadError, match=rf"x\.tif: 1 of 100 pixels are not finite \({counted}\)"):
        read_grayscale(tif)
    good = read_grayscale(_float_tiff(tmp_path / "ok.tif", None))
    assert good.min() == 0 and good.max() == 255  # finite float images are still min-max stretched


def test_non_finite_image_is_skipped_by_the_cache_with_a_count(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "f", n=3)
    _float_tiff(root / "abnormal" / "nan.tif", float("nan"))
    lazy = ImageFolderXray(root, image_size=8)
    with pytest.raises(ImageReadError, match=r"nan\.tif: 1 of 100 pixels are not finite"):
        CachedXrayDataset.from_dataset(lazy, progress=False)
    with pytest.warns(DataWarning, match=r"skipped 1 of 7 images.*nan\.tif"):
        cached = CachedXrayDataset.from_dataset(lazy, progress=False, on_error="skip")
    assert len(cached) == 6 and not any("nan.tif" in p for p in cached.metadata["path"])


class _HandMade(torch.utils.data.Dataset):
    """A hand-made split: labels in ``.labels`` or only in the sample dicts."""

    def __init__(self, labels: list[object], prefix: str, attribute: bool = True) -> None:
        self._labels, self.prefix = labels, prefix
        if attribute:
            self.labels = labels
        self.metadata = pd.DataFrame({"patient_id": [f"{prefix}{i}" for i in range(len(labels))]})

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"image": torch.zeros(1, 4, 4), "label": self._labels[i], "index": i, "patient_id": f"{self.prefix}{i}"}


@pytest.mark.parametrize("attribute", [True, False])
@pytest.mark.parametrize("bad", [0.9, 1.5, True, 2, -1, "yes", float("nan")])
def test_labels_of_hand_made_splits_are_parsed_strictly(attribute: bool, bad: object) -> None:
    split = _HandMade([0, 1, bad], "v", attribute)
    with pytest.raises(LabelError, match=r"split 'val' \(_HandMade\): 1 label\(s\) not understood.*row 2: "):
        dataset_labels(split, "val")
    with pytest.raises(LabelError, match="split 'val'"):  # refused by the entry-point check, before training
        check_splits({"train": _HandMade([0, 0], "t"), "val": split})


@pytest.mark.parametrize("attribute", [True, False])
def test_labels_accepted_by_the_rule(attribute: bool) -> None:
    labels = [0, 1, 0.0, 1.0, "1", np.int64(0), torch.tensor(1)] if not attribute else [0, 1, 0.0, 1.0, "1", 0, 1]
    assert dataset_labels(_HandMade(labels, "p", attribute)).tolist() == [0, 1, 0, 1, 1, 0, 1]
    assert dataset_labels(_HandMade(torch.tensor([0, 1]), "q")).tolist() == [0, 1]


def test_check_splits_refuses_one_class_where_asked() -> None:
    splits = {"train": _HandMade([0, 0, 0], "t"), "val": _HandMade([0, 0], "v"), "test": _HandMade([0, 1], "s")}
    check_splits(splits)  # unchanged default: no split needs both classes (training is all normal)
    with pytest.raises(OneClassSplitError, match=r"split 'val' needs both .* holds 2 normal and 0 abnormal"):
        check_splits(splits, required=("train", "val", "test"), both_classes=("val", "test"))
    splits["val"] = _HandMade([1, 1], "v")
    with pytest.raises(OneClassSplitError, match="split 'val'.*0 normal and 2 abnormal"):
        check_splits(splits, both_classes=("val", "test"))
    splits["val"] = _HandMade([0, 1], "v")
    check_splits(splits, both_classes=("val", "test"))
    check_splits({**splits, "val": None}, both_classes=("val", "test"))  # an absent split is not checked
    with pytest.raises(KeyError, match="valid"):
        check_splits(splits, both_classes=("valid",))


def test_unsplittable_after_skipping_leaves_no_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _nih_folder(tmp_path / "nih", ["No Finding"] * 6 + ["Mass"] * 4)
    for k in range(7, 11):
        (root / "images" / f"{k:08d}_000.png").write_bytes(b"")  # every abnormal image unreadable
    args = ["--root", str(root), "--view", "all", "--image-size", "32", "--no-progress"]
    with pytest.warns(DataWarning, match="skipped 4 of 10"):
        _assert_main_fails_cleanly(capsys, "prepare_nih", args, "no abnormal images")
    assert not (root / "_cache").exists()
    (root / "_cache").mkdir()  # an existing cache folder stays, empty: nothing of this call is left
    with pytest.warns(DataWarning):
        _assert_main_fails_cleanly(capsys, "prepare_nih", args, "no abnormal images")
    assert list((root / "_cache").iterdir()) == []


def _lazy(tmp_path: Path) -> XrayDataset:
    for k in range(4):
        _png(tmp_path / "src" / f"{k}.png", 30 * k)
    meta = pd.DataFrame({"path": [f"{k}.png" for k in range(4)], "label": [0, 0, 1, 1],
                         "patient_id": list("abcd"), "finding": ""})
    return XrayDataset(meta, image_size=8, root=tmp_path / "src")


def test_interrupted_cache_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lazy = _lazy(tmp_path)

    def interrupted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "cache", name="d", progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "cache").exists()  # no orphan .npy, no temp, not even the folder it created
    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(pd.DataFrame, "to_csv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        CachedXrayDataset.from_dataset(lazy, cache_dir=tmp_path / "kept", name="d", progress=False)
    monkeypatch.undo()
    assert list((tmp_path / "kept").iterdir()) == []


def test_stale_cache_temps_are_cleared_and_fs_errors_name_the_file(tmp_path: Path) -> None:
    lazy = _lazy(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = [cache / f".d.npy.building{TEMP_SUFFIX}", cache / f".d.csv.x1y2{TEMP_SUFFIX}"]
    foreign = cache / f".other.npy.building{TEMP_SUFFIX}"  # another cache's: not touched
    for path in (*stale, foreign):
        path.write_bytes(b"left by a killed build")
    CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="d", progress=False)
    assert not any(p.exists() for p in stale) and foreign.exists()
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == ["d.csv", "d.json", "d.npy"]
    (cache / "e.npy").mkdir()  # a folder where the .npy should go
    with pytest.raises(IsADirectoryError, match=r"cannot write image cache file .*e\.npy"):
        CachedXrayDataset.from_dataset(lazy, cache_dir=cache, name="e", progress=False)
    assert not any(p.name.startswith(".e.") for p in cache.iterdir())
    assert not (cache / "e.csv").exists() and not (cache / "e.json").exists()


class _Samples(torch.utils.data.Dataset):
    """A dataset of plain sample dicts, without a metadata table."""

    def __init__(self, samples: list[dict[str, object]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, object]:
        return self.samples[i]


def test_patient_ids_compared_as_one_text() -> None:
    assert patient_ids_of(["train-0 ", " 7", 7.0, np.float32(8), np.int64(9), "0007", "None", "nan"]) == [
        "train-0", "7", "7", "8", "9", "0007", "None", "nan"]
    with pytest.raises(PatientLeakError, match="'train-0'"):
        check_patient_disjoint({"train": ["train-0 "], "val": ["train-0"]})
    with pytest.raises(PatientLeakError, match="'7'"):
        check_patient_disjoint({"train": [7.0], "val": ["7"]})
    for missing in (None, float("nan"), pd.NA, "", "  ", float("inf")):
        with pytest.raises(MissingPatientIdError, match=r"split 'val': patient id at position 1 is"):
            check_patient_disjoint({"train": ["a"], "val": ["b", missing]})
    with pytest.raises(MissingPatientIdError, match="split 'val': patient id at position 1"):
        dataset_patient_ids(_Samples([{"patient_id": "p"}, {"patient_id": None}]), "val")
    meta = normalise_metadata(pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1],
                                            "patient_id": ["p1 ", 7.0], "finding": ""}))
    assert meta["patient_id"].tolist() == ["p1", "7"]
    with pytest.raises(MissingPatientIdError, match="position 1"):
        normalise_metadata(pd.DataFrame({"path": ["a.png", "b.png"], "label": [0, 1],
                                         "patient_id": ["p1", None], "finding": ""}))


def _manifest(root: Path, text: str, files: tuple[str, ...] = ("a.png", "b.png", "c.png")) -> Path:
    for name in files:
        _png(root / name)
    (root / "manifest.csv").write_text(text)
    return root / "manifest.csv"


def test_manifest_rows_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"manifest .*manifest\.csv lists no images"):
        ManifestXray(_manifest(tmp_path / "h", "file,label\n"))
    for body in ("a.png,0\nb.png,0\na.png,1\n", "a.png,0\n./a.png,0\nb.png,1\n"):
        with pytest.raises(ValueError, match=r"manifest\.csv: 1 file\(s\) listed more than once.*"
                                             r"row 0 \(line 2\) 'a.png', row 2 \(line 4\)|row 1 \(line 3\)"):
            ManifestXray(_manifest(tmp_path / "d", "file,label\n" + body))
    for body in ("my,a.png,0\nb.png,1\n", "a.png,0\nmy,b.png,1\n"):  # an unquoted comma, first row or later
        with pytest.raises(CorruptFileError, match=r"manifest .*manifest\.csv.*line.*(2|3)"):
            ManifestXray(_manifest(tmp_path / "c", "file,label\n" + body))
    with pytest.raises(CorruptFileError, match=r"2 line\(s\) \(2, 3\) have more fields than the 2 columns"):
        ManifestXray(_manifest(tmp_path / "e", "file,label\nmy,a.png,0\nmy,b.png,1\nc.png\n"))


def test_class_folders_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "f", n=1)
    _png(root / "Normal" / "x.png")
    if not (root / "normal").samefile(root / "Normal"):  # a case-sensitive file system
        with pytest.raises(ValueError, match=r"differ only in case: .*'.*Normal' and '.*normal'"):
            ImageFolderXray(root, image_size=8)


def _nih_table(**changes: list[object]) -> pd.DataFrame:
    table = pd.DataFrame({"Image Index": ["a.png", "b.png"], "Finding Labels": ["No Finding", "Mass"],
                          "Follow-up #": [0, 1], "Patient ID": [7.0, 8.0], "Patient Age": [58, 61],
                          "View Position": ["PA", "PA"]})
    for column, values in changes.items():
        table[column] = values
    return table


def test_nih_metadata_of_a_non_text_table_follows_the_csv_rules() -> None:
    meta = nih_metadata(_nih_table())
    assert meta["patient_id"].tolist() == ["7", "8"] and meta["age"].tolist() == [58, 61]
    with pytest.raises(ValueError, match=r"column 'Image Index' is empty in 1 row\(s\), first rows \[1\] \(lines \[3\]\)"):
        nih_metadata(_nih_table(**{"Image Index": ["a.png", np.nan]}))
    with pytest.raises(ValueError, match=r"column 'Patient ID' is empty.*\[0\]"):
        nih_metadata(_nih_table(**{"Patient ID": [None, 8]}))
    for age in ("inf", "NaN", float("inf")):
        with pytest.raises(ValueError, match=r"column 'Patient Age' holds values that are not finite numbers: row 1"):
            nih_metadata(_nih_table(**{"Patient Age": [58, age]}))
    for age in (np.nan, "", " "):  # an empty cell is refused like the text 'NaN'
        with pytest.raises(ValueError, match=r"column 'Patient Age' holds values that are not finite numbers: row 1 "
                                             r"\(line 3\).*empty cell"):
            nih_metadata(_nih_table(**{"Patient Age": [58, age]}))
    with pytest.raises(ValueError, match=r"column 'Follow-up #' holds values that are not finite numbers: row 0"):
        nih_metadata(_nih_table(**{"Follow-up #": ["", 1]}))
    with pytest.raises(ValueError, match=r"listed more than once.*row 0 \(line 2\) 'a.png', row 1 \(line 3\)"):
        nih_metadata(_nih_table(**{"Image Index": ["a.png", "a.png"]}))


def test_nih_csv_rows_with_too_few_fields_are_refused_naming_the_line(tmp_path: Path) -> None:
    root = _nih_folder(tmp_path / "nih", ["No Finding", "Mass", "No Finding"])
    csv = root / "Data_Entry_2017.csv"
    text = csv.read_text()
    csv.write_text(text + "00000004_000.png,Atelectasis|Pneumonia,3,1222")  # a truncated last line, no newline
    with pytest.raises(CorruptFileError, match=r"Data_Entry_2017\.csv: 1 line\(s\) \(5\) have fewer fields than "
                                               r"the 11 named columns"):
        NIHChestXray(root, view="all", image_size=8)
    lines = text.splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # one cell left out in the middle of the file
    csv.write_text("\n".join(lines) + "\n\n")  # a blank last line is no row
    with pytest.raises(CorruptFileError, match=r"1 line\(s\) \(3\) have fewer fields"):
        NIHChestXray(root, view="all", image_size=8)
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label,patient_id\na.png,0,p1\nb.png,1\n")
    with pytest.raises(CorruptFileError, match=r"m\.csv: 1 line\(s\) \(3\) have fewer fields than the 3 named columns"):
        read_text_csv(manifest)
    manifest.write_text("file,label,\na.png,0\nb.png,1,\n")  # a header ending in a comma: that cell is optional
    assert read_text_csv(manifest)[["file", "label"]].values.tolist() == [["a.png", "0"], ["b.png", "1"]]


def test_nih_csv_without_rows_is_refused(tmp_path: Path) -> None:
    root = _nih_folder(tmp_path / "nih", ["No Finding"])
    (root / "Data_Entry_2017.csv").write_text(",".join(NIH_HEADER) + "\n")
    with pytest.raises(ValueError, match="lists no images"):
        NIHChestXray(root, view="all", image_size=8)


def test_gather_images_refuses_indices_outside_the_dataset(tmp_path: Path) -> None:
    lazy = _lazy(tmp_path)
    cached = CachedXrayDataset.from_dataset(lazy, progress=False)
    for dataset in (lazy, cached):
        assert gather_images(dataset, np.array([3, 0])).shape == (2, 1, 8, 8)
        for bad in ([-1], [0, 4]):
            with pytest.raises(IndexError, match=rf"indices \[{bad[-1]}\] out of range for a dataset of 4 items"):
                gather_images(dataset, np.array(bad))
        with pytest.raises(TypeError, match="1-D integers"):
            gather_images(dataset, np.array([0.0, 1.0]))


class _FloatImages(torch.utils.data.Dataset):
    """Sample dicts holding the given float images [N, 1, S, S] as they are (no conversion)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images_f = images

    def __len__(self) -> int:
        return len(self.images_f)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images_f[i]}


def test_batches_refuse_what_would_be_scored_wrong() -> None:
    # the kind: every embed / score / PCA entry gathers through gather_images / image_batches
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"expected a dataset of sample dicts .* got a bare ndarray of shape \(4, 8, 8\)"):
        gather_images(np.zeros((4, 8, 8), np.uint8), np.array([0]))
    with pytest.raises(TypeError, match="got a bare Tensor of shape"):
        next(image_batches(images, 2))
    with pytest.raises(ValueError, match=r"images \[1, 3\] hold pixels outside \[0, 1\] \(range \S+ to 255.0\).*divide by 255"):
        gather_images(_FloatImages(torch.cat([images[:1], images[1:2] * 0 + 255, images[2:3], images[3:] * 255])),
                      np.arange(4))
    with pytest.raises(ValueError, match=r"split 'val': images \[2\] .*to 1.00000\d*\).*clamp to \[0, 1\]"):
        check_finite_images(_FloatImages(torch.cat([images[:2], images[2:3] * 0 + 1.0000001, images[3:]])), "val")
    nan = images.clone()
    nan[2, 0, 0, 0] = float("nan")
    assert gather_images(_FloatImages(nan), np.arange(4)).isnan().sum() == 1  # named by check_splits, not as a range
    with pytest.raises(NonFiniteImageError):
        check_finite_images(_FloatImages(nan), "test")
    check_finite_images(_FloatImages(images[:0]), "test")  # an empty split holds no bad pixel
    with pytest.raises(ValueError, match="the dataset holds no images"):
        next(image_batches(_FloatImages(images[:0]), 2))


@pytest.mark.parametrize(("option", "message"), [
    ("--seed=-1", "must be an int in [0, 4294967295], got '-1'"),
    ("--seed=x", "must be an int in [0, 4294967295], got 'x'"),
    ("--image-size=0", "must be a power of two from 32 to 4096 for nih (arch conv; train refuses other sizes), got '0'"),
    ("--workers=two", "must be an int >= 1, got 'two'"),
    ("--max-train=-1", "must be an int >= 0, got '-1'"),
    ("--anomaly-ratio=1.5", "must be a number in [0, 1), got '1.5'"),
    ("--anomaly-ratio=nan", "must be a number in [0, 1), got 'nan'"),
])
def test_script_option_errors_name_the_option(capsys: pytest.CaptureFixture[str], option: str, message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        load_script("data_scripts/prepare_nih.py").main(["--root", "nowhere", option])
    message = f"argument {option.split('=')[0]}: {message}"
    assert caught.value.code == 2 and message in capsys.readouterr().err
