"""Progressive trainer: gradient isolation, determinism, kill-and-resume, learning, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ArrayDataset, blob_images
from salad_lite.config import LossConfig, ModelConfig, profile_config
from salad_lite.losses import aggregation_loss, instance_loss, reconstruction_loss, salad_loss
from salad_lite.memory import MemoryBank
from salad_lite.metrics import auc
from salad_lite.models import build_model
from salad_lite.trainer import SaladTrainer, epoch_batches

TESTS = Path(__file__).resolve().parent


def tiny_cfg(**train):
    base = {"pretrain_epochs": 1, "rounds": 2, "epochs_per_round": 1, "batch_size": 16, "progress": False}
    return profile_config("smoke").replace(train={**base, **train})


def test_latent_losses_update_the_encoder_only():
    torch.manual_seed(0)
    model = build_model(ModelConfig(image_size=32, width=8))
    x = torch.rand(6, 1, 32, 32)
    memory = MemoryBank(20, 200)
    indices = torch.arange(6)
    neighbours = memory.neighbours_of_entries(3)[indices]
    z, x_hat = model(x)
    latent = instance_loss(z, indices, memory.bank, views=model.encode(x.flip(-1))[:, None]) \
        + aggregation_loss(z, memory.bank, neighbours, torch.ones(6, dtype=torch.bool))
    latent.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in model.decoder.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None) > 0

    # with the full Eq. 3 loss, the decoder's gradient equals that of the reconstruction term alone
    model.zero_grad()
    z, x_hat = model(x)
    salad_loss(LossConfig(num_views=0), x, x_hat, z, indices, memory.bank, None, neighbours,
               torch.ones(6, dtype=torch.bool)).total.backward()
    full = [p.grad.clone() for p in model.decoder.parameters()]
    model.zero_grad()
    z, x_hat = model(x)
    reconstruction_loss(x_hat, x).backward()
    for g_full, p in zip(full, model.decoder.parameters()):
        assert torch.allclose(g_full, p.grad, atol=1e-7)


def test_same_seed_gives_identical_loss_history():
    labels = np.zeros(40, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=5), labels)
    histories = []
    for _ in range(2):
        trainer = SaladTrainer(tiny_cfg(), data, None, device="cpu")
        histories.append([{k: v for k, v in r.items() if k != "seconds"} for r in trainer.fit()])
    assert histories[0] == histories[1]
    other = SaladTrainer(tiny_cfg(seed=1), data, None, device="cpu").fit()
    assert other[0]["loss"] != histories[0][0]["loss"]


def test_rounds_log_their_schedules():
    labels = np.zeros(40, dtype=np.int64)
    cfg = tiny_cfg(rounds=3, prototype_fraction_start=0.2, prototype_fraction_end=0.6,
                   neighbours_start=2, neighbours_end=6)
    history = SaladTrainer(cfg, ArrayDataset(blob_images(labels, seed=6), labels), None, device="cpu").fit()
    assert [r["round"] for r in history] == [0, 1, 2, 3]
    assert [r.get("neighbours") for r in history] == [None, 2, 4, 6]
    assert [round(r.get("prototype_fraction", 0), 2) for r in history] == [0, 0.2, 0.4, 0.6]
    assert history[0]["loss_agg"] == 0.0 and history[-1]["loss_agg"] > 0.0


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    sys.path.insert(0, str(TESTS))
    from resume_worker import make_trainer

    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    child = subprocess.Popen([sys.executable, str(TESTS / "resume_worker.py"), str(run_dir)], env=env)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            meta = run_dir / "last.json"
            if meta.exists() and json.loads(meta.read_text())["epoch"] >= 2:
                break
            assert child.poll() is None, "the training child exited before it could be killed"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    stopped_at = json.loads((run_dir / "last.json").read_text())["epoch"]
    resumed = make_trainer(str(run_dir))
    assert resumed.epoch == stopped_at and 2 <= stopped_at < resumed.total_epochs
    resumed_history = resumed.fit()
    straight_history = make_trainer(str(tmp_path / "straight")).fit()
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(resumed_history) == drop(straight_history)


def test_learning_on_planted_structures_reaches_auc_090(blob_splits, tmp_path):
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 3, "rounds": 2, "epochs_per_round": 2,
                                                 "progress": False})
    trainer = SaladTrainer(cfg, blob_splits["train"], blob_splits["val"], run_dir=tmp_path, device="cpu")
    history = trainer.fit()
    best = max(r["val_auc"] for r in history)
    assert best >= 0.9, [round(r["val_auc"], 3) for r in history]
    assert history[-1]["loss_rec"] < history[0]["loss_rec"]
    meta = trainer.load_best()  # selected on validation; reloading reproduces its AUC
    assert meta["best_val_auc"] == pytest.approx(best)
    scores = trainer.scorer().decision_function(trainer.embed(blob_splits["val"]))
    assert auc(blob_splits["val"].labels, scores) == pytest.approx(best, abs=1e-6)
    assert (tmp_path / "best.safetensors").exists() and (tmp_path / "best.json").exists()


def test_nan_batch_is_rejected_with_indices():
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=7), labels)
    trainer = SaladTrainer(tiny_cfg(), data, None, device="cpu")

    class WithNaN(ArrayDataset):
        def __getitem__(self, i):
            sample = super().__getitem__(i)
            if i == 5:
                sample["image"][0, 0, 0] = float("nan")
            return sample

    nan_set = WithNaN(data.images, labels)
    nan_set.images = list(data.images)  # not an array: forces the sample-dict path
    trainer.train_set = nan_set
    with pytest.raises(ValueError, match=r"NaN/inf pixels at dataset indices \[5\]"):
        trainer.train_step(np.array([3, 5, 7]), 0, torch.Generator().manual_seed(0))


def test_a_last_batch_of_one_is_merged_not_dropped():
    batches = epoch_batches(17, 16, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [17] and sorted(np.concatenate(batches)) == list(range(17))
    assert [len(b) for b in epoch_batches(18, 16, torch.Generator().manual_seed(0))] == [16, 2]
    labels = np.zeros(17, dtype=np.int64)
    history = SaladTrainer(tiny_cfg(), ArrayDataset(blob_images(labels, seed=8), labels), None, device="cpu").fit()
    assert np.isfinite([r["loss"] for r in history]).all()


def test_resuming_with_another_config_is_refused(tmp_path):
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=9), labels)
    SaladTrainer(tiny_cfg(), data, None, run_dir=tmp_path, device="cpu").fit(until_epoch=1)
    with pytest.raises(ValueError, match=r"another configuration \(train.lr: 0.001 -> 0.5\)"):
        SaladTrainer(tiny_cfg(lr=0.5), data, None, run_dir=tmp_path, device="cpu")
    # the number of replicates and progress bars do not change what a replicate learns: the run resumes
    same_run = tiny_cfg(progress=True).replace(data={"replicates": 4})
    assert SaladTrainer(same_run, data, None, run_dir=tmp_path, device="cpu").epoch == 1


def test_reconstruction_errors_match_a_per_image_reference():
    labels = np.zeros(7, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=9), labels)
    trainer = SaladTrainer(tiny_cfg(), data, None, device="cpu")
    errors = trainer.reconstruction_errors(data, batch_size=3)  # batches of 3, 3 and 1
    trainer.model.eval()
    with torch.no_grad():
        for i in range(len(data)):
            x = data[i]["image"][None].float()  # [1, 1, S, S]
            _, x_hat = trainer.model(x)
            assert errors[i] == pytest.approx(float(((x_hat - x) ** 2).mean()), rel=1e-5)
    assert errors.shape == (7,) and errors.dtype == np.float64
