"""How wide is the normal class? The embedded chest set (one CT) against real NIH films.

Issue 9 asks whether the embedded set's normal class is unrealistically narrow
before anyone changes the renderer. Not a timing: for the normal ("No Finding")
images of each set, at the training size (64 px, the pixels the raw-pixel PCA
sees: :func:`salad_lite.baselines.pixel_vectors`), an equal-size seeded sample
of ``--n`` images per set is compared on

- ``k90`` / ``k95``: principal components needed for 90 % / 95 % of the pixel
  variance (fewer = a lower-dimensional normal class, which favours PCA);
- ``top1``: the share of variance of the first component;
- ``nn_ratio``: median distance to the nearest other normal image over the
  median distance between two normal images (near 0: every film has a near
  twin; near 1: films are spread evenly).

    python benchmarks/normal_spread.py                         # embedded chest vs ../shared/data/nih_subset
    python benchmarks/normal_spread.py --real-root /data/nih --n 300

``--n`` must be at least 2 (a nearest other image needs two); it is checked before any
image is read (an argparse error naming it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from salad_lite.baselines import pixel_vectors
from salad_lite.cli_errors import int_type
from salad_lite.data.batches import dataset_labels
from salad_lite.data.registry import load_splits
from salad_lite.utils import is_int

MIN_IMAGES = 2


def normal_pixels(data_root: str, size: int) -> np.ndarray:
    """Pixel vectors [N, size*size] of the normal images of every split of the NIH-layout set at ``data_root``."""
    splits = load_splits("nih", data_root, image_size=size, anomaly_ratio=0.05, seed=0, progress=False)
    rows = []
    for split in splits.values():
        labels = np.asarray(dataset_labels(split))
        rows.append(pixel_vectors(split, max_size=size).numpy()[labels == 0])
    return np.concatenate(rows)


def spread(pixels: np.ndarray, n: int, seed: int = 0) -> dict[str, float]:
    """``k90``, ``k95``, ``top1`` and ``nn_ratio`` (module docstring) of ``n`` seeded rows of ``pixels`` [N, D].

    Raises:
        ValueError: ``n`` is not an int >= 2, or ``pixels`` has fewer than 2 rows (no nearest other image).
    """
    if not is_int(n) or n < MIN_IMAGES:
        raise ValueError(f"n must be an int >= {MIN_IMAGES} (a nearest other image needs two), got {n!r}")
    if len(pixels) < MIN_IMAGES:
        raise ValueError(f"pixels holds {len(pixels)} image(s); the spread needs at least {MIN_IMAGES}")
    rng = np.random.default_rng(seed)
    x = pixels[rng.choice(len(pixels), size=min(n, len(pixels)), replace=False)].astype(np.float64)
    centred = x - x.mean(0)
    var = np.linalg.svd(centred, compute_uv=False) ** 2
    cum = np.cumsum(var) / var.sum()
    sq = (x ** 2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0.0))
    off = dist[~np.eye(len(x), dtype=bool)].reshape(len(x), -1)
    return {"n": len(x), "k90": int(np.searchsorted(cum, 0.90) + 1), "k95": int(np.searchsorted(cum, 0.95) + 1),
            "top1": float(var[0] / var.sum()), "nn_ratio": float(np.median(off.min(1)) / np.median(off))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_subset"  # ../shared beside the repository
    parser.add_argument("--real-root", default=str(shared))
    parser.add_argument("--n", type=int_type(MIN_IMAGES, why=" (a nearest other image needs two)"), default=300,
                        help="normal images per set (equal for a fair count)")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    sets = {"embedded chest (one CT)": ""}
    if Path(args.real_root).is_dir():
        sets["real NIH films"] = args.real_root
    else:
        print(f"no real NIH set at {args.real_root}: the embedded set alone")
    print("| set | normal images | k90 | k95 | top-1 share | NN / median distance |\n|---|---|---|---|---|---|")
    pixels = {name: normal_pixels(root, args.size) for name, root in sets.items()}
    n = min(args.n, *(len(p) for p in pixels.values()))
    for name, rows in pixels.items():
        s = spread(rows, n)
        print(f"| {name} | {s['n']} | {s['k90']} | {s['k95']} | {s['top1']:.3f} | {s['nn_ratio']:.3f} |")


if __name__ == "__main__":
    main()
