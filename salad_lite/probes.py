"""What does the latent encode? k-NN probes of per-image targets, and the targets of a split.

Analysis code for the book (no model, no training). An image's nearest latent
neighbours predict a property of the image to the extent that the latent
encodes it. :func:`latent_predictability` measures this for every column of a
table of per-image targets, under K-fold cross-validation, with scikit-learn's
k-NN estimators on the cosine similarity of the latents (a k-NN probe, as in
the instance-discrimination literature: Wu et al. 2018, "Unsupervised feature
learning via non-parametric instance discrimination", CVPR):

- a continuous target (breast thickness, film shift, field of view...) gets
  the cross-validated R² of a k-NN regressor (0 = no better than the mean);
- a categorical or two-valued target (label, view, marker, a finding...) gets
  the cross-validated accuracy of a k-NN classifier beside the majority-class
  rate, and a two-class target also the AUC of the neighbours' vote share.

:func:`image_parameters` builds that table for a split: the columns of the
split's metadata (label, view, age, sex, one 0/1 column per finding) and, for
the embedded synthetic chest set, the renderer's per-image parameters
(``synth_metadata.csv`` beside the set's ``Data_Entry_2017.csv``, read only when
the renderer's manifest is there too), aligned row by row with the split's images.

The probe is the measurement of issue 9: on the default model (seed 0,
validation images) the latent predicted breast thickness, film shift,
inspiration and field of view far better than the label.
:func:`describe_probe` and :func:`describe_formation` turn the numbers into
the sentences chapter 4 prints.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from salad_lite.config import MAX_SEED
from salad_lite.data.base import read_text_csv, text_to_numbers
from salad_lite.data.findings import finding_column
from salad_lite.knn import unit_rows
from salad_lite.synth import CHEST_MANIFEST, CHEST_METADATA, embedded_side_file
from salad_lite.utils import is_finite_number

__all__ = [
    "PROBE_KINDS",
    "RENDER_CATEGORIES",
    "RENDER_NUMBERS",
    "SYNTH_METADATA",
    "ProbeWarning",
    "describe_formation",
    "describe_probe",
    "image_parameters",
    "latent_predictability",
]

#: The renderer's per-image table, beside the embedded chest set's ``Data_Entry_2017.csv``
#: (:data:`salad_lite.synth.CHEST_METADATA`).
SYNTH_METADATA = CHEST_METADATA
#: Renderer columns read as numbers (pose, anatomy, geometry, exposure and post-processing).
RENDER_NUMBERS: tuple[str, ...] = (
    "tilt_deg", "turn_deg", "soft_gain", "bone_gain", "lung_gain", "heart_t", "lateral_scale", "inspiration",
    "breast_mm", "inplane_deg", "fov_mm", "shift_x_mm", "shift_y_mm", "exposure_k", "window_lo", "window_hi",
    "gamma", "noise", "equalise", "sharpen", "collimation_value",
)
#: Renderer columns read as categories (an empty caption is the category ``"none"``).
RENDER_CATEGORIES: tuple[str, ...] = ("marker", "marker_corner", "caption")
#: What :func:`latent_predictability` reports: a target's ``kind`` column.
PROBE_KINDS: tuple[str, ...] = ("r2", "accuracy", "auc")
_METADATA_CATEGORIES: tuple[str, ...] = ("label", "view", "sex")
_METADATA_NUMBERS: tuple[str, ...] = ("age",)


class ProbeWarning(UserWarning):
    """A probe skipped target columns it cannot score (the message counts and names them)."""


# --------------------------------------------------------------------------- the probe
#: A text column of numbers with more values than this is probed as classes with a warning (an age written as text).
MAX_TEXT_CLASSES = 10


def _is_categorical(column: pd.Series) -> bool:
    """Text, category and bool columns, and numbers with exactly two values, are classified; other numbers regressed.

    Text stays text even when it is all numbers (grades ``"0"``..``"4"`` are classes); ``kinds`` asks for a
    regression of such a column.
    """
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return True
    return column.nunique(dropna=True) == 2


def _is_number_column(column: pd.Series) -> bool:
    """A numeric (not bool) column: what a regression can fit."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _numeric_text(column: pd.Series) -> pd.Series:
    """A text column whose every entry is a finite number written as text (``"58"``, ``" 2.5"``) as numbers
    (:func:`~salad_lite.data.base.text_to_numbers`); any other column unchanged."""
    if _is_number_column(column) or isinstance(column.dtype, pd.CategoricalDtype) or len(column) == 0:
        return column
    if all(isinstance(v, str) for v in column):
        numbers, bad = text_to_numbers(column, required=True)
        return column if len(bad) else numbers
    if all(is_finite_number(v) for v in column):  # Python or NumPy numbers in an object column
        return pd.to_numeric(column)
    return column


