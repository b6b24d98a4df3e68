"""benchmarks/normal_spread.py: its spread measure on data of known shape (the script itself compares real sets)."""

import numpy as np
import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/normal_spread.py")


def test_a_one_direction_class_needs_one_component(bench) -> None:
    rng = np.random.default_rng(0)
    line = rng.normal(size=(50, 1)) * rng.normal(size=(1, 30)) + 0.001 * rng.normal(size=(50, 30))
    s = bench.spread(line, n=50)
    assert s["k90"] == 1 and s["top1"] > 0.99


def test_wider_class_needs_more_components_and_has_fewer_near_twins(bench) -> None:
    rng = np.random.default_rng(1)
    narrow = rng.normal(size=(80, 3)) @ rng.normal(size=(3, 40)) + 0.05 * rng.normal(size=(80, 40))
    wide = rng.normal(size=(80, 40))
    a, b = bench.spread(narrow, n=60), bench.spread(wide, n=60)
    assert a["n"] == b["n"] == 60
    assert a["k90"] < b["k90"] and a["top1"] > b["top1"]
    twins = np.repeat(rng.normal(size=(30, 40)), 2, axis=0) + 0.01 * rng.normal(size=(60, 40))
    assert bench.spread(twins, n=60)["nn_ratio"] < 0.1 < b["nn_ratio"]


@pytest.mark.parametrize("n", ["0", "1", "-5"])
def test_n_below_two_is_an_argparse_error(bench, n: str, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as caught:
        bench.main(["--n", n])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and f"argument --n: must be an int >= 2 (a nearest other image needs two), got '{n}'" in err


def test_spread_refuses_fewer_than_two_images(bench) -> None:  # noqa: ANN001
    pixels = np.random.default_rng(0).random((5, 16))
    for n in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="n must be an int >= 2"):
            bench.spread(pixels, n)
    with pytest.raises(ValueError, match="needs at least 2"):
        bench.spread(pixels[:1], 2)
