"""The evaluation protocol the book runs: train (or load), select on validation, score the test split once.

Run directories (``run_dir``) are shared between chapters::

    run_dir/<dataset>/seed<s>/last.*, best.*, snapshots/round<r>.*   training (trainer.py)
    run_dir/<dataset>/seed<s>/selection.json                         K / discard chosen on validation
    run_dir/<dataset>/seed<s>/result.json                            the replicate's ReplicateResult
    run_dir/<dataset>/pca_baseline.json                              the raw-pixel PCA reference
    run_dir/<dataset>/metrics.json                                   test metrics of every replicate
    run_dir/run.json, run_dir/config.json                            what ``salad-lite train`` ran (see save_run_description)

A chapter that finds a finished run loads it; an interrupted one resumes. Every
entry point checks the splits it receives once, before any work
(:func:`salad_lite.data.batches.check_splits`: no patient in two splits, no
NaN/inf pixel), and every file is written atomically and read back naming the
file on failure (:mod:`salad_lite.files`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np

from salad_lite.baselines import pca_baseline
from salad_lite.config import ConfigError, SaladConfig, check_value, parse_class_map
from salad_lite.data.batches import check_splits, dataset_labels, splits_fingerprint
from salad_lite.files import CorruptFileError, read_json, remove_stale_temps, write_json_atomic
from salad_lite.metrics import auc, auprc, binary_labels, mean_ci, pr_curve_data, roc_curve_data
from salad_lite.scorer import SaladScorer
from salad_lite.trainer import SaladTrainer, config_changes
from salad_lite.utils import is_finite_number, is_int, is_number

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class ReplicateResult:
    """One replicate's outcome (``result.json``): the selection on validation and the test split scored once.

    AUCs and AUPRCs are in [0, 1].
    """

    seed: int
    k: int
    discard_anomalous: bool
    val_auc: float
    """The replicate's seed, and the K / bank policy chosen on validation with the validation AUC they reach."""
    test_scores: tuple[float, ...]
    """Eq. 4 scores [M] of the M test images with that choice (higher = more abnormal)."""
    test_auc: float
    test_auprc: float
    reconstruction_test_auc: float
    reconstruction_test_auprc: float
    """Test AUC / AUPRC of Eq. 4, then of the same model's reconstruction error (the "Deep AE" score)."""
    test_labels: tuple[int, ...]
    """The 0/1 labels [M] of the test images."""
    selected_epoch: int
    selected_round: int
    """The validation-selected checkpoint: its epoch (0-based) and round (0 = pre-training)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (tuples become lists)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in dataclasses.asdict(self).items()}

    def summary_row(self) -> dict[str, Any]:
        """The fields without the per-image ``test_scores`` / ``test_labels`` (a row of ``per_replicate``)."""
        return {name: value for name, value in self.to_dict().items() if name not in ("test_scores", "test_labels")}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "replicate result") -> "ReplicateResult":
        """Build from :meth:`to_dict`'s output, checking every field's type.

        Raises:
            CorruptFileError: ``data`` is not a dict, lacks a field, or a value
                has the wrong type (``source``, e.g. the file, and the field named).
        """
        if not isinstance(data, dict):
            raise CorruptFileError(f"{source} must hold a JSON object, got {type(data).__name__}")
        hints = get_type_hints(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
        if missing:
            raise CorruptFileError(f"{source} lacks {missing}")
        try:
            return cls(**{f.name: check_value(f.name, data[f.name], hints[f.name]) for f in dataclasses.fields(cls)})
        except ConfigError as error:
            raise CorruptFileError(f"{source}: {error}") from None

    @classmethod
    def is_complete(cls, data: Any) -> bool:
        """True if ``data`` has every field (a result.json of an older salad_lite may lack a metric)."""
        return isinstance(data, dict) and all(f.name in data for f in dataclasses.fields(cls))


RUN_DESCRIPTION = "run.json"
"""The file in a run folder that records what ``salad-lite train`` ran: configuration and data arguments."""


def save_run_description(run_dir: str | Path, cfg: SaladConfig, split_file: str = "") -> Path:
    """Record in ``run_dir`` what rebuilds the run: ``run.json`` (config, data root, split file) and ``config.json``.

    ``config.json`` is the configuration alone (``salad-lite train --config`` reads it);
    ``run.json`` is what ``salad-lite evaluate`` / ``score`` read. Both written atomically.

    Returns:
        The path of ``run.json``.

    Raises:
        OSError: the folder cannot be written.
    """
    folder = Path(run_dir)
    cfg.to_json(folder / "config.json")
    return write_json_atomic(folder / RUN_DESCRIPTION, {"config": cfg.to_dict(), "data_root": cfg.data.data_root,
                                                        "split_file": split_file}, indent=2)


def load_run_description(run_dir: str | Path) -> tuple[SaladConfig, str]:
    """The configuration and split file recorded by :func:`save_run_description`.

    Returns:
        ``(cfg, split_file)``; ``cfg.data.data_root`` is the data root ("" = the embedded set),
        ``split_file`` "" for the seeded split.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist or holds no ``run.json`` (both named).
        salad_lite.files.CorruptFileError: ``run.json`` is damaged or lacks a field (named).
        ConfigError: its configuration is invalid (file and field named).
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist")
    path = folder / RUN_DESCRIPTION
    if not path.is_file():
        raise FileNotFoundError(f"run folder {folder} holds no {RUN_DESCRIPTION}: it was not made by "
                                "`salad-lite train` (train into it first)")
    data = read_json(path, "run description")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) \
            or not isinstance(data.get("split_file"), str):
        raise CorruptFileError(f"run description {path} must hold an object with 'config' (object) and "
                               "'split_file' (text)")
    return SaladConfig.from_dict(data["config"], source=str(path)), data["split_file"]


