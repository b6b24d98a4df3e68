"""Training throughput (images/s) of the book's CPU profiles, and what to try to raise it.

For each profile (:func:`salad_lite.config.profile_config`):

- ``smoke-nih``: ``profile_config("smoke", "nih")``, conv AE 32 px, width 8;
- ``default-nih``: ``profile_config("default", "nih")``, conv AE 64 px, width 16;
- ``default-mura``: ``profile_config("default", "mura")``, ResNet-18 AE 64 px;

one timed step is one call of ``SaladTrainer.train_step`` in the pretraining round
(round 0, the profile's ``loss.num_views``), with the profile's batch, on random uint8
images held in memory (:class:`bench_train_step.RandomImages`; N = the profile's
``data.max_train_images``, at most 515, the default NIH profile's training split).
Variants, each with its own trainer on the same model and size:

- ``reference``: fp32 eager, ``channels_last`` as the profile sets it
  (``TrainConfig.channels_last``), ``--threads`` torch threads (2): 1.00x;
- ``channels_last flipped``: the other memory format;
- ``1 thread``: ``torch.set_num_threads(1)`` around each of its steps;
- ``torch.compile``: the trainer's forward module (model forward, plus the views'
  encoder pass) wrapped by ``torch.compile`` (mode default). Its first call compiles
  (forward and backward); that time is printed apart ("compile") and is not in the
  steady-state rate. A compile that fails or exceeds ``--compile-timeout`` is reported
  with its error and the variant dropped; the other variants still run. Inductor's cache
  is a fresh temporary folder (a cold compile) unless ``--warm-cache``;
- ``bf16 autocast``: the step inside ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Steps are interleaved (one step of every variant per repetition, in a rotating order) so
that all variants see the same load; the first ``--warmup`` repetitions are discarded and
medians are reported. Variants much slower than the reference (``bf16 autocast``) take
part only in the first ``--warmup + --slow-steps`` repetitions. The ratio is the
variant's images/s over the reference's (> 1 = faster); "paired" is the median of the
per-repetition ratios.

``--validation`` (on by default when ``default-nih`` is measured; ``only`` skips the rest) times, with the default
NIH profile's reference trainer (``validate_every = 1``: one validation per epoch), one
training epoch of ``--train-images`` (515) images and one ``trainer.validate()`` on a
random validation split of ``--val-images`` (906) images, interleaved, and prints the
time ``validate_every = 3`` would save per replicate.

Usage::

    .venv/bin/python benchmarks/bench_profiles.py                              # all profiles, all variants
    .venv/bin/python benchmarks/bench_profiles.py --profiles default-nih --steps 10
    .venv/bin/python benchmarks/bench_profiles.py --profiles default-mura --variants compile --steps 3 --warmup 1
    .venv/bin/python benchmarks/bench_profiles.py --validation only --val-reps 5

Options are checked before any work (an argparse error naming the option): ``--steps``,
``--slow-steps``, ``--threads`` and ``--val-reps`` at least 1, ``--warmup`` at least 0,
``--compile-timeout`` at least 0 (0: no limit), ``--train-images`` at least 3 (the trainer
scores against at least 2 normal films) and ``--val-images`` at least 2 (both classes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from salad_lite.cli_errors import count, int_type, positive_int
from salad_lite.config import SaladConfig, profile_config
from salad_lite.trainer import SaladTrainer, epoch_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import RandomImages, cpu_name, timed_with_cpu  # noqa: E402  (the benchmarks' in-memory dataset)

PROFILES: dict[str, tuple[str, str]] = {"smoke-nih": ("smoke", "nih"), "default-nih": ("default", "nih"),
                                        "default-mura": ("default", "mura")}
VARIANTS = ("channels_last", "threads", "compile", "bf16")  # the reference always runs
DEFAULT_NIH_TRAIN = 515  # training images of the default NIH profile's split (embedded set, AR 0.05)
DEFAULT_NIH_VAL = 906  # validation images of that split


@dataclass(frozen=True)
class Variant:
    """How one variant's trainer is built and its steps run."""

    name: str
    channels_last: bool
    threads: int
    compile: bool = False
    bf16: bool = False
    slow: bool = False  # only in the first warmup + slow_steps repetitions


