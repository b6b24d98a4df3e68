"""Tables and text of the book: the paper's Table 1, this run's results beside it, summaries.

Everything here builds pandas DataFrames or strings from a run's configuration and
the summary dict of :func:`salad_lite.experiment.evaluate_replicates`; the figures
that show them are in :mod:`salad_lite.viz`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, get_args

import numpy as np
import pandas as pd

from salad_lite.config import Profile, SaladConfig, paper_config, profile_config
from salad_lite.data.findings import parse_findings
from salad_lite.metrics import auc, binary_labels, finite_scores, mean_ci
from salad_lite.utils import is_int, is_number

__all__ = ["ANY_FINDING", "DEFAULT_SEVERITY_BINS", "MIN_FINDING_IMAGES", "PAPER_TABLE1", "TABLE1_DATASETS",
           "differences_from_paper", "metric_lines", "paper_comparison", "paper_row", "per_finding_auc",
           "per_finding_text", "profile_table", "results_table", "severity_bin_index", "severity_bin_labels",
           "summary_curves"]

TABLE1_DATASETS = ("nih", "mura")


def summary_curves(summary: Mapping[str, Any]) -> dict[str, Any]:
    """ROC and PR arrays of replicate 0 from ``evaluate_replicates``' summary, for :func:`salad_lite.viz.plot_roc_pr`.

    Raises:
        ValueError: ``summary`` lacks the curves or the per-replicate results, or a curve is empty.
    """
    try:
        roc, pr = summary["curves_seed0"]["roc"], summary["curves_seed0"]["pr"]
        curves = {key: np.asarray(part[key], dtype=float) for part, keys in ((roc, ("fpr", "tpr")),
                                                                             (pr, ("precision", "recall")))
                  for key in keys}
        first = summary["per_replicate"][0]
        measured = {"auc": float(first["test_auc"]), "auprc": float(first["test_auprc"])}
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ValueError(f"not an evaluate_replicates summary: missing or malformed {err}") from err
    if any(values.size == 0 for values in curves.values()):
        raise ValueError("not an evaluate_replicates summary: curves_seed0 holds an empty curve")
    return {**curves, **measured, "prevalence": float(curves["precision"][0])}


#: Table 1 of Bozorgtabar et al. (MICCAI 2020), all 10 rows in the paper's order: test AUC / AUPRC (mean over 4
#: replicates) and, under ``*_pm``, the paper's ± figure for each cell (its 95% CI, 1.96 std); the anomaly ratio
#: ``AR %`` is the share of abnormal training images. ``fig5`` names the data sets where the row is the paper's †
#: model, the one compared with the other methods in Fig. 5 (NIH: SALAD at AR 10 %; MURA: SALAD at AR 5 %).
PAPER_TABLE1: tuple[dict[str, Any], ...] = tuple(
    {"method": method, "AR %": ar, "nih_auc": nih_auc, "nih_auc_pm": nih_auc_pm, "nih_auprc": nih_auprc,
     "nih_auprc_pm": nih_auprc_pm, "mura_auc": mura_auc, "mura_auc_pm": mura_auc_pm, "mura_auprc": mura_auprc,
     "mura_auprc_pm": mura_auprc_pm, "fig5": fig5}
    for (method, ar, nih_auc, nih_auc_pm, nih_auprc, nih_auprc_pm, mura_auc, mura_auc_pm, mura_auprc, mura_auprc_pm,
         fig5) in (
        ("MemDAE", 0, 0.8778, 0.0072, 0.9198, 0.0024, 0.7660, 0.0102, 0.8823, 0.0035, ()),
        ("SALAD w/o L_mse", 5, 0.8693, 0.0095, 0.9121, 0.0032, 0.7765, 0.0094, 0.8892, 0.0085, ()),
        ("SALAD w/o L_agg", 5, 0.8824, 0.0105, 0.9332, 0.0062, 0.7923, 0.0061, 0.9128, 0.0026, ()),
        ("SALAD", 5, 0.9091, 0.0069, 0.9552, 0.0049, 0.8117, 0.0028, 0.9419, 0.0075, ("mura",)),
        ("SALAD w/o L_mse", 10, 0.8739, 0.0071, 0.9287, 0.0024, 0.7882, 0.0104, 0.8926, 0.0031, ()),
        ("SALAD w/o L_agg", 10, 0.8913, 0.0056, 0.9426, 0.0035, 0.8012, 0.0042, 0.9196, 0.0023, ()),
        ("SALAD", 10, 0.9167, 0.0031, 0.9674, 0.0051, 0.8195, 0.0087, 0.9502, 0.0085, ("nih",)),
        ("SALAD w/o L_mse", 15, 0.8774, 0.0095, 0.9290, 0.0023, 0.7904, 0.0025, 0.8985, 0.0082, ()),
        ("SALAD w/o L_agg", 15, 0.8975, 0.0105, 0.9494, 0.0055, 0.8084, 0.0014, 0.9214, 0.0103, ()),
        ("SALAD", 15, 0.9189, 0.0076, 0.9705, 0.0011, 0.8245, 0.0017, 0.9582, 0.0108, ()),
    )
)


def results_table(summary: Mapping[str, Any], dataset: str = "nih", label: str = "this run") -> pd.DataFrame:
    """The paper's Table 1 (all 10 rows) for ``dataset`` with this run's mean test AUC / AUPRC (and 95% CI) below.

    When ``summary`` has them, three baseline rows follow: the same models scored by
    reconstruction error, the same network before training scored by Eq. 4, and the
    raw-pixel PCA reconstruction (deterministic: one run).

    ``summary``: the dict of :func:`salad_lite.experiment.evaluate_replicates`. Returns a
    pandas DataFrame with columns ``method``, ``AR %``, ``AUC``, ``AUPRC``, ``AUC 95% CI``,
    ``AUPRC 95% CI``, ``replicates`` and ``source``. The paper rows' CI columns hold the
    paper's own ± figure; this run's hold ``1.96 std`` over its replicates (NaN for one).

    Raises:
        ValueError: ``dataset`` is not ``nih`` or ``mura`` (Table 1 has no other columns);
            ``summary`` lacks its configuration or replicate count.
    """
    _check_table1_dataset(dataset)
    try:
        ar = round(float(summary["config"]["data"]["anomaly_ratio"]) * 100, 1)
        reps = int(summary["replicates"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not an evaluate_replicates summary: missing {err}") from err

    def row(method: str, ar_percent: float, auc_value: float, auprc_value: float, auc_ci: float = np.nan,
            auprc_ci: float = np.nan, replicates: int = 1, source: str = label) -> dict[str, Any]:
        return {"method": method, "AR %": ar_percent, "AUC": auc_value, "AUPRC": auprc_value,
                "AUC 95% CI": auc_ci, "AUPRC 95% CI": auprc_ci, "replicates": replicates, "source": source}

    def measured(method: str, source: Mapping[str, Any], auc_key: str, auprc_key: str, replicates: int) -> None:
        auc_mean, auc_half = _mean_and_half(source, auc_key)
        auprc_mean, auprc_half = _mean_and_half(source, auprc_key)
        rows.append(row(method, ar, auc_mean, auprc_mean, auc_half, auprc_half, replicates))

    rows = [row(r["method"], r["AR %"], r[f"{dataset}_auc"], r[f"{dataset}_auprc"], r[f"{dataset}_auc_pm"],
                r[f"{dataset}_auprc_pm"], replicates=4, source="paper, Table 1") for r in PAPER_TABLE1]
    measured("SALAD (salad_lite)", summary, "test_auc", "test_auprc", reps)
    if "reconstruction_test_auc" in summary:
        measured("same AE, reconstruction error (baseline)", summary, "reconstruction_test_auc",
                 "reconstruction_test_auprc", reps)
    if "untrained_encoder" in summary:
        untrained = _entry(summary, "untrained_encoder")
        measured("same network untrained, Eq. 4 (baseline)", untrained, "test_auc", "test_auprc",
                 len(untrained.get("per_seed", ())))
    if "pca_baseline" in summary:
        pca = _pca_entry(summary)
        measured(f"raw pixels, PCA-{pca['n_components']} reconstruction (baseline)", pca, "test_auc", "test_auprc", 1)
    return pd.DataFrame(rows)


def _entry(summary: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``summary[key]``, checked to be a dict (the key named otherwise)."""
    entry = summary[key]
    if not isinstance(entry, Mapping):
        raise ValueError(f"not an evaluate_replicates summary: {key} must be a dict, got {entry!r:.60}")
    return entry


