"""Reading the latent space round by round: snapshots, aligned 2-D projections, cluster-formation measures.

Analysis code for the book (no model, no training). The trainer writes a
snapshot at the end of pretraining (round 0) and of every progressive round
(``<replicate dir>/snapshots/round<r>.safetensors`` with ``memory`` [N, d] and
``val`` [M, d] unit latents). This module

- loads them in round order (:func:`load_round_snapshots`);
- projects the same M points of every round to 2-D so that the views are
  comparable across rounds (:func:`aligned_projections`: one ``umap.AlignedUMAP``
  fitted jointly on all rounds, each point tied to itself in the next round);
- measures how far the latents have gathered into label-consistent clusters
  (:func:`knn_purity`, :func:`silhouette`, :func:`neighbour_similarity`,
  :func:`cluster_formation`);
- finds a memory slot's nearest memory slots (:func:`memory_neighbours`), for
  "before / after" image rows.

All similarities are cosine similarities; latents need not be normalised.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from salad_lite.checkpoint import check_finite_tensors, load_checkpoint
from salad_lite.knn import check_latents, cosine_topk
from salad_lite.metrics import binary_labels
from salad_lite.utils import is_int

__all__ = [
    "aligned_projections",
    "cluster_formation",
    "knn_purity",
    "load_round_snapshots",
    "memory_neighbours",
    "neighbour_similarity",
    "silhouette",
]

_ROUND_FILE = re.compile(r"^round(\d+)\.safetensors$")


def _as_array(latents: Any, name: str = "latents") -> np.ndarray:
    """float32 ``[M, d]`` numpy copy of a tensor or array, through the package's latent gate
    (:func:`salad_lite.knn.check_latents`: numbers, 2-D, at least one row, finite, no zero-norm row:
    a zero latent has no cosine, for every measure alike)."""
    if hasattr(latents, "detach"):
        latents = latents.detach().cpu()
    return np.array(check_latents(latents, name).numpy(), dtype=np.float32, copy=True)


def load_round_snapshots(replicate_dir: str | Path) -> dict[int, dict[str, torch.Tensor]]:
    """Every ``snapshots/round<r>.safetensors`` of a replicate folder, keyed by round r (ascending).

    Returns ``{r: {"memory": [N, d], "val": [M, d], ...}}`` (CPU float tensors).
    Raises :class:`FileNotFoundError` naming the folder when it holds no snapshot, and
    :class:`~salad_lite.files.CorruptFileError` naming a snapshot that holds NaN or inf.
    """
    folder = Path(replicate_dir) / "snapshots"
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _ROUND_FILE.match(path.name)
            if match:
                found[int(match.group(1))] = path
    if not found:
        raise FileNotFoundError(f"no round<r>.safetensors snapshot in {folder}; train the run first "
                                "(salad_lite.experiment.train_or_load)")
    snapshots = {}
    for r in sorted(found):
        snapshots[r] = load_checkpoint(found[r].with_suffix(""))[0]
        check_finite_tensors(snapshots[r], found[r])
    return snapshots


# --------------------------------------------------------------------------- 2-D projections
def aligned_projections(latents_per_round: Sequence[Any], *, n_neighbors: int = 15, min_dist: float = 0.1,
                        metric: str = "cosine", alignment_regularisation: float = 0.01,
                        random_state: int = 0) -> list[np.ndarray]:
    """2-D coordinates of the same M points after each of R rounds, comparable across rounds.

    One ``umap.AlignedUMAP`` is fitted on all rounds jointly; every point is tied to
    itself in the neighbouring rounds (identity relations, weight
    ``alignment_regularisation``), so a point moves between frames only as far as its
    latent neighbourhood changed. Each round keeps its own UMAP graph, so an early
    round is never drawn with a later round's structure (which a UMAP fitted on the
    last round and ``transform``-ed onto earlier latents would do).

    Args:
        latents_per_round: R arrays ``[M, d]``; row i is the same image in every round.
        n_neighbors, min_dist, metric: UMAP's parameters (cosine suits unit latents).
        alignment_regularisation: strength of the tie between a point's positions in
            consecutive rounds.
        random_state: seeds UMAP (it then runs on one thread).

    Returns:
        R arrays ``[M, 2]`` (float64), in the order given.

    Cost: the first call in a process compiles numba code (tens of seconds on a
    laptop CPU); then about 10 s for 4 rounds of 900 points.
    """
    import umap  # imported here: the first import compiles numba code (seconds)

    arrays = [_as_array(x, f"latents_per_round[{r}]") for r, x in enumerate(latents_per_round)]
    if not arrays:
        raise ValueError("aligned_projections needs at least one round")
    m = arrays[0].shape[0]
    bad = [(r, a.shape) for r, a in enumerate(arrays) if a.shape[0] != m]
    if bad:
        raise ValueError(f"every round must hold the same {m} points; (round, shape) that differ: {bad}")
    if m < 4:
        raise ValueError(f"UMAP needs at least 4 points, got {m}")
    n_neighbors = int(min(n_neighbors, m - 1))
    if len(arrays) == 1:
        reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, random_state=random_state)
        return [np.asarray(reducer.fit_transform(arrays[0]), dtype=np.float64)]
    identity = {i: i for i in range(m)}
    reducer = umap.AlignedUMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                               alignment_regularisation=alignment_regularisation, random_state=random_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value")  # a seed makes UMAP single-threaded
        reducer.fit(arrays, relations=[identity] * (len(arrays) - 1))
    return [np.asarray(e, dtype=np.float64) for e in reducer.embeddings_]


# --------------------------------------------------------------------------- cluster-formation measures
def _neighbours(latents: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-k of every row among the other rows: (similarities [M, k], indices [M, k])."""
    m = latents.shape[0]
    if not is_int(k):
        raise ValueError(f"k must be an int (neighbours per point), got {k!r} ({type(k).__name__})")
    if m < 2:
        raise ValueError(f"the k-NN measures need at least 2 points (each point's neighbours are the others), got {m}")
    if not 1 <= k <= m - 1:
        raise ValueError(f"k must lie in 1..{m - 1} for {m} points, got {k}")
    x = torch.from_numpy(latents)
    sims, idx = cosine_topk(x, x, k, exclude=torch.arange(m))
    return sims.numpy(), idx.numpy()


