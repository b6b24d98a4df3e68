"""Scorer throughput: Eq. 4 (``salad_lite.scorer.eq4_scores``) against faiss ``IndexFlatIP`` and a bare matmul.

Setting: 1,000 queries scored against a bank of 50,000 x 200 unit vectors, K = 100.
faiss-cpu's exact inner-product index searches the same normalised vectors for
the same K; Eq. 4 needs more than that search (the sum of arccos over all N bank
rows per query, besides the K nearest), and stays exact. The bare matrix product
``queries @ bank.T`` of the same shape (torch, same threads; it writes the full
M x N similarity matrix and reads nothing back) is the floor for any exact scorer:
every one must compute those M x N dot products.

Checks, on the first run:

- neighbours: the K bank rows Eq. 4 uses (``eq4_search``) against faiss's, row by
  row: identical sets, or different only among similarities tied (within 1e-6)
  with the K-th one;
- exactness: scores against a float64 reference (full similarities in float64,
  exact arccos), relative error <= 1e-5.

Timing: ``--repeats`` runs of each, interleaved (ours and faiss alternate, first
one swapped every repetition) after ``--warmup`` untimed runs, so both see the same
machine load. Reported: medians of wall time and of process CPU time, the ratio of
the medians (faiss / ours, >= 1.0 means ours is at least as fast), the median
of the per-repetition ratios, and the ratio matmul / ours (1.0 would mean scoring
costs no more than the product alone; 0.5, twice the product).

Usage::

    .venv/bin/python benchmarks/bench_scorer.py
    .venv/bin/python benchmarks/bench_scorer.py --queries 1000 --bank 50000 --dim 200 --k 100 --repeats 15

Options are checked before any work (an argparse error naming the option): sizes and
``--repeats`` at least 1, ``--warmup`` and ``--threads`` at least 0, ``--k`` at most ``--bank``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from salad_lite.cli_errors import count, positive_int, seed_option
from salad_lite.knn import torch_block_search
from salad_lite.scorer import eq4_scores, eq4_search

TARGET_RATIO = 1.0


def unit_rows(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=generator), dim=1)  # [n, d] float32


def reference_scores(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 100) -> np.ndarray:
    """Eq. 4 in float64 from the full similarities (exact arccos), chunk of queries by chunk: [M]."""
    bank64 = bank.double()
    out = []
    for start in range(0, queries.shape[0], chunk):
        sims = (queries[start:start + chunk].double() @ bank64.T).clamp_(-1.0, 1.0)  # [c, N]
        angles = torch.arccos(sims)
        nearest = angles.topk(k, dim=1, largest=False).values  # the K smallest angles = K largest cosines
        out.append((nearest.sum(dim=1) / angles.sum(dim=1) / k).numpy())
    return np.concatenate(out)


def compare_neighbours(ours: np.ndarray, theirs: np.ndarray, queries: torch.Tensor, bank: torch.Tensor,
                       tie_tolerance: float = 1e-6) -> tuple[int, int, int]:
    """(rows with identical sets, rows differing only within ties of the K-th similarity, other rows)."""
    identical = tied = other = 0
    for row in range(ours.shape[0]):
        a, b = set(ours[row].tolist()), set(theirs[row].tolist())
        if a == b:
            identical += 1
            continue
        sims = (bank.double() @ queries[row].double()).numpy()  # [N]
        kth = np.sort(sims)[-ours.shape[1]]
        if all(abs(sims[j] - kth) <= tie_tolerance for j in a ^ b):
            tied += 1
        else:
            other += 1
    return identical, tied, other


def blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl missing"
    parts = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            name = os.path.basename(info["filepath"])
            parts.append(f"{info['internal_api']} {info.get('version')} {info.get('architecture') or ''} "
                         f"({name}, {info['num_threads']} thr)")
    return "; ".join(parts)


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: int
                ) -> dict[str, tuple[list[float], list[float]]]:
    """{name: (wall seconds, process CPU seconds)} over ``repeats`` rotating-order rounds after ``warmup``."""
    names = list(runs)
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in names}
    for rep in range(warmup + repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            runs[name]()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if rep >= warmup:
                out[name][0].append(wall)
                out[name][1].append(cpu)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=positive_int, default=1000)
    parser.add_argument("--bank", type=positive_int, default=50_000, help="bank rows (>= --k)")
    parser.add_argument("--dim", type=positive_int, default=200)
    parser.add_argument("--k", type=positive_int, default=100)
    parser.add_argument("--repeats", type=positive_int, default=15)
    parser.add_argument("--warmup", type=count, default=2)
    parser.add_argument("--threads", type=count, default=0, help="torch and faiss threads (0: leave the defaults)")
    parser.add_argument("--torch-path", action="store_true",
                        help="also time the torch block path (used off the CPU; the previous CPU algorithm)")
    parser.add_argument("--seed", type=seed_option, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k > args.bank:
        parser.error(f"argument --k: must be at most --bank ({args.bank}): Eq. 4 takes K neighbours in the bank, "
                     f"got {args.k}")

    import faiss  # faiss-cpu, a dev dependency

    if args.threads > 0:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    print(f"device: cpu; torch threads {torch.get_num_threads()}, faiss OpenMP threads {faiss.omp_get_max_threads()}; "
          f"torch {torch.__version__}, faiss {faiss.__version__}")
    print(f"BLAS: {blas_description()}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")

    generator = torch.Generator().manual_seed(args.seed)
    queries = unit_rows(args.queries, args.dim, generator)  # [M, d]
    bank = unit_rows(args.bank, args.dim, generator)  # [N, d]
    k = args.k
    print(f"{args.queries} queries x bank {args.bank} x {args.dim}, K = {k}")

    index = faiss.IndexFlatIP(args.dim)
    index.add(bank.numpy())
    queries_np = queries.numpy()

    # correctness, once
    _, faiss_ids = index.search(queries_np, k)
    scores, _, our_ids = eq4_search(queries, bank, k)
    identical, tied, other = compare_neighbours(our_ids.numpy(), faiss_ids, queries, bank)
    print(f"neighbours vs faiss: {identical} identical sets, {tied} differ only within ties, {other} differ")
    reference = reference_scores(queries, bank, k)
    relative = float(np.max(np.abs(scores.numpy() - reference) / np.abs(reference)))
    print(f"scores vs float64 reference: max relative error {relative:.2e} ({'ok' if relative <= 1e-5 else 'FAIL'})")

    runs: dict[str, Callable[[], object]] = {
        "faiss IndexFlatIP": lambda: index.search(queries_np, k),
        "bare matmul q @ bank.T": lambda: queries @ bank.T,
        "ours eq4_scores": lambda: eq4_scores(queries, bank, k),
        "ours rule=code (top-K only)": lambda: eq4_scores(queries, bank, k, rule="code"),
    }
    if args.torch_path:
        runs["torch block path"] = lambda: torch_block_search(queries, bank, k, True, None, 1 << 24)
    times = interleaved(runs, args.repeats, args.warmup)

    faiss_wall = times["faiss IndexFlatIP"][0]
    matmul_wall = times["bare matmul q @ bank.T"][0]
    print(f"\n{args.repeats} interleaved runs each (+{args.warmup} warm-up); medians")
    print(f"{'':<28} {'wall ms':>9} {'cpu ms':>9} {'faiss/ours':>11} {'paired':>8} {'>= 1.0x':>8} "
          f"{'matmul/ours':>12} {'paired':>8}")
    for name, (wall, cpu) in times.items():
        ratio = statistics.median(faiss_wall) / statistics.median(wall)
        paired = statistics.median(f / w for f, w in zip(faiss_wall, wall))
        floor = statistics.median(matmul_wall) / statistics.median(wall)
        floor_paired = statistics.median(f / w for f, w in zip(matmul_wall, wall))
        verdict = "-" if name.startswith(("faiss", "bare")) else ("yes" if ratio >= TARGET_RATIO else "no")
        print(f"{name:<28} {1e3 * statistics.median(wall):>9.1f} {1e3 * statistics.median(cpu):>9.1f} "
              f"{ratio:>10.2f}x {paired:>7.2f}x {verdict:>8} {floor:>11.2f}x {floor_paired:>7.2f}x")


if __name__ == "__main__":
    main()
