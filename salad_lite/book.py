"""The book's chapter set-up: one function turns a chapter's parameters into the run's settings.

Every chapter starts with a ``parameters`` cell (``profile``, ``dataset``,
``data_root``, ``run_dir``, ``device``; papermill replaces them) and then calls
:func:`chapter_settings`. That function is the single owner of

- the **environment overrides**: ``SALAD_LITE_PROFILE`` and ``SALAD_LITE_RUN_DIR``
  win over the parameters (CI and ``make test`` run every chapter at the smoke
  profile in a fresh folder this way);
- the **run-folder rule**: an empty ``run_dir`` means ``runs/<profile>``
  (:func:`run_folder`; ``scripts/build_book.py`` and the Makefile use it too), and
  a relative folder is taken from the book root (the folder holding ``_toc.yml``),
  so that Jupyter (started in ``book/``) and papermill (started in the root) use
  the same folder;
- the **progress-bar policy**: bars are off when ``TQDM_DISABLE`` is set to any
  non-empty value (tqdm's own rule; the static book build sets it), and the
  returned ``cfg.train.progress`` and :attr:`ChapterSettings.progress` say so;
- the **validation of the parameters**: papermill's ``-p`` turns ``2020`` into an
  int and ``True`` into a bool. Paths accept ``str``, ``os.PathLike`` and ``int``
  (``-p data_root 2020`` is the folder ``2020``; pass ``-r data_root 007`` to keep
  leading zeros); names must be one of their allowed values. Anything else raises
  :class:`ChapterParameterError` naming the parameter and the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from salad_lite.config import DatasetName, Profile, SaladConfig, profile_config
from salad_lite.utils import DEVICE_FORMS, DEVICE_PATTERN, PROGRESS_ENV, progress_enabled

PROFILE_ENV = "SALAD_LITE_PROFILE"
RUN_DIR_ENV = "SALAD_LITE_RUN_DIR"
RUNS_FOLDER = "runs"
BOOK_ROOT_MARKER = "_toc.yml"
PROFILES: tuple[str, ...] = get_args(Profile)
DATASETS: tuple[str, ...] = get_args(DatasetName)
#: The names every chapter's ``parameters`` cell declares, in the order of :func:`chapter_settings`.
PARAMETER_NAMES = ("profile", "dataset", "data_root", "run_dir", "device")

__all__ = ["DATASETS", "PARAMETER_NAMES", "PROFILES", "ChapterParameterError", "ChapterSettings", "book_root",
           "chapter_environment", "chapter_settings", "check_device", "check_name", "check_path", "progress_enabled",
           "resolve_profile", "run_folder"]


class ChapterParameterError(ValueError):
    """A chapter parameter (or the environment variable overriding it) has a wrong type or value."""


def _shown(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_path(name: str, value: object) -> str:
    """A path parameter as text: ``str`` as is, ``os.PathLike`` as its path, ``int`` as its digits.

    ``None`` means "not given" and becomes ``""`` (the parameter's default rule
    applies). ``"~"`` is expanded.

    Raises:
        ChapterParameterError: ``value`` is a bool, a float or another type; the
            message names ``name`` and the value.
    """
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike, int)):
        hint = (f"; a float loses its text (pass it unparsed: papermill -r {name} ...)"
                if isinstance(value, float) else "")
        raise ChapterParameterError(f"{name} must be a folder path (text), got {_shown(value)}{hint}")
    text = str(value) if isinstance(value, int) else os.fspath(value)
    if not isinstance(text, str):  # a bytes path
        raise ChapterParameterError(f"{name} must be a folder path (text), got {_shown(value)}")
    return str(Path(text).expanduser()) if text.strip() else ""


def check_name(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed`` (surrounding blanks ignored).

    Raises:
        ChapterParameterError: ``value`` is not a string or not allowed; the message
            names ``name``, the value and the allowed values.
    """
    if isinstance(value, str) and value.strip() in allowed:
        return value.strip()
    raise ChapterParameterError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {_shown(value)}")


def check_device(name: str, value: object) -> str:
    """A device name: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:<index>`` (checked, not opened).

    Raises:
        ChapterParameterError: ``value`` is not a string of that form; the message
            names ``name`` and the value.
    """
    if isinstance(value, str) and DEVICE_PATTERN.fullmatch(value.strip()):
        return value.strip()
    raise ChapterParameterError(f"{name} must be {DEVICE_FORMS}; got {_shown(value)}")


def check_available_device(name: str, value: object) -> str:
    """:func:`check_device`, then refuse a device this machine lacks, before any data is read.

    Returns:
        the device text (stripped).

    Raises:
        ChapterParameterError: not a device of :data:`DEVICE_FORMS` (``name`` and the value named).
        ValueError: CUDA (or that CUDA index) or MPS requested on a machine without it (``name`` and the value named).
    """
    from salad_lite.utils import resolve_device

    device = check_device(name, value)
    try:
        resolve_device(device)
    except RuntimeError as error:
        raise ValueError(f"{name} {device}: {error}") from None
    return device


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def resolve_profile(profile: object, environ: Mapping[str, str] | None = None) -> str:
    """``$SALAD_LITE_PROFILE`` when set (non-empty), else ``profile``; checked against :data:`PROFILES`.

    Raises:
        ChapterParameterError: the chosen value is not a profile; the message names
            the environment variable or the parameter.
    """
    forced = _environ(environ).get(PROFILE_ENV, "")
    if forced.strip():
        return check_name(PROFILE_ENV, forced, PROFILES)
    return check_name("profile", profile, PROFILES)


