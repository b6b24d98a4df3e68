"""Open built book pages in headless Chromium: screenshot them and check that their figures rendered.

    python scripts/check_pages.py _build/html/book/04_aggregation.html --out _build/page_checks \\
        --min-plotly 1 --min-sliders 1
    python scripts/check_pages.py _build/html/book/06_eval_nih.html --min-images 2 --window 1280,9000
    python scripts/check_pages.py _build/html/book/05_scoring.html --min-explorers 2

For every page it
1. reads the HTML file: lists ``<script src>`` / stylesheet links that leave the
   machine (http, https or protocol-relative URLs: the book must work offline);
2. runs ``chromium --headless --dump-dom --screenshot`` with the network blocked, and
   counts in the rendered DOM the plotly containers (``plotly-graph-div``, present in
   the HTML), the figures that plotly.js actually drew (``js-plotly-plot`` and
   ``main-svg``, added by plotly.js in the browser), the slider groups
   (``slider-container``), the ``<img>`` figures, whose local files must exist, and
   the explorers of chapter 5 (``salad_lite.explorers``): static explorer figures
   (``<figure class="salad-explorer">`` holding an ``<img>``) plus the widget outputs a
   widget manager rendered: top-level views only (:func:`widget_outputs`: the outermost
   ``widget-subarea`` / ``jupyter-widgets-view`` container or ``jupyter-widgets``
   element holding a drawn widget; the child widgets of one box are not counted);
3. records every request the page itself made in the browser (Chromium's network
   log, ``--log-net-log``; requests of the browser's own services, whose initiator
   is "not an origin", are left out): any http(s)/ws(s) URL, e.g. a CDN script
   added at run time, is a problem even though the blocked network made it fail;
4. writes ``<out>/<page>.png`` and ``<out>/<page>.dom.html``.

Exit status 0 when every page meets the ``--min-*`` expectations and loads nothing
from the network, 1 otherwise, 2 when no Chromium is installed (install it with
``apt-get install chromium``; this script installs nothing). A JSON summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: the page must be offline-safe
)
_IMG_SRC = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*["']([^"']+)["']""", re.I)
_EXTERNAL = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']""", re.I)
_EXPLORER_FIGURE = re.compile(
    r"""<figure\b[^>]*?\bclass\s*=\s*["'][^"']*\bsalad-explorer\b[^"']*["'][^>]*>(.*?)</figure>""", re.I | re.S)
NETWORK_SCHEMES = ("http:", "https:", "ws:", "wss:", "ftp:")
BROWSER_INITIATOR = "not an origin"  # the initiator Chromium records for its own service requests


@dataclass
class PageReport:
    page: str
    external_resources: list[str] = field(default_factory=list)
    plotly_divs: int = 0  # elements with class plotly-graph-div (in the HTML)
    plotly_rendered: int = 0  # elements with class js-plotly-plot (added by plotly.js)
    plotly_svgs: int = 0  # main-svg layers drawn by plotly.js
    sliders: int = 0  # slider-container groups drawn by plotly.js
    images: int = 0  # <img> elements (matplotlib figures, diagrams)
    explorer_figures: int = 0  # static explorer figures with an image (<figure class="salad-explorer">)
    widgets_rendered: int = 0  # top-level widget outputs drawn by a widget manager (widget_outputs)
    network_requests: list[str] = field(default_factory=list)  # URLs the page requested in the browser
    broken_images: list[str] = field(default_factory=list)  # local <img src> files that do not exist
    screenshot: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def find_browser() -> str | None:
    """Path of an installed Chromium/Chrome, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def external_resources(html: str) -> list[str]:
    """Script and stylesheet URLs of the page that point off the machine."""
    return sorted(set(_EXTERNAL.findall(html)))


def _class_count(dom: str, name: str) -> int:
    """Number of elements whose class attribute contains the class ``name``."""
    pattern = re.compile(r"""\bclass\s*=\s*["']([^"']*)["']""", re.I)
    return sum(1 for classes in pattern.findall(dom) if name in classes.split())


def missing_images(dom: str, page: Path) -> list[str]:
    """``<img src>`` paths of the page that point at local files which do not exist (data: URIs are inline)."""
    sources = [src for src in _IMG_SRC.findall(dom) if not src.startswith("data:")]
    local = [src.removeprefix("file://") for src in sources if not re.match(r"(?:https?:)?//", src)]
    return sorted({src for src in local if not (page.parent / src.split("#")[0].split("?")[0]).exists()
                   and not Path(src).exists()})


def explorer_figures(dom: str) -> int:
    """Static explorer figures (``<figure class="salad-explorer">``) that hold an ``<img>`` with a source."""
    return sum(1 for inner in _EXPLORER_FIGURE.findall(dom) if _IMG_SRC.search(inner))


# The containers a widget manager puts one output's view in: the HTML manager of a static page
# (``widget-subarea``, @jupyter-widgets/html-manager) and the notebook's output area (``jupyter-widgets-view``).
_WIDGET_CONTAINERS = frozenset({"widget-subarea", "jupyter-widgets-view"})
_WIDGET_VIEW = "jupyter-widgets"  # the class of every drawn widget view, children of a box included
_VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                        "track", "wbr"})


class _WidgetOutputCounter(HTMLParser):
    """Counts the outermost widget containers / views that hold a drawn widget (see :func:`widget_outputs`)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.count = 0
        self._stack: list[str] = []  # open non-void elements
        self._outer_depth: int | None = None  # stack depth of the open top-level candidate
        self._drawn = False  # the open candidate holds a drawn widget view

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = set(next((v or "" for k, v in attrs if k == "class"), "").split())
        if self._outer_depth is None and classes & (_WIDGET_CONTAINERS | {_WIDGET_VIEW}):
            self._outer_depth, self._drawn = len(self._stack), False
        if self._outer_depth is not None and _WIDGET_VIEW in classes:
            self._drawn = True
        if tag in _VOID_TAGS:
            if self._outer_depth == len(self._stack):  # a void element as the candidate: closed at once
                self._close_candidate()
            return
        self._stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self._stack:
            return  # a stray end tag
        while self._stack:
            top = self._stack.pop()
            if self._outer_depth is not None and len(self._stack) == self._outer_depth:
                self._close_candidate()
            if top == tag:
                break

    def close(self) -> None:
        super().close()
        if self._outer_depth is not None:  # a DOM cut short inside a widget
            self._close_candidate()

    def _close_candidate(self) -> None:
        self.count += int(self._drawn)
        self._outer_depth, self._drawn = None, False


