"""Exact k-nearest-neighbour search over unit vectors, block by block: the engine behind Eq. 4 and the bank.

Everything here answers one question: for each query row, which K key rows have the
largest dot product (cosine, for unit rows), and, for Eq. 4, what is the sum of
``arccos`` over all keys. No ``M x N`` matrix is ever built in one piece.

- :func:`unit_rows` / :func:`check_latents`: the gate every latent passes: 2-D,
  finite, and no zero-norm row (a zero vector has no direction, so its cosine is
  undefined; ``F.normalize`` would silently turn it into a zero "unit" vector).
- :func:`block_search`: the dispatcher. On the CPU, :func:`cpu_block_search` runs
  small numba kernels that read each cache-sized block of similarities once
  (:class:`TopKBuffer`), in worker threads; elsewhere (CUDA) :func:`torch_block_search`
  does the same with plain torch ops on :func:`similarity_blocks`.
- :func:`cosine_topk`: the cosine top-K the memory bank and the embedding views use.

Both engines rank equal similarities by ascending key row (:func:`merge_topk`, the
one top-K merge of the module); off the CPU, ``torch.topk`` picks among ties at a
block's K-th place. Inputs must be finite: a NaN similarity never enters a top-K.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types as nb_types
from numba.extending import intrinsic
from threadpoolctl import ThreadpoolController

from salad_lite.utils import is_int

DEFAULT_BLOCK_ELEMENTS = 1 << 24  # similarities held at once: 16M floats = 64 MB
MIN_NORM = 1e-12  # rows with a smaller L2 norm are refused as zero vectors (F.normalize's eps)
UNIT_TOLERANCE = 1e-3  # a "unit" row's L2 norm may differ from 1 by this much (float32 rounding is ~1e-7)

# CPU block shape of the fused search: 256 x 512 float32 similarities (512 KB) stay in a
# core's L2 cache between the matrix product that writes them and the scan that reads them
# (tuned on a 2-core AMD EPYC with 1 MB L2 per core; 128 x 1024 and 256 x 768 are close).
CPU_BLOCK_QUERIES = 256
CPU_BLOCK_KEYS = 512


def _latents(values: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` as float32 [R, d] and its row norms [R, 1], after the checks of :func:`check_latents`."""
    try:
        source = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):  # text, objects, ragged lists
        kind = getattr(getattr(values, "dtype", None), "name", type(values).__name__)
        raise ValueError(f"{name} must be numbers [rows, d] (a tensor or array of floats), got {kind} "
                         "that torch cannot read as numbers (text? objects? rows of unequal length?)") from None
    if source.is_complex() or source.dtype == torch.bool:
        raise ValueError(f"{name} must be real numbers [rows, d], got dtype {source.dtype}")
    tensor = source.float()
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, d], got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(tensor.shape)}")
    norms = tensor.norm(2, dim=1, keepdim=True)  # [R, 1]; NaN or inf when a row has one (or overflows)
    if not bool(torch.isfinite(norms).all()):
        bad_rows = ~torch.isfinite(tensor).all(dim=1)
        beyond = bad_rows & torch.isfinite(source).all(dim=1)  # finite float64 values past float32's range
        if bool(beyond.any()):
            raise ValueError(f"{name} has {int(beyond.sum())} row(s) with values beyond float32's range "
                             f"(first: row {_first(beyond)})")
        bad = int(bad_rows.sum())
        if bad:
            raise ValueError(f"{name} has {bad} row(s) with NaN or inf (first: row {_first(bad_rows)})")
        overflow = ~torch.isfinite(norms[:, 0])
        raise ValueError(f"{name} has {int(overflow.sum())} row(s) whose norm overflows float32 "
                         f"(first: row {_first(overflow)})")
    zero = norms[:, 0] < MIN_NORM
    if bool(zero.any()):
        raise ValueError(f"{name} has {int(zero.sum())} zero-norm row(s) of {tensor.shape[0]} (norm < {MIN_NORM:g}; "
                         f"first: row {_first(zero)}): a zero latent has no direction, so no cosine")
    return tensor, norms