def run_folder(profile: object, run_dir: object = "", environ: Mapping[str, str] | None = None) -> str:
    """The run folder as given (relative folders stay relative): the one rule of the book and the Makefile.

    ``$SALAD_LITE_RUN_DIR`` when set (non-empty), else ``run_dir`` when not empty,
    else ``runs/<profile>`` for the profile :func:`resolve_profile` picks, so that
    runs of different profiles never share checkpoints.

    Raises:
        ChapterParameterError: ``profile`` or ``run_dir`` (or their environment
            overrides) has a wrong type or value.
    """
    env = _environ(environ)
    forced = env.get(RUN_DIR_ENV, "")
    if forced.strip():
        return check_path(RUN_DIR_ENV, forced)
    given = check_path("run_dir", run_dir)
    return given or f"{RUNS_FOLDER}/{resolve_profile(profile, env)}"


def chapter_environment(*, profile: str | None = None, run_dir: str | os.PathLike | None = None,
                        progress: bool | None = None) -> dict[str, str]:
    """Environment variables that make every chapter's :func:`chapter_settings` use these values.

    For whoever runs the chapters from outside (``scripts/build_book.py``, the
    smoke test): ``None`` leaves a setting alone. ``progress=True`` returns no
    variable: remove ``TQDM_DISABLE`` from the environment to turn bars back on.

    Raises:
        ChapterParameterError: ``profile`` is not a profile or ``run_dir`` not a path.
    """
    env: dict[str, str] = {}
    if profile is not None:
        env[PROFILE_ENV] = check_name("profile", profile, PROFILES)
    if run_dir is not None:
        env[RUN_DIR_ENV] = check_path("run_dir", run_dir)
    if progress is False:
        env[PROGRESS_ENV] = "1"
    return env


def book_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``_toc.yml``.

    Falls back to ``start`` itself when no such folder exists (a chapter run
    outside the book).
    """
    here = Path.cwd() if start is None else Path(start).resolve()
    return next((p for p in (here, *here.parents) if (p / BOOK_ROOT_MARKER).is_file()), here)


@dataclass(frozen=True)
class ChapterSettings:
    """What a chapter runs with, resolved from its parameters and the environment.

    ``data_root`` is ``""`` for the embedded synthetic data, else an absolute
    folder; ``run_dir`` is absolute (checkpoints and caches); ``root`` is the book
    root relative folders were taken from; ``progress`` says whether progress bars
    are wanted (``cfg.train.progress`` already follows it).
    """

    profile: str
    dataset: str
    data_root: str
    run_dir: Path
    device: str
    progress: bool
    cfg: SaladConfig = field(repr=False)
    root: Path = field(repr=False)

    def shown(self, path: str | Path) -> str:
        """``path`` relative to the book root when it lies inside it (pages do not show the build machine)."""
        p = Path(path)
        return p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p)

    def describe(self) -> str:
        """Three lines for the top of a chapter: profile and dataset, the data, the run folder and device."""
        data = self.shown(self.data_root) if self.data_root else "embedded synthetic images"
        return (f"profile {self.profile!r}, dataset {self.dataset!r}\n"
                f"data: {data}\n"
                f"run folder {self.shown(self.run_dir)!r}, device {self.device!r}")


def chapter_settings(profile: object = "default", dataset: object = "nih", data_root: object = "",
                     run_dir: object = "", device: object = "auto", *,
                     environ: Mapping[str, str] | None = None,
                     root: str | os.PathLike | None = None) -> ChapterSettings:
    """The settings of one chapter from its ``parameters`` cell; see the module docstring for the rules.

    ``environ`` (default ``os.environ``) supplies the overrides; ``root`` (default:
    :func:`book_root` of the working directory) anchors relative folders.

    Raises:
        ChapterParameterError: a parameter or environment override has a wrong type
            or value (the message names it and the value); ``dataset="folder"``
            without a ``data_root``.
    """
    env = _environ(environ)
    chosen = resolve_profile(profile, env)
    name = check_name("dataset", dataset, DATASETS)
    base = book_root() if root is None else Path(root).resolve()
    data = check_path("data_root", data_root)
    if name == "folder" and not data:
        raise ChapterParameterError("dataset 'folder' reads your own images: data_root must name their folder "
                                    "(there is no embedded 'folder' set)")
    data = str(base / data) if data else ""
    folder = base / run_folder(chosen, run_dir, env)
    progress = progress_enabled(env)
    cfg = profile_config(chosen, name, data)
    cfg = cfg.replace(train={"progress": cfg.train.progress and progress})
    return ChapterSettings(profile=chosen, dataset=name, data_root=data, run_dir=folder,
                           device=check_device("device", device), progress=progress, cfg=cfg, root=base)

