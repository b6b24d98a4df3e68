import dataclasses

import pytest

from salad_lite.config import SaladConfig, TrainConfig, paper_config, profile_config


def test_paper_defaults_live_in_one_place():
    cfg = paper_config("nih")
    assert (cfg.loss.temperature, cfg.loss.latent_weight, cfg.train.memory_momentum) == (0.1, 0.25, 0.5)
    assert (cfg.score.k, cfg.train.batch_size, cfg.train.lr, cfg.train.betas) == (100, 16, 1e-4, (0.5, 0.999))
    assert (cfg.train.pretrain_epochs, cfg.train.rounds, cfg.train.epochs_per_round) == (50, 10, 50)
    assert (cfg.model.arch, cfg.model.image_size, cfg.model.latent_dim) == ("conv", 256, 200)
    mura = paper_config("mura")
    assert (mura.model.arch, mura.model.image_size) == ("resnet18", 512)
    assert profile_config("full", "mura") == mura


@pytest.mark.parametrize("profile", ["smoke", "default", "full"])
@pytest.mark.parametrize("dataset", ["nih", "mura", "folder"])
def test_json_round_trip(profile, dataset, tmp_path):
    cfg = profile_config(profile, dataset, data_root="/data/x")
    assert SaladConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert SaladConfig.from_json(tmp_path / "c.json") == cfg


def test_frozen_and_unknown_fields():
    cfg = SaladConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        SaladConfig.from_dict({"train": {"learning_rate": 1.0}})
    with pytest.raises(ValueError, match="unknown profile"):
        profile_config("huge")


def test_progressive_schedules():
    t = TrainConfig(rounds=4, prototype_fraction_start=0.25, prototype_fraction_end=1.0,
                    neighbours_start=4, neighbours_end=10)
    assert [t.prototype_fraction(r) for r in range(1, 5)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [t.neighbours(r) for r in range(1, 5)] == [4, 6, 8, 10]
    with pytest.raises(ValueError, match="round_index"):
        t.neighbours(0)
