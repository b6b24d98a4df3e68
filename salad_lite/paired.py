"""Paired comparisons of two scorers on the same test images: bootstrap and DeLong tests of an AUC difference.

Two methods scored on the same images are correlated: an image that is hard for one
is often hard for the other. Comparing their AUCs through two independent intervals
(each ``mean ± 1.96 std``) ignores that and is far too conservative; the tests here
use the pairing.

- :func:`paired_bootstrap_auc`: resample the test images (stratified by class, the
  same images for both scorers), percentile CI of ``AUC_a - AUC_b``.
- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas
  under two or more correlated receiver operating characteristic curves: a
  nonparametric approach", Biometrics 44(3):837-845; computed with the midrank
  algorithm of Sun & Xu (2014), "Fast implementation of DeLong's algorithm for
  comparing the areas under correlated receiver operating characteristic curves",
  IEEE Signal Processing Letters 21(11):1389-1393.
- :func:`align_on_ids`: match two scored test sets by image id and keep their common
  images. The seeded splits give every AR from 0 to 15 % the same test images
  (:data:`salad_lite.data.registry.HELD_OUT_RESERVE_RATIO`), so MemDAE at AR 0 and
  SALAD at AR 5 score the same set; the alignment is a safety net for split files
  and other data whose test sets differ.

Label 1 = abnormal, higher score = more abnormal, as everywhere in the package.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import norm, rankdata

from salad_lite.metrics import finite_scores
from salad_lite.utils import check_seed, is_int

__all__ = ["MIN_PER_CLASS", "Aligned", "align_on_ids", "delong_test", "paired_bootstrap_auc"]

#: Fewest images per class that :func:`align_on_ids` accepts in the common set.
MIN_PER_CLASS = 2


def _labels(labels: Any, name: str = "labels") -> np.ndarray:
    """``labels`` [M] as int64 0/1 with both classes, checked (the argument is named in the error)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional [M], got shape {arr.shape}")
    present = set(np.unique(arr).tolist())
    if not present <= {0, 1}:
        raise ValueError(f"{name} must be 0 (normal) or 1 (abnormal); got classes {sorted(present, key=str)}")
    if present != {0, 1}:
        raise ValueError(f"{name} must hold both normal (0) and abnormal (1) images; got classes {sorted(present)}")
    return arr.astype(np.int64)


