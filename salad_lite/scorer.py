"""Anomaly scoring against the memory bank (Eq. 4), PyOD style: higher = more abnormal.

Eq. 4 of the paper, for a query latent z_i and bank rows m_1..m_N:

    A(x_i) = (1/K) sum_{k in K nearest} w_ik,
    w_ik   = arccos(d(z_i, m_k)) / sum_{j=1..N} arccos(d(z_i, m_j)),

with d the cosine similarity, clamped into [-1, 1] before arccos (rounding can
push it past 1 and arccos would return NaN). ``rule="code"`` gives the authors'
code's score instead: the mean of the K smallest angles divided by pi.

The search (the K nearest rows and the sum over all N rows) is
:func:`salad_lite.knn.block_search`, block by block, so memory stays bounded for N
up to 10^6 and beyond. Latents with a zero-norm row are refused: a zero vector has
no direction, and would otherwise score as a constant 1/N.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from salad_lite.config import ScoreConfig, ScoreRule
from salad_lite.knn import DEFAULT_BLOCK_ELEMENTS, block_search, check_latents, unit_rows
from salad_lite.metrics import binary_labels
from salad_lite.utils import is_finite_number, is_int, is_number, resolve_device

ArrayLike = torch.Tensor | np.ndarray


@torch.no_grad()
def eq4_scores(queries: torch.Tensor, bank: torch.Tensor, k: int, rule: ScoreRule = "paper",
               block_elements: int = DEFAULT_BLOCK_ELEMENTS,
               exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 4 anomaly scores [M] (float32, in [0, 1]) of queries [M, d] against bank [N, d] (both normalised here).

    ``exclude`` ([M] bank row per query, optional) leaves one bank row out per
    query (leave-one-out scores of the bank itself).

    Raises:
        ValueError: as :func:`eq4_search`.
    """
    return eq4_search(queries, bank, k, rule, block_elements, exclude)[0]


