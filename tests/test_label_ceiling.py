"""benchmarks/label_ceiling.py: its folds and its label-given scorers on data of known shape (no network trained)."""

import numpy as np
import pytest

from conftest import load_script
from salad_lite.data import CachedXrayDataset


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/label_ceiling.py")


def _planted(n_patients: int = 40, per_patient: int = 3, dim: int = 30, seed: int = 0):
    """Images of a patient share a class; abnormal ones carry +3 on feature 0."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), per_patient).astype(str)
    y = np.repeat(np.arange(n_patients) % 2, per_patient)
    x = rng.normal(size=(len(y), dim))
    x[:, 0] += 3.0 * y
    return x, y, patients


def test_folds_cover_every_image_once_and_keep_patients_apart(bench) -> None:
    _, y, patients = _planted()
    folds = bench.patient_folds(y, patients, 3)
    scored = np.concatenate([s for _, s in folds])
    assert sorted(scored) == list(range(len(y)))
    for fit, held in folds:
        assert not set(patients[fit]) & set(patients[held])


def test_a_fold_of_one_class_is_refused(bench) -> None:
    y = np.array([0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="one class"):
        bench.patient_folds(y, np.array(["a", "a", "b", "b", "c", "c"]), 3)


def test_logistic_finds_a_planted_feature_and_not_noise(bench) -> None:
    from salad_lite.metrics import auc
    x, y, patients = _planted()
    fit, scored = bench.patient_folds(y, patients, 2)[0]
    assert auc(y[scored], bench.logistic_scores(x, y, patients, fit, scored)) > 0.95
    x[:, 0] = np.random.default_rng(1).normal(size=len(y))  # the feature gone: near chance
    assert auc(y[scored], bench.logistic_scores(x, y, patients, fit, scored)) < 0.8


def _cached(dataset) -> CachedXrayDataset:
    """A conftest ArrayDataset as the package's cached dataset (``subset`` needs ``.select``)."""
    meta = dataset.metadata.assign(path=[f"{p}.png" for p in dataset.metadata["patient_id"]],
                                   finding=["Lesion" if y else "No Finding" for y in dataset.labels])
    return CachedXrayDataset(dataset.images, meta)


def test_pca_scores_a_held_out_fold_with_the_chapters_protocol(bench, planted_splits) -> None:
    """The planted disks leave the normal span; folds of one validation split, patients kept apart."""
    val = _cached(planted_splits["val"])
    fit, scored = bench.patient_folds(val.labels, val.metadata["patient_id"].to_numpy(), 2)[0]
    assert bench.pca_fold_auc(_cached(planted_splits["train"]), val, fit, scored) > 0.9


@pytest.mark.parametrize(("argv", "message"), [
    (["--image-size", "48"], "model.image_size=48"),
    (["--folds", "1"], "--folds must be >= 2"),
    (["--data-root", "/nowhere/at/all"], "/nowhere/at/all"),
])
def test_bad_options_end_in_a_usage_error(bench, capsys: pytest.CaptureFixture[str], argv: list[str],
                                          message: str) -> None:
    with pytest.raises(SystemExit) as caught:
        bench.main(argv)
    assert caught.value.code == 2 and message in capsys.readouterr().err
