"""The command-line contract of the scripts: a data problem ends in ``error: ...`` and exit status 2.

Every script of ``data_scripts/`` decorates its ``main`` with :func:`data_script`::

    @data_script
    def main(argv: list[str] | None = None) -> int:
        ...

    if __name__ == "__main__":
        raise SystemExit(main())

A data problem (a wrong root, a malformed CSV, a label not understood, a set
that cannot be split, a corrupt cache, an unreadable image, a folder the
renderer refuses to overwrite) is raised by the library as an ``OSError`` or a
``ValueError`` (and their subclasses: ``FileNotFoundError``, ``ImageReadError``,
``LabelError``, ``CorruptFileError``, ``MuraFormatError``, ``PatientLeakError``,
``WheelFetchError``...). The wrapper prints ``error: <message>`` on stderr and
returns 2, the status argparse uses for bad arguments, instead of a traceback.
Other exceptions are bugs and keep their traceback; so do data errors when the
environment variable ``SALAD_LITE_TRACEBACK=1`` is set (for debugging).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

__all__ = ["DATA_ERRORS", "EXIT_DATA_ERROR", "TRACEBACK_ENV", "check_run_dir", "data_script"]

#: Exception types that mean "the data (or a path given on the command line) is wrong".
DATA_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError)
#: Exit status of a script stopped by a data problem (argparse's status for bad arguments).
EXIT_DATA_ERROR = 2
#: Set to 1 to get the traceback of a data error.
TRACEBACK_ENV = "SALAD_LITE_TRACEBACK"

P = ParamSpec("P")


def data_script(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a script's ``main``: a data error prints ``error: <message>`` on stderr and returns 2.

    Args:
        main: the script's entry point; returns its exit status.

    Returns:
        ``main`` with the policy of the module docstring.

    Raises:
        Whatever ``main`` raises that is not in :data:`DATA_ERRORS` (a bug),
        and data errors too when ``SALAD_LITE_TRACEBACK=1``.
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except DATA_ERRORS as error:
            if os.environ.get(TRACEBACK_ENV, "").strip() == "1":
                raise
            print(f"error: {error}", file=sys.stderr)
            return EXIT_DATA_ERROR

    return wrapper


def check_run_dir(run_dir: str, option: str = "--run-dir") -> None:
    """Refuse a run folder option that names no folder or an existing file, before anything is written.

    An empty ``--run-dir ""`` would be the current directory: a run's files would land there.

    Raises:
        ValueError: ``run_dir`` is empty or blank (the option named).
        NotADirectoryError: ``run_dir`` is an existing file.
    """
    if not run_dir.strip():
        raise ValueError(f"{option} must name a folder (e.g. runs/default), got {run_dir!r}")
    if Path(run_dir).expanduser().is_file():
        raise NotADirectoryError(f"run folder {run_dir} is a file")