def _labels_of(labels: Any, n: int) -> np.ndarray:
    """``labels`` as a 1-D array of ``n`` class values; a 2-D table or a missing (NaN/None) value is refused."""
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must be 1-D, one per latent ({n}), got shape {lab.shape}")
    missing = pd.isna(lab)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} label(s) are missing (NaN/None): a missing label never equals "
                         "another, so it would count as a wrong neighbour")
    return lab


def knn_purity(latents: Any, labels: Any, k: int = 10) -> float:
    """Mean share of each point's k nearest neighbours (cosine, itself excluded) that carry its label.

    ``latents`` ``[M, d]``, ``labels`` ``[M]`` (any hashable class values, e.g. 0/1 or
    finding names). 1 = every neighbourhood is label-pure; a random arrangement gives
    about ``sum_c share_c ** 2``.

    Raises:
        ValueError: ``latents`` not numbers ``[M, d]`` with finite, non-zero rows
            (:func:`salad_lite.knn.check_latents`); ``k`` not an int in 1..M-1 (fewer
            than 2 points named as such); ``labels`` not 1-D with one value per
            latent, or a missing (NaN/None) label.
    """
    arr = _as_array(latents)
    lab = _labels_of(labels, arr.shape[0])
    _, idx = _neighbours(arr, k)
    return float((lab[idx] == lab[:, None]).mean())


def silhouette(latents: Any, labels: Any) -> float:
    """Silhouette coefficient of the label groups under the cosine distance, in [-1, 1].

    High when points lie closer to their own label group than to the other group(s).

    Raises:
        ValueError: as :func:`knn_purity` (a zero-norm latent too), or fewer than two label values.
    """
    from sklearn.metrics import silhouette_score

    arr = _as_array(latents)
    lab = _labels_of(labels, arr.shape[0])
    if len(np.unique(lab)) < 2:
        raise ValueError("silhouette needs at least two label values")
    return float(silhouette_score(arr, lab, metric="cosine"))


