"""Throughput of the synthetic chest renderer (:mod:`salad_lite.synth.chest`).

Renders ``--n`` images of the default mix (40 % abnormal) at ``--size`` px into a
temporary folder with :func:`render_chest_set` for each worker count, after the
caches (wheel, phantom, pose bank) are built, and prints images per second and
the ratio to the 20 images/s target. CPU time per image is printed too: on a
shared machine it is steadier than wall time.

    python benchmarks/bench_render_chest.py                # 600 images, 256 px, 1 and 2 workers
    python benchmarks/bench_render_chest.py --n 2400 --workers 2
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from salad_lite.synth.chest import ChestRenderer, render_chest_set

TARGET_IMAGES_PER_S = 20.0


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
        render_chest_set(out, n_images=n_images, abnormal_fraction=0.4, image_size=size, seed=seed,
                         progress=False, workers=workers)
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return n_images / wall, cpu / n_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=600, help="images per run")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    ChestRenderer.load(progress=True)  # wheel, phantom and pose bank: built once, then cached
    print(f"caches ready in {time.perf_counter() - start:.1f} s; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    for workers in args.workers:
        rate, cpu_per_image = bench(args.n, args.size, workers, args.seed)
        print(f"workers={workers}: {rate:.1f} images/s at {args.size} px "
              f"({rate / TARGET_IMAGES_PER_S:.2f}x the {TARGET_IMAGES_PER_S:.0f}/s target), "
              f"{1000 * cpu_per_image:.0f} ms CPU per image")


if __name__ == "__main__":
    main()
