"""Memory bank: one unit vector per training image, updated by momentum, searched by cosine.

The bank is an ``nn.Module`` whose rows live in a registered buffer, so it moves
with ``.to(device)`` and is saved in the model's state dict (moco's queue is the
model). Every search is chunked: no ``N x N`` (or ``M x N`` for large M) matrix is
ever built in one piece.

On the CPU the exact top-k (and Eq. 4's sum of angles, see ``salad_lite.scorer``)
runs through small numba kernels that read each cache-sized block of similarities
once (:func:`cpu_block_search`, :class:`TopKBuffer`); elsewhere plain torch ops do
the same block by block. Inputs should be finite: a NaN similarity never enters a top-k.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController
from torch import nn


class MemoryBank(nn.Module):
    """``N x d`` unit vectors; row ``i`` belongs to training sample ``i``.

    Args:
        size: N, the number of training samples.
        dim: d, the latent dimension.
        seed: seeds the random unit-vector initialisation (paper: random init).
    """

    bank: torch.Tensor

    def __init__(self, size: int, dim: int = 200, seed: int = 0) -> None:
        super().__init__()
        if size < 2 or dim < 1:
            raise ValueError(f"memory bank needs size >= 2 and dim >= 1, got size={size}, dim={dim}")
        generator = torch.Generator().manual_seed(seed)
        initial = torch.randn(size, dim, generator=generator)  # [N, d]
        self.register_buffer("bank", F.normalize(initial, dim=1))

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, z: torch.Tensor, momentum: float = 0.5) -> None:
        """``m_i <- normalise((1 - t) m_i + t z_i)`` for the rows ``indices`` [B] with latents ``z`` [B, d]."""
        if z.ndim != 2 or z.shape[1] != self.dim or z.shape[0] != indices.shape[0]:
            raise ValueError(f"update expects z [B, {self.dim}] and indices [B], got {tuple(z.shape)} and {tuple(indices.shape)}")
        indices = indices.to(self.bank.device)
        mixed = (1.0 - momentum) * self.bank[indices] + momentum * z.detach().to(self.bank.dtype)  # [B, d]
        self.bank[indices] = F.normalize(mixed, dim=1)

    @torch.no_grad()
    def set_rows(self, indices: torch.Tensor, z: torch.Tensor) -> None:
        """Overwrite rows with normalised ``z`` [B, d] (used to fill the bank from a trained encoder)."""
        self.bank[indices.to(self.bank.device)] = F.normalize(z.detach().to(self.bank.dtype), dim=1)

    @torch.no_grad()
    def topk(self, queries: torch.Tensor, k: int, chunk_size: int = 4096,
             exclude_self: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-k of each query among the bank rows.

        Args:
            queries: [M, d] (need not be normalised; cosine is used).
            k: neighbours per query, 1 <= k <= N (minus one when excluding self).
            chunk_size: bank rows per chunk.
            exclude_self: optional [M] bank row index per query to leave out.
        Returns:
            (similarities [M, k] descending, indices [M, k] int64).
        """
        return cosine_topk(queries, self.bank, k, chunk_size=chunk_size, exclude=exclude_self)

    @torch.no_grad()
    def neighbours_of_entries(self, k: int, chunk_size: int = 4096, include_self: bool = True) -> torch.Tensor:
        """Top-k memory neighbours of every memory entry: [N, k] int64 indices, nearest first.

        With ``include_self`` the entry itself is its first neighbour (cosine 1).
        """
        rows = torch.arange(self.size, device=self.bank.device)
        if include_self:
            if k == 1:
                return rows[:, None]
            _, others = cosine_topk(self.bank, self.bank, k - 1, chunk_size, exclude=rows)
            return torch.cat([rows[:, None], others], dim=1)  # [N, k]
        _, others = cosine_topk(self.bank, self.bank, k, chunk_size, exclude=rows)
        return others

    @torch.no_grad()
    def entropy(self, temperature: float = 0.1, block_elements: int | None = None) -> torch.Tensor:
        """Entropy (nats) of each entry's softmax over the other entries, ``softmax_j(m_i . m_j / tau), j != i``: [N].

        Low entropy = a confident, "prototypical" sample. Computed block by block
        with a running log-sum-exp, so no N x N matrix is built.
        """
        bank = self.bank.float()
        n = self.size
        running_max = torch.full((n,), float("-inf"), device=bank.device)
        sum_exp = torch.zeros(n, device=bank.device)  # sum_j exp(l_j - max)
        sum_exp_logit = torch.zeros(n, device=bank.device)  # sum_j exp(l_j - max) * l_j
        for q_start, k_start, sims in similarity_blocks(bank, bank, block_elements or DEFAULT_BLOCK_ELEMENTS):
            logits = sims / temperature  # [c_q, c_k]
            rows = torch.arange(q_start, q_start + logits.shape[0], device=bank.device)
            local = rows - k_start
            hit = (local >= 0) & (local < logits.shape[1])
            logits[hit.nonzero(as_tuple=True)[0], local[hit]] = float("-inf")  # leave out j == i
            new_max = torch.maximum(running_max[rows], logits.max(dim=1).values)
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            rescale = torch.exp(running_max[rows] - safe_max)  # 0 while nothing was seen yet
            weights = torch.exp(logits - safe_max[:, None])
            sum_exp[rows] = sum_exp[rows] * rescale + weights.sum(dim=1)
            finite_logits = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
            sum_exp_logit[rows] = sum_exp_logit[rows] * rescale + (weights * finite_logits).sum(dim=1)
            running_max[rows] = new_max
        log_partition = running_max + torch.log(sum_exp)
        return log_partition - sum_exp_logit / sum_exp