def profile_variants(cfg: SaladConfig, threads: int, chosen: tuple[str, ...]) -> list[Variant]:
    """The reference (first) and the ``chosen`` variants of :data:`VARIANTS` for ``cfg``."""
    cl = cfg.train.channels_last
    variants = [Variant(f"reference (fp32, cl {'on' if cl else 'off'}, {threads} thr)", cl, threads)]
    if "channels_last" in chosen:
        variants.append(Variant(f"channels_last {'off' if cl else 'on'}", not cl, threads))
    if "threads" in chosen:
        variants.append(Variant("1 thread", cl, 1))
    if "compile" in chosen:
        variants.append(Variant("torch.compile", cl, threads, compile=True))
    if "bf16" in chosen:
        variants.append(Variant("bf16 autocast", cl, threads, bf16=True, slow=True))
    return variants


def validations_per_run(total_epochs: int, validate_every: int) -> int:
    """How many times ``SaladTrainer.fit`` validates in a whole run (one call of ``fit``).

    The trainer validates after epoch e (0-based) when ``(e + 1) % validate_every == 0``
    or e is the last epoch.
    """
    return sum(1 for e in range(total_epochs) if (e + 1) % validate_every == 0 or e + 1 == total_epochs)


def faster_variants(ratios: dict[str, tuple[float, float]], margin: float = 0.10) -> list[str]:
    """Names whose speed-up over the reference, ``(ratio of medians, paired ratio)``, exceeds ``1 + margin`` in both."""
    return [name for name, (ratio, paired) in ratios.items() if min(ratio, paired) > 1 + margin]


class LabelledImages(RandomImages):
    """:class:`RandomImages` with a share of abnormal labels and patient ids of their own (``prefix``)."""

    def __init__(self, n: int, size: int, seed: int, abnormal_fraction: float, prefix: str) -> None:
        super().__init__(n, size, seed)
        self.labels[: max(1, round(abnormal_fraction * n))] = 1
        self.patient_ids = [f"{prefix}{i}" for i in range(n)]


def error_text(error: BaseException) -> str:
    """``Type: first line of the message`` of the innermost cause, after the outer type when it differs."""
    root, seen = error, {id(error)}
    while (inner := root.__cause__ or root.__context__) is not None and id(inner) not in seen:
        root = inner
        seen.add(id(root))
    lines = str(root).strip().splitlines()
    text = f"{type(root).__name__}: {lines[0][:300] if lines else '(no message)'}"
    return text if root is error else f"{type(error).__name__} <- {text}"


class CompileTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`CompileTimeout` in the main thread after ``seconds`` (SIGALRM; no limit where unavailable)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise CompileTimeout(f"took longer than --compile-timeout {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def step_settings(variant: Variant, threads: int) -> Iterator[None]:
    """The variant's thread count and autocast around one step; the thread count is restored after."""
    torch.set_num_threads(variant.threads)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
            yield
    finally:
        torch.set_num_threads(threads)


def build_step(cfg: SaladConfig, variant: Variant, dataset: RandomImages, threads: int
               ) -> tuple[SaladTrainer, Callable[[np.ndarray], object]]:
    """A trainer for ``variant`` and its step function (pretraining round)."""
    trainer = SaladTrainer(cfg.replace(train={"channels_last": variant.channels_last}), dataset, None,
                           run_dir=None, device="cpu")
    trainer.model.train()
    if variant.compile:
        trainer._forward = torch.compile(trainer._forward)  # what train_step calls: forward + views' encoder
    view_gen = torch.Generator().manual_seed(7_919)

    def step(indices: np.ndarray) -> object:
        with step_settings(variant, threads):
            return trainer.train_step(indices, 0, view_gen)

    return trainer, step


def describe(cfg: SaladConfig, n: int) -> str:
    m, t = cfg.model, cfg.train
    arch = f"conv AE width {m.width}" if m.arch == "conv" else "ResNet-18 AE"
    return (f"{arch}, {m.image_size} px, d = {m.latent_dim}; batch {t.batch_size}; N = {n}; pretraining round, "
            f"num_views {cfg.loss.num_views}; profile channels_last {t.channels_last}")


def measure_profile(key: str, args: argparse.Namespace) -> SaladConfig:
    """Print the img/s table of one profile; returns its config."""
    profile, dataset_name = PROFILES[key]
    cfg = profile_config(profile, dataset_name).replace(train={"progress": False})
    n = min(cfg.data.max_train_images or DEFAULT_NIH_TRAIN, DEFAULT_NIH_TRAIN)
    batch = cfg.train.batch_size
    data = RandomImages(n, cfg.model.image_size)
    print(f"\n== {key}: {describe(cfg, n)}", flush=True)

    variants = profile_variants(cfg, args.threads, tuple(args.variants))
    steps: dict[str, Callable[[np.ndarray], object]] = {}
    compile_seconds: dict[str, float] = {}
    failures: dict[str, str] = {}
    order_gen = np.random.default_rng(0)
    batches = [order_gen.choice(n, batch, replace=False) for _ in range(args.warmup + args.steps)]
    for variant in variants:
        try:
            _, step = build_step(cfg, variant, data, args.threads)
            if variant.compile:  # the first call compiles forward and backward: timed apart
                with time_limit(args.compile_timeout):
                    compile_seconds[variant.name] = timed_with_cpu(lambda: step(batches[0]), torch.device("cpu"))[0]
            steps[variant.name] = step
        except Exception as error:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
            failures[variant.name] = error_text(error)
            if args.verbose:
                traceback.print_exc()
            if variant.compile:
                torch._dynamo.reset()

    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu_times: dict[str, list[float]] = {name: [] for name in steps}
    slow = {v.name for v in variants if v.slow}
    reference = variants[0].name
    started = time.perf_counter()
    for rep, indices in enumerate(batches):
        names = [name for name in steps if name not in failures
                 and (name not in slow or rep < args.warmup + args.slow_steps)]
        if not names:
            break
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order every repetition
            try:
                wall, cpu = timed_with_cpu(lambda: steps[name](indices), torch.device("cpu"))
            except Exception as error:  # noqa: BLE001 - e.g. a recompilation failing later
                failures[name] = error_text(error)
                continue
            if rep >= args.warmup:
                times[name].append(wall)
                cpu_times[name].append(cpu)
    elapsed = time.perf_counter() - started

    if reference in failures or not times.get(reference):
        print(f"reference failed: {failures.get(reference)}")
        return cfg
    ref = statistics.median(times[reference])
    ref_cpu = statistics.median(cpu_times[reference])
    print(f"{args.steps} timed steps per variant (+{args.warmup} warm-up; slow variants {args.slow_steps}), "
          f"interleaved, medians; {elapsed:.0f} s")
    print(f"{'variant':<30} {'img/s':>7} {'ratio':>7} {'paired':>7} {'min s':>7} {'cpu ms/img':>11} "
          f"{'cpu ratio':>9} {'steps':>5}  note")
    ratios: dict[str, tuple[float, float]] = {}
    for variant in variants:
        name = variant.name
        if name in failures and not times.get(name):
            print(f"{name:<30} {'-':>7} {'-':>7} {'-':>7} {'-':>7} {'-':>11} {'-':>9} {0:>5}  FAILED: {failures[name]}")
            continue
        wall = statistics.median(times[name])
        cpu = statistics.median(cpu_times[name])
        paired = statistics.median(r / t for r, t in zip(times[reference], times[name]))  # same repetitions
        if name != reference:
            ratios[name] = (ref / wall, paired)
        note = ""
        if name in compile_seconds:
            note = f"compile {compile_seconds[name]:.1f} s (first call) - {wall:.2f} s (a step) = " \
                   f"{compile_seconds[name] - wall:.1f} s, excluded"
        if name in failures:
            note += f" (later failed: {failures[name]})"
        print(f"{name:<30} {batch / wall:>7.1f} {ref / wall:>6.2f}x {paired:>6.2f}x {min(times[name]):>7.3f} "
              f"{1e3 * cpu / batch:>11.1f} {cpu / ref_cpu:>8.2f}x {len(times[name]):>5}  {note}")
    print(f"faster than the reference by > 10% (ratio and paired): {', '.join(faster_variants(ratios)) or 'none'}")
    return cfg


def measure_validation(args: argparse.Namespace) -> None:
    """One training epoch against one ``trainer.validate()`` for the default NIH profile, interleaved."""
    cfg = profile_config("default", "nih").replace(train={"progress": False})
    size, batch = cfg.model.image_size, cfg.train.batch_size
    train = LabelledImages(args.train_images, size, 0, cfg.data.anomaly_ratio, "t")
    val = LabelledImages(args.val_images, size, 1, 0.5, "v")
    trainer = SaladTrainer(cfg, train, val, run_dir=None, device="cpu")
    view_gen = torch.Generator().manual_seed(7_919)

    def epoch() -> None:
        trainer.model.train()
        for indices in epoch_batches(len(train), batch, torch.Generator().manual_seed(0)):
            trainer.train_step(indices, 0, view_gen)

    parts: dict[str, Callable[[], object]] = {"epoch": epoch, "validate": trainer.validate}
    times: dict[str, list[float]] = {name: [] for name in parts}
    cpu_times: dict[str, list[float]] = {name: [] for name in parts}
    epochs_steps = len(epoch_batches(len(train), batch, torch.Generator().manual_seed(0)))
    print(f"\n== validation share, default-nih (reference: fp32, {args.threads} threads): "
          f"{args.train_images} training images ({epochs_steps} steps of <= {batch}), "
          f"{args.val_images} validation images", flush=True)
    for rep in range(1 + args.val_reps):  # the first repetition warms up
        names = list(parts) if rep % 2 == 0 else list(parts)[::-1]
        for name in names:
            wall, cpu = timed_with_cpu(parts[name], torch.device("cpu"))
            if rep > 0:
                times[name].append(wall)
                cpu_times[name].append(cpu)
    e, v = statistics.median(times["epoch"]), statistics.median(times["validate"])
    e_cpu, v_cpu = statistics.median(cpu_times["epoch"]), statistics.median(cpu_times["validate"])
    total = cfg.train.pretrain_epochs + cfg.train.rounds * cfg.train.epochs_per_round
    every_1 = validations_per_run(total, cfg.train.validate_every)
    every_3 = validations_per_run(total, 3)
    run_1 = total * e + every_1 * v
    print(f"{args.val_reps} interleaved repetitions (+1 warm-up), medians")
    print(f"one training epoch: {e:.2f} s ({len(train) / e:.0f} img/s); one trainer.validate() "
          f"(embed {len(train)} train + {len(val)} val, Eq. 4 K = {cfg.score.k}): {v:.2f} s; "
          f"process CPU {e_cpu:.2f} s and {v_cpu:.2f} s")
    print(f"validation = {100 * v / (e + v):.0f}% of an epoch that validates ({v / e:.2f}x a training epoch; "
          f"CPU time: {100 * v_cpu / (e_cpu + v_cpu):.0f}%)")
    print(f"per replicate ({total} epochs, training + validation only; round starts and snapshots not counted): "
          f"validate_every={cfg.train.validate_every}: {every_1} validations, {run_1:.0f} s; "
          f"validate_every=3: {every_3} validations, {total * e + every_3 * v:.0f} s; "
          f"saves {(every_1 - every_3) * v:.0f} s ({100 * (every_1 - every_3) * v / run_1:.0f}%)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", choices=list(PROFILES), default=list(PROFILES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="variants beside the reference (default: all)")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per variant (after warm-up)")
    parser.add_argument("--warmup", type=count, default=2, help="untimed steps per variant first")
    parser.add_argument("--slow-steps", type=positive_int, default=2, help="timed steps of the slow variants (bf16)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads of the reference")
    parser.add_argument("--compile-timeout", type=count, default=300,
                        help="seconds for torch.compile's first call (0: no limit)")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's usual cache (default: a cold one)")
    parser.add_argument("--validation", choices=("auto", "on", "off", "only"), default="auto",
                        help="the validation-share measurement (auto: when default-nih is measured; "
                             "only: no throughput tables)")
    parser.add_argument("--val-reps", type=positive_int, default=3, help="timed epoch/validate repetitions")
    parser.add_argument("--train-images", type=int_type(3, why=" (the trainer scores against 2 normal films)"),
                        default=DEFAULT_NIH_TRAIN)
    parser.add_argument("--val-images", type=int_type(2, why=" (both classes)"), default=DEFAULT_NIH_VAL)
    parser.add_argument("--verbose", action="store_true", help="print the tracebacks of failed variants")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)

    cache = None
    if "compile" in args.variants and not args.warm_cache:
        cache = tempfile.mkdtemp(prefix="bench_profiles_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # read when inductor first compiles
    torch.set_num_threads(args.threads)
    print(f"device: cpu ({cpu_name()}); torch {torch.__version__}; reference threads {torch.get_num_threads()}; "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    try:
        for key in args.profiles if args.validation != "only" else ():
            measure_profile(key, args)
        if args.validation in ("on", "only") or (args.validation == "auto" and "default-nih" in args.profiles):
            measure_validation(args)
    finally:
        print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
