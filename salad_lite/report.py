"""Tables and text of the book: the paper's Table 1, this run's results beside it, summaries.

Everything here builds pandas DataFrames or strings from a run's configuration and
the summary dict of :func:`salad_lite.experiment.evaluate_replicates`; the figures
that show them are in :mod:`salad_lite.viz`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_args

import numpy as np
import pandas as pd

from salad_lite.config import Profile, SaladConfig, paper_config, profile_config

__all__ = ["PAPER_TABLE1", "TABLE1_DATASETS", "differences_from_paper", "metric_lines", "paper_comparison",
           "paper_row", "profile_table", "results_table", "summary_curves"]

TABLE1_DATASETS = ("nih", "mura")


def summary_curves(summary: Mapping[str, Any]) -> dict[str, Any]:
    """ROC and PR arrays of replicate 0 from ``evaluate_replicates``' summary, for :func:`salad_lite.viz.plot_roc_pr`.

    Raises:
        ValueError: ``summary`` lacks the curves or the per-replicate results.
    """
    try:
        roc, pr = summary["curves_seed0"]["roc"], summary["curves_seed0"]["pr"]
        first = summary["per_replicate"][0]
    except (KeyError, IndexError, TypeError) as err:
        raise ValueError(f"not an evaluate_replicates summary: missing {err}") from err
    return {"fpr": np.asarray(roc["fpr"]), "tpr": np.asarray(roc["tpr"]),
            "precision": np.asarray(pr["precision"]), "recall": np.asarray(pr["recall"]),
            "auc": float(first["test_auc"]), "auprc": float(first["test_auprc"]),
            "prevalence": float(np.asarray(pr["precision"])[0])}


#: Table 1 of Bozorgtabar et al. (MICCAI 2020): test AUC / AUPRC, anomaly ratio AR in % of training images.
PAPER_TABLE1: tuple[dict[str, Any], ...] = (
    {"method": "MemDAE", "AR %": 0, "nih_auc": 0.8778, "nih_auprc": 0.9198, "mura_auc": 0.7660, "mura_auprc": 0.8823},
    {"method": "SALAD w/o L_mse", "AR %": 5, "nih_auc": 0.8693, "nih_auprc": 0.9121, "mura_auc": 0.7765,
     "mura_auprc": 0.8892},
    {"method": "SALAD w/o L_agg", "AR %": 5, "nih_auc": 0.8824, "nih_auprc": 0.9332, "mura_auc": 0.7923,
     "mura_auprc": 0.9128},
    {"method": "SALAD", "AR %": 5, "nih_auc": 0.9091, "nih_auprc": 0.9552, "mura_auc": 0.8117, "mura_auprc": 0.9419},
    {"method": "SALAD", "AR %": 10, "nih_auc": 0.9167, "nih_auprc": 0.9674, "mura_auc": 0.8195, "mura_auprc": 0.9502},
    {"method": "SALAD", "AR %": 15, "nih_auc": 0.9189, "nih_auprc": 0.9705, "mura_auc": 0.8245, "mura_auprc": 0.9582},
)


def results_table(summary: Mapping[str, Any], dataset: str = "nih", label: str = "this run") -> pd.DataFrame:
    """The paper's Table 1 rows for ``dataset`` with this run's mean test AUC / AUPRC (and 95% CI) below.

    When ``summary`` has them, two baseline rows follow: the same models scored by
    reconstruction error, and the raw-pixel PCA reconstruction (deterministic: one run).

    ``summary``: the dict of :func:`salad_lite.experiment.evaluate_replicates`. Returns a
    pandas DataFrame with columns ``method``, ``AR %``, ``AUC``, ``AUPRC``, ``AUC 95% CI``,
    ``AUPRC 95% CI``, ``replicates`` and ``source``.

    Raises:
        ValueError: ``dataset`` is not ``nih`` or ``mura`` (Table 1 has no other columns).
    """
    _check_table1_dataset(dataset)

    def row(method: str, ar_percent: float, auc_value: float, auprc_value: float, auc_ci: float = np.nan,
            auprc_ci: float = np.nan, replicates: int = 1, source: str = label) -> dict[str, Any]:
        return {"method": method, "AR %": ar_percent, "AUC": auc_value, "AUPRC": auprc_value,
                "AUC 95% CI": auc_ci, "AUPRC 95% CI": auprc_ci, "replicates": replicates, "source": source}

    rows = [row(r["method"], r["AR %"], r[f"{dataset}_auc"], r[f"{dataset}_auprc"], replicates=4,
                source="paper, Table 1") for r in PAPER_TABLE1]
    ar = round(float(summary["config"]["data"]["anomaly_ratio"]) * 100, 1)
    reps = int(summary["replicates"])
    auc_s, auprc_s = summary["test_auc"], summary["test_auprc"]
    rows.append(row("SALAD (salad_lite)", ar, auc_s["mean"], auprc_s["mean"], auc_s["ci95"], auprc_s["ci95"], reps))
    if "reconstruction_test_auc" in summary:
        auc_s, auprc_s = summary["reconstruction_test_auc"], summary["reconstruction_test_auprc"]
        rows.append(row("same AE, reconstruction error (baseline)", ar, auc_s["mean"], auprc_s["mean"],
                        auc_s["ci95"], auprc_s["ci95"], reps))
    if "pca_baseline" in summary:
        pca = summary["pca_baseline"]
        rows.append(row(f"raw pixels, PCA-{pca['n_components']} reconstruction (baseline)", ar, pca["test_auc"],
                        pca["test_auprc"]))
    return pd.DataFrame(rows)


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
        "anomaly ratio AR": (f"{paper.data.anomaly_ratio:.0%} (also 10%, 15%)", f"{cfg.data.anomaly_ratio:.0%}"),
        "K (Eq. 4)": (paper.score.k, f"chosen on validation: {', '.join(map(str, ks))}" if ks else cfg.score.k),
        "scoring bank": (paper.score.bank, cfg.score.bank),
        "model selection": ("best test epoch (public code)", "best validation epoch"),
        "replicates": (paper.data.replicates, cfg.data.replicates),
    }
    return pd.DataFrame([{"aspect": k, "paper": str(v[0]), "this run": str(v[1])} for k, v in rows.items()]
                        ).set_index("aspect")


def paper_row(dataset: str, method: str = "SALAD", ar_percent: float = 5) -> dict[str, Any]:
    """One row of :data:`PAPER_TABLE1` as ``{"method", "AR %", "auc", "auprc"}`` for ``dataset``.

    Raises:
        ValueError: ``dataset`` is not in Table 1, or no row has this method and AR.
    """
    _check_table1_dataset(dataset)
    for row in PAPER_TABLE1:
        if row["method"] == method and row["AR %"] == ar_percent:
            return {"method": method, "AR %": ar_percent, "auc": row[f"{dataset}_auc"],
                    "auprc": row[f"{dataset}_auprc"]}
    raise ValueError(f"Table 1 has no row for method {method!r} at AR {ar_percent} %")


def _check_table1_dataset(dataset: str) -> None:
    if dataset not in TABLE1_DATASETS:
        raise ValueError(f"Table 1 has NIH and MURA columns only, not {dataset!r}")


def metric_lines(summary: Mapping[str, Any], metrics: tuple[str, ...] = ("test_auc", "test_auprc")) -> str:
    """``test_auc: 0.8123 ± 0.0456 (95% CI over 3 replicates)``, one line per metric of the summary.

    Raises:
        ValueError: ``summary`` lacks one of ``metrics`` or the replicate count.
    """
    try:
        n = int(summary["replicates"])
        values = [(m, float(summary[m]["mean"]), float(summary[m]["ci95"])) for m in metrics]
    except (KeyError, TypeError) as err:
        raise ValueError(f"not an evaluate_replicates summary: missing {err}") from err
    return "\n".join(f"{m}: {mean:.4f} ± {ci:.4f} (95% CI over {n} replicates)" for m, mean, ci in values)


def paper_comparison(summary: Mapping[str, Any], test_labels: Any, dataset: str) -> str:
    """This run's mean test AUC / AUPRC, the chance AUPRC of the test split and the paper's SALAD row (AR 5 %).

    ``test_labels`` ``[M]`` in {0, 1}: the abnormal share is the AUPRC of a random score.

    Raises:
        ValueError: ``dataset`` is not in Table 1, or ``summary`` lacks the test metrics.
    """
    paper = paper_row(dataset)
    try:
        auc_m, auprc_m = float(summary["test_auc"]["mean"]), float(summary["test_auprc"]["mean"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"not an evaluate_replicates summary: missing {err}") from err
    prevalence = float(np.mean(np.asarray(test_labels) == 1))
    return (f"Our test AUC {auc_m:.3f} and AUPRC {auprc_m:.3f}\n"
            f"(chance AUPRC = abnormal share of the test split = {prevalence:.3f});\n"
            f"the paper reports {paper['auc']:.3f} / {paper['auprc']:.3f} for SALAD at AR {paper['AR %']} % "
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
            "K (scoring)": c.score.k, "max training images": c.data.max_train_images or "all",
            "replicates": c.data.replicates,
        }
    return pd.DataFrame(rows)
