"""The shared baseline glue (salad_lite.methods.base) and Deep AE: selection, resume, refusal, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salad_lite.config import profile_config
from salad_lite.methods import BASELINE_IDS, baseline_config, build_method
from salad_lite.methods.deep_ae import DeepAE, DeepAEConfig, per_image_mse
from salad_lite.metrics import auc

SMALL = dict(image_size=32, width=8, latent_dim=16, batch_size=32, lr=1e-3, progress=False)


def test_per_image_mse_matches_plain_reference() -> None:
    x, x_hat = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    expected = [float(((x_hat[i] - x[i]) ** 2).sum()) / 16 for i in range(3)]
    assert np.allclose(per_image_mse(x, x_hat).numpy(), expected, atol=1e-6)


def test_deep_ae_learns_the_planted_anomaly(planted_splits) -> None:
    model = DeepAE(DeepAEConfig(epochs=6, **SMALL), device="cpu")
    with pytest.raises(RuntimeError, match="Deep AE is not fitted: call fit"):  # never untrained networks' scores
        model.decision_function(planted_splits["val"])
    model.fit(planted_splits["train"], planted_splits["val"])
    test = planted_splits["test"]
    assert auc(test.labels, model.decision_function(test)) >= 0.85
    assert model.selected_epoch == int(np.argmax([h["val_auc"] for h in model.history]))


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(planted_splits, tmp_path, monkeypatch) -> None:
    train, val = planted_splits["train"], planted_splits["val"]
    cfg = DeepAEConfig(epochs=3, **SMALL)
    whole = DeepAE(cfg, device="cpu").fit(train, val, tmp_path / "whole")
    run_epoch = DeepAE._run_epoch

    def killed_at_epoch_two(self, *args):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(self, *args)

    monkeypatch.setattr(DeepAE, "_run_epoch", killed_at_epoch_two)
    cut = DeepAE(cfg, device="cpu")
    with pytest.raises(KeyboardInterrupt):
        cut.fit(train, val, tmp_path / "cut")
    assert cut.selected_epoch is not None  # an epoch was selected, but the networks hold the last one trained
    with pytest.raises(RuntimeError, match=r"not fitted: .* \(an interrupted fit"):
        cut.decision_function(val)
    monkeypatch.undo()
    resumed = DeepAE(cfg, device="cpu").fit(train, val, tmp_path / "cut")
    losses = [[h["loss"], h["val_auc"]] for h in resumed.history]
    assert np.allclose(losses, [[h["loss"], h["val_auc"]] for h in whole.history])
    assert resumed.selected_epoch == whole.selected_epoch
    assert np.allclose(resumed.decision_function(val), whole.decision_function(val), atol=1e-5)
    # a finished run is loaded, not retrained; a changed configuration is refused
    assert DeepAE(cfg, device="cpu").fit(train, val, tmp_path / "whole").selected_epoch == whole.selected_epoch
    with pytest.raises(ValueError, match="another configuration"):
        DeepAE(DeepAEConfig(epochs=4, **SMALL), device="cpu").fit(train, val, tmp_path / "whole")


def test_a_folder_of_another_method_is_refused(planted_splits, tmp_path) -> None:
    train, val = planted_splits["train"], planted_splits["val"]
    DeepAE(DeepAEConfig(epochs=1, **SMALL), device="cpu").fit(train, val, tmp_path)
    other = DeepAE(DeepAEConfig(epochs=1, **SMALL), device="cpu")
    other.method_id = "deep_svdd"
    with pytest.raises(ValueError, match="deep_ae"):
        other.fit(train, val, tmp_path)


def test_config_fields_are_validated() -> None:
    with pytest.raises(ValueError, match="DeepAEConfig.epochs"):
        DeepAEConfig(epochs=0)
    with pytest.raises(ValueError, match="DeepAEConfig.arch"):
        DeepAEConfig(arch="vgg")
    # types from the annotations: an int is neither a float nor a bool, numbers are finite
    for field, bad, message in (("epochs", 2.5, "must be an int, got 2.5"), ("seed", True, "must be an int"),
                                ("batch_size", 2.5, "must be an int"), ("width", float("inf"), "must be an int"),
                                ("lr", float("nan"), "must be a finite number"),
                                ("weight_decay", float("inf"), "must be a finite number"),
                                ("progress", "no", "must be true or false"),
                                ("image_size", 64.0, "must be an int")):
        with pytest.raises(ValueError, match=rf"DeepAEConfig.{field} {message}"):
            DeepAEConfig(**{field: bad})
    assert DeepAEConfig(lr=1).lr == 1.0 and isinstance(DeepAEConfig(lr=1).lr, float)
    from salad_lite.methods.geometric import GeometricConfig

    assert GeometricConfig(transforms_per_image=None).transforms_per_image is None  # a subclass's own fields too
    with pytest.raises(ValueError, match="GeometricConfig.transforms_per_image must be an int, got 3.0"):
        GeometricConfig(transforms_per_image=3.0)
    for device in ("gpu", "meta", "cpu:0", 0):  # torch knows the last three; salad_lite runs on none of them
        with pytest.raises(ValueError, match=rf"device {device!r} is not a device salad_lite runs on: use 'auto', "):
            build_method("deep_ae", profile_config("smoke"), device=device)
    assert DeepAEConfig(progress=np.True_).progress is True  # a NumPy bool is a bool
    from salad_lite.utils import seed_everything

    for seed in (-1, 2**32, True, 1.0):  # NumPy refuses seeds past 2**32 - 1; wrapping them would alias seeds
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 4294967295\]"):
            seed_everything(seed)
    with pytest.raises(ValueError, match="unknown baseline"):
        build_method("ocgan", profile_config("smoke"))


def test_baseline_config_takes_salads_budget() -> None:
    cfg = profile_config("default")
    base = baseline_config("deep_ae", cfg)
    t = cfg.train
    assert base.epochs == t.pretrain_epochs + t.rounds * t.epochs_per_round
    assert (base.image_size, base.width, base.batch_size, base.lr) == (cfg.model.image_size, cfg.model.width,
                                                                         t.batch_size, t.lr)
    assert "deep_ae" in BASELINE_IDS and len(BASELINE_IDS) == 6


def test_a_checkpoint_of_other_splits_is_refused(planted_splits, tmp_path) -> None:
    import json

    from salad_lite.checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint

    train, val = planted_splits["train"], planted_splits["val"]
    cfg = DeepAEConfig(epochs=2, **SMALL)
    done = DeepAE(cfg, device="cpu").fit(train, val, tmp_path / "run", data_fingerprint="aaa")
    for stem in ("last", "best"):  # every checkpoint carries the fingerprint
        assert json.loads(checkpoint_paths(tmp_path / "run" / stem)[1].read_text())["data_fingerprint"] == "aaa"
    again = DeepAE(cfg, device="cpu").fit(train, val, tmp_path / "run", data_fingerprint="aaa")
    assert again.selected_epoch == done.selected_epoch
    for other in ("bbb", ""):  # "": the fingerprint of these train and val sets, not "aaa"
        with pytest.raises(ValueError, match=r"last\.json was trained on other training or validation images"):
            DeepAE(cfg, device="cpu").fit(train, val, tmp_path / "run", data_fingerprint=other)
    # an interrupted run (last at epoch 1 of 2) is not resumed on other splits either
    DeepAE(cfg.replace(epochs=1), device="cpu").fit(train, val, tmp_path / "cut", data_fingerprint="aaa")
    with pytest.raises(ValueError, match="other training or validation images"):
        DeepAE(cfg.replace(epochs=1), device="cpu").fit(train, val, tmp_path / "cut", data_fingerprint="bbb")
    # the best checkpoint is checked too, not only last
    tensors, meta = load_checkpoint(tmp_path / "run" / "best", "cpu")
    save_checkpoint(tmp_path / "run" / "best", tensors, {**meta, "data_fingerprint": "zzz"})
    with pytest.raises(ValueError, match=r"best\.json was trained on other training or validation images"):
        DeepAE(cfg, device="cpu").fit(train, val, tmp_path / "run", data_fingerprint="aaa")
    # without a fingerprint given, the train and val sets' own is stored; one of an older salad_lite is warned of
    DeepAE(cfg.replace(epochs=1), device="cpu").fit(train, val, tmp_path / "own")
    with pytest.raises(ValueError, match="other training or validation images"):
        DeepAE(cfg.replace(epochs=1), device="cpu").fit(val, train, tmp_path / "own")
    tensors, meta = load_checkpoint(tmp_path / "own" / "last", "cpu")
    del meta["data_fingerprint"]
    save_checkpoint(tmp_path / "own" / "last", tensors, meta)
    with pytest.warns(UserWarning, match=r"last\.json predates salad_lite's record of the splits"):
        DeepAE(cfg.replace(epochs=1), device="cpu").fit(train, val, tmp_path / "own")


@pytest.mark.parametrize("method_id", BASELINE_IDS)
def test_only_label_using_methods_see_the_training_labels(method_id, planted_splits, monkeypatch) -> None:
    from salad_lite.data.batches import dataset_labels
    from salad_lite.methods import baseline_class

    cls = baseline_class(method_id)
    assert cls.uses_labels == (method_id in ("deep_sad", "supervised"))
    seen: list[torch.Tensor] = []

    def recording_step(self, x, y, generator):
        seen.append(y.detach().cpu().clone())
        assert y.dtype == torch.long and y.shape == (len(x),) and y.device == x.device
        return {"loss": 0.0}

    monkeypatch.setattr(cls, "train_step", recording_step)
    train = planted_splits["train"]
    labels = torch.as_tensor(dataset_labels(train), dtype=torch.long)
    assert labels.sum() > 0  # the training split holds abnormal images to withhold
    model = build_method(method_id, profile_config("smoke"), device="cpu", image_size=32, width=8, latent_dim=16,
                         epochs=2, validate_every=2, progress=False)
    model._run_epoch(train, labels, planted_splits["val"], planted_splits["val"].labels)  # epoch 0: no validation
    received = torch.cat(seen)
    assert len(received) == len(train)  # each image once per epoch
    if cls.uses_labels:
        assert int(received.sum()) == int(labels.sum())
    else:
        assert not received.any()


def test_a_finished_run_without_its_best_checkpoint_is_refused(planted_splits, tmp_path) -> None:
    from salad_lite.checkpoint import checkpoint_paths
    from salad_lite.files import CorruptFileError

    train, val = planted_splits["train"], planted_splits["val"]
    cfg = DeepAEConfig(epochs=2, **SMALL)
    DeepAE(cfg, device="cpu").fit(train, val, tmp_path)
    for path in checkpoint_paths(tmp_path / "best"):
        path.unlink()
    with pytest.raises(CorruptFileError, match=r"best\.safetensors is missing"):
        DeepAE(cfg, device="cpu").fit(train, val, tmp_path)


def test_a_baseline_checkpoint_with_nan_weights_is_refused_naming_the_file(planted_splits, tmp_path) -> None:
    from salad_lite.checkpoint import load_checkpoint, save_checkpoint
    from salad_lite.files import CorruptFileError

    train, val = planted_splits["train"], planted_splits["val"]
    cfg = DeepAEConfig(epochs=2, **SMALL)
    DeepAE(cfg, device="cpu").fit(train, val, tmp_path)
    tensors, meta = load_checkpoint(tmp_path / "last")
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name][0] = float("nan")  # a diverged run saved consistently (hashes and all)
    save_checkpoint(tmp_path / "last", tensors, meta)
    with pytest.raises(CorruptFileError, match=r"last\.safetensors holds NaN or inf in 1 tensor\(s\)"):
        DeepAE(cfg, device="cpu").fit(train, val, tmp_path)
