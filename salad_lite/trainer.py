"""Progressive SALAD training: pretraining, then R rounds of aggregation, resumable, selected on validation.

Schedule (epochs are numbered 0.. over the whole run):

- pretraining, ``cfg.train.pretrain_epochs`` epochs: ``L_mse + lambda L_ss``;
- round r = 1..R, ``cfg.train.epochs_per_round`` epochs each: at the round's
  first epoch the ``prototype_fraction(r)`` lowest-entropy memory entries become
  the prototypical samples and every entry gets its ``neighbours(r)`` nearest
  memory entries; both stay fixed for the round. Loss: Eq. 3.

After every epoch a checkpoint ``last`` is written (model, memory, optimiser,
the round's prototypes and neighbourhoods, history); ``fit`` resumes from it. The
epoch with the best validation AUC is kept as ``best``: selection never looks at
a test split. Shuffling and augmentation are seeded per epoch, so a resumed run
reproduces the uninterrupted one on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salad_lite.augment import augment_batch
from salad_lite.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from salad_lite.config import SaladConfig
from salad_lite.losses import salad_loss
from salad_lite.memory import MemoryBank
from salad_lite.metrics import auc, auprc
from salad_lite.models import build_model
from salad_lite.scorer import SaladScorer
from salad_lite.utils import resolve_device, seed_everything

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None


def gather_images(dataset: Any, indices: np.ndarray) -> torch.Tensor:
    """Images of ``indices`` as float [B, 1, S, S] in [0, 1].

    Uses a dataset's in-memory uint8 ``images`` array [N, S, S] when it has one
    (the cached datasets), otherwise stacks ``dataset[i]["image"]``.
    """
    images = getattr(dataset, "images", None)
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3:
        return torch.from_numpy(images[indices]).unsqueeze(1).float().div_(255.0)
    return torch.stack([dataset[int(i)]["image"] for i in indices]).float()


def image_batches(dataset: Any, batch_size: int) -> Iterator[torch.Tensor]:
    """Every image of ``dataset`` in order, as float batches [B, 1, S, S] in [0, 1] on the CPU."""
    for start in range(0, len(dataset), batch_size):
        yield gather_images(dataset, np.arange(start, min(start + batch_size, len(dataset))))


def dataset_labels(dataset: Any) -> np.ndarray:
    """Labels [N] (0 normal, 1 abnormal) of a dataset with a ``labels`` attribute or sample dicts."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.array([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


# Settings that do not change what a replicate learns: how many replicates the book runs, progress bars.
_NOT_TRAINING = {("data", "replicates"), ("train", "progress")}


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
    """

    def __init__(self, cfg: SaladConfig, train_set: Any, val_set: Any | None = None,
                 run_dir: str | Path | None = None, device: str | torch.device = "auto") -> None:
        if len(train_set) < 2:
            raise ValueError(f"the training set needs at least 2 images, got {len(train_set)}")
        self.cfg = cfg
        self.train_set = train_set
        self.val_set = val_set
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = resolve_device(device)
        self.train_labels = dataset_labels(train_set)
        self.val_labels = dataset_labels(val_set) if val_set is not None else None
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
        if self.run_dir is not None and checkpoint_exists(self.run_dir / "last"):
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
        """One optimiser step on the batch ``indices``; returns the loss terms as floats."""
        loss_cfg = self.cfg.loss
        x = gather_images(self.train_set, indices)  # [B, 1, S, S]
        if not torch.isfinite(x).all():
            bad = [int(i) for i, ok in zip(indices, torch.isfinite(x).flatten(1).all(1)) if not ok]
            raise ValueError(f"training images with NaN/inf pixels at dataset indices {bad[:10]}")
        x = self._to_device(x)
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
            raise FloatingPointError(f"loss became {float(terms.total)} at epoch {self.epoch} "
                                     f"(terms {terms.as_floats()}); lower the learning rate or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.memory.update(index_t, z.detach().float(), self.cfg.train.memory_momentum)
        return terms.as_floats()

    def fit(self, until_epoch: int | None = None) -> list[dict[str, Any]]:
        """Run (or resume) training up to ``until_epoch`` (default: the whole schedule); returns the history."""
        stop = self.total_epochs if until_epoch is None else min(until_epoch, self.total_epochs)
        t = self.cfg.train
        n = len(self.train_set)
        bar = None
        # TQDM_DISABLE=1 (set by scripts/build_book.py for the static pages) is not honoured by tqdm.notebook
        bars_off = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
        if t.progress and not bars_off and tqdm is not None and self.epoch < stop:
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
        """Unit latents [N, d] of every image of ``dataset`` (eval mode), on the CPU."""
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
        """A scorer fitted on :meth:`scoring_bank` with the training labels."""
        return SaladScorer.from_config(self.cfg.score).fit(self.scoring_bank(), self.train_labels)

    def validate(self) -> dict[str, float]:
        """Validation AUC/AUPRC of the current model and memory."""
        with torch.no_grad(), _quiet_k_warning():
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
        tensors, meta = load_checkpoint(stem, self.device)
        changed = config_changes(SaladConfig.from_dict(meta["config"]), self.cfg)
        if changed:
            raise ValueError(f"{stem}.json was trained with another configuration ({'; '.join(changed)}); "
                             "use another run_dir or the same config")
        self.load_state_tensors(tensors)
        _load_optimizer(self.optimizer, tensors, meta["optimizer"])
        if "round.neighbours" in tensors:
            self.round_neighbours = tensors["round.neighbours"].long()
            self.round_prototypes = tensors["round.prototypes"].bool()
        self.epoch, self.history, self.best_val_auc = meta["epoch"], meta["history"], meta["best_val_auc"]

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load model weights and memory from a flat state dict (see :meth:`state_tensors`)."""
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_state)
        self.memory.bank.copy_(tensors["memory.bank"])

    def load_best(self) -> dict[str, Any]:
        """Load the validation-selected checkpoint ``best`` into this trainer; returns its metadata."""
        if self.run_dir is None or not checkpoint_exists(self.run_dir / "best"):
            raise FileNotFoundError(f"no best checkpoint in {self.run_dir}: train with a validation set first")
        tensors, meta = load_checkpoint(self.run_dir / "best", self.device)
        self.load_state_tensors(tensors)
        return meta

    @property
    def is_finished(self) -> bool:
        return self.epoch >= self.total_epochs


@contextlib.contextmanager
def _quiet_k_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="K=.* exceeds")
        yield


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
