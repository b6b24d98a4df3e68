#!/usr/bin/env python
"""Check an NIH ChestX-ray14 download, split it patient-wise and build the image cache.

Example::

    python data_scripts/prepare_nih.py --root /data/nih --image-size 256 --view PA

``--root`` must hold ``Data_Entry_2017*.csv`` and ``images/`` (the official
layout; the Kaggle ``images_0XX/images`` layout works too). The preprocessed
images are cached as ``.npy`` under ``<root>/_cache`` (or ``--cache-dir``), so
later runs and ``salad_lite.data.registry.load_splits("nih", data_root=...)``
start at once. Prints images / normal / abnormal / patients per split.

A data problem (wrong root, a label not understood, a set without abnormal
images...) prints ``error: ...`` and exits with status 2; nothing is cached
then (:func:`salad_lite.cli_errors.data_script`).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from salad_lite.cli_errors import data_script
from salad_lite.data.nih import NIHChestXray
from salad_lite.data.registry import cache_dir_for, cached_splits, describe_splits
from salad_lite.data.splits import one_class_split


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Validate an NIH ChestX-ray14 folder, make the patient-wise one-class split "
        "and cache the resized images.",
    )
    parser.add_argument("--root", required=True, help="folder with Data_Entry_2017*.csv and images/")
    parser.add_argument("--csv", default=None, help="CSV to use instead of the one in --root")
    parser.add_argument("--view", default="PA", choices=["PA", "AP", "all"], help="view filter (paper: PA)")
    parser.add_argument("--image-size", type=int, default=256, help="square side in pixels (paper: 256)")
    parser.add_argument("--anomaly-ratio", type=float, default=0.05, help="share of abnormal training images")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--max-train", type=int, default=0, help="cap on training images (0 = none)")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default <root>/_cache)")
    parser.add_argument("--workers", type=int, default=None, help="image reading threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


@data_script
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root).expanduser()
    dataset = NIHChestXray(root, csv_path=args.csv, view=args.view, image_size=args.image_size)
    print(f"{dataset} from {dataset.csv_path}")
    cache_dir = Path(args.cache_dir) if args.cache_dir else cache_dir_for(root)
    split_fn = partial(one_class_split, anomaly_ratio=args.anomaly_ratio, seed=args.seed, max_train=args.max_train)
    splits = cached_splits(
        dataset, cache_dir, f"nih_{args.view}_{args.image_size}px", split_fn,
        progress=not args.no_progress, workers=args.workers,
    )
    print(f"cache: {cache_dir}")
    print(describe_splits(splits).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