def replicate_dir(run_dir: str | Path, cfg: SaladConfig, seed: int | None = None) -> Path:
    """``run_dir/<dataset>/seed<s>`` (``s`` = ``seed``, default ``cfg.train.seed``)."""
    return Path(run_dir) / cfg.data.dataset / f"seed{cfg.train.seed if seed is None else seed}"


def train_or_load(cfg: SaladConfig, splits: dict[str, Any], run_dir: str | Path, device: str = "auto") -> SaladTrainer:
    """A trainer for ``cfg`` in ``replicate_dir(run_dir, cfg)``: trains what is missing, then loads ``best``.

    Returns:
        The trainer holding the validation-selected checkpoint; that checkpoint's
        metadata (``selected_epoch``, ``selected_round``, ``best_val_auc``,
        ``history``...) is ``trainer.selected``.

    Raises:
        KeyError: ``splits`` lacks train or val.
        salad_lite.data.splits.PatientLeakError: a patient is in two of the splits given.
        salad_lite.data.batches.NonFiniteImageError: an image of any split holds NaN/inf pixels.
        salad_lite.files.CorruptFileError: a checkpoint is damaged or does not fit (file named).
        ValueError: the run folder holds a run of another configuration.
    """
    check_splits(splits, required=("train", "val"), both_classes=("val",))
    trainer = SaladTrainer(cfg, splits["train"], splits["val"], run_dir=replicate_dir(run_dir, cfg), device=device)
    if not trainer.is_finished:
        trainer.fit()
    trainer.load_best()
    return trainer


def select_scoring(trainer: SaladTrainer) -> dict[str, Any]:
    """Validation AUC for every (K, discard_anomalous) of ``cfg.score.k_grid`` x ``cfg.score.discard_options``.

    Only the validation split is looked at. A K the bank cannot serve (K > N' - 1,
    N' the rows kept) is skipped rather than clamped, so no setting is scored twice.
    The best pair has the highest validation AUC (ties: the smaller K).

    Returns:
        ``{"grid": [{"k", "discard_anomalous", "val_auc", "val_auprc"}], "k",
        "discard_anomalous", "val_auc"}`` and the :func:`selection_basis`.

    Raises:
        ValueError: the validation split lacks one class (checked before anything is
            embedded) or has a label other than 0/1; no K of the grid fits the bank.
    """
    binary_labels(trainer.val_labels, "select_scoring (validation AUC)")
    k_grid, discard_options = trainer.cfg.score.k_grid, trainer.cfg.score.discard_options
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
    return {"grid": rows, "k": best["k"], "discard_anomalous": best["discard_anomalous"], "val_auc": best["val_auc"],
            **selection_basis(trainer)}


def selection_basis(trainer: SaladTrainer) -> dict[str, Any]:
    """What a stored scoring selection was chosen from: the grid, the rule and the model's selected epoch.

    Stored in ``selection.json``; a selection whose basis differs from the current
    configuration and model is chosen again, not reused.
    """
    score = trainer.cfg.score
    return {"k_grid": list(score.k_grid), "discard_options": list(score.discard_options), "rule": score.rule,
            "selected_epoch": (trainer.selected or {}).get("selected_epoch")}


