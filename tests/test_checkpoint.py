"""Checkpoints are all-or-nothing: killed at any point of a save, a run resumes to the uninterrupted result;
damaged, foreign or edited files are refused naming the file."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ArrayDataset, blob_images
from salad_lite.checkpoint import (
    JSON_HASH_KEY,
    checkpoint_exists,
    load_checkpoint,
    pending_paths,
    read_tensor_header,
    save_checkpoint,
)
from salad_lite.config import profile_config
from salad_lite.files import CorruptFileError
from salad_lite.trainer import SaladTrainer

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from resume_worker import KILL_POINTS, make_trainer  # noqa: E402

KILL_EPOCH = 2  # the checkpoint written after epoch index 1 (round 1: it holds the round's neighbourhoods)


def drop_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The uninterrupted run: history and final tensors of ``last`` and ``best``."""
    run_dir = tmp_path_factory.mktemp("straight")
    history = make_trainer(str(run_dir)).fit()
    return {"history": drop_seconds(history), "last": load_checkpoint(run_dir / "last")[0],
            "best": load_checkpoint(run_dir / "best")}


def run_killed_child(run_dir: Path, stem: str, epoch: int, point: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    child = subprocess.run([sys.executable, str(TESTS / "resume_worker.py"), str(run_dir), stem, str(epoch), point],
                           env=env, timeout=300, capture_output=True, text=True)
    assert child.returncode == -9, f"the child was not killed at {point}: rc {child.returncode}\n{child.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize(("stem", "epoch", "point"),
                         [("last", KILL_EPOCH, point) for point in KILL_POINTS]
                         + [("best", 1, "between-renames")])
def test_a_kill_at_every_point_of_a_save_resumes_to_the_uninterrupted_run(tmp_path, straight, stem, epoch, point):
    run_dir = tmp_path / "run"
    run_killed_child(run_dir, stem, epoch, point)
    resumed = make_trainer(str(run_dir))
    # before the tensor rename the previous checkpoint stands; from it on the new one does
    kind, call, when = KILL_POINTS[point]
    new_landed = kind == "replace" and (call == 2 or when == "after")
    if stem == "last":
        assert resumed.epoch == (epoch if new_landed else epoch - 1)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "pending files were left behind"
    history = drop_seconds(resumed.fit())
    assert history == straight["history"]
    final = load_checkpoint(run_dir / "last")[0]
    assert final.keys() == straight["last"].keys()
    assert all(torch.equal(final[name], straight["last"][name]) for name in final)
    best_tensors, best_meta = load_checkpoint(run_dir / "best")
    assert best_meta["selected_epoch"] == straight["best"][1]["selected_epoch"]
    assert all(torch.equal(best_tensors[name], straight["best"][0][name]) for name in best_tensors)


def test_a_crash_between_the_renames_rolls_forward_and_one_before_them_rolls_back(tmp_path):
    stem = tmp_path / "ck"
    save_checkpoint(stem, {"w": torch.zeros(3)}, {"step": 1})
    tensor_tmp, json_tmp = pending_paths(stem)
    # crash between the renames: the new tensors are in place, the new JSON still pending
    save_checkpoint(tmp_path / "new", {"w": torch.ones(3)}, {"step": 2})
    os.replace(tmp_path / "new.safetensors", stem.with_suffix(".safetensors"))
    os.replace(tmp_path / "new.json", json_tmp)
    tensors, meta = load_checkpoint(stem)
    assert meta == {"step": 2} and torch.equal(tensors["w"], torch.ones(3)) and not json_tmp.exists()
    # crash before the renames: the old pair stands, the pending files are deleted
    tensor_tmp.write_bytes(b"half a file")
    json_tmp.write_text('{"step": 3}')
    assert checkpoint_exists(stem)
    assert load_checkpoint(stem)[1] == {"step": 2}
    assert not tensor_tmp.exists() and not json_tmp.exists()


def test_an_error_during_a_save_leaves_the_old_checkpoint_and_no_litter(tmp_path, monkeypatch):
    stem = tmp_path / "ck"
    save_checkpoint(stem, {"w": torch.zeros(3)}, {"step": 1})
    with pytest.raises(TypeError, match="cannot store object"):
        save_checkpoint(stem, {"w": torch.ones(3)}, {"step": object()})
    import salad_lite.checkpoint as checkpoint

    def full_disk(path, data):
        path.write_bytes(data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(stem, {"w": torch.ones(3)}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]
    assert load_checkpoint(stem)[1] == {"step": 1}


def test_a_hand_edited_json_is_refused_naming_the_file(tmp_path):
    stem = tmp_path / "ck"
    save_checkpoint(stem, {"w": torch.zeros(3)}, {"config": {"model": {"image_size": 128}}})
    json_path = stem.with_suffix(".json")
    json_path.write_text(json_path.read_text().replace("128", "256"))
    with pytest.raises(CorruptFileError, match=rf"{json_path} does not belong to {stem}.safetensors"):
        load_checkpoint(stem)
    assert JSON_HASH_KEY in read_tensor_header(stem.with_suffix(".safetensors"))["__metadata__"]


def test_an_edited_resnet_checkpoint_does_not_train_on(tmp_path):
    """The issue's example: a ResNet-18 run whose JSON is edited from 128 px to 256 px."""
    cfg = profile_config("smoke", "mura").replace(model={"image_size": 128}, train={"progress": False},
                                                  score={"k": 3})
    labels = np.zeros(8, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, size=128, seed=1), labels)
    SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu").fit(until_epoch=1)
    json_path = tmp_path / "last.json"
    meta = json.loads(json_path.read_text())
    meta["config"]["model"]["image_size"] = 256
    json_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    big = cfg.replace(model={"image_size": 256})
    with pytest.raises(CorruptFileError, match=rf"{json_path} does not belong to"):
        SaladTrainer(big, ArrayDataset(blob_images(labels, size=256, seed=1), labels), None, run_dir=tmp_path,
                     device="cpu")


