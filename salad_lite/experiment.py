"""The evaluation protocol the book runs: train (or load), select on validation, score the test split once.

Run directories (``run_dir``) are shared between chapters::

    run_dir/<dataset>/seed<s>/last.*, best.*, snapshots/round<r>.*   training (trainer.py)
    run_dir/<dataset>/seed<s>/selection.json                         K / discard chosen on validation
    run_dir/<dataset>/metrics.json                                   test metrics of every replicate

A chapter that finds a finished run loads it; an interrupted one resumes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from salad_lite.baselines import pca_baseline
from salad_lite.config import SaladConfig
from salad_lite.metrics import auc, auprc, mean_ci, pr_curve_data, roc_curve_data
from salad_lite.scorer import SaladScorer
from salad_lite.trainer import SaladTrainer

DEFAULT_K_GRID = (1, 5, 10, 20, 50, 100)
RESULT_KEYS = frozenset({"seed", "k", "discard_anomalous", "val_auc", "selected_epoch", "selected_round", "test_auc",
                         "test_auprc", "reconstruction_test_auc", "reconstruction_test_auprc", "test_scores",
                         "test_labels"})


def replicate_dir(run_dir: str | Path, cfg: SaladConfig, seed: int | None = None) -> Path:
    """``run_dir/<dataset>/seed<s>``."""
    return Path(run_dir) / cfg.data.dataset / f"seed{cfg.train.seed if seed is None else seed}"


def train_or_load(cfg: SaladConfig, splits: dict[str, Any], run_dir: str | Path, device: str = "auto") -> SaladTrainer:
    """A trainer for ``cfg`` in ``replicate_dir(run_dir, cfg)``: trains what is missing, then loads ``best``."""
    trainer = SaladTrainer(cfg, splits["train"], splits["val"], run_dir=replicate_dir(run_dir, cfg), device=device)
    if not trainer.is_finished:
        trainer.fit()
    trainer.load_best()
    return trainer


def select_scoring(trainer: SaladTrainer, k_grid: Sequence[int] = DEFAULT_K_GRID,
                   discard_options: Sequence[bool] = (True, False)) -> dict[str, Any]:
    """Validation AUC for every (K, discard_anomalous); returns the grid and the best pair.

    Only the validation split is looked at. Ks larger than the bank are skipped.
    """
    bank = trainer.scoring_bank()
    val_z = trainer.embed(trainer.val_set)
    rows = []
    for discard in discard_options:
        n_rows = int((trainer.train_labels == 0).sum()) if discard else len(trainer.train_labels)
        for k in k_grid:
            if k > n_rows - 1:
                continue
            scorer = SaladScorer(k=k, discard_anomalous=discard, rule=trainer.cfg.score.rule)
            scores = scorer.fit(bank, trainer.train_labels).decision_function(val_z)
            rows.append({"k": k, "discard_anomalous": discard, "val_auc": auc(trainer.val_labels, scores),
                         "val_auprc": auprc(trainer.val_labels, scores)})
    if not rows:
        raise ValueError(f"no K in {list(k_grid)} fits a bank of {len(trainer.train_labels)} rows")
    best = max(rows, key=lambda r: (r["val_auc"], -r["k"]))
    return {"grid": rows, "k": best["k"], "discard_anomalous": best["discard_anomalous"], "val_auc": best["val_auc"]}


def score_split(trainer: SaladTrainer, dataset: Any, k: int, discard_anomalous: bool) -> np.ndarray:
    """Eq. 4 scores [M] of every image of ``dataset`` against the trainer's scoring bank."""
    scorer = SaladScorer(k=k, discard_anomalous=discard_anomalous, rule=trainer.cfg.score.rule)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="K=.* exceeds")
        scorer.fit(trainer.scoring_bank(), trainer.train_labels)
    return scorer.decision_function(trainer.embed(dataset))


