"""Progressive SALAD training: pretraining, then R rounds of aggregation, resumable, selected on validation.

Schedule (epochs are numbered 0.. over the whole run):

- pretraining, ``cfg.train.pretrain_epochs`` epochs: ``L_mse + lambda L_ss``;
- round r = 1..R, ``cfg.train.epochs_per_round`` epochs each: at the round's
  first epoch the ``prototype_fraction(r)`` lowest-entropy memory entries become
  the prototypical samples and every entry gets its ``neighbours(r)`` nearest
  memory entries; both stay fixed for the round. Loss: Eq. 3.

After every epoch a checkpoint ``last`` is written (model, memory, optimiser,
the round's prototypes and neighbourhoods, history); ``fit`` resumes from it.
Checkpoints are all-or-nothing (:mod:`salad_lite.checkpoint`): a process killed
at any point of a save resumes to the uninterrupted result, and a checkpoint
that does not fit the configuration or the training set is refused. The
epoch with the best validation AUC is kept as ``best``: selection never looks at
a test split. Shuffling and augmentation are seeded per epoch, so a resumed run
reproduces the uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salad_lite.augment import augment_batch
from salad_lite.checkpoint import checkpoint_exists, checkpoint_paths, load_checkpoint, save_checkpoint
from salad_lite.config import SaladConfig
from salad_lite.data.batches import check_splits, dataset_labels, gather_images, image_batches
from salad_lite.files import CorruptFileError, remove_stale_temps
from salad_lite.losses import salad_loss
from salad_lite.memory import MemoryBank
from salad_lite.metrics import auc, auprc, binary_labels
from salad_lite.models import build_model
from salad_lite.scorer import SaladScorer
from salad_lite.utils import progress_enabled, resolve_device, seed_everything

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None


# Settings that do not change what a replicate learns or which epoch is kept: how many replicates the book
# runs, progress bars, and the grid that validation chooses the final scoring from after training.
_NOT_TRAINING = {("data", "replicates"), ("train", "progress"), ("score", "k_grid"), ("score", "discard_options")}


def config_changes(stored: SaladConfig, current: SaladConfig) -> list[str]:
    """``"section.field: stored -> current"`` for every training-relevant setting that differs."""
    before, after = stored.to_dict(), current.to_dict()
    return [f"{section}.{name}: {value!r} -> {after[section][name]!r}"
            for section, fields in before.items() for name, value in fields.items()
            if (section, name) not in _NOT_TRAINING and after[section][name] != value]


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into batches; a last batch of one joins the previous batch.

    BatchNorm cannot train on a single image, and dropping it would lose a sample.
    """
    order = torch.randperm(n, generator=generator).numpy()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


