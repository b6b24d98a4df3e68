"""The book pipeline end to end on a one-page book: papermill -> jupyter-book -> headless Chromium.

The page holds a plotly figure with a round slider (``viz.umap_rounds_figure``)
shown through ``viz.show_plotly``, a matplotlib figure and an explorer of chapter 5
(``salad_lite.explorers``: a live widget plus its static figure in one output).
Checks: the page loads the local plotly.js exactly once and nothing from a CDN, and
in a real browser (network blocked) plotly.js draws the figure and its slider, the
explorer shows as its static figure (the widget output is dropped by the build) and
the page requests no network URL (Chromium's network log). Skips without Chromium
or jupyter-book.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import check_pages  # noqa: E402

PARAMETERS = 'profile = "default"\ndataset = "nih"\ndata_root = ""\nrun_dir = "runs/default"\ndevice = "auto"'
FIGURE = """\
import numpy as np
from salad_lite import viz

rng = np.random.default_rng(0)
labels = (rng.random(60) < 0.2).astype(int)
rounds = [rng.normal(size=(60, 2)) * (1.0 - 0.3 * r) for r in range(3)]
fig = viz.umap_rounds_figure(rounds, labels, findings=np.where(labels == 1, "Mass", "No Finding"))
viz.show_plotly(fig)"""
MATPLOTLIB = """\
import matplotlib.pyplot as plt

plt.plot([0, 1], [0, 1])
plt.show()"""
EXPLORER = """\
import numpy as np
from salad_lite import explorers

rng = np.random.default_rng(1)
labels = np.r_[np.zeros(30, int), np.ones(10, int)]
scores = rng.random(40) + 0.5 * labels
grid = {(5, True): scores, (5, False): scores[::-1].copy()}
figure = explorers.confusion_figure(grid, labels, [(5, True)], (50, 90))
widget = explorers.threshold_explorer_widget(grid, labels)
explorers.show_explorer(widget, figure, "threshold", "a threshold explorer")"""


def _make_book(root: Path) -> None:
    """A one-chapter book that uses the repository's real _config.yml and static files."""
    (root / "book").mkdir(parents=True)
    shutil.copy2(REPO / "_config.yml", root / "_config.yml")
    shutil.copytree(REPO / "book" / "_static", root / "book" / "_static", ignore=shutil.ignore_patterns("*.js"))
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/01_plotly\n")
    param_cell = new_code_cell(PARAMETERS)
    param_cell.metadata["tags"] = ["parameters"]
    cells = [new_markdown_cell("# Plotly page"), param_cell, new_code_cell(FIGURE), new_code_cell(MATPLOTLIB),
             new_code_cell(EXPLORER)]
    nb = new_notebook(cells=cells,
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, root / "book" / "01_plotly.ipynb")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "build_book.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def built_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path(sys.executable).with_name("jupyter-book").exists() and shutil.which("jupyter-book") is None:
        pytest.skip("jupyter-book is not installed")
    if importlib.util.find_spec("papermill") is None:
        pytest.skip("papermill is not installed")
    root = tmp_path_factory.mktemp("book")
    _make_book(root)
    executed = _run("--root", str(root), "chapters", "--profile", "smoke", "--run-dir", "runs/test-run",
                    cwd=root)
    assert executed.returncode == 0, executed.stdout + executed.stderr
    built = _run("--root", str(root), "html", cwd=root)
    assert built.returncode == 0, built.stdout + built.stderr
    return root / "_build" / "html" / "book" / "01_plotly.html"


def test_page_uses_local_plotly_once_and_no_cdn(built_page: Path) -> None:
    html = built_page.read_text()
    assert html.count('src="../_static/plotly.min.js') == 1, "plotly.js must be loaded exactly once"
    assert "cdn.plot.ly" not in html and "cdn.jsdelivr" not in html
    assert check_pages.external_resources(html) == []
    assert html.count('class="plotly-graph-div"') == 1
    assert "Plotly.newPlot" in html and "Plotly.addFrames" in html  # the slider's frames reach the page
    local_js = built_page.parents[1] / "_static" / "plotly.min.js"
    import plotly

    shipped = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert local_js.stat().st_size == shipped.stat().st_size
    # the default parameters cell is removed, papermill's injected values are shown
    assert "runs/test-run" in html and "runs/default" not in html
    # the explorer: its static figure stands in the page, no widget (nor a widget manager) is left
    assert html.count('<figure class="salad-explorer" data-explorer="threshold">') == 1
    assert "data:image/png;base64," in html
    for absent in ("widget-view+json", "require.js", "html-manager", "embed-amd"):  # thebe names unpkg, unused
        assert absent not in html, absent


