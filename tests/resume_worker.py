"""Child process for the kill-and-resume tests: trains epoch by epoch into a run directory.

``python resume_worker.py RUN_DIR`` trains slowly, so that the parent can kill it
between checkpoints. ``python resume_worker.py RUN_DIR STEM EPOCH POINT`` kills
itself with SIGKILL (no clean-up code runs) at ``POINT`` of the save sequence of
checkpoint ``STEM`` written after ``EPOCH`` epochs (see :data:`KILL_POINTS`).
"""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from conftest import ArrayDataset, blob_images
from salad_lite import checkpoint
from salad_lite.config import profile_config
from salad_lite.trainer import SaladTrainer

# Every point of checkpoint.save_checkpoint's sequence: (file-write call, os.replace call, before/after/partial).
KILL_POINTS = {
    "tensors-half-written": ("write", 1, "partial"),
    "before-json-write": ("write", 2, "before"),
    "json-half-written": ("write", 2, "partial"),
    "before-tensor-rename": ("replace", 1, "before"),
    "between-renames": ("replace", 2, "before"),
    "after-json-rename": ("replace", 2, "after"),
}


def make_trainer(run_dir: str) -> SaladTrainer:
    """Three epochs (pretraining, round 1, round 2) on 48 training and 16 validation images of 32 px."""
    labels = np.zeros(48, dtype=np.int64)
    val_labels = np.r_[np.zeros(8), np.ones(8)].astype(np.int64)
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 1, "rounds": 2, "epochs_per_round": 1,
                                                 "batch_size": 16, "progress": False})
    return SaladTrainer(cfg, ArrayDataset(blob_images(labels, seed=3), labels, prefix="train-"),
                        ArrayDataset(blob_images(val_labels, seed=4), val_labels, prefix="val-"),
                        run_dir=run_dir, device="cpu")


def arm_kill(trainer: SaladTrainer, stem: str, point: str) -> None:
    """Make the next save of checkpoint ``stem`` kill this process at ``point``."""
    kind, call, when = KILL_POINTS[point]
    counts = {"write": 0, "replace": 0}
    real_write, real_replace = checkpoint._write_file, os.replace

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def ours(path) -> bool:
        return Path(path).name.startswith((f".{stem}.", f"{stem}.")) and Path(path).parent == trainer.run_dir

    def write(path, data):
        if ours(path):
            counts["write"] += 1
            if kind == "write" and counts["write"] == call:
                if when == "partial":
                    with open(path, "wb") as handle:
                        handle.write(data[: len(data) // 2])
                die()
        real_write(path, data)

    def replace(src, dst):
        if ours(dst):
            counts["replace"] += 1
            if kind == "replace" and counts["replace"] == call and when == "before":
                die()
        real_replace(src, dst)
        if ours(dst) and kind == "replace" and counts["replace"] == call and when == "after":
            die()

    checkpoint._write_file = write
    checkpoint.os.replace = replace  # the child's os module: only this process is affected


if __name__ == "__main__":
    trainer = make_trainer(sys.argv[1])
    if len(sys.argv) == 5:
        stem, epoch, point = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        trainer.fit(until_epoch=epoch - 1)
        arm_kill(trainer, stem, point)
        trainer.fit(until_epoch=epoch)
        sys.exit(3)  # not killed: the kill point was never reached
    while not trainer.is_finished:
        trainer.fit(until_epoch=trainer.epoch + 1)
        time.sleep(1.0)  # leaves the parent time to kill us between checkpoints
