"""Data-parallel training on the CPU (gloo, 2 processes): the single-process run reproduced, the ranks' memory
banks identical after every epoch, a killed rank stopping the job with a clear error, and a resume under torchrun."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from salad_lite.augment import apply_augment, augment_batch, augment_params
from salad_lite.checkpoint import load_checkpoint
from salad_lite.config import profile_config
from salad_lite.data.registry import ensure_embedded
from salad_lite import distributed
from salad_lite.distributed import TIMEOUT_ENV, collective_failure_context, collective_timeout, shard_sizes
from salad_lite.trainer import epoch_batches

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from ddp_worker import RANK_BATCH, make_trainer  # noqa: E402

HANG_GUARD_S = 300  # generous: a hang fails the test instead of blocking the suite
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), TIMEOUT_ENV: "60",
       "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
LOSS_KEYS = ("loss", "loss_rec", "loss_ss", "loss_agg")


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (a free rendezvous port is chosen by torchrun)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], env=ENV, cwd=TESTS.parent, timeout=HANG_GUARD_S, capture_output=True, text=True)


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """The single-process reference: batches of 2 x the per-rank batch, same seed and data."""
    run_dir = tmp_path_factory.mktemp("single")
    history = make_trainer(run_dir, 2 * RANK_BATCH).fit()
    return {"history": without_seconds(history), "last": load_checkpoint(run_dir / "last")[0],
            "best": load_checkpoint(run_dir / "best")[1]}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """The uninterrupted 2-rank run under torchrun: each rank's record, and rank 0's checkpoints."""
    root = tmp_path_factory.mktemp("two_ranks")
    done = torchrun(str(TESTS / "ddp_worker.py"), str(root / "run"), str(root / "out"))
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((root / "out" / f"rank{r}.json").read_text()) for r in range(2)]
    return {"ranks": ranks, "history": without_seconds(ranks[0]["history"]),
            "last": load_checkpoint(root / "run" / "last")[0], "best": load_checkpoint(root / "run" / "best")[1]}


def test_two_ranks_reproduce_the_single_process_run(single, two_ranks):
    ref, ddp = single["history"], two_ranks["history"]
    assert [(r["epoch"], r["round"]) for r in ddp] == [(0, 0), (1, 1), (2, 2)]
    assert [sorted(r) for r in ddp] == [sorted(r) for r in ref]
    for a, b in zip(ref, ddp):
        assert (a.get("neighbours"), a.get("prototype_fraction")) == (b.get("neighbours"), b.get("prototype_fraction"))
        for key in LOSS_KEYS:
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["epoch"], key)
        assert b["val_auc"] == pytest.approx(a["val_auc"], abs=1e-3)
    assert ddp[-1]["loss_agg"] > 0 and ddp[0]["loss_ss"] > 0  # both latent terms were exercised
    bank_gap = (two_ranks["last"]["memory.bank"] - single["last"]["memory.bank"]).abs().max()
    assert float(bank_gap) < 1e-4
    assert torch.equal(two_ranks["last"]["round.neighbours"], single["last"]["round.neighbours"])
    assert two_ranks["best"]["selected_epoch"] == single["best"]["selected_epoch"]
    assert two_ranks["best"]["world_size"] == 2 and "world_size" not in single["best"]


def test_the_ranks_memory_banks_and_models_are_identical_after_every_epoch(two_ranks):
    first, second = two_ranks["ranks"]
    assert len(first["bank_sha"]) == 3 and len(set(first["bank_sha"])) == 3  # one per epoch, and it moved
    assert first["bank_sha"] == second["bank_sha"]
    assert first["model_sha"] == second["model_sha"]
    assert without_seconds(first["history"]) == without_seconds(second["history"])  # validation was broadcast


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_and_a_resume_finishes_the_uninterrupted_run(two_ranks, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    # two bare processes (no torchrun to stop the survivor): rank 0 must fail by itself, with a clear error
    env = {**ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    workers = [subprocess.Popen([sys.executable, str(TESTS / "ddp_worker.py"), str(run_dir), str(out),
                                 "--kill-rank", "1", "--kill-epoch", "1", "--kill-step", "1"],
                                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=TESTS.parent,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        errors = [w.communicate(timeout=HANG_GUARD_S)[1] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert workers[1].returncode == -9
    assert workers[0].returncode == 1, errors[0][-3000:]
    assert re.search(r"CollectiveError: rank 0 of 2 failed during epoch 1: .*\n.*another rank died", errors[0]), \
        errors[0][-3000:]
    assert json.loads((run_dir / "last.json").read_text())["epoch"] == 1  # the checkpoint after epoch 0 stands
    resumed = torchrun(str(TESTS / "ddp_worker.py"), str(run_dir), str(out))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["start_epoch"] == ranks[1]["start_epoch"] == 1  # every rank loaded `last`
    assert ranks[0]["bank_sha"] == ranks[1]["bank_sha"] == two_ranks["ranks"][0]["bank_sha"][1:]
    assert without_seconds(ranks[0]["history"]) == two_ranks["history"]
    final = load_checkpoint(run_dir / "last")[0]
    assert final.keys() == two_ranks["last"].keys()
    assert all(torch.equal(final[name], two_ranks["last"][name]) for name in final)


@pytest.mark.slow
def test_torchrun_stops_the_job_and_names_the_killed_rank(tmp_path):
    done = torchrun(str(TESTS / "ddp_worker.py"), str(tmp_path / "run"), str(tmp_path / "out"),
                    "--kill-rank", "1", "--kill-epoch", "0", "--kill-step", "0")
    assert done.returncode != 0
    report = done.stdout + done.stderr
    assert "ChildFailedError" in report
    root_cause = r"Root Cause.*\n(.*\n){0,3}.*rank\s*: 1 \(local_rank: 1\)\n.*exitcode\s*: -9"
    assert re.search(root_cause, report), report[-3000:]
    assert not (tmp_path / "out").exists()


def test_ranks_with_another_seed_are_refused_before_training(tmp_path):
    done = torchrun(str(TESTS / "ddp_worker.py"), str(tmp_path / "run"), str(tmp_path / "out"), "--seed-of-rank")
    assert done.returncode != 0
    assert "disagree with rank 0 on: model weights and memory bank (rank(s) 1); train.seed (rank(s) 1)" in done.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "run" / "last.json").exists()


def test_an_unreadable_rank_is_reported(tmp_path):
    cfg = profile_config("smoke", "nih")
    cfg.to_json(tmp_path / "cfg.json")
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "abc", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29611"}
    done = subprocess.run([sys.executable, "-m", "salad_lite", "train", "--config", str(tmp_path / "cfg.json"),
                           "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--data-root", str(tmp_path)],
                          env=env, cwd=TESTS.parent, timeout=HANG_GUARD_S, capture_output=True, text=True)
    assert done.returncode == 2 and "error: " in done.stderr and "'abc'" in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_salad_lite_train_under_torchrun(tmp_path):
    ensure_embedded("nih", progress=False, scale="small")  # rendered once, shared with test_cli and the chapters
    cfg = profile_config("smoke", "nih").replace(train={"batch_size": 8, "rounds": 1}, data={"max_train_images": 48})
    cfg.to_json(tmp_path / "cfg.json")
    done = torchrun("-m", "salad_lite", "train", "--config", str(tmp_path / "cfg.json"), "--run-dir",
                    str(tmp_path / "run"), "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("selected on validation") == 1  # rank 0 alone reports
    folder = tmp_path / "run" / "nih" / "seed0"
    history = json.loads((folder / "history.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1] and np.isfinite([r["loss"] for r in history]).all()
    assert json.loads((folder / "last.json").read_text())["world_size"] == 2


# ----------------------------------------------------------------------- single-process pieces of the contract
def test_global_batches_are_cut_once_and_sharded_contiguously():
    ranks_batches = epoch_batches(49, 16, torch.Generator().manual_seed(0), ranks=2)
    assert [len(b) for b in ranks_batches] == [16, 16, 17]  # a last batch of one joins the previous one
    assert sorted(np.concatenate(ranks_batches)) == list(range(49))
    one = epoch_batches(49, 16, torch.Generator().manual_seed(0))
    assert all(np.array_equal(a, b) for a, b in zip(one, ranks_batches))  # the single-process batches
    assert [len(b) for b in epoch_batches(26, 24, torch.Generator().manual_seed(0), ranks=4)] == [26]
    assert [len(b) for b in epoch_batches(28, 24, torch.Generator().manual_seed(0), ranks=4)] == [24, 4]
    assert shard_sizes(17, 2) == [9, 8] and shard_sizes(16, 4) == [4, 4, 4, 4] and shard_sizes(6, 4) == [2, 2, 1, 1]
    with pytest.raises(ValueError, match="a global batch of 3 image"):
        shard_sizes(3, 4)
    for batch, ranks in ((5, 0), (5.0, 2), (True, 1)):
        with pytest.raises(ValueError, match="shard_sizes needs ints batch >= 1 and ranks >= 1"):
            shard_sizes(batch, ranks)


def test_views_drawn_for_the_global_batch_and_applied_per_shard_are_the_single_process_views():
    x = torch.rand(17, 1, 32, 32)
    whole = augment_batch(x, torch.Generator().manual_seed(5))
    params = augment_params(17, torch.Generator().manual_seed(5))
    shards = [apply_augment(x[:9], params.rows(0, 9)), apply_augment(x[9:], params.rows(9, 17))]
    assert torch.equal(torch.cat(shards), whole)
    with pytest.raises(ValueError, match="parameters for 9 images, the batch has 17"):
        apply_augment(x, params.rows(0, 9))


def test_without_a_process_group_the_helpers_are_the_single_process_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_environment("cpu") is False and not distributed.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_environment("cpu") is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    t = torch.rand(3, 2)
    assert distributed.all_gather_cat(t) is t and distributed.all_reduce_sum(t) is t
    with pytest.raises(ValueError, match="boom"), collective_failure_context("epoch 0"):
        raise ValueError("boom")
    with pytest.raises(RuntimeError, match="^plain$"), collective_failure_context("epoch 0"):
        raise RuntimeError("plain")  # only data-parallel errors are reworded
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' must be an integer"):
        distributed.init_from_environment("cpu")
    for ranks in ("0", "-3"):
        monkeypatch.setenv("WORLD_SIZE", ranks)
        with pytest.raises(ValueError, match=f"WORLD_SIZE={ranks} must be >= 1"):
            distributed.init_from_environment("cpu")
    assert distributed.broadcast_object({"val_auc": 0.5}) == {"val_auc": 0.5}
    distributed.check_ranks_agree({"anything": "x"})  # one process: nothing to compare


def test_the_collective_timeout_comes_from_its_environment_variable():
    assert collective_timeout({}).total_seconds() == 1800
    assert collective_timeout({TIMEOUT_ENV: "45"}).total_seconds() == 45
    for bad in ("0", "-3", "soon", "inf", "1e-9", "1e10", "1e300"):
        with pytest.raises(ValueError, match=rf"{TIMEOUT_ENV}='{bad}' must be a number of seconds in \[1, 1e\+06\]"):
            collective_timeout({TIMEOUT_ENV: bad})