def score_split(trainer: SaladTrainer, dataset: Any, k: int, discard_anomalous: bool) -> np.ndarray:
    """Eq. 4 scores [M] of every image of ``dataset`` against the trainer's scoring bank.

    A K the bank cannot serve is clamped (see :class:`~salad_lite.scorer.SaladScorer`).

    Raises:
        salad_lite.data.splits.PatientLeakError: a patient of ``dataset`` is also in the training split.
        ValueError: degenerate latents or bad training labels (see :meth:`SaladScorer.fit`).
    """
    check_splits({"train": trainer.train_set, "scored": dataset})
    scorer = SaladScorer(k=k, discard_anomalous=discard_anomalous, rule=trainer.cfg.score.rule)
    scorer.fit(trainer.scoring_bank(), trainer.train_labels)
    return scorer.decision_function(trainer.embed(dataset))


def evaluate_replicate(cfg: SaladConfig, splits: dict[str, Any], run_dir: str | Path,
                       device: str = "auto", trainer: SaladTrainer | None = None) -> ReplicateResult:
    """Train/load one replicate, select K and discard on validation, then score the test split once.

    A stored ``result.json`` is returned when it records this configuration and
    these splits (:func:`splits_fingerprint`); one written by an older salad_lite
    that lacks a field or the record, or for another test split, is recomputed with
    the same model and selection.

    ``trainer``: this replicate's finished trainer, when the caller has built it
    already (the CLI does, to refuse an unfinished run rather than train it):
    used instead of a second one, which would hash the training and validation
    pixels again. None (default): trained or loaded here (:func:`train_or_load`).

    Raises:
        KeyError: ``splits`` lacks train, val or test.
        salad_lite.data.splits.PatientLeakError: a patient is in two splits.
        salad_lite.data.batches.NonFiniteImageError: an image holds NaN/inf pixels (split and image named).
        salad_lite.files.CorruptFileError: ``result.json`` or a checkpoint is damaged, or the stored
            metrics are not what its stored test scores give (file named).
        ValueError: validation or test lacks a class; the run folder holds a run or a result
            of another configuration, or a run trained on other training or validation
            splits (file named); ``trainer`` is not this replicate's finished trainer.
    """
    check_splits(splits, required=SPLIT_NAMES, both_classes=("val", "test"))
    out_dir = replicate_dir(run_dir, cfg)
    if trainer is not None:
        _check_replicate_trainer(trainer, cfg, splits, out_dir)
    result_path = out_dir / "result.json"
    fingerprint = splits_fingerprint(splits)
    if result_path.exists():
        cached = read_json(result_path, "replicate result")
        if ReplicateResult.is_complete(cached) and _stored_for(cached, result_path, cfg, fingerprint):
            stored = ReplicateResult.from_dict(cached, source=f"replicate result {result_path}")
            check_stored_test_scores(stored.to_dict(), dataset_labels(splits["test"]),
                                     f"replicate result {result_path}")
            return stored
    if trainer is None:
        trainer = train_or_load(cfg, splits, run_dir, device)
    elif trainer.selected is None:
        trainer.load_best()
    selection = select_scoring(trainer)
    write_json_atomic(out_dir / "selection.json", selection, indent=2)
    scores = score_split(trainer, splits["test"], selection["k"], selection["discard_anomalous"])
    labels = dataset_labels(splits["test"])
    errors = trainer.reconstruction_errors(splits["test"])  # the same model's "Deep AE" score, for comparison
    result = ReplicateResult(
        seed=cfg.train.seed, k=selection["k"], discard_anomalous=selection["discard_anomalous"],
        val_auc=selection["val_auc"], selected_epoch=trainer.selected["selected_epoch"],
        selected_round=trainer.selected["selected_round"], test_auc=auc(labels, scores),
        test_auprc=auprc(labels, scores), reconstruction_test_auc=auc(labels, errors),
        reconstruction_test_auprc=auprc(labels, errors), test_scores=tuple(float(v) for v in scores),
        test_labels=tuple(int(v) for v in labels))
    write_json_atomic(result_path, {**result.to_dict(), "config": cfg.to_dict(), "splits_sha256": fingerprint})
    return result


