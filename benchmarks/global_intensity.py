"""How much of a set's separation is global film density? Validation split only.

On the real NIH subset the untrained network scores validation AUC 0.79, and
SALAD's validation-selected checkpoints come from its first epochs (issue 9).
Not a timing: this script measures, on the validation split of a set, what a
detector gets from the film's overall density and from its view alone, and
what the untrained network's Eq. 4 score owes to BatchNorm statistics that
training has not yet adapted:

- ``density``: the AUC of each film's mean pixel value (brighter = higher
  score). 0.5 = no separation; below 0.5 = the abnormal films are darker.
- per view (the metadata's ``view`` column, where the set has one): the same
  AUC within each view, and the AUC of the view alone (PA scored 1, AP 0).
- ``untrained``: Eq. 4 on the randomly initialised network of each seed (the
  default profile's network; K and the bank policy chosen on validation, as
  :func:`salad_lite.experiment.untrained_encoder_baseline` does), once with
  BatchNorm at its initial running statistics (mean 0, variance 1: what the
  untrained baseline scores) and once after they are re-estimated on the
  training images (:func:`recalibrate_batchnorm`; no weight changes). Beside each AUC, the
  Spearman correlation of the Eq. 4 scores with the films' mean density (below 0: darker
  films score as more abnormal), which says how much the score follows density.
- ``--training``: the same two numbers after every epoch of the default recipe's training
  (:func:`training_drift`; K and the bank policy fixed at the ones checkpoint selection uses),
  with BatchNorm's usual momentum (0.1) and with a slow one (:data:`SLOW_BN_MOMENTUM`), whose
  running statistics stay nearer their initial values. Training-mode BatchNorm uses each
  batch's own statistics, so the two runs of a seed train the same weights: the difference
  between them is the running statistics alone. It shows when the score stops following
  density, and how much of that the statistics explain.

    python benchmarks/global_intensity.py                    # embedded chest and ../shared/data/nih_subset
    python benchmarks/global_intensity.py --data-root /data/nih --seeds 3
    python benchmarks/global_intensity.py --data-root ../shared/data/nih_subset --seeds 4 --training
"""

from __future__ import annotations

import argparse
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from salad_lite.cli_errors import device_option, positive_int
from salad_lite.config import profile_config
from salad_lite.data.batches import check_splits, dataset_labels, image_batches
from salad_lite.experiment import UNTRAINED_BANK, score_split, select_scoring, splits_for
from salad_lite.metrics import auc
from salad_lite.trainer import SaladTrainer
from salad_lite.utils import progress_enabled

VIEW_COLUMN = "view"
USUAL_BN_MOMENTUM = 0.1  # PyTorch's, the recipe's: each step moves the running statistics 10 % of the way
SLOW_BN_MOMENTUM = 0.01  # --training's slow BatchNorm: 1 % of the way


def mean_density(images: np.ndarray) -> np.ndarray:
    """Mean pixel value [N] (float64, the images' units) of each image of ``images`` [N, S, S]."""
    return images.reshape(len(images), -1).mean(axis=1, dtype=np.float64)