def _pca_entry(summary: Mapping[str, Any], needs: tuple[str, ...] = ("n_components", "test_auc", "test_auprc")
               ) -> dict[str, Any]:
    """``summary["pca_baseline"]`` in the shape of the other metrics: ``{"test_auc": {"mean", "ci95": 0}, ...}``.

    The PCA is one deterministic run: its interval is 0. ``needs``: the fields the caller reads.
    """
    pca = _entry(summary, "pca_baseline")
    missing = [key for key in needs if key not in pca]
    if missing:
        raise ValueError(f"not an evaluate_replicates summary: pca_baseline lacks {missing}")
    return {"n_components": pca.get("n_components"),
            **{key: {"mean": pca[key], "ci95": 0.0} for key in ("test_auc", "test_auprc") if key in pca}}


def differences_from_paper(cfg: SaladConfig, splits: Mapping[str, Any],
                           summary: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """What separates this run from the paper's experiment: one row per aspect, columns ``paper`` and ``this run``.

    ``cfg``: the run's :class:`~salad_lite.config.SaladConfig`; ``splits``: its
    train / val / test datasets (with ``labels``); ``summary``: optional
    ``evaluate_replicates`` result (for the chosen K values).
    """
    dataset = cfg.data.dataset
    paper = paper_config(dataset if dataset in TABLE1_DATASETS else "nih")
    t, pt = cfg.train, paper.train

    def counts(name: str) -> str:
        labels = np.asarray(splits[name].labels)
        return f"{len(labels):,} ({int((labels == 0).sum()):,} normal, {int(labels.sum()):,} abnormal)"

    paper_data = {"nih": "NIH ChestX-ray14, real PA films (Tang et al. subset)",
                  "mura": "MURA v1.1, real upper-limb films"}.get(dataset, "NIH ChestX-ray14")
    paper_train = {"nih": "4,261 normal + AR% abnormal", "mura": "50% of normal patient/body-part groups + AR%"}
    paper_test = {"nih": "1,706 (849 normal, 857 abnormal)", "mura": "half of the remaining groups"}
    ks = sorted({int(r["k"]) for r in summary["per_replicate"]}) if summary else []
    rows = {
        "data": (paper_data, cfg.data.data_root or f"embedded synthetic {dataset} set (rendered, not real X-rays)"),
        "training images": (paper_train.get(dataset, "?"), counts("train")),
        "validation images": ("none reported (selection on the test set in the public code)", counts("val")),
        "test images": (paper_test.get(dataset, "?"), counts("test")),
        "resolution (px)": (paper.model.image_size, cfg.model.image_size),
        "autoencoder": (f"{paper.model.arch}", f"{cfg.model.arch}" + (f", first-layer width {cfg.model.width}"
                                                                      if cfg.model.arch == "conv" else "")),
        "epochs": (f"{pt.pretrain_epochs} + {pt.rounds} rounds x {pt.epochs_per_round}",
                   f"{t.pretrain_epochs} + {t.rounds} rounds x {t.epochs_per_round}"),
        "batch size, learning rate": (f"{pt.batch_size}, {pt.lr:g}", f"{t.batch_size}, {t.lr:g}"),
        "temperature tau (Eqs. 1-2)": (paper.loss.temperature, cfg.loss.temperature),
        "views of Eq. 1": ("not specified (public code: horizontal flip only)", view_summary(cfg)),
        "anomaly ratio AR": (f"{paper.data.anomaly_ratio:.0%} (also 10%, 15%)", f"{cfg.data.anomaly_ratio:.0%}"),
        "K (Eq. 4)": (paper.score.k, f"chosen on validation: {', '.join(map(str, ks))}" if ks else cfg.score.k),
        "scoring bank": (paper.score.bank, cfg.score.bank),
        "model selection": ("best test epoch (public code)", "best validation epoch" + (
            "; tau was also chosen on validation data (the validation AUCs are optimistic, test is not)"
            if cfg.loss.temperature != paper.loss.temperature else "")),
        "replicates": (paper.data.replicates, cfg.data.replicates),
    }
    return pd.DataFrame([{"aspect": k, "paper": str(v[0]), "this run": str(v[1])} for k, v in rows.items()]
                        ).set_index("aspect")


def view_summary(cfg: SaladConfig) -> str:
    """The ranges of the views of Eq. 1 (``cfg.augment``) in one line, zero ranges left out."""
    a = cfg.augment
    parts = [(a.max_rotation_deg, f"rotation ±{a.max_rotation_deg:g}°"), (a.max_scale, f"scale ±{a.max_scale:.0%}"),
             (a.max_shift, f"shift ±{a.max_shift:.0%}"), (a.flip_probability, f"flip p={a.flip_probability:g}"),
             (a.max_aspect, f"stretch ±{a.max_aspect:g} (log)"), (a.max_contrast, f"contrast ±{a.max_contrast:.0%}"),
             (a.max_brightness, f"brightness ±{a.max_brightness:g}"), (a.max_gamma, f"tone curve ±{a.max_gamma:g}")]
    return ", ".join(text for value, text in parts if value > 0) or "none"


def paper_row(dataset: str, method: str = "SALAD", ar_percent: float = 5) -> dict[str, Any]:
    """One row of :data:`PAPER_TABLE1` as ``{"method", "AR %", "auc", "auc_pm", "auprc", "auprc_pm"}`` for ``dataset``.

    ``auc_pm`` / ``auprc_pm``: the paper's ± figure of the cell (95% CI over 4 replicates).

    Raises:
        ValueError: ``dataset`` is not in Table 1, or no row has this method and AR.
    """
    _check_table1_dataset(dataset)
    for row in PAPER_TABLE1:
        if row["method"] == method and row["AR %"] == ar_percent:
            return {"method": method, "AR %": row["AR %"], "auc": row[f"{dataset}_auc"],
                    "auc_pm": row[f"{dataset}_auc_pm"], "auprc": row[f"{dataset}_auprc"],
                    "auprc_pm": row[f"{dataset}_auprc_pm"]}
    raise ValueError(f"Table 1 has no row for method {method!r} at AR {ar_percent} %")


def _check_table1_dataset(dataset: str) -> None:
    if dataset not in TABLE1_DATASETS:
        raise ValueError(f"Table 1 has NIH and MURA columns only, not {dataset!r}")


def metric_lines(summary: Mapping[str, Any], metrics: tuple[str, ...] = ("test_auc", "test_auprc")) -> str:
    """``test_auc: 0.8123 ± 0.0456 (95% CI over 3 replicates)``, one line per metric of the summary.

    One replicate has no interval: ``test_auc: 0.8123 (1 replicate: no interval)``.

    Raises:
        ValueError: ``summary`` lacks one of ``metrics`` or the replicate count (an int >= 1),
            or a metric is malformed (:func:`_mean_and_half`).
    """
    n = summary.get("replicates") if isinstance(summary, Mapping) else None
    if not is_int(n) or n < 1:
        raise ValueError(f"not an evaluate_replicates summary: replicates must be an int >= 1, got {n!r}")
    lines = []
    for m in metrics:
        mean, half = _mean_and_half(summary, m)
        lines.append(f"{m}: {mean:.4f} ± {half:.4f} (95% CI over {n} replicate{'s' * (n != 1)})"
                     if np.isfinite(half) else f"{m}: {mean:.4f} ({n} replicate{'s' * (n != 1)}: no interval)")
    return "\n".join(lines)


def _mean_and_half(summary: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """``summary[metric]``'s mean and 95% half-width (NaN when there is none: one replicate, NaN or JSON null).

    The one reading of a summary's AUC / AUPRC entry for the functions of this module.

    Raises:
        ValueError: the entry is missing or not ``{"mean": number in [0, 1], "ci95": number >= 0,
            NaN or null}`` (the metric and the value named).
    """
    entry = summary.get(metric) if isinstance(summary, Mapping) else None
    mean = entry.get("mean") if isinstance(entry, Mapping) else None
    half = entry.get("ci95") if isinstance(entry, Mapping) else None
    half = float("nan") if half is None else half
    if not (is_number(mean) and is_number(half)) or not 0.0 <= mean <= 1.0 or not (np.isnan(half) or 0.0 <= half < np.inf):
        raise ValueError(f"not an evaluate_replicates summary: {metric} must be {{'mean': number in [0, 1], "
                         f"'ci95': number >= 0 or null}}, got {entry!r:.80}")
    return float(mean), float(half)


def baseline_verdicts(summary: Mapping[str, Any]) -> str:
    """One sentence per baseline of ``summary``: is SALAD's mean test AUC clearly above, below, or level with it?

    "Clearly" means the 95% intervals do not overlap: SALAD's ``mean ± ci95`` against
    the baseline's (the untrained network and the reconstruction error have replicates;
    the PCA is one deterministic run, interval 0). Written from the numbers, so that a
    chapter never states a ranking its run does not show: where either side has no
    interval (a single replicate) no ranking is claimed.

    Raises:
        ValueError: ``summary`` lacks ``test_auc`` (not an :func:`~salad_lite.experiment.evaluate_replicates`
            result), or a metric is malformed (:func:`_mean_and_half`; named).
    """
    mean, half = _mean_and_half(summary, "test_auc")
    baselines = []
    if "untrained_encoder" in summary:
        baselines.append(("the same network before training",
                          *_mean_and_half(_entry(summary, "untrained_encoder"), "test_auc")))
    if "reconstruction_test_auc" in summary:
        baselines.append(("the reconstruction error", *_mean_and_half(summary, "reconstruction_test_auc")))
    if "pca_baseline" in summary:
        baselines.append(("the raw-pixel PCA", *_mean_and_half(_pca_entry(summary, ("test_auc",)), "test_auc")))
    lines = []
    for name, other, other_half in baselines:
        if not (np.isfinite(half) and np.isfinite(other_half)):
            missing = "either" if not (np.isfinite(half) or np.isfinite(other_half)) else (
                "SALAD's" if not np.isfinite(half) else "the baseline's")
            lines.append(f"SALAD's test AUC {mean:.3f} against {name} ({other:.3f}): {missing} has no interval "
                         "(a single replicate), so no ranking is claimed.")
            continue
        if mean - half > other + other_half:
            verdict = "clearly above"
        elif mean + half < other - other_half:
            verdict = "clearly below"
        else:
            verdict = "not distinguishable from"
        lines.append(f"SALAD's test AUC {mean:.3f} ± {half:.3f} is {verdict} {name} ({other:.3f}"
                     + (f" ± {other_half:.3f})." if other_half else ")."))
    return "\n".join(lines)


def paper_comparison(summary: Mapping[str, Any], test_labels: Any, dataset: str) -> str:
    """This run's mean test AUC / AUPRC, the chance AUPRC of the test split and the paper's SALAD row (AR 5 %, with ±).

    ``test_labels`` ``[M]`` in {0, 1}: the abnormal share is the AUPRC of a random score.

    Raises:
        ValueError: ``dataset`` is not in Table 1, ``summary`` lacks the test metrics, or
            ``test_labels`` are not 0/1 labels of both classes.
    """
    paper = paper_row(dataset)
    (auc_m, _), (auprc_m, _) = _mean_and_half(summary, "test_auc"), _mean_and_half(summary, "test_auprc")
    prevalence = float(binary_labels(test_labels, "the chance AUPRC").mean())
    return (f"Our test AUC {auc_m:.3f} and AUPRC {auprc_m:.3f}\n"
            f"(chance AUPRC = abnormal share of the test split = {prevalence:.3f});\n"
            f"the paper reports {paper['auc']:.3f} ± {paper['auc_pm']:.3f} / {paper['auprc']:.3f} ± "
            f"{paper['auprc_pm']:.3f} (its 95% CI over 4 replicates) for SALAD at AR {paper['AR %']} % "
            f"on {dataset.upper()}.")


def profile_table(dataset: str = "nih") -> pd.DataFrame:
    """The book's profiles side by side: architecture, resolution, schedule, K, data limits (one column each).

    Raises:
        salad_lite.config.ConfigError: ``dataset`` is not a known data set.
    """
    rows = {}
    for name in get_args(Profile):
        c = profile_config(name, dataset)
        rows[name] = {
            "architecture": c.model.arch, "image px": c.model.image_size,
            "pre-training epochs": c.train.pretrain_epochs, "rounds": c.train.rounds,
            "epochs per round": c.train.epochs_per_round, "batch": c.train.batch_size,
            "temperature": c.loss.temperature,
            "K (scoring)": c.score.k, "max training images": c.data.max_train_images or "all",
            "replicates": c.data.replicates,
        }
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- results per finding
#: The first row of :func:`per_finding_auc`: every abnormal test image against the normal ones.
ANY_FINDING = "any finding"
#: Fewest abnormal (and normal) test images a row needs for its AUC; below, the AUC is NaN and ``note`` says why.
MIN_FINDING_IMAGES = 5
#: Severity bin edges of :func:`per_finding_auc`: thirds of [0, 1] (subtle, moderate, obvious).
DEFAULT_SEVERITY_BINS: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)


def per_finding_auc(test_labels: Any, scores_by_method: Mapping[str, Any],
                    findings: Sequence[str | Sequence[str]],
                    severity: Sequence[float | Mapping[str, float] | None] | None = None,
                    bins: Sequence[float] = DEFAULT_SEVERITY_BINS, *, min_images: int = MIN_FINDING_IMAGES,
                    shared_by_normals: bool = False) -> pd.DataFrame:
    """Test AUC per finding (and per severity bin): the normal test images against each finding's test images.

    Every row compares a set of abnormal test images with the normal ones, by the same
    scores: the first row (:data:`ANY_FINDING`) takes every abnormal image (its AUC is
    the split's test AUC), then one row per finding, most frequent first. An image
    with several findings (a multi-label NIH film) counts under each of them. With
    ``severity``, each of these rows is followed by one row per bin of ``bins``
    holding the abnormal images whose severity for that finding falls in the bin
    (for :data:`ANY_FINDING`: an image's largest severity); bins are
    ``[b0, b1], (b1, b2], ...`` (:func:`severity_bin_index`, labelled by
    :func:`severity_bin_labels`). A row with fewer than ``min_images`` abnormal or
    normal images gets NaN AUCs and a ``note`` saying so: no finding is dropped.

    Where a method gives several replicates' scores, its AUC is the mean over
    replicates with the 95% half-width ``1.96 * std`` (:func:`salad_lite.metrics.mean_ci`);
    a single run (the deterministic PCA baseline) has a NaN half-width.

    Args:
        test_labels: ``[M]`` 0 normal / 1 abnormal.
        scores_by_method: method name -> scores ``[M]`` (one run) or ``[R, M]`` (R
            replicates; a list of R sequences of M), higher = more abnormal (e.g.
            ``{"SALAD": [r.test_scores for r in replicates], "PCA": pca["test_scores"]}``).
        findings: ``[M]``: per image its finding names, as a tuple or as one
            ``|``-separated text (``"Effusion|Mass"``), read by
            :func:`salad_lite.data.findings.parse_findings` (normal words such as
            ``No Finding`` dropped, any case). Normal images' names are ignored, unless
            ``shared_by_normals``; a missing entry (None, NaN) is refused for every image.
        severity: ``[M]`` or None: per image a mapping finding -> severity, or one
            number for all its findings, or None / NaN for a normal image; every
            finding of an abnormal image needs a finite severity inside ``bins``.
        bins: increasing severity bin edges (at least 2), used only with ``severity``.
        min_images: fewest abnormal and normal images a row needs (>= 1).
        shared_by_normals: the findings are groups that normal images belong to as well
            (MURA's body part, see :class:`salad_lite.data.findings.SplitFindings`): each
            group's abnormal images are compared with the normal images of that group.

    Returns:
        DataFrame, one row per (finding, severity bin): ``finding``, ``severity``
        (``"all"`` or the bin, e.g. ``"(0.33, 0.67]"``), ``n abnormal``, ``n normal``,
        then per method ``<method> AUC`` and ``<method> 95% CI`` (in [0, 1]; NaN when
        not scored or a single run), and ``note`` (empty when scored).

    Raises:
        ValueError: ``test_labels`` not 1-D (an ``[M, 1]`` array is refused, not flattened);
            a label other than 0/1; ``findings``, ``severity`` or a method's
            scores (per replicate) not of length M (both lengths named); no method, an
            empty method name, or a score that is NaN/inf; a missing ``findings`` entry
            (None, NaN; position named); an abnormal image with no finding; a severity missing, not finite or outside ``bins`` (image and
            finding named); ``bins`` not increasing; ``min_images`` < 1.
        TypeError: a ``findings`` or ``severity`` entry of another type (position named).

    Source: this book's protocol. ChestX-ray14 results are usually reported per finding
    (Wang et al., CVPR 2017, for a supervised classifier); here the one-class scores of
    the test split, each finding against the same normal images.
    """
    shape = np.shape(test_labels)
    if len(shape) != 1:
        raise ValueError(f"test_labels must be 1-D [M], got shape {shape}; an [M, 1] or [1, M] array is not "
                         "flattened silently")
    labels = binary_labels(np.asarray(test_labels), "per_finding_auc", need_both=False)
    m = len(labels)
    scores = _method_scores(scores_by_method, m)
    names = _per_image_findings(findings, labels, m, shared_by_normals)
    if not is_int(min_images) or min_images < 1:
        raise ValueError(f"min_images must be an int >= 1, got {min_images!r}")
    edges = _severity_bins(bins) if severity is not None else None
    levels = _per_image_severity(severity, labels, names, m, edges) if severity is not None else None

    abnormal = labels == 1
    counts: dict[str, int] = {}
    for i in np.flatnonzero(abnormal):
        for name in names[i]:
            counts[name] = counts.get(name, 0) + 1
    groups = [ANY_FINDING] + sorted(counts, key=lambda g: (-counts[g], g))
    rows = []
    for group in groups:
        if group == ANY_FINDING:
            members = abnormal.copy()
            normal = ~abnormal
            level = np.array([max(levels[i].values()) if abnormal[i] else np.nan for i in range(m)]) \
                if levels is not None else None
        else:
            member = np.array([group in n for n in names])
            members = abnormal & member
            normal = ~abnormal & (member if shared_by_normals else True)
            level = np.array([levels[i].get(group, np.nan) for i in range(m)]) if levels is not None else None
        rows.append(_auc_row(group, "all", labels, scores, members, normal, min_images))
        if edges is not None and level is not None:
            bin_of = severity_bin_index(level, edges)
            for k, label in enumerate(severity_bin_labels(edges)):
                rows.append(_auc_row(group, label, labels, scores, members & (bin_of == k), normal, min_images))
    return pd.DataFrame(rows)


def severity_bin_index(values: Any, edges: Sequence[float]) -> np.ndarray:
    """The bin of each severity under :func:`per_finding_auc`'s rule: ``[b0, b1], (b1, b2], ...``.

    Bins are closed on the right (and the first also on the left): a value on an inner
    edge belongs to the bin below it. Returns ``int64`` of the shape of ``values``: the
    bin (0-based), or -1 for NaN and values outside ``[b0, b_last]``.

    Raises:
        ValueError: ``edges`` are not at least 2 finite, strictly increasing numbers.
    """
    edges = _severity_bins(edges)
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(edges, values, side="left") - 1  # value in (edges[i], edges[i + 1]] -> i
    index = np.where(values == edges[0], 0, index)
    inside = np.isfinite(values) & (values >= edges[0]) & (values <= edges[-1])
    return np.where(inside, index, -1).astype(np.int64)


def severity_bin_labels(edges: Sequence[float]) -> list[str]:
    """Row labels of the severity bins: ``["[0.00, 0.33]", "(0.33, 0.67]", ...]``.

    Edges are written with the fewest decimals (at least 2) that keep every edge
    distinct, so close edges never print alike (``0.101`` and ``0.104``: 3 decimals).

    Raises:
        ValueError: ``edges`` are not at least 2 finite, strictly increasing numbers.
    """
    edges = _severity_bins(edges)
    for digits in range(2, 18):
        texts = [f"{e:.{digits}f}" for e in edges]
        if len(set(texts)) == len(texts):
            break
    else:  # distinct floats always differ in repr
        texts = [repr(float(e)) for e in edges]
    return [f"{'[' if k == 0 else '('}{lo}, {hi}]" for k, (lo, hi) in enumerate(zip(texts[:-1], texts[1:]))]


def _method_scores(scores_by_method: Mapping[str, Any], m: int) -> dict[str, np.ndarray]:
    """Method -> ``float64 [R, M]``, checked (names, lengths, finite values)."""
    if not isinstance(scores_by_method, Mapping) or not scores_by_method:
        raise ValueError("scores_by_method must map at least one method name to its test scores")
    out = {}
    for name, value in scores_by_method.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"method names must be non-empty text, got {name!r}")
        arr = finite_scores(value, f"scores of {name!r}")  # numbers, NaN/inf refused (counted)
        arr = arr[None] if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[0] < 1:
            raise ValueError(f"scores of {name!r} must be [M] or [R, M], got shape {np.shape(value)}")
        if arr.shape[1] != m:
            raise ValueError(f"scores of {name!r} have {arr.shape[1]} values per run but test_labels has {m}")
        out[name] = arr
    return out