def _check_replicate_trainer(trainer: SaladTrainer, cfg: SaladConfig, splits: dict[str, Any], out_dir: Path) -> None:
    """Refuse a trainer given to :func:`evaluate_replicate` that is not the finished one of this replicate.

    Raises:
        TypeError: it is not a :class:`SaladTrainer`.
        ValueError: another configuration, folder or training/validation split, or not trained to the end.
    """
    if not isinstance(trainer, SaladTrainer):
        raise TypeError(f"trainer must be a SaladTrainer, got {type(trainer).__name__}")
    if trainer.run_dir is None or trainer.run_dir.resolve() != out_dir.resolve():
        raise ValueError(f"trainer belongs to another replicate: its folder is {trainer.run_dir}, this "
                         f"replicate's {out_dir}")
    changed = config_changes(trainer.cfg, cfg, ignored=_NOT_RESULT)
    if changed:
        raise ValueError(f"trainer was built with another configuration ({'; '.join(changed)})")
    if trainer.train_set is not splits["train"] or trainer.val_set is not splits["val"]:
        raise ValueError("trainer was built on other training or validation sets than the splits given")
    if not trainer.is_finished:
        raise ValueError(f"trainer of {out_dir} is trained to epoch {trainer.epoch} of {trainer.total_epochs}: "
                         "finish it first")


# Settings that change neither a replicate's model nor its selection: a stored result stays valid.
_NOT_RESULT = frozenset({("data", "replicates"), ("train", "progress"), ("train", "sync_batchnorm"),
                         ("data", "data_root")})  # where the images live: the splits' fingerprint checks the images


def _stored_for(stored: dict[str, Any], path: Path, cfg: SaladConfig, fingerprint: str) -> bool:
    """True if a stored result was computed from ``cfg`` and these splits; False if it must be computed again.

    It is computed again when it predates the record, or when the splits differ: the
    model's checkpoints record the training and validation splits and refuse others,
    so what is recomputed with the same model is a changed test split's scores.

    Raises:
        ValueError: it was computed with another configuration (the file and the
            differences named): use another run folder.
    """
    if "config" not in stored or "splits_sha256" not in stored:
        return False  # written by an older salad_lite: recomputed with the same model and selection
    changed = config_changes(SaladConfig.from_dict(stored["config"], source=str(path)), cfg, ignored=_NOT_RESULT)
    if changed:
        raise ValueError(f"{path} was computed with another configuration ({'; '.join(changed)}); "
                         "use another run folder, or delete it to recompute")
    return stored["splits_sha256"] == fingerprint


def evaluate_replicates(cfg: SaladConfig, splits: dict[str, Any], run_dir: str | Path, replicates: int | None = None,
                        device: str = "auto") -> dict[str, Any]:
    """Replicates with seeds 0..R-1 on the same split; mean and 95% CI of test AUC/AUPRC.

    ``reconstruction_test_auc`` / ``_auprc`` score the same selected models by their
    reconstruction error instead of Eq. 4 (a baseline: what the latent adds);
    ``pca_baseline`` is the raw-pixel reference of :func:`salad_lite.baselines.pca_baseline`
    (cached in ``run_dir/<dataset>/pca_baseline.json``, with its per-image ``test_scores``);
    ``untrained_encoder`` is Eq. 4 on the same network before any training
    (:func:`untrained_encoder_baseline`, cached in ``run_dir/<dataset>/untrained_encoder.json``):
    what the training adds.

    Writes ``run_dir/<dataset>/metrics.json`` and returns the same dict.

    Raises:
        KeyError: ``splits`` lacks train, val or test.
        salad_lite.data.splits.PatientLeakError: a patient is in two splits (checked before any training).
        salad_lite.data.batches.NonFiniteImageError: an image holds NaN/inf pixels (split and image named).
        salad_lite.files.CorruptFileError: a stored result, baseline or checkpoint is damaged (file named).
        ValueError: ``replicates`` < 1; validation or test lacks a class.
    """
    count = cfg.data.replicates if replicates is None else replicates
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"replicates must be an int >= 1, got {count!r}")
    check_splits(splits, required=SPLIT_NAMES, both_classes=("val", "test"))
    remove_stale_temps(Path(run_dir) / cfg.data.dataset)  # left by a killed process; the trainer clears seed<s>/
    results = [evaluate_replicate(cfg.replace(train={"seed": seed}), splits, run_dir, device) for seed in range(count)]
    summary: dict[str, Any] = {"dataset": cfg.data.dataset, "replicates": count, "config": cfg.to_dict(),
                               "per_replicate": [r.summary_row() for r in results]}
    for metric in ("test_auc", "test_auprc", "reconstruction_test_auc", "reconstruction_test_auprc"):
        mean, half = mean_ci([getattr(r, metric) for r in results])
        summary[metric] = {"mean": mean, "ci95": half}
    fingerprint = splits_fingerprint(splits)  # hashed once for both stored baselines
    folder = Path(run_dir) / cfg.data.dataset
    summary["pca_baseline"] = _pca_baseline_once(splits, folder / "pca_baseline.json", fingerprint)
    summary["untrained_encoder"] = _untrained_once(cfg, splits, count, folder / "untrained_encoder.json", device,
                                                   fingerprint)
    first = results[0]
    summary["curves_seed0"] = {
        "roc": {k: v.tolist() for k, v in roc_curve_data(first.test_labels, first.test_scores).items()
                if k != "thresholds"},
        "pr": {k: v.tolist() for k, v in pr_curve_data(first.test_labels, first.test_scores).items()
               if k != "thresholds"},
    }
    write_json_atomic(Path(run_dir) / cfg.data.dataset / "metrics.json", summary, indent=2)
    return summary