def _first(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def check_latents(values: Any, name: str) -> torch.Tensor:
    """Validate latents and return them as a float32 tensor [R, d] (not normalised).

    Args:
        values: [R, d] tensor or array.
        name: what the error messages call it (``"bank"``, ``"z"``...).

    Raises:
        ValueError: not real numbers (text, objects, complex, bool: the type named); not 2-D or empty;
            rows with NaN or inf, values beyond float32's range, or rows whose norm overflows
            float32; rows whose L2 norm is below :data:`MIN_NORM` (zero vectors). Each
            message counts the bad rows and names the first.
    """
    return _latents(values, name)[0]


def check_unit_rows(values: Any, name: str, tolerance: float = UNIT_TOLERANCE) -> torch.Tensor:
    """:func:`check_latents`, and every row's L2 norm within ``tolerance`` of 1 (a memory bank's rows): float32 [R, d].

    Raises:
        ValueError: as :func:`check_latents`; rows that are not unit vectors (counted, the first named).
    """
    tensor, norms = _latents(values, name)
    off = (norms[:, 0] - 1.0).abs() > tolerance
    if bool(off.any()):
        raise ValueError(f"{name} has {int(off.sum())} row(s) of {tensor.shape[0]} that are not unit vectors (first: "
                         f"row {_first(off)}, norm {float(norms[_first(off), 0]):.6g}): the rows must be L2-normalised")
    return tensor


def unit_rows(values: Any, name: str) -> torch.Tensor:
    """``values`` [R, d] divided by their L2 norms: float32 unit rows [R, d] (as ``F.normalize``, bit for bit).

    Raises:
        ValueError: as :func:`check_latents`: a zero-norm row is refused, not normalised to zeros.
    """
    tensor, norms = _latents(values, name)
    return tensor / norms


def _check_search(queries: Any, keys: Any, k: int, exclude: Any, block_elements: int) -> None:
    """The arguments every search checks: [M, d] and [N, d] rows, an int 1 <= k <= candidate keys,
    ``exclude`` [M] integer rows, an int ``block_elements`` >= 1."""
    for name, value in (("k", k), ("block_elements", block_elements)):
        if not is_int(value):
            raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if block_elements < 1:
        raise ValueError(f"block_elements must be >= 1 (similarities held in one block), got {block_elements}")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries [M, d] and keys [N, d] must share d, got shapes {tuple(queries.shape)} "
                         f"and {tuple(keys.shape)}")
    m, n = queries.shape[0], keys.shape[0]
    candidates = n - (1 if exclude is not None else 0)
    if not 1 <= k <= candidates:
        raise ValueError(f"k must lie in 1..{candidates} (the number of candidate bank rows"
                         f"{', one left out per query' if exclude is not None else ''}), got k={k}")
    if exclude is not None:
        exclude = torch.as_tensor(exclude)
        if exclude.dtype == torch.bool or exclude.is_floating_point() or exclude.is_complex():
            raise ValueError(f"exclude must hold integer key rows, got dtype {exclude.dtype}")
        if exclude.shape != (m,):
            raise ValueError(f"exclude must hold one key row per query, shape ({m},), got {tuple(exclude.shape)}")
        if m and not (0 <= int(exclude.min()) and int(exclude.max()) < n):
            raise ValueError(f"exclude must hold key rows in 0..{n - 1}, got {int(exclude.min())}..{int(exclude.max())}")