def test_tensors_that_do_not_fit_the_config_or_the_training_set_are_refused(tmp_path):
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 1, "rounds": 1, "progress": False},
                                          score={"k": 3})
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=1), labels)
    SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu").fit(until_epoch=1)
    fewer = ArrayDataset(blob_images(labels[:12], seed=1), labels[:12])
    with pytest.raises(ValueError, match=r"last.json was trained on other training or validation images"):
        SaladTrainer(cfg, fewer, None, run_dir=tmp_path, device="cpu")  # the cause, not a "damaged" file
    tensors, meta = load_checkpoint(tmp_path / "last")
    save_checkpoint(tmp_path / "last", tensors, {**meta, "data_fingerprint": SaladTrainer(
        cfg, fewer, None, run_dir=tmp_path / "other", device="cpu").data_fingerprint})
    with pytest.raises(CorruptFileError, match=r"last.safetensors does not fit .* memory.bank has 20 rows of 200, "
                                               r"the training set has 12 images"):
        SaladTrainer(cfg, fewer, None, run_dir=tmp_path, device="cpu")  # a consistent record, other tensors
    save_checkpoint(tmp_path / "last", tensors, meta)
    # a consistent pair (hash and all) whose weights belong to another width
    tensors, meta = load_checkpoint(tmp_path / "last")
    tensors["model.encoder.0.0.weight"] = torch.zeros(3, 1, 4, 4)
    save_checkpoint(tmp_path / "last", tensors, meta)
    with pytest.raises(CorruptFileError, match=r"model.encoder.0.0.weight is \[3, 1, 4, 4\], a model built from its "
                                               r"config needs \[8, 1, 4, 4\]"):
        SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu")


def _round_trained(tmp_path: Path):
    """A ``last`` checkpoint written inside round 1 (so it holds round state and optimiser tensors)."""
    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 1, "rounds": 1, "epochs_per_round": 2,
                                                 "progress": False}, score={"k": 3})
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=1), labels)
    SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu").fit(until_epoch=2)
    return cfg, data


def _resave(stem: Path, change) -> None:
    """Rewrite a checkpoint consistently (hash and all) after ``change(tensors, meta)``."""
    tensors, meta = load_checkpoint(stem)
    change(tensors, meta)
    save_checkpoint(stem, tensors, meta)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t, m: t.pop("optim.0.exp_avg"), r"optimiser state of checkpoint .*last.json does not fit .*optim.0.exp_avg"),
    (lambda t, m: t.__setitem__("optim.0.exp_avg", torch.zeros(2)), r"optim.0.exp_avg has shape \(2,\)"),
    (lambda t, m: t.pop("round.prototypes"), r"stores round.neighbours without round.prototypes"),
    (lambda t, m: t.__setitem__("round.neighbours", t["round.neighbours"][:10]), r"round.neighbours has shape \(10, "),
    (lambda t, m: t.__setitem__("round.neighbours", t["round.neighbours"] + 1000), r"ids outside 0..19"),
    (lambda t, m: m.__setitem__("epoch", -5), r"epoch must be an int in 0..3, got -5"),
    (lambda t, m: m.__setitem__("history", None), r"history must hold one record per epoch run"),
    (lambda t, m: t["memory.bank"].mul_(50), r"memory.bank has 20 row\(s\) of 20 that are not unit vectors"),
    (lambda t, m: t["memory.bank"][3].fill_(float("nan")), r"holds NaN or inf in 1 tensor\(s\) \(first: memory.bank\)"),
])
def test_state_that_does_not_fit_is_refused_naming_the_file(tmp_path, change, message):
    cfg, data = _round_trained(tmp_path)
    _resave(tmp_path / "last", change)
    with pytest.raises(CorruptFileError, match=message):
        SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu")


@pytest.mark.parametrize("name", ["last.json", "last.safetensors", ".last.json.pending"])
def test_a_folder_in_place_of_a_checkpoint_file_is_named(tmp_path, name):
    cfg, data = _round_trained(tmp_path)
    target = tmp_path / name
    if target.exists():
        target.unlink()
    target.mkdir()
    with pytest.raises(CorruptFileError, match=rf"checkpoint path {target} is a folder or another non-file"):
        SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu")


def _pickle_file(path: Path) -> None:
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))


