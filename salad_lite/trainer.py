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

Data-parallel training (``torchrun --nproc-per-node W``, see
:mod:`salad_lite.distributed`) starts whenever a process group of W > 1
processes is initialised before the trainer is built; it takes the same
single-process step on a global batch of W x ``batch_size`` images:

- sharding: every rank draws the same seeded permutation of the epoch and cuts
  it into the same global batches (:func:`epoch_batches`); rank r takes its
  contiguous slice of each (:func:`salad_lite.distributed.shard_sizes`);
- the model is wrapped in ``DistributedDataParallel``; with
  ``cfg.train.sync_batchnorm`` (default) BatchNorm normalises with the global
  batch's statistics (``torch.nn.SyncBatchNorm`` on GPUs,
  :class:`salad_lite.distributed.GlooSyncBatchNorm` on the CPU);
- each rank back-propagates its part of Eq. 3 (:func:`salad_lite.losses.shard_terms`)
  times W, so DDP's average over ranks is the gradient of the global batch's
  loss; the augmented views are drawn for the global batch on every rank
  (each rank applies its rows) and gathered, with their gradients, so that
  every image's L_ss sees every view of the global batch; the recorded loss
  terms are summed over ranks: the history holds the single-process values;
- every step's latents are all-gathered before the momentum update, so the
  memory bank stays identical on every rank; each round's prototypes and
  neighbourhoods are broadcast from rank 0;
- rank 0 validates, writes the checkpoints, the history and the snapshots;
  the others wait, receive the validation metrics (and so the ``best``
  decision) and, on a restart, load the same ``last`` checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import time
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from salad_lite.augment import AugmentParams, apply_augment, augment_params
from salad_lite.checkpoint import (
    checkpoint_exists, checkpoint_paths, load_checkpoint, load_optimizer, optimizer_meta, optimizer_tensors,
    check_finite_tensors, save_checkpoint, tensor_digest,
)
from salad_lite.config import SaladConfig
from salad_lite.data.batches import (
    check_data_fingerprint, check_splits, dataset_labels, gather_images, image_batches, splits_fingerprint,
)
from salad_lite.distributed import (
    all_gather_cat,
    all_reduce_sum,
    barrier,
    broadcast_,
    broadcast_object,
    check_ranks_agree,
    collective_failure_context,
    convert_sync_batchnorm,
    is_distributed,
    is_main_process,
    local_device,
    rank,
    shard_sizes,
    world_size,
)
from salad_lite.files import CorruptFileError, remove_stale_temps, write_json_atomic, write_text_atomic
from salad_lite.losses import LossTerms, salad_loss, shard_terms
from salad_lite.knn import check_unit_rows
from salad_lite.memory import MemoryBank
from salad_lite.metrics import auc, auprc, binary_labels
from salad_lite.models import build_model
from salad_lite.scorer import SaladScorer
from salad_lite.utils import is_int, is_number, progress_enabled, resolve_device, seed_everything

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None


# Settings that do not change what a replicate learns or which epoch is kept: how many replicates the book
# runs, progress bars, and the grid that validation chooses the final scoring from after training.
# SyncBatchNorm changes nothing in a single process; across ranks it belongs to the topology, like the number
# of ranks (a change of either is a warning on resume, not a refusal).
_NOT_TRAINING = {("data", "replicates"), ("train", "progress"), ("score", "k_grid"), ("score", "discard_options"),
                 ("train", "sync_batchnorm"),
                 ("data", "data_root")}  # where the images live; the checkpoint's data fingerprint checks the images


