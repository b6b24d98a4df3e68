"""Safe files: atomic writes that leave no litter, and JSON reads that name the file they fail on.

Every file the package writes (checkpoints, caches, manifests, results) goes
through :func:`atomic_write` or one of its wrappers: the content is written to a
temporary file beside the target and moved into place with one ``os.replace``.
A reader therefore sees the old file or the new one, never half of one, and a
write that fails (an exception, Ctrl-C) removes its temporary file.

A process killed outright (SIGKILL, power loss) cannot run clean-up code; its
temporary file is a dot-file ending in :data:`TEMP_SUFFIX`. A folder's single
writer (the trainer for its run folder, say) clears such leftovers with
:func:`remove_stale_temps` before it writes again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".partial"


def blocking_file(path: str | os.PathLike[str]) -> Path | None:
    """The file (not a folder) at ``path`` or at one of its parents, which stops ``path`` being a folder; else None.

    A writer asks before any work: ``X/nih`` cannot be made into a folder when ``X/nih``
    or ``X`` is a file (``~`` expanded).
    """
    folder = Path(path).expanduser()
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


class CorruptFileError(ValueError):
    """A file the package wrote earlier cannot be read back (truncated, edited, or not the expected format)."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    Args:
        path: the final file. Its folder is created if missing.
        mode: ``"wb"`` (binary) or ``"w"`` (UTF-8 text).

    Yields:
        The open file object. Libraries that want a file name can use ``handle.name``.

    Raises:
        ValueError: for a mode other than ``"wb"`` / ``"w"``. Whatever the body
        raises propagates after the temporary file is removed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    except OSError as error:  # named as the file asked for, not as the temporary one
        raise type(error)(error.errno, f"cannot write {target}: {error.strerror}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path. Raises ``OSError`` from the file system."""
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], body: Any, **dumps_kwargs: Any) -> Path:
    """Serialise ``body`` with :func:`json.dumps` (``dumps_kwargs`` passed on) and write it atomically.

    Raises:
        TypeError: ``body`` holds something JSON cannot store (nothing is written).
    """
    return write_text_atomic(path, json.dumps(body, **dumps_kwargs))


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse a JSON file, naming it in every error.

    Args:
        path: the file.
        what: a few words on what the file is, for the message (``"checkpoint metadata"``).

    Raises:
        FileNotFoundError: the file does not exist.
        CorruptFileError: the path is a folder, or the file is empty, not UTF-8,
            or not valid JSON; the message names the file, the position and what to do.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{what} {path} is a folder, not a JSON file") from None
    except UnicodeDecodeError as error:
        raise CorruptFileError(f"{what} {path} is not UTF-8 text ({error}); delete it to rebuild") from None
    if not text.strip():
        raise CorruptFileError(f"{what} {path} is empty (an interrupted write?); delete it to rebuild")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CorruptFileError(f"{what} {path} is not valid JSON ({error}); delete it to rebuild") from None


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that a killed :func:`atomic_write` left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f".*{TEMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
