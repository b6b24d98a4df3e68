"""Memory bank: one unit vector per training image, updated by momentum, searched by cosine.

The bank is an ``nn.Module`` whose rows live in a registered buffer, so it moves
with ``.to(device)`` and is saved in the model's state dict (moco's queue is the
model). Every search is chunked: no ``N x N`` (or ``M x N`` for large M) matrix is
ever built in one piece.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


@torch.no_grad()
def cosine_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int | None = None,
                exclude: torch.Tensor | None = None,
                block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked exact cosine top-k: for each query [M, d] the k most similar rows of ``keys`` [N, d].

    Memory stays O(block_elements + M k). ``exclude`` ([M] key indices) removes one
    key per query (e.g. the query itself). ``chunk_size``, if given, caps the
    block at ``chunk_size`` query rows x all keys.
    Returns (cosine similarities [M, k] descending, indices [M, k] int64).
    """
    n = keys.shape[0] - (1 if exclude is not None else 0)
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in 1..{n} (the number of candidate bank rows), got k={k}")
    if chunk_size is not None:
        block_elements = min(block_elements, max(chunk_size, 1) * keys.shape[0])
    q = F.normalize(queries.float(), dim=1)  # [M, d]
    keys_n = F.normalize(keys.float(), dim=1)  # [N, d]
    m = q.shape[0]
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