def test_staged_chapter_keeps_the_explorer_figure_and_drops_its_widget(built_page: Path) -> None:
    executed = built_page.parents[2] / "executed" / "book" / "01_plotly.ipynb"
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {})
               and "salad-explorer" in o["data"]["text/html"]]
    assert len(outputs) == 1
    assert build_book.WIDGET_MIME not in outputs[0]["data"] and "widgets" not in nb.metadata  # dropped for the book


def test_plotly_figure_and_slider_render_in_chromium(built_page: Path, tmp_path: Path) -> None:
    browser = check_pages.find_browser()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    report = check_pages.check_page(browser, built_page, tmp_path, min_plotly=1, min_sliders=1, min_images=2,
                                    min_explorers=1, window="1100,1400", budget_ms=5000)
    assert report.ok, report.problems
    assert report.images >= 2 and report.broken_images == []
    assert report.explorer_figures == 1 and report.widgets_rendered == 0 and report.network_requests == []
    missing = check_pages.check_page(browser, built_page, tmp_path, min_images=5, window="800,600", budget_ms=2000)
    assert not missing.ok and "expected at least 5" in " ".join(missing.problems)
    absent = check_pages.check_page(browser, built_page, tmp_path, min_explorers=2, window="800,600",
                                    budget_ms=2000)
    assert "1 explorer(s) shown (1 static figure(s), 0 rendered widget(s)), expected at least 2" in absent.problems
    assert report.plotly_rendered == 1 and report.sliders >= 1 and report.plotly_svgs >= 1
    assert Path(report.screenshot).stat().st_size > 10_000


def test_analyse_dom_counts_classes() -> None:
    dom = ('<div class="plotly-graph-div js-plotly-plot" id="a"><svg class="main-svg"></svg>'
           '<g class="slider-container"></g></div><div class="plotly-graph-div"></div>'
           '<div class="not-plotly-graph-div"></div><img alt="" src="../_images/fig.png">'
           '<figure class="salad-explorer" data-explorer="films"><img src="data:image/png;base64,AA">'
           '<figcaption>x</figcaption></figure><figure class="salad-explorer"><figcaption>no image</figcaption>'
           '</figure><div class="jupyter-widgets widget-vbox"></div>')
    assert check_pages.analyse_dom(dom) == {"images": 2, "explorer_figures": 1, "widgets_rendered": 1,
                                            "plotly_divs": 2, "plotly_rendered": 1, "plotly_svgs": 1, "sliders": 1}


def test_one_widget_box_is_one_explorer_not_one_per_child() -> None:
    box = ('<div class="widget-subarea"><div class="lm-Widget jupyter-widgets widget-container widget-vbox">'
           '<div class="lm-Widget jupyter-widgets widget-dropdown"><select><option>5</option></select></div>'
           '<div class="lm-Widget jupyter-widgets widget-toggle-buttons"><button>discard</button></div>'
           '<div class="lm-Widget jupyter-widgets widget-hslider"><input type="range"></div>'
           '<div class="lm-Widget jupyter-widgets widget-html"><table><tr><td>3</td></tr></table></div>'
           '</div></div><script type="application/vnd.jupyter.widget-view+json">{"model_id": "a"}</script>')
    assert check_pages.analyse_dom(box)["widgets_rendered"] == 1  # five views, one displayed widget
    assert check_pages.widget_outputs(box + box) == 2
    notebook = '<div class="output_subarea jupyter-widgets-view"><div class="jupyter-widgets widget-vbox"></div></div>'
    assert check_pages.widget_outputs(notebook) == 1
    assert check_pages.widget_outputs('<div class="widget-subarea"></div><p class="x">text</p>') == 0  # not drawn
    assert check_pages.widget_outputs('<div class="widget-subarea"><div class="jupyter-widgets">') == 1  # cut short


def _netlog(events: list[dict], *, cut: bool = False) -> str:
    import json

    text = json.dumps({"constants": {"logEventTypes": {"URL_REQUEST_START_JOB": 7, "CORS_REQUEST": 3}},
                       "events": events})
    return text[: -len("]}")] + "," if cut else text  # a log cut short ends inside its events list


def test_page_requests_lists_the_pages_network_urls_only(tmp_path: Path) -> None:
    events = [
        {"type": 7, "params": {"url": "https://cdn.jsdelivr.net/npm/require.js", "initiator": "null"}},
        {"type": 7, "params": {"url": "https://unpkg.com/x.js", "initiator": "https://example.org"}},
        {"type": 7, "params": {"url": "https://update.googleapis.com/u", "initiator": "not an origin"}},
        {"type": 3, "params": {"url": "https://other.example/y.js"}},  # not a job start: counted once, there
        {"type": 7, "params": {"url": "file:///book/_static/plotly.min.js", "initiator": "null"}},
        {"type": 7, "params": {"url": "data:image/png;base64,AA", "initiator": "null"}},
        {"type": 7, "params": {"url": "https://cdn.jsdelivr.net/npm/require.js", "initiator": "null"}}]
    log = tmp_path / "net.json"
    for cut in (False, True):
        log.write_text(_netlog(events, cut=cut))
        assert check_pages.page_requests(log) == ["https://cdn.jsdelivr.net/npm/require.js", "https://unpkg.com/x.js"]
    log.write_text('{"events": []}')
    with pytest.raises(ValueError, match="not a Chromium network log"):
        check_pages.page_requests(log)
    log.write_text("<html>")
    with pytest.raises(ValueError, match="not a Chromium network log"):
        check_pages.page_requests(log)