def untrained_encoder_baseline(cfg: SaladConfig, splits: dict[str, Any], replicates: int,
                               device: str = "auto") -> dict[str, Any]:
    """Eq. 4 on the randomly initialised network of seeds 0..R-1: the protocol of a replicate, without training.

    For each seed the untrained encoder (eval mode) embeds the splits; K and the
    bank policy are chosen on validation (:func:`select_scoring`) and the test
    split is scored once. A trained SALAD that does not beat this reference has
    learned nothing its initialisation did not already give (random convolutional
    features are a known strong k-NN baseline).

    The bank is always the untrained network's embeddings of the training images
    (``score.bank="embeddings"``), whatever ``cfg.score.bank`` says: an untrained
    network has no trained memory, and its memory bank holds the random unit
    vectors it was initialised with, which are no embedding of any image.

    Returns:
        ``{"bank": "embeddings", "per_seed": [{"seed", "k", "discard_anomalous", "val_auc", "test_auc",
        "test_auprc"}], "test_auc": {"mean", "ci95"}, "test_auprc": {"mean", "ci95"}}``.

    Raises:
        KeyError: ``splits`` lacks train, val or test.
        ValueError: ``replicates`` < 1; validation or test lacks a class.
    """
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise ValueError(f"replicates must be an int >= 1, got {replicates!r}")
    check_splits(splits, required=SPLIT_NAMES, both_classes=("val", "test"))
    labels = dataset_labels(splits["test"])
    untrained = cfg.replace(score={"bank": UNTRAINED_BANK})  # no trained memory: score the images' embeddings
    rows = []
    for seed in range(replicates):
        trainer = SaladTrainer(untrained.replace(train={"seed": seed}), splits["train"], splits["val"], device=device)
        selection = select_scoring(trainer)
        scores = score_split(trainer, splits["test"], selection["k"], selection["discard_anomalous"])
        rows.append({"seed": seed, "k": selection["k"], "discard_anomalous": selection["discard_anomalous"],
                     "val_auc": selection["val_auc"], "test_auc": auc(labels, scores),
                     "test_auprc": auprc(labels, scores)})
    summary: dict[str, Any] = {"bank": UNTRAINED_BANK, "per_seed": rows}
    for metric in ("test_auc", "test_auprc"):
        mean, half = mean_ci([r[metric] for r in rows])
        summary[metric] = {"mean": mean, "ci95": half}
    return summary


UNTRAINED_BANK = "embeddings"
"""The bank :func:`untrained_encoder_baseline` scores against, recorded in its result as ``"bank"``."""

_UNTRAINED_ROW = {"seed": int, "k": int, "discard_anomalous": bool, "val_auc": float, "test_auc": float,
                  "test_auprc": float}


