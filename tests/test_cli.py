"""The ``salad-lite`` command line: every subcommand on the small embedded set, every error path, in-process.

One replicate is trained once (module fixture, smoke profile, a published split
file, a run folder relative to the working directory) and reused by evaluate and
score. The embedded set is the one the chapter smoke tests use (data/embedded or
$SALAD_LITE_DATA), rendered on first use. One subprocess runs the installed script.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from salad_lite.cli import format_warning, main
from salad_lite.config import profile_config
from salad_lite.data.registry import ensure_embedded, load_splits
from salad_lite.data.split_file import SplitFileError, read_split_file, split_positions
from salad_lite.data.splits import PatientLeakError

SMOKE = profile_config("smoke", "nih")


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *fragments: str) -> str:
    """Run ``main(argv)``, expect exit 2 and every fragment in stderr; return stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture(scope="module")
def nih_root() -> Path:
    """The small embedded NIH-layout set (rendered on first use, shared with the chapter smoke tests)."""
    return ensure_embedded("nih", progress=False, scale="small")


@pytest.fixture(scope="module")
def seeded_splits() -> dict:
    return load_splits("nih", image_size=SMOKE.model.image_size, anomaly_ratio=SMOKE.data.anomaly_ratio,
                       max_train_images=SMOKE.data.max_train_images, progress=False, embedded_scale="small")


def _split_csv(splits: dict, path: Path, header: tuple[str, str] = ("image", "split")) -> Path:
    rows = [(p, name) for name, ds in splits.items() for p in ds.metadata["path"]]
    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, seeded_splits: dict) -> Iterator[dict]:
    """Train once through the CLI with a published split file, into a relative run folder."""
    work = tmp_path_factory.mktemp("cli")
    split_file = _split_csv(seeded_splits, work / "published.csv")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        argv = ["train", "--profile", "smoke", "--dataset", "nih", "--run-dir", "runs/smoke", "--device", "cpu",
                "--split-file", "published.csv", "--no-progress"]
        assert main(argv) == 0
        yield {"dir": work / "runs" / "smoke", "argv": argv, "work": work, "split_file": split_file}


