"""The book's bibliography (sphinxcontrib-bibtex): configured, complete, and every citation resolves.

A ``{cite}`` key that is not in the .bib file only shows up as a warning of the
strict HTML build (``make html``), after every chapter has run; these checks catch
it, and a malformed entry, in a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import REPO

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
SPHINX = CONFIG.get("sphinx") or {}
BIBFILES = [REPO / name for name in (SPHINX.get("config") or {}).get("bibtex_bibfiles") or []]
NOTEBOOKS = sorted((REPO / "book").glob("*.ipynb"))
PAGES = sorted((REPO / "book").glob("*.md"))
PAPER = "bozorgtabar2020salad"
#: {cite}`a,b`, {cite:p}`a`, {cite:t}`a`, {cite:alp}`a`, ... (MyST role syntax)
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]*)`")
REQUIRED_FIELDS = ("title", "year")


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _markdown(path: Path) -> str:
    if path.suffix == ".md":
        return path.read_text()
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")


def _cited(text: str) -> list[str]:
    return [key.strip() for keys in CITE.findall(text) for key in keys.split(",")]


@pytest.fixture(scope="module")
def entries() -> dict:
    pybtex_database = pytest.importorskip("pybtex.database")  # installed with sphinxcontrib-bibtex (dev extra)
    found: dict = {}
    for path in BIBFILES:
        data = pybtex_database.parse_file(str(path), bib_format="bibtex")  # raises on duplicate keys
        overlap = set(found) & set(data.entries)
        assert not overlap, f"{path.name}: keys also defined in another bib file: {sorted(overlap)}"
        found.update(data.entries)
    return found


def test_config_loads_the_extension_and_names_existing_bib_files() -> None:
    extensions = SPHINX.get("extra_extensions") or []
    assert "sphinxcontrib.bibtex" in extensions, "_config.yml: add sphinxcontrib.bibtex to sphinx.extra_extensions"
    assert "sphinx-mathjax-offline" in extensions
    assert BIBFILES, "_config.yml: sphinx.config.bibtex_bibfiles names no bib file"
    missing = [p.relative_to(REPO).as_posix() for p in BIBFILES if not p.is_file()]
    assert not missing, f"bib files named in _config.yml but absent: {missing}"


def test_bib_files_travel_with_the_static_files() -> None:
    """scripts/build_book.py stages book/_static (and the test books copy it): a bib file elsewhere is left behind."""
    static = [REPO / d for d in (SPHINX.get("config") or {}).get("html_static_path") or []]
    stray = [p.relative_to(REPO).as_posix() for p in BIBFILES if not any(p.is_relative_to(d) for d in static)]
    assert not stray, f"bib files outside html_static_path {static}: {stray}"


def test_every_entry_has_author_title_and_year(entries: dict) -> None:
    assert entries, "the bib file holds no entry"
    incomplete = {key: [f for f in REQUIRED_FIELDS if not entry.fields.get(f, "").strip()]
                  + ([] if entry.persons.get("author") else ["author"])
                  for key, entry in entries.items()}
    incomplete = {key: fields for key, fields in incomplete.items() if fields}
    assert not incomplete, f"entries missing fields: {incomplete}"
    bad_years = {key: e.fields["year"] for key, e in entries.items() if not re.fullmatch(r"(19|20)\d\d", e.fields["year"])}
    assert not bad_years, bad_years


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=_ids(NOTEBOOKS + PAGES))
def test_every_cited_key_is_in_the_bibliography(path: Path, entries: dict) -> None:
    unknown = sorted(set(_cited(_markdown(path))) - set(entries))
    assert not unknown, f"{path.name} cites keys that no bib file defines: {unknown}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_chapter_cites_the_paper(path: Path) -> None:
    assert PAPER in _cited(_markdown(path)), f"{path.name}: cite the paper in a markdown cell, {{cite}}`{PAPER}`"


def test_no_citation_hides_in_a_code_cell() -> None:
    """A role in a code cell (a comment, a string) is printed verbatim, never linked."""
    stray = [p.name for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells
             if c.cell_type == "code" and CITE.search(c.source)]
    assert not stray, f"{{cite}} roles in code cells of {stray}"


def test_references_page_is_the_last_toc_entry_and_holds_the_bibliography() -> None:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]] + [entry["file"] for entry in toc.get("chapters", [])]
    assert files[-1] == "book/references", f"the references page should close the book, _toc.yml ends with {files[-1]}"
    page = (REPO / "book" / "references.md").read_text()
    assert re.search(r"^```\{bibliography\}", page, re.M), "book/references.md has no {bibliography} directive"
