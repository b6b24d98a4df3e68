"""benchmarks/gpu_check.py: its own logic passes a CPU-only run (``--device cpu --quick``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_writes_json_and_markdown(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = report["checks"]
    assert set(checks) == {"forward agreement", "training throughput", "Eq. 4 scorer", "DDP step"}
    assert report["meta"]["device"] == "cpu" and report["meta"]["quick"] is True
    assert [(row["network"], row["image_size"]) for row in checks["forward agreement"]] == [("conv", 32),
                                                                                           ("resnet18", 64)]
    assert all(row["max_abs_z"] == 0 and row["max_abs_x_hat"] == 0 for row in checks["forward agreement"])
    throughput = checks["training throughput"]
    assert {(row["network"], row["amp"]) for row in throughput} == {(n, a) for n in ("conv", "resnet18")
                                                                   for a in (False, True)}
    assert all(row["images_per_s"] > 0 and not row["amp_active"] for row in throughput)  # AMP is CUDA only
    scorer = checks["Eq. 4 scorer"]
    assert scorer["identical_rows"] + scorer["tie_only_rows"] == scorer["queries"]
    assert scorer["max_rel_score"] < 1e-5 and scorer["max_rel_angle_sum"] < 1e-5
    assert checks["DDP step"]["status"] == "ok" and checks["DDP step"]["banks_identical"] is True
    assert all(math.isfinite(x) for x in _numbers(report))
    table = (tmp_path / "gpu_check.md").read_text()
    for heading in ("## forward agreement", "## training throughput", "## Eq. 4 scorer", "## DDP step"):
        assert heading in table
    assert "| network | image_size | max_abs_z | max_abs_x_hat |" in table and "failed" not in table


@pytest.mark.parametrize("argv, fragment", [
    (["--device", "foo"], "argument --device: device 'foo' is not a device salad_lite runs on"),
    (["--device", "meta"], "argument --device: device 'meta'"),
])
def test_a_wrong_device_is_an_argparse_error_before_any_check(argv, fragment, capsys):  # noqa: ANN001
    from conftest import load_script

    with pytest.raises(SystemExit) as caught:
        load_script("benchmarks/gpu_check.py").main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and fragment in err and "--device cpu --quick" in err, err


def test_an_out_that_is_a_file_is_refused_before_any_check(tmp_path, capsys):  # noqa: ANN001
    from conftest import load_script

    (tmp_path / "report").write_text("")
    with pytest.raises(SystemExit) as caught:
        load_script("benchmarks/gpu_check.py").main(["--device", "cpu", "--quick", "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "argument --out: " in err and "report is a file" in err, err