def similarity_blocks(queries: torch.Tensor, keys: torch.Tensor,
                      block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(query_start, key_start, sims)`` blocks of the ``[M, N]`` dot-product matrix.

    ``queries`` [M, d] and ``keys`` [N, d] are used as given (normalise them first for
    cosines). Each block ``sims`` [c_q, c_k] holds at most ``block_elements``
    similarities, so neither an ``M x N`` nor an ``N x N`` matrix is ever built when
    N is large. Blocks arrive key-chunk by key-chunk for each query chunk.
    """
    m, n = queries.shape[0], keys.shape[0]
    key_chunk = max(1, min(n, block_elements // max(1, min(m, 1024))))
    query_chunk = max(1, min(m, block_elements // key_chunk))
    for q_start in range(0, m, query_chunk):
        q = queries[q_start:q_start + query_chunk]
        for k_start in range(0, n, key_chunk):
            yield q_start, k_start, q @ keys[k_start:k_start + key_chunk].T  # [c_q, c_k]


def excluded_cells(exclude: torch.Tensor, rows: slice, key_start: int,
                   key_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the left-out keys fall in a block: (block rows, block columns), each [h].

    Args:
        exclude: [M] the key row each query leaves out.
        rows: the block's query rows (a slice of 0..M).
        key_start, key_count: the block's keys are ``key_start..key_start + key_count - 1``.

    The one exclusion mask of the torch paths (the top-K search and the bank entropy):
    ``sims[excluded_cells(...)] = value`` overwrites exactly those similarities.
    """
    local = exclude[rows].to(torch.long) - key_start  # [c_q]
    hit = (local >= 0) & (local < key_count)
    return hit.nonzero(as_tuple=True)[0], local[hit]


def merge_topk(values: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best candidates of each row: (values [R, k] descending, indices [R, k]); ties by ascending index.

    ``values`` / ``indices`` [R, C >= k] are candidate similarities and their key rows,
    in any order (each key at most once per row). The one top-K merge of the module:
    it ranks a :class:`TopKBuffer`'s survivors, joins the key ranges that threads
    searched apart, and folds each block into the running top-K of :func:`torch_block_search`.

    Raises:
        ValueError: ``k`` is not an int >= 1.
    """
    if not is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    order = indices.argsort(dim=1)  # ascending key index ...
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.sort(dim=1, descending=True, stable=True).indices[:, :k]  # ... kept among equal values
    return values.gather(1, order), indices.gather(1, order)


# ---------------------------------------------------------------------------------------
# CPU kernels (numba). A block of similarities is read once: a vectorised pass sums the
# angles arccos(s) (Eq. 4's denominator) and counts, per run of 64 columns, the entries
# above the row's running top-k threshold; only runs with such entries are scanned again
# to append candidates to a per-row buffer, which a quickselect cuts back to the k best
# when it fills (the threshold then rises). Ties are broken towards the lower key index.

_FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}  # no nnan/ninf: NaN compares stay false
_RUN = 64  # columns per run of the vectorised pass
_EMPTY = np.float32(-3.0)  # value of an unused buffer slot: below every cosine
_EXCLUDED = np.float32(-2.0)  # an excluded entry's similarity: below every cosine, above _EMPTY
_ONE, _ZERO, _HALF, _TWO = np.float32(1.0), np.float32(0.0), np.float32(0.5), np.float32(2.0)
_PI, _HALF_PI = np.float32(math.pi), np.float32(math.pi / 2)
# asin(t) = t + t^3 P(t^2) on 0 <= t <= 0.5, P fitted (relative minimax-style least squares) for float32
_P0, _P1, _P2, _P3, _P4 = (np.float32(c) for c in (0.16666752, 0.07495298, 0.04547036, 0.02417959, 0.0421662))


@numba.njit(inline="always", fastmath=_FASTMATH)
def _arccos32(x):  # pragma: no cover - compiled
    """arccos(clamp(x, -1, 1)) in float32, relative error < 2e-7 over [-1, 1]; branch-free so loops vectorise.

    |x| <= 1/2: pi/2 - asin(|x|); |x| > 1/2: 2 asin(sqrt((1 - |x|) / 2)); x < 0: pi - arccos(|x|).
    """
    a = min(abs(x), _ONE)
    half_gap = np.sqrt((_ONE - a) * _HALF)
    large = a > _HALF
    t = half_gap if large else a
    t2 = t * t
    asin_t = t + t * t2 * ((((_P4 * t2 + _P3) * t2 + _P2) * t2 + _P1) * t2 + _P0)
    angle = _TWO * asin_t if large else _HALF_PI - asin_t
    return _PI - angle if x < _ZERO else angle


@numba.njit(inline="always")
def _ahead(value_a, index_a, value_b, index_b):  # pragma: no cover - compiled
    """Order of the top-k: larger similarity first, then lower key index."""
    return value_a > value_b or (value_a == value_b and index_a < index_b)


@numba.njit(nogil=True, cache=True)
def _select_best(values, indices, filled, k):  # pragma: no cover - compiled
    """Move the k best of ``values[:filled]`` (with their ``indices``) to the front; return the k-th best value."""
    lo, hi, target = 0, filled - 1, k - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        # median of three as the pivot
        a, b, c = lo, mid, hi
        if _ahead(values[b], indices[b], values[a], indices[a]):
            a, b = b, a
        if _ahead(values[c], indices[c], values[b], indices[b]):
            b = c
            if _ahead(values[b], indices[b], values[a], indices[a]):
                b = a
        pivot_value, pivot_index = values[b], indices[b]
        i, j = lo, hi
        while i <= j:
            while i <= hi and _ahead(values[i], indices[i], pivot_value, pivot_index):
                i += 1
            while j >= lo and _ahead(pivot_value, pivot_index, values[j], indices[j]):
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                indices[i], indices[j] = indices[j], indices[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    kth = values[0]
    for t in range(1, k):
        kth = min(kth, values[t])
    return kth


@numba.njit(inline="always")
def _append_run(row, start, stop, key_offset, threshold, values, indices, filled, k):  # pragma: no cover
    """Append the entries of ``row[start:stop]`` above ``threshold``; cut the buffer to k when it is full."""
    capacity = values.shape[0]
    for j in range(start, stop):
        x = row[j]
        if x > threshold:
            values[filled] = x
            indices[filled] = key_offset + j
            filled += 1
            if filled == capacity:
                threshold = _select_best(values, indices, filled, k)
                filled = k
    return threshold, filled


@numba.njit(inline="always")
def _mask_excluded(row, key_offset, excluded):  # pragma: no cover - compiled
    """Set the excluded key's similarity (if it lies in this block) to _EXCLUDED; True when it did."""
    local = excluded - key_offset
    if 0 <= local < row.shape[0]:
        row[local] = _EXCLUDED
        return True
    return False


@numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _scan_block_with_angles(sims, key_offset, k, exclude, angle_sum, values, indices, filled, thresholds):  # pragma: no cover
    """Top-k update and sum of arccos for each row of a block ``sims`` [R, C] (keys key_offset..+C).

    ``exclude`` [R] global key index to leave out per row (-1: none); ``angle_sum`` [R] float64,
    ``values``/``indices`` [R, k + capacity], ``filled`` [R], ``thresholds`` [R]: the rows' state.
    """
    n = sims.shape[1]
    full_runs_end = n - n % _RUN
    for r in range(sims.shape[0]):
        row = sims[r]
        excluded = _mask_excluded(row, key_offset, exclude[r])
        threshold, fill = thresholds[r], filled[r]
        total = 0.0
        for start in range(0, n, _RUN):
            partial, above = _ZERO, _ZERO
            if start < full_runs_end:
                for j in range(start, start + _RUN):  # vectorised
                    x = row[j]
                    partial += _arccos32(x)
                    above += _ONE if x > threshold else _ZERO
                stop = start + _RUN
            else:
                for j in range(start, n):
                    x = row[j]
                    partial += _arccos32(x)
                    above += _ONE if x > threshold else _ZERO
                stop = n
            total += partial
            if above > _ZERO:
                threshold, fill = _append_run(row, start, stop, key_offset, threshold, values[r], indices[r], fill, k)
        if excluded:
            total -= _PI  # _arccos32(_EXCLUDED) == pi exactly
        angle_sum[r] += total
        thresholds[r], filled[r] = threshold, fill


@numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _scan_block(sims, key_offset, k, exclude, values, indices, filled, thresholds):  # pragma: no cover
    """Top-k update only (see :func:`_scan_block_with_angles`)."""
    n = sims.shape[1]
    full_runs_end = n - n % _RUN
    for r in range(sims.shape[0]):
        row = sims[r]
        _mask_excluded(row, key_offset, exclude[r])
        threshold, fill = thresholds[r], filled[r]
        for start in range(0, n, _RUN):
            above = _ZERO
            stop = min(start + _RUN, n)
            if start < full_runs_end:
                for j in range(start, start + _RUN):  # vectorised
                    above += _ONE if row[j] > threshold else _ZERO
            else:
                for j in range(start, n):
                    above += _ONE if row[j] > threshold else _ZERO
            if above > _ZERO:
                threshold, fill = _append_run(row, start, stop, key_offset, threshold, values[r], indices[r], fill, k)
        thresholds[r], filled[r] = threshold, fill


# The round start's softmax sums. With cosines <= 1 the fixed shift 1/tau bounds every logit:
# w = exp((s - 1) / tau) lies in (0, 1], so no running maximum is needed as long as the smallest
# possible term, exp(-2 / tau), stays a normal float32: tau >= MIN_FUSED_TEMPERATURE.
MIN_FUSED_TEMPERATURE = 0.025  # exp(-2 / 0.025) = exp(-80) > 2^-126
_EXP2_MIN = np.float32(-126.0)
_EXCLUDED_CUT = np.float32(-1.5)  # similarities below this are _EXCLUDED markers: weight exactly 0
# 2^f = exp(f ln 2) on -1/2 <= f <= 1/2: Taylor to degree 7, relative error < 1e-8
_E1, _E2, _E3, _E4, _E5, _E6, _E7 = (np.float32(math.log(2) ** i / math.factorial(i)) for i in range(1, 8))


@intrinsic
def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """Reinterpret an int32's bits as a float32 (an LLVM bitcast, so loops using it still vectorise)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return nb_types.float32(nb_types.int32), codegen


@numba.njit(inline="always", fastmath=_FASTMATH)
def _exp2_32(y):  # pragma: no cover - compiled
    """2^y in float32 for -126 <= y <= ~1 (clamped below), relative error ~1e-7 + |y| ulp; branch-free."""
    y = max(y, _EXP2_MIN)
    n = np.floor(y + _HALF)
    f = y - n  # in [-1/2, 1/2]
    p = _ONE + f * (_E1 + f * (_E2 + f * (_E3 + f * (_E4 + f * (_E5 + f * (_E6 + f * _E7))))))
    return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@numba.njit(inline="always", fastmath=_FASTMATH)
def _softmax_run(row, start, stop, log2e_over_tau, threshold):  # pragma: no cover - compiled
    """Over ``row[start:stop]``: (sum of w, sum of w (1 - s), count above ``threshold``), float32; vectorises."""
    part_w, part_wu, above = _ZERO, _ZERO, _ZERO
    for j in range(start, stop):
        x = row[j]
        gap = _ONE - x
        w = _exp2_32(-gap * log2e_over_tau) if x > _EXCLUDED_CUT else _ZERO  # an _EXCLUDED entry weighs 0
        part_w += w
        part_wu += w * gap
        above += _ONE if x > threshold else _ZERO
    return part_w, part_wu, above


@numba.njit(nogil=True, fastmath=_FASTMATH, cache=True)
def _scan_block_softmax(sims, key_offset, k, exclude, log2e_over_tau, sums, values, indices, filled,
                        thresholds):  # pragma: no cover - compiled
    """Top-k update and softmax sums for each row of a block ``sims`` [R, C] (keys key_offset..+C).

    ``sums`` [R, 2] float64 accumulates, per row, ``sum_j w_j`` and ``sum_j w_j (1 - s_j)`` with
    ``w_j = exp((s_j - 1) / tau) = 2^((s_j - 1) log2(e) / tau)``; the excluded key adds exactly 0.
    Other arguments as :func:`_scan_block_with_angles`.
    """
    n = sims.shape[1]
    for r in range(sims.shape[0]):
        row = sims[r]
        _mask_excluded(row, key_offset, exclude[r])
        threshold, fill = thresholds[r], filled[r]
        total_w, total_wu = 0.0, 0.0
        for start in range(0, n, _RUN):
            stop = min(start + _RUN, n)
            if stop - start == _RUN:  # a full run: a constant trip count
                part_w, part_wu, above = _softmax_run(row, start, start + _RUN, log2e_over_tau, threshold)
            else:
                part_w, part_wu, above = _softmax_run(row, start, stop, log2e_over_tau, threshold)
            total_w += part_w
            total_wu += part_wu
            if above > _ZERO:
                threshold, fill = _append_run(row, start, stop, key_offset, threshold, values[r], indices[r], fill, k)
        sums[r, 0] += total_w
        sums[r, 1] += total_wu
        thresholds[r], filled[r] = threshold, fill


@numba.njit(nogil=True, cache=True)
def _finish_rows(values, indices, filled, k):  # pragma: no cover - compiled
    """Cut every row's buffer to its k best (front of the row, unordered)."""
    for r in range(values.shape[0]):
        if filled[r] > k:
            _select_best(values[r], indices[r], filled[r], k)
            filled[r] = k



class TopKBuffer:
    """Running exact top-k (and optionally sum of arccos, or softmax sums) of ``rows`` queries over key blocks, on the CPU.

    With ``temperature`` (and not ``with_angles``) it also accumulates, per row,
    ``softmax_sums[:, 0] = sum_j exp((s_j - 1) / tau)`` and ``softmax_sums[:, 1] =
    sum_j exp((s_j - 1) / tau) (1 - s_j)`` (float64, [R, 2]); see :func:`self_search`.
    Memory: ``rows x (k + capacity)`` float32 values and int64 indices.
    """

    def __init__(self, rows: int, k: int, with_angles: bool, temperature: float | None = None) -> None:
        capacity = k + max(2 * k, 256)
        self.k = k
        self.values = np.full((rows, capacity), _EMPTY, dtype=np.float32)  # [R, k + cap]
        self.indices = np.full((rows, capacity), -1, dtype=np.int64)  # [R, k + cap]
        self.filled = np.zeros(rows, dtype=np.int64)
        self.thresholds = np.full(rows, _EMPTY, dtype=np.float32)  # k-th best so far (once k are seen)
        self.angle_sum = np.zeros(rows, dtype=np.float64) if with_angles else None  # radians
        softmax = temperature is not None and not with_angles
        self.log2e_over_tau = np.float32(math.log2(math.e) / temperature) if softmax else None
        self.softmax_sums = np.zeros((rows, 2), dtype=np.float64) if softmax else None  # [R, 2]

    def offer(self, sims: np.ndarray, key_offset: int, exclude: np.ndarray) -> None:
        """Scan a C-contiguous float32 block ``sims`` [R, C] of keys ``key_offset..+C``.

        ``exclude`` [R] int64: the global key index each row leaves out, -1 for none (``sims``
        is overwritten there).
        """
        if self.angle_sum is not None:
            _scan_block_with_angles(sims, key_offset, self.k, exclude, self.angle_sum, self.values, self.indices,
                                    self.filled, self.thresholds)
        elif self.softmax_sums is not None:
            _scan_block_softmax(sims, key_offset, self.k, exclude, self.log2e_over_tau, self.softmax_sums,
                                self.values, self.indices, self.filled, self.thresholds)
        else:
            _scan_block(sims, key_offset, self.k, exclude, self.values, self.indices, self.filled, self.thresholds)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarities [R, k] descending, key indices [R, k] int64); ties in ascending key order."""
        _finish_rows(self.values, self.indices, self.filled, self.k)
        best = np.ascontiguousarray(self.values[:, :self.k])
        rows = np.ascontiguousarray(self.indices[:, :self.k])
        return merge_topk(torch.from_numpy(best), torch.from_numpy(rows), self.k)


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict = {"users": 0, "limiter": None, "controller": None}


@contextlib.contextmanager
def _single_threaded_blas():
    """Limit the BLAS libraries to one thread while worker threads each run their own products.

    Reference-counted, so overlapping callers restore the original limits only once, at the end.
    """
    with _BLAS_LOCK:
        if _BLAS_STATE["users"] == 0:
            if _BLAS_STATE["controller"] is None:
                _BLAS_STATE["controller"] = ThreadpoolController()
            _BLAS_STATE["limiter"] = _BLAS_STATE["controller"].limit(limits=1, user_api="blas")
        _BLAS_STATE["users"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_STATE["users"] -= 1
            if _BLAS_STATE["users"] == 0:
                _BLAS_STATE["limiter"].restore_original_limits()
                _BLAS_STATE["limiter"] = None


_POOL: dict = {}


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` search threads (a new one after a fork: threads do not survive it)."""
    key = (os.getpid(), workers)
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="salad-search")
    return pool



