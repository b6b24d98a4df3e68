"""Scale benchmark: a round start and Eq. 4 scoring with a memory bank the size of the full NIH (112,120 x 200), CPU.

A round start (``MemoryBank.round_start``: the entropy of every entry's softmax over the
others plus its top-k neighbourhood, one pass over the N x N similarities since issue 11)
is timed at several N from 10k to 112k, and the growth exponent a of time ~ N^a is fitted.
Each is paired with a bare block matmul of the same total work (``bank[i:i+256] @ bank.T``
for every block of rows, multithreaded BLAS, nothing else): the floor of any exact
computation. ``--separate`` also times the two passes used before (``entropy`` +
``neighbours_of_entries``) at the sizes up to ``--separate-max``. Then it scores
``--queries`` queries against the largest bank with Eq. 4 (``eq4_scores``, K = 100).

Peak memory is given two ways: tracemalloc (numpy's allocations; torch's are not traced)
and the process's peak resident set (VmHWM, reset before each measurement through
``/proc/self/clear_refs``; ``resource.getrusage`` as a fallback gives the lifetime peak),
minus the resident set before. A full N x N float32 matrix at 112k would be 50 GB.

    .venv/bin/python benchmarks/bench_scale.py                       # 10k .. 112,120, k = 20, 25,000 queries
    .venv/bin/python benchmarks/bench_scale.py --sizes 10000 20000 --queries 2000 --separate
    .venv/bin/python benchmarks/bench_scale.py --clusters 14          # banks with cluster structure

Options are checked before any work (an argparse error naming the option): sizes,
``--dim``, ``--k`` and ``--score-k`` at least 1 (``--queries`` 0 skips the scoring), every
bank size and the 600-row warm-up bank at least ``--k``, ``--temperature`` > 0. A column
not measured (``--no-floor``, no ``--separate``) is printed as ``-``, not NaN.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from salad_lite.cli_errors import count, number_type, positive_int, seed_option
from salad_lite.memory import MemoryBank
from salad_lite.scorer import eq4_scores

NIH_SIZE = 112_120


def unit_bank(n: int, dim: int, clusters: int, seed: int) -> torch.Tensor:
    """Seeded random unit rows [n, dim]; with ``clusters`` > 0, rows scattered (noise 0.5) around that many centres."""
    gen = torch.Generator().manual_seed(seed)
    if clusters <= 0:
        return F.normalize(torch.randn(n, dim, generator=gen), dim=1)
    centres = F.normalize(torch.randn(clusters, dim, generator=gen), dim=1)
    members = torch.randint(0, clusters, (n,), generator=gen)
    return F.normalize(centres[members] + 0.5 / math.sqrt(dim) * torch.randn(n, dim, generator=gen), dim=1)


def _rss_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB; NaN where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident set (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def measure(fn: Callable[[], Any]) -> tuple[float, float, float, Any]:
    """Run ``fn`` once: (wall s, tracemalloc peak MB, peak RSS above the RSS before MB, result)."""
    before = _rss_mb("VmRSS")
    reset = _reset_peak_rss()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = fn()
        wall = time.perf_counter() - start
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return wall, traced / 2**20, peak - before, result


def matmul_floor(bank: np.ndarray, rows: int = 256) -> None:
    """The bare product ``bank @ bank.T``, ``rows`` rows at a time into one reused buffer (multithreaded BLAS)."""
    out = np.empty((rows, bank.shape[0]), dtype=np.float32)
    for start in range(0, bank.shape[0], rows):
        block = bank[start:start + rows]
        np.matmul(block, bank.T, out=out[:len(block)])


def fitted_exponent(sizes: list[int], seconds: list[float]) -> float:
    """a of the least-squares fit log t = a log N + b."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


