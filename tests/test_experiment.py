"""The book's protocol: selection on validation only, test scored once, replicates summarised."""

import json

import numpy as np

from conftest import ArrayDataset, blob_images
from salad_lite.config import profile_config
from salad_lite.experiment import evaluate_replicates, replicate_dir


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
