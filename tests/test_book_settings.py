"""One chapter set-up (salad_lite.book): environment overrides, the runs/<profile> rule, progress bars, checks.

Also the two other users of the rule, ``scripts/build_book.py`` and the Makefile,
and papermill's int injection (``-p data_root 2020``) in a real kernel.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

from conftest import REPO
from salad_lite import book
from salad_lite.book import ChapterParameterError, chapter_settings

sys.path.insert(0, str(REPO / "scripts"))
import build_book  # noqa: E402

NOTEBOOKS = sorted((REPO / "book").glob("*.ipynb"))


def _settings(tmp_path: Path, environ: dict[str, str] | None = None, **params: object) -> book.ChapterSettings:
    return chapter_settings(**params, environ=environ or {}, root=tmp_path)


# ----------------------------------------------------------------- the run folder rule
@pytest.mark.parametrize("profile", book.PROFILES)
def test_empty_run_dir_means_runs_profile(tmp_path: Path, profile: str) -> None:
    s = _settings(tmp_path, profile=profile)
    assert s.run_dir == tmp_path / "runs" / profile
    assert book.run_folder(profile, "", environ={}) == f"runs/{profile}"
    assert s.shown(s.run_dir) == f"runs/{profile}"  # pages show the folder relative to the book root


def test_explicit_run_dir_and_environment_overrides(tmp_path: Path) -> None:
    assert _settings(tmp_path, run_dir="runs/mine").run_dir == tmp_path / "runs" / "mine"
    assert _settings(tmp_path, run_dir=str(tmp_path / "abs")).run_dir == tmp_path / "abs"
    env = {"SALAD_LITE_PROFILE": "smoke", "SALAD_LITE_RUN_DIR": str(tmp_path / "ci")}
    s = _settings(tmp_path, env, profile="full", run_dir="runs/mine")
    assert (s.profile, s.run_dir) == ("smoke", tmp_path / "ci")  # the environment wins (CI)
    assert s.cfg == book.profile_config("smoke", "nih").replace(train={"progress": False})
    s = _settings(tmp_path, {"SALAD_LITE_PROFILE": "smoke"}, profile="default")
    assert s.run_dir == tmp_path / "runs" / "smoke"  # the rule follows the profile actually used
    assert _settings(tmp_path, {"SALAD_LITE_PROFILE": " ", "SALAD_LITE_RUN_DIR": ""}).profile == "default"


def test_relative_folders_are_taken_from_the_book_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "_toc.yml").write_text("root: book/01\n")
    (tmp_path / "book").mkdir()
    monkeypatch.chdir(tmp_path / "book")  # Jupyter starts a chapter's kernel in book/
    in_book = chapter_settings(run_dir="runs/x", data_root="nih", environ={})
    monkeypatch.chdir(tmp_path)  # papermill (make chapters) in the root
    in_root = chapter_settings(run_dir="runs/x", data_root="nih", environ={})
    assert in_book.run_dir == in_root.run_dir == tmp_path / "runs" / "x"
    assert in_book.data_root == in_root.data_root == str(tmp_path / "nih")


def test_chapter_one_agrees_with_the_other_chapters() -> None:
    """Every chapter declares the same parameters and hands all five to chapter_settings."""
    declared = {}
    for path in NOTEBOOKS:
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        declared[path.name] = build_book.notebook_defaults(path)
        assert "chapter_settings(profile, dataset, data_root, run_dir, device)" in code[1], path.name
        later = "\n".join(code[2:])
        assert not re.search(r"(?<![.\w])(run_dir|device)\b(?!\s*=)", later), (
            f"{path.name}: later cells must use settings.run_dir / settings.device, not the raw parameters")
        assert "os.environ" not in "\n".join(code), f"{path.name} reads the environment itself"
    run_dirs = {name: d["run_dir"] for name, d in declared.items()}
    assert set(run_dirs.values()) == {""}, f"every chapter leaves run_dir to the runs/<profile> rule: {run_dirs}"


# ----------------------------------------------------------------- progress bars
@pytest.mark.parametrize(("value", "wanted"), [("", True), ("1", False), ("0", False), ("true", False)])
def test_progress_follows_tqdm_disable(tmp_path: Path, value: str, wanted: bool) -> None:
    env = {"TQDM_DISABLE": value} if value else {}
    assert book.progress_enabled(env) is wanted  # tqdm itself disables for any non-empty value, "0" included
    s = _settings(tmp_path, env, profile="default", dataset="mura")  # the profile that asks for bars
    assert s.progress is wanted and s.cfg.train.progress is wanted


def test_chapter_environment_round_trips(tmp_path: Path) -> None:
    env = book.chapter_environment(profile="smoke", run_dir=tmp_path / "r", progress=False)
    assert env == {"SALAD_LITE_PROFILE": "smoke", "SALAD_LITE_RUN_DIR": str(tmp_path / "r"), "TQDM_DISABLE": "1"}
    s = _settings(tmp_path, env)
    assert (s.profile, s.run_dir, s.progress) == ("smoke", tmp_path / "r", False)
    assert book.chapter_environment(progress=True) == {}
    with pytest.raises(ChapterParameterError, match="profile must be one of"):
        book.chapter_environment(profile="fast")


# ----------------------------------------------------------------- parameter checks (papermill -p types)
def test_paths_are_coerced_to_text(tmp_path: Path) -> None:
    assert _settings(tmp_path, data_root=2020).data_root == str(tmp_path / "2020")  # papermill -p data_root 2020
    assert _settings(tmp_path, run_dir=7).run_dir == tmp_path / "7"
    assert _settings(tmp_path, data_root=tmp_path / "nih").data_root == str(tmp_path / "nih")
    assert _settings(tmp_path, data_root=None).data_root == ""  # papermill -p data_root None: embedded data
    assert _settings(tmp_path, data_root="~/x").data_root == str(Path.home() / "x")
    s = _settings(tmp_path, data_root=2020)
    assert s.cfg.data.data_root == s.data_root and s.describe().splitlines()[1] == "data: 2020"


@pytest.mark.parametrize(("params", "message"), [
    ({"data_root": True}, r"data_root must be a folder path \(text\), got True \(bool\)"),
    ({"data_root": 1.5}, r"data_root .* got 1\.5 \(float\).*papermill -r data_root"),
    ({"run_dir": ["a"]}, r"run_dir must be a folder path \(text\), got \['a'\] \(list\)"),
    ({"run_dir": b"runs"}, r"run_dir must be a folder path"),
    ({"profile": "fast"}, r"profile must be one of 'smoke', 'default', 'full'; got 'fast' \(str\)"),
    ({"profile": 1}, r"profile must be one of .* got 1 \(int\)"),
    ({"dataset": "chest"}, r"dataset must be one of 'nih', 'mura', 'folder'; got 'chest'"),
    ({"device": "gpu"}, r"device must be 'auto', 'cpu', 'mps' \(or 'mps:0'\), 'cuda' or 'cuda:<index>' \(no leading zero\); got 'gpu'"),
    ({"device": 0}, r"device must be .* got 0 \(int\)"),
    ({"device": "cuda:x"}, r"device must be"),
])
def test_bad_parameters_are_refused_by_name(tmp_path: Path, params: dict, message: str) -> None:
    with pytest.raises(ChapterParameterError, match=message):
        _settings(tmp_path, **params)


def test_bad_environment_overrides_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ChapterParameterError, match="SALAD_LITE_PROFILE must be one of .* got 'fast'"):
        _settings(tmp_path, {"SALAD_LITE_PROFILE": "fast"})
    assert isinstance(ChapterParameterError("x"), ValueError)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps", " cpu "])
def test_device_forms_accepted(tmp_path: Path, device: str) -> None:
    assert _settings(tmp_path, device=device).device == device.strip()


# ----------------------------------------------------------------- build_book.py and the Makefile use the rule
def _args(**kw: object) -> argparse.Namespace:
    base = {"profile": "smoke", "run_dir": "", "device": "cpu", "dataset": "nih", "data_root": "", "mura_root": ""}
    return argparse.Namespace(**{**base, **kw})


def test_build_book_injects_the_run_folder_of_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SALAD_LITE_PROFILE", raising=False)
    monkeypatch.delenv("SALAD_LITE_RUN_DIR", raising=False)
    defaults = dict.fromkeys(book.PARAMETER_NAMES, "")
    assert build_book.chapter_parameters(defaults, _args())["run_dir"] == "runs/smoke"
    assert build_book.chapter_parameters(defaults, _args(profile="full"))["run_dir"] == "runs/full"
    assert build_book.chapter_parameters(defaults, _args(run_dir="runs/x"))["run_dir"] == "runs/x"
    monkeypatch.setenv("SALAD_LITE_PROFILE", "smoke")  # the values shown are the ones the chapters will use
    assert build_book.chapter_parameters(defaults, _args(profile="full")) == {
        "profile": "smoke", "run_dir": "runs/smoke", "device": "cpu", "dataset": "nih", "data_root": ""}
    assert build_book.PARAMETER_NAMES == book.PARAMETER_NAMES


def test_makefile_leaves_the_run_folder_to_the_rule() -> None:
    makefile = (REPO / "Makefile").read_text()
    (value,) = re.findall(r"^RUN_DIR \?=(.*)$", makefile, re.M)
    assert value.split("#")[0].strip() == "", "RUN_DIR must default to empty: salad_lite.book.run_folder decides"
    assert "--run-dir '$(RUN_DIR)'" in makefile


@pytest.mark.parametrize(("argv", "message"), [
    (["--device", "gpu"], "argument --device: device must be 'auto'"),
    (["--profile", "fast"], "argument --profile: invalid choice: 'fast'"),
    (["--data-root", "no/such/folder"], "argument --data-root: no such folder: 'no/such/folder'"),
    (["--mura-root", "2020"], "argument --mura-root: no such folder: '2020'"),
    (["--dataset", "folder"], "--dataset folder reads your own images: --data-root must name"),
    (["--dataset", "folder", "--data-root", "none.csv"], "--data-root: no such folder or manifest CSV: 'none.csv'"),
    (["--run-dir", "a_file"], "run folder a_file cannot be made: "),
    (["--run-dir", "a_file/sub"], "run folder a_file/sub cannot be made: "),
    (["--dataset", "folder", "--data-root", "a_file"], "--data-root: no such folder or manifest CSV: 'a_file'"),
    # the layout, read before any chapter (not when chapter 2 reads the data)
    (["--dataset", "folder", "--data-root", "empty"], "needs class folders 'normal/' and 'abnormal/' (found [])"),
    (["--data-root", "empty"], "argument --data-root: no Data_Entry_2017*.csv in NIH root"),
    (["--mura-root", "empty"], "argument --mura-root: "),  # not a MURA root
])
def test_build_book_refuses_bad_arguments_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], message: str) -> None:
    (tmp_path / "a_file").write_text("")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        build_book.main(["--root", str(tmp_path), "chapters", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _two_images(folder: Path, names: tuple[str, str]) -> None:
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / name)


def test_build_book_takes_a_manifest_csv_for_the_folder_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _two_images(tmp_path, ("a.png", "b.png"))
    (tmp_path / "manifest.csv").write_text("file,label\na.png,0\nb.png,1\n")
    monkeypatch.setattr(build_book, "run_chapters", lambda args: 0)
    assert build_book.main(["--root", str(tmp_path), "chapters", "--dataset", "folder",
                            "--data-root", "manifest.csv"]) == 0


def test_build_book_accepts_a_numeric_folder_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _two_images(tmp_path / "2020", ("normal/a.png", "abnormal/b.png"))
    seen = {}
    monkeypatch.setattr(build_book, "run_chapters", lambda args: seen.update(vars(args)) or 0)
    assert build_book.main(["--root", str(tmp_path), "chapters", "--dataset", "folder", "--data-root", "2020"]) == 0
    assert seen["data_root"] == "2020" and seen["run_dir"] == ""


def test_build_book_bad_environment_override_exits_2_before_any_chapter(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(build_book, "run_chapters", lambda args: pytest.fail("a chapter ran"))
    monkeypatch.setenv("SALAD_LITE_PROFILE", "fast")
    with pytest.raises(SystemExit) as exit_:
        build_book.main(["--root", str(tmp_path), "chapters"])
    assert exit_.value.code == 2 and "SALAD_LITE_PROFILE must be one of" in capsys.readouterr().err


# ----------------------------------------------------------------- papermill's int injection, in a kernel
def test_papermill_int_parameter_reaches_chapter_settings_as_a_folder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("papermill") is None:
        pytest.skip("papermill is not installed")
    import papermill as pm

    params = new_code_cell("\n".join(f'{name} = ""' for name in book.PARAMETER_NAMES))
    params.metadata["tags"] = ["parameters"]
    body = new_code_cell("from salad_lite.book import chapter_settings\n"
                         "s = chapter_settings(profile or 'smoke', dataset or 'nih', data_root, run_dir, "
                         "device or 'cpu')\nprint(repr(type(data_root).__name__), repr(s.data_root))")
    source, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    (tmp_path / "_toc.yml").write_text("root: in\n")
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(new_notebook(cells=[params, body], metadata={"kernelspec": kernelspec}), source)
    for name in (book.PROFILE_ENV, book.RUN_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    pm.execute_notebook(str(source), str(out), parameters={"data_root": 2020}, cwd=str(tmp_path),
                        progress_bar=False, log_output=False, kernel_name="python3")
    printed = nbformat.read(out, as_version=4).cells[-1].outputs[0].text
    assert printed.strip() == f"'int' {str(tmp_path / '2020')!r}"
    bad = dict(parameters={"device": True})
    with pytest.raises(pm.PapermillExecutionError, match="device must be .* got True"):
        pm.execute_notebook(str(source), str(tmp_path / "bad.ipynb"), **bad, cwd=str(tmp_path),
                            progress_bar=False, log_output=False, kernel_name="python3")


def test_the_folder_dataset_needs_a_data_root(tmp_path):
    with pytest.raises(book.ChapterParameterError, match="dataset 'folder' reads your own images: data_root"):
        book.chapter_settings(dataset="folder", data_root="", environ={}, root=tmp_path)


def test_build_book_names_a_missing_or_broken_table_of_contents(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--root must be the book's folder"):
        build_book.toc_chapters(tmp_path / "_toc.yml")
    (tmp_path / "_toc.yml").write_text("root: [unclosed\n")
    with pytest.raises(ValueError, match=r"_toc.yml is not valid YAML"):
        build_book.toc_chapters(tmp_path / "_toc.yml")
