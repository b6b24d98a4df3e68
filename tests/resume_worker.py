"""Child process for the kill-and-resume test: trains epoch by epoch into a run directory, slowly."""

import sys
import time

import numpy as np

from conftest import ArrayDataset, blob_images
from salad_lite.config import profile_config
from salad_lite.trainer import SaladTrainer


def make_trainer(run_dir: str) -> SaladTrainer:
    labels = np.zeros(64, dtype=np.int64)
    val_labels = np.r_[np.zeros(8), np.ones(8)].astype(np.int64)
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 2, "rounds": 2, "epochs_per_round": 2,
                                                 "batch_size": 16, "progress": False})
    return SaladTrainer(cfg, ArrayDataset(blob_images(labels, seed=3), labels),
                        ArrayDataset(blob_images(val_labels, seed=4), val_labels), run_dir=run_dir, device="cpu")


if __name__ == "__main__":
    trainer = make_trainer(sys.argv[1])
    while not trainer.is_finished:
        trainer.fit(until_epoch=trainer.epoch + 1)
        time.sleep(1.0)  # leaves the parent time to kill us between checkpoints
