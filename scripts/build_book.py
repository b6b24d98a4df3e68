"""Execute the book's chapters with papermill and build the static HTML book with jupyter-book 1.x.

Commands (run from anywhere; paths are relative to the repository root):

    python scripts/build_book.py toc
        print the chapter files in _toc.yml order
    python scripts/build_book.py chapters [--only book/06_eval_nih.ipynb ...]
            [--profile default] [--dataset nih] [--data-root ""] [--mura-root ""]
            [--run-dir ""] [--device auto]
        execute the chapters into _build/executed/book/ (papermill, no progress bar, log level ERROR)
    python scripts/build_book.py html [--allow-missing] [--no-strict]
        stage the executed chapters with _config.yml, _toc.yml and book/_static, copy plotly.min.js
        from the installed plotly package, and build _build/html (execution off, warnings are errors)

Which data a chapter gets: every chapter receives --dataset / --data-root, except a chapter whose
own ``parameters`` cell pins ``dataset = "mura"`` (the MURA evaluation): it keeps ``mura`` with
--mura-root, unless --dataset is ``mura`` too; a chapter whose ``parameters`` cell has a ``mura_root``
(chapter 8, both data sets) gets --mura-root there. An empty data root means the embedded synthetic data.

The run folder, the environment overrides and the progress-bar policy are those of
``salad_lite.book`` (the chapters' own set-up): an empty --run-dir means ``runs/<profile>``;
``SALAD_LITE_PROFILE`` / ``SALAD_LITE_RUN_DIR`` win over --profile / --run-dir, here as in the
chapters. Arguments are checked before any chapter runs: a bad value, or a data folder that
does not exist, ends with ``error: ...`` naming the argument (exit 2).
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from salad_lite.book import (DATASETS, PARAMETER_NAMES, PROFILES, ChapterParameterError, chapter_environment,
                             check_device, check_path, resolve_profile, run_folder)

REPO = Path(__file__).resolve().parents[1]
STAGE_NAME = Path("_build") / "executed"  # executed notebooks + config: the source tree of the HTML build
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def toc_chapters(toc_path: Path) -> list[str]:
    """Chapter paths without suffix (e.g. ``book/02_data``), root first, in reading order."""
    import yaml

    if not toc_path.is_file():
        raise FileNotFoundError(f"no table of contents {toc_path}: --root must be the book's folder (holding _toc.yml)")
    try:
        toc = yaml.safe_load(toc_path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{toc_path} is not valid YAML ({error})") from None
    if not isinstance(toc, dict) or "root" not in toc:
        raise ValueError(f"{toc_path}: expected a jb-book table of contents with a 'root' entry")
    entries = [toc["root"]]

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if "file" in item:
                entries.append(item["file"])
            for key in ("chapters", "sections"):
                walk(item.get(key, []))
            for part in item.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return [str(Path(e).with_suffix("")) if Path(e).suffix in (".ipynb", ".md") else e for e in entries]


def chapter_source(chapter: str, root: Path) -> Path:
    """The file behind a toc entry: ``<chapter>.ipynb`` or ``<chapter>.md``."""
    for suffix in (".ipynb", ".md"):
        path = root / f"{chapter}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"_toc.yml names {chapter!r} but neither {chapter}.ipynb nor {chapter}.md exists in {root}")


def notebook_defaults(path: Path) -> dict[str, Any]:
    """The literal assignments of the notebook's first code cell if it is tagged ``parameters``."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or "parameters" not in code[0].metadata.get("tags", []):
        return {}
    values: dict[str, Any] = {}
    for node in ast.parse(code[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def chapter_parameters(defaults: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Parameters papermill injects into one chapter (see the module docstring for the data rule).

    The profile and the run folder are resolved as the chapter resolves them
    (:func:`salad_lite.book.run_folder`), so that the values shown are the values used.

    Raises:
        salad_lite.book.ChapterParameterError: the profile or run folder (or their
            environment overrides) is not valid.
    """
    profile = resolve_profile(args.profile)
    params: dict[str, Any] = {"profile": profile, "run_dir": run_folder(profile, args.run_dir),
                              "device": args.device}
    if defaults.get("dataset") == "mura" and args.dataset != "mura":
        params.update(dataset="mura", data_root=args.mura_root)
    else:
        params.update(dataset=args.dataset, data_root=args.data_root)
    if "mura_root" in defaults:  # a chapter of both data sets (chapter 8): its MURA part reads --mura-root
        params["mura_root"] = args.mura_root
    return {k: v for k, v in params.items() if k in defaults or not defaults}


def run_chapters(args: argparse.Namespace) -> int:
    """Execute the chapters (or ``args.only``) into ``<root>/_build/executed``; 0 on success."""
    import papermill as pm

    root, stage = args.root, args.root / STAGE_NAME

    logging.getLogger("papermill").setLevel(logging.ERROR)  # = papermill --log-level ERROR
    if not args.progress_bars:  # the kernel inherits it: no progress bars in the static pages
        os.environ.update(chapter_environment(progress=False))
    if args.only:
        sources = [Path(p).resolve() for p in args.only]
        for path in sources:
            if not path.exists():
                raise FileNotFoundError(f"no such chapter notebook: {path}")
            if not path.is_relative_to(root):
                raise ValueError(f"{path} lies outside the book root {root}")
    else:
        sources = []
        for chapter in toc_chapters(root / "_toc.yml"):
            try:
                sources.append(chapter_source(chapter, root))
            except FileNotFoundError as err:
                if not args.allow_missing:
                    raise
                print(f"[chapters] WARNING: skipped, {err}", file=sys.stderr)
    notebooks = [p for p in sources if p.suffix == ".ipynb"]
    for path in notebooks:
        out = stage / path.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        params = chapter_parameters(notebook_defaults(path), args)
        shown = " ".join(f"{k}={v!r}" for k, v in params.items())
        print(f"[chapters] {path.relative_to(root)}  ({shown})", flush=True)
        started = time.perf_counter()
        try:
            pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(root), kernel_name=args.kernel,
                                progress_bar=False, log_output=False, request_save_on_cell_execute=True)
        except pm.PapermillExecutionError as err:
            print(f"[chapters] FAILED {path.relative_to(root)} at cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                  f"           the partly executed notebook is {out.relative_to(root)}", file=sys.stderr)
            return 1
        hide_default_parameters(out)
        print(f"[chapters]   done in {time.perf_counter() - started:.1f} s -> {out.relative_to(root)}", flush=True)
    return 0


def hide_default_parameters(path: Path) -> None:
    """Tag the notebook's default ``parameters`` cell ``remove-cell`` when papermill injected the real values.

    The page then shows the values the chapter actually ran with (papermill's
    ``injected-parameters`` cell) and not the defaults they replaced.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    tags_of = [c.metadata.get("tags", []) for c in nb.cells]
    if not any("injected-parameters" in tags for tags in tags_of):
        return
    for cell, tags in zip(nb.cells, tags_of):
        if "parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, path)


def plotly_js_path() -> Path:
    """``plotly.min.js`` shipped inside the installed plotly package (no CDN)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise FileNotFoundError(f"the installed plotly package has no {path}; reinstall plotly")
    return path


def stage_book(root: Path, allow_missing: bool = False) -> list[str]:
    """Prepare ``<root>/_build/executed`` as the HTML build's source tree; returns the chapters left out."""
    import yaml

    stage = root / STAGE_NAME
    stage.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "_config.yml", stage / "_config.yml")
    static = stage / "book" / "_static"
    if static.exists():
        shutil.rmtree(static)
    shutil.copytree(root / "book" / "_static", static, ignore=shutil.ignore_patterns("*.js"))
    shutil.copy2(plotly_js_path(), static / "plotly.min.js")  # the only .js file: loaded once per page

    missing = []
    for chapter in toc_chapters(root / "_toc.yml"):
        try:
            source = chapter_source(chapter, root)
        except FileNotFoundError:
            if not allow_missing:
                raise
            missing.append(chapter)
            continue
        staged = stage / source.relative_to(root)
        if source.suffix == ".md":
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staged)
        elif not staged.exists():
            missing.append(chapter)
        else:
            drop_plotly_json(staged)
            drop_widgets(staged)
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    if missing:
        if not allow_missing:
            raise FileNotFoundError(f"not executed yet: {missing}; run `make chapters` (or pass --allow-missing)")
        if toc["root"] in missing:
            raise FileNotFoundError(f"the root chapter {toc['root']} is not executed; run `make chapters`")
        print(f"[html] WARNING: {len(missing)} chapter(s) not executed, left out of the book: {missing}",
              file=sys.stderr)
        kept = [c for c in toc.get("chapters", []) if str(Path(c["file"]).with_suffix("")) not in missing]
        if kept:
            toc["chapters"] = kept
        else:
            toc.pop("chapters", None)  # jupyter-book rejects an empty list
    (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return missing


def drop_plotly_json(path: Path) -> int:
    """Remove ``application/vnd.plotly.v1+json`` from outputs that also carry ``text/html``; returns the count.

    ``salad_lite.viz.show_plotly`` emits both: the JSON for live Jupyter, the HTML for
    the book. myst-nb warns about every plotly JSON it meets (it cannot render it),
    so the JSON goes where HTML stands beside it. A plotly figure shown without
    ``show_plotly`` keeps its lone JSON and still fails the strict build, as it should:
    it would be missing from the page.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    dropped = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data and "text/html" in data:
                del data[PLOTLY_MIME]
                dropped += 1
    if dropped:
        nbformat.write(nb, path)
    return dropped


def drop_widgets(path: Path) -> int:
    """Remove Jupyter widget outputs and the notebook's widget state; returns the outputs removed.

    A widget (a tqdm.notebook bar run with ``--progress-bars``, or one a reader adds)
    makes myst-nb load the widget manager and require.js from a CDN, which breaks the
    offline book; its ``text/plain`` fallback, if any, stays as text. Chapter 5's
    explorers (``salad_lite.explorers``) put a static figure (``text/html``) beside
    their widget in the same output: that figure is what the page shows.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    dropped = 0
    for cell in nb.cells:
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                del data[WIDGET_MIME]
                dropped += 1
                if not data:
                    continue
            kept.append(output)
        if "outputs" in cell:
            cell.outputs = kept
    had_state = nb.metadata.pop("widgets", None) is not None
    if dropped or had_state:
        nbformat.write(nb, path)
    return dropped


def check_extensions(config_path: Path) -> None:
    """Fail early, naming the pip package, when a Sphinx extension listed in ``_config.yml`` is not installed."""
    import importlib.util

    import yaml

    extensions = (yaml.safe_load(config_path.read_text()).get("sphinx") or {}).get("extra_extensions") or []
    absent = [name for name in extensions if importlib.util.find_spec(name) is None]
    if absent:
        raise ModuleNotFoundError(f"{config_path} needs the Sphinx extension(s) {absent}; "
                                  f"install them with: pip install {' '.join(absent)}")


def build_html(args: argparse.Namespace) -> int:
    """Stage the executed chapters and run jupyter-book on them; 0 on success."""
    check_extensions(args.root / "_config.yml")
    stage_book(args.root, args.allow_missing)
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(args.root / STAGE_NAME), "--path-output", str(args.root),
           "--builder", "html", "--all", "--keep-going"]
    if args.strict:
        cmd.append("-W")
    print("[html] " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=args.root, text=True, capture_output=True)
    log = result.stdout + result.stderr
    (args.root / "_build" / "html_build.log").write_text(log)
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    for line in warnings:
        print(f"[html] {line}", file=sys.stderr)
    if result.returncode != 0:
        print(log[-4000:], file=sys.stderr)
        print(f"[html] jupyter-book failed (exit {result.returncode}); full log in _build/html_build.log",
              file=sys.stderr)
        return result.returncode
    index = args.root / "_build" / "html" / "index.html"
    print(f"[html] built {index} with {len(warnings)} warning(s)")
    return 0


def _checked(check: Any, name: str) -> Any:
    """An argparse ``type=`` that runs a :mod:`salad_lite.book` check (argparse then names the argument)."""

    def convert(text: str) -> str:
        try:
            return check(name, text)
        except ChapterParameterError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = name  # argparse shows it in "invalid <name> value"
    return convert


def check_chapter_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse before any chapter runs (``error: ...``, exit 2): a bad environment override, a missing data folder.

    ``SALAD_LITE_PROFILE`` / ``SALAD_LITE_RUN_DIR`` are checked as the chapters will
    check them. A non-empty --data-root / --mura-root must be a folder (or, for the
    folder dataset, a manifest CSV) with its dataset's layout (:func:`check_data_layout`),
    and the run folder must not be a file; relative folders are taken from the book
    root, as the chapters take them. The folder dataset needs --data-root (it has no
    embedded set).
    """
    try:
        folder = run_folder(args.profile, args.run_dir)
    except ChapterParameterError as err:
        parser.error(str(err))
    path = args.root / Path(folder).expanduser()  # an absolute folder replaces the root
    blocking = next((p for p in (path, *path.parents) if p.is_file()), None)
    if blocking is not None:
        parser.error(f"run folder {folder} cannot be made: {blocking} is a file (relative folders are taken from "
                     f"{args.root})")
    if args.dataset == "folder" and not args.data_root:
        parser.error("--dataset folder reads your own images: --data-root must name their folder or manifest CSV "
                     "(there is no embedded 'folder' set)")
    for option, dataset in (("data_root", args.dataset), ("mura_root", "mura")):
        value = getattr(args, option)
        manifest = option == "data_root" and args.dataset == "folder"  # the folder dataset also reads a CSV
        is_csv = (args.root / value).is_file() and Path(value).suffix.lower() == ".csv"
        if value and not ((args.root / value).is_dir() or manifest and is_csv):
            parser.error(f"argument --{option.replace('_', '-')}: no such folder{' or manifest CSV' * manifest}: "
                         f"{value!r} (relative folders are taken from {args.root})")
        if value:
            check_data_layout(parser, option, dataset, args.root / value, args.profile)


def check_data_layout(parser: argparse.ArgumentParser, option: str, dataset: str, root: Path, profile: str) -> None:
    """Read ``root``'s listing as the chapters will (``registry.dataset_source``: CSVs and file names, no pixels).

    A wrong layout (an empty folder, one class folder, a folder that is not MURA's) is then
    refused in seconds, before chapter 1, not when chapter 2 reads the data. Data warnings
    are left to the chapters, which show them.
    """
    from salad_lite.config import profile_config
    from salad_lite.data.io import DataWarning
    from salad_lite.data.registry import dataset_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        try:
            dataset_source(dataset, root, profile_config(profile, dataset).model.image_size)
        except (ValueError, OSError) as error:
            parser.error(f"argument --{option.replace('_', '-')}: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO,
                        help="book root holding _config.yml, _toc.yml and book/ (default: this repository)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("toc", help="print the chapter files in reading order")
    run = sub.add_parser("chapters", help="execute the chapters with papermill")
    run.add_argument("--only", nargs="+", help="these notebooks only (default: every chapter of _toc.yml)")
    run.add_argument("--profile", default="default", choices=PROFILES)
    run.add_argument("--dataset", default="nih", choices=DATASETS)
    run.add_argument("--data-root", default="", type=_checked(check_path, "data_root"),
                     help="real data folder ('' = embedded synthetic data)")
    run.add_argument("--mura-root", default="", type=_checked(check_path, "mura_root"),
                     help="data folder of chapters pinned to MURA ('' = embedded)")
    run.add_argument("--run-dir", default="", type=_checked(check_path, "run_dir"),
                     help="checkpoints and caches, relative to the book root ('' = runs/<profile>)")
    run.add_argument("--device", default="auto", type=_checked(check_device, "device"),
                     help="auto, cpu, mps, cuda or cuda:<index>")
    run.add_argument("--kernel", default="python3")
    run.add_argument("--allow-missing", action="store_true", help="skip _toc.yml entries whose file does not exist")
    run.add_argument("--progress-bars", action="store_true", help="keep tqdm bars (they clutter the static pages)")
    html = sub.add_parser("html", help="build _build/html from the executed chapters")
    html.add_argument("--allow-missing", action="store_true", help="leave chapters that were not executed out")
    html.add_argument("--no-strict", dest="strict", action="store_false", help="do not turn warnings into errors")
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    if args.command == "chapters":
        check_chapter_arguments(parser, args)
    try:
        if args.command == "toc":
            for chapter in toc_chapters(args.root / "_toc.yml"):
                try:
                    print(chapter_source(chapter, args.root).relative_to(args.root))
                except FileNotFoundError:
                    print(f"{chapter}  (missing)")
            return 0
        if args.command == "chapters":
            return run_chapters(args)
        return build_html(args)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as err:
        print(f"{Path(__file__).name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