def density_auc(images: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the mean pixel value of each image ``images`` [N, S, S] (brighter = higher score) for ``labels`` [N]."""
    return auc(labels, mean_density(images))


def view_rows(images: np.ndarray, labels: np.ndarray, views: pd.Series) -> list[dict[str, Any]]:
    """Per view: ``{"view", "images", "abnormal", "auc"}``, the mean-density AUC (``nan`` where the view holds one class).

    Views are compared stripped and upper-cased; a missing or blank view (NaN, None, " ") is its own row, ``"?"``.

    A last row ``{"view": "view alone", ...}`` gives the AUC of the view itself (PA = 1) when the
    split holds exactly the two views PA and AP, else it is left out.
    """
    views = pd.Series(views).fillna("").astype(str).str.strip().str.upper().replace("", "?").to_numpy()
    rows = []
    for view in sorted(set(views)):
        keep = views == view
        one_class = len(set(labels[keep].tolist())) < 2
        rows.append({"view": view, "images": int(keep.sum()), "abnormal": int(labels[keep].sum()),
                     "auc": float("nan") if one_class else density_auc(images[keep], labels[keep])})
    if set(views) == {"PA", "AP"}:
        rows.append({"view": "view alone", "images": len(views), "abnormal": int(labels.sum()),
                     "auc": auc(labels, (views == "PA").astype(np.float64))})
    return rows


def batchnorms(module: nn.Module) -> list[nn.Module]:
    """Every BatchNorm layer of ``module`` (any dimension), in module order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: Any, batch_size: int = 32) -> None:
    """Re-estimate the running mean and variance of every BatchNorm in ``model.encoder`` on ``dataset``'s images.

    Only the encoder runs (Eq. 4 scores its latents), so only its BatchNorm layers change; the
    decoder's and every weight are untouched. The statistics are the plain average over the
    batches (momentum ``None`` while they are gathered). Each layer's momentum is restored after,
    and the model is left in eval mode. All or nothing: if a batch fails, the encoder's running
    statistics are put back as they were before the call.

    Raises:
        ValueError: ``batch_size`` < 1 (before anything changes).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    norms = batchnorms(model.encoder)
    saved = [({k: v.clone() for k, v in m.state_dict().items()}, m.momentum) for m in norms]
    device = next(model.parameters()).device
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for batch in image_batches(dataset, batch_size):
            model.encode(batch.to(device))
    except BaseException:
        for m, (state, _) in zip(norms, saved):
            m.load_state_dict(state)
        raise
    finally:
        for m, (_, momentum) in zip(norms, saved):
            m.momentum = momentum
        model.eval()


def untrained_eq4(splits: dict[str, Any], cfg: Any, seed: int, recalibrate: bool, densities: np.ndarray,
                  device: str = "cpu") -> dict[str, float]:
    """Eq. 4 on the validation split with the untrained network of ``seed`` (K and bank policy chosen on validation).

    ``densities`` [N_val] is :func:`mean_density` of the validation images, computed once by the caller.

    Returns:
        ``{"auc": validation AUC, "density_rho": Spearman correlation of the chosen scores with
        ``densities``}`` (below 0: darker films score as more abnormal).
    """
    trainer = SaladTrainer(cfg.replace(train={"seed": seed}, score={"bank": UNTRAINED_BANK}),
                           splits["train"], splits["val"], device=device)
    if recalibrate:
        recalibrate_batchnorm(trainer.model, splits["train"], cfg.train.batch_size)
    chosen = select_scoring(trainer)
    scores = score_split(trainer, splits["val"], chosen["k"], chosen["discard_anomalous"])
    return {"auc": float(chosen["val_auc"]), "density_rho": float(spearmanr(scores, densities).statistic)}


def check_momentum(momentum: Any) -> None:
    """Refuse a BatchNorm momentum that is not a number in (0, 1].

    Raises:
        ValueError: 0, a negative or NaN value, above 1, a bool, or None (PyTorch's cumulative
            average, which these measures do not use).
    """
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 < momentum <= 1.0:
        raise ValueError(f"BatchNorm momentum must lie in (0, 1], got {momentum!r}")


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm of ``model``; returns how many layers were set.

    Only eval-mode passes read the running statistics: in training mode BatchNorm normalises
    with each batch's own statistics, so the momentum changes how a model is scored, never the
    weights it trains to.

    Raises:
        ValueError: ``momentum`` not a number in (0, 1] (:func:`check_momentum`); nothing is changed.
    """
    check_momentum(momentum)
    norms = batchnorms(model)
    for m in norms:
        m.momentum = momentum
    return len(norms)


