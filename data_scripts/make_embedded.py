#!/usr/bin/env python
"""Render the embedded synthetic data sets (chest films in NIH layout, upper limbs in MURA layout).

Example::

    python data_scripts/make_embedded.py                 # both sets into data/embedded
    python data_scripts/make_embedded.py --only nih --seed 1 --out /tmp/synth

The default output folder is ``$SALAD_LITE_DATA`` or ``<repo>/data/embedded``,
the place :func:`salad_lite.data.registry.load_splits` looks in; it gets
``nih/`` (``Data_Entry_2017.csv`` + ``images/``) and ``mura/MURA-v1.1/``.
Both renderers (:mod:`salad_lite.synth`) are deterministic for a given seed;
the default sizes are the ``default`` scale of :data:`salad_lite.synth.EMBEDDED_SCALES`.
The chest renderer's caches (CT wheel, phantom, pose bank) go to
``<embedded root>/_cache`` whatever ``--out`` is.

Every argument is checked before anything is rendered: a wrong value (an empty
``--out``, which is not the default root; a seed outside NumPy's range; fewer than 2
limb patients, the fewest the MURA loader reads; ``--workers`` outside 1 to the CPU
count; an ``--abnormal-fraction`` that rounds to no abnormal or no normal film; an
output folder that is a file) is an argparse error naming the option, status 2.
A data problem (a folder the renderers refuse to overwrite, a corrupt manifest,
the CT wheel unavailable) prints ``error: ...`` and exits with status 2
(:func:`salad_lite.cli_errors.data_script`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from salad_lite.cli_errors import data_script, folder_option, int_type, number_type, positive_int, seed_option
from salad_lite.data.registry import embedded_cache_dir, embedded_root
from salad_lite.files import blocking_file
from salad_lite.synth import CHEST_MIN_SIZE, EMBEDDED_SCALES, LIMB_MIN_PATIENTS

_DEFAULT = EMBEDDED_SCALES["default"]


def _out_folder(text: str) -> str:
    """An ``--out`` value: a folder that can be made (:func:`~salad_lite.cli_errors.folder_option`).

    Blank is refused, not read as "no --out": it would re-render the default root, replacing the book's sets.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a folder (leave --out out for the default root, "
                                          f"{embedded_root()}), got {text!r}")
    return folder_option(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Render the synthetic chest (NIH layout) and limb (MURA layout) sets.")
    cpus = os.cpu_count() or 1
    parser.add_argument("--out", type=_out_folder, default=None,
                        help="output root (default: $SALAD_LITE_DATA or <repo>/data/embedded)")
    parser.add_argument("--seed", type=seed_option, default=0, help="random seed of both renderers")
    parser.add_argument("--only", choices=["nih", "mura", "both"], default="both", help="which set to render")
    parser.add_argument("--nih-images", type=positive_int, default=_DEFAULT.nih_images, help="chest images to render")
    parser.add_argument("--abnormal-fraction", type=number_type(0.0, 1.0), default=_DEFAULT.nih_abnormal_fraction,
                        help="share of abnormal chest images, in [0, 1] (rounded: it must leave both classes "
                             "unless 0 or 1)")
    parser.add_argument("--nih-size", type=int_type(CHEST_MIN_SIZE), default=256, help="chest image side in pixels")
    parser.add_argument("--mura-patients", type=int_type(LIMB_MIN_PATIENTS, why=" (a training and a validation "
                                                                                "patient)"),
                        default=_DEFAULT.mura_patients, help=f"limb patients to render (>= {LIMB_MIN_PATIENTS})")
    parser.add_argument("--workers", type=int_type(1, cpus, " (this machine's CPUs)"), default=min(8, cpus),
                        help=f"chest renderer worker processes, 1 to {cpus} (default: CPU count, at most 8)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--cache-profile", choices=["none", "smoke", "default", "full"], default="none",
                        help="also preprocess and cache the images at this book profile's resolution "
                             "(only with the default --out), so the chapters start at once")
    return parser


@data_script
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cache_profile != "none" and args.out is not None:
        parser.error("--cache-profile works with the default --out only (the book reads the default root)")
    out = Path(args.out).expanduser() if args.out is not None else embedded_root()
    sets = ("nih", "mura") if args.only == "both" else (args.only,)
    for name in sets:  # every set's folder, before the first is rendered
        blocking = blocking_file(out / name)
        if blocking is not None:
            parser.error(f"{'argument --out: ' if args.out is not None else ''}cannot write the {name} set in "
                         f"{out / name}: {blocking} is a file, not a folder")
    if "nih" in sets:
        from salad_lite.synth.chest import check_plan_arguments

        try:
            check_plan_arguments(args.nih_images, args.abnormal_fraction, args.seed)
        except ValueError as error:  # the library's names -> the options'
            message = str(error).replace("abnormal_fraction=", "").replace("n_images=", "--nih-images ")
            parser.error(f"argument --abnormal-fraction: {message}")
    progress = not args.no_progress
    if args.only in ("nih", "both"):
        from salad_lite.synth.chest import render_chest_set

        start = time.perf_counter()
        csv = render_chest_set(
            out / "nih", n_images=args.nih_images, abnormal_fraction=args.abnormal_fraction,
            image_size=args.nih_size, seed=args.seed, progress=progress, workers=args.workers,
            cache_dir=embedded_cache_dir(),
        )
        print(f"NIH-layout chest set: {csv} ({time.perf_counter() - start:.0f} s)")
    if args.only in ("mura", "both"):
        from salad_lite.synth.limb import render_limb_set

        start = time.perf_counter()
        mura_root = render_limb_set(out / "mura", n_patients=args.mura_patients, seed=args.seed, progress=progress)
        print(f"MURA-layout limb set: {mura_root} ({time.perf_counter() - start:.0f} s)")
    if args.cache_profile != "none":
        from salad_lite.config import profile_config
        from salad_lite.data.registry import describe_splits
        from salad_lite.experiment import splits_for

        for dataset in (("nih", "mura") if args.only == "both" else (args.only,)):
            start = time.perf_counter()
            splits = splits_for(profile_config(args.cache_profile, dataset), progress=progress)
            print(f"{dataset} cache at the {args.cache_profile} profile ({time.perf_counter() - start:.0f} s):")
            print(describe_splits(splits).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
