"""Progressive trainer: gradient isolation, determinism, learning, and bad input refused before training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ArrayDataset, blob_images
from salad_lite.config import ConfigError, LossConfig, ModelConfig, profile_config
from salad_lite.data.batches import NonFiniteImageError, check_finite_images, check_splits, dataset_patient_ids
from salad_lite.data.splits import PatientLeakError
from salad_lite.losses import aggregation_loss, instance_loss, reconstruction_loss, salad_loss
from salad_lite.memory import MemoryBank
from salad_lite.metrics import auc
from salad_lite.models import build_model
from salad_lite.trainer import SaladTrainer, epoch_batches


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


def test_learning_on_planted_structures_reaches_auc_090(blob_splits, tmp_path):
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 3, "rounds": 2, "epochs_per_round": 2,
                                                 "progress": False})
    trainer = SaladTrainer(cfg, blob_splits["train"], blob_splits["val"], run_dir=tmp_path, device="cpu")
    history = trainer.fit()
    best = max(r["val_auc"] for r in history)
    assert best >= 0.9, [round(r["val_auc"], 3) for r in history]
    assert history[-1]["loss_rec"] < history[0]["loss_rec"]
    meta = trainer.load_best()  # selected on validation; reloading reproduces its AUC
    assert meta["best_val_auc"] == pytest.approx(best) and trainer.selected is meta
    assert history[meta["selected_epoch"]]["val_auc"] == pytest.approx(best)
    scores = trainer.scorer().decision_function(trainer.embed(blob_splits["val"]))
    assert auc(blob_splits["val"].labels, scores) == pytest.approx(best, abs=1e-6)
    assert (tmp_path / "best.safetensors").exists() and (tmp_path / "best.json").exists()


class FloatImages(torch.utils.data.Dataset):
    """Float images [N, S, S] (may hold NaN), sample dicts and metadata with a path column."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, prefix: str) -> None:
        self.images, self.labels = images.astype(np.float32), np.asarray(labels, dtype=np.int64)
        self.metadata = pd.DataFrame({"label": self.labels, "patient_id": [f"{prefix}{i}" for i in range(len(labels))],
                                      "path": [f"{prefix}/img{i}.png" for i in range(len(labels))]})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i])[None], "label": int(self.labels[i]), "index": i,
                "patient_id": str(self.metadata["patient_id"][i]), "finding": ""}


def float_split(n: int, prefix: str, nan_at: tuple[int, ...] = (), seed: int = 0) -> FloatImages:
    labels = np.r_[np.zeros(n - n // 2), np.ones(n // 2)].astype(np.int64)
    images = blob_images(labels, seed=seed).astype(np.float32) / 255.0
    for i in nan_at:
        images[i, 3, 4] = np.nan if i % 2 else np.inf
    return FloatImages(images, labels, prefix)


@pytest.mark.parametrize("split", ["train", "val"])
def test_non_finite_pixels_are_found_before_any_epoch_naming_split_and_image(split, monkeypatch):
    train = float_split(20, "train-", nan_at=(5,) if split == "train" else ())
    val = float_split(10, "val-", nan_at=(3, 7) if split == "val" else ())
    trained = []
    monkeypatch.setattr(SaladTrainer, "train_step", lambda *a, **k: trained.append(1))
    expected = r"index 5, path train-/img5.png, patient_id train-5" if split == "train" else \
        r"2 image\(s\) hold NaN/inf pixels, first: index 3, path val-/img3.png, patient_id val-3; index 7"
    with pytest.raises(NonFiniteImageError, match=rf"split '{split}': .*{expected}"):
        SaladTrainer(tiny_cfg(), train, val, device="cpu")
    assert trained == []  # refused at construction: no epoch was spent


def test_uint8_datasets_skip_the_pixel_scan(monkeypatch):
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=7), labels)
    monkeypatch.setattr(ArrayDataset, "__getitem__", lambda self, i: pytest.fail("the uint8 set was scanned"))
    check_finite_images(data, "train")  # a uint8 ``images`` array cannot hold NaN: no image is read


def test_a_patient_in_train_and_val_is_refused():
    labels = np.r_[np.zeros(10), np.ones(10)].astype(np.int64)
    train = ArrayDataset(blob_images(np.zeros(20, dtype=np.int64), seed=1), np.zeros(20, dtype=np.int64))
    val = ArrayDataset(blob_images(labels, seed=2), labels)  # both name patients p0..p19
    with pytest.raises(PatientLeakError, match=r"20 patient\(s\) appear in both 'train' and 'val'"):
        SaladTrainer(tiny_cfg(), train, val, device="cpu")
    SaladTrainer(tiny_cfg(), train, None, device="cpu")  # a single split has no one to leak to