def neighbour_similarity(latents: Any, k: int = 10) -> float:
    """Mean cosine similarity of every point to its k nearest other points (label-free tightness)."""
    sims, _ = _neighbours(_as_array(latents), k)
    return float(sims.mean())


def cluster_formation(latents_per_round: Mapping[int, Any], labels: Any, k: int = 10) -> pd.DataFrame:
    """Cluster-formation measures of the same points after each round.

    Args:
        latents_per_round: round r (an int) -> latents ``[M, d]`` (e.g. the snapshots' ``val``).
        labels: ``[M]`` labels of the points, 0 (normal) and 1 (abnormal), both present (silhouette)
            (:func:`salad_lite.metrics.binary_labels`: ``"0"``, ``"normal"`` or 2 are refused).
        k: neighbourhood size of the k-NN measures.

    Returns:
        One row per round (index ``round``) with columns ``knn_purity``,
        ``chance_purity`` (its expected value for neighbours drawn at random,
        ``sum_c share_c ** 2``), ``normal_knn_purity`` (the purity of normal points
        only, whose clusters SALAD is meant to form), ``silhouette`` and
        ``neighbour_cosine``.

    Raises:
        ValueError: no round, a round that is not an int (named), labels other than
            0/1 or of one class, or a round's latents not ``[M, d]`` for the M labels
            (:func:`knn_purity`'s rules; the round named).
    """
    if not isinstance(latents_per_round, Mapping) or not latents_per_round:
        raise ValueError("latents_per_round must map at least one round to its latents [M, d], got "
                         f"{latents_per_round!r:.80}")
    not_rounds = [r for r in latents_per_round if not is_int(r)]
    if not_rounds:
        raise ValueError(f"latents_per_round's keys must be int rounds, got {not_rounds[:5]!r}")
    raw = np.asarray(labels)
    if raw.ndim == 1:
        _labels_of(raw, raw.shape[0])  # a missing (NaN/None) label is named as such
    binary = binary_labels(raw, "cluster_formation", need_both=False)  # one class: silhouette says so
    rows = []
    for r, latents in sorted(latents_per_round.items()):
        arr = _as_array(latents, f"round {r}")
        try:
            lab = _labels_of(binary, arr.shape[0])
        except ValueError as error:
            raise ValueError(f"round {r}: {error}") from None
        _, counts = np.unique(lab, return_counts=True)
        chance = float(((counts / counts.sum()) ** 2).sum())
        sims, idx = _neighbours(arr, k)  # one k-NN search serves purity and neighbour cosine
        same = lab[idx] == lab[:, None]  # [M, k]
        normal = lab == 0
        rows.append({"round": r, "knn_purity": float(same.mean()), "chance_purity": chance,
                     "normal_knn_purity": float(same[normal].mean()) if normal.any() else float("nan"),
                     "silhouette": silhouette(arr, lab), "neighbour_cosine": float(sims.mean())})
    return pd.DataFrame(rows).set_index("round")


def memory_neighbours(bank: Any, slot: int, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The k memory slots most similar to slot ``slot`` of ``bank`` ``[N, d]``, itself excluded.

    Returns (slot indices ``[k]`` int64, nearest first; cosine similarities ``[k]``).
    Slot i belongs to training image i, so the indices address the training set.

    Raises:
        TypeError: ``slot`` is not an int.
        IndexError: ``slot`` is outside the bank.
    """
    arr = _as_array(bank, "bank")
    if not is_int(slot):
        raise TypeError(f"slot must be an int (a memory row), got {slot!r} ({type(slot).__name__})")
    if not 0 <= slot < arr.shape[0]:
        raise IndexError(f"slot {slot} outside the bank's {arr.shape[0]} rows")
    x = torch.from_numpy(arr)
    sims, idx = cosine_topk(x[slot:slot + 1], x, k, exclude=torch.tensor([slot]))
    return idx[0].numpy(), sims[0].numpy()
