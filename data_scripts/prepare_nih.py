#!/usr/bin/env python
"""Check an NIH ChestX-ray14 download, split it patient-wise and build the image cache.

Example::

    python data_scripts/prepare_nih.py --root /data/nih --image-size 256 --view PA

A thin wrapper of ``salad-lite prepare nih`` (:mod:`salad_lite.cli`; same
options, ``salad-lite prepare nih --help`` lists them) that keeps this script's
default view, PA (the paper's; the CLI's default is ``all``, the cache
``salad-lite train`` reads). ``--root`` must hold ``Data_Entry_2017*.csv`` and
``images/`` (the official layout; the Kaggle ``images_0XX/images`` layout works
too). The preprocessed images are cached as ``.npy`` under ``<root>/_cache``
(or ``--cache-dir``). ``--split-file CSV`` applies a published split (e.g. the
Tang et al. subset) instead of the seeded one. Prints images / normal /
abnormal / patients per split.

A data problem (wrong root, a label not understood, a set without abnormal
images, a split file naming a missing image...) prints ``error: ...`` and exits
with status 2; nothing is cached then (:func:`salad_lite.cli_errors.data_script`).
"""

from __future__ import annotations

from salad_lite.cli import run


def main(argv: list[str] | None = None) -> int:
    """``salad-lite prepare nih --view PA ARGV`` (a ``--view`` in ``argv`` wins).

    Raises:
        SystemExit: a wrong argument (status 2) or ``--help`` (status 0), from argparse.
    """
    import sys

    return run(["prepare", "nih", "--view", "PA", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
