"""Anomaly scoring against the memory bank (Eq. 4), PyOD style: higher = more abnormal.

Eq. 4 of the paper, for a query latent z_i and bank rows m_1..m_N:

    A(x_i) = (1/K) sum_{k in K nearest} w_ik,
    w_ik   = arccos(d(z_i, m_k)) / sum_{j=1..N} arccos(d(z_i, m_j)),

with d the cosine similarity, clamped into [-1, 1] before arccos (rounding can
push it past 1 and arccos would return NaN). ``rule="code"`` gives the authors'
code's score instead: the mean of the K smallest angles divided by pi.

Both the top-K search and the sum over all N entries are computed block by block,
so memory stays bounded for N up to 10^6 and beyond.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from salad_lite.config import ScoreConfig, ScoreRule
from salad_lite.memory import DEFAULT_BLOCK_ELEMENTS, cpu_block_search, similarity_blocks

ArrayLike = torch.Tensor | np.ndarray


def _as_tensor(values: ArrayLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).float()
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, d], got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
        raise ValueError(f"{name} has {bad} row(s) with NaN or inf")
    return tensor


@torch.no_grad()
def eq4_scores(queries: torch.Tensor, bank: torch.Tensor, k: int, rule: ScoreRule = "paper",
               block_elements: int = DEFAULT_BLOCK_ELEMENTS,
               exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Anomaly scores [M] of queries [M, d] against bank [N, d] (both normalised here).

    ``exclude`` ([M] bank row per query, optional) leaves one bank row out per
    query (leave-one-out scores of the bank itself).
    """
    return eq4_search(queries, bank, k, rule, block_elements, exclude)[0]


