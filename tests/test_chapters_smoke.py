"""Every chapter executes end to end at the smoke profile: ``pytest --nbval-lax`` over ``book/*.ipynb``.

The chapters' settings cell calls ``salad_lite.book.chapter_settings``, which reads
``SALAD_LITE_PROFILE`` (here ``smoke``: small embedded sets, 32 px, a few epochs)
and ``SALAD_LITE_RUN_DIR`` (here a fresh temporary folder, so nothing is reused
from an earlier run); ``TQDM_DISABLE`` turns the progress bars off. nbval runs the
notebooks in chapter order in one session, so chapter 3 trains the run that
chapters 4-6 load, as in the book. ``--nbval-lax`` checks that every cell runs;
it compares no outputs. The equivalent command line::

    SALAD_LITE_PROFILE=smoke SALAD_LITE_RUN_DIR=/tmp/salad-smoke pytest --nbval-lax book/

A chapter whose settings cell does not call ``chapter_settings`` would run at its
default profile (minutes to hours): it is left out with a warning naming it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import pytest

from conftest import REPO

NOTEBOOKS = sorted((REPO / "book").glob("*.ipynb"))
SETTINGS_CALL = "chapter_settings("
TIMEOUT_S = 1800  # the whole smoke book; a normal run takes a few minutes


def _uses_chapter_settings(path: Path) -> bool:
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return len(code) > 1 and SETTINGS_CALL in code[1]


@pytest.mark.slow
def test_chapters_run_at_smoke_profile(tmp_path: Path) -> None:
    if importlib.util.find_spec("nbval") is None:
        pytest.skip("nbval is not installed")
    from salad_lite.book import chapter_environment

    runnable = [p for p in NOTEBOOKS if _uses_chapter_settings(p)]
    if not runnable:
        pytest.skip("no chapter calls chapter_settings")
    env = {**os.environ, **chapter_environment(profile="smoke", run_dir=tmp_path / "runs", progress=False)}
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", "--nbval-cell-timeout=900",
           "-W", "ignore::DeprecationWarning", *[str(p.relative_to(REPO)) for p in runnable]]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, (
        f"`SALAD_LITE_PROFILE=smoke pytest --nbval-lax` failed (exit {result.returncode}):\n"
        f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}")
    skipped = [p.name for p in NOTEBOOKS if p not in runnable]
    if skipped:
        warnings.warn(f"ran {len(runnable)} chapters; not run because their settings cell does not call "
                      f"chapter_settings: {skipped}", stacklevel=1)