def _check_untrained_result(stored: dict[str, Any], path: Path) -> None:
    """Refuse a stored untrained-encoder result whose structure is not the one written (the file named).

    Raises:
        salad_lite.files.CorruptFileError: ``per_seed`` is not a non-empty list of objects with the
            fields of a row (AUCs in [0, 1]), or ``test_auc`` / ``test_auprc`` are not objects with finite
            ``mean`` and ``ci95`` (``ci95`` NaN for a single seed: one run says nothing about spread) that
            are the rows' mean and 95% half-width.
    """
    def refuse(what: str) -> None:
        raise CorruptFileError(f"untrained-encoder result {path}: {what}; delete it to recompute")

    rows = stored.get("per_seed")
    if not isinstance(rows, list) or not rows:
        refuse("'per_seed' must be a non-empty list, got " + ("an empty list" if rows == [] else type(rows).__name__))
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            refuse(f"'per_seed'[{i}] must be an object, got {type(row).__name__}")
        for name, kind in _UNTRAINED_ROW.items():
            value = row.get(name)
            ok = isinstance(value, bool) if kind is bool else (is_int(value) if kind is int
                                                               else is_finite_number(value))
            if not ok:
                refuse(f"'per_seed'[{i}]['{name}'] must be {'a finite number' if kind is float else kind.__name__}, "
                       f"got {value!r}")
    for metric in ("test_auc", "test_auprc"):
        summary = stored.get(metric)
        if not isinstance(summary, dict):
            refuse(f"'{metric}' must be an object with 'mean' and 'ci95', got {type(summary).__name__}")
        for name in ("mean", "ci95"):
            value = summary.get(name)
            spread_of_one = name == "ci95" and len(rows) == 1 and isinstance(value, float) and np.isnan(value)
            if not spread_of_one and not is_finite_number(value):
                one_seed = " (NaN for the spread of one seed)" if name == "ci95" else ""
                refuse(f"'{metric}'['{name}'] must be a finite number{one_seed}, got {value!r}")
    for i, row in enumerate(rows):
        for name in ("val_auc", "test_auc", "test_auprc"):
            if not 0.0 <= row[name] <= 1.0:
                refuse(f"'per_seed'[{i}]['{name}'] must lie in [0, 1], got {row[name]!r}")
    for metric in ("test_auc", "test_auprc"):  # the summary is its rows' mean and 95% half-width
        mean, half = mean_ci([row[metric] for row in rows])
        stored_half = stored[metric]["ci95"]
        if abs(stored[metric]["mean"] - mean) > 1e-9 or (len(rows) > 1 and abs(stored_half - half) > 1e-9):
            spread = f" ± {half:.6f}" if len(rows) > 1 else ", one seed: no spread"
            refuse(f"'{metric}' {stored[metric]!r} is not the mean and 95% half-width of its 'per_seed' rows "
                   f"({mean:.6f}{spread})")


def _untrained_once(cfg: SaladConfig, splits: dict[str, Any], replicates: int, path: Path,
                    device: str = "auto", fingerprint: str | None = None) -> dict[str, Any]:
    """:func:`untrained_encoder_baseline`, stored in ``path`` with its config and the splits' fingerprint.

    A stored file without the ``"bank"`` record was written by an older salad_lite that
    scored against the memory bank when ``cfg.score.bank`` was ``"memory"``: it is recomputed.

    Raises:
        salad_lite.files.CorruptFileError: ``path`` is damaged or its structure is not the one
            written (:func:`_check_untrained_result`; named).
        ValueError: ``path`` was computed with another configuration (named); one of other
            splits is computed again.
    """
    fingerprint = splits_fingerprint(splits) if fingerprint is None else fingerprint
    if path.exists():
        stored = read_json(path, "untrained-encoder result")
        if not isinstance(stored, dict):
            raise CorruptFileError(f"untrained-encoder result {path} must hold a JSON object, "
                                   f"got {type(stored).__name__}; delete it to recompute")
        _check_untrained_result(stored, path)
        if (_stored_for(stored, path, cfg, fingerprint) and stored.get("bank") == UNTRAINED_BANK
                and len(stored["per_seed"]) == replicates):
            return stored
    result = untrained_encoder_baseline(cfg, splits, replicates, device)
    write_json_atomic(path, {**result, "config": cfg.to_dict(), "splits_sha256": fingerprint}, indent=2)
    return result


