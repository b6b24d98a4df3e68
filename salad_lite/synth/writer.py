"""The one writer of rendered sets: a versioned manifest, reuse of complete sets, atomic files.

Both renderers (:mod:`salad_lite.synth.chest`, :mod:`salad_lite.synth.limb`)
write through a :class:`SetWriter`:

1. :meth:`SetWriter.is_complete`: the folder holds a manifest of this
   generator, format and parameters marked complete, and every file it lists
   exists. Then nothing is rendered.
2. :meth:`SetWriter.start`: refuses a folder that is a file, or under one
   (:class:`NotADirectoryError`, the file named), and a folder whose outputs exist
   without our manifest (a real download is never overwritten: :class:`FileExistsError`),
   deletes the outputs of an earlier set of ours, and writes the manifest
   marked incomplete, so that an interrupted render is recognised as ours and
   redone.
3. The renderer writes its images, then its tables with :meth:`SetWriter.write_csv`
   (atomic, through :mod:`salad_lite.files`).
4. :meth:`SetWriter.finish` rewrites the manifest, complete, with the counts
   and the list of every file of the set.

Manifest (JSON)::

    {"format": MANIFEST_FORMAT, "params": {"generator": ..., "version": ..., <parameters>},
     "complete": true, "counts": {...}, "files": ["images/00000001_000.png", ...]}
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from salad_lite.files import CorruptFileError, atomic_write, blocking_file, read_json, write_json_atomic
from salad_lite.utils import is_int

__all__ = ["MANIFEST_FORMAT", "SetWriter", "check_workers"]

#: Bump when the manifest layout changes (sets with another format are re-rendered).
MANIFEST_FORMAT = 1


def check_workers(workers: int, name: str = "workers") -> int:
    """``workers`` if it is an int from 1 to this machine's CPU count (``os.cpu_count()``), else refused.

    Raises:
        ValueError: a bool, float or other type, below 1, or more processes than CPUs (``name`` and the value named).
    """
    cpus = os.cpu_count() or 1
    if not is_int(workers) or not 1 <= workers <= cpus:
        raise ValueError(f"{name} must be an int in [1, {cpus}] (this machine's CPUs), got {workers!r}")
    return int(workers)


class SetWriter:
    """Writes one rendered set under ``out_dir`` and tells whether a complete one is there.

    Args:
        out_dir: the set's folder.
        manifest_name: file name of the manifest inside ``out_dir``.
        maker: the public function rendering the set (named in messages).
        generator: module that renders the set (stored in the parameters).
        version: the generator's version; bump it when the pixels change.
        params: the rendering parameters (JSON values); a set made with other
            parameters is replaced.
        outputs: paths relative to ``out_dir`` (files or folders) that the set
            owns: deleted before a new render, and never overwritten when they
            exist without our manifest.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        manifest_name: str,
        maker: str,
        generator: str,
        version: int,
        params: Mapping[str, Any],
        outputs: Sequence[str],
    ) -> None:
        self.out_dir = Path(out_dir)
        self.manifest_path = self.out_dir / manifest_name
        self.maker = maker
        self.params: dict[str, Any] = {"generator": generator, "version": int(version), **dict(params)}
        self.outputs = tuple(outputs)

    def read_manifest(self) -> dict[str, Any] | None:
        """The stored manifest, or None when there is none.

        Raises:
            CorruptFileError: the manifest is not valid JSON or not a JSON object
                (the message names it; delete it to re-render).
        """
        if not self.manifest_path.is_file():
            return None
        body = read_json(self.manifest_path, what=f"{self.maker} manifest")
        if not isinstance(body, dict):
            raise CorruptFileError(
                f"{self.maker} manifest {self.manifest_path} holds a {type(body).__name__}, not a JSON object; "
                "delete it to re-render"
            )
        return body

    def is_complete(self) -> bool:
        """True when a complete set of the same format and parameters is in ``out_dir``, every file present.

        Raises:
            CorruptFileError: the manifest cannot be read (see :meth:`read_manifest`).
        """
        manifest = self.read_manifest()
        if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
            return False
        if manifest.get("params") != self.params or manifest.get("complete") is not True:
            return False
        files = manifest.get("files")
        if not isinstance(files, list) or not files:
            return False
        return all((self.out_dir / name).is_file() for name in files)

    def start(self) -> None:
        """Claim ``out_dir`` for a new render: check ownership, clear old outputs, write an incomplete manifest.

        Raises:
            NotADirectoryError: ``out_dir`` or one of its parents is a file (named); nothing is touched.
            FileExistsError: an output exists but the folder has no manifest of
                ours (for example a real download); nothing is touched.
            CorruptFileError: the manifest cannot be read.
        """
        blocking = blocking_file(self.out_dir)
        if blocking is not None:
            raise NotADirectoryError(f"{self.maker} cannot write a set in {self.out_dir}: {blocking} is a file, "
                                     "not a folder")
        present = [name for name in self.outputs if (self.out_dir / name).exists()]
        if present and self.read_manifest() is None:
            raise FileExistsError(
                f"{self.out_dir / present[0]} exists but was not made by {self.maker} "
                f"(no {self.manifest_path.name}); refusing to overwrite it"
            )
        self.read_manifest()  # a corrupt manifest is reported, not silently replaced
        for name in present:
            target = self.out_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        self._write_manifest({"complete": False})

    def write_csv(self, relative: str, rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> Path:
        """Write a CSV table (optional header row, then ``rows``) atomically; returns its path.

        Raises:
            OSError: from the file system (no partial file is left).
        """
        path = self.out_dir / relative
        with atomic_write(path, "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            if header is not None:
                writer.writerow(header)
            writer.writerows(rows)
        return path

    def finish(self, counts: Mapping[str, Any], files: Iterable[str]) -> None:
        """Mark the set complete: the manifest gets ``counts`` and the sorted list of ``files`` (relative paths).

        Raises:
            FileNotFoundError: a listed file is missing (the set stays incomplete).
        """
        names = sorted({Path(name).as_posix() for name in files})
        missing = [name for name in names if not (self.out_dir / name).is_file()]
        if missing or not names:
            raise FileNotFoundError(
                f"{self.maker} did not write {len(missing)} of its {len(names)} files in {self.out_dir}, "
                f"e.g. {missing[:3]}"
            )
        self._write_manifest({"complete": True, "counts": dict(counts), "files": names})

    def _write_manifest(self, body: Mapping[str, Any]) -> None:
        write_json_atomic(self.manifest_path, {"format": MANIFEST_FORMAT, "params": self.params, **body}, indent=1)
