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

A wrong option never gets that far: the argparse types below (the command line's,
the data scripts' and the benchmarks') check each value where it enters, so argparse
prints ``argument --x: must be ..., got '...'`` and exits 2 before any work.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

from salad_lite.files import blocking_file

__all__ = ["DATA_ERRORS", "EXIT_DATA_ERROR", "TRACEBACK_ENV", "check_run_dir", "count", "data_script",
           "device_option", "file_option", "folder_option", "int_at_least", "int_type", "number_type",
           "positive_int", "refuse_torchrun", "seed_option"]

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


def refuse_torchrun(parser: argparse.ArgumentParser, what: str, hint: str = "") -> None:
    """A usage error (exit 2) when torchrun started this process among others (``WORLD_SIZE`` > 1).

    ``what`` runs in one process: under torchrun every rank would run all of it and write the same files.
    ``hint`` is added to the message (e.g. ``"; only train is data-parallel"``).
    """
    ranks = os.environ.get("WORLD_SIZE", "").strip()
    if ranks not in ("", "1"):
        parser.error(f"{what} runs in one process (WORLD_SIZE={ranks}): run it without torchrun{hint}")


# ------------------------------------------------------------------------------------------ argparse types
def int_at_least(text: str, low: int, high: int | None = None, why: str = "") -> int:
    """``text`` as an int in ``[low, high]`` (``high`` None: no upper bound); argparse names the option.

    Args:
        text: the option's value.
        low, high: the accepted range (both included).
        why: said after the range (e.g. ``" (this machine's CPUs)"``).

    Raises:
        argparse.ArgumentTypeError: not an integer, or outside the range (the text quoted).
    """
    wanted = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}{why}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {wanted}{why}, got {text!r}")
    return value


def int_type(low: int, high: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse ``type=`` for ints in ``[low, high]`` (:func:`int_at_least`)."""

    def int_option(text: str) -> int:
        return int_at_least(text, low, high, why)

    return int_option


def positive_int(text: str) -> int:
    """An option value that is an int >= 1 (``argument --image-size: must be an int >= 1, got '0'``)."""
    return int_at_least(text, 1)


def count(text: str) -> int:
    """An option value that is an int >= 0 (``argument --max-train: must be an int >= 0, got '-1'``)."""
    return int_at_least(text, 0)


def seed_option(text: str) -> int:
    """A ``--seed`` value: an int in NumPy's seed range [0, 2**32 - 1], as ``train.seed`` (parsed without torch).

    Raises:
        argparse.ArgumentTypeError: not an int in that range (the text quoted).
    """
    from salad_lite.config import MAX_SEED

    try:
        value = int(text)
    except ValueError:  # text, "1.5", "²" (a digit int() cannot read)
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an int in [0, {MAX_SEED}], got {text!r}")
    return value


def number_type(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` for finite numbers between ``low`` and ``high`` (None: unbounded; ``*_open``: excluded).

    The message names the interval: ``must be a number in [0, 1), got '1.5'``, ``must be a number > 0, got '0'``.
    NaN and infinities are refused.
    """
    if low is not None and high is not None:
        wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        wanted = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        wanted = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        wanted = "a finite number"

    def number_option(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        fits = math.isfinite(value)
        if fits and low is not None:
            fits = value > low if low_open else value >= low
        if fits and high is not None:
            fits = value < high if high_open else value <= high
        if not fits:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return number_option


def device_option(text: str) -> str:
    """A ``--device`` value of :data:`salad_lite.utils.DEVICE_FORMS` that this machine has (opened by ``resolve_device``).

    Raises:
        argparse.ArgumentTypeError: another form (``foo``, ``meta``, ``cpu:0``), or CUDA / MPS (or that CUDA
            index) missing here; :func:`salad_lite.utils.resolve_device`'s message.
    """
    from salad_lite.utils import resolve_device

    try:
        resolve_device(text)
    except (ValueError, RuntimeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def folder_option(text: str) -> str:
    """An output folder option: not blank, and neither it nor a parent is a file (so it can be made, before any work).

    Raises:
        argparse.ArgumentTypeError: blank (it would be the current folder), or a file in the way (named).
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a folder, got {text!r}")
    blocking = blocking_file(text)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be a folder: {blocking} is a file")
    return text


def file_option(text: str) -> str:
    """An output file option: not blank, not an existing folder, and no parent is a file (checked before any work).

    Raises:
        argparse.ArgumentTypeError: blank, a folder, or a file in the way of its folder (named).
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a file, got {text!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    blocking = blocking_file(path.parent)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {blocking} is a file, not a folder")
    return text
