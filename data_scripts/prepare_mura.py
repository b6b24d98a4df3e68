#!/usr/bin/env python
"""Check a MURA v1.1 download, preprocess it with the paper's pipeline, cache it and split it.

Example::

    python data_scripts/prepare_mura.py --root /data/MURA-v1.1 --image-size 512 --anomaly-ratio 0.05

``--root`` is the ``MURA-v1.1`` folder or its parent (it must hold
``{train,valid}_image_paths.csv`` and ``{train,valid}_labeled_studies.csv``).
Every image goes through :func:`salad_lite.data.mura_preprocess.preprocess_mura_image`
(carrier warp, segmentation, autocontrast, resize + pad) and is cached as one
``uint8 [N, S, S]`` ``.npy`` under ``<root>/_cache`` (or ``--cache-dir``); later
runs and ``salad_lite.data.registry.load_splits("mura", data_root=...)`` reuse
it. The split is the paper's group-wise split (patient + body part), checked
for leaks. Prints images / normal / abnormal / patients per split, and how
often the pipeline fell back (no carrier found, segmentation discarded).

``--synthetic N`` first renders the synthetic MURA-like set (N patients) into
``--root`` (a quick way to try the whole path without the real data).

A data problem (wrong root, malformed CSV rows, a set that cannot be split...)
prints ``error: ...`` and exits with status 2; nothing is cached then
(:func:`salad_lite.cli_errors.data_script`).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from salad_lite.cli_errors import data_script
from salad_lite.data.mura import MURA, mura_group_split
from salad_lite.data.registry import cache_dir_for, cached_splits, describe_splits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Validate a MURA v1.1 folder, preprocess and cache its images, and make the paper's "
        "group-wise (patient + body part) split.",
    )
    parser.add_argument("--root", required=True, help="the MURA-v1.1 folder or the folder that contains it")
    parser.add_argument("--image-size", type=int, default=512, help="square side in pixels (paper: 512)")
    parser.add_argument("--preprocess", default="pipeline", choices=["pipeline", "resize"],
                        help="'pipeline': carrier warp + segmentation (paper); 'resize': resize + pad only")
    parser.add_argument("--split-files", nargs="+", default=["train", "valid"], choices=["train", "valid"],
                        help="official CSV files to read (the paper re-splits all of them)")
    parser.add_argument("--body-parts", nargs="+", default=None, help="keep only these parts, e.g. WRIST HAND")
    parser.add_argument("--anomaly-ratio", type=float, default=0.05, help="share of abnormal training images (AR)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--max-train", type=int, default=0, help="cap on training images (0 = none)")
    parser.add_argument("--group-by", default="patient_id", choices=["patient_id", "patient"],
                        help="split groups: patient + body part (paper) or patient")
    parser.add_argument("--strict", action="store_true", help="fail on listed images missing on disk (default: drop, warn)")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default <root>/_cache)")
    parser.add_argument("--workers", type=int, default=None, help="preprocessing threads")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N",
                        help="first render a synthetic MURA-like set of N patients into --root")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


@data_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root).expanduser()
    if args.synthetic > 0:
        from salad_lite.synth.limb import render_limb_set

        root = render_limb_set(root, n_patients=args.synthetic, progress=not args.no_progress)
        print(f"synthetic set: {root}")
    dataset = MURA(root, split_files=args.split_files, image_size=args.image_size, preprocess=args.preprocess,
                   body_parts=args.body_parts, on_missing="raise" if args.strict else "drop")
    meta = dataset.metadata
    print(f"{dataset} from {dataset.folder}")
    print("images per body part and label (0 normal, 1 abnormal):")
    print(meta.groupby(["body_part", "label"]).size().unstack(fill_value=0).to_string())
    cache_dir = Path(args.cache_dir) if args.cache_dir else cache_dir_for(dataset.folder)
    parts = "all" if not args.body_parts else "-".join(sorted(p.upper() for p in args.body_parts))
    name = f"mura_{args.preprocess}_{parts}_{'-'.join(args.split_files)}_{args.image_size}px"
    split_fn = partial(mura_group_split, anomaly_ratio=args.anomaly_ratio, seed=args.seed,
                       group_column=args.group_by, max_train=args.max_train)
    splits = cached_splits(dataset, cache_dir, name, split_fn, progress=not args.no_progress, workers=args.workers)
    print(f"cache: {cache_dir / name}.npy")
    counts = dataset.fallback_counts
    if counts["processed"]:
        print(f"pipeline fallbacks: no carrier in {counts['no_carrier']} of {counts['processed']} images "
              f"(whole image used), segmentation discarded in {counts['mask_fallback']}")
    elif args.preprocess == "pipeline":
        print("images came from an existing cache (no preprocessing run)")
    print(describe_splits(splits).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