def test_a_split_without_patient_ids_is_refused_when_another_split_is_given():
    images = torch.rand(20, 1, 32, 32)
    plain = torch.utils.data.TensorDataset(images, torch.zeros(20))
    labels = np.r_[np.zeros(5), np.ones(5)].astype(np.int64)
    with pytest.raises(TypeError, match=r"split 'train' \(TensorDataset\) has no patient ids"):
        check_splits({"train": plain, "val": ArrayDataset(blob_images(labels), labels)})
    # sample dicts with "patient_id" are enough without a metadata table
    assert list(dataset_patient_ids(float_split(4, "x-"), "val")) == ["x-0", "x-1", "x-2", "x-3"]


def test_a_bad_config_is_refused_before_training():
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=7), labels)
    with pytest.raises(ConfigError, match=r"train.batch_size must be >= 1, got -4"):
        SaladTrainer(tiny_cfg(batch_size=-4), data, None, device="cpu")


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
    # the number of replicates, progress bars and the final K grid do not change what a replicate learns
    # or which epoch is kept: the run resumes; the K of per-epoch selection does
    with pytest.raises(ValueError, match=r"another configuration \(score.k: 10 -> 3\)"):
        SaladTrainer(tiny_cfg().replace(score={"k": 3}), data, None, run_dir=tmp_path, device="cpu")
    # SyncBatchNorm changes nothing in one process: a run resumes with it switched
    same_run = tiny_cfg(progress=True, sync_batchnorm=False).replace(data={"replicates": 4}, score={"k_grid": (1, 3)})
    assert SaladTrainer(same_run, data, None, run_dir=tmp_path, device="cpu").epoch == 1


def test_a_run_folder_refuses_other_training_or_validation_images(tmp_path):
    """A renamed file reshuffles a seeded split, an edited split file moves images: same sizes, other images."""
    train_labels, val_labels = np.zeros(20, dtype=np.int64), np.r_[np.zeros(6), np.ones(6)].astype(np.int64)
    train = ArrayDataset(blob_images(train_labels, seed=9), train_labels, prefix="t")
    val = ArrayDataset(blob_images(val_labels, seed=10), val_labels, prefix="v")
    SaladTrainer(tiny_cfg(), train, val, run_dir=tmp_path, device="cpu").fit()
    order = np.r_[1, 0, 2:20]
    other_train = (ArrayDataset(train.images[order], train_labels, prefix="t"),  # the same images, reordered
                   ArrayDataset(blob_images(train_labels, seed=11), train_labels, prefix="t"))  # other pixels
    flipped = val_labels.copy()
    flipped[[0, -1]] = flipped[[-1, 0]]
    other_val = (ArrayDataset(val.images, flipped, prefix="v"),  # a label moved
                 ArrayDataset(val.images, val_labels, prefix="w"))  # other patients
    for train_set, val_set in [(t, val) for t in other_train] + [(train, v) for v in other_val]:
        with pytest.raises(ValueError, match=r"last.json was trained on other training or validation images"):
            SaladTrainer(tiny_cfg(), train_set, val_set, run_dir=tmp_path, device="cpu")
    trainer = SaladTrainer(tiny_cfg(), train, val, run_dir=tmp_path, device="cpu")  # the same splits: loads
    assert trainer.is_finished and trainer.load_best()["selected_epoch"] >= 0
    (tmp_path / "last.json").unlink()
    (tmp_path / "last.safetensors").unlink()
    with pytest.raises(ValueError, match=r"best.json was trained on other training or validation images"):
        SaladTrainer(tiny_cfg(), train, other_val[0], run_dir=tmp_path, device="cpu").load_best()


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


def test_the_history_is_written_after_every_epoch(tmp_path):
    """history.json / .csv beside the checkpoints, one row per epoch so far, epoch and round first."""
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=7), labels)
    trainer = SaladTrainer(tiny_cfg(), data, None, run_dir=tmp_path, device="cpu")
    for epoch in (1, 2):
        trainer.fit(until_epoch=epoch)
        rows = (tmp_path / "history.csv").read_text().splitlines()
        assert len(rows) == 1 + epoch and rows[0].startswith("epoch,round,")
        assert json.loads((tmp_path / "history.json").read_text()) == trainer.history