def cpu_block_search(queries: np.ndarray, keys: np.ndarray, k: int, with_angles: bool,
                     exclude: np.ndarray | None = None, block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                     threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """Exact dot-product top-k of ``queries`` [M, d] among ``keys`` [N, d] (float32, CPU), block by block.

    With ``with_angles`` it also returns, per query, ``sum_j arccos(clamp(q . k_j))`` over all
    N keys (float64 radians, each term to float32 precision): Eq. 4's denominator.
    ``exclude`` [M] leaves one key per query out of both. Blocks of at most
    ``min(block_elements, 256 x 512)`` similarities are computed by the BLAS (one thread
    each) and scanned at once, by ``threads`` worker threads (default:
    ``torch.get_num_threads()``) taking query chunks (and key ranges when there are few
    queries). Memory: O(threads x block + M x (k + capacity)); never an M x N matrix.
    Rows are used as given (normalise them first for cosines).

    Returns:
        (similarities [M, k] descending, key indices [M, k] int64, angle sums [M] float64 or None);
        equal similarities rank by ascending key index.

    Raises:
        ValueError: queries and keys not 2-D with the same d; k not an int in 1..N (1..N-1
            with ``exclude``); ``exclude`` not [M] integer rows or naming a key outside 0..N-1;
            ``block_elements`` not an int >= 1.
    """
    values, indices, sums = _cpu_search(queries, keys, k, with_angles, None, exclude, block_elements, threads)
    return values, indices, None if sums is None else sums[:, 0]


def _cpu_search(queries: np.ndarray, keys: np.ndarray, k: int, with_angles: bool, temperature: float | None,
                exclude: np.ndarray | None, block_elements: int, threads: int | None
                ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """The CPU search behind :func:`cpu_block_search` and :func:`self_search`: (values [M, k], rows [M, k], sums).

    ``sums``: the angle sums [M, 1] (``with_angles``), the softmax sums [M, 2] (``temperature``;
    see :class:`TopKBuffer`), or None. Sums of key ranges searched apart are added.
    """
    _check_search(queries, keys, k, exclude, block_elements)
    m, n = queries.shape[0], keys.shape[0]
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    exclude = np.full(m, -1, np.int64) if exclude is None else np.ascontiguousarray(exclude, dtype=np.int64)
    threads = max(1, threads if threads is not None else torch.get_num_threads())
    key_cols = max(1, min(n, CPU_BLOCK_KEYS, block_elements))
    query_rows = max(1, min(m, CPU_BLOCK_QUERIES, block_elements // key_cols))
    query_chunks = [(start, min(start + query_rows, m)) for start in range(0, m, query_rows)]
    key_parts = threads if len(query_chunks) < threads and n >= 8 * key_cols else 1  # few queries: split keys too
    bounds = np.linspace(0, n, key_parts + 1).astype(np.int64)
    tasks = [(q_lo, q_hi, int(bounds[p]), int(bounds[p + 1])) for q_lo, q_hi in query_chunks for p in range(key_parts)]
    local = threading.local()

    def run(task: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
        q_lo, q_hi, k_lo, k_hi = task
        block = getattr(local, "block", None)
        if block is None:
            block = local.block = np.empty((query_rows, key_cols), dtype=np.float32)  # this thread's block
        state = TopKBuffer(q_hi - q_lo, min(k, k_hi - k_lo), with_angles, temperature)
        q, skip = queries[q_lo:q_hi], exclude[q_lo:q_hi]
        for start in range(k_lo, k_hi, key_cols):
            stop = min(start + key_cols, k_hi)
            if stop - start == key_cols:
                sims = block[:q_hi - q_lo]  # [c_q, c_k], C-contiguous
            else:
                sims = np.empty((q_hi - q_lo, stop - start), dtype=np.float32)
            np.matmul(q, keys[start:stop].T, out=sims)
            state.offer(sims, start, skip)
        sums = state.angle_sum[:, None] if state.angle_sum is not None else state.softmax_sums
        return (*state.result(), sums)

    if threads == 1 or len(tasks) == 1:
        results = [run(task) for task in tasks]
    else:
        with _single_threaded_blas():
            results = list(_worker_pool(threads).map(run, tasks))
    values = torch.empty((m, k), dtype=torch.float32)
    indices = torch.empty((m, k), dtype=torch.int64)
    sums = None if results[0][2] is None else np.zeros((m, results[0][2].shape[1]), dtype=np.float64)
    for chunk, (q_lo, q_hi) in enumerate(query_chunks):
        parts = results[chunk * key_parts:(chunk + 1) * key_parts]
        if key_parts == 1:
            values[q_lo:q_hi], indices[q_lo:q_hi] = parts[0][0], parts[0][1]
        else:  # the key ranges searched apart: their top-k lists joined
            values[q_lo:q_hi], indices[q_lo:q_hi] = merge_topk(torch.cat([part[0] for part in parts], dim=1),
                                                               torch.cat([part[1] for part in parts], dim=1), k)
        if sums is not None:
            sums[q_lo:q_hi] = sum(part[2] for part in parts)
    return values, indices, sums


def self_search(bank: np.ndarray, k: int, temperature: float, block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bank against itself in one pass (the round start): softmax entropy and top-k of every row, each row left out.

    For each row i of ``bank`` [N, d] (float32 unit rows, CPU), over the other rows j != i:

    - the entropy (nats) of ``softmax_j(b_i . b_j / tau)``, from two sums accumulated in the
      scan with the fixed shift 1/tau (cosines are <= 1, so every term ``w_j = exp((s_j - 1) / tau)``
      lies in (0, 1] and no running maximum is needed): ``H_i = log Z_i + U_i / (tau Z_i)``,
      ``Z_i = sum_j w_j``, ``U_i = sum_j w_j (1 - s_j)`` (equal to ``log Z - E[logit]``, without
      the cancellation of that form when the distribution is peaked). Each ``w_j`` is computed
      in float32 to ~1e-7 relative (a vectorised 2^x), sums in float64 per row;
    - the k rows with the largest dot products, ties by ascending row (as :func:`cpu_block_search`).

    Every similarity block is computed once and read once: no ``N x N`` matrix; memory
    O(threads x block + N x (k + capacity)).

    Args:
        bank: [N, d] float32 (unit rows for cosines).
        k: neighbours per row (the row itself excluded).
        temperature: tau > 0, at least :data:`MIN_FUSED_TEMPERATURE` (so no term underflows float32).
        block_elements, threads: as :func:`cpu_block_search`.

    Returns:
        (entropy [N] float64 nats, similarities [N, k] descending, rows [N, k] int64).

    Raises:
        ValueError: ``temperature`` below :data:`MIN_FUSED_TEMPERATURE` (use the block-wise
            running-maximum entropy then); k outside 1..N-1; ``bank`` not 2-D, or rows that are not
            finite unit vectors (:func:`check_unit_rows`, counted).
    """
    if not temperature >= MIN_FUSED_TEMPERATURE:
        raise ValueError(f"self_search needs temperature >= {MIN_FUSED_TEMPERATURE} (the fixed shift 1/tau would "
                         f"underflow float32 below it), got {temperature}")
    bank = check_unit_rows(bank, "bank").numpy()
    rows = np.arange(bank.shape[0], dtype=np.int64)
    values, indices, sums = _cpu_search(bank, bank, k, False, temperature, rows, block_elements, threads)
    entropy = np.log(sums[:, 0]) + sums[:, 1] / (temperature * sums[:, 0])
    return torch.from_numpy(entropy), values, indices


@torch.no_grad()
def torch_block_search(queries: torch.Tensor, keys: torch.Tensor, k: int, with_angles: bool,
                       exclude: torch.Tensor | None = None, block_elements: int = DEFAULT_BLOCK_ELEMENTS
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`cpu_block_search` in plain torch ops, on any device (the path used off the CPU).

    ``queries`` [M, d] and ``keys`` [N, d] on one device, used as given. Each block of
    :func:`similarity_blocks` (at most ``block_elements`` similarities) adds its
    ``arccos`` sum (with ``with_angles``) and its ``torch.topk`` candidates, which
    :func:`merge_topk` folds into the running top-k. ``exclude`` [M] leaves one key per
    query out of both.

    Returns:
        (similarities [M, k] descending, key indices [M, k] int64, angle sums [M]
        float64 radians or None), on the queries' device.

    Raises:
        ValueError: as :func:`cpu_block_search`.
    """
    _check_search(queries, keys, k, exclude, block_elements)
    m = queries.shape[0]
    best = torch.full((m, k), float(_EMPTY), device=queries.device)  # top-k so far (below any real cosine)
    best_rows = torch.full((m, k), -1, dtype=torch.long, device=queries.device)
    angle_sum = torch.zeros(m, dtype=torch.float64, device=queries.device) if with_angles else None
    exclude = None if exclude is None else exclude.to(queries.device)
    for q_start, k_start, sims in similarity_blocks(queries, keys, block_elements):
        rows = slice(q_start, q_start + sims.shape[0])
        cells = None if exclude is None else excluded_cells(exclude, rows, k_start, sims.shape[1])
        if angle_sum is not None:
            if cells is not None:
                sims[cells] = 1.0  # arccos(1) = 0: adds nothing to the sum
            angle_sum[rows] += torch.arccos(sims.clamp(-1.0, 1.0)).sum(dim=1, dtype=torch.float64)
        if cells is not None:
            sims[cells] = float(_EXCLUDED)  # below every cosine: never among the top-k
        values, cols = sims.topk(min(k, sims.shape[1]), dim=1)  # [c_q, <= k]
        best[rows], best_rows[rows] = merge_topk(torch.cat([best[rows], values], dim=1),
                                                 torch.cat([best_rows[rows], cols + k_start], dim=1), k)
    return best, best_rows, angle_sum


def block_search(queries: torch.Tensor, keys: torch.Tensor, k: int, with_angles: bool,
                 exclude: torch.Tensor | None = None, block_elements: int = DEFAULT_BLOCK_ELEMENTS
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Exact top-k (and Eq. 4's angle sums) of float32 rows: :func:`cpu_block_search` on the CPU, else torch.

    Args:
        queries: [M, d] float32 (unit rows for cosines), on the device the search runs on.
        keys: [N, d] float32, on the same device.
        k: neighbours per query.
        with_angles: also return ``sum_j arccos(clamp(q . k_j))`` over the N keys.
        exclude: optional [M] key row per query to leave out of both.
        block_elements: the most similarities held in one block.

    Returns:
        (similarities [M, k] descending, key rows [M, k] int64, angle sums [M] float64
        radians or None).

    Raises:
        ValueError: as :func:`cpu_block_search`.
    """
    queries, keys = torch.as_tensor(queries), torch.as_tensor(keys)
    exclude = None if exclude is None else torch.as_tensor(exclude)
    if queries.device.type == "cpu":
        skip = None if exclude is None else exclude.cpu().numpy()
        values, rows, angles = cpu_block_search(queries.detach().numpy(), keys.detach().numpy(), k, with_angles, skip,
                                                block_elements)
        return values, rows, None if angles is None else torch.from_numpy(angles)
    return torch_block_search(queries, keys, k, with_angles, exclude, block_elements)


@torch.no_grad()
def cosine_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k: for each query [M, d] the k most similar rows of ``keys`` [N, d].

    Memory stays O(block_elements + M k). ``exclude`` ([M] key rows) removes one key per
    query (e.g. the query itself). Equal similarities rank by ascending key row on the
    CPU. Runs on the queries' device.

    Returns:
        (cosine similarities [M, k] descending, key rows [M, k] int64).

    Raises:
        ValueError: a zero-norm, NaN or inf row in ``queries`` or ``keys`` (counted);
            another d; k outside 1..N (1..N-1 with ``exclude``); a bad ``exclude``.
    """
    q = unit_rows(queries, "queries")  # [M, d]
    keys_n = unit_rows(keys, "keys").to(q.device)  # [N, d]
    values, rows, _ = block_search(q, keys_n, k, False, exclude, block_elements)
    return values, rows