def _torch_save_file(path: Path) -> None:
    torch.save({"w": torch.zeros(3)}, path)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), r"is truncated: the header describes \d+ bytes, the file has \d+"),
    (lambda p: p.write_bytes(p.read_bytes()[:20]), r"is truncated or not safetensors: its header claims"),
    (lambda p: p.write_bytes(b"\x01\x02"), r"is truncated: 2 bytes"),
    (_pickle_file, r"is a pickle / torch.save file, not safetensors; salad_lite never unpickles"),
    (_torch_save_file, r"is a pickle / torch.save file"),
])
def test_damaged_tensor_files_are_named_and_explained(tmp_path, monkeypatch, damage, message):
    stem = tmp_path / "ck"
    save_checkpoint(stem, {"w": torch.arange(6.0), "b": torch.ones(2, 2)}, {"step": 1})
    path = stem.with_suffix(".safetensors")
    damage(path)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("something was unpickled"))
    with pytest.raises(CorruptFileError, match=rf"checkpoint tensors {path} {message}"):
        load_checkpoint(stem)


@pytest.mark.parametrize("text", ["", '{"epoch": 3', "[1, 2]"])
def test_a_corrupt_or_foreign_json_is_named(tmp_path, text):
    stem = tmp_path / "legacy"
    save_checkpoint(stem, {"w": torch.zeros(2)}, {"step": 1})
    # a checkpoint without the hash (written before it existed) is read, so its JSON is checked on its own
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(text)
    expected = rf"checkpoint metadata {stem}.json (is empty|is not valid JSON|must hold)"
    with pytest.raises(CorruptFileError, match=expected):
        load_checkpoint(stem)


def test_a_lone_file_is_refused_naming_its_missing_partner(tmp_path):
    stem = tmp_path / "ck"
    save_checkpoint(stem, {"w": torch.zeros(2)}, {"step": 1})
    stem.with_suffix(".json").unlink()
    assert checkpoint_exists(stem)  # reported, so that a run does not silently start over
    with pytest.raises(FileNotFoundError, match=rf"checkpoint file {stem}.json is missing"):
        load_checkpoint(stem)


def test_a_run_stored_by_an_earlier_salad_lite_still_resumes(tmp_path):
    """No hash in the header, ``score.chunk_size`` in the config, no split record: written by earlier versions."""
    from safetensors.torch import save_file

    cfg = profile_config("smoke").replace(train={"pretrain_epochs": 1, "rounds": 1, "progress": False})
    labels = np.zeros(20, dtype=np.int64)
    data = ArrayDataset(blob_images(labels, seed=1), labels)
    SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu").fit(until_epoch=1)
    tensors, meta = load_checkpoint(tmp_path / "last")
    meta["config"]["score"]["chunk_size"] = 4096
    del meta["config"]["score"]["k_grid"], meta["data_fingerprint"]
    save_file(tensors, str(tmp_path / "last.safetensors"))
    (tmp_path / "last.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"last.json predates salad_lite's record of the splits"):
        resumed = SaladTrainer(cfg, data, None, run_dir=tmp_path, device="cpu")
    assert resumed.epoch == 1 and torch.equal(resumed.memory.bank, tensors["memory.bank"])


@pytest.mark.parametrize("wanted", [0x0180, 0x0280, 0x4B50])  # \x80 (\x80\x02: protocol 2) opens a pickle, PK a zip
def test_a_header_length_that_starts_like_a_pickle_or_zip_still_loads(tmp_path, wanted):
    """The signature check must not refuse a real safetensors file whose header length begins with those bytes."""
    def header_length(name_length: int) -> int:
        save_checkpoint(tmp_path / "c", {"w" * name_length: torch.ones(3)}, {})
        return int.from_bytes((tmp_path / "c.safetensors").read_bytes()[:8], "little")

    base = header_length(1) - 1  # the header grows by one byte per character of the tensor name
    name_length = wanted - base
    assert name_length >= 1 and header_length(name_length) == wanted
    tensors, _ = load_checkpoint(tmp_path / "c")
    assert torch.equal(tensors["w" * name_length], torch.ones(3))


def test_damaged_tensor_bytes_and_dotted_stems(tmp_path):
    save_checkpoint(tmp_path / "model_lr0.001", {"w": torch.ones(3)}, {"lr": 0.001})
    save_checkpoint(tmp_path / "model_lr0.01", {"w": torch.zeros(3)}, {"lr": 0.01})
    assert load_checkpoint(tmp_path / "model_lr0.001")[1] == {"lr": 0.001}  # the dot is part of the name
    path = tmp_path / "model_lr0.001.safetensors"
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # a flipped bit in a weight: same length, same header
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=r"model_lr0\.001\.safetensors differ from the SHA-256 recorded"):
        load_checkpoint(tmp_path / "model_lr0.001")
    with pytest.raises(TypeError, match=r"cannot store a ndarray of shape \(3,\) in checkpoint JSON"):
        save_checkpoint(tmp_path / "x", {}, {"v": np.arange(3)})
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(ValueError, match="not a device salad_lite runs on"):
        load_checkpoint(tmp_path / "model_lr0.01", device="gpu")
