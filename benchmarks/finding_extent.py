"""Pixel size of each rendered finding (chest) and lesion (limbs) at the training sizes.

For a seeded sample of abnormal images of each embedded set (up to ``--per-finding``
images per finding), every finding is rendered in isolation, resampled to each
size the way the data cache resizes, and measured above a contrast threshold
(:mod:`salad_lite.synth.extent`: ``|delta| > contrast x dynamic range``, 2 % by
default). Prints, per set and finding: n, the median and 10th / 90th percentile
equivalent diameter (px) at each size and the share of findings whose
equivalent diameter is >= ``--min-px`` (3) px; then the share whose *thickness*
(largest inscribed disc) reaches it, the median peak contrast, the shares by
severity bin (those of the evaluation chapters, `report.per_finding_auc`: closed on the right),
and the smallest size at which most findings of each set span
``--min-px`` px.

The specs come from the sets' manifests under the embedded root (``n_images``,
``abnormal_fraction``, ``image_size``, ``seed`` for the chest; ``n_patients``,
``seed`` for the limbs), or the ``default`` embedded scale when a set is not
rendered (a line says which); nothing is written but ``--csv``. Options are checked
before any measurement (an argparse error naming the option): ``--root`` must be an
existing folder, ``--csv`` a file that can be written (not a folder), sizes and
``--per-finding`` at least 1, ``--contrast`` in (0, 1), ``--min-px`` > 0. One process, one OpenCV thread: about 10 s of CPU
for the default 20 per finding (after the chest caches are built).

    python benchmarks/finding_extent.py
    python benchmarks/finding_extent.py --per-finding 40 --sizes 32 64 128 256 --csv extent.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from salad_lite.cli_errors import file_option, number_type, positive_int, seed_option
from salad_lite.report import DEFAULT_SEVERITY_BINS, severity_bin_index, severity_bin_labels
from salad_lite.synth import EMBEDDED_SCALES, embedded_root
from salad_lite.synth import chest, limb
from salad_lite.synth.extent import (
    DEFAULT_CONTRAST,
    DEFAULT_SIZES,
    FindingExtent,
    chest_contributions,
    extents_at_sizes,
    limb_finding_extents,
)


def _manifest_params(path: Path) -> dict:
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("params", {}))


def _sample(specs: Sequence, key, kinds: Sequence[str], per_kind: int, seed: int) -> dict[str, list]:
    """Up to ``per_kind`` specs per kind (``key(spec)`` -> the kinds it shows), seeded, in plan order."""
    rng = np.random.default_rng([seed, 9])
    out = {}
    for kind in kinds:
        candidates = [i for i, spec in enumerate(specs) if kind in key(spec)]
        chosen = sorted(rng.permutation(candidates)[:per_kind].tolist()) if candidates else []
        out[kind] = [specs[i] for i in chosen]
    return out


def measure_chest(root: Path, per_finding: int, sizes: Sequence[int], contrast: float,
                  seed: int) -> list[FindingExtent]:
    scale = EMBEDDED_SCALES["default"]
    params = {"n_images": scale.nih_images, "abnormal_fraction": scale.nih_abnormal_fraction, "image_size": 256,
              "seed": 0, **_manifest_params(root / "nih" / chest.MANIFEST_NAME)}
    specs = chest.plan_chest_set(int(params["n_images"]), float(params["abnormal_fraction"]), int(params["seed"]))
    renderer = chest.ChestRenderer.load(progress=True)
    rows: list[FindingExtent] = []
    for finding, chosen in _sample(specs, lambda s: s.findings, chest.FINDINGS, per_finding, seed).items():
        for spec in chosen:
            for part in chest_contributions(renderer, spec, int(params["image_size"])):
                if part.finding == finding:  # the sampled finding only (another is measured when sampled)
                    rows += extents_at_sizes(part, sizes, contrast)
    return rows


def measure_limb(root: Path, per_finding: int, sizes: Sequence[int], contrast: float,
                 seed: int) -> list[FindingExtent]:
    params = {"n_patients": EMBEDDED_SCALES["default"].mura_patients, "seed": 0,
              **_manifest_params(root / "mura" / limb.MANIFEST_NAME)}
    specs = [s for s in limb.plan_limb_set(int(params["n_patients"]), int(params["seed"])) if s.lesion is not None]
    rows: list[FindingExtent] = []
    for chosen in _sample(specs, lambda s: (s.lesion.kind,), limb.ABNORMALITIES, per_finding, seed).values():
        for spec in chosen:
            rows += limb_finding_extents(spec, sizes, contrast)
    return rows


def _at(rows: Sequence[FindingExtent], size: int, field: str) -> np.ndarray:
    return np.array([getattr(r, field) for r in rows if r.size == size], dtype=np.float64)


def _smallest(rows: Sequence[FindingExtent], sizes: Sequence[int], min_px: float, field: str = "diameter_px",
              share: float = 0.5) -> str:
    for size in sorted(sizes):
        if (_at(rows, size, field) >= min_px).mean() > share:
            return str(size)
    return f"none of {sorted(sizes)}"


def severity_groups(rows: Sequence[FindingExtent],
                    bins: Sequence[float] = DEFAULT_SEVERITY_BINS) -> list[tuple[str, list[FindingExtent]]]:
    """``(bin label, rows)`` per severity bin, binned as the evaluation chapters bin them.

    The rule of :func:`salad_lite.report.per_finding_auc`: ``[b0, b1], (b1, b2], ...``
    (closed on the right), labelled as its rows (:func:`salad_lite.report.severity_bin_labels`);
    empty bins are left out, a severity outside the bins is in none.
    """
    index = severity_bin_index([r.severity for r in rows], bins)
    groups = [(label, [r for r, i in zip(rows, index) if i == k]) for k, label in enumerate(severity_bin_labels(bins))]
    return [(label, part) for label, part in groups if part]


def print_tables(rows_by_set: dict[str, list[FindingExtent]], sizes: Sequence[int], min_px: float) -> None:
    head = " | ".join(f"d@{s} median [p10, p90]" for s in sizes)
    share_head = " | ".join(f">= {min_px:g} px @{s}" for s in sizes)
    print(f"\nEquivalent diameter (px) of |delta| > threshold, and share with diameter >= {min_px:g} px\n")
    print(f"| set | finding | n | {head} | {share_head} |")
    print("|---|---|---|" + "---|" * (2 * len(sizes)))
    groups = []
    for name, rows in rows_by_set.items():
        findings = list(dict.fromkeys(r.finding for r in rows))
        groups += [(name, f, [r for r in rows if r.finding == f]) for f in findings] + [(name, "**all**", rows)]
    for name, finding, rows in groups:
        cells, shares = [], []
        for size in sizes:
            d = _at(rows, size, "diameter_px")
            p10, p50, p90 = np.percentile(d, [10, 50, 90])
            cells.append(f"{p50:.1f} [{p10:.1f}, {p90:.1f}]")
            shares.append(f"{(d >= min_px).mean():.0%}")
        print(f"| {name} | {finding} | {len(d)} | " + " | ".join(cells) + " | " + " | ".join(shares) + " |")

    print(f"\nThickness (largest inscribed disc) >= {min_px:g} px, and median peak contrast (x dynamic range)\n")
    print("| set | finding | " + " | ".join(f"thick >= {min_px:g} @{s}" for s in sizes) + " | "
          + " | ".join(f"peak @{s}" for s in sizes) + " |")
    print("|---|---|" + "---|" * (2 * len(sizes)))
    for name, finding, rows in groups:
        thick = [f"{(_at(rows, s, 'thickness_px') >= min_px).mean():.0%}" for s in sizes]
        peak = [f"{np.median(_at(rows, s, 'peak_contrast')):.3f}" for s in sizes]
        print(f"| {name} | {finding} | " + " | ".join(thick) + " | " + " | ".join(peak) + " |")

    print(f"\nShare with diameter >= {min_px:g} px by severity (chest severity in [0, 1], limb in [0.2, 1])\n")
    print("| set | severity | n | " + " | ".join(f"@{s}" for s in sizes) + " |")
    print("|---|---|---|" + "---|" * len(sizes))
    for name, rows in rows_by_set.items():
        for label, part in severity_groups(rows):  # the bins of the evaluation chapters (report.per_finding_auc)
            shares = [f"{(_at(part, s, 'diameter_px') >= min_px).mean():.0%}" for s in sizes]
            print(f"| {name} | {label} | {len(part) // len(sizes)} | " + " | ".join(shares) + " |")

    print(f"\nSmallest size at which most (> 50 %) findings span >= {min_px:g} px")
    for name, rows in rows_by_set.items():
        findings = list(dict.fromkeys(r.finding for r in rows))
        per_finding = {f: _smallest([r for r in rows if r.finding == f], sizes, min_px) for f in findings}
        print(f"  {name}: diameter {_smallest(rows, sizes, min_px)}, thickness "
              f"{_smallest(rows, sizes, min_px, 'thickness_px')}; per finding (diameter): "
              + ", ".join(f"{f} {s}" for f, s in per_finding.items()))


def existing_root(text: str) -> Path:
    """A ``--root`` value: an existing folder (a typo would otherwise measure the default parameters silently)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r} (an embedded data root, e.g. {embedded_root()})")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-finding", type=positive_int, default=20, help="abnormal images sampled per finding")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=list(DEFAULT_SIZES),
                        help="training sizes (px)")
    parser.add_argument("--contrast", type=number_type(0.0, 1.0, low_open=True, high_open=True),
                        default=DEFAULT_CONTRAST, help="visibility threshold, fraction of the image's dynamic range")
    parser.add_argument("--min-px", type=number_type(0.0, low_open=True), default=3.0,
                        help="'spans several pixels': diameter >= this")
    parser.add_argument("--sets", nargs="+", choices=("nih", "mura"), default=["nih", "mura"])
    parser.add_argument("--seed", type=seed_option, default=0, help="seed of the sample")
    parser.add_argument("--root", type=existing_root, default=None,
                        help="embedded data root, an existing folder (default: the package's)")
    parser.add_argument("--csv", type=file_option, default=None, help="also write every measurement to this CSV")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cv2.setNumThreads(1)
    root = args.root if args.root is not None else embedded_root()
    measure = {"nih": measure_chest, "mura": measure_limb}
    rows_by_set: dict[str, list[FindingExtent]] = {}
    manifests = {"nih": root / "nih" / chest.MANIFEST_NAME, "mura": root / "mura" / limb.MANIFEST_NAME}
    for name in args.sets:
        source = manifests[name] if manifests[name].is_file() else f"the default scale (no {manifests[name]})"
        print(f"{name}: the set's parameters from {source}")
        start, cpu = time.perf_counter(), time.process_time()
        rows_by_set[name] = measure[name](root, args.per_finding, args.sizes, args.contrast, args.seed)
        print(f"{name}: {len(rows_by_set[name]) // len(args.sizes)} findings measured in "
              f"{time.perf_counter() - start:.0f} s ({time.process_time() - cpu:.0f} s CPU); "
              f"load average {os.getloadavg()[0]:.1f}")
    print(f"threshold: |delta| > {args.contrast:g} x dynamic range; sizes {args.sizes}")
    print_tables(rows_by_set, args.sizes, args.min_px)
    if args.csv is not None:
        fields = ["set"] + [f.name for f in dataclasses.fields(FindingExtent)]
        with open(Path(args.csv).expanduser(), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(fields)
            for name, rows in rows_by_set.items():
                writer.writerows([name, *dataclasses.astuple(r)] for r in rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