@torch.no_grad()
def eq4_search(queries: torch.Tensor, bank: torch.Tensor, k: int, rule: ScoreRule = "paper",
               block_elements: int = DEFAULT_BLOCK_ELEMENTS, exclude: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4 scores and the neighbours they use: (scores [M], cosines [M, K] descending, bank rows [M, K]).

    ``rule="paper"``: ``A = (1/K) sum_{K nearest} arccos(d_k) / sum_{j=1..N} arccos(d_j)``
    (a query identical to every bank row has all angles 0 and scores 0, not 0/0);
    ``rule="code"``: the mean of the K smallest angles / pi. Runs on the queries'
    device; equal cosines rank by ascending bank row on the CPU (see
    :func:`salad_lite.knn.block_search`). Memory stays bounded for any N.

    Raises:
        ValueError: an unknown rule; a NaN, inf or zero-norm row in ``queries`` or
            ``bank`` (counted); another d; K outside 1..N (1..N-1 with ``exclude``); a bad ``exclude``.
    """
    if rule not in ("paper", "code"):
        raise ValueError(f"unknown score rule {rule!r}; choose paper or code")
    q = unit_rows(queries, "queries")  # [M, d]
    keys = unit_rows(bank, "bank").to(q.device)  # [N, d]
    best, rows, angle_sum = block_search(q, keys, k, rule == "paper", exclude, block_elements)
    nearest_angles = torch.arccos(best.double().clamp(-1.0, 1.0))  # [M, K], radians
    if rule == "paper":
        angle_sum = angle_sum.to(nearest_angles.device)  # [M] float64, radians
        safe_sum = torch.where(angle_sum > 0, angle_sum, torch.ones_like(angle_sum))
        scores = nearest_angles.sum(dim=1) / safe_sum / k
    else:
        scores = nearest_angles.mean(dim=1) / math.pi
    return scores.float(), best, rows


DEGENERATE_RTOL = 1e-5  # leave-one-out scores closer than this (relative) to their minimum count as tied


class SaladScorer:
    """Memory-bank anomaly scorer with the PyOD interface (``fit``, ``decision_function``, ``predict``).

    Args:
        k: K, the number of nearest bank entries (paper: 100). Policy for a K the
            fitted bank cannot serve: K is clamped to N' - 1, the rows a
            leave-one-out score of the bank can use (N' = rows kept by :meth:`fit`),
            so scores and the fitted threshold use the same K. The K in use is
            ``k_``; no warning is given.
        discard_anomalous: drop bank rows whose training label is abnormal (1)
            before scoring (paper). Without labels in :meth:`fit` nothing is known
            to be abnormal, so nothing is dropped.
        rule: ``"paper"`` (Eq. 4) or ``"code"`` (mean of K smallest angles / pi).
        contamination: share of the bank's own leave-one-out scores above the
            default threshold used by :meth:`predict` (PyOD convention).
        block_elements: the most similarities held at once by the search.
        device: where scoring runs (default: the bank's device).

    Deviation from PyOD: :meth:`predict` flags ``score >= threshold_`` (PyOD: ``>``).

    Raises:
        ValueError: K not an int >= 1, discard_anomalous not a bool, contamination not a number in
            (0, 0.5), an unknown rule, block_elements not an int >= 1, a device outside
            :data:`salad_lite.utils.DEVICE_FORMS`.
        RuntimeError: a CUDA or MPS device this machine lacks.
    """

    def __init__(self, k: int = 100, discard_anomalous: bool = True, rule: ScoreRule = "paper",
                 contamination: float = 0.1, block_elements: int = DEFAULT_BLOCK_ELEMENTS,
                 device: str | torch.device | None = None) -> None:
        if not is_int(k) or k < 1:
            raise ValueError(f"K must be an int >= 1, got {k!r}")
        if not isinstance(discard_anomalous, (bool, np.bool_)):
            raise ValueError(f"discard_anomalous must be True or False, got {discard_anomalous!r}")
        if not is_number(contamination) or not 0.0 < contamination < 0.5:
            raise ValueError(f"contamination must be a number in (0, 0.5), got {contamination!r}")
        if rule not in ("paper", "code"):
            raise ValueError(f"unknown score rule {rule!r}; choose paper or code")
        if not is_int(block_elements) or block_elements < 1:
            raise ValueError(f"block_elements must be an int >= 1, got {block_elements!r}")
        self.k = k
        self.discard_anomalous = bool(discard_anomalous)
        self.rule = rule
        self.contamination = contamination
        self.block_elements = block_elements
        if device is not None:
            resolve_device(device)  # an unknown or missing device is refused here, not at fit
        self.device = device

    @classmethod
    def from_config(cls, cfg: ScoreConfig, **overrides) -> "SaladScorer":
        """A scorer with ``cfg.k``, ``cfg.discard_anomalous`` and ``cfg.rule`` (keyword ``overrides`` win).

        Raises:
            ValueError: as the constructor.
        """
        kwargs = {"k": cfg.k, "discard_anomalous": cfg.discard_anomalous, "rule": cfg.rule}
        kwargs.update(overrides)
        return cls(**kwargs)

    def fit(self, bank: ArrayLike, labels: ArrayLike | None = None) -> "SaladScorer":
        """Store the bank [N, d] (normalised), without its abnormal rows when ``discard_anomalous``.

        ``labels`` [N] (0 normal, 1 abnormal) are optional, as PyOD's ``fit(X, y=None)``:
        without them (or with ``discard_anomalous=False``) every row is kept.

        Sets ``bank_`` [N', d], ``k_`` (the K in use: ``min(k, N' - 1)``), ``kept_rows_``
        [N']. ``threshold_`` is the default of :meth:`_default_threshold`, computed
        when first read (scoring alone never needs it) unless :meth:`set_threshold`
        or an assignment set it.

        Raises:
            ValueError: a NaN, inf or zero-norm bank row (counted); labels not 1-D,
                not 0/1 or of another length than the bank; every row labelled abnormal; fewer
                than 2 rows left.
        """
        bank_t = unit_rows(bank, "bank")  # [N, d]
        device = resolve_device(self.device) if self.device is not None else bank_t.device
        keep = torch.ones(bank_t.shape[0], dtype=torch.bool)
        if labels is not None:
            if np.ndim(labels) != 1:
                raise ValueError(f"labels must be 1-D [N], got shape {np.shape(labels)}")
            labels_np = binary_labels(labels, "the bank's training labels", need_both=False)
            if labels_np.shape[0] != bank_t.shape[0]:
                raise ValueError(f"labels has {labels_np.shape[0]} entries but the bank has {bank_t.shape[0]} rows")
            if self.discard_anomalous:
                keep = torch.from_numpy(labels_np == 0)
                if not bool(keep.any()):
                    raise ValueError("every bank row is labelled abnormal: nothing is left to score against")
        self.kept_rows_ = keep.nonzero(as_tuple=True)[0]
        self.bank_ = bank_t[keep.to(bank_t.device)].to(device)
        n = self.bank_.shape[0]
        if n < 2:
            raise ValueError(f"the bank needs at least 2 rows to score, got {n}")
        self.k_ = min(self.k, n - 1)
        self._threshold: float | None = None
        return self

    @property
    def threshold_(self) -> float:
        """The decision threshold of :meth:`predict`: set by :meth:`set_threshold` (or assigned),
        else the default of :meth:`_default_threshold`, computed once on first use.

        Raises:
            RuntimeError: not fitted.
        """
        self._check_fitted()
        if self._threshold is None:
            self._threshold = self._default_threshold()
        return self._threshold

    @threshold_.setter
    def threshold_(self, value: float) -> None:
        """Assign a threshold; ``ValueError`` unless it is a finite real number."""
        if not is_finite_number(value):
            raise ValueError(f"threshold_ must be a finite number, got {value!r}")
        self._threshold = float(value)

    def _default_threshold(self, max_rows: int = 256) -> float:
        """The (1 - contamination) quantile q of leave-one-out scores of (up to ``max_rows`` of) the bank.

        Degenerate policy: when q equals the smallest of those scores up to float
        rounding (relative 1e-5: no spread below it), ``predict``'s ``score >= q``
        would flag every bank row. Two cases give this: a bank whose rows are all
        identical, and rule ``paper`` with K = N' - 1 (a clamped K), where every
        leave-one-out score is exactly 1/K because the K nearest rows are all the
        other rows. The threshold is then the next float above the largest tied
        score, so only scores strictly above the bank's own are abnormal, and a
        ``UserWarning`` counts the tied rows and names the cause. Choose a
        threshold on validation data with :meth:`set_threshold` instead.
        """
        n = self.bank_.shape[0]
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_rows].to(self.bank_.device)
        scores = eq4_scores(self.bank_[rows], self.bank_, self.k_, self.rule, self.block_elements, exclude=rows)
        threshold = float(torch.quantile(scores, 1.0 - self.contamination))
        lowest = float(scores.min())
        tolerance = DEGENERATE_RTOL * max(abs(threshold), float(np.finfo(np.float32).tiny))
        if threshold - lowest > tolerance:
            return threshold
        tied = scores <= lowest + tolerance
        above = float(np.nextafter(np.float32(float(scores[tied].max())), np.float32(np.inf)))
        cause = (f"K = N' - 1 = {self.k_}: each leave-one-out score is 1/K" if self.rule == "paper"
                 and self.k_ == n - 1 else "the bank's rows leave no score spread (identical rows?)")
        warnings.warn(f"degenerate threshold ({cause}): {int(tied.sum())} of the bank's {len(rows)} leave-one-out "
                      f"scores equal their minimum {lowest:.6g}, so a quantile threshold would flag all of them; "
                      f"threshold_ is set just above them ({above:.9g}): only scores above the bank's own are "
                      f"abnormal. Use set_threshold on a validation split to choose one.", UserWarning, stacklevel=4)
        return above

    def _check_fitted(self) -> None:
        if not hasattr(self, "bank_"):
            raise RuntimeError("SaladScorer is not fitted: call fit(bank, labels) first")

    def decision_function(self, z: ArrayLike) -> np.ndarray:
        """Anomaly scores [M] (float32, in [0, 1]) of latents ``z`` [M, d] (or [d]); higher = more abnormal.

        Raises:
            RuntimeError: not fitted.
            ValueError: a NaN, inf or zero-norm row in ``z`` (counted); another
                dimension than the bank's.
        """
        self._check_fitted()
        z_t = torch.as_tensor(z)
        if z_t.ndim == 1:
            z_t = z_t[None]  # a single query: [1, d]
        z_t = check_latents(z_t, "z").to(self.bank_.device)
        if z_t.shape[1] != self.bank_.shape[1]:
            raise ValueError(f"z has dimension {z_t.shape[1]} but the bank has {self.bank_.shape[1]}")
        return eq4_scores(z_t, self.bank_, self.k_, self.rule, self.block_elements).cpu().numpy()

    def set_threshold(self, z_val: ArrayLike, y_val: ArrayLike) -> float:
        """Choose ``threshold_`` on a VALIDATION split by Youden's J (max TPR - FPR); returns it.

        The threshold lies halfway between the lowest validation score it flags and the
        next lower one, so that the same films scored again (in another batch, with
        float rounding of its own) fall on the same side.

        ``z_val`` [M, d] latents, ``y_val`` [M] labels (0 normal, 1 abnormal). When no
        threshold separates the classes at all (max J = 0) the chosen one flags
        nothing, and a ``UserWarning`` says so.

        Raises:
            RuntimeError: not fitted.
            ValueError: ``y_val`` has one class only (as :func:`salad_lite.metrics.auc`)
                or a label other than 0/1; ``y_val`` and ``z_val`` differ in length;
                bad latents (as :meth:`decision_function`).
        """
        from sklearn.metrics import roc_curve

        labels = binary_labels(y_val, "set_threshold (Youden's J on a validation split)")
        scores = self.decision_function(z_val)
        if labels.shape[0] != scores.shape[0]:
            raise ValueError(f"y_val has {labels.shape[0]} labels but z_val has {scores.shape[0]} rows")
        fpr, tpr, thresholds = roc_curve(labels, scores)
        best = int(np.argmax(tpr - fpr))
        if tpr[best] - fpr[best] <= 0:
            warnings.warn("set_threshold: the validation scores do not separate the classes (max Youden J = 0); "
                          "the threshold chosen flags nothing as abnormal", UserWarning, stacklevel=2)
        chosen = float(thresholds[best])
        below = scores[scores < chosen]
        if np.isfinite(chosen) and below.size:  # halfway to the next lower score: a boundary film whose score is
            chosen = (chosen + float(below.max())) / 2  # recomputed in another batch (float noise) keeps its side
        self.threshold_ = float(min(chosen, np.finfo(np.float32).max))
        return self.threshold_

    def predict(self, z: ArrayLike) -> np.ndarray:
        """Binary labels [M] (1 = abnormal): score >= ``threshold_``.

        Raises:
            RuntimeError, ValueError: as :meth:`decision_function`.
        """
        return (self.decision_function(z) >= self.threshold_).astype(np.int64)


def min_max_normalise(scores: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Map scores to [0, 1] using the min and max of ``reference`` (default: the scores); order is kept."""
    reference = scores if reference is None else reference
    low, high = float(np.min(reference)), float(np.max(reference))
    if high <= low:
        return np.zeros_like(scores, dtype=np.float64)
    return np.clip((scores - low) / (high - low), 0.0, 1.0)