class SaladTrainer:
    """Train SALAD on ``train_set``, validate on ``val_set``, checkpoint into ``run_dir``.

    Args:
        cfg: the run's configuration.
        train_set: dataset of sample dicts; item i owns memory row i.
        val_set: optional mixed normal/abnormal validation dataset (for AUC and selection).
        run_dir: checkpoints and history go here; ``None`` keeps everything in memory.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...

    Both splits are checked once, before anything is built
    (:func:`salad_lite.data.batches.check_splits`): no patient in both, no
    NaN/inf pixel in either. With a ``run_dir`` holding a ``last`` checkpoint,
    training resumes from it after checking that it belongs to this
    configuration and training set.

    Attributes:
        selected: metadata of the checkpoint :meth:`load_best` loaded (epoch,
            round and validation AUC of the selection), ``None`` before.

    Raises:
        TypeError: ``cfg`` is not a :class:`SaladConfig`.
        ValueError: fewer than 2 training images, or a validation split without
            both classes (selection compares them).
        salad_lite.data.splits.PatientLeakError: a patient is in both splits.
        salad_lite.data.batches.NonFiniteImageError: an image holds NaN/inf pixels (split and image named).
        TypeError: ``val_set`` is given but a split has no patient ids.
        salad_lite.files.CorruptFileError: the ``last`` checkpoint is damaged or
            does not fit the configuration / training set (file named).
        ValueError: the ``last`` checkpoint was trained with another configuration.
    """

    def __init__(self, cfg: SaladConfig, train_set: Any, val_set: Any | None = None,
                 run_dir: str | Path | None = None, device: str | torch.device = "auto") -> None:
        if not isinstance(cfg, SaladConfig):
            raise TypeError(f"cfg must be a SaladConfig, got {type(cfg).__name__}")
        if len(train_set) < 2:
            raise ValueError(f"the training set needs at least 2 images, got {len(train_set)}")
        check_splits({"train": train_set, "val": val_set})
        self.cfg = cfg
        self.train_set = train_set
        self.val_set = val_set
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = resolve_device(device)
        self.train_labels = dataset_labels(train_set)
        self.val_labels = None
        if val_set is not None:  # selection compares the classes: a one-class validation split fails now, not after an epoch
            self.val_labels = binary_labels(dataset_labels(val_set), "checkpoint selection on the validation split")
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.memory = MemoryBank(len(train_set), cfg.model.latent_dim, seed=cfg.train.seed).to(self.device)
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas,
                                          weight_decay=cfg.train.weight_decay)
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.epoch = 0  # next epoch to run
        self.history: list[dict[str, Any]] = []
        self.best_val_auc = float("-inf")
        self.round_neighbours: torch.Tensor | None = None  # [N, k]
        self.round_prototypes: torch.Tensor | None = None  # [N] bool
        self.selected: dict[str, Any] | None = None
        if self.run_dir is not None:
            for stem in ("last", "best"):
                checkpoint_exists(self.run_dir / stem)  # finishes or undoes a save a killed process left half done
            remove_stale_temps(self.run_dir)
            if checkpoint_exists(self.run_dir / "last"):
                self._restore(self.run_dir / "last")

    # ----------------------------------------------------------------- schedule
    @property
    def total_epochs(self) -> int:
        t = self.cfg.train
        return t.pretrain_epochs + t.rounds * t.epochs_per_round

    def round_of_epoch(self, epoch: int) -> int:
        """0 during pretraining, else the round 1..R the epoch belongs to."""
        t = self.cfg.train
        if epoch < t.pretrain_epochs:
            return 0
        return (epoch - t.pretrain_epochs) // max(t.epochs_per_round, 1) + 1

    def _start_round(self, round_index: int) -> None:
        """Fix the round's prototypical samples and neighbourhoods from the current memory."""
        t, loss_cfg = self.cfg.train, self.cfg.loss
        n = self.memory.size
        fraction = t.prototype_fraction(round_index)
        count = int(min(n, max(1, round(fraction * n))))
        entropy = self.memory.entropy(loss_cfg.temperature)  # [N]
        prototypes = torch.zeros(n, dtype=torch.bool, device=self.device)
        prototypes[torch.argsort(entropy)[:count]] = True
        if loss_cfg.latent_objective == "anchors":
            k = min(loss_cfg.anchor_neighbours, n - 1)
            neighbours = self.memory.neighbours_of_entries(k, include_self=False)
        else:
            k = min(t.neighbours(round_index), n)
            neighbours = self.memory.neighbours_of_entries(k, include_self=True)
        self.round_prototypes, self.round_neighbours = prototypes, neighbours

    # ----------------------------------------------------------------- training
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_step(self, indices: np.ndarray, round_index: int, generator: torch.Generator) -> dict[str, float]:
        """One optimiser step on the batch ``indices``; returns the loss terms as floats.

        Raises:
            FloatingPointError: the loss is NaN/inf (the message gives the epoch and every term).
        """
        loss_cfg = self.cfg.loss
        x = self._to_device(gather_images(self.train_set, indices))  # [B, 1, S, S]; finite: checked at __init__
        index_t = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        with self._autocast():
            z, x_hat = self.model(x)  # [B, d], [B, 1, S, S]
            views = None
            wants_views = loss_cfg.use_instance and loss_cfg.latent_objective == "paper"
            if wants_views and loss_cfg.num_views > 0:
                view_inputs = torch.cat([augment_batch(x, generator) for _ in range(loss_cfg.num_views)])
                views = self.model.encode(self._to_device(view_inputs))  # [V B, d]
                views = views.view(loss_cfg.num_views, len(indices), -1).transpose(0, 1)  # [B, V, d]
        neighbours = prototypes = None
        if round_index > 0:
            neighbours, prototypes = self.round_neighbours[index_t], self.round_prototypes[index_t]
        terms = salad_loss(loss_cfg, x, x_hat, z.float(), index_t, self.memory.bank,
                           None if views is None else views.float(), neighbours, prototypes)
        if not torch.isfinite(terms.total):
            raise FloatingPointError(f"loss became {float(terms.total.detach())} at epoch {self.epoch} "
                                     f"(terms {terms.as_floats()}); lower the learning rate or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.memory.update(index_t, z.detach().float(), self.cfg.train.memory_momentum)
        return terms.as_floats()

    def fit(self, until_epoch: int | None = None) -> list[dict[str, Any]]:
        """Run (or resume) training up to ``until_epoch`` (default: the whole schedule); returns the history.

        Raises:
            FloatingPointError: the loss became NaN/inf (see :meth:`train_step`).
            ValueError: validation needs both classes (from :func:`salad_lite.metrics.auc`).
        """
        stop = self.total_epochs if until_epoch is None else min(until_epoch, self.total_epochs)
        t = self.cfg.train
        n = len(self.train_set)
        bar = None
        if t.progress and progress_enabled() and tqdm is not None and self.epoch < stop:
            bar = tqdm(total=stop, initial=self.epoch, desc="SALAD epochs", unit="epoch")
        while self.epoch < stop:
            started = time.perf_counter()
            round_index = self.round_of_epoch(self.epoch)
            first_of_round = round_index > 0 and (self.epoch - t.pretrain_epochs) % max(t.epochs_per_round, 1) == 0
            if first_of_round or (round_index > 0 and self.round_neighbours is None):
                self._start_round(round_index)
            epoch_seed = t.seed * 1_000_003 + self.epoch
            order_gen = torch.Generator().manual_seed(epoch_seed)
            view_gen = torch.Generator().manual_seed(epoch_seed + 7_919)
            self.model.train()
            sums: dict[str, float] = {}
            batches = epoch_batches(n, t.batch_size, order_gen)
            for batch in batches:
                for key, value in self.train_step(batch, round_index, view_gen).items():
                    sums[key] = sums.get(key, 0.0) + value
            record: dict[str, Any] = {"epoch": self.epoch, "round": round_index,
                                      **{k: v / len(batches) for k, v in sums.items()}}
            if round_index > 0:
                record["prototype_fraction"] = float(self.round_prototypes.float().mean())
                record["neighbours"] = int(self.round_neighbours.shape[1])
            if self.val_set is not None and ((self.epoch + 1) % t.validate_every == 0 or self.epoch + 1 == stop):
                record.update(self.validate())
            record["seconds"] = time.perf_counter() - started
            self.history.append(record)
            self.epoch += 1
            if self.epoch < self.total_epochs and self.round_of_epoch(self.epoch) != round_index \
                    or self.epoch == self.total_epochs:
                self._snapshot(round_index)
            self._checkpoint(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.3f}" for k in ("loss", "val_auc") if k in record})
        if bar is not None:
            bar.close()
        return self.history

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def embed(self, dataset: Any, batch_size: int = 256) -> torch.Tensor:
        """Unit latents [N, d] of every image of ``dataset`` (eval mode), on the CPU.

        Raises:
            ValueError: the images are not ``[1, S, S]`` at the configured size (from the model).
        """
        self.model.eval()
        out = []
        for batch in image_batches(dataset, batch_size):
            with self._autocast():
                out.append(self.model.encode(self._to_device(batch)).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def reconstruction_errors(self, dataset: Any, batch_size: int = 256) -> np.ndarray:
        """Mean squared pixel error [N] of the autoencoder on every image of ``dataset`` (eval mode).

        The plain "Deep AE" anomaly score (higher = more abnormal), reported beside
        Eq. 4 as a baseline from the same trained model. Pixels are in [0, 1].

        Raises:
            ValueError: the images are not ``[1, S, S]`` at the configured size (from the model).
        """
        self.model.eval()
        out = []
        for batch in image_batches(dataset, batch_size):
            x = self._to_device(batch)  # [B, 1, S, S]
            with self._autocast():
                _, x_hat = self.model(x)
            out.append((x_hat.float() - x.float()).pow(2).mean(dim=(1, 2, 3)).cpu())  # [B]
        return torch.cat(out).numpy().astype(np.float64)

    def scoring_bank(self) -> torch.Tensor:
        """The rows Eq. 4 scores against: the memory bank, or fresh training embeddings (``cfg.score.bank``), [N, d]."""
        if self.cfg.score.bank == "embeddings":
            return self.embed(self.train_set)
        return self.memory.bank.detach().cpu()

    def scorer(self) -> SaladScorer:
        """A scorer fitted on :meth:`scoring_bank` with the training labels, K = ``cfg.score.k``.

        ``cfg.score.k`` / ``discard_anomalous`` are the checkpoint-selection settings;
        a K the bank cannot serve is clamped (``scorer.k_``, see :class:`SaladScorer`).

        Raises:
            ValueError: degenerate latents or bad labels (see :meth:`SaladScorer.fit`).
        """
        return SaladScorer.from_config(self.cfg.score).fit(self.scoring_bank(), self.train_labels)

    def validate(self) -> dict[str, float]:
        """Validation AUC/AUPRC of the current model and memory: what per-epoch checkpoint selection compares.

        Scored with ``cfg.score.k`` and ``cfg.score.discard_anomalous`` (:meth:`scorer`).

        Raises:
            ValueError: the validation split lacks one class (checked before anything
                is embedded), or a label other than 0/1.
        """
        binary_labels(self.val_labels, "checkpoint selection (validation AUC)")
        with torch.no_grad():
            scores = self.scorer().decision_function(self.embed(self.val_set))
        return {"val_auc": auc(self.val_labels, scores), "val_auprc": auprc(self.val_labels, scores)}

    # -------------------------------------------------------------- checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Model weights + memory bank (``memory.bank``) as one flat state dict."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors["memory.bank"] = self.memory.bank
        return tensors

    def _checkpoint(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            if record.get("val_auc", float("-inf")) > self.best_val_auc:
                self.best_val_auc = record["val_auc"]
            return
        meta = {"config": self.cfg.to_dict(), "epoch": self.epoch, "history": self.history,
                "best_val_auc": self.best_val_auc}
        improved = record.get("val_auc", float("-inf")) > self.best_val_auc
        if improved:
            self.best_val_auc = meta["best_val_auc"] = record["val_auc"]
            save_checkpoint(self.run_dir / "best", self.state_tensors(),
                            {**meta, "selected_epoch": record["epoch"], "selected_round": record["round"]})
        tensors = self.state_tensors()
        tensors.update(_optimizer_tensors(self.optimizer))
        if self.round_neighbours is not None:
            tensors["round.neighbours"] = self.round_neighbours
            tensors["round.prototypes"] = self.round_prototypes.to(torch.uint8)
        meta["optimizer"] = _optimizer_meta(self.optimizer)
        save_checkpoint(self.run_dir / "last", tensors, meta)

    def _snapshot(self, round_index: int) -> None:
        """At the end of pretraining (round 0) and of each round, keep the memory and validation latents.

        Written to ``run_dir/snapshots/round{r}.safetensors`` (``memory`` [N, d], ``val`` [M, d]);
        the book draws its per-round UMAP views from them.
        """
        if self.run_dir is None:
            return
        tensors = {"memory": self.memory.bank}
        if self.val_set is not None:
            tensors["val"] = self.embed(self.val_set)
        save_checkpoint(self.run_dir / "snapshots" / f"round{round_index}", tensors,
                        {"round": round_index, "epoch": self.epoch})

    def _restore(self, stem: Path) -> None:
        """Continue from the ``last`` checkpoint: weights, memory, optimiser, round state, counters, history."""
        tensors, meta = self._load_verified(stem, needs=("epoch", "history", "best_val_auc", "optimizer"))
        _load_optimizer(self.optimizer, tensors, meta["optimizer"])
        if "round.neighbours" in tensors:
            self.round_neighbours = tensors["round.neighbours"].long()
            self.round_prototypes = tensors["round.prototypes"].bool()
        self.epoch, self.history, self.best_val_auc = meta["epoch"], meta["history"], meta["best_val_auc"]

    def _load_verified(self, stem: Path, needs: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load checkpoint ``stem`` into the model and memory after checking that it belongs to this run.

        Checks: the stored configuration equals ``self.cfg`` in every training-relevant
        field; the model tensors have the names and shapes of a model built from
        that configuration; the memory bank has one row per training image.

        Raises:
            CorruptFileError: the checkpoint is damaged, lacks a key of ``needs``,
                or its tensors do not fit (file named).
            ValueError: it was trained with another configuration.
        """
        tensor_path, json_path = checkpoint_paths(stem)
        tensors, meta = load_checkpoint(stem, self.device)
        missing = [key for key in ("config", *needs) if key not in meta]
        if missing:
            raise CorruptFileError(f"checkpoint metadata {json_path} lacks {missing}; "
                                   "it was not written by SaladTrainer")
        stored = SaladConfig.from_dict(meta["config"], source=str(json_path))
        changed = config_changes(stored, self.cfg)
        if changed:
            raise ValueError(f"{json_path} was trained with another configuration ({'; '.join(changed)}); "
                             "use another run_dir or the same config")
        expected = {name: tuple(t.shape) for name, t in self.state_tensors().items()}
        found = {name: tuple(t.shape) for name, t in tensors.items()
                 if name.startswith("model.") or name == "memory.bank"}
        if found != expected:
            wrong = sorted(set(expected) ^ set(found)) or [n for n in sorted(expected) if expected[n] != found[n]]
            name = wrong[0]
            if name == "memory.bank" and name in found:
                detail = (f"memory.bank has {found[name][0]} rows of {found[name][1]}, the training set has "
                          f"{len(self.train_set)} images and latent_dim is {self.cfg.model.latent_dim}")
            else:
                detail = (f"{name} is {list(found[name]) if name in found else 'missing'}, a model built from its "
                          f"config needs {list(expected[name]) if name in expected else 'no such tensor'}")
            raise CorruptFileError(f"checkpoint {tensor_path} does not fit its configuration and training set: "
                                   f"{detail} ({len(wrong)} tensor(s) differ)")
        self.load_state_tensors(tensors)
        return tensors, meta

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load model weights and memory from a flat state dict (see :meth:`state_tensors`).

        Raises:
            RuntimeError: names or shapes differ from this model (from ``load_state_dict``).
            KeyError: no ``memory.bank`` tensor.
        """
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        self.memory.bank.copy_(tensors["memory.bank"])

    def load_best(self) -> dict[str, Any]:
        """Load the validation-selected checkpoint ``best`` into this trainer; returns its metadata.

        The metadata (``selected_epoch``, ``selected_round``, ``best_val_auc``,
        ``history``, ``config``...) is also kept as :attr:`selected`.

        Raises:
            FileNotFoundError: no ``best`` checkpoint (no run_dir, or never validated).
            CorruptFileError: the checkpoint is damaged or does not fit this run (file named).
            ValueError: it was trained with another configuration.
        """
        if self.run_dir is None or not checkpoint_exists(self.run_dir / "best"):
            raise FileNotFoundError(f"no best checkpoint in {self.run_dir}: train with a validation set first")
        _, meta = self._load_verified(self.run_dir / "best", needs=("selected_epoch", "selected_round"))
        self.selected = meta
        return meta

    @property
    def is_finished(self) -> bool:
        return self.epoch >= self.total_epochs


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {}
    for param_id, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_id}.{name}"] = value
    return tensors


def _optimizer_meta(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = optimizer.state_dict()
    names = {str(pid): sorted(k for k, v in s.items() if torch.is_tensor(v)) for pid, s in state["state"].items()}
    return {"param_groups": state["param_groups"], "tensor_names": names}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state = {int(pid): {name: tensors[f"optim.{pid}.{name}"] for name in names}
             for pid, names in meta["tensor_names"].items()}
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