def widget_outputs(dom: str) -> int:
    """Widget outputs drawn in a rendered DOM: one per displayed widget, however many children it has.

    A widget manager puts each displayed view in a container (``widget-subarea`` in a
    static page, ``jupyter-widgets-view`` in the notebook) and every view it draws,
    the child widgets of a box included, has the class ``jupyter-widgets``. This
    counts the outermost such elements that hold at least one drawn view: a box of
    five controls is one output, an empty container (a view that failed) none.
    """
    counter = _WidgetOutputCounter()
    counter.feed(dom)
    counter.close()
    return counter.count


def page_requests(netlog: Path) -> list[str]:
    """Network URLs (http, https, ws, wss, ftp) that the page requested, from a Chromium ``--log-net-log`` file.

    Every ``URL_REQUEST_START_JOB`` event counts except those whose initiator is
    "not an origin": Chromium's own service requests (updates, clock, accounts),
    which no page makes. A page opened from ``file://`` has the initiator "null".

    Raises:
        ValueError: the file is not a Chromium network log (the message names it).
    """
    import json

    text = netlog.read_text(errors="replace")
    try:
        log = json.loads(text)
    except json.JSONDecodeError:
        try:  # a log cut short when the browser ended: its events list is left open
            log = json.loads(text.rstrip().rstrip(",") + "]}")
        except json.JSONDecodeError as err:
            raise ValueError(f"{netlog} is not a Chromium network log ({err})") from None
    try:
        start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    except (KeyError, TypeError):
        raise ValueError(f"{netlog} is not a Chromium network log (no URL_REQUEST_START_JOB constant)") from None
    urls = set()
    for event in log.get("events", []):
        params = event.get("params") or {}
        url = str(params.get("url", ""))
        if (event.get("type") == start_job and params.get("initiator") != BROWSER_INITIATOR
                and url.lower().startswith(NETWORK_SCHEMES)):
            urls.add(url)
    return sorted(urls)


def analyse_dom(dom: str) -> dict[str, int]:
    """Counts of plotly elements, images and explorers in a rendered DOM (see the module docstring)."""
    return {
        "images": len(_IMG_SRC.findall(dom)),
        "explorer_figures": explorer_figures(dom),
        "widgets_rendered": widget_outputs(dom),
        "plotly_divs": _class_count(dom, "plotly-graph-div"),
        "plotly_rendered": _class_count(dom, "js-plotly-plot"),
        "plotly_svgs": _class_count(dom, "main-svg"),
        "sliders": _class_count(dom, "slider-container"),
    }