def config_changes(stored: SaladConfig, current: SaladConfig,
                   ignored: Collection[tuple[str, str]] = _NOT_TRAINING) -> list[str]:
    """``"section.field: stored -> current"`` for every setting that differs, except the ``ignored`` ones.

    The default ignores what does not change what a replicate learns (a resumed
    run may change those).
    """
    before, after = stored.to_dict(), current.to_dict()
    return [f"{section}.{name}: {value!r} -> {after[section][name]!r}"
            for section, fields in before.items() for name, value in fields.items()
            if (section, name) not in ignored and after[section][name] != value]


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, ranks: int = 1) -> list[np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into batches; a last batch of one joins the previous batch.

    BatchNorm cannot train on a single image, and dropping it would lose a sample.
    In data-parallel training ``batch_size`` is the global batch (``ranks`` x the
    per-rank size) and a last batch too small to give each of the ``ranks`` ranks
    an image also joins the previous one (for 1 or 2 ranks: the rule above).
    """
    order = torch.randperm(n, generator=generator).numpy()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(2, ranks):
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
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``... Under a
            process group a bare ``"cuda"`` is this rank's GPU (``LOCAL_RANK``).

    Both splits are checked once, before anything is built
    (:func:`salad_lite.data.batches.check_splits`): no patient in both, no
    NaN/inf pixel in either. With a ``run_dir`` holding a ``last`` checkpoint,
    training resumes from it after checking that it belongs to this
    configuration and to these training and validation splits.

    Attributes:
        selected: metadata of the checkpoint :meth:`load_best` loaded (epoch,
            round and validation AUC of the selection), ``None`` before.
        data_fingerprint: :func:`~salad_lite.data.batches.splits_fingerprint` of
            the training and validation splits, stored in every checkpoint
            ("" without a ``run_dir``).

    Raises:
        TypeError: ``cfg`` is not a :class:`SaladConfig`.
        ValueError: fewer than 2 training images (fewer than the ranks in
            data-parallel training), or a validation split without both classes
            (selection compares them).
        salad_lite.data.splits.PatientLeakError: a patient is in both splits.
        salad_lite.data.batches.NonFiniteImageError: an image holds NaN/inf pixels (split and image named).
        TypeError: ``val_set`` is given but a split has no patient ids.
        salad_lite.files.CorruptFileError: the ``last`` checkpoint is damaged or
            does not fit the configuration / training set (file named).
        ValueError: the ``last`` checkpoint was trained with another configuration
            or on other training or validation splits.
    """

    def __init__(self, cfg: SaladConfig, train_set: Any, val_set: Any | None = None,
                 run_dir: str | Path | None = None, device: str | torch.device = "auto") -> None:
        if not isinstance(cfg, SaladConfig):
            raise TypeError(f"cfg must be a SaladConfig, got {type(cfg).__name__}")
        if len(train_set) < 2:
            raise ValueError(f"the training set needs at least 2 images, got {len(train_set)}")
        check_splits({"train": train_set, "val": val_set}, both_classes=("val",))
        self.cfg = cfg
        self.train_set = train_set
        self.val_set = val_set
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.distributed = is_distributed()
        if self.distributed and len(train_set) < world_size():
            raise ValueError(f"the training set of {len(train_set)} images cannot feed {world_size()} ranks")
        self.device = local_device(device) if self.distributed else resolve_device(device)
        self.train_labels = dataset_labels(train_set)
        self.val_labels = dataset_labels(val_set) if val_set is not None else None  # both classes: check_splits
        seed_everything(cfg.train.seed)
        self.model = build_model(cfg.model).to(self.device)
        if self.distributed and cfg.train.sync_batchnorm:
            self.model = convert_sync_batchnorm(self.model, self.device)
        self.memory = MemoryBank(len(train_set), cfg.model.latent_dim, seed=cfg.train.seed).to(self.device)
        self.channels_last = cfg.train.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas,
                                          weight_decay=cfg.train.weight_decay)
        self._forward: nn.Module = _TrainingForward(self.model)  # what train_step calls (DDP-wrapped across ranks)
        if self.distributed:
            self._forward = DistributedDataParallel(
                self._forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=not cfg.train.sync_batchnorm,  # synced running statistics are equal already
                find_unused_parameters=cfg.loss.reconstruction == "none")  # the decoder then gets no gradient
        self.use_amp = cfg.train.amp and self.device.type == "cuda"
        self.epoch = 0  # next epoch to run
        self.history: list[dict[str, Any]] = []
        self.best_val_auc = float("-inf")
        self.round_neighbours: torch.Tensor | None = None  # [N, k]
        self.round_prototypes: torch.Tensor | None = None  # [N] bool
        self.selected: dict[str, Any] | None = None
        # what the checkpoints were trained and selected on; a folder is never resumed or loaded for other splits
        self.data_fingerprint = splits_fingerprint({"train": train_set, "val": val_set}) if self.run_dir else ""
        if self.run_dir is not None:
            if is_main_process():  # the one writer repairs; the other ranks only read, after it
                for stem in ("last", "best"):
                    checkpoint_exists(self.run_dir / stem)  # finishes or undoes a save a killed process left half done
                remove_stale_temps(self.run_dir)
            barrier()
            if checkpoint_exists(self.run_dir / "last"):
                self._restore(self.run_dir / "last")
        if self.distributed:
            self._check_ranks_agree()

    def _check_ranks_agree(self) -> None:
        """Data-parallel: refuse ranks that differ in a training setting, their images, the epoch they start at
        (each rank resumes from its own view of the run folder) or the model and memory they start from.

        Raises:
            ValueError: on every rank, naming what differs and on which ranks
                (:func:`salad_lite.distributed.check_ranks_agree`).
        """
        fingerprint = self.data_fingerprint or splits_fingerprint({"train": self.train_set, "val": self.val_set})
        settings = {f"{section}.{name}": json.dumps(value, sort_keys=True)
                    for section, fields in self.cfg.to_dict().items() for name, value in fields.items()
                    if (section, name) not in _NOT_TRAINING}
        with collective_failure_context("the check that every rank trains the same run"):
            check_ranks_agree({**settings, "training and validation images": fingerprint,
                               "start epoch (each rank's view of the run folder)": str(self.epoch),
                               "model weights and memory bank": tensor_digest(self.state_tensors())})

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
        anchors = loss_cfg.latent_objective == "anchors"
        k = min(loss_cfg.anchor_neighbours, n - 1) if anchors else min(t.neighbours(round_index), n)
        # entropy [N] and neighbourhoods [N, k] in one pass over the memory's similarities
        entropy, neighbours = self.memory.round_start(k, loss_cfg.temperature, include_self=not anchors)
        prototypes = torch.zeros(n, dtype=torch.bool, device=self.device)
        prototypes[torch.argsort(entropy)[:count]] = True
        self.round_prototypes, self.round_neighbours = prototypes, neighbours

    # ----------------------------------------------------------------- training
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _view_params(self, batch: int, generator: torch.Generator) -> AugmentParams:
        """The parameters of one view of each of ``batch`` images, drawn in the ranges of ``cfg.augment``."""
        return augment_params(batch, generator, **dataclasses.asdict(self.cfg.augment))

    def train_step(self, indices: np.ndarray, round_index: int, generator: torch.Generator) -> dict[str, float]:
        """One optimiser step on the batch ``indices``; returns the loss terms as floats.

        In data-parallel training ``indices`` [B] is the global batch: this rank
        trains on its slice (:func:`salad_lite.distributed.shard_sizes`), the
        views' parameters are drawn for all B images, and the returned terms
        are those of the whole batch (summed over ranks).

        Raises:
            FloatingPointError: the loss is NaN/inf (the message gives the epoch and every term).
        """
        loss_cfg = self.cfg.loss
        sizes = shard_sizes(len(indices)) if self.distributed else [len(indices)]
        start = sum(sizes[:rank()])
        local = indices[start:start + sizes[rank()]]
        x = self._to_device(gather_images(self.train_set, local))  # [b, 1, S, S]; finite: checked at __init__
        index_t = torch.as_tensor(local, dtype=torch.long, device=self.device)
        num_views = loss_cfg.num_views if loss_cfg.use_instance and loss_cfg.latent_objective == "paper" else 0
        with self._autocast():
            view_inputs = None
            if num_views > 0:  # every rank draws the global batch's parameters and applies its own rows
                view_inputs = self._to_device(torch.cat([
                    apply_augment(x, self._view_params(len(indices), generator).rows(start, start + len(local)))
                    for _ in range(num_views)]))  # [V b, 1, S, S]
            z, x_hat, views = self._forward(x, view_inputs)  # [b, d], [b, 1, S, S], [V b, d] or None
            if views is not None:
                views = views.view(num_views, len(local), -1).transpose(0, 1)  # [b, V, d]
        if views is not None:
            views = all_gather_cat(views.float(), sizes)  # [B, V, d]: the views of the whole global batch
        neighbours = prototypes = None
        if round_index > 0:
            neighbours, prototypes = self.round_neighbours[index_t], self.round_prototypes[index_t]
        terms = salad_loss(loss_cfg, x, x_hat, z.float(), index_t, self.memory.bank, views, neighbours, prototypes,
                           view_offset=start)
        objective = terms.total
        if self.distributed:  # this rank's part of the global batch's Eq. 3; DDP averages the W parts' gradients
            batch_prototypes = shard_prototypes = 0
            if prototypes is not None:
                batch_prototypes = int(self.round_prototypes[torch.as_tensor(indices, device=self.device)].sum())
                shard_prototypes = int(prototypes.sum())
            terms = shard_terms(loss_cfg, terms, len(local), len(indices), shard_prototypes, batch_prototypes)
            objective = terms.total * world_size()
            floats = dict(zip(LossTerms.NAMES, all_reduce_sum(terms.stacked().double()).tolist()))
        else:
            floats = terms.as_floats()
        if not math.isfinite(floats["loss"]):  # the global value: every rank stops at the same step
            raise FloatingPointError(f"loss became {floats['loss']} at epoch {self.epoch} "
                                     f"(terms {floats}); lower the learning rate or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        batch_index = torch.as_tensor(indices, dtype=torch.long, device=self.device)  # [B]
        self.memory.update(batch_index, all_gather_cat(z.detach().float(), sizes), self.cfg.train.memory_momentum)
        return floats

    def fit(self, until_epoch: int | None = None) -> list[dict[str, Any]]:
        """Run (or resume) training up to ``until_epoch`` (default: the whole schedule); returns the history.

        Raises:
            FloatingPointError: the loss became NaN/inf (see :meth:`train_step`).
            ValueError: validation needs both classes (from :func:`salad_lite.metrics.auc`).
            RuntimeError: data-parallel training lost another rank (it died, or did not answer
                within ``SALAD_LITE_DIST_TIMEOUT`` seconds); the message names this rank and the epoch.
        """
        stop = self.total_epochs if until_epoch is None else min(until_epoch, self.total_epochs)
        bar = None
        if self.cfg.train.progress and progress_enabled() and tqdm is not None and self.epoch < stop \
                and is_main_process():
            bar = tqdm(total=stop, initial=self.epoch, desc="SALAD epochs", unit="epoch")
        while self.epoch < stop:
            with collective_failure_context(f"epoch {self.epoch}"):
                record = self._run_epoch(stop)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.3f}" for k in ("loss", "val_auc") if k in record})
        if bar is not None:
            bar.close()
        with collective_failure_context("the end of training"):
            barrier()  # every rank returns once rank 0 has written the last checkpoint
        return self.history

    def _run_epoch(self, stop: int) -> dict[str, Any]:
        """Train epoch ``self.epoch``, validate (when due before ``stop``), snapshot, checkpoint; returns its record."""
        t = self.cfg.train
        started = time.perf_counter()
        round_index = self.round_of_epoch(self.epoch)
        first_of_round = round_index > 0 and (self.epoch - t.pretrain_epochs) % max(t.epochs_per_round, 1) == 0
        if first_of_round or (round_index > 0 and self.round_neighbours is None):
            self._start_round(round_index)
            self._share_round()
        epoch_seed = t.seed * 1_000_003 + self.epoch
        order_gen = torch.Generator().manual_seed(epoch_seed)
        view_gen = torch.Generator().manual_seed(epoch_seed + 7_919)
        self.model.train()
        sums: dict[str, float] = {}
        ranks = world_size()
        batches = epoch_batches(len(self.train_set), t.batch_size * ranks, order_gen, ranks)  # global batches
        for batch in batches:
            for key, value in self.train_step(batch, round_index, view_gen).items():
                sums[key] = sums.get(key, 0.0) + value
        record: dict[str, Any] = {"epoch": self.epoch, "round": round_index,
                                  **{k: v / len(batches) for k, v in sums.items()}}
        if round_index > 0:
            record["prototype_fraction"] = float(self.round_prototypes.float().mean())
            record["neighbours"] = int(self.round_neighbours.shape[1])
        if self.val_set is not None and ((self.epoch + 1) % t.validate_every == 0 or self.epoch + 1 == stop):
            # rank 0 validates, the others wait for its metrics: every rank then takes the same `best` decision
            record.update(broadcast_object(self.validate() if is_main_process() else None))
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        self.epoch += 1
        if self.epoch < self.total_epochs and self.round_of_epoch(self.epoch) != round_index \
                or self.epoch == self.total_epochs:
            self._snapshot(round_index)
        self._checkpoint(record)
        return record

    def _share_round(self) -> None:
        """Rank 0's round prototypes and neighbourhoods on every rank (computed alike; equal by construction)."""
        if self.distributed:
            broadcast_(self.round_neighbours)
            prototypes = broadcast_(self.round_prototypes.to(torch.uint8))  # gloo has no bool broadcast
            self.round_prototypes = prototypes.bool()

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
        if self.run_dir is None or not is_main_process():  # rank 0 writes; every rank knows `best`
            if record.get("val_auc", float("-inf")) > self.best_val_auc:
                self.best_val_auc = record["val_auc"]
            return
        meta = {"config": self.cfg.to_dict(), "data_fingerprint": self.data_fingerprint, "epoch": self.epoch,
                "history": self.history, "best_val_auc": self.best_val_auc}
        if self.distributed:
            meta["world_size"] = world_size()
        improved = record.get("val_auc", float("-inf")) > self.best_val_auc
        if improved:
            self.best_val_auc = meta["best_val_auc"] = record["val_auc"]
            save_checkpoint(self.run_dir / "best", self.state_tensors(),
                            {**meta, "selected_epoch": record["epoch"], "selected_round": record["round"]})
        tensors = self.state_tensors()
        tensors.update(optimizer_tensors(self.optimizer))
        if self.round_neighbours is not None:
            tensors["round.neighbours"] = self.round_neighbours
            tensors["round.prototypes"] = self.round_prototypes.to(torch.uint8)
        meta["optimizer"] = optimizer_meta(self.optimizer)
        save_checkpoint(self.run_dir / "last", tensors, meta)
        write_history(self.run_dir, self.history)

    def _snapshot(self, round_index: int) -> None:
        """At the end of pretraining (round 0) and of each round, keep the memory and validation latents.

        Written to ``run_dir/snapshots/round{r}.safetensors`` (``memory`` [N, d], ``val`` [M, d]);
        the book draws its per-round UMAP views from them.
        """
        if self.run_dir is None or not is_main_process():
            return
        tensors = {"memory": self.memory.bank}
        if self.val_set is not None:
            tensors["val"] = self.embed(self.val_set)
        save_checkpoint(self.run_dir / "snapshots" / f"round{round_index}", tensors,
                        {"round": round_index, "epoch": self.epoch})

    def _restore(self, stem: Path) -> None:
        """Continue from the ``last`` checkpoint: weights, memory, optimiser, round state, counters, history."""
        tensors, meta = self._load_verified(stem, needs=("epoch", "history", "best_val_auc", "optimizer"))
        json_path = checkpoint_paths(stem)[1]
        epoch, history, best = meta["epoch"], meta["history"], meta["best_val_auc"]
        if not is_int(epoch) or not 0 <= epoch <= self.total_epochs:
            raise CorruptFileError(f"checkpoint metadata {json_path}: epoch must be an int in 0..{self.total_epochs}, "
                                   f"got {epoch!r}")
        if not isinstance(history, list) or len(history) != epoch or not all(isinstance(h, dict) for h in history):
            raise CorruptFileError(f"checkpoint metadata {json_path}: history must hold one record per epoch run "
                                   f"({epoch}), got {type(history).__name__} of {len(history) if isinstance(history, list) else '?'}")
        if not is_number(best):
            raise CorruptFileError(f"checkpoint metadata {json_path}: best_val_auc must be a number, got {best!r}")
        load_optimizer(self.optimizer, tensors, meta["optimizer"], json_path)
        self.round_neighbours, self.round_prototypes = _round_state(tensors, len(self.train_set), stem)
        self.epoch, self.history, self.best_val_auc = epoch, history, float(best)
        trained_on = meta.get("world_size", 1)
        if trained_on != world_size() and epoch < self.total_epochs:  # a finished run is only read
            warnings.warn(f"{stem} was trained on {trained_on} rank(s) and resumes on {world_size()}: the global "
                          f"batch changes from {trained_on * self.cfg.train.batch_size} to "
                          f"{world_size() * self.cfg.train.batch_size} images", stacklevel=3)

    def _load_verified(self, stem: Path, needs: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load checkpoint ``stem`` into the model and memory after checking that it belongs to this run.

        Checks: the stored configuration equals ``self.cfg`` in every training-relevant
        field; it was trained and selected on these training and validation splits
        (:func:`~salad_lite.data.batches.splits_fingerprint`: images, labels, patients,
        order); the model tensors have the names and shapes of a model built from
        that configuration; the memory bank has one row per training image. A
        checkpoint of a salad_lite older than the split record is loaded with a
        warning that its splits cannot be checked.

        Raises:
            CorruptFileError: the checkpoint is damaged, lacks a key of ``needs``,
                or its tensors do not fit (file named).
            ValueError: it was trained with another configuration, or on other
                training or validation splits (file named).
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
                             "use another run folder or the same configuration")
        if self.data_fingerprint:  # without a run_dir nothing on disk is protected
            check_data_fingerprint(meta.get("data_fingerprint"), self.data_fingerprint, json_path)
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
        _check_finite_state(tensors, tensor_path)
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
            ValueError: it was trained with another configuration or on other splits.
        """
        if self.run_dir is None or not checkpoint_exists(self.run_dir / "best"):
            raise FileNotFoundError(f"no best checkpoint in {self.run_dir}: train with a validation set first")
        _, meta = self._load_verified(self.run_dir / "best", needs=("selected_epoch", "selected_round"))
        self.selected = meta
        return meta

    @property
    def is_finished(self) -> bool:
        return self.epoch >= self.total_epochs


class _TrainingForward(nn.Module):
    """The forward pass of a training step: ``model(x)`` and, for L_ss, ``model.encode(views)``.

    One module call, so that DistributedDataParallel wraps both passes (the
    views' BatchNorm statistics are those of the views' batch, as in one process).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor,
                view_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``x`` [B, 1, S, S], ``view_inputs`` [V B, 1, S, S] or None -> z [B, d], x_hat [B, 1, S, S], views [V B, d]."""
        z, x_hat = self.model(x)
        return z, x_hat, None if view_inputs is None else self.model.encode(view_inputs)


def write_history(folder: Path, history: list[dict[str, Any]]) -> None:
    """``history.json`` and ``history.csv`` in ``folder``: one row per epoch, rewritten after every epoch.

    Columns: ``epoch``, ``round``, then the other keys in the order they first
    appear (loss terms, ``val_auc``..., ``seconds``). Both written atomically, so a
    reader (``tail``, a notebook) never sees half a file.

    Raises:
        OSError: the folder cannot be written.
    """
    columns = ["epoch", "round"]
    for record in history:
        columns += [key for key in record if key not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_json_atomic(folder / "history.json", history, indent=2)
    write_text_atomic(folder / "history.csv", text.getvalue())


def _check_finite_state(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse checkpoint tensors with NaN or inf, or a memory bank whose rows are not unit vectors (file named).

    Raises:
        CorruptFileError: names ``path``, the first bad tensor and the count.
    """
    check_finite_tensors(tensors, path)
    try:
        check_unit_rows(tensors["memory.bank"], "memory.bank")
    except ValueError as error:
        raise CorruptFileError(f"checkpoint {path}: {error}") from None


