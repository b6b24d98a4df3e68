"""The book's protocol: selection on validation only, test scored once, replicates summarised."""

import json

import numpy as np
import pytest

from conftest import ArrayDataset, blob_images
from salad_lite.baselines import pca_baseline
from salad_lite.config import profile_config
from salad_lite.data.batches import NonFiniteImageError, splits_fingerprint
from salad_lite.data.splits import PatientLeakError
from salad_lite.experiment import (
    ReplicateResult,
    evaluate_replicate,
    evaluate_replicates,
    replicate_dir,
    score_split,
    select_scoring,
    train_or_load,
)
from salad_lite.files import CorruptFileError
from salad_lite.metrics import auc
from salad_lite.trainer import SaladTrainer


def test_replicates_select_on_validation_and_score_test_once(blob_splits, tmp_path, monkeypatch):
    test_labels = np.r_[np.zeros(20), np.ones(20)].astype(np.int64)
    splits = {**blob_splits, "test": ArrayDataset(blob_images(test_labels, seed=20), test_labels)}
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 1, "rounds": 1, "epochs_per_round": 1,
                                                 "progress": False})
    summary = evaluate_replicates(cfg, splits, tmp_path, replicates=2, device="cpu")
    assert summary["replicates"] == 2 and len(summary["per_replicate"]) == 2
    aucs = [r["test_auc"] for r in summary["per_replicate"]]
    assert summary["test_auc"]["mean"] == np.mean(aucs)
    assert summary["test_auc"]["ci95"] == 1.96 * np.std(aucs, ddof=1)
    for row in summary["per_replicate"]:  # the reconstruction-error baseline of the same model, beside Eq. 4
        assert 0.0 <= row["reconstruction_test_auc"] <= 1.0 and 0.0 < row["reconstruction_test_auprc"] <= 1.0
    recon = [r["reconstruction_test_auc"] for r in summary["per_replicate"]]
    assert summary["reconstruction_test_auc"]["mean"] == np.mean(recon)
    assert summary["pca_baseline"]["test_auc"] > 0.9  # the raw-pixel reference sees the planted disks
    assert (tmp_path / "nih" / "pca_baseline.json").exists()
    untrained = summary["untrained_encoder"]  # Eq. 4 on the initial network of each seed: what training adds
    assert [row["seed"] for row in untrained["per_seed"]] == [0, 1]
    assert untrained["test_auc"]["mean"] == np.mean([row["test_auc"] for row in untrained["per_seed"]])
    fresh = SaladTrainer(cfg.replace(train={"seed": 1}), splits["train"], splits["val"], device="cpu")
    choice = select_scoring(fresh)
    reference = auc(test_labels, score_split(fresh, splits["test"], choice["k"], choice["discard_anomalous"]))
    assert untrained["per_seed"][1]["test_auc"] == reference and untrained["per_seed"][1]["k"] == choice["k"]
    assert (tmp_path / "nih" / "untrained_encoder.json").exists()
    seed0 = replicate_dir(tmp_path, cfg, 0)
    selection = json.loads((seed0 / "selection.json").read_text())
    assert {"k", "discard_anomalous", "grid"} <= set(selection)
    assert all(k <= 239 for k in (row["k"] for row in selection["grid"]))
    assert (seed0 / "snapshots" / "round0.safetensors").exists()
    assert (seed0 / "snapshots" / "round1.safetensors").exists()
    assert json.loads((tmp_path / "nih" / "metrics.json").read_text())["test_auc"] == summary["test_auc"]

    # a second call loads the stored results: the test split is never re-scored
    import salad_lite.experiment as experiment

    monkeypatch.setattr(experiment, "score_split", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rescored")))
    assert evaluate_replicates(cfg, splits, tmp_path, replicates=2, device="cpu")["test_auc"] == summary["test_auc"]

    # a stored result is never reused for another configuration
    changed = cfg.replace(score={"k_grid": (1, 5)})  # changes the selection, not the trained model
    with pytest.raises(ValueError, match=r"result.json was computed with another configuration "
                                         r"\(score.k_grid: \(1, 5, 10, 20, 50, 100\) -> \(1, 5\)\)"):
        evaluate_replicates(changed, splits, tmp_path, replicates=2, device="cpu")

    # a result.json written before a metric existed is recomputed (same model, same selection), not trusted
    monkeypatch.undo()
    result_path = seed0 / "result.json"
    stale = json.loads(result_path.read_text())
    stale.pop("reconstruction_test_auc")
    result_path.write_text(json.dumps(stale))
    again = evaluate_replicates(cfg, splits, tmp_path, replicates=2, device="cpu")
    assert again["test_auc"] == summary["test_auc"]
    assert again["reconstruction_test_auc"] == summary["reconstruction_test_auc"]
    assert "reconstruction_test_auc" in json.loads(result_path.read_text())
    stored = ReplicateResult.from_dict(json.loads(result_path.read_text()))
    assert stored.selected_epoch == json.loads((seed0 / "best.json").read_text())["selected_epoch"]
    assert stored.summary_row() == again["per_replicate"][0]

    # another test split (training and validation unchanged) is scored again with the same model, not refused;
    # the PCA reference, which depends on the splits alone, is computed again
    monkeypatch.setattr(SaladTrainer, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    other_test = {**splits, "test": ArrayDataset(blob_images(test_labels, seed=21), test_labels)}
    rescored = evaluate_replicate(cfg, other_test, tmp_path, device="cpu")
    assert rescored.selected_epoch == stored.selected_epoch and rescored.test_scores != stored.test_scores
    assert json.loads(result_path.read_text())["splits_sha256"] == splits_fingerprint(other_test)
    baseline = tmp_path / "nih" / "pca_baseline.json"
    assert experiment._pca_baseline_once(other_test, baseline)["test_auc"] == pca_baseline(other_test)["test_auc"]
    other_val = {**other_test, "val": other_test["test"], "test": splits["val"]}  # the model's validation changed
    with pytest.raises(ValueError, match=r"last.json was trained on other training or validation images"):
        evaluate_replicate(cfg, other_val, tmp_path, device="cpu")

    # a finished trainer the caller built (the CLI's, which refuses to train) is used, not built a second time
    given = SaladTrainer(cfg, other_test["train"], other_test["val"], run_dir=seed0, device="cpu")
    monkeypatch.setattr(experiment, "train_or_load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    result_path.unlink()
    reused = evaluate_replicate(cfg, other_test, tmp_path, device="cpu", trainer=given)
    assert reused.test_scores == rescored.test_scores and given.selected["selected_epoch"] == stored.selected_epoch
    with pytest.raises(ValueError, match=r"trainer belongs to another replicate: its folder is .*seed0, this "
                                         r"replicate's .*seed1"):
        evaluate_replicate(cfg.replace(train={"seed": 1}), other_test, tmp_path, device="cpu", trainer=given)
    with pytest.raises(ValueError, match=r"trainer was built with another configuration \(score.k_grid: "):
        evaluate_replicate(cfg.replace(score={"k_grid": (1, 5)}), other_test, tmp_path, device="cpu", trainer=given)
    quiet = cfg.replace(train={"progress": True}, data={"replicates": 3})  # settings that change no result
    assert evaluate_replicate(quiet, other_test, tmp_path, device="cpu", trainer=given).test_auc == reused.test_auc
    same_images = ArrayDataset(other_test["val"].images, other_test["val"].labels, prefix=other_test["val"].prefix)
    with pytest.raises(ValueError, match="trainer was built on other training or validation sets"):
        evaluate_replicate(cfg, {**other_test, "val": same_images}, tmp_path, device="cpu", trainer=given)
    with pytest.raises(TypeError, match="trainer must be a SaladTrainer, got str"):
        evaluate_replicate(cfg, other_test, tmp_path, device="cpu", trainer="seed0")
    monkeypatch.undo()

    # a corrupt or mistyped stored file is an error naming it, never silently recomputed or trusted
    result_path.write_text(json.dumps({**json.loads(result_path.read_text()), "test_auc": 0.99}))
    with pytest.raises(CorruptFileError, match=r"'test_auc' 0.99 is not what its own 'test_scores' give"):
        evaluate_replicate(cfg, other_test, tmp_path, device="cpu")
    edited = json.loads(result_path.read_text())
    for field, value, message in (("test_scores", edited["test_scores"][:-1], "'test_scores' must be 40 finite"),
                                  ("reconstruction_test_auc", 5.0, "'reconstruction_test_auc' must be a number in")):
        result_path.write_text(json.dumps({**edited, "test_auc": rescored.test_auc, field: value}))
        with pytest.raises(CorruptFileError, match=rf"replicate result {result_path}: {message}"):
            evaluate_replicate(cfg, other_test, tmp_path, device="cpu")
    pca_stored = json.loads(baseline.read_text())
    for field, value, message in (("test_auprc", 0.99, "'test_auprc' 0.99 is not"),
                                  ("test_auc", float("nan"), "'test_auc' must be a number in \\[0, 1\\], got nan"),
                                  ("test_auc", "0.56", "'test_auc' must be a number in")):
        baseline.write_text(json.dumps({**pca_stored, field: value}))
        with pytest.raises(CorruptFileError, match=rf"PCA baseline result {baseline}: {message}"):
            experiment._pca_baseline_once(other_test, baseline)
    # a file without the splits' record (an older salad_lite) is computed again, never trusted for these splits
    baseline.write_text(json.dumps({k: v for k, v in {**pca_stored, "test_auc": 0.123}.items() if k != "splits_sha256"}))
    assert experiment._pca_baseline_once(other_test, baseline)["test_auc"] == pca_stored["test_auc"]
    baseline.write_text(json.dumps(pca_stored))
    result_path.write_text('{"seed": 0, "k": ')
    with pytest.raises(CorruptFileError, match=rf"replicate result {result_path} is not valid JSON"):
        evaluate_replicates(cfg, splits, tmp_path, replicates=2, device="cpu")
    result_path.write_text(json.dumps({**stale, "reconstruction_test_auc": 0.5, "k": "ten"}))
    with pytest.raises(CorruptFileError, match=rf"{result_path}: k must be an int, got 'ten'"):
        evaluate_replicates(cfg, splits, tmp_path, replicates=2, device="cpu")
    result_path.write_text(json.dumps({**stale, "reconstruction_test_auc": 0.5}))
    baseline = tmp_path / "nih" / "pca_baseline.json"
    baseline.write_text("")
    with pytest.raises(CorruptFileError, match=rf"PCA baseline result {baseline} is empty"):
        evaluate_replicates(cfg, splits, tmp_path, replicates=2, device="cpu")
    assert not [p for p in (tmp_path / "nih").rglob(".*")], "temporary files were left behind"


def leaky_splits(blob_splits):
    """Hand-made splits in which validation shares patients with training (patient ids p0.. in both)."""
    val_labels = blob_splits["val"].labels
    test_labels = np.r_[np.zeros(4), np.ones(4)].astype(np.int64)
    return {"train": ArrayDataset(blob_splits["train"].images, blob_splits["train"].labels, prefix="p"),
            "val": ArrayDataset(blob_splits["val"].images, val_labels, prefix="p"),
            "test": ArrayDataset(blob_images(test_labels, seed=22), test_labels, prefix="test-")}


@pytest.mark.parametrize("entry", ["train_or_load", "evaluate_replicate", "evaluate_replicates", "pca_baseline"])
def test_every_entry_point_refuses_a_patient_in_two_splits(blob_splits, tmp_path, monkeypatch, entry):
    monkeypatch.setattr(SaladTrainer, "fit", lambda *a, **k: pytest.fail("trained on leaky splits"))
    cfg = profile_config("smoke")
    calls = {"train_or_load": lambda s: train_or_load(cfg, s, tmp_path, "cpu"),
             "evaluate_replicate": lambda s: evaluate_replicate(cfg, s, tmp_path, "cpu"),
             "evaluate_replicates": lambda s: evaluate_replicates(cfg, s, tmp_path, 1, "cpu"),
             "pca_baseline": lambda s: pca_baseline(s)}
    with pytest.raises(PatientLeakError, match=r"80 patient\(s\) appear in both 'train' and 'val'"):
        calls[entry](leaky_splits(blob_splits))
    assert not (tmp_path / "nih").exists()  # refused before anything was written


def test_a_nan_test_image_is_found_before_training(blob_splits, tmp_path, monkeypatch):
    class WithNaN(ArrayDataset):
        def __getitem__(self, i):
            sample = super().__getitem__(i)
            if i == 2:
                sample["image"][0, 5, 5] = float("nan")
            return sample

    test_labels = np.r_[np.zeros(4), np.ones(4)].astype(np.int64)
    test = WithNaN(blob_images(test_labels, seed=23), test_labels, prefix="test-")
    test.images = test.images.astype(np.float32)  # not uint8: the split is scanned
    monkeypatch.setattr(SaladTrainer, "fit", lambda *a, **k: pytest.fail("an epoch ran before the check"))
    with pytest.raises(NonFiniteImageError, match=r"split 'test': 1 image\(s\) hold NaN/inf pixels, first: index 2, "
                                                  r"patient_id test-2"):
        evaluate_replicates(profile_config("smoke"), {**blob_splits, "test": test}, tmp_path, 1, "cpu")
    with pytest.raises(KeyError, match=r"splits lack \['test'\]"):
        evaluate_replicates(profile_config("smoke"), blob_splits, tmp_path, 1, "cpu")


def test_replicate_result_round_trips_and_refuses_missing_fields():
    result = ReplicateResult(seed=0, k=5, discard_anomalous=True, val_auc=0.9, selected_epoch=3, selected_round=1,
                             test_auc=0.8, test_auprc=0.7, reconstruction_test_auc=0.6,
                             reconstruction_test_auprc=0.5, test_scores=(0.1, 0.2), test_labels=(0, 1))
    assert ReplicateResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert "test_scores" not in result.summary_row() and result.summary_row()["k"] == 5
    partial = {k: v for k, v in result.to_dict().items() if k != "val_auc"}
    assert not ReplicateResult.is_complete(partial)
    with pytest.raises(CorruptFileError, match=r"x.json lacks \['val_auc'\]"):
        ReplicateResult.from_dict(partial, source="x.json")


def test_score_split_refuses_images_of_training_patients(blob_splits, monkeypatch):
    """A dataset scored against the bank must not share a patient with the training split."""
    trainer = SaladTrainer(profile_config("smoke"), blob_splits["train"], blob_splits["val"], device="cpu")
    monkeypatch.setattr(SaladTrainer, "embed", lambda *a, **k: pytest.fail("scored a leaky dataset"))
    leaky = ArrayDataset(blob_splits["train"].images[:5], blob_splits["train"].labels[:5], prefix="train-")
    with pytest.raises(PatientLeakError, match=r"'train' and 'scored'"):
        score_split(trainer, leaky, k=5, discard_anomalous=True)


@pytest.mark.parametrize("label", [0, 1])
def test_a_one_class_validation_split_is_refused_before_training(blob_splits, label):
    val = blob_splits["val"]
    one_class = ArrayDataset(val.images[:10], np.full(10, label), prefix="val-")
    with pytest.raises(ValueError, match=r"split 'val' needs both normal \(0\) and abnormal \(1\) images: it holds"):
        SaladTrainer(profile_config("smoke"), blob_splits["train"], one_class, device="cpu")


def test_the_untrained_baseline_scores_the_untrained_embeddings_even_with_a_memory_bank(blob_splits, monkeypatch):
    """bank="memory" (the paper's default): an untrained network's memory holds random init vectors, not images."""
    import torch

    import salad_lite.experiment as experiment

    test_labels = np.r_[np.zeros(10), np.ones(10)].astype(np.int64)
    splits = {**blob_splits, "test": ArrayDataset(blob_images(test_labels, seed=24), test_labels, prefix="test-")}
    cfg = profile_config("smoke").replace(score={"bank": "memory", "k_grid": (5,), "discard_options": (True,)})
    banks = []

    class Recording(experiment.SaladScorer):
        def fit(self, bank, labels):
            banks.append(torch.as_tensor(bank).clone())
            return super().fit(bank, labels)

    monkeypatch.setattr(experiment, "SaladScorer", Recording)
    result = experiment.untrained_encoder_baseline(cfg, splits, 1, device="cpu")
    assert result["bank"] == "embeddings"
    untrained = SaladTrainer(cfg.replace(train={"seed": 0}), splits["train"], splits["val"], device="cpu")
    expected = untrained.embed(splits["train"])
    assert not torch.allclose(untrained.scoring_bank(), expected)  # the memory bank is not the images' embeddings
    assert banks and all(torch.allclose(bank, expected, atol=1e-6) for bank in banks)


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.update(per_seed={"seed": 0}), r"'per_seed' must be a non-empty list, got dict"),
    (lambda s: s.update(per_seed=[]), r"'per_seed' must be a non-empty list, got an empty list"),
    (lambda s: s["per_seed"].__setitem__(0, 3), r"'per_seed'\[0\] must be an object, got int"),
    (lambda s: s["per_seed"][0].pop("test_auc"), r"'per_seed'\[0\]\['test_auc'\] must be a finite number, got None"),
    (lambda s: s["per_seed"][0].update(k="5"), r"'per_seed'\[0\]\['k'\] must be int, got '5'"),
    (lambda s: s.update(test_auc=0.7), r"'test_auc' must be an object with 'mean' and 'ci95', got float"),
    (lambda s: s["test_auprc"].update(ci95=None), r"'test_auprc'\['ci95'\] must be a finite number \(NaN for the spread of one seed\), got None"),
    (lambda s: s["test_auc"].update(mean=float("nan")), r"'test_auc'\['mean'\] must be a finite number, got nan"),
    (lambda s: s["test_auc"].update(mean=0.7), r"'test_auc' .* is not the mean and 95% half-width of its 'per_seed' rows \(0.600000, one seed: no spread\)"),
    (lambda s: s["per_seed"][0].update(val_auc=1.5), r"'per_seed'\[0\]\['val_auc'\] must lie in \[0, 1\], got 1.5"),
])
def test_a_damaged_untrained_result_is_refused_naming_the_file(blob_splits, tmp_path, damage, message):
    import salad_lite.experiment as experiment

    cfg = profile_config("smoke")
    splits = {**blob_splits, "test": blob_splits["val"]}
    stored = {"bank": "embeddings", "per_seed": [{"seed": 0, "k": 5, "discard_anomalous": True, "val_auc": 0.6,
                                                  "test_auc": 0.6, "test_auprc": 0.6}],
              "test_auc": {"mean": 0.6, "ci95": 0.0}, "test_auprc": {"mean": 0.6, "ci95": 0.0},
              "config": json.loads(json.dumps(cfg.to_dict())), "splits_sha256": experiment.splits_fingerprint(splits)}
    path = tmp_path / "untrained_encoder.json"
    path.write_text(json.dumps(stored))
    assert experiment._untrained_once(cfg, splits, 1, path) == stored  # intact: loaded, not recomputed
    damage(stored)
    path.write_text(json.dumps(stored))
    with pytest.raises(CorruptFileError, match=rf"untrained-encoder result {path}: {message}; delete it"):
        experiment._untrained_once(cfg, splits, 1, path)


def test_a_stored_untrained_result_of_one_seed_is_reused(blob_splits, tmp_path):
    """One seed has no spread (ci95 NaN): its stored file must load again, not be refused as damaged."""
    import salad_lite.experiment as experiment

    test_labels = np.r_[np.zeros(10), np.ones(10)].astype(np.int64)
    splits = {**blob_splits, "test": ArrayDataset(blob_images(test_labels, seed=30), test_labels, prefix="test-")}
    cfg = profile_config("smoke").replace(train={"progress": False})
    path = tmp_path / "untrained_encoder.json"
    first = experiment._untrained_once(cfg, splits, 1, path, device="cpu")
    assert np.isnan(first["test_auc"]["ci95"])
    again = experiment._untrained_once(cfg, splits, 1, path, device="cpu")
    assert again["test_auc"]["mean"] == first["test_auc"]["mean"]