def _per_image_findings(findings: Sequence[Any], labels: np.ndarray, m: int,
                        shared: bool) -> list[tuple[str, ...]]:
    """Per image its finding names (normal images: none, unless ``shared``); checked."""
    if isinstance(findings, str) or not hasattr(findings, "__len__"):
        raise TypeError(f"findings must be a sequence of M = {m} entries, got {type(findings).__name__}")
    if len(findings) != m:
        raise ValueError(f"findings has {len(findings)} entries but test_labels has {m}")
    names: list[tuple[str, ...]] = []
    for i, entry in enumerate(findings):
        kept = parse_findings(entry, f"findings[{i}]")
        if labels[i] == 1 and not kept:
            raise ValueError(f"abnormal test image {i} has no finding (findings[{i}] = {entry!r})")
        names.append(kept if labels[i] == 1 or shared else ())
    return names


def _severity_bins(bins: Sequence[float]) -> np.ndarray:
    edges = np.asarray(bins, dtype=np.float64).ravel()
    if edges.size < 2 or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
        raise ValueError(f"bins must be at least 2 finite, strictly increasing edges, got {list(bins)}")
    return edges


def _per_image_severity(severity: Sequence[Any], labels: np.ndarray, names: list[tuple[str, ...]], m: int,
                        edges: np.ndarray) -> list[dict[str, float]]:
    """Per image finding -> severity (abnormal images: every finding, inside the bins); checked."""
    if isinstance(severity, str) or not hasattr(severity, "__len__"):
        raise TypeError(f"severity must be a sequence of M = {m} entries, got {type(severity).__name__}")
    if len(severity) != m:
        raise ValueError(f"severity has {len(severity)} entries but test_labels has {m}")
    out: list[dict[str, float]] = []
    for i, entry in enumerate(severity):
        if labels[i] == 0:
            out.append({})
            continue
        if isinstance(entry, Mapping):
            given = dict(entry)
        elif is_number(entry):
            given = {name: entry for name in names[i]}
        elif entry is None:
            given = {}
        else:
            raise TypeError(f"severity[{i}] must be a number or a mapping finding -> number, got {entry!r}")
        levels = {}
        for name in names[i]:
            value = given.get(name)
            ok = is_number(value) and np.isfinite(value) and edges[0] <= value <= edges[-1]
            if not ok:
                raise ValueError(f"severity of finding {name!r} of abnormal test image {i} must be a finite number "
                                 f"in [{edges[0]:g}, {edges[-1]:g}], got {value!r}")
            levels[name] = float(value)
        out.append(levels)
    return out