def evaluate_replicate(cfg: SaladConfig, splits: dict[str, Any], run_dir: str | Path,
                       device: str = "auto") -> dict[str, Any]:
    """Train/load one replicate, select K and discard on validation, then score the test split once."""
    out_dir = replicate_dir(run_dir, cfg)
    result_path = out_dir / "result.json"
    if result_path.exists():
        cached = json.loads(result_path.read_text())
        if RESULT_KEYS <= cached.keys():
            return cached
        # written by an older salad_lite without some metric: recompute it with the same model and selection
    trainer = train_or_load(cfg, splits, run_dir, device)
    selection = select_scoring(trainer)
    (out_dir / "selection.json").write_text(json.dumps(selection, indent=2))
    scores = score_split(trainer, splits["test"], selection["k"], selection["discard_anomalous"])
    labels = np.asarray(splits["test"].labels)
    best_meta = json.loads((out_dir / "best.json").read_text())
    errors = trainer.reconstruction_errors(splits["test"])  # the same model's "Deep AE" score, for comparison
    result = {"seed": cfg.train.seed, "k": selection["k"], "discard_anomalous": selection["discard_anomalous"],
              "val_auc": selection["val_auc"], "selected_epoch": best_meta["selected_epoch"],
              "selected_round": best_meta["selected_round"], "test_auc": auc(labels, scores),
              "test_auprc": auprc(labels, scores), "reconstruction_test_auc": auc(labels, errors),
              "reconstruction_test_auprc": auprc(labels, errors), "test_scores": scores.tolist(),
              "test_labels": labels.tolist()}
    result_path.write_text(json.dumps(result))
    return result


def evaluate_replicates(cfg: SaladConfig, splits: dict[str, Any], run_dir: str | Path, replicates: int | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """Replicates with seeds 0..R-1 on the same split; mean and 95% CI of test AUC/AUPRC.

    ``reconstruction_test_auc`` / ``_auprc`` score the same selected models by their
    reconstruction error instead of Eq. 4 (a baseline: what the latent adds);
    ``pca_baseline`` is the raw-pixel reference of :func:`salad_lite.baselines.pca_baseline`
    (cached in ``run_dir/<dataset>/pca_baseline.json``).

    Writes ``run_dir/<dataset>/metrics.json`` and returns the same dict.
    """
    count = cfg.data.replicates if replicates is None else replicates
    results = [evaluate_replicate(cfg.replace(train={"seed": seed}), splits, run_dir, device) for seed in range(count)]
    summary: dict[str, Any] = {"dataset": cfg.data.dataset, "replicates": count, "config": cfg.to_dict(),
                               "per_replicate": [{k: v for k, v in r.items() if not k.startswith("test_s")
                                                  and k != "test_labels"} for r in results]}
    for metric in ("test_auc", "test_auprc", "reconstruction_test_auc", "reconstruction_test_auprc"):
        mean, half = mean_ci([r[metric] for r in results])
        summary[metric] = {"mean": mean, "ci95": half}
    baseline_path = Path(run_dir) / cfg.data.dataset / "pca_baseline.json"
    if not baseline_path.exists():  # deterministic and replicate-free: computed once, test scored once
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        baseline_path.write_text(json.dumps(pca_baseline(splits), indent=2))
    summary["pca_baseline"] = json.loads(baseline_path.read_text())
    first = results[0]
    summary["curves_seed0"] = {
        "roc": {k: v.tolist() for k, v in roc_curve_data(first["test_labels"], first["test_scores"]).items()
                if k != "thresholds"},
        "pr": {k: v.tolist() for k, v in pr_curve_data(first["test_labels"], first["test_scores"]).items()
               if k != "thresholds"},
    }
    path = Path(run_dir) / cfg.data.dataset / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return summary


def splits_for(cfg: SaladConfig, progress: bool = True) -> dict[str, Any]:
    """The cached train / val / test splits that ``cfg.data`` and ``cfg.model.image_size`` describe (split seed 0)."""
    from salad_lite.data.registry import load_splits

    return load_splits(cfg.data.dataset, cfg.data.data_root, image_size=cfg.model.image_size,
                       anomaly_ratio=cfg.data.anomaly_ratio, seed=0, max_train_images=cfg.data.max_train_images,
                       progress=progress, embedded_scale=cfg.data.embedded_scale)
