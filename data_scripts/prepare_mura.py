#!/usr/bin/env python
"""Check a MURA v1.1 download, preprocess it with the paper's pipeline, cache it and split it.

Example::

    python data_scripts/prepare_mura.py --root /data/MURA-v1.1 --image-size 512 --anomaly-ratio 0.05

A thin wrapper of ``salad-lite prepare mura`` (:mod:`salad_lite.cli`; same
options, ``salad-lite prepare mura --help`` lists them; ``--split-files`` is
the old name of ``--mura-files``). ``--root`` is the ``MURA-v1.1`` folder or
its parent (it must hold ``{train,valid}_image_paths.csv`` and
``{train,valid}_labeled_studies.csv``). Every image goes through
:func:`salad_lite.data.mura_preprocess.preprocess_mura_image` (carrier warp,
segmentation, autocontrast, resize + pad) and is cached as one
``uint8 [N, S, S]`` ``.npy`` under ``<root>/_cache`` (or ``--cache-dir``);
``salad-lite train`` and ``salad_lite.data.registry.load_splits("mura",
data_root=...)`` reuse it. The split is the paper's group-wise split (patient +
body part), checked for leaks, or a published ``--split-file CSV``. Prints
images / normal / abnormal / patients per split, and how often the pipeline
fell back (no carrier found, segmentation discarded).

``--synthetic N`` first renders the synthetic MURA-like set (N patients) into
``--root`` (a quick way to try the whole path without the real data).

A data problem (wrong root, malformed CSV rows, a set that cannot be split...)
prints ``error: ...`` and exits with status 2; nothing is cached then
(:func:`salad_lite.cli_errors.data_script`).
"""

from __future__ import annotations

from salad_lite.cli import run


def main(argv: list[str] | None = None) -> int:
    """``salad-lite prepare mura ARGV``.

    Raises:
        SystemExit: a wrong argument (status 2) or ``--help`` (status 0), from argparse.
    """
    import sys

    return run(["prepare", "mura", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