def _pca_baseline_once(splits: dict[str, Any], path: Path, fingerprint: str | None = None) -> dict[str, Any]:
    """:func:`pca_baseline` of ``splits``, computed once and stored in ``path`` with the splits' fingerprint.

    Deterministic and replicate-free: the test split is scored once. The stored dict
    holds the per-image ``test_scores`` [M] (test order); a file written by an older
    salad_lite without them or without the splits' fingerprint is recomputed and
    rewritten (same splits, same numbers).

    One computed from other splits is computed again (it depends on nothing else).

    Raises:
        salad_lite.files.CorruptFileError: ``path`` is damaged, lacks ``test_auc``, its
            ``test_scores`` are not M finite numbers, or its metrics are not numbers in [0, 1]
            that those scores give (:func:`check_stored_test_scores`; named).
    """
    fingerprint = splits_fingerprint(splits) if fingerprint is None else fingerprint
    if path.exists():
        stored = _stored_pca_baseline(path)
        if "test_scores" in stored and stored.get("splits_sha256") == fingerprint:  # none: an older file, recomputed
            check_stored_test_scores(stored, dataset_labels(splits["test"]), f"PCA baseline result {path}")
            return stored
    write_json_atomic(path, {**pca_baseline(splits), "splits_sha256": fingerprint}, indent=2)
    return _stored_pca_baseline(path)


def _stored_pca_baseline(path: Path) -> dict[str, Any]:
    """The dict stored in ``path``, checked to hold ``test_auc``."""
    stored = read_json(path, "PCA baseline result")
    if not isinstance(stored, dict) or "test_auc" not in stored:
        raise CorruptFileError(f"PCA baseline result {path} lacks 'test_auc'; delete it to recompute")
    return stored


#: The AUCs / AUPRCs a stored result may hold (each checked to lie in [0, 1]).
STORED_METRICS = ("test_auc", "test_auprc", "val_auc", "reconstruction_test_auc", "reconstruction_test_auprc")


def check_stored_test_scores(stored: dict[str, Any], labels: np.ndarray, source: str) -> None:
    """Refuse a stored result that its own per-image test scores contradict.

    ``stored`` holds ``test_scores`` [M] and may hold ``test_labels`` [M] and the metrics
    of :data:`STORED_METRICS`; ``labels`` [M] are the test split's 0/1 labels now. The
    scores must be M finite numbers, the stored labels these, every stored metric a
    number in [0, 1], and the stored test AUC / AUPRC what the stored scores give on
    the labels: a hand-edited or damaged file is never reported as a result.

    Raises:
        salad_lite.files.CorruptFileError: ``source`` (e.g. the file) and the disagreeing field named.
    """
    def refuse(what: str) -> None:
        raise CorruptFileError(f"{source}: {what}; delete it to recompute")

    if "test_labels" in stored and list(stored["test_labels"]) != labels.tolist():
        refuse("its 'test_labels' are not the test split's labels")
    raw = stored["test_scores"]
    if not isinstance(raw, list) or len(raw) != len(labels) or not all(is_finite_number(v) for v in raw):
        got = f"{len(raw)} values" if isinstance(raw, list) else type(raw).__name__
        refuse(f"'test_scores' must be {len(labels)} finite numbers (one per test image), got {got}")
    for name in STORED_METRICS:
        value = stored.get(name, 0.0)
        if not is_number(value) or not 0.0 <= value <= 1.0:
            refuse(f"'{name}' must be a number in [0, 1], got {value!r}")
    scores = np.asarray(raw, dtype=np.float64)
    for name, metric in (("test_auc", auc), ("test_auprc", auprc)):
        if name in stored and abs(stored[name] - metric(labels, scores)) > 1e-9:
            refuse(f"'{name}' {stored[name]!r} is not what its own 'test_scores' give ({metric(labels, scores):.6f})")


def splits_for(cfg: SaladConfig, progress: bool = True, split_file: str = "") -> dict[str, Any]:
    """The cached train / val / test splits that ``cfg.data`` and ``cfg.model.image_size`` describe.

    The seeded split (split seed 0), or the published ``split_file``; a ``folder``
    dataset's class folders are labelled by ``cfg.data.class_map``.

    Raises:
        FileNotFoundError, ValueError: from :func:`salad_lite.data.registry.load_splits` (a wrong
            root, no images, a split that cannot be built, a bad split file).
    """
    from salad_lite.data.registry import load_splits

    return load_splits(cfg.data.dataset, cfg.data.data_root, image_size=cfg.model.image_size,
                       anomaly_ratio=cfg.data.anomaly_ratio, seed=0, max_train_images=cfg.data.max_train_images,
                       progress=progress, embedded_scale=cfg.data.embedded_scale, split_file=split_file,
                       class_map=parse_class_map(cfg.data.class_map))