# ------------------------------------------------------------------------------------------ help and arguments
def test_installed_script_help_subprocess() -> None:
    script = Path(sys.executable).parent / "salad-lite"
    command = [str(script), "--help"] if script.is_file() else [sys.executable, "-m", "salad_lite", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("prepare", "train", "evaluate", "score"):
        assert name in result.stdout


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for argv, option in ((["--help"], "train"), (["prepare", "--help"], "folder"),
                         (["prepare", "nih", "--help"], "--view"), (["prepare", "mura", "--help"], "--body-parts"),
                         (["prepare", "folder", "--help"], "--split-file"), (["train", "--help"], "--profile"),
                         (["evaluate", "--help"], "--run-dir"), (["score", "--help"], "--skip-unreadable")):
        assert main(argv) == 0, argv
        assert option in capsys.readouterr().out, argv
    monkeypatch.setattr(sys, "argv", ["salad_lite", "--help"])  # python -m salad_lite
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("salad_lite", run_name="__main__")
    assert stop.value.code == 0 and "evaluate" in capsys.readouterr().out


def test_wrong_arguments_exit_2_naming_them(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_dir = str(tmp_path / "r")
    _fails(capsys, ["frobnicate"], "invalid choice: 'frobnicate'")
    _fails(capsys, ["train", "--run-dir", run_dir, "--bogus"], "unrecognized arguments: --bogus")
    _fails(capsys, ["train", "--profile", "smoke", "--run-dir", run_dir], "argument --profile", "--dataset")
    _fails(capsys, ["train", "--profile", "huge", "--dataset", "nih", "--run-dir", run_dir],
           "argument --profile: invalid choice: 'huge'")
    _fails(capsys, ["train", "--config", "c.json", "--dataset", "nih", "--run-dir", run_dir], "argument --dataset")
    _fails(capsys, ["train", "--run-dir", run_dir], "--config --profile is required")
    _fails(capsys, ["train", "--profile", "smoke", "--dataset", "nih", "--run-dir", run_dir, "--seed", "-1"],
           "argument --seed")
    for command in (["train", "--profile", "smoke", "--dataset", "nih"], ["evaluate"], ["prepare", "nih", "--root"]):
        _fails(capsys, [*command, run_dir, "--seed", "99999999999"] if command[0] == "prepare" else
               [*command, "--run-dir", run_dir, "--seed", "99999999999"], "argument --seed: must be an int in [0, ")
    _fails(capsys, ["prepare", "nih", "--root", run_dir, "--image-size", "0"], "argument --image-size")
    _fails(capsys, ["prepare", "xray", "--root", run_dir], "invalid choice: 'xray'")
    _fails(capsys, ["prepare", "mura", "--root", run_dir, "--synthetic", "1"],  # the MURA loader needs a valid split
           "argument --synthetic: must be 0 (none) or an int >= 2")
    _fails(capsys, ["evaluate"], "--run-dir")
    _fails(capsys, ["score", "--run-dir", run_dir], "argument IMAGES")
    _fails(capsys, ["score", "--run-dir", run_dir, "a.png", "--folder", run_dir], "argument IMAGES")
    assert not Path(run_dir).exists()


def test_missing_or_foreign_run_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _fails(capsys, ["evaluate", "--run-dir", str(tmp_path / "nowhere")], "error: run folder", "does not exist")
    _fails(capsys, ["score", "--run-dir", str(tmp_path), "x.png"], "holds no run.json")
    (tmp_path / "run.json").write_text("{oops")
    _fails(capsys, ["evaluate", "--run-dir", str(tmp_path)], "run.json", "not valid JSON")


# ------------------------------------------------------------------------------------------ split files
def test_split_file_header_variants_and_matching(tmp_path: Path) -> None:
    meta = pd.DataFrame({"path": ["images/a.png", "images/b.png", "train/XR_HAND/p3/s1/image1.png", "images/d.png"],
                         "patient_id": ["1", "2", "3", "4"]})
    variants = {  # NIH's header, a MURA-style path with its leading folder, extra columns, no header
        "Image Index,Subset\na.png,TRAIN\nb.png,Validation\nd.png,Test\n": {"train": [0], "val": [1], "test": [3]},
        "path,fold,label\nimages/a.png,training,0\nMURA-v1.1/train/XR_HAND/p3/s1/image1.png,test,1\nb.png,valid,0\n":
            {"train": [0], "val": [1], "test": [2]},
        "a.png,train\nimages/b.png,dev\nd.png,testing\n": {"train": [0], "val": [1], "test": [3]},
        "a.png,train,\nimages/b.png,dev,\nd.png,testing,\n": {"train": [0], "val": [1], "test": [3]},  # commas at ends
    }
    for i, (text, expected) in enumerate(variants.items()):
        path = tmp_path / f"s{i}.csv"
        path.write_text(text)
        found = {k: v.tolist() for k, v in split_positions(read_split_file(path), meta).items()}
        assert found == expected, (text, found)
    path.write_text("image,split\na.png,train\nb.png,val\n")
    with pytest.raises(SplitFileError, match=r"names no image of split\(s\) \['test'\]"):
        read_split_file(path)


def test_split_file_faults(tmp_path: Path) -> None:
    meta = pd.DataFrame({"path": [f"images/{i}.png" for i in range(6)], "patient_id": ["1", "1", "2", "3", "4", "5"]})

    def table(text: str) -> pd.DataFrame:
        path = tmp_path / "s.csv"
        path.write_text(text)
        return read_split_file(path)

    with pytest.raises(SplitFileError, match=r"unknown split name\(s\) 'holdout'.*line 3"):
        table("image,split\n0.png,train\n1.png,holdout\n")
    with pytest.raises(SplitFileError, match=r"listed more than once: '0.png'"):
        table("image,split\n0.png,train\n0.png,val\n2.png,test\n")
    with pytest.raises(SplitFileError, match="no image column"):
        table("picture,split\n0.png,train\n")
    with pytest.raises(SplitFileError, match="'split' is empty on 1 line"):
        table("image,split\n0.png,train\n1.png,\n")
    good = "image,split\n0.png,train\n2.png,val\n3.png,test\n"
    assert {k: v.tolist() for k, v in split_positions(table(good), meta).items()} == \
        {"train": [0], "val": [2], "test": [3]}
    with pytest.raises(PatientLeakError, match=r"split file.*patient\(s\) appear in both 'train' and 'test': \['1'\]"):
        split_positions(table(good + "1.png,test\n"), meta, "split file s.csv")
    missing = "".join(f"gone{i}.png,test\n" for i in range(7))
    with pytest.raises(SplitFileError, match=r"7 of its 10 image\(s\) are not in the dataset.*'gone0.png'.*\.\.\."):
        split_positions(table(good + missing), meta)


def test_prepare_with_bad_split_files_caches_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     nih_root: Path, seeded_splits: dict) -> None:
    good = _split_csv(seeded_splits, tmp_path / "good.csv")
    rows = pd.read_csv(good, dtype=str)
    cache = tmp_path / "cache"
    args = ["prepare", "nih", "--root", str(nih_root), "--image-size", "32", "--cache-dir", str(cache), "--no-progress"]

    def write(table: pd.DataFrame) -> str:
        table.to_csv(tmp_path / "bad.csv", index=False)
        return str(tmp_path / "bad.csv")

    ids = pd.read_csv(nih_root / "Data_Entry_2017.csv", dtype=str).set_index("Image Index")["Patient ID"]
    patients = rows["image"].map(lambda p: ids[Path(p).name])
    moved = rows[patients.duplicated(keep=False)].iloc[0]  # a patient with two images in one split
    leak = rows.copy()
    leak.loc[moved.name, "split"] = "test" if moved["split"] != "test" else "val"
    _fails(capsys, [*args, "--split-file", write(leak)], "bad.csv", "appear in both",
           repr(str(patients[moved.name])))
    missing = pd.concat([rows, pd.DataFrame({"image": ["images/99999999_000.png"], "split": ["test"]})])
    _fails(capsys, [*args, "--split-file", write(missing)], "1 of its", "not in the dataset", "99999999_000.png")
    unknown = rows.copy()
    unknown.loc[3, "split"] = "holdout"
    _fails(capsys, [*args, "--split-file", write(unknown)], "unknown split name(s) 'holdout'")
    _fails(capsys, [*args, "--split-file", str(tmp_path / "absent.csv")], "split file", "absent.csv", "does not exist")
    assert not cache.exists()


def test_prepare_folder_with_split_file_and_nih_seeded(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for label, count in (("normal", 8), ("abnormal", 4)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(root / label / f"{label}{i}.png")
    names = [f"normal/normal{i}.png" for i in range(8)] + [f"abnormal/abnormal{i}.png" for i in range(4)]
    splits = ["train"] * 4 + ["val"] * 2 + ["test"] * 2 + ["val", "val", "test", "test"]
    pd.DataFrame({"File": names, "Set": splits}).to_csv(tmp_path / "split.csv", index=False)
    argv = ["prepare", "folder", "--root", str(root), "--image-size", "32", "--split-file", str(tmp_path / "split.csv"),
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "split.csv" in out and "folder_mine_32px.npy" in out
    table = out[out.index("abnormal_share"):]
    assert [line.split()[:4] for line in table.splitlines()[2:]] == \
        [["train", "4", "4", "0"], ["val", "4", "2", "2"], ["test", "4", "2", "2"]]
    assert np.load(root / "_cache" / "folder_mine_32px.npy").shape == (12, 32, 32)
    _fails(capsys, ["prepare", "folder", "--root", str(tmp_path / "nowhere")], "nowhere", "does not exist")


# ------------------------------------------------------------------------------------------ train, evaluate, score
def test_train_writes_the_run_folder_and_resumes(run: dict, capsys: pytest.CaptureFixture[str]) -> None:
    folder = run["dir"] / "nih" / "seed0"
    history = json.loads((folder / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(SMOKE.train.pretrain_epochs + 2))
    assert list(pd.read_csv(folder / "history.csv")["epoch"]) == [r["epoch"] for r in history]
    stored = json.loads((run["dir"] / "run.json").read_text())
    assert stored["split_file"] == str(run["split_file"]) and stored["data_root"] == ""
    assert json.loads((run["dir"] / "config.json").read_text())["train"]["pretrain_epochs"] == 1
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run["work"])
        capsys.readouterr()
        assert main(run["argv"]) == 0  # a second call finds it finished
        assert "already finished" in capsys.readouterr().out
        assert main(["train", "--config", "runs/smoke/config.json", "--run-dir", "runs/smoke", "--no-progress"]) == 0
        assert "already finished" in capsys.readouterr().out  # the recorded config.json trains the same run
        _fails(capsys, ["train", "--profile", "smoke", "--dataset", "mura", "--run-dir", "runs/smoke"],
               "runs/smoke holds a run of another configuration", "data.dataset: 'nih' -> 'mura'")
        # the published file was cut from the seeded split: the same images, so the run is the same run (the
        # images are its identity, not the file's path); other images are refused (test_a_run_refuses_...)
        assert main(["train", "--run-dir", "runs/smoke", "--split-file", "", "--no-progress"]) == 0
        assert json.loads((run["dir"] / "run.json").read_text())["split_file"] == ""
        assert main(run["argv"]) == 0 and "already finished" in capsys.readouterr().out
    assert (folder / "last.json").is_file() and not (run["dir"] / "mura").exists()


def test_evaluate_and_score(run: dict, seeded_splits: dict, capsys: pytest.CaptureFixture[str],
                            nih_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = run["dir"] / "nih" / "seed0"
    _fails(capsys, ["score", "--run-dir", str(run["dir"]), "--seed", "1", "x.png"],
           f"seed 1 was never trained in {run['dir']} (trained seeds: 0)")
    _fails(capsys, ["evaluate", "--run-dir", str(run["dir"]), "--seed", "7"], "seed 7 was never trained",
           "(trained seeds: 0)")

    # score before evaluate: selection on validation, written; never the test split
    test_meta = seeded_splits["test"].metadata
    picks = [nih_root / p for p in test_meta["path"].iloc[:4]]
    images = tmp_path / "new"
    images.mkdir()
    for p in picks:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "._shadow.png").write_bytes(b"AppleDouble")
    (images / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["score", "--run-dir", str(run["dir"]), "--folder", str(images), "--no-progress"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert (folder / "selection.json").is_file()
    out_csv = tmp_path / "scores.csv"
    assert main(["score", "--run-dir", str(run["dir"]), "--folder", str(images), "--skip-unreadable",
                 "--out", str(out_csv), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s)" in err and "broken.png" in err
    table = pd.read_csv(out_csv)
    assert list(table.columns) == ["path", "score", "predicted"] and len(table) == 4
    assert set(table["predicted"]) <= {0, 1} and (table["score"] > 0).all()
    assert (folder / "threshold.json").is_file()
    assert main(["score", "--run-dir", str(run["dir"]), *map(str, [*picks[:2], images / "._shadow.png"]),
                 "--no-progress"]) == 0  # to stdout; the hidden file is skipped
    captured = capsys.readouterr()
    printed = pd.read_csv(pd.io.common.StringIO(captured.out))
    assert len(printed) == 2 and "skipped 1 hidden or system file(s)" in captured.err
    # hand-edited choices are refused, naming the file, never used with a wrong meaning
    one_image = ["score", "--run-dir", str(run["dir"]), str(picks[0]), "--no-progress"]
    for name, field, bad in (("selection.json", "k", None), ("selection.json", "k", 5.7),
                             ("selection.json", "discard_anomalous", "false"),
                             ("threshold.json", "threshold", float("nan")),
                             ("threshold.json", "threshold", "0.5")):
        original = (folder / name).read_text()
        (folder / name).write_text(json.dumps({**json.loads(original), field: bad}))
        _fails(capsys, one_image, str(folder / name), "delete the file")
        (folder / name).write_text(original)
    assert main(one_image) == 0
    capsys.readouterr()
    # a selection chosen from another K grid (train accepts a new score.k_grid) is chosen again, not reused
    chosen = json.loads((folder / "selection.json").read_text())
    (folder / "selection.json").write_text(json.dumps({**chosen, "k_grid": [2, 3], "k": 2}))
    assert main(one_image) == 0
    assert json.loads((folder / "selection.json").read_text()) == chosen
    capsys.readouterr()

    import salad_lite.trainer as trainer_module

    built = []  # evaluate builds the replicate's trainer once (each build hashes the training and validation pixels)
    monkeypatch.setattr(trainer_module, "splits_fingerprint",
                        lambda splits, real=trainer_module.splits_fingerprint: built.append(1) or real(splits))
    assert main(["evaluate", "--run-dir", str(run["dir"]), "--no-progress"]) == 0
    assert len(built) == 1
    out = capsys.readouterr().out
    assert "test (" in out and "AUC" in out and "result.json" in out
    result = json.loads((folder / "result.json").read_text())
    assert 0.0 <= result["test_auc"] <= 1.0 and len(result["test_scores"]) == len(test_meta)
    selection = json.loads((folder / "selection.json").read_text())
    assert (result["k"], result["discard_anomalous"]) == (selection["k"], selection["discard_anomalous"])
    # the raw files, read and preprocessed by score, get the scores evaluate gave their cached images
    by_name = dict(zip(table["path"].map(lambda p: Path(p).name), table["score"]))
    expected = [result["test_scores"][i] for i in range(4)]
    np.testing.assert_allclose([by_name[p.name] for p in picks], expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ a new user's mistakes
def _class_folders(root: Path, names: tuple[str, str] = ("normal", "abnormal"),
                   counts: tuple[int, int] = (8, 4)) -> None:
    rng = np.random.default_rng(0)
    for name, count in zip(names, counts):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(root / name / f"{name}{i}.png")


def test_a_run_refuses_a_reshuffled_split(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A file renamed after training reshuffles the seeded split: its training films would be scored as test films."""
    root = tmp_path / "films"
    _class_folders(root, counts=(40, 16))
    run = ["--run-dir", str(tmp_path / "r"), "--device", "cpu", "--no-progress"]
    assert main(["train", "--profile", "smoke", "--dataset", "folder", "--data-root", str(root), *run]) == 0
    capsys.readouterr()
    (root / "normal" / "normal7.png").rename(root / "normal" / "a_renamed.png")
    for command in ("evaluate", "train"):
        _fails(capsys, [command, *run], "last.json was trained on other training or validation images",
               "a file added, removed or renamed reshuffles a seeded split")
    (root / "normal" / "a_renamed.png").rename(root / "normal" / "normal7.png")
    assert main(["evaluate", *run]) == 0
    (tmp_path / "r" / "folder" / "seed0" / "last.json").unlink()  # a damaged run, not one never trained
    err = _fails(capsys, ["evaluate", *run], "last.json is missing")
    assert "never trained" not in err


def test_warnings_read_in_the_command_line_words(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from salad_lite.data.io import DataWarning

    warning = DataWarning("image folder x: 3 image(s) have no patient id (...): pass patient_id_fn, or use a "
                          "manifest.csv with a patient_id column")
    shown = format_warning(warning, DataWarning, "salad_lite/data/generic.py", 164, "source line")
    assert shown == ("warning: image folder x: 3 image(s) have no patient id (...): use a manifest.csv with a "
                     "patient_id column\n")  # no file, line or Python argument name
    before = warnings.formatwarning
    assert main(["evaluate", "--run-dir", "nowhere"]) == 2 and warnings.formatwarning is before  # restored
    monkeypatch.setenv("RANK", "1")
    assert format_warning(warning, DataWarning, "f.py", 1) == ""  # rank 0 alone speaks


def test_prepare_image_size_follows_the_config_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = str(tmp_path / "r")
    for dataset, size, fragment in (("nih", "100000", "from 32 to 4096"), ("nih", "7", "power of two"),
                                    ("folder", "48", "power of two"), ("nih", "16", "from 32"),
                                    ("mura", "32", "from 64 to 4096"), ("nih", "x", "got 'x'")):
        _fails(capsys, ["prepare", dataset, "--root", root, "--image-size", size], "argument --image-size", fragment)
    assert not Path(root).exists()


def test_failed_train_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, seeded_splits: dict) -> None:
    run_dir = tmp_path / "r"
    base = ["train", "--profile", "smoke", "--dataset", "nih", "--run-dir", str(run_dir), "--no-progress"]
    _fails(capsys, [*base, "--device", "gpu"], "argument --device", "'gpu'")
    _fails(capsys, ["evaluate", "--run-dir", str(run_dir), "--device", "gpu"], "argument --device")
    _fails(capsys, ["score", "--run-dir", str(run_dir), "--device", "gpu", "x.png"], "argument --device")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for argv in ([*base, "--device", "cuda"], ["evaluate", "--run-dir", str(run_dir), "--device", "cuda"],
                 ["score", "--run-dir", str(run_dir), "--device", "cuda:1", "x.png"]):
        err = _fails(capsys, argv, "argument --device: device 'cuda", "CUDA is not available")
        assert "Traceback" not in err
    rows = pd.read_csv(_split_csv(seeded_splits, tmp_path / "s.csv"), dtype=str)
    labels = {p: int(label) for ds in seeded_splits.values() for p, label in
              zip(ds.metadata["path"], ds.metadata["label"])}
    one_class = rows[~((rows["split"] == "test") & rows["image"].map(labels).eq(1))]  # test: normal images only
    one_class.to_csv(tmp_path / "one.csv", index=False)
    _fails(capsys, [*base, "--device", "cpu", "--split-file", str(tmp_path / "one.csv")], "split 'test'",
           "both normal (0) and abnormal (1)")
    assert not run_dir.exists()  # nothing recorded: the fixed command is not locked out
    file_dir = tmp_path / "file"
    file_dir.write_text("")
    for argv in ([*base[:5], "--run-dir", str(file_dir)], ["evaluate", "--run-dir", str(file_dir)],
                 ["score", "--run-dir", str(file_dir), "x.png"]):
        _fails(capsys, argv, f"error: run folder {file_dir} is a file")
    for argv in ([*base[:5], "--run-dir", " "], ["evaluate", "--run-dir", ""], ["score", "--run-dir", "", "x.png"]):
        _fails(capsys, argv, "error: --run-dir must name a folder")  # '' would be the current directory


def test_train_takes_the_class_map_and_the_run_keeps_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "chest"
    _class_folders(root, ("NORMAL", "PNEUMONIA"), counts=(40, 16))
    run = ["--run-dir", str(tmp_path / "r"), "--device", "cpu", "--no-progress"]
    train = ["train", "--profile", "smoke", "--dataset", "folder", "--data-root", str(root), *run]
    err = _fails(capsys, train, "pass --class-map FOLDER=0 --class-map FOLDER=1")
    assert "class_map=" not in err
    _fails(capsys, [*train, "--class-map", "NORMAL=0", "--class-map", "NORMAL=1"], "names folder 'NORMAL' twice")
    _fails(capsys, ["train", "--profile", "smoke", "--dataset", "nih", *run, "--class-map", "NORMAL=0"],
           "argument --class-map: labels class folders, so it needs the dataset folder, not 'nih'")
    assert not (tmp_path / "r").exists()
    assert main([*train, "--class-map", "NORMAL=0", "--class-map", "PNEUMONIA=1"]) == 0
    recorded = json.loads((tmp_path / "r" / "run.json").read_text())["config"]["data"]["class_map"]
    assert recorded == ["NORMAL=0", "PNEUMONIA=1"]
    assert main(["evaluate", *run]) == 0  # evaluate reads the folder with the recorded map
    assert main([*train, "--class-map", "PNEUMONIA=1", "--class-map", "NORMAL=0"]) == 0  # the same map
    assert "already finished" in capsys.readouterr().out
    _fails(capsys, [*train, "--class-map", "NORMAL=0"], "--class-map labels no folder abnormal (1)")
    _fails(capsys, [*train, "--class-map", "NORMAL=1", "--class-map", "PNEUMONIA=0"],
           "data.class_map: ('NORMAL=0', 'PNEUMONIA=1') -> ('NORMAL=1', 'PNEUMONIA=0')")


def test_a_run_folder_follows_its_images_not_their_paths(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root, moved, other = tmp_path / "films", tmp_path / "moved", tmp_path / "other"
    _class_folders(root, counts=(40, 16))
    run_dir = tmp_path / "r"
    run = ["--run-dir", str(run_dir), "--device", "cpu", "--no-progress"]
    assert main(["train", "--profile", "smoke", "--dataset", "folder", "--data-root", str(root), *run]) == 0
    root.rename(moved)
    _fails(capsys, ["evaluate", *run], f"data root {root} recorded in", f"train --run-dir {run_dir} --data-root NEW")
    assert main(["train", *run, "--data-root", str(moved)]) == 0  # the same images: finished, new place recorded
    assert "already finished" in capsys.readouterr().out
    assert json.loads((run_dir / "run.json").read_text())["data_root"] == str(moved)
    assert main(["evaluate", *run]) == 0
    config = tmp_path / "c.json"  # a config without a data root continues with the recorded one
    config.write_text(json.dumps({**SMOKE.to_dict(), "data": {**SMOKE.to_dict()["data"], "dataset": "folder"}}))
    assert main(["train", "--config", str(config), *run]) == 0 and "already finished" in capsys.readouterr().out
    shutil.copytree(moved, other)
    for path in other.rglob("*.png"):  # the same names, other pixels
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    _fails(capsys, ["train", *run, "--seed", "1", "--data-root", str(other)],  # a replicate of another split
           "seed0/last.json was trained on other training or validation images than this call reads")
    assert json.loads((run_dir / "run.json").read_text())["data_root"] == str(moved)
    assert not (run_dir / "folder" / "seed1" / "last.json").exists()


def test_a_config_the_trainer_refuses_records_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused configurations leave no run.json behind, and a run whose first epoch failed binds nothing."""
    from salad_lite.trainer import SaladTrainer

    run_dir = tmp_path / "r"
    run = ["--run-dir", str(run_dir), "--device", "cpu", "--no-progress"]
    _class_folders(tmp_path / "films", counts=(40, 16))
    smoke = SMOKE.to_dict()
    configs = {"in3": ({**smoke, "model": {**smoke["model"], "in_channels": 3}}, "model.in_channels must be 1"),
               "one": ({**smoke, "data": {**smoke["data"], "dataset": "folder", "data_root": str(tmp_path / "films"),
                                          "max_train_images": 1}}, "at least 2 images, got 1"),
               "nothing": ({**smoke, "train": {**smoke["train"], "pretrain_epochs": 0, "rounds": 0}},
                           "must be >= 1 (nothing to train"),
               "nameless": ({"train": smoke["train"]}, "names no data.dataset"),
               "mapped": ({"data": {"class_map": ["A=0", "B=1"]}}, "names no data.dataset")}  # not "got 'nih'"
    for name, (config, fragment) in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        _fails(capsys, ["train", "--config", str(tmp_path / f"{name}.json"), *run], fragment)
        assert not (run_dir / "run.json").exists(), name

    def fails(self: SaladTrainer) -> None:
        raise ValueError("the first epoch failed")

    monkeypatch.setattr(SaladTrainer, "fit", fails)
    _fails(capsys, ["train", "--profile", "smoke", "--dataset", "nih", *run], "the first epoch failed")
    assert json.loads((run_dir / "run.json").read_text())["config"]["train"]["lr"] == SMOKE.train.lr
    (tmp_path / "fixed.json").write_text(json.dumps({**smoke, "train": {**smoke["train"], "lr": 0.01}}))
    _fails(capsys, ["train", "--config", str(tmp_path / "fixed.json"), *run], "the first epoch failed")
    assert json.loads((run_dir / "run.json").read_text())["config"]["train"]["lr"] == 0.01  # not locked out


def test_prepare_refuses_one_class_splits_and_counts_left_out(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _class_folders(root)
    names = [f"normal/normal{i}.png" for i in range(8)] + [f"abnormal/abnormal{i}.png" for i in range(4)]
    base = ["prepare", "folder", "--root", str(root), "--no-progress", "--split-file", str(tmp_path / "s.csv")]
    one = ["train"] * 4 + ["val"] * 2 + ["test"] * 2 + ["val"] * 4  # test: normal only
    pd.DataFrame({"image": names, "split": one}).to_csv(tmp_path / "s.csv", index=False)
    _fails(capsys, base, "split 'test'", "2 normal and 0 abnormal")
    assert not (root / "_cache").exists()
    fine = ["train"] * 3 + ["val"] * 2 + ["test"] * 2 + ["val", "test"]  # leaves 2 normal, 1 abnormal out
    pd.DataFrame({"image": names[:7] + names[8:10], "split": fine}).to_csv(tmp_path / "s.csv", index=False)
    assert main(base) == 0
    assert "the split file leaves 3 of the dataset's 12 images out" in capsys.readouterr().out


def test_messages_name_cli_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = tmp_path / "chest"
    _class_folders(root, ("NORMAL", "PNEUMONIA"))
    err = _fails(capsys, ["prepare", "folder", "--root", str(root), "--no-progress"], "--class-map")
    assert "class_map=" not in err
    assert main(["prepare", "folder", "--root", str(root), "--no-progress", "--class-map", "NORMAL=0",
                 "--class-map", "PNEUMONIA=1"]) == 0
    assert "folder_chest_classmap-" in capsys.readouterr().out  # a class map has its own cache
    _fails(capsys, ["prepare", "folder", "--root", str(root), "--class-map", "NORMAL"], "argument --class-map")
    _fails(capsys, ["prepare", "folder", "--root", str(root), "--class-map", "NORMAL=0", "--class-map",
                    "PNEUMONIA=1", "--class-map", "NORMAL=1"], "--class-map names folder 'NORMAL' twice")
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _fails(capsys, ["prepare", "nih", "--root", str(empty)], "pass --csv FILE")
    assert "csv_path" not in err
    (tmp_path / "bad.json").write_text("{not json")
    err = _fails(capsys, ["train", "--config", str(tmp_path / "bad.json"), "--run-dir", str(tmp_path / "r")],
                 "not valid JSON", "fix the file")
    assert "delete it" not in err and not (tmp_path / "r").exists()


def test_score_wrong_paths(run: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _fails(capsys, ["score", "--run-dir", str(run["dir"]), str(tmp_path)], "is a folder", f"--folder {tmp_path}")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(image)
    _fails(capsys, ["score", "--run-dir", str(run["dir"]), str(image), "--out", str(tmp_path)],
           f"argument --out: {tmp_path} is a folder", "usage: salad-lite score")


def test_interrupted_train_says_how_to_resume(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from salad_lite.trainer import SaladTrainer

    def interrupted(self: SaladTrainer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(SaladTrainer, "fit", interrupted)
    code = main(["train", "--profile", "smoke", "--dataset", "nih", "--run-dir", str(tmp_path / "r"), "--device",
                 "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted at epoch 0; rerun the same command to resume" in err
    assert "Traceback" not in err


def test_usage_errors_printed_by_rank_0_only_and_data_errors_labelled(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--run-dir", str(tmp_path), "--bogus"]) == 2
    assert capsys.readouterr().err == ""  # every rank parsed the same command line: rank 0 tells
    assert main(["evaluate", "--run-dir", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error (rank 1): run folder ")  # a rank's own problem is not lost
    monkeypatch.setenv("RANK", "0")
    _fails(capsys, ["evaluate", "--run-dir", str(tmp_path / "nowhere")], "does not exist")


def test_help_wording_and_post_parse_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["prepare", "folder", "--help"]) == 0
    out = capsys.readouterr().out
    assert "the your" not in out and "Prepare your own images" in out
    _fails(capsys, ["train", "--profile", "smoke", "--run-dir", str(tmp_path)], "usage: salad-lite train",
           "argument --profile: needs --dataset")


def test_commands_other_than_train_refuse_torchrun(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    _fails(capsys, ["evaluate", "--run-dir", str(tmp_path)], "usage: salad-lite evaluate",
           "evaluate runs in one process (WORLD_SIZE=2): run it without torchrun")