def _int_argument(name: str, value: Any, low: int, high: int, why: str = "") -> int:
    """``value`` as an int when it is an int (not bool) in ``low..high``; ValueError naming ``name`` otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int in {low}..{high}{why}, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must lie in {low}..{high}{why}, got {name}={value!r}")
    return int(value)


def _infinite_count(column: pd.Series) -> int:
    """How many entries of ``column`` are +-inf (numbers of a numeric column, or float entries of any other)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return int(np.isinf(column.to_numpy(np.float64, na_value=np.nan)).sum())
    return int(sum(isinstance(v, (float, np.floating)) and math.isinf(v) for v in column))


def _folds(n: int, folds: int, seed: int, classes: np.ndarray | None) -> Any:
    """Shuffled K folds; stratified for a classification target whose every class has ``folds`` members."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if classes is not None and np.bincount(classes).min() >= folds:
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return KFold(n_splits=folds, shuffle=True, random_state=seed)


def latent_predictability(latents: Any, targets: pd.DataFrame, k: int = 10, folds: int = 5, seed: int = 0,
                          kinds: Mapping[str, str] | None = None) -> pd.DataFrame:
    """How well an image's k nearest latent neighbours predict each per-image target (cross-validated k-NN probe).

    For every column of ``targets``, a k-NN estimator on the latents (cosine
    metric on the unit rows, brute-force search, uniform votes) predicts each
    image from the other folds of a shuffled K-fold split
    (``sklearn.model_selection.cross_val_predict``):

    - a continuous column: ``KNeighborsRegressor``, score = R² of the
      out-of-fold predictions (``kind="r2"``, baseline 0: predicting the mean;
      negative when worse);
    - a categorical column (text, category, bool, or numbers with exactly two
      values): ``KNeighborsClassifier``, score = accuracy of the out-of-fold
      predictions (``kind="accuracy"``, baseline = the majority-class rate of
      the column); the folds are stratified when every class has ``folds``
      members. A two-class column gets a second row (``kind="auc"``, baseline
      0.5): the AUC of the out-of-fold share of neighbours voting for the
      second class (the larger value, e.g. label 1 = abnormal).

    Args:
        latents: ``[N, d]`` tensor or array (need not be normalised; rows are
            divided by their L2 norm).
        targets: ``N`` rows aligned with ``latents`` (row i describes latent
            i), one column per target; its index must be ``0..N-1`` in order
            (a shuffled or filtered frame is refused, not silently paired by
            position: reorder it to the latents, then ``reset_index(drop=True)``).
            Text is classified, also when it is all numbers (``"58"``, as
            :func:`~salad_lite.data.base.read_text_csv` keeps them), with a
            ``UserWarning`` when such a column has more than
            :data:`MAX_TEXT_CLASSES` values; ``kinds={name: "regression"}``
            regresses it as numbers.
        k: neighbours per prediction, at most the size of the smallest
            training part (``N - ceil(N / folds)``).
        folds: number of cross-validation folds, at least 2.
        seed: seeds the shuffle of the folds.
        kinds: column -> ``"regression"`` or ``"classification"``, overriding
            the rule above (e.g. a pose id written as a number).

    Returns:
        One row per scored target and kind, in the column order of
        ``targets``: ``target``, ``kind`` (:data:`PROBE_KINDS`), ``score``,
        ``baseline``, ``n`` (images scored).

    Columns that cannot be scored are skipped, with ONE :class:`ProbeWarning`
    that counts them and names each with its reason: missing values (NaN,
    None) or infinite values (the counts are given), a single value (R² and
    accuracy say nothing).

    Raises:
        TypeError: ``targets`` is not a DataFrame.
        ValueError: ``latents`` is not ``[N, d]`` numbers with finite, non-zero rows;
            ``targets`` has not N rows, an index other than ``0..N-1`` in order,
            no column, or repeats a column name; ``folds`` not an int in 2..N;
            ``k`` not an int in 1..the smallest training part; ``seed`` not an
            int in 0..2**32 - 1 (NumPy's range); a bool for any of them;
            ``kinds`` names an unknown column or kind, or asks ``"regression"``
            of a column that is not numbers (the column named); no column can be scored.
    """
    from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    x = unit_rows(latents, "latents").numpy().astype(np.float64)
    n = x.shape[0]
    if not isinstance(targets, pd.DataFrame):
        raise TypeError(f"targets must be a pandas DataFrame, got {type(targets).__name__}")
    if len(targets) != n:
        raise ValueError(f"targets has {len(targets)} rows for {n} latents; row i must describe latent i")
    if not targets.index.equals(pd.RangeIndex(n)):
        raise ValueError(f"targets' index must be 0..{n - 1} in order (row i describes latent i), got "
                         f"{targets.index[:5].tolist()}{' ...' if n > 5 else ''}: a shuffled or filtered frame would "
                         "pair targets with the wrong latents; reorder it to the latents, then "
                         "reset_index(drop=True)")
    if targets.shape[1] == 0:
        raise ValueError("targets has no column to probe")
    if targets.columns.duplicated().any():
        raise ValueError(f"targets repeats column(s) {sorted(map(str, targets.columns[targets.columns.duplicated()]))}")
    folds = _int_argument("folds", folds, 2, n, " (the number of images)")
    smallest_train = n - math.ceil(n / folds)
    k = _int_argument("k", k, 1, smallest_train, f" (the smallest training part of {folds} folds over {n} images)")
    seed = _int_argument("seed", seed, 0, MAX_SEED, " (NumPy's seed range)")
    kinds = dict(kinds or {})
    unknown = sorted(set(kinds) - set(targets.columns))
    bad_kind = sorted({v for v in kinds.values()} - {"regression", "classification"})
    if unknown or bad_kind:
        raise ValueError(f"kinds names unknown column(s) {unknown} or kind(s) {bad_kind}; kinds are "
                         "'regression' or 'classification'")

    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name in targets.columns:
        column = targets[name].reset_index(drop=True)
        missing, infinite = int(column.isna().sum()), _infinite_count(column)
        if missing or infinite:
            counts = [f"{missing} missing value(s)"] * bool(missing) + [f"{infinite} infinite value(s)"] * bool(infinite)
            skipped.append(f"{name!r} ({', '.join(counts)})")
            continue
        if column.nunique() < 2:
            skipped.append(f"{name!r} (a single value)")
            continue
        classify = kinds[name] == "classification" if name in kinds else _is_categorical(column)
        as_numbers = _numeric_text(column)
        if not classify:
            column = as_numbers  # a regression asked of numbers written as text ("58")
        elif name not in kinds and as_numbers is not column and column.nunique() > MAX_TEXT_CLASSES:
            warnings.warn(f"column {name!r} holds numbers stored as text or objects with {column.nunique()} values: probed "
                          f"as {column.nunique()} classes; pass kinds={{{name!r}: 'regression'}} to regress it",
                          UserWarning, stacklevel=2)
        if not classify and not _is_number_column(column):
            shown = next(v for v in column if not is_finite_number(v))
            raise ValueError(f"kinds[{name!r}] is 'regression' but column {name!r} is not numbers (e.g. {shown!r}); "
                             "convert it or probe it as 'classification'")
        if not classify:
            y = column.to_numpy(np.float64)
            model = KNeighborsRegressor(n_neighbors=k, metric="cosine", algorithm="brute")
            predicted = cross_val_predict(model, x, y, cv=_folds(n, folds, seed, None))
            rows.append({"target": name, "kind": "r2", "score": float(r2_score(y, predicted)), "baseline": 0.0,
                         "n": n})
            continue
        codes, _ = pd.factorize(column, sort=True)  # class c = the c-th smallest value
        model = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        with warnings.catch_warnings():  # a rare class absent from a training fold gets probability 0
            warnings.filterwarnings("ignore", message="Number of classes in training fold")
            proba = cross_val_predict(model, x, codes, cv=_folds(n, folds, seed, codes), method="predict_proba")
        counts = np.bincount(codes)
        rows.append({"target": name, "kind": "accuracy",
                     "score": float(accuracy_score(codes, proba.argmax(axis=1))),
                     "baseline": float(counts.max() / n), "n": n})
        if len(counts) == 2:
            rows.append({"target": name, "kind": "auc", "score": float(roc_auc_score(codes, proba[:, 1])),
                         "baseline": 0.5, "n": n})
    if skipped:
        warnings.warn(f"latent_predictability skipped {len(skipped)} of {targets.shape[1]} target column(s): "
                      + ", ".join(skipped), ProbeWarning, stacklevel=2)
    if not rows:
        raise ValueError("no target column can be scored (every column was skipped, see the warning)")
    return pd.DataFrame(rows, columns=["target", "kind", "score", "baseline", "n"])


# --------------------------------------------------------------------------- the targets of a split
def _image_names(metadata: pd.DataFrame) -> pd.Series:
    """Each row's image file name: the NIH ``image_index`` column, else the file name of ``path``."""
    if "image_index" in metadata.columns:
        return metadata["image_index"].astype(str).str.strip().reset_index(drop=True)
    return metadata["path"].map(lambda p: os.path.basename(str(p))).reset_index(drop=True)


def _finding_columns(findings: pd.Series) -> pd.DataFrame:
    """One 0/1 column ``finding_<name>`` per finding of a ``|``-separated column, sorted by name.

    Read by :func:`salad_lite.data.findings.finding_column`: the normal words
    (``No Finding``, ``normal``, ``none``, empty; any case) give no column, a missing
    entry (None, NaN) is a ValueError naming its position.
    """
    split = [set(names) for names in finding_column(findings, "metadata 'finding'")]
    names = sorted(set().union(*split)) if split else []
    return pd.DataFrame({f"finding_{name}": np.array([int(name in s) for s in split], dtype=np.int64)
                         for name in names}, index=pd.RangeIndex(len(split)))


def image_parameters(dataset: Any, root: str | os.PathLike[str] | None = None, *,
                     findings: bool = True) -> pd.DataFrame:
    """Per-image targets of a split for :func:`latent_predictability`, row i describing image i.

    Args:
        dataset: a split (e.g. ``load_splits(...)["val"]``) with ``.metadata``
            (columns ``label``, ``finding``, ``path``; ``image_index``, ``view``,
            ``age``, ``sex`` when the loader has them).
        root: the folder of the set (the NIH root holding
            ``Data_Entry_2017.csv``); None uses ``dataset.root``. When it holds
            :data:`SYNTH_METADATA` and the renderer's manifest beside it (the
            embedded synthetic chest set, :func:`salad_lite.synth.embedded_side_file`:
            a table of that name in a real download is not read), the renderer's
            parameters are added.
        findings: add one 0/1 column ``finding_<name>`` per finding present in
            the split.

    Returns:
        DataFrame of ``len(dataset)`` rows (index 0..N-1): ``label`` and those
        of ``view``, ``sex``, ``age`` the metadata has; ``finding_<name>``
        columns; with a renderer table, :data:`RENDER_NUMBERS` (float) and
        :data:`RENDER_CATEGORIES` (text) that it holds. Real data (no renderer
        table) give the metadata columns only.

    Raises:
        TypeError: ``dataset`` has no ``.metadata`` table; a ``finding`` that is not text.
        ValueError: a missing ``finding`` (None, NaN; position named); the renderer table lacks ``Image Index``, lists an image
            twice, misses images of the split (counted, first names given), or
            holds a parameter that is not a number (column and images named).
        CorruptFileError: the renderer table cannot be parsed as CSV.
    """
    metadata = getattr(dataset, "metadata", None)
    if not isinstance(metadata, pd.DataFrame):
        raise TypeError(f"{type(dataset).__name__} has no .metadata table")
    metadata = metadata.reset_index(drop=True)
    table = pd.DataFrame(index=pd.RangeIndex(len(metadata)))
    for name in _METADATA_CATEGORIES:
        if name in metadata.columns:
            table[name] = metadata[name].to_numpy()
    if findings and "finding" in metadata.columns:
        table = pd.concat([table, _finding_columns(metadata["finding"])], axis=1)
    for name in _METADATA_NUMBERS:
        if name in metadata.columns:
            table[name] = pd.to_numeric(metadata[name], errors="coerce").to_numpy(np.float64)
    folder = root if root not in (None, "") else getattr(dataset, "root", None)
    csv = embedded_side_file(folder, CHEST_METADATA, CHEST_MANIFEST)  # the rule of data/findings.py too
    if csv is None:
        return table
    render = read_text_csv(csv, what="renderer table")
    if "Image Index" not in render.columns:
        raise ValueError(f"{csv} lacks the column 'Image Index'; found {list(render.columns)}")
    keys = render["Image Index"].str.strip()
    if keys.duplicated().any():
        raise ValueError(f"{csv} lists image(s) twice: {keys[keys.duplicated()].head(3).tolist()}")
    position = pd.Series(np.arange(len(render)), index=keys.to_numpy())
    names = _image_names(metadata)
    found = names.isin(position.index).to_numpy()
    if not found.all():
        raise ValueError(f"{csv} misses {int((~found).sum())} of the split's {len(names)} images, e.g. "
                         f"{names[~found].head(3).tolist()}; is it the table of another set?")
    render = render.iloc[position[names].to_numpy()].reset_index(drop=True)
    for name in RENDER_NUMBERS:
        if name in render.columns:
            numbers, bad = text_to_numbers(render[name], required=True)
            if len(bad):
                shown = dict(zip(render["Image Index"].iloc[bad[:5]], render[name].iloc[bad[:5]]))
                raise ValueError(f"{csv}: column {name!r} holds {len(bad)} value(s) that are not finite "
                                 f"numbers; image: value {shown}")
            table[name] = numbers.to_numpy(np.float64)
    for name in RENDER_CATEGORIES:
        if name in render.columns:
            table[name] = render[name].str.strip().replace("", "none").to_numpy(object)
    return table


# --------------------------------------------------------------------------- the book's sentences
def _score(table: pd.DataFrame, target: str, kind: str) -> float | None:
    """The score of (target, kind) in a probe table, None when absent."""
    hit = table[(table["target"] == target) & (table["kind"] == kind)]
    return float(hit["score"].iloc[0]) if len(hit) else None


def _signed(delta: float, digits: int) -> str:
    """``+0.06`` / ``-0.01``; a change that rounds to zero is ``±0.00`` (never ``-0.00``)."""
    text = f"{abs(delta):.{digits}f}"
    return f"±{text}" if float(text) == 0 else f"{'+' if delta > 0 else '-'}{text}"


def _change(now: float, before: pd.DataFrame | None, target: str, kind: str, before_name: str) -> str:
    """``", +0.12 from 0.40 at <before_name>"``, or "" without an earlier score."""
    then = _score(before, target, kind) if before is not None else None
    if then is None:
        return ""
    return f", {_signed(now - then, 2)} from {then:.2f} at {before_name}"


def _shown(value: Any) -> str:
    """A value for a message: NumPy scalars as their Python value (``nan``, not ``np.float64(nan)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_probe_numbers(probe: pd.DataFrame, name: str) -> None:
    """Refuse a probe table whose ``score`` or ``baseline`` is not a finite number, naming the row's target and kind."""
    for column in ("score", "baseline"):
        bad = [i for i, v in enumerate(probe[column].tolist()) if not is_finite_number(v)]
        if bad:
            row = probe.iloc[bad[0]]
            raise ValueError(f"{name} holds {len(bad)} {column}(s) that are not finite numbers, first "
                             f"{_shown(row[column])} of target {row['target']!r} ({row['kind']}); "
                             "latent_predictability() never writes one")


def describe_probe(table: pd.DataFrame, label: str | None = "label", top: int = 3,
                   before: pd.DataFrame | None = None, before_name: str = "pre-training") -> str:
    """Sentences on a :func:`latent_predictability` table: the best-predicted continuous targets, then the label.

    Args:
        table: the probe of the stage described.
        label: the target reported with accuracy, majority rate and AUC; None
            reports no label. ``"label"`` (the default, or given) is left out when
            the table has no such target (a one-class split skips it); any other
            name must be a target of ``table``.
        top: how many of the highest R² to name, an int >= 1.
        before: the probe of an earlier stage (same targets): each number then
            also says how far it moved since ``before_name``.

    Raises:
        ValueError: the table lacks :func:`latent_predictability`'s columns, or holds a
            score or baseline that is not a finite number (NaN; target named); ``label`` is
            not a target of ``table`` (the targets listed); ``top`` not an int >= 1; or the
            table has neither an R² row nor an accuracy row of ``label``.
    """
    for name, probe in (("table", table), ("before", before)):
        missing = [] if probe is None else sorted({"target", "kind", "score", "baseline"} - set(probe.columns))
        if missing:
            raise ValueError(f"{name} lacks the columns {missing} of latent_predictability()'s table")
        if probe is not None:
            _check_probe_numbers(probe, name)
    top = _int_argument("top", top, 1, 2**31 - 1, " (how many R² to name)")
    if label is not None and label != "label" and label not in set(table["target"]):
        raise ValueError(f"label={label!r} is not a target of the probe table (targets: "
                         f"{sorted(map(str, set(table['target'])))}); pass label=None to report none")
    r2 = table[table["kind"] == "r2"].sort_values("score", ascending=False).head(top)
    lines = []
    if len(r2):
        named = "; ".join(f"{t} (R² {s:.2f}{_change(s, before, t, 'r2', before_name)})"
                          for t, s in zip(r2["target"], r2["score"]))
        lines.append(f"Best predicted by the nearest latent neighbours: {named}.")
    accuracy = table[(table["target"] == label) & (table["kind"] == "accuracy")]
    if len(accuracy):
        score, majority = float(accuracy["score"].iloc[0]), float(accuracy["baseline"].iloc[0])
        text = (f"The {label}: k-NN accuracy {score:.2f} against a majority rate of {majority:.2f}"
                f"{_change(score, before, label, 'accuracy', before_name)}")
        auc = _score(table, label, "auc")
        if auc is not None:
            moved = _change(auc, before, label, "auc", before_name)
            text += f"; AUC of the neighbours' vote {auc:.2f} (0.5 = chance{moved})"
        lines.append(text + ".")
    if not lines:
        raise ValueError(f"the probe table has no R² row and no accuracy row of {label!r}")
    return "\n".join(lines)


def describe_formation(formation: pd.DataFrame,
                       columns: Sequence[str] = ("neighbour_cosine", "knn_purity", "silhouette"),
                       tolerance: float = 0.005) -> str:
    """One line per measure of a ``cluster_formation`` table: up or down from the first to the last round, by how much.

    Each line says whether the measure rose or fell (or is unchanged at three
    decimals), the change and both values; a change smaller than ``tolerance``
    (absolute, a finite number >= 0) is marked as negligible. The k-NN purity
    line also gives the chance purity.

    Raises:
        ValueError: fewer than two rounds, a column missing, a value of the
            first or last round that is not a finite number (NaN: column and
            round named), or ``tolerance`` not a finite number >= 0.
    """
    if not is_finite_number(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if len(formation) < 2:
        raise ValueError("describe_formation needs at least two rounds")
    missing = [c for c in columns if c not in formation.columns]
    if missing:
        raise ValueError(f"the formation table lacks {missing}; expected cluster_formation()'s columns")
    first, last = formation.iloc[0], formation.iloc[-1]
    r0, r1 = formation.index[0], formation.index[-1]
    used = list(columns) + (["chance_purity"] if "knn_purity" in columns and "chance_purity" in formation.columns
                            else [])
    for name in used:
        for r, row in ((r0, first), (r1, last)):
            if not is_finite_number(row[name]):
                raise ValueError(f"the formation table's {name!r} at round {r} is {_shown(row[name])}, not a finite "
                                 "number; leave that column out (columns=...)")
    lines = []
    for name in columns:
        before, after = float(first[name]), float(last[name])
        change = _signed(after - before, 3)
        verb = "unchanged" if change.startswith("±") else ("rose" if after > before else "fell")
        text = f"{name}: {verb} from round {r0} to {r1}, {before:.3f} -> {after:.3f} ({change}"
        text += f", under {tolerance:g}: negligible)" if abs(after - before) < tolerance else ")"
        if name == "knn_purity" and "chance_purity" in formation.columns:
            text += f"; chance {float(first['chance_purity']):.3f}"
        lines.append(text)
    return "\n".join(lines)
