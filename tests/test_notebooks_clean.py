"""The committed chapters are clean sources: no outputs, papermill-ready parameters, no method code.

Checks every ``book/*.ipynb`` (outputs are produced by ``make chapters`` and never
committed) and the table of contents that orders them.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import build_book  # noqa: E402

NOTEBOOKS = sorted((REPO / "book").glob("*.ipynb"))
PARAMETER_NAMES = set(build_book.PARAMETER_NAMES)  # profile, dataset, data_root, run_dir, device
MAX_CODE_LINE = 80
SETTINGS_CALL = f"chapter_settings({', '.join(build_book.PARAMETER_NAMES)})"
#: Code that belongs in the package, not in a chapter.
FORBIDDEN = {
    r"^\s*class\s+\w+": "a class definition",
    r"\.backward\(": "a backward pass",
    r"torch\.optim\.": "an optimiser",
    r"nn\.Module\b": "a torch module definition",
}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_chapters() -> None:
    assert NOTEBOOKS, "book/ holds no notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_no_outputs_and_no_execution_counts(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing"
    assert "papermill" not in nb.metadata, f"{path.name} is an executed papermill copy, not a source notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_first_code_cell_is_literal_parameters(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = _code_cells(nb)
    assert code, f"{path.name} has no code cell"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell is not tagged 'parameters'"
    assigned = {}
    for node in ast.parse(first.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), (
            f"{path.name}: the parameters cell may hold only `name = literal` lines, found {ast.unparse(node)!r}")
        assigned[node.targets[0].id] = ast.literal_eval(node.value)  # raises on non-literals
    # a chapter of both data sets (chapter 8) also reads the MURA root (scripts/build_book.py passes --mura-root)
    expected = PARAMETER_NAMES | ({"mura_root"} & set(assigned))
    assert set(assigned) == expected, f"{path.name}: parameters {sorted(assigned)} != {sorted(expected)}"
    assert all(isinstance(v, str) for v in assigned.values()), f"{path.name}: parameters must be strings"
    assert assigned["profile"] in {"smoke", "default", "full"}
    assert assigned["dataset"] in {"nih", "mura", "folder"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_second_code_cell_derives_the_configuration(path: Path) -> None:
    code = _code_cells(nbformat.read(path, as_version=4))
    assert len(code) >= 2, f"{path.name}: expected a settings cell after the parameters"
    assert SETTINGS_CALL in code[1].source, (
        f"{path.name}: the cell after the parameters should derive the settings with "
        f"salad_lite.book.{SETTINGS_CALL}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_method_code_in_chapters(path: Path) -> None:
    for i, cell in enumerate(_code_cells(nbformat.read(path, as_version=4))):
        for pattern, what in FORBIDDEN.items():
            assert not re.search(pattern, cell.source, re.M), (
                f"{path.name}, code cell {i}: {what}; method code belongs in salad_lite, chapters only call it")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_code_lines_fit_the_page(path: Path) -> None:
    """The book's text column shows about 80 characters of code; longer lines are cut off."""
    long = [(i, len(line)) for i, cell in enumerate(_code_cells(nbformat.read(path, as_version=4)))
            for line in cell.source.splitlines() if len(line) > MAX_CODE_LINE]
    assert not long, f"{path.name}: (code cell, length) of lines over {MAX_CODE_LINE} characters: {long}"


def test_every_notebook_is_in_the_toc_in_order() -> None:
    chapters = build_book.toc_chapters(REPO / "_toc.yml")
    listed = [f"{c}.ipynb" for c in chapters]
    orphans = [p.relative_to(REPO).as_posix() for p in NOTEBOOKS if p.relative_to(REPO).as_posix() not in listed]
    assert not orphans, f"notebooks missing from _toc.yml: {orphans}"
    assert chapters == sorted(chapters), "_toc.yml order should follow the chapter numbers"
    assert chapters[0] == "book/01_introduction"


def test_every_toc_chapter_exists() -> None:
    chapters = build_book.toc_chapters(REPO / "_toc.yml")
    missing = [c for c in chapters if not (REPO / f"{c}.ipynb").exists() and not (REPO / f"{c}.md").exists()]
    if missing:
        pytest.skip(f"chapters named in _toc.yml but not written yet: {missing}")
