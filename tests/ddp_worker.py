"""Worker of the data-parallel tests, started by torchrun: trains epoch by epoch and records each rank's bank.

``python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_worker.py RUN_DIR OUT_DIR``
trains :func:`make_trainer`'s run (per-rank batch :data:`RANK_BATCH`) into
RUN_DIR; after every epoch each rank records the SHA-256 of its memory bank and
model weights, and finally writes ``OUT_DIR/rank{r}.json``.
``--kill-rank R --kill-epoch E --kill-step S`` makes rank R SIGKILL itself at
the start of step S of epoch E (no clean-up code runs); ``--seed-of-rank`` starts
each rank with its own seed, which the trainer must refuse.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import torch

from conftest import ArrayDataset, blob_images
from salad_lite.config import profile_config
from salad_lite.distributed import init_from_environment, rank
from salad_lite.trainer import SaladTrainer

RANK_BATCH = 8  # per rank; the single-process reference trains on batches of 2 x RANK_BATCH
# The paper's learning rate. Adam's first steps are nearly sign(gradient): float-level differences of the
# summation order (ranks vs one process) grow with the learning rate (lr 1e-3: ~1e-2 after 3 epochs).
LR = 1e-4
TRAIN_IMAGES = 49  # global batches 16, 16, 17 (a last batch of one joins the previous): shards of 8/8 and 9/8


def make_trainer(run_dir: str | Path, batch_size: int, seed: int = 0) -> SaladTrainer:
    """Three epochs (pretraining, round 1, round 2) on 49 training and 16 validation images of 32 px."""
    labels = np.zeros(TRAIN_IMAGES, dtype=np.int64)
    val_labels = np.r_[np.zeros(8), np.ones(8)].astype(np.int64)
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 1, "rounds": 2, "epochs_per_round": 1,
                                                 "batch_size": batch_size, "lr": LR, "progress": False,
                                                 "seed": seed})
    return SaladTrainer(cfg, ArrayDataset(blob_images(labels, seed=3), labels, prefix="train-"),
                        ArrayDataset(blob_images(val_labels, seed=4), val_labels, prefix="val-"),
                        run_dir=run_dir, device="cpu")


def digest(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, in order."""
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def arm_kill(trainer: SaladTrainer, epoch: int, step: int) -> None:
    """SIGKILL this process when ``train_step`` is called for the ``step``-th time (0-based) in epoch ``epoch``."""
    real_step, calls = trainer.train_step, {"count": 0}

    def train_step(*args, **kwargs):
        if trainer.epoch == epoch:
            if calls["count"] == step:
                os.kill(os.getpid(), signal.SIGKILL)
            calls["count"] += 1
        return real_step(*args, **kwargs)

    trainer.train_step = train_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-epoch", type=int, default=1)
    parser.add_argument("--kill-step", type=int, default=1)
    parser.add_argument("--seed-of-rank", action="store_true", help="rank r trains with seed r (must be refused)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # two ranks share the two cores
    if not init_from_environment("cpu"):
        raise SystemExit("ddp_worker.py must run under torchrun with WORLD_SIZE > 1")
    trainer = make_trainer(args.run_dir, RANK_BATCH, seed=rank() if args.seed_of_rank else 0)
    if rank() == args.kill_rank:
        arm_kill(trainer, args.kill_epoch, args.kill_step)
    banks, models, start = [], [], trainer.epoch
    while not trainer.is_finished:
        trainer.fit(until_epoch=trainer.epoch + 1)
        banks.append(digest([trainer.memory.bank]))
        models.append(digest(list(trainer.model.state_dict().values())))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank()}.json").write_text(json.dumps({"bank_sha": banks, "model_sha": models,
                                                        "start_epoch": start,
                                                        "history": trainer.history}))


if __name__ == "__main__":
    main()