@torch.no_grad()
def eq4_search(queries: torch.Tensor, bank: torch.Tensor, k: int, rule: ScoreRule = "paper",
               block_elements: int = DEFAULT_BLOCK_ELEMENTS, exclude: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4 scores and the neighbours they use: (scores [M], cosines [M, K] descending, bank rows [M, K]).

    On the CPU one pass over each block of similarities yields both the top-K and the
    sum of arccos over all N rows (see :func:`salad_lite.memory.cpu_block_search`);
    equal cosines rank by ascending bank row. Elsewhere (CUDA) torch ops do the same
    block by block. Memory stays bounded for any N.
    """
    if rule not in ("paper", "code"):
        raise ValueError(f"unknown score rule {rule!r}; choose paper or code")
    n = bank.shape[0] - (1 if exclude is not None else 0)
    if not 1 <= k <= n:
        raise ValueError(f"K must lie in 1..{n}, got {k}")
    q = F.normalize(queries.float(), dim=1)  # [M, d]
    keys = F.normalize(bank.float().to(q.device), dim=1)  # [N, d]
    if q.device.type == "cpu":
        skip = None if exclude is None else exclude.cpu().numpy()
        best, rows, angle_sum = cpu_block_search(q.numpy(), keys.numpy(), k, rule == "paper", skip, block_elements)
        angle_sum_t = None if angle_sum is None else torch.from_numpy(angle_sum)  # [M] float64, radians
    else:
        best, rows, angle_sum_t = _eq4_search_torch(q, keys, k, rule, block_elements, exclude)
    nearest_angles = torch.arccos(best.double().clamp(-1.0, 1.0))  # [M, K], radians
    if rule == "paper":
        # a query identical to every bank row has all angles 0: define its score as 0, not 0/0
        angle_sum_t = angle_sum_t.to(nearest_angles.device)
        safe_sum = torch.where(angle_sum_t > 0, angle_sum_t, torch.ones_like(angle_sum_t))
        scores = nearest_angles.sum(dim=1) / safe_sum / k
    else:
        scores = nearest_angles.mean(dim=1) / math.pi
    return scores.float(), best, rows


def _eq4_search_torch(q: torch.Tensor, keys: torch.Tensor, k: int, rule: ScoreRule, block_elements: int,
                      exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The device-agnostic path of :func:`eq4_search` (used off the CPU): top-K and angle sums in torch."""
    m = q.shape[0]
    best = torch.full((m, k), -3.0, device=q.device)  # top-K cosines so far (below any real cosine)
    best_rows = torch.full((m, k), -1, dtype=torch.long, device=q.device)
    angle_sum = torch.zeros(m, dtype=torch.float64, device=q.device) if rule == "paper" else None
    for q_start, k_start, sims in similarity_blocks(q, keys, block_elements):
        rows = slice(q_start, q_start + sims.shape[0])
        if exclude is not None:
            local = exclude[rows].to(sims.device) - k_start
            hit = (local >= 0) & (local < sims.shape[1])
            hit_rows, hit_cols = hit.nonzero(as_tuple=True)[0], local[hit]
            sims[hit_rows, hit_cols] = 1.0  # arccos 0: adds nothing to the sum; masked below for the top-K
        if angle_sum is not None:
            angle_sum[rows] += torch.arccos(sims.clamp(-1.0, 1.0)).sum(dim=1, dtype=torch.float64)
        if exclude is not None:
            sims[hit_rows, hit_cols] = -2.0  # below every cosine: never among the top-K
        values, cols = sims.topk(min(k, sims.shape[1]), dim=1)
        merged = torch.cat([best[rows], values], dim=1)
        merged_rows = torch.cat([best_rows[rows], cols + k_start], dim=1)
        order = merged.topk(k, dim=1).indices
        best[rows], best_rows[rows] = merged.gather(1, order), merged_rows.gather(1, order)
    return best, best_rows, angle_sum


class SaladScorer:
    """Memory-bank anomaly scorer with the PyOD interface.

    Args:
        k: K, the number of nearest bank entries (paper: 100). A K larger than
            the fitted bank is clamped to the bank size with a warning.
        discard_anomalous: drop bank rows whose training label is abnormal (1)
            before scoring (paper); needs ``labels`` in :meth:`fit`.
        rule: ``"paper"`` (Eq. 4) or ``"code"`` (mean of K smallest angles / pi).
        contamination: share of the bank's own leave-one-out scores above the
            default threshold used by :meth:`predict` (PyOD convention).
        device: where scoring runs (default: the bank's device).
    """

    def __init__(self, k: int = 100, discard_anomalous: bool = True, rule: ScoreRule = "paper",
                 contamination: float = 0.1, block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                 device: str | torch.device | None = None) -> None:
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        if not 0.0 < contamination < 0.5:
            raise ValueError(f"contamination must lie in (0, 0.5), got {contamination}")
        self.k = k
        self.discard_anomalous = discard_anomalous
        self.rule = rule
        self.contamination = contamination
        self.block_elements = block_elements
        self.device = device

    @classmethod
    def from_config(cls, cfg: ScoreConfig, **overrides) -> "SaladScorer":
        kwargs = {"k": cfg.k, "discard_anomalous": cfg.discard_anomalous, "rule": cfg.rule}
        kwargs.update(overrides)
        return cls(**kwargs)

    def fit(self, bank: ArrayLike, labels: ArrayLike | None = None) -> "SaladScorer":
        """Store the bank [N, d] (normalised), optionally without its abnormal rows.

        Sets ``bank_`` [N', d], ``k_`` (the K in use), ``kept_rows_`` and ``threshold_``.
        """
        bank_t = _as_tensor(bank, "bank")
        device = torch.device(self.device) if self.device is not None else bank_t.device
        keep = torch.ones(bank_t.shape[0], dtype=torch.bool)
        if self.discard_anomalous:
            if labels is None:
                raise ValueError("discard_anomalous=True needs the training labels: fit(bank, labels)")
            labels_t = torch.tensor(np.asarray(labels)).view(-1)  # a copy: read-only label arrays are fine
            if labels_t.shape[0] != bank_t.shape[0]:
                raise ValueError(f"labels has {labels_t.shape[0]} entries but the bank has {bank_t.shape[0]} rows")
            keep = labels_t.cpu() == 0
            if not bool(keep.any()):
                raise ValueError("every bank row is labelled abnormal: nothing is left to score against")
        self.kept_rows_ = keep.nonzero(as_tuple=True)[0]
        self.bank_ = F.normalize(bank_t[keep].to(device), dim=1)
        n = self.bank_.shape[0]
        if n < 2:
            raise ValueError(f"the bank needs at least 2 rows to score, got {n}")
        self.k_ = self.k
        if self.k > n - 1:
            warnings.warn(f"K={self.k} exceeds the {n} bank rows left; using K={n - 1}", stacklevel=2)
            self.k_ = n - 1
        self.threshold_ = self._default_threshold()
        return self

    def _default_threshold(self, max_rows: int = 256) -> float:
        """(1 - contamination) quantile of leave-one-out scores of (up to max_rows of) the bank."""
        n = self.bank_.shape[0]
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_rows].to(self.bank_.device)
        scores = eq4_scores(self.bank_[rows], self.bank_, self.k_, self.rule, self.block_elements, exclude=rows)
        return float(torch.quantile(scores, 1.0 - self.contamination))

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise RuntimeError("SaladScorer is not fitted: call fit(bank, labels) first")

    def decision_function(self, z: ArrayLike) -> np.ndarray:
        """Anomaly scores [M] of latents ``z`` [M, d] (or [d]); higher = more abnormal."""
        self._check_fitted()
        z_t = torch.as_tensor(z)
        if z_t.ndim == 1:
            z_t = z_t[None]  # a single query: [1, d]
        z_t = _as_tensor(z_t, "z").to(self.bank_.device)
        if z_t.shape[1] != self.bank_.shape[1]:
            raise ValueError(f"z has dimension {z_t.shape[1]} but the bank has {self.bank_.shape[1]}")
        return eq4_scores(z_t, self.bank_, self.k_, self.rule, self.block_elements).cpu().numpy()

    def set_threshold(self, z_val: ArrayLike, y_val: ArrayLike) -> float:
        """Choose ``threshold_`` on a VALIDATION split by Youden's J (max TPR - FPR); returns it."""
        from sklearn.metrics import roc_curve

        scores = self.decision_function(z_val)
        fpr, tpr, thresholds = roc_curve(np.asarray(y_val), scores)
        best = int(np.argmax(tpr - fpr))
        self.threshold_ = float(min(thresholds[best], np.finfo(np.float32).max))
        return self.threshold_

    def predict(self, z: ArrayLike) -> np.ndarray:
        """Binary labels [M] (1 = abnormal): score above ``threshold_``."""
        return (self.decision_function(z) >= self.threshold_).astype(np.int64)


def min_max_normalise(scores: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Map scores to [0, 1] using the min and max of ``reference`` (default: the scores); order is kept."""
    reference = scores if reference is None else reference
    low, high = float(np.min(reference)), float(np.max(reference))
    if high <= low:
        return np.zeros_like(scores, dtype=np.float64)
    return np.clip((scores - low) / (high - low), 0.0, 1.0)
