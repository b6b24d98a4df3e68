"""The ``salad-lite`` command line (also ``python -m salad_lite``): prepare data, train, evaluate, score.

::

    salad-lite prepare nih|mura|folder --root DIR [--image-size S] [--split-file CSV]
    salad-lite train (--config CFG.json | --profile P --dataset D) [--data-root DIR] --run-dir DIR
                     [--seed S] [--device D] [--split-file CSV]
    salad-lite evaluate --run-dir DIR [--seed S]
    salad-lite score --run-dir DIR (IMAGES... | --folder DIR) [--out scores.csv]

Run folders (relative paths are relative to the current directory)::

    DIR/run.json, DIR/config.json                  what train ran: configuration, data root, split file
    DIR/<dataset>/seed<s>/last.*, best.*           checkpoints (resumable), snapshots/
    DIR/<dataset>/seed<s>/history.json, .csv       one row per epoch (losses, validation AUC, seconds), after every epoch
    DIR/<dataset>/seed<s>/selection.json           K and bank policy chosen on validation (evaluate, score)
    DIR/<dataset>/seed<s>/threshold.json           the decision threshold chosen on validation (score)
    DIR/<dataset>/seed<s>/result.json              the test metrics of that replicate (evaluate)

Exit status: 0 on success; 2 for a wrong argument (argparse names it) and for
a data problem (``error: ...`` on stderr, :mod:`salad_lite.cli_errors`); 1 for a rank
whose data-parallel collective failed; 130 when ``train`` is interrupted (Ctrl-C;
rerun the same command to resume).
``train`` checks the device, the data and the split before it writes run.json.
Under ``torchrun`` (``WORLD_SIZE`` > 1) ``train`` first calls
``salad_lite.distributed.init_from_environment``; only rank 0 prints progress and
writes the run folder's files. Every rank prints its own errors, the others labelled
``error (rank R): ...``: an error only one rank meets (its node lacks the data) is not lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from salad_lite.cli_errors import DATA_ERRORS, EXIT_DATA_ERROR, TRACEBACK_ENV, check_run_dir, count, device_option, \
    int_at_least, number_type, positive_int, refuse_torchrun, seed_option
from salad_lite.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, ConfigError, SaladConfig, check_image_size, \
    paper_config, parse_class_map, profile_config
from salad_lite.data.registry import DATASETS
from salad_lite.synth import LIMB_MIN_PATIENTS

__all__ = ["build_parser", "main", "run"]

PROFILES = ("smoke", "default", "full")
#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
#: Exit status of a rank whose data-parallel collective failed (another rank died, hung or disagreed).
EXIT_COLLECTIVE_ERROR = 1


def _main_rank() -> bool:
    """True on rank 0 and in a single process; before the process group exists, from torchrun's ``RANK``.

    A ``RANK`` that is not a number counts as rank 0, so that the error it causes is printed.
    """
    import os

    from salad_lite import distributed

    if distributed.is_distributed():
        return distributed.is_main_process()
    raw = os.environ.get("RANK", "0").strip()
    return raw in ("", "0") or not raw.isdigit()


def _rank_label() -> str:
    """``""`` on rank 0 (and in a single process), else ``" (rank R)"``: how another rank's errors are labelled."""
    import os

    return "" if _main_rank() else f" (rank {os.environ.get('RANK', '?').strip()})"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are printed by rank 0 only (under torchrun); exit 2 on every rank."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        if _main_rank():
            super().error(message)
        self.exit(2)


# ---------------------------------------------------------------------------------------------- parser
#: ``--anomaly-ratio``: a number in [0, 1) (``argument --anomaly-ratio: must be a number in [0, 1), got '1.5'``).
_ratio = number_type(0.0, 1.0, high_open=True)


def _synthetic_patients(text: str) -> int:
    """A ``--synthetic`` value: 0 (render nothing) or at least the patients a loadable MURA set needs (2)."""
    if text.strip() == "0":
        return 0
    try:
        return int_at_least(text, LIMB_MIN_PATIENTS)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 0 (none) or an int >= {LIMB_MIN_PATIENTS} (one training and one validation patient), "
            f"got {text!r}") from None


def _image_size_type(dataset: str) -> Any:
    """The ``--image-size`` type of ``prepare <dataset>``: the config's rule for the dataset's paper arch."""
    arch = paper_config(dataset).model.arch

    def image_size(text: str) -> int:
        try:
            value = int(text)
            check_image_size(arch, value)
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(
                f"must be a power of two from {MIN_IMAGE_SIZE[arch]} to {MAX_IMAGE_SIZE} for {dataset} "
                f"(arch {arch}; train refuses other sizes), got {text!r}") from None
        return value

    return image_size


