"""The training glue every Fig. 5 baseline shares: epochs, validation, the best epoch, checkpoints, resume.

A method (one module each under :mod:`salad_lite.methods`) subclasses
:class:`DeepBaseline` and supplies what is its own: its networks and
optimisers (:meth:`~DeepBaseline.build`), one optimiser step
(:meth:`~DeepBaseline.train_step`) and its anomaly score
(:meth:`~DeepBaseline.score_batch`). :meth:`DeepBaseline.fit` then runs the
protocol of the book for all of them, as :class:`salad_lite.trainer.SaladTrainer`
does for SALAD:

- epochs are seeded (shuffling and any randomness of a step use a generator
  seeded by ``seed`` and the epoch), so a resumed run reproduces an
  uninterrupted one on the CPU;
- after every ``validate_every`` epochs (and the last one) the validation AUC
  is computed; the epoch with the best one is kept as ``best`` (selection never
  looks at a test split);
- after every epoch a checkpoint ``last`` (networks, optimisers, the method's
  extra tensors, history) is written all-or-nothing (:mod:`salad_lite.checkpoint`)
  and :meth:`~DeepBaseline.fit` resumes from it; a checkpoint of another
  method or configuration, or one trained on other data (its
  ``data_fingerprint`` differs), is refused;
- a method whose :attr:`~DeepBaseline.uses_labels` is False never sees the
  training labels: its :meth:`~DeepBaseline.train_step` gets zeros in their place.

Conventions (PyOD's ``BaseDetector``): :meth:`~DeepBaseline.decision_function`
returns one score per image, higher = more abnormal. Images are float
``[B, 1, S, S]`` in ``[0, 1]``; labels 0 = normal, 1 = abnormal.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from salad_lite.checkpoint import (
    check_finite_tensors, checkpoint_exists, checkpoint_paths, load_checkpoint, load_optimizer, optimizer_meta,
    optimizer_tensors, save_checkpoint,
)
from salad_lite.data.batches import (
    check_data_fingerprint, check_splits, dataset_labels, gather_images, image_batches, splits_fingerprint,
)
from salad_lite.config import check_field_types
from salad_lite.files import CorruptFileError, remove_stale_temps
from salad_lite.metrics import auc
from salad_lite.trainer import epoch_batches, write_history
from salad_lite.utils import progress_enabled, resolve_device, seed_everything

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm ships with the package's requirements
    tqdm = None

__all__ = ["BaselineConfig", "DeepBaseline", "check_fields"]


def check_fields(cfg: Any, rules: dict[str, tuple[float, float | None]]) -> None:
    """Check numeric fields of a frozen config: ``rules`` maps a field to (minimum, maximum or None), both inclusive.

    The fields' types are checked first, by :class:`BaselineConfig` (:func:`salad_lite.config.check_field_types`).

    Raises:
        ValueError: a field lies out of its range; the message names ``<Config>.<field>`` and the value.
    """
    name = type(cfg).__name__
    for field_name, (low, high) in rules.items():
        value = getattr(cfg, field_name)
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name}.{field_name} must be {bound}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """The schedule and network size every Fig. 5 baseline shares (a method's config extends it).

    ``arch`` / ``image_size`` / ``width`` / ``latent_dim`` describe the paper's
    encoder family (:class:`salad_lite.config.ModelConfig`); ``epochs`` counts
    every epoch of the method (pre-training included); ``lr`` is Adam's learning
    rate. :func:`salad_lite.methods.baseline_config` derives them from a book
    profile, so that each baseline gets SALAD's budget (Geometric's counted in images
    seen: fewer epochs, each over 72 transformed copies).

    Raises:
        ValueError: a field of the wrong type (an int that is a float or bool, a NaN or
            infinite number, a bool that is not) or out of range, named ``<Config>.<field>``.
    """

    arch: Literal["conv", "resnet18"] = "conv"
    image_size: int = 64
    width: int = 16
    latent_dim: int = 200
    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-6
    validate_every: int = 1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        check_field_types(self, type(self).__name__)  # the fields of a subclass too: its __post_init__ calls this one first
        check_fields(self, {"image_size": (32, None), "width": (1, None), "latent_dim": (1, None),
                            "epochs": (1, None), "batch_size": (2, None), "lr": (0.0, None),
                            "weight_decay": (0.0, None), "validate_every": (1, None), "seed": (0, None)})
        if self.lr <= 0:
            raise ValueError(f"{type(self).__name__}.lr must be > 0, got {self.lr!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "BaselineConfig":
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)


# Settings that do not change what a run computes: a checkpoint stays valid when only they differ.
_NOT_TRAINING = ("progress",)


class DeepBaseline(abc.ABC):
    """A deep anomaly detector of Fig. 5, trained and selected like SALAD.

    Subclasses set :attr:`name` (the figure's label), :attr:`method_id` (a
    folder-safe id), :attr:`uses_labels` (True when the training labels enter
    the objective: Deep SAD, the supervised classifier; when False, the shared loop
    hands :meth:`train_step` zeros instead of the labels) and implement
    :meth:`build`, :meth:`train_step` and :meth:`score_batch`; optional hooks are
    :meth:`begin_epoch`, :meth:`end_epoch`, :meth:`selectable`, :meth:`extra_tensors` and
    :meth:`load_extra_tensors`.

    After :meth:`fit`, the networks hold the validation-selected epoch, and
    :attr:`selected_epoch`, :attr:`best_val_auc` and :attr:`history` describe it;
    :attr:`fitted` is True from then on (until the next :meth:`fit` starts).

    Raises:
        TypeError: ``cfg`` is not an instance of the method's :attr:`config_class`.
    """

    name: ClassVar[str]
    method_id: ClassVar[str]
    config_class: ClassVar[type[BaselineConfig]] = BaselineConfig
    uses_labels: ClassVar[bool] = False

    def __init__(self, cfg: BaselineConfig, device: str | torch.device = "auto") -> None:
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        self.device = resolve_device(device)
        seed_everything(cfg.seed)
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.build()
        for network in self.networks.values():
            network.to(self.device)
        self.epoch = 0  # next epoch to run
        self.history: list[dict[str, Any]] = []
        self.best_val_auc = float("-inf")
        self.selected_epoch: int | None = None
        self.fitted = False  # True once fit returned: the networks hold the selected epoch
        self.data_fingerprint = ""  # of the splits fit was given; stored in every checkpoint

    # ------------------------------------------------------------------ what a method supplies
    @abc.abstractmethod
    def build(self) -> None:
        """Create :attr:`networks` (name -> module) and :attr:`optimizers` (name -> optimiser)."""

    @abc.abstractmethod
    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One optimisation step on images ``x`` [B, 1, S, S] (on the device) with labels ``y`` [B] (0/1, long).

        ``generator`` (CPU) seeds any randomness of the step. Returns the loss terms as floats.
        When :attr:`uses_labels` is False, ``y`` is all zeros (the true labels are withheld).
        """

    @abc.abstractmethod
    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly scores [B] of ``x`` [B, 1, S, S] (networks in eval mode, no gradient); higher = more abnormal."""

    def begin_epoch(self, epoch: int, train_set: Any) -> None:
        """Called before epoch ``epoch`` is trained (e.g. Deep SVDD fixes its centre after pre-training)."""

    def end_epoch(self, epoch: int, train_set: Any) -> None:
        """Called after epoch ``epoch``'s last step, before validation and the checkpoint
        (e.g. the supervised classifier recalibrates its BatchNorm statistics)."""

    def selectable(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` may be selected (validated); False e.g. during an autoencoder pre-training."""
        return True

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        """State that is not in a network or optimiser (e.g. Deep SVDD's centre), saved with every checkpoint."""
        return {}

    def load_extra_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_tensors` saved (``tensors`` holds exactly those names)."""

    # ------------------------------------------------------------------ the protocol
    def fit(self, train_set: Any, val_set: Any, folder: str | Path | None = None,
            data_fingerprint: str = "") -> "DeepBaseline":
        """Train (or resume) on ``train_set``, select the epoch with the best validation AUC on ``val_set``.

        With ``folder``, checkpoints ``last`` / ``best`` and ``history.json`` / ``.csv`` are
        written there and a finished run is only loaded. ``data_fingerprint`` (default:
        :func:`salad_lite.data.batches.splits_fingerprint` of ``train_set`` and ``val_set``)
        is stored in every checkpoint; a checkpoint whose stored fingerprint differs is
        refused, so a folder is never resumed or loaded on other images, labels,
        patients or order. One written before the record is loaded with a warning.
        Returns ``self`` holding the selected epoch's networks.

        Raises:
            salad_lite.data.splits.PatientLeakError: a patient is in both sets.
            salad_lite.data.batches.OneClassSplitError: validation lacks a class.
            salad_lite.data.batches.NonFiniteImageError: an image holds NaN/inf pixels.
            ValueError: fewer than 2 training images; ``folder`` holds a run of another
                method or configuration, or one trained on other splits (file named).
            salad_lite.files.CorruptFileError: a checkpoint is damaged or does not fit, or a
                finished run's ``best`` checkpoint is missing (file named).
            FloatingPointError: a loss became NaN/inf (epoch named).
            TypeError: ``data_fingerprint`` is not a str.
        """
        self.fitted = False  # until this call returns: an interrupted fit leaves the networks of its last epoch
        if len(train_set) < 2:
            raise ValueError(f"{self.name}: the training set needs at least 2 images, got {len(train_set)}")
        check_splits({"train": train_set, "val": val_set}, both_classes=("val",))
        if not isinstance(data_fingerprint, str):
            raise TypeError(f"data_fingerprint must be a str, got {type(data_fingerprint).__name__}")
        folder = Path(folder) if folder is not None else None
        if folder is not None and not data_fingerprint:
            data_fingerprint = splits_fingerprint({"train": train_set, "val": val_set})
        self.data_fingerprint = data_fingerprint
        train_labels = torch.as_tensor(dataset_labels(train_set), dtype=torch.long)
        val_labels = dataset_labels(val_set)
        if folder is not None:
            for stem in ("last", "best"):
                checkpoint_exists(folder / stem)  # finishes or undoes a save a killed process left half done
            remove_stale_temps(folder)
            if checkpoint_exists(folder / "last"):
                self._restore(folder / "last")
        best_state = None
        bar = None
        if self.cfg.progress and progress_enabled() and tqdm is not None and self.epoch < self.cfg.epochs:
            bar = tqdm(total=self.cfg.epochs, initial=self.epoch, desc=f"{self.name} epochs", unit="epoch")
        while self.epoch < self.cfg.epochs:
            record = self._run_epoch(train_set, train_labels, val_set, val_labels)
            if record.get("val_auc", float("-inf")) > self.best_val_auc:
                self.best_val_auc, self.selected_epoch = record["val_auc"], record["epoch"]
                best_state = self._state_tensors(with_optimizers=False)
                if folder is not None:
                    save_checkpoint(folder / "best", best_state, self._metadata())
            if folder is not None:
                tensors = self._state_tensors(with_optimizers=True)
                save_checkpoint(folder / "last", tensors, {**self._metadata(), "optimizers": {
                    name: optimizer_meta(opt) for name, opt in self.optimizers.items()}})
                write_history(folder, self.history)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.3f}" for k in ("loss", "val_auc") if k in record})
        if bar is not None:
            bar.close()
        if best_state is not None:
            self._load_state(best_state)
        elif folder is not None and checkpoint_exists(folder / "best"):
            tensors, meta = self._load_verified(folder / "best")
            self.selected_epoch, self.best_val_auc = meta["selected_epoch"], float(meta["best_val_auc"])
        elif folder is not None and self.selected_epoch is not None:
            # the networks hold the last epoch, not the selected one: never return them under its name
            raise CorruptFileError(f"checkpoint {checkpoint_paths(folder / 'best')[0]} is missing, but "
                                   f"{checkpoint_paths(folder / 'last')[1]} selected epoch {self.selected_epoch}; "
                                   "delete the folder to train again")
        if self.selected_epoch is None:
            raise ValueError(f"{self.name}: no epoch was validated (epochs={self.cfg.epochs}); nothing to select")
        self.fitted = True
        return self

    def decision_function(self, dataset: Any, batch_size: int = 256) -> np.ndarray:
        """Anomaly scores [N] (float64) of every image of ``dataset``, in order; higher = more abnormal.

        Raises:
            RuntimeError: not fitted (:meth:`fit` has not returned, e.g. it was interrupted).
            ValueError: ``dataset`` holds no image, or pixels outside [0, 1].
            TypeError: ``dataset`` is a bare array or tensor, not a dataset of sample dicts.
            FloatingPointError: a score is NaN/inf (the method's name given).
        """
        if not self.fitted:
            raise RuntimeError(f"{self.name} is not fitted: call fit(train_set, val_set) first (an interrupted fit "
                               "leaves the networks of its last epoch, not the selected one)")
        return self._scores(dataset, batch_size)

    def _scores(self, dataset: Any, batch_size: int = 256) -> np.ndarray:
        """:meth:`decision_function` without the fitted check: validation scores during :meth:`fit`."""
        for network in self.networks.values():
            network.eval()
        parts = []
        with torch.no_grad():
            for x in image_batches(dataset, batch_size):
                parts.append(self.score_batch(x.to(self.device)).float().cpu())
        scores = torch.cat(parts).double().numpy()
        if not np.isfinite(scores).all():
            raise FloatingPointError(f"{self.name}: {int((~np.isfinite(scores)).sum())} non-finite score(s)")
        return scores

    # ------------------------------------------------------------------ internals
    def _run_epoch(self, train_set: Any, train_labels: torch.Tensor, val_set: Any,
                   val_labels: np.ndarray) -> dict[str, Any]:
        started = time.perf_counter()
        epoch_seed = self.cfg.seed * 1_000_003 + self.epoch
        order_gen = torch.Generator().manual_seed(epoch_seed)
        step_gen = torch.Generator().manual_seed(epoch_seed + 7_919)
        torch.manual_seed(epoch_seed + 104_729)  # dropout and other global draws, reproducible on resume
        self.begin_epoch(self.epoch, train_set)
        for network in self.networks.values():
            network.train()
        sums: dict[str, float] = {}
        batches = epoch_batches(len(train_set), self.cfg.batch_size, order_gen)
        for batch in batches:
            x = gather_images(train_set, batch).to(self.device)
            y = train_labels[torch.as_tensor(batch)].to(self.device)
            if not self.uses_labels:
                y = torch.zeros_like(y)  # an unsupervised method never sees the labels
            terms = self.train_step(x, y, step_gen)
            for key, value in terms.items():
                if not np.isfinite(value):
                    raise FloatingPointError(f"{self.name}: {key} became {value} at epoch {self.epoch}; "
                                             "lower the learning rate or check the data")
                sums[key] = sums.get(key, 0.0) + value
        self.end_epoch(self.epoch, train_set)
        record: dict[str, Any] = {"epoch": self.epoch, **{k: v / len(batches) for k, v in sums.items()}}
        last = self.epoch + 1 == self.cfg.epochs
        if self.selectable(self.epoch) and ((self.epoch + 1) % self.cfg.validate_every == 0 or last):
            record["val_auc"] = auc(val_labels, self._scores(val_set))
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        self.epoch += 1
        return record

    def _metadata(self) -> dict[str, Any]:
        return {"method": self.method_id, "data_fingerprint": self.data_fingerprint,
                "config": self.cfg.to_dict(), "epoch": self.epoch,
                "history": self.history, "best_val_auc": self.best_val_auc, "selected_epoch": self.selected_epoch}

    def _state_tensors(self, with_optimizers: bool) -> dict[str, torch.Tensor]:
        tensors = {f"{name}.{key}": value.detach().clone()
                   for name, network in self.networks.items() for key, value in network.state_dict().items()}
        tensors.update({f"extra.{key}": value.detach().clone() for key, value in self.extra_tensors().items()})
        if with_optimizers:
            for name, optimizer in self.optimizers.items():
                tensors.update({f"{name}.{key}": value for key, value in optimizer_tensors(optimizer).items()})
        return tensors

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, network in self.networks.items():
            prefix = f"{name}."
            network.load_state_dict({key[len(prefix):]: value.to(self.device) for key, value in tensors.items()
                                     if key.startswith(prefix) and not key.startswith(f"{prefix}optim.")})
        extra = {key[len("extra."):]: value.to(self.device) for key, value in tensors.items()
                 if key.startswith("extra.")}
        if extra:
            self.load_extra_tensors(extra)

    def _load_verified(self, stem: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load checkpoint ``stem`` after checking that it belongs to this method, configuration and data."""
        json_path = checkpoint_paths(stem)[1]
        tensors, meta = load_checkpoint(stem, self.device)
        for key in ("method", "config", "epoch", "history", "best_val_auc", "selected_epoch"):
            if key not in meta:
                raise CorruptFileError(f"checkpoint metadata {json_path} lacks {key!r}; it was not written by "
                                       f"{type(self).__name__}")
        if meta["method"] != self.method_id:
            raise ValueError(f"{json_path} holds a {meta['method']!r} run, not {self.method_id!r}: "
                             "use another folder")
        stored, current = meta["config"], self.cfg.to_dict()
        changed = [f"{key}: {stored.get(key)!r} -> {current[key]!r}" for key in current
                   if key not in _NOT_TRAINING and stored.get(key) != current[key]]
        if changed:
            raise ValueError(f"{json_path} was trained with another configuration ({'; '.join(changed)}); "
                             "use another folder or the same config")
        check_data_fingerprint(meta.get("data_fingerprint"), self.data_fingerprint, json_path)
        expected = {key: tuple(value.shape) for key, value in self._state_tensors(with_optimizers=False).items()}
        found = {key: tuple(value.shape) for key, value in tensors.items() if key in expected}
        if found != expected:
            wrong = sorted(set(expected) - set(found)) or sorted(k for k in expected if expected[k] != found[k])
            raise CorruptFileError(f"checkpoint {checkpoint_paths(stem)[0]} does not fit {self.name}: "
                                   f"{wrong[0]} is {list(found[wrong[0]]) if wrong[0] in found else 'missing'} "
                                   f"({len(wrong)} tensor(s) differ); delete the folder to start over")
        check_finite_tensors(tensors, checkpoint_paths(stem)[0])
        self._load_state(tensors)
        return tensors, meta

    def _restore(self, stem: Path) -> None:
        tensors, meta = self._load_verified(stem)
        json_path = checkpoint_paths(stem)[1]
        epoch, history = meta["epoch"], meta["history"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= self.cfg.epochs \
                or not isinstance(history, list) or len(history) != epoch:
            raise CorruptFileError(f"checkpoint metadata {json_path}: epoch {epoch!r} and a history of "
                                   f"{len(history) if isinstance(history, list) else '?'} records do not agree")
        for name, optimizer in self.optimizers.items():
            prefix = f"{name}."
            load_optimizer(optimizer, {key[len(prefix):]: value for key, value in tensors.items()
                                       if key.startswith(f"{prefix}optim.")},
                           meta.get("optimizers", {}).get(name, {}), json_path)
        self.epoch, self.history = epoch, history
        self.best_val_auc = float(meta["best_val_auc"])
        self.selected_epoch = meta["selected_epoch"]