WARM_BANK = 600  # rows of the bank that compiles the kernels first


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[10_000, 20_000, 40_000, 80_000, NIH_SIZE],
                        help="bank sizes N (each >= --k)")
    parser.add_argument("--dim", type=positive_int, default=200)
    parser.add_argument("--k", type=positive_int, default=20,
                        help=f"neighbours per entry (the paper's range ends at 20; at most {WARM_BANK})")
    parser.add_argument("--temperature", type=number_type(0.0, low_open=True), default=0.1)
    parser.add_argument("--clusters", type=count, default=0, help="0: uniform random unit rows")
    parser.add_argument("--queries", type=count, default=25_000,
                        help="queries scored against the largest bank (0: no Eq. 4 scoring)")
    parser.add_argument("--score-k", type=positive_int, default=100, help="K of Eq. 4")
    parser.add_argument("--separate", action="store_true", help="also time the two separate passes (before issue 11)")
    parser.add_argument("--separate-max", type=count, default=20_000)
    parser.add_argument("--no-floor", action="store_true", help="skip the bare matmul floor")
    parser.add_argument("--seed", type=seed_option, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k > WARM_BANK:
        parser.error(f"argument --k: must be an int in [1, {WARM_BANK}] (the warm-up bank's rows), got {args.k}")
    if min(args.sizes) < args.k:
        parser.error(f"argument --sizes: every bank must hold at least --k = {args.k} entries (a round start takes "
                     f"k neighbours of each), got {min(args.sizes)}")

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, d = {args.dim}, k = {args.k}, "
          f"tau = {args.temperature}, clusters = {args.clusters}")
    warm = MemoryBank(WARM_BANK, args.dim)
    warm.round_start(args.k, args.temperature)  # compile (or load) the kernels
    eq4_scores(warm.bank[:10], warm.bank, min(args.score_k, WARM_BANK - 1))
    rows: list[dict[str, float]] = []
    for n in sorted(args.sizes):
        memory = MemoryBank(2, args.dim)
        memory.bank = unit_bank(n, args.dim, args.clusters, args.seed + n)
        wall, traced, rss, (entropy, neighbours) = measure(lambda: memory.round_start(args.k, args.temperature))
        assert entropy.shape == (n,) and neighbours.shape == (n, args.k) and bool(torch.isfinite(entropy).all())
        row = {"n": n, "round_s": wall, "traced_mb": traced, "rss_mb": rss,
               "nk_mb": n * args.k * (4 + 8) / 2**20, "nn_gb": n * n * 4 / 2**30}
        if not args.no_floor:
            row["floor_s"] = measure(lambda: matmul_floor(memory.bank.numpy()))[0]
        if args.separate and n <= args.separate_max:
            row["separate_s"] = measure(lambda: (memory.entropy(args.temperature),
                                                 memory.neighbours_of_entries(args.k)))[0]
        rows.append(row)
        extra = "".join(f", {key} {row[key]:.1f} s" for key in ("floor_s", "separate_s") if key in row)
        print(f"N = {n:>7,}: round start {wall:.1f} s (tracemalloc peak {traced:.0f} MB, peak RSS +{rss:.0f} MB)"
              f"{extra}; load {os.getloadavg()[0]:.2f}", flush=True)

    print("\n| N | round start s | matmul floor s | round / floor | two passes s | two / one | "
          "tracemalloc peak MB | peak RSS + MB | N k (12 B) MB | an N x N float32 GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        floor = (f"{row['floor_s']:.1f} | {row['round_s'] / row['floor_s']:.2f}x" if "floor_s" in row else "- | -")
        separate = (f"{row['separate_s']:.1f} | {row['separate_s'] / row['round_s']:.2f}x" if "separate_s" in row
                    else "- | -")
        print(f"| {row['n']:,} | {row['round_s']:.1f} | {floor} | {separate} | {row['traced_mb']:.0f} "
              f"| {row['rss_mb']:.0f} | {row['nk_mb']:.0f} | {row['nn_gb']:.1f} |")
    if len(rows) >= 2:
        sizes = [row["n"] for row in rows]
        exponent = fitted_exponent(sizes, [row["round_s"] for row in rows])
        line = f"\nround start time ~ N^{exponent:.2f} over N = {sizes[0]:,} .. {sizes[-1]:,}"
        if "floor_s" in rows[0]:
            line += f" (matmul floor ~ N^{fitted_exponent(sizes, [row['floor_s'] for row in rows]):.2f})"
        print(line)

    if args.queries > 0:
        bank = unit_bank(max(args.sizes), args.dim, args.clusters, args.seed + max(args.sizes))
        queries = unit_bank(args.queries, args.dim, args.clusters, args.seed + 1)
        wall, traced, rss, scores = measure(lambda: eq4_scores(queries, bank, args.score_k))
        assert scores.shape == (args.queries,) and bool(torch.isfinite(scores).all())
        floor = measure(lambda: [np.matmul(queries[i:i + 256].numpy(), bank.numpy().T)
                                 for i in range(0, args.queries, 256)])[0]
        print(f"\nEq. 4 scoring, {args.queries:,} queries x {len(bank):,} bank, K = {args.score_k}: {wall:.1f} s "
              f"(tracemalloc peak {traced:.0f} MB, peak RSS +{rss:.0f} MB); bare matmul of the same shape "
              f"{floor:.1f} s, scoring / matmul {wall / floor:.2f}x; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