def _class_map_entry(text: str) -> str:
    """A ``--class-map`` value ``FOLDER=0`` or ``FOLDER=1`` (:func:`~salad_lite.config.parse_class_map`)."""
    try:
        parse_class_map([text], "--class-map", complete=False)  # one entry; the whole map is checked at use
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--class-map ")) from None
    return text


def _add_prepare_parser(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser(
        "prepare", help="validate a dataset's layout, build its split and image cache",
        description="Validate a dataset folder, build the split (seeded, or a published --split-file) and cache "
                    "the preprocessed images, so that train starts at once. Prints the split's counts.")
    kinds = prepare.add_subparsers(dest="dataset", metavar="{nih,mura,folder}", required=True)
    for name, text, description in (
            ("nih", "NIH ChestX-ray14 layout: Data_Entry_2017*.csv + images/",
             "Prepare a dataset in the NIH ChestX-ray14 layout: Data_Entry_2017*.csv + images/."),
            ("mura", "MURA v1.1 layout: {train,valid}_image_paths.csv, *_labeled_studies.csv",
             "Prepare a dataset in the MURA v1.1 layout: {train,valid}_image_paths.csv, *_labeled_studies.csv."),
            ("folder", "your images: normal/ + abnormal/ class folders, or a manifest.csv",
             "Prepare your own images: normal/ and abnormal/ class folders (other names with --class-map), "
             "or a manifest.csv.")):
        sub = kinds.add_parser(name, help=text, description=description)
        sub.set_defaults(subparser=sub)
        sub.add_argument("--root", required=True, help="the dataset folder (folder: also a manifest CSV)")
        sub.add_argument("--image-size", type=_image_size_type(name), default=None,
                         help=f"square side in pixels (default: the paper's, {paper_config(name).model.image_size})")
        sub.add_argument("--split-file", default="", metavar="CSV",
                         help="a published split: CSV of image and split name (train/val/test), checked for "
                              "patient leaks and missing images; default: the seeded patient-wise split")
        sub.add_argument("--anomaly-ratio", type=_ratio, default=0.05,
                         help="share of abnormal training images (AR) of the seeded split")
        sub.add_argument("--seed", type=seed_option, default=0, help="seed of the split")
        sub.add_argument("--max-train", type=count, default=0, help="cap on training images (0 = none)")
        sub.add_argument("--cache-dir", default=None, help="cache folder (default <root>/_cache)")
        sub.add_argument("--workers", type=positive_int, default=None, help="image reading threads")
        sub.add_argument("--no-progress", action="store_true", help="hide progress bars")
        if name == "nih":
            sub.add_argument("--csv", default=None, help="CSV to use instead of the one in --root")
            sub.add_argument("--view", default="all", choices=["PA", "AP", "all"],
                             help="view filter (paper: PA; train reads the 'all' cache)")
        if name == "folder":
            _add_class_map_argument(sub)
        if name == "mura":
            sub.add_argument("--preprocess", default="pipeline", choices=["pipeline", "resize"],
                             help="'pipeline': carrier warp + segmentation (paper); 'resize': resize + pad only")
            sub.add_argument("--mura-files", "--split-files", dest="mura_files", nargs="+", default=["train", "valid"],
                             choices=["train", "valid"], help="official CSV files to read (the paper re-splits "
                                                                "all of them; --split-files is the old name)")
            sub.add_argument("--body-parts", nargs="+", default=None, help="keep only these parts, e.g. WRIST HAND")
            sub.add_argument("--group-by", default="patient_id", choices=["patient_id", "patient"],
                             help="split groups: patient + body part (paper) or patient")
            sub.add_argument("--strict", action="store_true",
                             help="fail on listed images missing on disk (default: drop, warn)")
            sub.add_argument("--synthetic", type=_synthetic_patients, default=0, metavar="N",
                             help=f"first render a synthetic MURA-like set of N (>= {LIMB_MIN_PATIENTS}) patients "
                                  "into --root (0: none)")


def _add_run_arguments(sub: argparse.ArgumentParser, seed_help: str) -> None:
    sub.add_argument("--run-dir", required=True, help="the run folder (relative to the current directory)")
    sub.add_argument("--seed", type=seed_option, default=None, help=seed_help)
    sub.set_defaults(subparser=sub)
    sub.add_argument("--device", type=device_option, default="auto",
                     help="auto (CUDA when available), cpu, mps, cuda, cuda:1 ... (checked on this machine)")
    sub.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_class_map_argument(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--class-map", type=_class_map_entry, action="append", default=None, metavar="FOLDER=0|1",
                     help="folder datasets: the label of a class folder not named normal/abnormal, once per "
                          "folder: --class-map NORMAL=0 --class-map PNEUMONIA=1")


def build_parser() -> argparse.ArgumentParser:
    """The ``salad-lite`` argument parser (subcommands prepare, train, evaluate, score)."""
    parser = _Parser(
        prog="salad-lite", description="SALAD (Bozorgtabar et al., MICCAI 2020): self-supervised anomaly detection "
                                       "on X-rays. Prepare data, train, evaluate on the test split, score new images.")
    commands = parser.add_subparsers(dest="command", metavar="{prepare,train,evaluate,score}", required=True)
    _add_prepare_parser(commands)

    train = commands.add_parser(
        "train", help="train one replicate (resumable)",
        description="Train SALAD into --run-dir: pretraining, then the rounds of aggregation, checkpointed after "
                    "every epoch. A second call resumes an interrupted run or finds it finished. Without --config "
                    "and --profile the run folder's own run.json is reused (e.g. to train another --seed).")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--config", default=None, metavar="CFG.json", help="a configuration JSON (SaladConfig)")
    source.add_argument("--profile", choices=PROFILES, default=None, help="a book profile (needs --dataset)")
    train.add_argument("--dataset", choices=DATASETS, default=None, help="the dataset of --profile")
    train.add_argument("--data-root", default=None, metavar="DIR",
                       help="the data folder (default: the config's; empty: the embedded synthetic set)")
    train.add_argument("--split-file", default=None, metavar="CSV",
                       help="a published split (CSV of image and split name); default: the seeded split")
    _add_class_map_argument(train)
    _add_run_arguments(train, "replicate seed (default: the config's train.seed)")

    evaluate = commands.add_parser(
        "evaluate", help="select on validation, score the test split once",
        description="Choose K and the bank policy on the validation split, score the test split once with "
                    "Eq. 4 (and the same model's reconstruction error), print the metrics and write result.json.")
    _add_run_arguments(evaluate, "replicate seed (default: the one train recorded)")

    score = commands.add_parser(
        "score", help="anomaly scores of new images",
        description="Score new images with the trained model, the K and bank policy chosen on validation, and a "
                    "threshold chosen on validation (predicted = 1: abnormal). Writes CSV columns path, score "
                    "(higher = more abnormal), predicted.")
    score.add_argument("images", nargs="*", metavar="IMAGES", help="image files")
    score.add_argument("--folder", default=None, metavar="DIR", help="score every image under DIR (recursive)")
    score.add_argument("--out", default=None, metavar="CSV", help="write the scores here (default: stdout)")
    score.add_argument("--skip-unreadable", action="store_true",
                       help="skip unreadable images with a count on stderr (default: stop, naming the image)")
    _add_run_arguments(score, "replicate seed (default: the one train recorded)")
    return parser


# ---------------------------------------------------------------------------------------------- helpers
def _progress(args: argparse.Namespace) -> bool:
    from salad_lite.utils import progress_enabled

    return not args.no_progress and progress_enabled()


def _absolute(path: str) -> str:
    """An absolute path (``""`` stays ``""``): the run folder records where the data are, wherever it is read."""
    return str(Path(path).expanduser().resolve()) if path else ""


#: Library advice naming Python arguments -> the command line's options (every printed error goes through it).
_CLI_WORDS = (("pass csv_path=...", "pass --csv FILE"),
              ("pass class_map={'FOLDER': 0 or 1, ...}", "pass --class-map FOLDER=0 --class-map FOLDER=1"),
              ("drop the class map", "drop --class-map / data.class_map"),
              ("pass patient_id_fn, or use a manifest.csv", "use a manifest.csv"),
              ("dataset='folder' needs data_root", "the folder dataset needs --data-root"))
#: A user's --config is not a cache: it is fixed, not deleted.
_CONFIG_WORDS = (("; delete it to rebuild", "; fix the file (your configuration)"),)


def _reworded(error: Exception, words: tuple[tuple[str, str], ...] = _CLI_WORDS) -> Exception:
    """``error`` with the library's advice in the command line's words (its type kept where possible)."""
    text = str(error)
    new = text
    for old, word in words:
        new = new.replace(old, word)
    if new == text:
        return error
    try:
        return type(error)(new)
    except TypeError:
        return ValueError(new)


def _print_splits(splits: dict[str, Any]) -> None:
    from salad_lite.data.registry import describe_splits

    print(describe_splits(splits).to_string())


# ---------------------------------------------------------------------------------------------- prepare
def _prepare(args: argparse.Namespace) -> int:
    from salad_lite.data.registry import cache_dir_for, cached_splits, dataset_source, split_function

    root = Path(args.root).expanduser()
    size = args.image_size or paper_config(args.dataset).model.image_size
    progress = not args.no_progress
    options: dict[str, Any] = {}
    if args.split_file and Path(args.split_file).expanduser().is_dir():
        args.subparser.error(f"argument --split-file: {args.split_file} is a folder, not a CSV file")
    if args.dataset == "nih":
        options = {"view": args.view, "csv_path": args.csv}
    elif args.dataset == "mura":
        if args.synthetic > 0:
            from salad_lite.synth.limb import render_limb_set

            root = render_limb_set(root, n_patients=args.synthetic, progress=progress)
            print(f"synthetic set: {root}")
        options = {"mura_files": tuple(args.mura_files), "preprocess": args.preprocess,
                   "body_parts": tuple(args.body_parts) if args.body_parts else None,
                   "on_missing": "raise" if args.strict else "drop"}
    elif not root.exists():
        raise FileNotFoundError(f"folder root {root} does not exist")
    split_fn = split_function(args.dataset, args.anomaly_ratio, args.seed, args.max_train, args.split_file,
                              **({"group_column": args.group_by} if args.dataset == "mura" else {}))
    if args.dataset == "folder":
        options = {"class_map": parse_class_map(args.class_map or (), "--class-map")}
    lazy, name = dataset_source(args.dataset, root, size, **options)
    left_out: list[int] = []

    def checked_split(meta: pd.DataFrame) -> Any:  # train's rule: validation and test hold both classes
        from salad_lite.data.batches import require_both_classes

        positions = split_fn(meta)
        labels = meta["label"].to_numpy()
        for split in ("val", "test"):
            require_both_classes(labels[np.asarray(positions[split], dtype=np.int64)], split)
        if not left_out:  # the first call sees the whole file list
            left_out.extend([len(meta) - sum(len(rows) for rows in positions.values()), len(meta)])
        return positions

    print(f"{lazy} from {getattr(lazy, 'csv_path', None) or getattr(lazy, 'folder', None) or root}")
    if args.dataset == "mura":
        meta = lazy.metadata
        print("images per body part and label (0 normal, 1 abnormal):")
        print(meta.groupby(["body_part", "label"]).size().unstack(fill_value=0).to_string())
    cache_dir = Path(args.cache_dir) if args.cache_dir else cache_dir_for(root if root.is_dir() else root.parent)
    splits = cached_splits(lazy, cache_dir, name, checked_split, progress=progress, workers=args.workers)
    print(f"cache: {cache_dir / name}.npy")
    print(f"split: {args.split_file or f'seeded patient-wise split (AR {args.anomaly_ratio}, seed {args.seed})'}")
    if args.split_file and left_out and left_out[0]:
        print(f"the split file leaves {left_out[0]} of the dataset's {left_out[1]} images out (in no split)")
    counts = getattr(lazy, "fallback_counts", None)
    if counts and counts["processed"]:
        print(f"pipeline fallbacks: no carrier in {counts['no_carrier']} of {counts['processed']} images "
              f"(whole image used), segmentation discarded in {counts['mask_fallback']}")
    elif counts is not None and getattr(args, "preprocess", "") == "pipeline":
        print("images came from an existing cache (no preprocessing run)")
    _print_splits(splits)
    return 0


# ---------------------------------------------------------------------------------------------- train
def _train_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[SaladConfig, str]:
    """The run's configuration and split file from the arguments and the run folder's run.json (if any).

    A recorded run binds the folder once an epoch of it is saved: a new configuration
    must then equal it in every training setting. Its data root and split file are
    defaults only (for ``--profile`` and a bare continuation): where the images live
    is not the run's identity, the images are (each checkpoint records them, and the
    trainer refuses other training or validation images). A recorded run without a
    saved epoch (its first failed) supplies nothing but a bare continuation's config.
    """
    from salad_lite.experiment import RUN_DESCRIPTION, load_run_description
    from salad_lite.files import read_json

    stored = load_run_description(args.run_dir) if (Path(args.run_dir) / RUN_DESCRIPTION).is_file() else None
    bound = stored is not None and any(Path(args.run_dir).glob("*/seed*/*.safetensors"))
    if args.dataset is not None and args.profile is None:
        parser.error("argument --dataset: goes with --profile (a --config names its own dataset)")
    if args.config is not None:
        try:
            text = args.config.lstrip()  # SaladConfig.from_json also takes JSON text
            raw = json.loads(text) if text[:1] == "{" else read_json(args.config, "configuration")
            if isinstance(raw, dict) and isinstance(raw.get("data", {}), dict) \
                    and "dataset" not in raw.get("data", {}):  # the default would silently pick one
                raise ValueError(f"configuration {args.config} names no data.dataset: add \"data\": "
                                 "{\"dataset\": \"nih\"} (or \"mura\", \"folder\")")
            cfg = SaladConfig.from_json(args.config)
        except DATA_ERRORS as error:  # the user's own file: never "delete it to rebuild"
            raise _reworded(error, _CONFIG_WORDS) from None
    elif args.profile is not None:
        if args.dataset is None:
            parser.error("argument --profile: needs --dataset (nih, mura or folder)")
        cfg = profile_config(args.profile, args.dataset)
    elif stored is not None:
        cfg = stored[0]
    else:
        parser.error(f"one of the arguments --config --profile is required ({args.run_dir} holds no "
                     f"{RUN_DESCRIPTION} to continue)")
    if args.class_map is not None and cfg.data.dataset != "folder":
        parser.error(f"argument --class-map: labels class folders, so it needs the dataset folder, not "
                     f"{cfg.data.dataset!r}")
    defaults = stored if bound or (stored is not None and args.config is None and args.profile is None) else None
    if args.data_root is not None:
        data_root = args.data_root
    elif args.config is not None and cfg.data.data_root:  # a config file's own root is explicit
        data_root = cfg.data.data_root
    else:  # a profile's or config's "" is not: the recorded run's root, if any
        data_root = defaults[0].data.data_root if defaults is not None else cfg.data.data_root
    split_file = args.split_file if args.split_file is not None else (defaults[1] if defaults is not None else "")
    cfg = cfg.replace(data={"data_root": _absolute(data_root)})
    if args.seed is not None:
        cfg = cfg.replace(train={"seed": args.seed})
    cfg = cfg.replace(train={"progress": _progress(args)})
    if args.class_map is not None:
        parse_class_map(args.class_map, "--class-map")  # a folder named twice, in the option's words
        cfg = cfg.replace(data={"class_map": tuple(args.class_map)})
    if bound:
        from salad_lite.trainer import config_changes

        changes = config_changes(stored[0].replace(train={"seed": cfg.train.seed}), cfg)
        if changes:
            raise ValueError(f"run folder {args.run_dir} holds a run of another configuration "
                             f"({'; '.join(changes)}); use another --run-dir")
    return cfg, _absolute(split_file)


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from salad_lite import distributed
    from salad_lite.data.batches import check_splits

    check_run_dir(args.run_dir)
    cfg, split_file = _train_config(args, parser)
    distributed.init_from_environment(args.device)  # under torchrun (WORLD_SIZE > 1): join the process group
    main_process = distributed.is_main_process()
    from salad_lite.experiment import replicate_dir, save_run_description, splits_for
    from salad_lite.trainer import SaladTrainer

    waiting = "the wait for rank 0 to check the data and build the image cache"
    if not main_process:
        with distributed.collective_failure_context(waiting):
            distributed.barrier()  # rank 0 builds a missing image cache alone; the others then read it
    splits = splits_for(cfg, progress=_progress(args) and main_process, split_file=split_file)
    # what the trainer and evaluate will refuse, refused before the run folder records this run
    check_splits(splits, required=("train", "val", "test"), both_classes=("val", "test"))
    if main_process:
        with distributed.collective_failure_context(waiting):
            distributed.barrier()
    folder = replicate_dir(args.run_dir, cfg)
    trainer = SaladTrainer(cfg, splits["train"], splits["val"], run_dir=folder, device=args.device)
    _check_other_seeds(args.run_dir, cfg, trainer.data_fingerprint)
    if main_process:  # the trainer accepted the data and the folder's checkpoints: record the run
        save_run_description(args.run_dir, cfg, split_file)
        state = ("already finished" if trainer.is_finished else
                 f"resuming at epoch {trainer.epoch}" if trainer.epoch else "starting")
        print(f"{cfg.data.dataset} seed {cfg.train.seed}: {trainer.total_epochs} epochs, {state}; run folder {folder}")
    if not trainer.is_finished:
        try:
            trainer.fit()
        except KeyboardInterrupt:
            if main_process:
                print(f"interrupted at epoch {trainer.epoch}; rerun the same command to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    if main_process:  # the trainer rewrote history.json / .csv after every epoch
        best = trainer.load_best()
        print(f"selected on validation: epoch {best['selected_epoch']} (round {best['selected_round']}), "
              f"val AUC {best['best_val_auc']:.4f}; history in {folder / 'history.csv'}")
    return 0


def _check_other_seeds(run_dir: str, cfg: SaladConfig, fingerprint: str) -> None:
    """Refuse a seed whose training or validation images differ from those the folder's other seeds used.

    A run folder's seeds are replicates of one split (evaluate reads one run.json for all).

    Raises:
        ValueError: another seed's ``last`` checkpoint records other images (its file named).
    """
    from salad_lite.experiment import replicate_dir
    from salad_lite.files import read_json

    own = replicate_dir(run_dir, cfg)
    for other in sorted((Path(run_dir) / cfg.data.dataset).glob("seed*/last.json")):
        stored = read_json(other, "checkpoint metadata")
        if other.parent != own and isinstance(stored, dict) and stored.get("data_fingerprint", fingerprint) != fingerprint:
            raise ValueError(f"{other} was trained on other training or validation images than this call reads "
                             f"(data root {cfg.data.data_root or '(the embedded set)'}): the seeds of a run folder "
                             "are replicates of one split; restore the data, or use another --run-dir")


# ---------------------------------------------------------------------------------------------- evaluate, score
def _trained(args: argparse.Namespace) -> tuple[SaladConfig, dict[str, Any], Any]:
    """The recorded run's configuration (seed from ``--seed``), its splits and its finished trainer (best loaded).

    Raises:
        FileNotFoundError: no run folder or run.json.
        ValueError: the replicate is not trained to the end.
    """
    from salad_lite.experiment import load_run_description, replicate_dir, splits_for
    from salad_lite.trainer import SaladTrainer

    check_run_dir(args.run_dir)
    cfg, split_file = load_run_description(args.run_dir)
    cfg = cfg.replace(train={"progress": False, **({"seed": args.seed} if args.seed is not None else {})})
    if not any((replicate_dir(args.run_dir, cfg) / name).is_file() for name in ("last.json", "last.safetensors")):
        # one file of the pair alone is a damaged checkpoint, named by the trainer; neither: never trained
        seeds = {p.parent.name[4:] for p in (Path(args.run_dir) / cfg.data.dataset).glob("seed*/last.*")}
        trained = sorted(int(seed) for seed in seeds if seed.isdigit())
        raise FileNotFoundError(f"seed {cfg.train.seed} was never trained in {args.run_dir} (trained seeds: "
                                f"{', '.join(map(str, trained)) or 'none'})")
    root = Path(cfg.data.data_root)
    if cfg.data.data_root and not root.exists():
        raise FileNotFoundError(f"data root {root} recorded in {Path(args.run_dir) / 'run.json'} does not exist; if "
                                f"the data moved, record its new place with: salad-lite train --run-dir "
                                f"{args.run_dir} --data-root NEW")
    splits = splits_for(cfg, progress=_progress(args), split_file=split_file)
    trainer = SaladTrainer(cfg, splits["train"], splits["val"], run_dir=replicate_dir(args.run_dir, cfg),
                           device=args.device)
    if not trainer.is_finished:
        raise ValueError(f"seed {cfg.train.seed} of run folder {args.run_dir} is trained to epoch {trainer.epoch} of "
                         f"{trainer.total_epochs}: finish it first (salad-lite train --run-dir {args.run_dir} "
                         f"--seed {cfg.train.seed})")
    trainer.load_best()
    return cfg, splits, trainer


def _evaluate(args: argparse.Namespace) -> int:
    from salad_lite.experiment import evaluate_replicate, replicate_dir

    cfg, splits, trainer = _trained(args)
    result = evaluate_replicate(cfg, splits, args.run_dir, device=args.device, trainer=trainer)
    folder = replicate_dir(args.run_dir, cfg)
    print(f"{cfg.data.dataset} seed {result.seed}: model of epoch {result.selected_epoch} (round "
          f"{result.selected_round}); K {result.k}, discard anomalous {result.discard_anomalous} "
          f"(chosen on validation, AUC {result.val_auc:.4f})")
    print(f"test ({len(result.test_labels)} images, scored once): AUC {result.test_auc:.4f}, "
          f"AUPRC {result.test_auprc:.4f}; same AE's reconstruction error: AUC {result.reconstruction_test_auc:.4f}, "
          f"AUPRC {result.reconstruction_test_auprc:.4f}")
    print(f"written: {folder / 'result.json'}, {folder / 'selection.json'}")
    return 0


def _image_paths(args: argparse.Namespace) -> tuple[list[Path], int]:
    """The images to score and how many hidden / system files were skipped."""
    from salad_lite.data.generic import IMAGE_SUFFIXES
    from salad_lite.data.io import is_hidden_or_system, list_files

    if args.folder is not None:
        folder = Path(args.folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--folder {folder} is not an existing folder")
        paths = list_files(folder, IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f"--folder {folder} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return paths, 0
    given = [Path(p).expanduser() for p in args.images]
    folders = [p for p in given if p.is_dir()]
    if folders:
        raise IsADirectoryError(f"{folders[0]} is a folder, not an image: score the images under it with "
                                f"--folder {folders[0]}")
    paths = [p for p in given if not is_hidden_or_system(p)]
    if not paths:
        raise ValueError(f"no image to score: the {len(given)} file(s) given are hidden or system files")
    return paths, len(given) - len(paths)


def _read_images(paths: list[Path], dataset: str, image_size: int, skip: bool,
                 progress: bool) -> tuple[list[Path], np.ndarray, list[str]]:
    """Read and preprocess ``paths`` as the dataset's cache does: (kept paths, uint8 [M, S, S], skipped messages).

    Raises:
        salad_lite.data.io.ImageReadError: an unreadable image (named), unless ``skip``.
    """
    from tqdm.auto import tqdm

    from salad_lite.data.base import XrayDataset
    from salad_lite.data.io import ImageReadError
    from salad_lite.data.registry import image_preprocess

    meta = pd.DataFrame({"path": [str(p) for p in paths], "label": 0, "patient_id": "new", "finding": ""})
    reader = XrayDataset(meta, image_size=image_size, preprocess=image_preprocess(dataset, image_size))
    kept, images, skipped = [], [], []
    for i in tqdm(range(len(paths)), desc="reading images", unit="image", disable=not progress):
        try:
            images.append(reader.load_image(i))
        except ImageReadError as error:
            if not skip:
                raise
            skipped.append(str(error))
            continue
        kept.append(paths[i])
    if not kept:
        raise ValueError(f"none of the {len(paths)} image(s) could be read: {skipped[0]}")
    return kept, np.stack(images), skipped


def _selection(cfg: SaladConfig, trainer: Any, folder: Path) -> dict[str, Any]:
    """selection.json of the evaluate step, or (absent, or chosen from another grid, rule or model epoch)
    chosen now on the validation split and written."""
    from salad_lite.experiment import select_scoring, selection_basis
    from salad_lite.files import read_json, write_json_atomic

    path = folder / "selection.json"
    if path.is_file():
        selection = read_json(path, "scoring selection")
        basis = selection_basis(trainer)
        if isinstance(selection, dict) and {"k", "discard_anomalous"} <= set(selection) \
                and {name: selection.get(name) for name in basis} == basis:
            return selection
    selection = select_scoring(trainer)
    write_json_atomic(path, selection, indent=2)
    return selection


def _score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if bool(args.images) == (args.folder is not None):
        parser.error("argument IMAGES: give image files or --folder DIR (one of them)")
    if args.out and Path(args.out).expanduser().is_dir():
        parser.error(f"argument --out: {args.out} is a folder; give the CSV file to write, "
                     f"e.g. {Path(args.out) / 'scores.csv'}")
    from salad_lite.data.base import CachedXrayDataset
    from salad_lite.experiment import replicate_dir
    from salad_lite.files import CorruptFileError, read_json, write_json_atomic, write_text_atomic
    from salad_lite.scorer import SaladScorer

    paths, hidden = _image_paths(args)
    cfg, splits, trainer = _trained(args)
    folder = replicate_dir(args.run_dir, cfg)
    selection = _selection(cfg, trainer, folder)
    try:  # the scorer checks the stored K and discard policy by type
        scorer = SaladScorer(k=selection["k"], discard_anomalous=selection["discard_anomalous"], rule=cfg.score.rule)
    except ValueError as error:
        raise CorruptFileError(f"{folder / 'selection.json'}: {error}; delete the file to choose them again on the "
                               f"validation split") from None
    scorer.fit(trainer.scoring_bank(), trainer.train_labels)
    threshold_path = folder / "threshold.json"
    key = {"k": scorer.k, "discard_anomalous": scorer.discard_anomalous, "selected_epoch":
           trainer.selected["selected_epoch"]}
    stored = read_json(threshold_path, "decision threshold") if threshold_path.is_file() else None
    if isinstance(stored, dict) and {name: stored.get(name) for name in key} == key and "threshold" in stored:
        try:
            scorer.threshold_ = stored["threshold"]
        except ValueError as error:
            raise CorruptFileError(f"{threshold_path}: {error}; delete the file to choose the threshold "
                                   f"again on the validation split") from None
    else:  # Youden's J on the validation split: never the test split
        scorer.set_threshold(trainer.embed(splits["val"]), trainer.val_labels)
        write_json_atomic(threshold_path, {**key, "threshold": scorer.threshold_, "chosen_on": "validation"}, indent=2)
    kept, images, skipped = _read_images(paths, cfg.data.dataset, cfg.model.image_size, args.skip_unreadable,
                                         _progress(args))
    meta = pd.DataFrame({"path": [str(p) for p in kept], "label": 0, "patient_id": "new", "finding": ""})
    z = trainer.embed(CachedXrayDataset(images, meta))
    scores = scorer.decision_function(z)
    table = pd.DataFrame({"path": [str(p) for p in kept], "score": scores.astype(np.float64),
                          "predicted": (scores >= scorer.threshold_).astype(np.int64)})
    text = table.to_csv(index=False)
    if args.out:
        write_text_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    notes = [f"skipped {hidden} hidden or system file(s)"] if hidden else []
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable image(s): {'; '.join(skipped[:3])}"
                     + (" ..." if len(skipped) > 3 else ""))
    for note in notes:
        print(note, file=sys.stderr)
    print(f"scored {len(kept)} image(s) with K {scorer.k_}, discard anomalous {scorer.discard_anomalous}, "
          f"threshold {scorer.threshold_:.6g} (chosen on validation)" + (f"; written to {args.out}" if args.out else ""),
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- entry points
def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; argparse's errors and ``--help`` raise ``SystemExit`` (status 2 / 0).

    Returns:
        0 on success; 2 after a data problem (``error: ...`` on stderr, :func:`salad_lite.cli_errors.data_script`);
        1 for a rank whose data-parallel collective failed; 130 after Ctrl-C in ``train``.

    Raises:
        SystemExit: a wrong argument (status 2, the argument named) or ``--help`` (status 0).
    """
    import os

    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.command != "train":
        refuse_torchrun(args.subparser, args.command, "; only train is data-parallel")
    shown_as = warnings.formatwarning  # only how a shown warning reads changes (filters and recorders stay)
    warnings.formatwarning = format_warning
    try:
        if args.command == "prepare":
            return _prepare(args)
        if args.command == "train":
            return _train(args, args.subparser)
        if args.command == "evaluate":
            return _evaluate(args)
        return _score(args, args.subparser)
    except Exception as error:  # data problems as salad_lite.cli_errors.data_script; failed ranks under torchrun
        from salad_lite.distributed import CollectiveError

        if not isinstance(error, (*DATA_ERRORS, CollectiveError)) or os.environ.get(TRACEBACK_ENV, "").strip() == "1":
            raise
        print(f"error{_rank_label()}: {_reworded(error)}", file=sys.stderr)
        return EXIT_COLLECTIVE_ERROR if isinstance(error, CollectiveError) else EXIT_DATA_ERROR
    finally:
        warnings.formatwarning = shown_as


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """A warning as the command line shows it (``warnings.formatwarning`` while it runs).

    ``warning: <message>`` in the command line's words (no Python argument names), without
    the source line; nothing on ranks other than 0.
    """
    if not _main_rank():
        return ""
    return f"warning: {_reworded(message) if isinstance(message, Exception) else message}\n"


def main(argv: list[str] | None = None) -> int:
    """The ``salad-lite`` console script: :func:`run`, with argparse's exits returned as the status.

    Returns:
        0 on success (also after ``--help``); 2 for a wrong argument (argparse's
        message names it) or a data problem (``error: ...`` on stderr); 1 for a rank
        whose data-parallel collective failed; 130 after Ctrl-C in ``train``.

    Raises:
        Exceptions that are neither data problems nor argument errors (bugs keep their traceback).
    """
    try:
        return run(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)


if __name__ == "__main__":
    raise SystemExit(main())