def _paired_inputs(labels: Any, scores_a: Any, scores_b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``labels`` [M] int64 and ``scores_a`` / ``scores_b`` [M] float64."""
    y = _labels(labels)
    out = []
    for name, scores in (("scores_a", scores_a), ("scores_b", scores_b)):
        arr = finite_scores(scores, name)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional [M], got shape {arr.shape}")
        if arr.shape[0] != y.shape[0]:
            raise ValueError(f"{name} has {arr.shape[0]} values but labels has {y.shape[0]}")
        out.append(arr)
    return y, out[0], out[1]


def _draw_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """``[n_boot, n]`` int counts: how often each of ``n`` images is drawn in each resample of size ``n``."""
    idx = rng.integers(0, n, size=(n_boot, n)) + np.arange(n_boot)[:, None] * n
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n)


def _weighted_auc(pos: np.ndarray, neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """AUC ``[B]`` of resamples given as draw counts ``w_pos [B, n1]`` / ``w_neg [B, n0]`` of fixed images (ties 1/2).

    Per resample, each drawn abnormal image wins against the drawn normal images scored
    below it (half for a tie); the normal images are sorted once, so the cost is
    ``O(B (n1 + n0))`` with no sort per resample.
    """
    order = np.argsort(neg, kind="stable")
    sorted_neg = neg[order]
    below = np.zeros((w_neg.shape[0], neg.size + 1))
    np.cumsum(w_neg[:, order], axis=1, out=below[:, 1:])
    lo = np.searchsorted(sorted_neg, pos, side="left")
    hi = np.searchsorted(sorted_neg, pos, side="right")
    wins = below[:, lo] + 0.5 * (below[:, hi] - below[:, lo])  # [B, n1]
    return (w_pos * wins).sum(axis=1) / (pos.size * neg.size)


def paired_bootstrap_auc(labels: Any, scores_a: Any, scores_b: Any, n_boot: int = 2000,
                         seed: int = 0) -> dict[str, float | int]:
    """Bootstrap 95% CI of ``AUC(scores_a) - AUC(scores_b)`` on the same test images.

    Each resample draws, with replacement, as many abnormal images from the abnormal
    ones and as many normal images from the normal ones as the test set has
    (stratified: every resample keeps both classes and the prevalence); both scorers
    are evaluated on the same drawn images. The resamples are an index matrix
    ``[n_boot, M]`` (kept as draw counts per image) and the AUCs are rank-based, so 2000
    resamples of 1,000 images take a fraction of a second.

    Args:
        labels: ``[M]`` 0 = normal, 1 = abnormal (both present).
        scores_a, scores_b: ``[M]`` finite scores of the two methods, higher = more abnormal.
        n_boot: number of resamples (>= 1; 2000 is the usual choice for a 95% CI).
        seed: seed of the resampling.

    Returns:
        ``{"auc_a", "auc_b", "difference", "ci_low", "ci_high", "se", "n_boot"}``:
        the AUCs on the full test set, their difference ``a - b``, the 2.5 and 97.5
        percentiles of the resampled differences and their standard deviation.

    Raises:
        ValueError: ``labels`` is not 0/1 or has one class only; ``scores_a`` /
            ``scores_b`` differ in length from ``labels`` or hold NaN/inf; ``n_boot`` < 1;
            ``seed`` not an int in NumPy's range.
    """
    if not is_int(n_boot) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    check_seed(seed)
    y, a, b = _paired_inputs(labels, scores_a, scores_b)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    ones_pos, ones_neg = np.ones((1, pos.size)), np.ones((1, neg.size))
    auc_a = float(_weighted_auc(a[pos], a[neg], ones_pos, ones_neg)[0])
    auc_b = float(_weighted_auc(b[pos], b[neg], ones_pos, ones_neg)[0])
    rng = np.random.default_rng(seed)
    w_pos, w_neg = _draw_counts(rng, pos.size, int(n_boot)), _draw_counts(rng, neg.size, int(n_boot))
    diffs = (_weighted_auc(a[pos], a[neg], w_pos, w_neg) - _weighted_auc(b[pos], b[neg], w_pos, w_neg))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": auc_a - auc_b, "ci_low": float(low),
            "ci_high": float(high), "se": float(diffs.std(ddof=1)) if n_boot > 1 else float("nan"),
            "n_boot": int(n_boot)}


def _structural_components(scores: np.ndarray, n1: int) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC, ``V10`` [n1] and ``V01`` [n0] of one scorer whose first ``n1`` scores are the abnormal images.

    ``V10_i`` = share of normal images scored below abnormal image i (ties 1/2),
    ``V01_j`` = share of abnormal images scored above normal image j; the AUC is the
    mean of either. Sun & Xu (2014): from the midranks of the positives alone, the
    negatives alone and both together.
    """
    x, z = scores[:n1], scores[n1:]
    n0 = z.size
    tx, tz, t_all = rankdata(x), rankdata(z), rankdata(scores)
    v10 = (t_all[:n1] - tx) / n0
    v01 = 1.0 - (t_all[n1:] - tz) / n1
    auc_value = float(t_all[:n1].sum() / (n1 * n0) - (n1 + 1) / (2.0 * n0))
    return auc_value, v10, v01


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> dict[str, float]:
    """DeLong test of ``AUC(scores_a) - AUC(scores_b)`` on the same test images (two-sided, normal approximation).

    The variance of the difference comes from the structural components of both
    scorers (DeLong et al. 1988) computed in ``O(M log M)`` with midranks (Sun & Xu
    2014): ``Var = (s10_aa + s10_bb - 2 s10_ab) / n1 + (s01_aa + s01_bb - 2 s01_ab) / n0``,
    with ``s10`` / ``s01`` the sample covariances of the components over the abnormal
    (``n1``) and normal (``n0``) images.

    Args:
        labels: ``[M]`` 0 = normal, 1 = abnormal (at least 2 of each, for a covariance).
        scores_a, scores_b: ``[M]`` finite scores of the two methods, higher = more abnormal.

    Returns:
        ``{"auc_a", "auc_b", "difference", "se", "z", "p_value", "ci_low", "ci_high"}``;
        the CI is ``difference ± 1.96 se``. Identical scorers give se 0, z 0 and p 1; different
        AUCs with se 0 (perfect or constant scores) give p 0 and a ``RuntimeWarning``.

    Raises:
        ValueError: ``labels`` is not 0/1 or has fewer than 2 images of a class;
            ``scores_a`` / ``scores_b`` differ in length from ``labels`` or hold NaN/inf.
    """
    y, a, b = _paired_inputs(labels, scores_a, scores_b)
    n1, n0 = int(y.sum()), int((y == 0).sum())
    if min(n1, n0) < 2:
        raise ValueError(f"labels must hold at least 2 images of each class for DeLong's variance; "
                         f"got {n1} abnormal and {n0} normal")
    order = np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y == 0)])
    auc_a, v10_a, v01_a = _structural_components(a[order], n1)
    auc_b, v10_b, v01_b = _structural_components(b[order], n1)
    s10, s01 = np.cov(np.vstack([v10_a, v10_b])), np.cov(np.vstack([v01_a, v01_b]))
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ s10 @ contrast / n1 + contrast @ s01 @ contrast / n0)
    se = float(np.sqrt(max(var, 0.0)))
    diff = auc_a - auc_b
    if se > 0:
        z = diff / se
    else:  # both scorers' components have no spread in the difference: exact, or a degenerate data set
        z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
        if diff != 0:
            warnings.warn(f"DeLong's variance is 0 although the AUCs differ ({auc_a:.4f} vs {auc_b:.4f}): "
                          "perfect or constant scores make the test degenerate (p = 0, a zero-width CI); "
                          "use paired_bootstrap_auc for these scores", RuntimeWarning, stacklevel=2)
    p_value = float(2.0 * norm.sf(abs(z)))
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": diff, "se": se, "z": float(z), "p_value": p_value,
            "ci_low": diff - 1.96 * se, "ci_high": diff + 1.96 * se}


