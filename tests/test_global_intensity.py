"""benchmarks/global_intensity.py: its measures on data of known answer, and on the real NIH subset when present."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SHARED_DATA, load_script
from salad_lite.config import ModelConfig, profile_config
from salad_lite.data.batches import image_batches
from salad_lite.experiment import untrained_encoder_baseline
from salad_lite.models import build_model
from salad_lite.trainer import SaladTrainer


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/global_intensity.py")


def test_density_auc_follows_the_brighter_class(bench) -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    images = np.stack([np.full((4, 4), value, np.uint8) for value in (10, 20, 30, 40, 50, 60)])
    assert bench.density_auc(images, labels) == 1.0
    assert bench.density_auc(images[::-1].copy(), labels) == 0.0


def test_view_rows_per_view_one_class_view_and_view_alone(bench) -> None:
    labels = np.array([0, 1, 0, 1, 1, 1])
    images = np.stack([np.full((2, 2), value, np.uint8) for value in (5, 9, 8, 7, 3, 4)])
    rows = bench.view_rows(images, labels, pd.Series(["ap", "AP", "AP", "AP", "PA", "PA"]))
    by_view = {r["view"]: r for r in rows}
    assert by_view["AP"]["images"] == 4 and by_view["AP"]["abnormal"] == 2
    assert by_view["AP"]["auc"] == 0.75  # abnormal 9, 7 against normal 5, 8: three of four pairs ordered
    assert math.isnan(by_view["PA"]["auc"])  # PA holds abnormal films only
    assert by_view["view alone"]["auc"] == pytest.approx(0.75)  # PA = 1: both PA films abnormal, AP mixed
    no_pair = bench.view_rows(images, labels, pd.Series(["AP", "AP", "AP", "AP", "LL", "LL"]))
    assert [r["view"] for r in no_pair] == ["AP", "LL"]


def test_view_rows_strips_spaces_and_keeps_missing_views(bench) -> None:
    labels = np.array([0, 1, 0, 1])
    images = np.stack([np.full((2, 2), value, np.uint8) for value in (1, 2, 3, 4)])
    rows = bench.view_rows(images, labels, pd.Series([" pa", "PA ", None, " "]))
    assert [(r["view"], r["images"]) for r in rows] == [("?", 2), ("PA", 2)]


def _norm_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def _model_with_set_statistics(image_size: int = 32) -> torch.nn.Module:
    """A conv AE whose every BatchNorm holds running statistics other than the reset values (0, 1, 0)."""
    model = build_model(ModelConfig(image_size=image_size, width=8))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(0.3)
                m.running_var.fill_(2.0)
                m.num_batches_tracked.fill_(7)
    return model


def test_recalibrate_batchnorm_sets_the_encoder_statistics_and_nothing_else(bench, blob_splits) -> None:
    model = _model_with_set_statistics()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    decoder_buffers = _norm_buffers(model.decoder)
    first_norm = model.encoder[0][1]
    bench.recalibrate_batchnorm(model, blob_splits["train"], batch_size=40)  # 240 images: 6 equal batches
    images = torch.from_numpy(blob_splits["train"].images).unsqueeze(1).float() / 255.0
    with torch.no_grad():
        activations = model.encoder[0][0](images)  # [N, 8, 16, 16], what the first BatchNorm normalises
    torch.testing.assert_close(first_norm.running_mean, activations.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    batch_variances = torch.stack([a.var(dim=(0, 2, 3)) for a in activations.split(40)])  # unbiased, per batch
    torch.testing.assert_close(first_norm.running_var, batch_variances.mean(dim=0), rtol=1e-4, atol=1e-5)
    assert first_norm.momentum == 0.1 and not model.training
    for name, value in model.state_dict().items():
        if name in weights:
            torch.testing.assert_close(value, weights[name])
    for name, value in _norm_buffers(model.decoder).items():  # the decoder does not run: its statistics stay
        torch.testing.assert_close(value, decoder_buffers[name])


def test_recalibrate_batchnorm_is_all_or_nothing(bench, blob_splits, monkeypatch) -> None:
    model = _model_with_set_statistics()
    before = _norm_buffers(model)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        bench.recalibrate_batchnorm(model, blob_splits["train"], batch_size=0)
    assert model.training  # the bad batch_size is refused before anything changes

    def one_batch_then_fail(dataset, batch_size):
        yield from itertools.islice(image_batches(dataset, batch_size), 1)  # this batch updates the statistics
        raise OSError("the second batch could not be read")

    monkeypatch.setattr(bench, "image_batches", one_batch_then_fail)
    with pytest.raises(OSError, match="second batch"):
        bench.recalibrate_batchnorm(model, blob_splits["train"], batch_size=40)
    for name, value in _norm_buffers(model).items():
        torch.testing.assert_close(value, before[name])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 for m in norms) and not model.training


def test_initial_untrained_auc_is_the_untrained_baselines(bench, planted_splits) -> None:
    cfg = profile_config("smoke")  # 32 px, the planted set's size
    baseline = untrained_encoder_baseline(cfg, planted_splits, replicates=1, device="cpu")
    densities = bench.mean_density(np.asarray(planted_splits["val"].images))
    initial = bench.untrained_eq4(planted_splits, cfg, seed=0, recalibrate=False, densities=densities)
    assert initial["auc"] == pytest.approx(baseline["per_seed"][0]["val_auc"])
    recalibrated = bench.untrained_eq4(planted_splits, cfg, seed=0, recalibrate=True, densities=densities)
    assert 0.0 <= recalibrated["auc"] <= 1.0 and recalibrated["auc"] != initial["auc"]
    assert all(-1.0 <= r["density_rho"] <= 1.0 for r in (initial, recalibrated))


def test_main_turns_a_wrong_data_root_into_a_usage_error(bench, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--data-root", str(tmp_path / "absent"), "--seeds", "1"])
    assert exit_info.value.code == 2 and "absent" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED_DATA / "nih_subset").is_dir(), reason="../shared/data/nih_subset is absent")
def test_real_nih_subset_abnormal_films_are_darker(bench) -> None:
    result = bench.measure(*bench.load_splits(str(SHARED_DATA / "nih_subset")), seeds=1)
    views = [r for r in result["views"] if r["view"] != "view alone"]
    assert sum(r["images"] for r in views) == result["images"]
    assert result["density_auc"] < 0.4  # the subset's Pneumonia films are darker overall (see the benchmarks README)
    assert len(result["untrained"]) == 1
    initial, recalibrated = result["untrained"][0]["initial"], result["untrained"][0]["recalibrated"]
    # BatchNorm re-estimated on the training films costs the untrained network part of its separation
    assert recalibrated["auc"] < initial["auc"]
    assert initial["density_rho"] < 0  # its Eq. 4 score is higher for the darker films


def test_set_batchnorm_momentum_sets_every_layer_and_refuses_bad_values(bench) -> None:
    model = build_model(ModelConfig(image_size=32, width=8))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bad in (0.0, -0.1, 1.5, float("nan"), None, True, "0.1"):
        with pytest.raises(ValueError, match="momentum must lie in"):
            bench.set_batchnorm_momentum(model, bad)
    assert all(m.momentum == 0.1 for m in norms)
    assert bench.set_batchnorm_momentum(model, 0.01) == len(norms) > 0
    assert all(m.momentum == 0.01 for m in norms)


def test_training_drift_reports_the_trainers_own_validation_auc(bench, planted_splits) -> None:
    cfg = profile_config("smoke")  # 32 px, 3 epochs: pretraining + 2 rounds
    densities = bench.mean_density(np.asarray(planted_splits["val"].images))
    rows = bench.training_drift(planted_splits, cfg, seed=0, densities=densities)
    trainer = SaladTrainer(cfg.replace(train={"seed": 0, "progress": False}), planted_splits["train"],
                           planted_splits["val"], device="cpu")
    history = trainer.fit()  # the same training in one go: validation after every epoch
    assert [(r["epoch"], r["round"]) for r in rows] == [(0, 0), (1, 1), (2, 2)]
    assert [r["auc"] for r in rows] == pytest.approx([h["val_auc"] for h in history])
    assert all(-1.0 <= r["density_rho"] <= 1.0 for r in rows)
    slow = bench.training_drift(planted_splits, cfg, seed=0, densities=densities, bn_momentum=0.01)
    assert [r["auc"] for r in slow] != [r["auc"] for r in rows]  # eval-mode latents use other running statistics
    with pytest.raises(ValueError, match="momentum"):
        bench.training_drift(planted_splits, cfg, seed=0, densities=densities, bn_momentum=2.0)
    with pytest.raises(ValueError, match="validation images"):
        bench.training_drift(planted_splits, cfg, seed=0, densities=densities[:-1])


def test_batchnorm_momentum_changes_the_scoring_not_the_trained_weights(bench, planted_splits) -> None:
    cfg = profile_config("smoke").replace(train={"seed": 0, "progress": False})
    trained = []
    for momentum in (bench.USUAL_BN_MOMENTUM, bench.SLOW_BN_MOMENTUM):
        trainer = SaladTrainer(cfg, planted_splits["train"], planted_splits["val"], device="cpu")
        bench.set_batchnorm_momentum(trainer.model, momentum)
        trainer.fit()
        trained.append((trainer.model.state_dict(), trainer.memory.bank.clone()))
    (usual, usual_bank), (slow, slow_bank) = trained
    torch.testing.assert_close(usual_bank, slow_bank, rtol=0, atol=0)
    for name, value in usual.items():
        if "running" in name:
            assert not torch.equal(value, slow[name]), name  # only the running statistics differ
        else:
            torch.testing.assert_close(value, slow[name], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "nih_subset").is_dir(), reason="../shared/data/nih_subset is absent")
def test_real_nih_score_follows_density_with_slow_statistics_only(bench) -> None:
    cfg, splits = bench.load_splits(str(SHARED_DATA / "nih_subset"))
    densities = bench.mean_density(np.asarray(splits["val"].images))
    usual = [r["density_rho"] for r in bench.training_drift(splits, cfg, 0, densities)]
    slow = [r["density_rho"] for r in bench.training_drift(splits, cfg, 0, densities, bench.SLOW_BN_MOMENTUM)]
    later = slice(4, None)  # epoch 4 on: the running statistics have taken 20+ steps
    assert usual[0] < -0.3  # the first epoch's score follows darkness, as the untrained network's does
    assert np.mean(usual[later]) > usual[0] + 0.4  # then it stops following it
    assert np.mean(slow[later]) < np.mean(usual[later]) - 0.2  # with slow statistics it keeps following it


def test_report_prints_one_row_per_epoch_and_a_column_per_seed(bench) -> None:
    def rows(auc0: float) -> list[dict]:
        return [{"epoch": e, "round": e // 2, "auc": auc0 + e / 10, "density_rho": -0.5 + e / 4} for e in range(3)]

    result = {"images": 4, "abnormal": 2, "density_auc": 0.3, "views": [], "untrained": [], "selection_k": 20,
              "training": {bench.USUAL_BN_MOMENTUM: [rows(0.5), rows(0.6)],
                           bench.SLOW_BN_MOMENTUM: [rows(0.4), rows(0.4)]}}
    text = bench.report("set", result)
    assert "| epoch | round | seed 0 | seed 1 |" in text
    assert "| 2 | 1 | 0.700 (+0.00) | 0.800 (+0.00) |" in text
    assert "| 2 | 1 | 0.600 (+0.00) | 0.600 (+0.00) |" in text  # the slow runs' own rows
    assert f"BatchNorm momentum {bench.SLOW_BN_MOMENTUM}: validation AUC at K = 20" in text
    assert text.count("| 0 | 0 |") == 2
