"""benchmarks/bench_profiles.py: its pure helpers (the timing itself is a script, not a test)."""

import pytest

from conftest import load_script
from salad_lite.config import profile_config
from salad_lite.trainer import SaladTrainer


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_profiles.py")


def test_validations_per_run_follows_the_trainer(bench) -> None:
    """The count the script prints is the number of validations SaladTrainer.fit runs."""
    assert bench.validations_per_run(15, 1) == 15
    assert bench.validations_per_run(15, 3) == 5  # after epochs 3, 6, 9, 12, 15
    assert bench.validations_per_run(14, 3) == 5  # ... 12, and the last (14)
    assert bench.validations_per_run(1, 3) == 1
    cfg = profile_config("smoke", "nih").replace(train={"progress": False, "pretrain_epochs": 3, "rounds": 0,
                                                        "validate_every": 2})
    train = bench.LabelledImages(8, 32, 0, 0.0, "t")
    val = bench.LabelledImages(6, 32, 1, 0.5, "v")
    trainer = SaladTrainer(cfg, train, val, run_dir=None, device="cpu")
    history = trainer.fit()
    assert sum("val_auc" in record for record in history) == bench.validations_per_run(3, 2) == 2


def test_faster_variants_needs_both_ratios_above_the_margin(bench) -> None:
    ratios = {"a": (1.2, 1.15), "b": (1.3, 1.05), "c": (0.9, 1.4), "d": (1.11, 1.11)}
    assert bench.faster_variants(ratios) == ["a", "d"]
    assert bench.faster_variants(ratios, margin=0.2) == []


def test_variants_flip_what_they_name(bench) -> None:
    cfg = profile_config("default", "nih")
    variants = bench.profile_variants(cfg, 2, bench.VARIANTS)
    reference, flipped, one, compiled, bf16 = variants
    assert (reference.channels_last, reference.threads, reference.compile, reference.bf16) == \
        (cfg.train.channels_last, 2, False, False)
    assert flipped.channels_last != cfg.train.channels_last
    assert one.threads == 1 and compiled.compile and bf16.bf16 and bf16.slow


@pytest.mark.parametrize("argv, fragment", [
    (["--val-reps", "0"], "argument --val-reps: must be an int >= 1, got '0'"),
    (["--threads", "0"], "argument --threads: must be an int >= 1, got '0'"),
    (["--train-images", "0"], "argument --train-images: must be an int >= 3"),
    (["--val-images", "1"], "argument --val-images: must be an int >= 2"),
    (["--compile-timeout", "-5"], "argument --compile-timeout: must be an int >= 0, got '-5'"),
    (["--steps", "0"], "argument --steps: must be an int >= 1"),
    (["--warmup", "-1"], "argument --warmup: must be an int >= 0"),
])
def test_bad_options_are_argparse_errors(bench, argv: list[str], fragment: str,  # noqa: ANN001
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        bench.main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and fragment in err, err


def test_the_smallest_sets_the_options_allow_train_and_validate(bench) -> None:  # noqa: ANN001
    """--train-images 3 and --val-images 2 are what the trainer accepts (2 normal films to score against, both classes)."""
    cfg = profile_config("smoke", "nih").replace(train={"progress": False})
    args = bench.build_parser().parse_args(["--train-images", "3", "--val-images", "2"])
    train = bench.LabelledImages(args.train_images, 32, 0, cfg.data.anomaly_ratio, "t")
    val = bench.LabelledImages(args.val_images, 32, 1, 0.5, "v")
    trainer = SaladTrainer(cfg, train, val, run_dir=None, device="cpu")
    assert 0.0 <= trainer.validate()["val_auc"] <= 1.0
