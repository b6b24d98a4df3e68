"""Throughput of the synthetic chest renderer (:mod:`salad_lite.synth.chest`).

Renders ``--n`` images of the default mix (40 % abnormal) at ``--size`` px into a
temporary folder with :func:`render_chest_set` for each worker count, after the
caches (wheel, phantom, pose bank) are built, and prints images per second and
the ratio to the 20 images/s target. CPU time per image is printed too: on a
shared machine it is steadier than wall time.

    python benchmarks/bench_render_chest.py                # 600 images, 256 px, 1 and 2 workers
    python benchmarks/bench_render_chest.py --n 2400 --workers 2

Options are checked before the caches are built (an argparse error naming the option):
``--n`` must leave the 40 % mix both classes (2 images or more), ``--size`` >= 16 px and
each ``--workers`` from 1 to the CPU count. Sets under ``POOL_MIN_IMAGES`` (32) images
render in one process whatever ``--workers`` says, and the row says so.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from salad_lite.cli_errors import int_type, positive_int, seed_option
from salad_lite.synth import CHEST_MIN_SIZE
from salad_lite.synth.chest import POOL_MIN_IMAGES, ChestRenderer, check_plan_arguments, render_chest_set

TARGET_IMAGES_PER_S = 20.0
ABNORMAL_FRACTION = 0.4  # the default mix


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench(n_images: int, size: int, workers: int, seed: int) -> tuple[float, float]:
    """(images per second of wall time, CPU seconds per image) of one rendering run."""
    out = Path(tempfile.mkdtemp(prefix="bench_chest_"))
    try:
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        render_chest_set(out, n_images=n_images, abnormal_fraction=ABNORMAL_FRACTION, image_size=size, seed=seed,
                         progress=False, workers=workers)
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return n_images / wall, cpu / n_images


def processes_label(workers: int, n_images: int) -> str:
    """``workers=W``, and the one process that really runs when the set is under :data:`POOL_MIN_IMAGES` images."""
    if workers > 1 and n_images < POOL_MIN_IMAGES:
        return f"workers={workers} (ran in 1 process: sets under {POOL_MIN_IMAGES} images render in-process)"
    return f"workers={workers}"


def build_parser() -> argparse.ArgumentParser:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=positive_int, default=600, help="images per run (>= 2: both classes)")
    parser.add_argument("--size", type=int_type(CHEST_MIN_SIZE), default=256, help="image side in pixels")
    parser.add_argument("--workers", type=int_type(1, cpus, " (this machine's CPUs)"), nargs="+",
                        default=sorted({1, min(2, cpus)}),
                        help=f"worker counts to time (1..{cpus})")
    parser.add_argument("--seed", type=seed_option, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_plan_arguments(args.n, ABNORMAL_FRACTION, args.seed)  # the renderer's own rule, before the caches
    except ValueError as error:
        parser.error(f"argument --n: {error}")

    start = time.perf_counter()
    ChestRenderer.load(progress=True)  # wheel, phantom and pose bank: built once, then cached
    print(f"caches ready in {time.perf_counter() - start:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    for workers in args.workers:
        rate, cpu_per_image = bench(args.n, args.size, workers, args.seed)
        print(f"{processes_label(workers, args.n)}: {rate:.1f} images/s at {args.size} px "
              f"({rate / TARGET_IMAGES_PER_S:.2f}x the {TARGET_IMAGES_PER_S:.0f}/s target), "
              f"{1000 * cpu_per_image:.0f} ms CPU per image")


if __name__ == "__main__":
    main()