def test_missing_images_names_local_files_that_do_not_exist(tmp_path: Path) -> None:
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "here.png").write_bytes(b"png")
    page = tmp_path / "book" / "page.html"
    page.parent.mkdir()
    dom = ('<img src="../_images/here.png"><img src="../_images/gone.png"><img src="data:image/png;base64,AAAA">'
           '<img src="https://example.org/remote.png">')
    assert check_pages.missing_images(dom, page) == ["../_images/gone.png"]


def test_external_resources_flags_cdn_scripts_only() -> None:
    html = ('<script src="https://cdn.plot.ly/plotly-2.js"></script><script src="_static/plotly.min.js"></script>'
            '<link rel="stylesheet" href="//fonts.example.org/a.css"><a href="https://example.org">link</a>'
            '<script>const URL = "https://unpkg.com/x.js"</script>')
    assert check_pages.external_resources(html) == ["//fonts.example.org/a.css", "https://cdn.plot.ly/plotly-2.js"]


# ----------------------------------------------------------------- build_book.py units (no browser, no kernel)
import argparse  # noqa: E402

import build_book  # noqa: E402


def _args(**kw: str) -> argparse.Namespace:
    base = {"profile": "smoke", "run_dir": "runs/x", "device": "cpu", "dataset": "nih", "data_root": "/nih",
            "mura_root": "/mura"}
    return argparse.Namespace(**{**base, **kw})


def test_chapter_parameters_route_mura_chapters_to_mura_root() -> None:
    chest = dict.fromkeys(build_book.PARAMETER_NAMES, "") | {"dataset": "nih"}
    mura = dict.fromkeys(build_book.PARAMETER_NAMES, "") | {"dataset": "mura"}
    assert build_book.chapter_parameters(chest, _args()) == {
        "profile": "smoke", "run_dir": "runs/x", "device": "cpu", "dataset": "nih", "data_root": "/nih"}
    assert build_book.chapter_parameters(mura, _args())["data_root"] == "/mura"
    assert build_book.chapter_parameters(mura, _args(dataset="folder"))["dataset"] == "mura"
    explicit = build_book.chapter_parameters(mura, _args(dataset="mura", data_root="/my-mura"))
    assert explicit["dataset"] == "mura" and explicit["data_root"] == "/my-mura"
    assert "dataset" not in build_book.chapter_parameters({"profile": "x"}, _args())  # only names it declares


def test_toc_order_and_plotly_json_is_dropped_only_beside_html(tmp_path: Path) -> None:
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/01_a\nparts:\n  - chapters:\n"
                                       "    - file: book/02_b.ipynb\n      sections:\n        - file: book/03_c\n")
    assert build_book.toc_chapters(tmp_path / "_toc.yml") == ["book/01_a", "book/02_b", "book/03_c"]
    nb = new_notebook(cells=[new_code_cell("a"), new_code_cell("b")])
    plotly_json = {"data": [], "layout": {}}
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={
        "text/html": "<div></div>", build_book.PLOTLY_MIME: plotly_json})]
    nb.cells[1].outputs = [nbformat.v4.new_output("display_data", data={build_book.PLOTLY_MIME: plotly_json})]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert build_book.drop_plotly_json(path) == 1
    cells = nbformat.read(path, as_version=4).cells
    assert set(cells[0].outputs[0].data) == {"text/html"}
    assert build_book.PLOTLY_MIME in cells[1].outputs[0].data  # a lone plotly output stays: the strict build flags it


def test_widget_outputs_and_state_are_dropped(tmp_path: Path) -> None:
    widget = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    nb = new_notebook(cells=[new_code_cell("bar"), new_code_cell("only widget"), new_code_cell("print")])
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data={
        build_book.WIDGET_MIME: widget, "text/plain": "epochs: 0%| 0/15"})]
    nb.cells[1].outputs = [nbformat.v4.new_output("display_data", data={build_book.WIDGET_MIME: widget})]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="kept\n")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "w.ipynb"
    nbformat.write(nb, path)
    assert build_book.drop_widgets(path) == 2
    out = nbformat.read(path, as_version=4)
    assert "widgets" not in out.metadata
    assert set(out.cells[0].outputs[0].data) == {"text/plain"}  # the text fallback stays
    assert out.cells[1].outputs == [] and out.cells[2].outputs[0].text == "kept\n"
    assert build_book.drop_widgets(path) == 0