def training_drift(splits: dict[str, Any], cfg: Any, seed: int, densities: np.ndarray,
                   bn_momentum: float | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """Validation AUC and score-density correlation after every epoch of training ``cfg`` with ``seed``.

    The model trains epoch by epoch in memory (no run folder) as the trainer does; after each
    epoch its validation films are scored by Eq. 4 with ``cfg.score.k`` and
    ``cfg.score.discard_anomalous`` (fixed, not chosen on validation as in :func:`untrained_eq4`),
    the setting checkpoint selection compares, so each AUC is the trainer's own ``val_auc`` of
    that epoch. The trainer is given no validation split, so it does not score the films a
    second time; the splits are checked here instead. ``densities`` [N_val] is
    :func:`mean_density` of the validation images. ``bn_momentum`` (None: the layers' own,
    :data:`USUAL_BN_MOMENTUM`) is set on every BatchNorm before training
    (:func:`set_batchnorm_momentum`); it changes the eval-mode scoring only, so runs of one
    seed with different momenta train the same weights.

    Returns:
        One ``{"epoch", "round", "auc", "density_rho"}`` per epoch of the schedule.

    Raises:
        ValueError: ``bn_momentum`` not in (0, 1], or ``densities`` not one value per validation
            image (both before any training); from :func:`salad_lite.data.batches.check_splits`,
            a validation split without both classes, a patient in both splits or a non-finite image.
        FloatingPointError: the loss became NaN/inf (from :meth:`SaladTrainer.train_step`).
    """
    if len(densities) != len(splits["val"]):
        raise ValueError(f"densities holds {len(densities)} values for {len(splits['val'])} validation images")
    if bn_momentum is not None:
        check_momentum(bn_momentum)
    check_splits({"train": splits["train"], "val": splits["val"]}, both_classes=("val",))
    labels = dataset_labels(splits["val"])
    trainer = SaladTrainer(cfg.replace(train={"seed": seed, "progress": False}), splits["train"], None,
                           device=device)  # no validation split: the loop below scores each epoch once
    if bn_momentum is not None:
        set_batchnorm_momentum(trainer.model, bn_momentum)
    rows = []
    for epoch in range(trainer.total_epochs):
        trainer.fit(until_epoch=epoch + 1)
        with torch.no_grad():
            scores = trainer.scorer().decision_function(trainer.embed(splits["val"]))
        rows.append({"epoch": epoch, "round": trainer.round_of_epoch(epoch), "auc": auc(labels, scores),
                     "density_rho": float(spearmanr(scores, densities).statistic)})
    return rows


def load_splits(data_root: str) -> tuple[Any, dict[str, Any]]:
    """The default profile's config and splits for the NIH-layout set at ``data_root`` ("" = the embedded chest set).

    Raises:
        FileNotFoundError, ValueError: from :func:`salad_lite.experiment.splits_for` (a wrong root).
    """
    cfg = profile_config("default", "nih", data_root).replace(train={"progress": False})
    return cfg, splits_for(cfg, progress=False)


def measure(cfg: Any, splits: dict[str, Any], seeds: int = 3, device: str = "cpu",
            training: bool = False) -> dict[str, Any]:
    """The module docstring's measures on the validation split of ``splits`` (from :func:`load_splits`).

    Returns:
        ``{"images", "abnormal", "density_auc", "views": [view rows] or [], "untrained":
        [{"seed", "initial": untrained_eq4(...), "recalibrated": untrained_eq4(...)}], "selection_k":
        cfg.score.k (the K of the training rows), "training":
        {momentum: [training_drift(...) per seed]} for USUAL_BN_MOMENTUM and SLOW_BN_MOMENTUM, or {}}``.
    """
    val = splits["val"]
    labels = dataset_labels(val)
    images = np.asarray(val.images)
    densities = mean_density(images)
    metadata = getattr(val, "metadata", None)
    has_views = isinstance(metadata, pd.DataFrame) and VIEW_COLUMN in metadata
    return {"images": len(labels), "abnormal": int(labels.sum()), "density_auc": auc(labels, densities),
            "views": view_rows(images, labels, metadata[VIEW_COLUMN]) if has_views else [],
            "untrained": [{"seed": s, "initial": untrained_eq4(splits, cfg, s, False, densities, device),
                           "recalibrated": untrained_eq4(splits, cfg, s, True, densities, device)}
                          for s in range(seeds)],
            "selection_k": cfg.score.k,
            "training": _training_runs(splits, cfg, seeds, densities, device) if training else {}}


def _training_runs(splits: dict[str, Any], cfg: Any, seeds: int, densities: np.ndarray,
                   device: str) -> dict[float, list[list[dict[str, Any]]]]:
    """``{momentum: [training_drift rows of seed 0, 1, ...]}`` for the usual and the slow momentum (a progress bar)."""
    runs: dict[float, list[list[dict[str, Any]]]] = {USUAL_BN_MOMENTUM: [], SLOW_BN_MOMENTUM: []}
    jobs = [(momentum, seed) for momentum in runs for seed in range(seeds)]
    for momentum, seed in tqdm(jobs, desc="training runs", unit="run", disable=not progress_enabled()):
        runs[momentum].append(training_drift(splits, cfg, seed, densities, momentum, device))
    return runs


def report(name: str, result: dict[str, Any]) -> str:
    """Markdown lines for one set's :func:`measure` result."""
    lines = [f"### {name}: validation split, {result['images']} films ({result['abnormal']} abnormal)",
             f"- mean-density AUC (brighter = more abnormal): {result['density_auc']:.3f}"]
    lines += [f"- {r['view']}: {r['images']} films ({r['abnormal']} abnormal), AUC {r['auc']:.3f}"
              for r in result["views"]]
    lines += ["", "| seed | untrained Eq. 4, BatchNorm at init: AUC (score-density rho) "
              "| BatchNorm re-estimated on train: AUC (rho) |", "|---|---|---|"]
    lines += [f"| {r['seed']} | {r['initial']['auc']:.3f} ({r['initial']['density_rho']:+.2f}) "
              f"| {r['recalibrated']['auc']:.3f} ({r['recalibrated']['density_rho']:+.2f}) |"
              for r in result["untrained"]]
    for momentum, runs in result["training"].items():
        lines += ["", f"Training, BatchNorm momentum {momentum}: validation AUC at K = {result['selection_k']} "
                  "(score-density rho) after each epoch",
                  "", "| epoch | round | " + " | ".join(f"seed {s}" for s in range(len(runs))) + " |",
                  "|---|---|" + "---|" * len(runs)]
        lines += [f"| {rows[0]['epoch']} | {rows[0]['round']} | "
                  + " | ".join(f"{r['auc']:.3f} ({r['density_rho']:+.2f})" for r in rows) + " |"
                  for rows in zip(*runs)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih_subset"  # ../shared beside the repository
    parser.add_argument("--data-root", default=None,
                        help="an NIH-layout folder; empty: the embedded chest set "
                             "(default: the embedded chest set and ../shared/data/nih_subset)")
    parser.add_argument("--seeds", type=positive_int, default=3, help="networks to measure (seeds 0..N-1)")
    parser.add_argument("--device", type=device_option, default="cpu", help="torch device for the networks")
    parser.add_argument("--training", action="store_true",
                        help="also train each seed's network and report the two measures after every epoch, with "
                             f"BatchNorm momentum {USUAL_BN_MOMENTUM} and {SLOW_BN_MOMENTUM} (about 15 s per seed "
                             "and momentum on the real NIH subset, 60 s on the embedded chest set)")
    args = parser.parse_args(argv)
    if args.data_root is not None:
        sets = {args.data_root or "embedded chest": args.data_root}
    else:
        sets = {"embedded chest": ""}
        if shared.is_dir():
            sets["real NIH films"] = str(shared)
        else:
            print(f"no real NIH set at {shared}: the embedded set alone")
    for name, root in sets.items():
        try:
            cfg, splits = load_splits(root)
        except (ValueError, FileNotFoundError) as error:  # a wrong --data-root: no images, no metadata table
            parser.error(str(error))
        print(report(name, measure(cfg, splits, args.seeds, args.device, args.training)), end="\n\n")


if __name__ == "__main__":
    main()
