"""The Table 1 / Fig. 5 grid (salad_lite.table1): the plan, cells cached and refused, the summary files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from salad_lite import table1
from salad_lite.methods import BASELINE_IDS, baseline_class
from salad_lite.methods.base import DeepBaseline
from salad_lite.table1 import ALL_METHODS, METHODS, Cell, GridSpec, grid_spec, plan_cells, run_cell

TINY = {"train": {"progress": False, "pretrain_epochs": 1, "rounds": 1, "epochs_per_round": 1}}


def test_method_names_are_the_classes_names() -> None:
    assert all(METHODS[m] == baseline_class(m).name for m in BASELINE_IDS)


def test_default_plan_runs_the_issue_minimum_and_lists_the_rest() -> None:
    cells, skipped = plan_cells(grid_spec("default", "nih"))
    pairs = {(c.method, c.ar_percent) for c in cells}
    assert pairs == {("memdae", 0), ("salad_no_mse", 5), ("salad_no_agg", 5), ("salad", 5), ("deep_ae", 5),
                     ("deep_svdd", 5), ("deep_sad", 5)}
    assert {c.seed for c in cells} == {0, 1}
    assert {s["method_id"]: s["reason"] for s in skipped} == {m: "run with PROFILE=full"
                                                             for m in ("geometric", "gan_gp", "supervised")}


def test_full_plan_is_the_papers_grid() -> None:
    cells, skipped = plan_cells(grid_spec("full", "nih"))
    assert not skipped
    table1_cells = [c for c in cells if c.method not in BASELINE_IDS]
    assert len(table1_cells) == 10 * 4  # MemDAE at AR 0 and three rows at AR 5/10/15, 4 replicates
    assert {c.ar_percent for c in cells if c.method in BASELINE_IDS} == {10}  # the paper's dagger model on NIH
    assert grid_spec("full", "mura").baseline_ar == 5
    smoke_cells, _ = plan_cells(grid_spec("smoke", "nih"))
    assert {c.method for c in smoke_cells} == set(ALL_METHODS)


def test_supervised_at_ar_zero_and_memdae_without_ar_zero_are_skipped_with_a_reason() -> None:
    _, skipped = plan_cells(GridSpec(methods=("supervised",), ars=(0,), baseline_ar=0))
    assert "needs abnormal training images" in skipped[0]["reason"]
    _, skipped = plan_cells(GridSpec(methods=("memdae",), ars=(5,)))
    assert "AR 0" in skipped[0]["reason"]


@pytest.mark.parametrize("changes, message", [
    ({"methods": ("ocgan",)}, "unknown method"),
    ({"ars": (0, 20)}, "0..15"),
    ({"ars": ()}, "0..15"),
    ({"replicates": 0}, "replicates"),
    ({"ars": (0, 10), "baseline_ar": 5}, "baseline_ar 5"),
])
def test_a_bad_grid_is_refused_where_it_enters(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        GridSpec(**changes)


def _spec(**changes) -> GridSpec:
    return grid_spec("smoke", "nih", **{"methods": ("memdae", "deep_ae"), "overrides": TINY, **changes})


def test_a_baseline_cell_is_stored_loaded_and_a_changed_config_refused(planted_splits, tmp_path, monkeypatch) -> None:
    cell = Cell("deep_ae", 5, 0)
    first = run_cell(_spec(), cell, planted_splits, tmp_path, "cpu")
    assert first["k"] is None and first["k_curve"] == [] and len(first["test_scores"]) == len(planted_splits["test"])
    assert 0.0 <= first["test_auc"] <= 1.0 and first["method"] == "Deep AE"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(DeepBaseline, "fit", no_training)
    again = run_cell(_spec(), cell, planted_splits, tmp_path, "cpu")
    assert again["test_scores"] == first["test_scores"]
    changed = _spec(overrides={"train": {**TINY["train"], "lr": 3e-4}})
    with pytest.raises(ValueError, match=r"result.json was computed with other config fields \['lr'\]"):
        run_cell(changed, cell, planted_splits, tmp_path, "cpu")


def test_a_table1_cell_selects_k_on_validation(planted_splits, tmp_path) -> None:
    result = run_cell(_spec(), Cell("memdae", 0, 0), planted_splits, tmp_path, "cpu")
    assert result["k"] in [row["k"] for row in result["k_curve"]]
    best = max(result["k_curve"], key=lambda row: row["val_auc"])["val_auc"]
    assert result["val_auc"] == pytest.approx(best)
    assert (tmp_path / "nih" / "table1" / "memdae" / "ar0" / "nih" / "seed0" / "result.json").exists()


def _cells() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"method": METHODS[m], "method_id": m, "ar_percent": ar, "seed": s, "val_auc": 0.6 + 0.01 * s,
             "selected_epoch": 1, "k": 5 if m == "memdae" else None, "test_auc": float(rng.uniform(0.5, 0.9)),
             "test_auprc": 0.7} for m, ar in (("memdae", 0), ("deep_ae", 5)) for s in range(2)]


def test_summary_files_merge_datasets(tmp_path) -> None:
    spec = _spec()
    nih = table1.summarise(spec, _cells(), [])
    table1._write_tables(tmp_path, "nih", nih)
    table1._write_tables(tmp_path, "mura", {**nih, "dataset": "mura"})
    stored = json.loads((tmp_path / "table1.json").read_text())
    assert set(stored) == {"nih", "mura"}
    row = stored["nih"]["rows"][0]
    values = [c["test_auc"] for c in _cells() if c["method_id"] == "memdae"]
    assert row["test_auc"]["mean"] == pytest.approx(np.mean(values))
    assert row["test_auc"]["ci95"] == pytest.approx(1.96 * np.std(values, ddof=1))
    csv = (tmp_path / "table1.csv").read_text().splitlines()
    assert len(csv) == 1 + 2 * 2 and csv[0].startswith("dataset,method,method_id,ar_percent")
    (tmp_path / "table1.json").write_text("[1, 2]")
    with pytest.raises(Exception, match="table1.json"):
        table1._write_tables(tmp_path, "nih", nih)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "salad,ocgan"], "unknown method"),
    (["--ar", "0,five"], "comma-separated integers"),
])
def test_the_command_line_refuses_a_malformed_argument(argv, message, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        table1.main([*argv, "--run-dir", str(tmp_path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_command_line_names_a_value_out_of_range(tmp_path, capsys) -> None:
    assert table1.main(["--ar", "0,30", "--run-dir", str(tmp_path)]) == 2
    assert "error: ars must be integer percentages in 0..15" in capsys.readouterr().err