def render(browser: str, page: Path, screenshot: Path, window: str, budget_ms: int, timeout_s: float,
           netlog: Path | None = None) -> str:
    """Rendered DOM of ``page``; writes its screenshot (and Chromium's network log to ``netlog``).

    Raises:
        RuntimeError: Chromium fails.
    """
    with tempfile.TemporaryDirectory(prefix="check_pages_") as profile:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={screenshot}", "--dump-dom"]
        if netlog is not None:
            cmd += [f"--log-net-log={netlog}", "--net-log-capture-mode=Default"]
        result = subprocess.run([*cmd, page.resolve().as_uri()], capture_output=True, text=True,
                                timeout=timeout_s)
    if result.returncode != 0 or "<html" not in result.stdout.lower():
        tail = "\n".join(result.stderr.splitlines()[-5:])
        raise RuntimeError(f"{browser} failed on {page} (exit {result.returncode}): {tail}")
    return result.stdout


def check_page(browser: str, page: Path, out_dir: Path, *, min_plotly: int = 0, min_sliders: int = 0,
               min_images: int = 0, min_explorers: int = 0,
               window: str = "1280,2400", budget_ms: int = 8000, timeout_s: float = 120) -> PageReport:
    """Screenshot ``page`` and check it (see the module docstring)."""
    report = PageReport(page=str(page))
    if not page.is_file():
        report.problems.append(f"no such page: {page}")
        return report
    report.external_resources = external_resources(page.read_text(errors="replace"))
    if report.external_resources:
        report.problems.append(f"loads {len(report.external_resources)} resource(s) from the network: "
                               f"{report.external_resources}")
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / f"{page.stem}.png"
    netlog = out_dir / f"{page.stem}.netlog.json"
    netlog.unlink(missing_ok=True)
    try:
        dom = render(browser, page, shot, window, budget_ms, timeout_s, netlog)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        report.problems.append(str(err))
        return report
    try:
        report.network_requests = page_requests(netlog)
    except (OSError, ValueError) as err:
        report.problems.append(f"could not read the browser's network log: {err}")
    if report.network_requests:
        report.problems.append(f"requested {len(report.network_requests)} URL(s) from the network in the browser: "
                               f"{report.network_requests}")
    (out_dir / f"{page.stem}.dom.html").write_text(dom)
    report.screenshot = str(shot) if shot.is_file() else ""
    if not report.screenshot:
        report.problems.append("no screenshot was written")
    for key, value in analyse_dom(dom).items():
        setattr(report, key, value)
    if report.plotly_divs < min_plotly:
        report.problems.append(f"{report.plotly_divs} plotly figure div(s), expected at least {min_plotly}")
    if report.plotly_rendered < report.plotly_divs or report.plotly_rendered < min_plotly:
        report.problems.append(f"plotly.js drew {report.plotly_rendered} of {report.plotly_divs} figure(s); "
                               "is _static/plotly.min.js loaded?")
    if report.sliders < min_sliders:
        report.problems.append(f"{report.sliders} plotly slider(s), expected at least {min_sliders}")
    if report.images < min_images:
        report.problems.append(f"{report.images} image(s), expected at least {min_images}")
    explorers = report.explorer_figures + report.widgets_rendered
    if explorers < min_explorers:
        report.problems.append(f"{explorers} explorer(s) shown ({report.explorer_figures} static figure(s), "
                               f"{report.widgets_rendered} rendered widget(s)), expected at least {min_explorers}")
    report.broken_images = missing_images(dom, page)
    if report.broken_images:
        report.problems.append(f"{len(report.broken_images)} image file(s) missing: {report.broken_images}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="+", type=Path, help="built HTML pages")
    parser.add_argument("--out", type=Path, default=Path("_build/page_checks"), help="screenshots and DOM dumps")
    parser.add_argument("--min-plotly", type=int, default=0, help="plotly figures every page must have")
    parser.add_argument("--min-sliders", type=int, default=0, help="plotly sliders every page must have")
    parser.add_argument("--min-images", type=int, default=0, help="<img> figures every page must have")
    parser.add_argument("--min-explorers", type=int, default=0,
                        help="explorers (static explorer figures or rendered top-level widget outputs) every page "
                             "must show")
    parser.add_argument("--window", default="1280,2400", help="browser window WIDTH,HEIGHT in pixels")
    parser.add_argument("--budget-ms", type=int, default=8000, help="virtual time the page may run its scripts")
    args = parser.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"no Chromium found (looked for {', '.join(BROWSERS)}); install it, e.g. apt-get install chromium",
              file=sys.stderr)
        return 2
    reports = [check_page(browser, page, args.out, min_plotly=args.min_plotly, min_sliders=args.min_sliders,
                          min_images=args.min_images, min_explorers=args.min_explorers, window=args.window,
                          budget_ms=args.budget_ms) for page in args.pages]
    print(json.dumps([{**asdict(r), "ok": r.ok} for r in reports], indent=2))
    for r in reports:
        for problem in r.problems:
            print(f"{r.page}: {problem}", file=sys.stderr)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