class Aligned(NamedTuple):
    """The common test images of two scored cells: ids, labels and both score arrays, in ``ids_a``'s order."""

    ids: list[str]
    labels: np.ndarray
    scores_a: np.ndarray
    scores_b: np.ndarray


def _id_list(ids: Any, name: str) -> list[str]:
    if isinstance(ids, (str, bytes)) or np.ndim(ids) == 0 or not (isinstance(ids, (Sequence, np.ndarray))
                                                                or hasattr(ids, "tolist")):
        raise ValueError(f"{name} must be a sequence of image ids, got {type(ids).__name__}")
    out = [str(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]  # pandas and NumPy ids as Python values
    seen: set[str] = set()
    for i in out:
        if i in seen:
            raise ValueError(f"{name} holds image id {i!r} more than once")
        seen.add(i)
    return out


def align_on_ids(ids_a: Sequence[Any], scores_a: Any, ids_b: Sequence[Any], scores_b: Any, labels_a: Any,
                 labels_b: Any) -> Aligned:
    """Keep the test images scored in both cells, matched by id (order of ``ids_a``).

    The paired tests need the images both cells scored, in one order. The seeded
    splits share one test set across AR 0 to 15 %, so there the common images are
    the whole test set (possibly in another order); a split file or other data can
    give two cells different test sets, and then only the common images are kept.

    Args:
        ids_a, scores_a, labels_a: ``[M_a]`` image ids (unique), scores and 0/1 labels of cell a.
        ids_b, scores_b, labels_b: the same ``[M_b]`` arrays of cell b.

    Returns:
        :class:`Aligned` ``(ids, labels, scores_a, scores_b)`` over the common images.

    Raises:
        ValueError: an id repeated within a cell; scores or labels that are not 1-D, or arrays of one cell
            of different lengths (named); NaN/inf scores; a common image whose labels disagree
            (the first such id, in ``ids_a``'s order, is named); fewer than
            :data:`MIN_PER_CLASS` common images of a class.
    """
    cells = {}
    for tag, ids, scores, labels in (("a", ids_a, scores_a, labels_a), ("b", ids_b, scores_b, labels_b)):
        id_list = _id_list(ids, f"ids_{tag}")
        s = finite_scores(scores, f"scores_{tag}")
        y = np.asarray(labels)
        for name, arr in ((f"scores_{tag}", s), (f"labels_{tag}", y)):
            if arr.ndim != 1:  # a [M, 1] column or a [2, M] table would be flattened onto the wrong images
                raise ValueError(f"{name} must be 1-D [M], got shape {arr.shape}")
            if arr.shape[0] != len(id_list):
                raise ValueError(f"{name} has {arr.shape[0]} values but ids_{tag} has {len(id_list)}")
        present = set(y.tolist())  # not np.unique: it cannot sort a mix of text and numbers
        if not present <= {0, 1}:
            raise ValueError(f"labels_{tag} must be 0 (normal) or 1 (abnormal); got classes {sorted(present, key=str)}")
        cells[tag] = (id_list, s, y.astype(np.int64))
    ids_a_list, s_a, y_a = cells["a"]
    ids_b_list, s_b, y_b = cells["b"]
    where_b = {i: k for k, i in enumerate(ids_b_list)}
    keep_a = [k for k, i in enumerate(ids_a_list) if i in where_b]
    keep_b = [where_b[ids_a_list[k]] for k in keep_a]
    ia, ib = np.asarray(keep_a, dtype=np.int64), np.asarray(keep_b, dtype=np.int64)
    disagree = np.flatnonzero(y_a[ia] != y_b[ib])
    if disagree.size:
        first = int(disagree[0])
        raise ValueError(f"image {ids_a_list[keep_a[first]]!r} has label {int(y_a[ia[first]])} in labels_a but "
                         f"{int(y_b[ib[first]])} in labels_b ({disagree.size} common image(s) disagree)")
    labels = y_a[ia]
    n1, n0 = int(labels.sum()), int((labels == 0).sum())
    if min(n1, n0) < MIN_PER_CLASS:
        hint = (f" (ids are compared as text: e.g. {ids_a_list[0]!r} in ids_a, {ids_b_list[0]!r} in ids_b)"
                if not keep_a and ids_a_list and ids_b_list else "")
        raise ValueError(f"the two cells share {len(keep_a)} test image(s), {n1} abnormal and {n0} normal; "
                         f"a paired comparison needs at least {MIN_PER_CLASS} of each class{hint}")
    return Aligned([ids_a_list[k] for k in keep_a], labels, s_a[ia], s_b[ib])
