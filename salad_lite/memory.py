"""Memory bank: one unit vector per training image, updated by momentum, searched by cosine.

The bank is an ``nn.Module`` whose rows live in a registered buffer, so it moves
with ``.to(device)`` and is saved in the model's state dict (moco's queue is the
model). Its searches go through :mod:`salad_lite.knn`, block by block: no
``N x N`` matrix is ever built in one piece. A round start (:meth:`MemoryBank.round_start`:
the entropies and the neighbourhoods together) reads each block of similarities once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from salad_lite.knn import (DEFAULT_BLOCK_ELEMENTS, MIN_FUSED_TEMPERATURE, check_latents, check_unit_rows, cosine_topk,
                            excluded_cells, self_search, similarity_blocks)
from salad_lite.utils import is_int, is_number


class MemoryBank(nn.Module):
    """``N x d`` unit vectors; row ``i`` belongs to training sample ``i``.

    Args:
        size: N, the number of training samples.
        dim: d, the latent dimension.
        seed: seeds the random unit-vector initialisation (paper: random init).

    Raises:
        ValueError: size not an int >= 2, dim not an int >= 1, or seed not an int >= 0 (bools refused).
    """

    bank: torch.Tensor

    def __init__(self, size: int, dim: int = 200, seed: int = 0) -> None:
        super().__init__()
        if not (is_int(size) and size >= 2 and is_int(dim) and dim >= 1):
            raise ValueError(f"memory bank needs ints size >= 2 and dim >= 1, got size={size!r}, dim={dim!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"memory bank seed must be an int >= 0, got {seed!r}")
        generator = torch.Generator().manual_seed(seed)
        initial = torch.randn(size, dim, generator=generator)  # [N, d]
        self.register_buffer("bank", F.normalize(initial, dim=1))

    def check(self, name: str = "memory bank") -> None:
        """Refuse a bank whose rows are not finite unit vectors (a damaged or hand-made state), counted.

        Raises:
            ValueError: from :func:`salad_lite.knn.check_unit_rows`, naming ``name``.
        """
        check_unit_rows(self.bank, name)

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    @torch.no_grad()
    def update(self, indices: torch.Tensor, z: torch.Tensor, momentum: float = 0.5) -> None:
        """``m_i <- normalise((1 - t) m_i + t z_i)`` for the rows ``indices`` [B] with latents ``z`` [B, d], t = momentum.

        Raises:
            ValueError: momentum not a number in (0, 1]; ``z`` not [B, d] or ``indices`` not [B]; indices that are
                not integers, lie outside 0..N-1 (a negative index would wrap to the end) or repeat (only
                one of a repeated row's latents would land); a complex, NaN, inf or zero-norm row of ``z``
                (counted: a zero latent has no direction to pull towards); a mixture that comes out as
                a zero vector (``z_i`` opposite to ``m_i``, counted), which would leave a row with no direction.
        """
        if not is_number(momentum) or not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum t must be a number in (0, 1] (as train.memory_momentum), got {momentum!r}")
        indices, z = torch.as_tensor(indices), torch.as_tensor(z)
        if z.ndim != 2 or z.shape[1] != self.dim or indices.shape != (z.shape[0],):
            raise ValueError(f"update expects z [B, {self.dim}] and indices [B], got {tuple(z.shape)} and {tuple(indices.shape)}")
        if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"indices must be integer memory rows, got dtype {indices.dtype}")
        if len(indices) and not (0 <= int(indices.min()) and int(indices.max()) < self.size):
            raise ValueError(f"indices must be memory rows in 0..{self.size - 1}, got {int(indices.min())}.."
                             f"{int(indices.max())}")
        if len(torch.unique(indices)) != len(indices):
            raise ValueError(f"indices repeat {len(indices) - len(torch.unique(indices))} row(s): each row takes one "
                             "latent per update")
        check_latents(z.detach(), "z (memory update)")
        indices = indices.to(self.bank.device)
        mixed = (1.0 - momentum) * self.bank[indices] + momentum * z.detach().to(self.bank.dtype)  # [B, d]
        check_latents(mixed, f"the momentum mixture (1 - {momentum}) m + {momentum} z")
        self.bank[indices] = F.normalize(mixed, dim=1)

    @torch.no_grad()
    def neighbours_of_entries(self, k: int, include_self: bool = True,
                              block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> torch.Tensor:
        """Top-k memory neighbours of every memory entry: [N, k] int64 indices, nearest first.

        With ``include_self`` the entry itself is its first neighbour (cosine 1).

        Raises:
            ValueError: k not an int in 1..N (1..N-1 without ``include_self``); bank rows that are not
                finite unit vectors (:meth:`check`).
        """
        if not is_int(k):
            raise ValueError(f"k must be an int, got {k!r}")
        self.check()
        rows = torch.arange(self.size, device=self.bank.device)
        if include_self:
            if not 1 <= k <= self.size:
                raise ValueError(f"k must lie in 1..{self.size} (the entry itself and the others), got k={k}")
            if k == 1:
                return rows[:, None]
            _, others = cosine_topk(self.bank, self.bank, k - 1, exclude=rows, block_elements=block_elements)
            return torch.cat([rows[:, None], others], dim=1)  # [N, k]
        _, others = cosine_topk(self.bank, self.bank, k, exclude=rows, block_elements=block_elements)
        return others

    @torch.no_grad()
    def entropy(self, temperature: float = 0.1, block_elements: int | None = None) -> torch.Tensor:
        """Entropy (nats) of each entry's softmax over the other entries, ``softmax_j(m_i . m_j / tau), j != i``: [N].

        Low entropy = a confident, "prototypical" sample. Computed block by block
        with a running log-sum-exp, so no N x N matrix is built.

        Raises:
            ValueError: temperature not a number > 0; bank rows that are not finite unit vectors (:meth:`check`).
        """
        if not is_number(temperature) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.check()
        bank = self.bank.float()
        n = self.size
        itself = torch.arange(n, device=bank.device)  # [N]: each entry leaves itself out
        running_max = torch.full((n,), float("-inf"), device=bank.device)
        sum_exp = torch.zeros(n, device=bank.device)  # sum_j exp(l_j - max)
        sum_exp_logit = torch.zeros(n, device=bank.device)  # sum_j exp(l_j - max) * l_j
        for q_start, k_start, sims in similarity_blocks(bank, bank, block_elements or DEFAULT_BLOCK_ELEMENTS):
            logits = sims / temperature  # [c_q, c_k]
            rows = slice(q_start, q_start + logits.shape[0])
            logits[excluded_cells(itself, rows, k_start, logits.shape[1])] = float("-inf")  # leave out j == i
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

    @torch.no_grad()
    def round_start(self, k: int, temperature: float, include_self: bool = True,
                    block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
        """What a training round starts from: ``(entropy(temperature) [N] float32, neighbours_of_entries(k) [N, k])``.

        On the CPU with ``temperature >= MIN_FUSED_TEMPERATURE`` (0.025) both come from one pass
        over the ``N x N`` similarities (:func:`salad_lite.knn.self_search`): entropies equal
        :meth:`entropy`'s to ~1e-6 relative, neighbours are identical. Elsewhere (CUDA, or a
        smaller tau) it calls :meth:`entropy` and :meth:`neighbours_of_entries`. Memory O(N k).

        Raises:
            ValueError: temperature not a number > 0; k not an int in 1..N (1..N-1 without ``include_self``);
                bank rows that are not finite unit vectors (:meth:`check`).
        """
        if not is_number(temperature) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if not is_int(k):
            raise ValueError(f"k must be an int, got {k!r}")
        self.check()
        others = k - 1 if include_self else k
        low, high = (1, self.size) if include_self else (1, self.size - 1)
        if not low <= k <= high:
            raise ValueError(f"k must lie in {low}..{high} ({'the entry itself and ' if include_self else ''}"
                             f"the others), got k={k}")
        if self.bank.device.type != "cpu" or temperature < MIN_FUSED_TEMPERATURE:
            return (self.entropy(temperature, block_elements),
                    self.neighbours_of_entries(k, include_self, block_elements))
        entropy, _, rows = self_search(self.bank.float().numpy(), max(others, 1), temperature, block_elements)
        neighbours = rows[:, :others]  # [N, k - 1] or [N, k]
        if include_self:
            neighbours = torch.cat([torch.arange(self.size)[:, None], neighbours], dim=1)
        return entropy.float(), neighbours
