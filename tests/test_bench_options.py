"""The benchmarks' options are checked where they enter: an argparse error naming the option, status 2, before any work."""

from __future__ import annotations

import pytest

from conftest import load_script


@pytest.mark.parametrize("script, argv, fragment", [
    ("bench_train_step", ["--round", "-2"], "argument --round: must be an int in [1, 10]"),
    ("global_intensity", ["--device", "foo"], "argument --device: device 'foo' is not a device salad_lite runs on"),
    ("global_intensity", ["--seeds", "0"], "argument --seeds: must be an int >= 1, got '0'"),
    ("bench_train_step", ["--round", "0"], "argument --round: must be an int in [1, 10]"),  # pretraining is timed anyway
    ("bench_train_step", ["--steps", "0"], "argument --steps: must be an int >= 1, got '0'"),
    ("bench_train_step", ["--warmup", "-1"], "argument --warmup: must be an int >= 0"),
    ("bench_train_step", ["--batch-size", "16", "--bank", "8"], "argument --batch-size: must be <= --bank (8)"),
    ("bench_train_step", ["--device", "foo"], "argument --device: device 'foo' is not a device salad_lite runs on"),
    ("bench_train_step", ["--device", "cpu:0"], "argument --device: device 'cpu:0'"),
    ("bench_train_step", ["--image-size", "48"], "argument --image-size: must be a power of two from 32"),
    ("bench_render_chest", ["--n", "0"], "argument --n: must be an int >= 1"),
    ("bench_render_chest", ["--n", "1"], "argument --n: abnormal_fraction=0.4 of n_images=1 rounds to 0"),
    ("bench_render_chest", ["--size", "8"], "argument --size: must be an int >= 16"),
    ("bench_render_chest", ["--workers", "0"], "argument --workers: must be an int in [1, "),
    ("bench_render_chest", ["--workers", "1", "-3"], "argument --workers: must be an int in [1, "),
    ("bench_render_chest", ["--workers", "100000"], "(this machine's CPUs), got '100000'"),
    ("bench_scale", ["--sizes", "0"], "argument --sizes: must be an int >= 1, got '0'"),
    ("bench_scale", ["--sizes", "10", "1000"], "argument --sizes: every bank must hold at least --k = 20 entries"),
    ("bench_scale", ["--k", "601", "--sizes", "1000"], "argument --k: must be an int in [1, 600]"),
    ("bench_scale", ["--queries", "-1"], "argument --queries: must be an int >= 0"),
    ("bench_scale", ["--temperature", "0"], "argument --temperature: must be a number > 0"),
    ("bench_scorer", ["--repeats", "0"], "argument --repeats: must be an int >= 1"),
    ("bench_scorer", ["--k", "10", "--bank", "5"], "argument --k: must be at most --bank (5)"),
    ("bench_scorer", ["--queries", "0"], "argument --queries: must be an int >= 1"),
])
def test_bad_options_are_argparse_errors(script: str, argv: list[str], fragment: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script(f"benchmarks/{script}.py")
    with pytest.raises(SystemExit) as caught:
        module.main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and fragment in err, err


def test_render_chest_rows_say_when_one_process_ran() -> None:
    """A set under POOL_MIN_IMAGES renders in-process: its row must not claim W workers."""
    bench = load_script("benchmarks/bench_render_chest.py")
    assert bench.processes_label(4, 31) == "workers=4 (ran in 1 process: sets under 32 images render in-process)"
    assert bench.processes_label(4, 32) == "workers=4"
    assert bench.processes_label(1, 4) == "workers=1"