def _round_state(tensors: dict[str, torch.Tensor], n: int, stem: Path) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The stored round's neighbourhoods [N, k] and prototype mask [N], checked; (None, None) before round 1.

    Raises:
        CorruptFileError: only one of the two is stored, or their shapes or
            neighbour ids do not fit a training set of ``n`` images (file named).
    """
    names = ("round.neighbours", "round.prototypes")
    present = [name in tensors for name in names]
    if not any(present):
        return None, None
    neighbours, prototypes = (tensors.get(name) for name in names)
    problem = None
    if not all(present):
        problem = f"it stores {names[present.index(True)]} without {names[present.index(False)]}"
    elif neighbours.ndim != 2 or neighbours.shape[0] != n or neighbours.shape[1] < 1:
        problem = f"round.neighbours has shape {tuple(neighbours.shape)}, expected [{n}, k]"
    elif int(neighbours.min()) < 0 or int(neighbours.max()) >= n:
        problem = f"round.neighbours holds ids outside 0..{n - 1}"
    elif tuple(prototypes.shape) != (n,):
        problem = f"round.prototypes has shape {tuple(prototypes.shape)}, expected [{n}]"
    if problem:
        raise CorruptFileError(f"checkpoint {checkpoint_paths(stem)[0]} does not fit the training set: {problem}; "
                               "delete it to start over")
    return neighbours.long(), prototypes.bool()