DEFAULT_BLOCK_ELEMENTS = 1 << 24  # similarities held at once: 16M floats = 64 MB

# CPU block shape of the fused search: 256 x 512 float32 similarities (512 KB) stay in a
# core's L2 cache between the matrix product that writes them and the scan that reads them
# (tuned on a 2-core AMD EPYC with 1 MB L2 per core; 128 x 1024 and 256 x 768 are close).
CPU_BLOCK_QUERIES = 256
CPU_BLOCK_KEYS = 512


def similarity_blocks(queries: torch.Tensor, keys: torch.Tensor, block_elements: int = DEFAULT_BLOCK_ELEMENTS):
    """Yield ``(query_start, key_start, sims)`` blocks of the ``[M, N]`` dot-product matrix.

    ``queries`` [M, d] and ``keys`` [N, d] are used as given (normalise them first for
    cosines). Each block holds at most ``block_elements`` similarities, so neither
    an ``M x N`` nor an ``N x N`` matrix is ever built when N is large. Blocks
    arrive key-chunk by key-chunk for each query chunk.
    """
    m, n = queries.shape[0], keys.shape[0]
    key_chunk = max(1, min(n, block_elements // max(1, min(m, 1024))))
    query_chunk = max(1, min(m, block_elements // key_chunk))
    for q_start in range(0, m, query_chunk):
        q = queries[q_start:q_start + query_chunk]
        for k_start in range(0, n, key_chunk):
            yield q_start, k_start, q @ keys[k_start:k_start + key_chunk].T  # [c_q, c_k]


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


@numba.njit(nogil=True, cache=True)
def _finish_rows(values, indices, filled, k):  # pragma: no cover - compiled
    """Cut every row's buffer to its k best (front of the row, unordered)."""
    for r in range(values.shape[0]):
        if filled[r] > k:
            _select_best(values[r], indices[r], filled[r], k)
            filled[r] = k


class TopKBuffer:
    """Running exact top-k (and optionally sum of arccos) of ``rows`` queries over key blocks, on the CPU.

    Memory: ``rows x (k + capacity)`` float32 values and int64 indices.
    """

    def __init__(self, rows: int, k: int, with_angles: bool) -> None:
        capacity = k + max(2 * k, 256)
        self.k = k
        self.values = np.full((rows, capacity), _EMPTY, dtype=np.float32)  # [R, k + cap]
        self.indices = np.full((rows, capacity), -1, dtype=np.int64)  # [R, k + cap]
        self.filled = np.zeros(rows, dtype=np.int64)
        self.thresholds = np.full(rows, _EMPTY, dtype=np.float32)  # k-th best so far (once k are seen)
        self.angle_sum = np.zeros(rows, dtype=np.float64) if with_angles else None  # radians

    def offer(self, sims: np.ndarray, key_offset: int, exclude: np.ndarray) -> None:
        """Scan a C-contiguous float32 block ``sims`` [R, C] of keys ``key_offset..+C``.

        ``exclude`` [R] int64: the global key index each row leaves out, -1 for none (``sims``
        is overwritten there).
        """
        if self.angle_sum is not None:
            _scan_block_with_angles(sims, key_offset, self.k, exclude, self.angle_sum, self.values, self.indices,
                                    self.filled, self.thresholds)
        else:
            _scan_block(sims, key_offset, self.k, exclude, self.values, self.indices, self.filled, self.thresholds)

    def finish(self) -> None:
        _finish_rows(self.values, self.indices, self.filled, self.k)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarities [R, k] descending, key indices [R, k] int64); ties in ascending key order."""
        self.finish()
        return _ranked(self.values[:, :self.k], self.indices[:, :self.k])


def _ranked(values: np.ndarray, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row of ``values`` [R, k] (with ``indices``) by descending value, ties by ascending index."""
    values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    indices = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
    order = indices.argsort(dim=1)  # ascending key index ...
    values, indices = values.gather(1, order), indices.gather(1, order)
    order = values.sort(dim=1, descending=True, stable=True).indices  # ... kept among equal values
    return values.gather(1, order), indices.gather(1, order)


def _merge_ranked(parts: list[tuple[torch.Tensor, torch.Tensor]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of the same rows' top-k lists over disjoint key ranges: (values [R, k], indices [R, k])."""
    values = torch.cat([part[0] for part in parts], dim=1).numpy().copy()  # [R, parts k]
    indices = torch.cat([part[1] for part in parts], dim=1).numpy().copy()
    _finish_rows(values, indices, np.full(values.shape[0], values.shape[1], dtype=np.int64), k)
    return _ranked(values[:, :k], indices[:, :k])


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
    N keys (float64 radians, each term to float32 precision). ``exclude`` [M] leaves one key
    per query out of both. Blocks of at most ``min(block_elements, 256 x 512)``
    similarities are computed by the BLAS (one thread each) and scanned at once, by
    ``threads`` worker threads (default: ``torch.get_num_threads()``) taking query
    chunks (and key ranges when there are few queries). Memory: O(threads x block +
    M x (k + capacity)).

    Returns (similarities [M, k] descending, key indices [M, k] int64, angle sums [M] or None).
    """
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
        state = TopKBuffer(q_hi - q_lo, min(k, k_hi - k_lo), with_angles)
        q, skip = queries[q_lo:q_hi], exclude[q_lo:q_hi]
        for start in range(k_lo, k_hi, key_cols):
            stop = min(start + key_cols, k_hi)
            if stop - start == key_cols:
                sims = block[:q_hi - q_lo]  # [c_q, c_k], C-contiguous
            else:
                sims = np.empty((q_hi - q_lo, stop - start), dtype=np.float32)
            np.matmul(q, keys[start:stop].T, out=sims)
            state.offer(sims, start, skip)
        return (*state.result(), state.angle_sum)

    if threads == 1 or len(tasks) == 1:
        results = [run(task) for task in tasks]
    else:
        with _single_threaded_blas():
            results = list(_worker_pool(threads).map(run, tasks))
    values = torch.empty((m, k), dtype=torch.float32)
    indices = torch.empty((m, k), dtype=torch.int64)
    angle_sum = np.zeros(m, dtype=np.float64) if with_angles else None
    for chunk, (q_lo, q_hi) in enumerate(query_chunks):
        parts = results[chunk * key_parts:(chunk + 1) * key_parts]
        if key_parts == 1:
            values[q_lo:q_hi], indices[q_lo:q_hi] = parts[0][0], parts[0][1]
        else:
            values[q_lo:q_hi], indices[q_lo:q_hi] = _merge_ranked([(v, i) for v, i, _ in parts], k)
        if with_angles:
            angle_sum[q_lo:q_hi] = sum(part[2] for part in parts)
    return values, indices, angle_sum


@torch.no_grad()
def cosine_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int | None = None,
                exclude: torch.Tensor | None = None,
                block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked exact cosine top-k: for each query [M, d] the k most similar rows of ``keys`` [N, d].

    Memory stays O(block_elements + M k). ``exclude`` ([M] key indices) removes one
    key per query (e.g. the query itself). ``chunk_size``, if given, caps the
    block at ``chunk_size`` query rows x all keys. Equal similarities are ranked by
    ascending key index on the CPU.
    Returns (cosine similarities [M, k] descending, indices [M, k] int64).
    """
    n = keys.shape[0] - (1 if exclude is not None else 0)
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..{n} (the number of candidate bank rows), got k={k}")
    if chunk_size is not None:
        block_elements = min(block_elements, max(chunk_size, 1) * keys.shape[0])
    q = F.normalize(queries.float(), dim=1)  # [M, d]
    keys_n = F.normalize(keys.float().to(q.device), dim=1)  # [N, d]
    m = q.shape[0]
    if q.device.type == "cpu":
        best_sims = torch.empty((m, k), dtype=torch.float32)
        best_idx = torch.empty((m, k), dtype=torch.int64)
        skip = np.full(m, -1, np.int64) if exclude is None else exclude.cpu().numpy().astype(np.int64)
        state, rows = None, slice(0, 0)
        for q_start, k_start, sims in similarity_blocks(q, keys_n, block_elements):
            if state is None or q_start != rows.start:  # a new query chunk: finish the previous one
                if state is not None:
                    best_sims[rows], best_idx[rows] = state.result()
                rows = slice(q_start, q_start + sims.shape[0])
                state = TopKBuffer(sims.shape[0], k, with_angles=False)
            state.offer(np.ascontiguousarray(sims.numpy()), k_start, skip[rows])
        best_sims[rows], best_idx[rows] = state.result()
        return best_sims, best_idx
    best_sims = torch.full((m, k), float("-inf"), device=q.device)
    best_idx = torch.zeros((m, k), dtype=torch.long, device=q.device)
    for q_start, k_start, sims in similarity_blocks(q, keys_n, block_elements):
        rows = slice(q_start, q_start + sims.shape[0])
        if exclude is not None:
            local = exclude[rows].to(sims.device) - k_start  # [c_q]
            hit = (local >= 0) & (local < sims.shape[1])
            sims[hit.nonzero(as_tuple=True)[0], local[hit]] = float("-inf")
        take = min(k, sims.shape[1])
        values, indices = sims.topk(take, dim=1)  # [c_q, take]
        merged_vals = torch.cat([best_sims[rows], values], dim=1)
        merged_idx = torch.cat([best_idx[rows], indices + k_start], dim=1)
        order = merged_vals.topk(k, dim=1).indices
        best_sims[rows] = merged_vals.gather(1, order)
        best_idx[rows] = merged_idx.gather(1, order)
    return best_sims, best_idx
