"""Cost of one SALAD training step against a plain autoencoder step of the same model.

Setting (the paper's NIH network): conv AE at 256 px (``ModelConfig(image_size=256)``,
width 32, d = 200), batch 16, a memory bank of N = 4,000 entries built by a
:class:`salad_lite.trainer.SaladTrainer` on 4,000 random uint8 images held in memory.

Variants, each timed as one call of ``SaladTrainer.train_step`` (gather, augment,
forward, Eq. 3, backward, Adam, memory update):

- ``pretrain views=1``: round 0 (L_mse + lambda L_ss), one augmented view per image
  (one extra encoder pass, forward and backward);
- ``pretrain views=0``: round 0, the memory slot is the only L_ss positive;
- ``round 1 views=1`` / ``round 1 views=0``: an aggregation round (after
  ``trainer._start_round(1)``), Eq. 3 with L_agg.

The baseline ``plain AE`` step gathers the same batch, runs the same model with the
same optimiser on the reconstruction loss only, and has no memory.

Steps are interleaved (one step of every variant per repetition, in a rotating
order) so that all variants see the same machine load; the first ``--warmup``
repetitions are discarded and medians are reported. A second table splits the
SALAD step's non-model work (gather + finiteness check, augmentation, the latent
losses' forward and backward, the memory update) into timed parts.

Usage::

    .venv/bin/python benchmarks/bench_train_step.py            # CPU, 12 timed steps per variant
    .venv/bin/python benchmarks/bench_train_step.py --device cuda --steps 50

Every option is checked before any work (an argparse error naming it, status 2):
``--steps`` >= 1, ``--bank`` >= 2 (the trainer's least), ``--warmup`` and ``--threads`` >= 0,
a batch of 1 to ``--bank`` images,
``--round`` from 1 to ``TrainConfig.rounds`` (round 0, pretraining, is always timed),
the conv AE's image sizes and a device of :data:`salad_lite.utils.DEVICE_FORMS` this
machine has.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch

from salad_lite.augment import augment_batch
from salad_lite.cli_errors import count, device_option, int_type, positive_int
from salad_lite.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, ConfigError, LossConfig, ModelConfig, SaladConfig, \
    TrainConfig, check_image_size
from salad_lite.data.batches import gather_images
from salad_lite.losses import reconstruction_loss, salad_loss
from salad_lite.models import build_model
from salad_lite.trainer import SaladTrainer
from salad_lite.utils import resolve_device

TARGET_RATIO = 1.15


class RandomImages:
    """``n`` random uint8 images [n, S, S] with all-normal labels (what ``gather_images`` reads)."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)  # [N, S, S]
        self.labels = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i])[None].float() / 255.0, "label": 0, "index": i,
                "patient_id": f"p{i}", "finding": "No Finding"}


class PlainStep:
    """A plain autoencoder step: same model, optimiser and batch gathering; reconstruction loss only."""

    def __init__(self, cfg: SaladConfig, dataset: RandomImages, device: torch.device) -> None:
        torch.manual_seed(cfg.train.seed)
        self.dataset, self.device, self.cfg = dataset, device, cfg
        self.model = build_model(cfg.model).to(device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas,
                                          weight_decay=cfg.train.weight_decay)
        self.use_amp = cfg.train.amp and device.type == "cuda"

    def __call__(self, indices: np.ndarray) -> float:
        x = gather_images(self.dataset, indices).to(self.device, non_blocking=True)  # [B, 1, S, S]
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
            _, x_hat = self.model(x)
        loss = reconstruction_loss(x_hat, x, self.cfg.loss.reconstruction)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def salad_step(cfg: SaladConfig, dataset: RandomImages, device: torch.device, round_index: int
               ) -> tuple[SaladTrainer, Callable[[np.ndarray], dict]]:
    trainer = SaladTrainer(cfg, dataset, None, run_dir=None, device=device)
    trainer.model.train()
    if round_index > 0:
        trainer._start_round(round_index)
    view_gen = torch.Generator().manual_seed(7_919)
    return trainer, lambda indices: trainer.train_step(indices, round_index, view_gen)


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux) and its logical core count."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    return timed_with_cpu(fn, device)[0]