def _auc_row(finding: str, severity: str, labels: np.ndarray, scores: Mapping[str, np.ndarray],
             abnormal: np.ndarray, normal: np.ndarray, min_images: int) -> dict[str, Any]:
    """One table row: counts, then AUC (mean over replicates) and 95% half-width per method, and the note."""
    n_abnormal, n_normal = int(abnormal.sum()), int(normal.sum())
    row: dict[str, Any] = {"finding": finding, "severity": severity, "n abnormal": n_abnormal, "n normal": n_normal}
    enough = n_abnormal >= min_images and n_normal >= min_images
    keep = abnormal | normal
    for name, runs in scores.items():
        if enough:
            mean, half = mean_ci([auc(labels[keep], run[keep]) for run in runs])
        else:
            mean, half = float("nan"), float("nan")
        row[f"{name} AUC"], row[f"{name} 95% CI"] = mean, half
    row["note"] = "" if enough else (f"too few test images ({n_abnormal} abnormal, {n_normal} normal; "
                                     f"each needs >= {min_images})")
    return row


def per_finding_text(table: pd.DataFrame, method: str = "SALAD", baseline: str = "PCA",
                     what: str = "finding") -> str:
    """Two to four sentences read off a :func:`per_finding_auc` table: best and worst finding, wins, severity.

    Names the finding ``method`` detects best and worst (the rows over all severities,
    :data:`ANY_FINDING` excluded) with ``baseline``'s AUC beside each, counts the
    findings where ``method`` is clearly above ``baseline`` (the lower end of its 95% CI
    above ``baseline``'s AUC: a higher mean alone is not counted; a single run, without a
    CI, is never clearly above, and the sentence says so), compares the mildest and the most
    severe bin of :data:`ANY_FINDING` when the table has severity bins, and lists
    the findings with too few test images. ``what`` names a row (``"finding"``,
    ``"body part"``...).

    Raises:
        ValueError: ``table`` lacks the columns of ``method`` or ``baseline`` (the
            methods it has are named), or is not a :func:`per_finding_auc` table.
    """
    needed = {"finding", "severity", "note"}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns):
        raise ValueError(f"not a per_finding_auc table: needs columns {sorted(needed)}")
    known = [c[: -len(" AUC")] for c in table.columns if c.endswith(" AUC")]
    for name in (method, baseline):
        if name not in known:
            raise ValueError(f"unknown method {name!r}: the table has {known}")
    col, base = f"{method} AUC", f"{baseline} AUC"
    whole = table[(table["severity"] == "all") & (table["finding"] != ANY_FINDING)]
    scored = whole[whole[col].notna()]
    plural = what if what.endswith("s") else f"{what}s"
    sentences = []
    if scored.empty:
        sentences.append(f"No {what} has enough test images to be scored on its own.")
    elif len(scored) == 1:
        only = scored.iloc[0]
        sentences.append(f"Only one {what} has enough test images: {only['finding']}, which {method} detects with "
                         f"AUC {only[col]:.3f} ({baseline}: {only[base]:.3f}).")
    else:
        best, worst = scored.loc[scored[col].idxmax()], scored.loc[scored[col].idxmin()]
        sentences.append(f"Of {len(scored)} {plural}, {method} detects {best['finding']} best (AUC {best[col]:.3f}; "
                         f"{baseline} {best[base]:.3f}) and {worst['finding']} worst (AUC {worst[col]:.3f}; "
                         f"{baseline} {worst[base]:.3f}).")
        both = scored[scored[base].notna()]
        lower = both[col] - both[f"{method} 95% CI"]  # NaN for a single run: never clearly above
        wins = int((lower > both[base]).sum())
        if both[f"{method} 95% CI"].notna().any():
            sentences.append(f"Its AUC is clearly above {baseline}'s (the lower end of its 95% CI higher) on "
                             f"{wins} of {len(both)} {plural}.")
        else:
            above = int((both[col] > both[base]).sum())
            sentences.append(f"A single run gives no 95% CI, so no {what} is clearly above {baseline}; its AUC is "
                             f"higher on {above} of {len(both)} {plural}.")
    bins = table[(table["finding"] == ANY_FINDING) & (table["severity"] != "all") & table[col].notna()]
    if len(bins) >= 2:
        low, high = bins.iloc[0], bins.iloc[-1]
        sentences.append(f"Over all {plural}, its AUC is {low[col]:.3f} at the mildest severity scored, "
                         f"{low['severity']}, and {high[col]:.3f} at the most severe, {high['severity']}.")
    few = whole[whole[col].isna()]["finding"].tolist()
    if few:
        sentences.append(f"Too few test images to score: {', '.join(few)}.")
    return " ".join(sentences)
