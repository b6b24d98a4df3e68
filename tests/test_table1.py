"""The Table 1 / Fig. 5 grid (salad_lite.table1): the plan, cells cached and refused, the summary files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ArrayDataset
from salad_lite import table1, table1_report
from salad_lite.data.batches import splits_fingerprint
from salad_lite.files import CorruptFileError
from salad_lite.methods import BASELINE_IDS, baseline_class
from salad_lite.methods.base import DeepBaseline
from salad_lite.table1 import (ALL_METHODS, DEFAULT_FULL_ONLY, METHODS, Cell, GridSpec, grid_spec, plan_cells, run_cell,
                               run_grid)

TINY = {"train": {"progress": False, "pretrain_epochs": 1, "rounds": 1, "epochs_per_round": 1}}


def test_method_names_are_the_classes_names() -> None:
    assert all(METHODS[m] == baseline_class(m).name for m in BASELINE_IDS)


def test_default_plan_runs_table1_and_the_cheap_baselines_at_the_papers_dagger_ar() -> None:
    cells, skipped = plan_cells(grid_spec("default", "nih"))
    assert {s["method_id"]: s["reason"] for s in skipped} == {m: "run with PROFILE=full" for m in DEFAULT_FULL_ONLY}
    assert {c.method for c in cells} == set(ALL_METHODS) - set(DEFAULT_FULL_ONLY)
    assert {"deep_ae", "deep_svdd", "deep_sad"} <= {c.method for c in cells}  # the minimum at default
    pairs = {(c.method, c.ar_percent) for c in cells}
    salad_rows = {(m, ar) for m in ("salad_no_mse", "salad_no_agg", "salad") for ar in (5, 10, 15)}
    cheap = [m for m in BASELINE_IDS if m not in DEFAULT_FULL_ONLY]
    assert pairs == {("memdae", 0), *salad_rows, *((m, 10) for m in cheap)}
    assert {c.seed for c in cells} == {0, 1}
    assert {c.ar_percent for c in plan_cells(grid_spec("default", "mura"))[0] if c.method in BASELINE_IDS} == {5}
    assert grid_spec("default", "folder").baseline_ar == 5  # outside Table 1: the paper's default AR
    full_cells, full_skipped = plan_cells(grid_spec("full", "nih"))
    assert not full_skipped and {c.method for c in full_cells} == set(ALL_METHODS)
    assert {c.seed for c in full_cells} == {0, 1, 2, 3}


def test_the_dagger_ar_comes_from_the_papers_table_and_smoke_keeps_its_ars() -> None:
    assert table1.PAPER_BASELINE_AR == {"nih": 10, "mura": 5}
    assert all(table1.PAPER_BASELINE_AR[d] == table1_report.fig5_ar(d) for d in ("nih", "mura"))
    assert grid_spec("smoke", "nih").baseline_ar == 5 and grid_spec("smoke", "mura").baseline_ar == 5
    assert not hasattr(table1, "GRID_FILES")


def test_full_only_methods_are_listed_and_the_chapter_tables_show_them() -> None:
    spec = grid_spec("default", "nih", full_only=("geometric", "gan_gp", "supervised"))
    cells, skipped = plan_cells(spec)
    assert {s["method_id"]: (s["reason"], s["ar_percent"]) for s in skipped} == {
        m: ("run with PROFILE=full", 10) for m in ("geometric", "gan_gp", "supervised")}
    assert not {c.method for c in cells} & {"geometric", "gan_gp", "supervised"}
    table = table1.summarise(spec, [], skipped)
    side = table1_report.table1_side_by_side(table, text=True)
    assert len(side) == 10
    fig5 = table1_report.fig5_table(table)
    notes = dict(zip(fig5["method"], fig5["note"]))
    assert notes["Geometric"] == notes["GAN-GP"] == notes["Supervised ResNet-18"] == "run with PROFILE=full"


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
    assert 0.0 <= first["test_auc"] <= 1.0 and first["method"] == "Deep AE" and first["selected_round"] is None
    # the checkpoints are tied to the training and validation splits: other training images are refused,
    # another test split is scored with the same model (the result records all three splits)
    result = table1.cell_folder(_spec(), cell, tmp_path) / "result.json"
    stored = result.read_text()
    order = np.r_[1, 0, 2:len(planted_splits["train"])]
    reordered = ArrayDataset(planted_splits["train"].images[order], planted_splits["train"].labels[order], "train-")
    with pytest.raises(ValueError, match=rf"{result.parent}.*last.json was trained on other training or validation"):
        run_cell(_spec(), cell, {**planted_splits, "train": reordered}, tmp_path, "cpu")
    other_test = {**planted_splits, "test": ArrayDataset(planted_splits["test"].images[::-1].copy(),
                                                         planted_splits["test"].labels[::-1].copy(), "test-")}
    with monkeypatch.context() as patch:
        patch.setattr(DeepBaseline, "_run_epoch", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
        rescored = run_cell(_spec(), cell, other_test, tmp_path, "cpu")
    assert rescored["test_scores"] == pytest.approx(first["test_scores"][::-1], rel=1e-5)
    assert json.loads(result.read_text())["splits_sha256"] == splits_fingerprint(other_test)
    result.write_text(stored)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(DeepBaseline, "fit", no_training)
    again = run_cell(_spec(), cell, planted_splits, tmp_path, "cpu")
    assert again["test_scores"] == first["test_scores"]
    changed = _spec(overrides={"train": {**TINY["train"], "lr": 3e-4}})
    with pytest.raises(ValueError, match=r"result.json was computed with other config fields \['lr'\]"):
        run_cell(changed, cell, planted_splits, tmp_path, "cpu")
    for field, value, message in (("config", [1], "'config' must be an object"),
                                  ("test_auc", "0.9", "'test_auc' must be a finite number"),
                                  ("selected_epoch", 1.5, "'selected_epoch' must be an int"),
                                  ("test_scores", ["x"], "'test_scores' must be a list of numbers"),
                                  # hand-edited values its own scores and the test split contradict
                                  ("test_auc", 0.99, r"'test_auc' 0.99 is not what its own 'test_scores' give"),
                                  ("test_labels", [1 - v for v in first["test_labels"]],
                                   "its 'test_labels' are not the test split's labels")):
        result.write_text(json.dumps({**json.loads(stored), field: value}))
        with pytest.raises(CorruptFileError, match=f"{result}: {message}"):
            run_cell(_spec(), cell, planted_splits, tmp_path, "cpu")
    result.write_text("[]")
    with pytest.raises(CorruptFileError, match=f"{result}: must hold a JSON object"):
        run_cell(_spec(), cell, planted_splits, tmp_path, "cpu")


def test_a_baseline_checkpoint_records_its_training_and_validation_splits(planted_splits, tmp_path, monkeypatch) -> None:
    seen = []
    fit = DeepBaseline.fit

    def recording_fit(self, *args, **kwargs):
        seen.append(kwargs.get("data_fingerprint"))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(DeepBaseline, "fit", recording_fit)
    run_cell(_spec(), Cell("deep_ae", 5, 0), planted_splits, tmp_path, "cpu")
    assert seen == [None]  # fit's own: the training and validation splits, not the test split
    meta = json.loads((table1.cell_folder(_spec(), Cell("deep_ae", 5, 0), tmp_path) / "best.json").read_text())
    assert meta["data_fingerprint"] == splits_fingerprint({"train": planted_splits["train"],
                                                           "val": planted_splits["val"]})


def test_a_table1_cell_selects_k_on_validation(planted_splits, tmp_path) -> None:
    result = run_cell(_spec(), Cell("memdae", 0, 0), planted_splits, tmp_path, "cpu")
    assert result["k"] in [row["k"] for row in result["k_curve"]]
    best = max(result["k_curve"], key=lambda row: row["val_auc"])["val_auc"]
    assert result["val_auc"] == pytest.approx(best)
    folder = tmp_path / "nih" / "table1" / "memdae" / "ar0" / "nih" / "seed0"
    assert (folder / "result.json").exists()
    stored = json.loads((folder / "result.json").read_text())
    assert isinstance(result["selected_round"], int) and result["selected_round"] == stored["selected_round"]
    selection = folder / "selection.json"
    good = json.loads(selection.read_text())
    for body, message in (([1, 2], "must hold a JSON object"), ({"grid": 3}, "'grid' must be a list"),
                          ({"grid": [{"k": 5}]}, r"'grid'\[0\] lacks \['discard_anomalous', 'val_auc'\]"),
                          ({"grid": [{**good["grid"][0], "val_auc": "high"}]}, r".*numeric 'val_auc'")):
        selection.write_text(json.dumps(body))
        with pytest.raises(CorruptFileError, match=f"scoring selection {selection}: {message}"):
            run_cell(_spec(), Cell("memdae", 0, 0), planted_splits, tmp_path, "cpu")


def _cells() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"method": METHODS[m], "method_id": m, "ar_percent": ar, "seed": s, "val_auc": 0.6 + 0.01 * s,
             "selected_epoch": 1, "selected_round": 1 if m == "memdae" else None, "k": 5 if m == "memdae" else None,
             "test_auc": float(rng.uniform(0.5, 0.9)), "test_auprc": 0.7}
            for m, ar in (("memdae", 0), ("deep_ae", 5)) for s in range(2)]


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
    assert row["per_replicate"][0]["selected_round"] == 1
    (tmp_path / "table1.json").write_text("[1, 2]")
    with pytest.raises(CorruptFileError, match="table1.json"):
        table1._write_tables(tmp_path, "nih", nih)


def test_a_single_replicate_stores_null_not_nan(tmp_path) -> None:
    one = [c for c in _cells() if c["seed"] == 0]
    table = table1.summarise(_spec(), one, [])
    assert all(row[m]["ci95"] is None for row in table["rows"] for m in ("test_auc", "test_auprc", "val_auc"))
    table1._write_tables(tmp_path, "nih", table)
    text = (tmp_path / "table1.json").read_text()
    assert "NaN" not in text and json.loads(text)["nih"]["rows"][0]["test_auc"]["ci95"] is None
    header, first = (tmp_path / "table1.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), first.split(",")))
    assert values["test_auc_ci95"] == "" and values["test_auc_mean"] != "" and values["selected_rounds"] == "1"
    # a NaN stored by an older salad_lite is rewritten as null
    stored = json.loads(text)
    stored["mura"] = {**stored["nih"], "dataset": "mura"}
    (tmp_path / "table1.json").write_text(json.dumps(stored).replace("null", "NaN"))
    table1._write_tables(tmp_path, "nih", table)
    assert "NaN" not in (tmp_path / "table1.json").read_text()


def _grid_spec(methods, **changes) -> GridSpec:
    return grid_spec("smoke", "nih", methods=methods, overrides=TINY, **changes)


def test_table1_json_merges_rows_of_successive_grids(planted_splits, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(table1, "splits_for", lambda cfg, progress=False: planted_splits)
    first = run_grid(_grid_spec(("deep_ae",), full_only=("memdae",)), tmp_path, "cpu", progress=False)
    assert [(s["method_id"], s["ar_percent"]) for s in first.table["skipped"]] == [("memdae", 0)]
    second = run_grid(_grid_spec(("memdae",)), tmp_path, "cpu", progress=False)
    assert [r["method_id"] for r in second.table["rows"]] == ["memdae"]
    stored = json.loads((tmp_path / "table1.json").read_text())["nih"]
    assert [(r["method_id"], r["ar_percent"]) for r in stored["rows"]] == [("memdae", 0), ("deep_ae", 5)]
    assert stored["skipped"] == []  # MemDAE at AR 0 now has a row
    rounds = {r["method_id"]: r["per_replicate"][0]["selected_round"] for r in stored["rows"]}
    assert isinstance(rounds["memdae"], int) and rounds["deep_ae"] is None
    assert len((tmp_path / "table1.csv").read_text().splitlines()) == 1 + 2
    # a rerun replaces its own rows (the cells load) and keeps the others
    deep_ae = stored["rows"][1]
    run_grid(_grid_spec(("memdae",)), tmp_path, "cpu", progress=False)
    assert json.loads((tmp_path / "table1.json").read_text())["nih"]["rows"][1] == deep_ae


def test_a_damaged_table1_json_is_refused_before_any_cell_runs(tmp_path, monkeypatch) -> None:
    def no_splits(*args, **kwargs):
        raise AssertionError("the grid started before table1.json was checked")

    monkeypatch.setattr(table1, "splits_for", no_splits)
    row = table1.summarise(_spec(), _cells(), [])
    broken = {**row, "rows": [{k: v for k, v in r.items() if k != "per_replicate"} for r in row["rows"]]}
    path = tmp_path / "table1.json"
    path.write_text(json.dumps({"nih": row, "mura": broken}))  # the other data set's entry is checked too
    with pytest.raises(CorruptFileError, match=rf"{path}: entry 'mura' rows\[0\] lacks \['per_replicate'\]"):
        run_grid(_grid_spec(("deep_ae",)), tmp_path, "cpu", progress=False)
    first = row["rows"][0]
    for change, message in (({"replicates": "two"}, r"\['replicates'\] must be an int >= 1, got 'two'"),
                            ({"ar_percent": 150}, "ar_percent 150 that is not an integer in 0..100"),
                            ({"test_auc": {"mean": 7.5, "ci95": None}}, r"\['test_auc'\] must be \{'mean': number in")):
        path.write_text(json.dumps({"nih": {**row, "rows": [{**first, **change}, *row["rows"][1:]]}}))
        with pytest.raises(CorruptFileError, match=rf"{path}: entry 'nih' rows\[0\].*{message}"):
            run_grid(_grid_spec(("deep_ae",)), tmp_path, "cpu", progress=False)
    path.write_text(json.dumps({"nih": {**row, "rows": [*row["rows"], first]}}))
    with pytest.raises(CorruptFileError, match=rf"rows\[{len(row['rows'])}\] repeats '{first['method_id']}' at AR"):
        run_grid(_grid_spec(("deep_ae",)), tmp_path, "cpu", progress=False)
    path.write_text(json.dumps({"nih": row, "mura": broken}))
    assert table1.main(["--profile", "smoke", "--methods", "deep_ae", "--run-dir", str(tmp_path),
                        "--device", "cpu"]) == 2


def test_the_progress_bar_is_closed_when_a_cell_fails(tmp_path, monkeypatch) -> None:
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.closed = False
            bars.append(self)

        def set_postfix_str(self, text):
            pass

        def update(self, n):
            pass

        def close(self):
            self.closed = True

    def broken_data(*args, **kwargs):
        raise ValueError("no images")

    monkeypatch.setattr(table1, "tqdm", Bar)
    monkeypatch.setattr(table1, "progress_enabled", lambda: True)
    monkeypatch.setattr(table1, "splits_for", broken_data)
    with pytest.raises(ValueError, match="no images"):
        run_grid(_grid_spec(("deep_ae",)), tmp_path, "cpu")
    assert len(bars) == 1 and bars[0].closed


@pytest.mark.parametrize("argv, message", [
    (["--methods", "salad,ocgan"], "unknown method"),
    (["--ar", "0,five"], "comma-separated integers"),
    (["--dataset", "folder"], "--dataset folder reads your own images: --data-root must name"),  # before any data
])
def test_the_command_line_refuses_a_malformed_argument(argv, message, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        table1.main([*argv, "--run-dir", str(tmp_path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--ar", "0,30"], "error: ars (--ar) must be integer percentages in 0..15"),
    (["--ar", "5,5"], "error: ars (--ar) lists [5] more than once"),  # seed 0 twice would count as 2 replicates
    (["--methods", "salad,salad"], "error: methods (--methods) lists ['salad'] more than once"),
    (["--replicates", "0"], "error: replicates (--replicates) must be an int >= 1"),
    (["--methods", "memdae", "--ar", "5"], "error: the grid plans no cell to run (MemDAE at AR 0 %: MemDAE trains"),
])
def test_the_command_line_names_a_value_out_of_range(argv, message, tmp_path, capsys) -> None:
    assert table1.main([*argv, "--run-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "table1.json").exists()


def test_the_command_line_refuses_an_empty_run_folder_name(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert table1.main(["--run-dir", " "]) == 2
    assert "error: --run-dir must name a folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("WORLD_SIZE", "2")  # every rank would run the whole grid into one folder
    with pytest.raises(SystemExit):
        table1.main(["--run-dir", "runs"])
    assert "the Table 1 grid runs in one process (WORLD_SIZE=2)" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("device, message", [
    ("bogus", "error: --device must be"),
    pytest.param("cuda", "error: --device cuda: ", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                           reason="this machine has CUDA")),
])
def test_the_command_line_refuses_a_device_before_reading_data(device, message, tmp_path, capsys, monkeypatch) -> None:
    def no_splits(*args, **kwargs):
        raise AssertionError("the splits were built before the device was checked")

    monkeypatch.setattr(table1, "splits_for", no_splits)
    assert table1.main(["--device", device, "--run-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(message)
    with pytest.raises(ValueError, match="device"):
        run_grid(_grid_spec(("deep_ae",)), tmp_path, device)


def test_the_command_line_makes_the_data_root_absolute_and_prints_one_run(tmp_path, capsys, monkeypatch) -> None:
    seen = []

    def fake_grid(spec, run_dir, device="auto", progress=True):
        seen.append(spec)
        return table1.GridResult(table=table1.summarise(spec, [c for c in _cells() if c["seed"] == 0], []), cells=[])

    monkeypatch.setattr(table1, "run_grid", fake_grid)
    monkeypatch.chdir(tmp_path)
    assert table1.main(["--data-root", "data", "--run-dir", "runs", "--device", "cpu"]) == 0
    assert seen[0].data_root == str((tmp_path / "data").resolve())
    out = capsys.readouterr().out
    assert "(1 run)" in out and "nan" not in out.lower()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert table1.main(["--data-root", "~/nih", "--run-dir", "runs", "--device", "cpu"]) == 0
    assert seen[1].data_root == str((tmp_path / "nih").resolve())