def timed_with_cpu(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``, synchronising CUDA around it."""
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def overhead_parts(trainer: SaladTrainer, round_index: int, batches: list[np.ndarray], device: torch.device,
                   repeats: int) -> dict[str, tuple[float, float]]:
    """{part: (median wall seconds, median process CPU seconds)} of the SALAD step's non-model parts.

    Each part is timed alone on real batches: the gather and finiteness check, the augmentation
    (times the number of views), the latent terms of Eq. 3 (forward and backward, from the
    model's latents) and the memory update.
    """
    cfg = trainer.cfg
    gen = torch.Generator().manual_seed(1)
    parts: dict[str, list[tuple[float, float]]] = {"gather + finite check": [], "augment views": [],
                                                   "latent losses fwd+bwd": [], "memory update": []}
    for rep in range(repeats):
        indices = batches[rep % len(batches)]
        index_t = torch.as_tensor(indices, dtype=torch.long, device=device)

        def gather() -> None:
            x = gather_images(trainer.train_set, indices)
            torch.isfinite(x).all()

        parts["gather + finite check"].append(timed_with_cpu(gather, device))
        x = trainer._to_device(gather_images(trainer.train_set, indices))
        wall, cpu = timed_with_cpu(lambda: augment_batch(x, gen), device)
        parts["augment views"].append((wall * cfg.loss.num_views, cpu * cfg.loss.num_views))
        with torch.no_grad():
            z0, x_hat0 = trainer.model(x)
        z = z0.detach().float().requires_grad_(True)
        views = None
        if cfg.loss.num_views:
            views = torch.nn.functional.normalize(torch.randn(len(indices), cfg.loss.num_views, z.shape[1],
                                                              device=device), dim=2).requires_grad_(True)
        neighbours = prototypes = None
        if round_index > 0:
            neighbours, prototypes = trainer.round_neighbours[index_t], trainer.round_prototypes[index_t]
        no_rec = cfg.replace(loss={"reconstruction": "none"}).loss

        def latent() -> None:
            terms = salad_loss(no_rec, x, x_hat0, z, index_t, trainer.memory.bank, views, neighbours, prototypes)
            terms.total.backward()

        parts["latent losses fwd+bwd"].append(timed_with_cpu(latent, device))
        bank_before = trainer.memory.bank.clone()
        parts["memory update"].append(timed_with_cpu(lambda: trainer.memory.update(index_t, z.detach(), 0.5), device))
        trainer.memory.bank.copy_(bank_before)
    return {name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
            for name, values in parts.items()}


def conv_image_size(text: str) -> int:
    """An ``--image-size`` of the conv AE (``config.check_image_size``: a power of two from 32 to 4096)."""
    try:
        value = int(text)
        check_image_size("conv", value)
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(f"must be a power of two from {MIN_IMAGE_SIZE['conv']} to {MAX_IMAGE_SIZE} "
                                         f"(the conv AE's sizes), got {text!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    rounds = TrainConfig().rounds
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_option, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--steps", type=positive_int, default=12, help="timed steps per variant (after warm-up)")
    parser.add_argument("--warmup", type=count, default=2, help="untimed steps per variant first")
    parser.add_argument("--bank", type=int_type(2, why=" (the trainer needs 2 images)"), default=4000,
                        help="N, training images = memory entries")
    parser.add_argument("--image-size", type=conv_image_size, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per step (<= --bank)")
    parser.add_argument("--round", type=int_type(1, rounds, " (the aggregation rounds of TrainConfig)"), default=1,
                        help=f"aggregation round to time (1..{rounds}; round 0, pretraining, is always timed)")
    parser.add_argument("--threads", type=count, default=0, help="torch CPU threads (0: leave the default)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size > args.bank:
        parser.error(f"argument --batch-size: must be <= --bank ({args.bank}): a batch draws distinct images, "
                     f"got {args.batch_size}")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device: {device} ({device_name}); torch CPU threads: {torch.get_num_threads()}; "
          f"torch {torch.__version__}")

    dataset = RandomImages(args.bank, args.image_size)
    base = SaladConfig(model=ModelConfig(image_size=args.image_size),
                       train=TrainConfig(batch_size=args.batch_size, progress=False))
    print(f"model: conv AE {args.image_size} px, width {base.model.width}, d = {base.model.latent_dim}; "
          f"batch {args.batch_size}; memory bank N = {args.bank}; amp {base.train.amp and device.type == 'cuda'}; "
          f"channels_last {base.train.channels_last}")

    steps: dict[str, Callable[[np.ndarray], object]] = {"plain AE": PlainStep(base, dataset, device)}
    trainers: dict[str, tuple[SaladTrainer, int]] = {}
    for round_index in (0, args.round):
        for views in (1, 0):
            name = f"{'pretrain' if round_index == 0 else f'round {round_index}'} views={views}"
            cfg = base.replace(loss=LossConfig(num_views=views))
            trainer, step = salad_step(cfg, dataset, device, round_index)
            steps[name], trainers[name] = step, (trainer, round_index)

    order_gen = np.random.default_rng(0)
    batches = [order_gen.choice(args.bank, args.batch_size, replace=False) for _ in range(args.warmup + args.steps)]
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu_times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for rep, indices in enumerate(batches):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order every repetition
            seconds, cpu_seconds = timed_with_cpu(lambda: steps[name](indices), device)
            if rep >= args.warmup:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)

    plain = statistics.median(times["plain AE"])
    plain_cpu = statistics.median(cpu_times["plain AE"])
    print(f"\n{args.steps} timed steps per variant (+{args.warmup} warm-up), interleaved; medians")
    print(f"{'variant':<22} {'wall s':>8} {'min s':>7} {'ratio vs plain':>15} {'<= ' + str(TARGET_RATIO) + 'x':>8}"
          f" {'cpu s':>7} {'cpu ratio':>10}")
    for name in names:
        median = statistics.median(times[name])
        ratio = median / plain
        cpu_median = statistics.median(cpu_times[name])
        verdict = "-" if name == "plain AE" else ("yes" if ratio <= TARGET_RATIO else "no")
        print(f"{name:<22} {median:>8.3f} {min(times[name]):>7.3f} {ratio:>14.2f}x {verdict:>8}"
              f" {cpu_median:>7.3f} {cpu_median / plain_cpu:>9.2f}x")

    print("\nnon-model parts of the SALAD step, timed alone (medians, wall ms / process CPU ms; "
          "total as a share of the plain step's wall / CPU time)")
    for name, (trainer, round_index) in trainers.items():
        parts = overhead_parts(trainer, round_index, batches, device, repeats=max(5, args.steps // 2))
        wall = sum(w for w, _ in parts.values())
        cpu = sum(c for _, c in parts.values())
        detail = ", ".join(f"{part} {1e3 * w:.1f}/{1e3 * c:.1f}" for part, (w, c) in parts.items())
        print(f"{name:<22} {1e3 * wall:6.1f}/{1e3 * cpu:6.1f} ms = {100 * wall / plain:4.1f}% / "
              f"{100 * cpu / plain_cpu:4.1f}%  ({detail})")


if __name__ == "__main__":
    main()
