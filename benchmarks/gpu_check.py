"""GPU check, ready to run on a lent device (<= 8 minutes on one GPU): writes ``gpu_check.json`` and ``gpu_check.md``.

It measures, on ``--device`` (default ``cuda``):

1. **forward agreement**: the paper's two networks (conv AE at 256 px, ResNet-18 AE at
   512 px), same weights, eval mode, fp32 with TF32 off: max |z_device - z_cpu| and
   max |x_hat_device - x_hat_cpu|;
2. **training throughput** (images/s) of ``SaladTrainer.train_step`` (an aggregation
   round's step, one augmented view) for both networks with ``TrainConfig.amp`` on (bf16
   autocast, CUDA only) and off;
3. **the Eq. 4 scorer on the device** (``salad_lite.knn.torch_block_search``) against the
   CPU path (``cpu_block_search``): identical neighbour sets (or different only among
   cosines tied within 1e-6), angle sums and scores; and its time against a bare
   ``torch.matmul`` + ``topk`` of the same shape on the device;
4. **one DDP step on 2 devices** (``salad_lite.distributed``, NCCL) when 2 GPUs are
   visible: the two ranks' memory banks must be identical afterwards. Skipped, with the
   reason recorded, otherwise. With ``--device cpu`` it runs on 2 gloo processes.

``--device cpu --quick`` runs the same logic on the CPU at tiny sizes in seconds (the
test suite does this: ``tests/test_gpu_check.py``). A check that fails records its error
and the others still run; the exit status is 1 when any check failed. A wrong ``--device``
(another form, or one this machine lacks) or an ``--out`` that is a file is an argparse
error (status 2) before any check runs.

    .venv/bin/python benchmarks/gpu_check.py                      # on a GPU server: --device cuda
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salad_lite.cli_errors import device_option, folder_option
from salad_lite.config import SaladConfig, paper_config
from salad_lite.knn import cpu_block_search, torch_block_search, unit_rows
from salad_lite.models import build_model
from salad_lite.scorer import eq4_scores
from salad_lite.trainer import SaladTrainer
from salad_lite.utils import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import RandomImages  # noqa: E402  (the benchmarks' in-memory dataset)

TIE = 1e-6  # cosines this close to the K-th may swap between engines


def network_config(dataset: str, quick: bool, batch: int, amp: bool) -> SaladConfig:
    """``paper_config(dataset)`` (tiny images and width with ``quick``) with the given batch size and AMP switch."""
    cfg = paper_config(dataset)
    if quick:
        cfg = cfg.replace(model={"image_size": 64 if cfg.model.arch == "resnet18" else 32, "width": 8})
    return cfg.replace(train={"batch_size": batch, "amp": amp, "neighbours_start": 3, "neighbours_end": 3})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_agreement(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Max abs difference of z and x_hat between ``device`` and the CPU, same weights and input, fp32."""
    rows = []
    for dataset in ("nih", "mura"):
        cfg = network_config(dataset, quick, 2, False)
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()
        x = torch.rand(2, 1, cfg.model.image_size, cfg.model.image_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            z_cpu, x_hat_cpu = model(x)
            z_dev, x_hat_dev = model.to(device)(x.to(device))
        rows.append({"network": cfg.model.arch, "image_size": cfg.model.image_size,
                     "max_abs_z": float((z_dev.cpu() - z_cpu).abs().max()),
                     "max_abs_x_hat": float((x_hat_dev.cpu() - x_hat_cpu).abs().max())})
    return rows


def training_throughput(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Images/s of ``SaladTrainer.train_step`` (round 1, after a round start) per network and AMP setting."""
    batch, warmup, steps = (2, 0, 1) if quick else (16, 3, 10)
    rows = []
    for dataset in ("nih", "mura"):
        for amp in (False, True):
            cfg = network_config(dataset, quick, batch, amp)
            data = RandomImages(batch * (warmup + steps), cfg.model.image_size)
            trainer = SaladTrainer(cfg, data, device=device)
            trainer._start_round(1)
            generator = torch.Generator().manual_seed(0)
            order = np.arange(len(data))
            for step in range(warmup):
                trainer.train_step(order[step * batch:(step + 1) * batch], 1, generator)
            _sync(trainer.device)
            start = time.perf_counter()
            for step in range(warmup, warmup + steps):
                terms = trainer.train_step(order[step * batch:(step + 1) * batch], 1, generator)
            _sync(trainer.device)
            seconds = time.perf_counter() - start
            rows.append({"network": cfg.model.arch, "image_size": cfg.model.image_size, "batch": batch,
                         "amp": amp, "amp_active": bool(trainer.use_amp), "steps": steps,
                         "images_per_s": batch * steps / seconds, "last_loss": terms["loss"]})
    return rows


def _timed(fn: Any, device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median wall ms of ``fn()`` over ``repeats`` runs (after one warm-up), and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), result


def scorer_agreement(device: torch.device, quick: bool) -> dict[str, Any]:
    """The device's torch block search against the CPU engine, and against bare matmul + topk on the device."""
    m, n, k = (50, 2_000, 10) if quick else (2_000, 112_120, 100)
    gen = torch.Generator().manual_seed(3)
    queries = unit_rows(torch.randn(m, 200, generator=gen), "queries")
    bank = unit_rows(torch.randn(n, 200, generator=gen), "bank")
    q_dev, bank_dev = queries.to(device), bank.to(device)
    repeats = 2 if quick else 5
    cpu_ms, (cpu_sims, cpu_rows, cpu_angles) = _timed(
        lambda: cpu_block_search(queries.numpy(), bank.numpy(), k, True), torch.device("cpu"), 1)
    dev_ms, (dev_sims, dev_rows, dev_angles) = _timed(lambda: torch_block_search(q_dev, bank_dev, k, True),
                                                      device, repeats)
    bare_ms, (bare_sims, _) = _timed(lambda: torch.matmul(q_dev, bank_dev.T).topk(k, dim=1), device, repeats)
    dev_rows, dev_sims = dev_rows.cpu(), dev_sims.cpu()
    same = [set(a.tolist()) == set(b.tolist()) for a, b in zip(dev_rows, cpu_rows)]
    kth = cpu_sims[:, -1]
    tie_only = 0
    for row, equal in enumerate(same):
        if not equal:  # every row found by one engine only lies within TIE of the K-th cosine
            only = set(dev_rows[row].tolist()) ^ set(cpu_rows[row].tolist())
            cosines = bank[list(only)] @ queries[row]
            tie_only += bool(((cosines - kth[row]).abs() <= TIE).all())
    scores_dev = eq4_scores(q_dev, bank_dev, k).cpu()
    scores_cpu = eq4_scores(queries, bank, k)
    return {"queries": m, "bank": n, "k": k, "identical_rows": int(sum(same)), "tie_only_rows": tie_only,
            "max_abs_cosine": float((dev_sims - cpu_sims).abs().max()),
            "max_abs_cosine_vs_bare_topk": float((dev_sims - bare_sims.cpu()).abs().max()),
            "max_rel_angle_sum": float(((dev_angles.cpu() - torch.from_numpy(cpu_angles)).abs()
                                        / torch.from_numpy(cpu_angles)).max()),
            "max_rel_score": float(((scores_dev - scores_cpu).abs() / scores_cpu).max()),
            "device_ms": dev_ms, "cpu_ms": cpu_ms, "bare_matmul_topk_ms": bare_ms,
            "device_over_bare": dev_ms / bare_ms}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ddp_worker(local_rank: int, world: int, port: int, device: str, quick: bool, out_dir: str) -> None:
    """One rank of :func:`ddp_step`: join the group, one global-batch step, write the bank's fingerprint."""
    from salad_lite import distributed

    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    distributed.init_from_environment(device)
    try:
        batch = 4 if quick else 16
        cfg = network_config("nih", quick, batch, True)
        trainer = SaladTrainer(cfg, RandomImages(4 * batch, cfg.model.image_size), device=device)
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        terms = trainer.train_step(np.arange(world * batch), 0, generator)  # the global batch: world x batch
        _sync(trainer.device)
        bank = trainer.memory.bank.double().cpu()
        record = {"rank": local_rank, "seconds": time.perf_counter() - start, "loss": terms["loss"],
                  "bank_sum": float(bank.sum()), "bank_abs_sum": float(bank.abs().sum())}
        Path(out_dir, f"rank{local_rank}.json").write_text(json.dumps(record))
    finally:
        torch.distributed.destroy_process_group()


def ddp_step(device: torch.device, quick: bool) -> dict[str, Any]:
    """One DDP training step on 2 ranks (2 GPUs with NCCL; 2 gloo processes with ``--device cpu``)."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return {"status": "skipped", "reason": f"{torch.cuda.device_count()} GPU(s) visible, 2 needed"}
    world = 2
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        torch.multiprocessing.spawn(_ddp_worker, args=(world, _free_port(), device.type, quick, out_dir),
                                    nprocs=world, join=True)
        ranks = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world)]
    identical = all(r["bank_sum"] == ranks[0]["bank_sum"] and r["bank_abs_sum"] == ranks[0]["bank_abs_sum"]
                    for r in ranks)
    return {"status": "ok" if identical else "failed", "world": world, "backend": "nccl" if device.type == "cuda"
            else "gloo", "loss": ranks[0]["loss"], "banks_identical": identical,
            "step_seconds": max(r["seconds"] for r in ranks), "total_seconds": time.perf_counter() - start}


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables."""
    meta = report["meta"]
    lines = [f"# GPU check: {meta['device_name']} ({meta['device']}{', quick' if meta['quick'] else ''})", "",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, {meta['seconds']:.0f} s in all.", ""]
    for name, value in report["checks"].items():
        lines += [f"## {name}", ""]
        if isinstance(value, dict) and "error" in value:
            lines += [f"**failed**: `{value['error']}`", ""]
            continue
        rows = value if isinstance(value, list) else [value]
        keys = list(rows[0])
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in rows:
            cells = [f"{row[key]:.3g}" if isinstance(row[key], float) else str(row[key]) for key in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def gpu_check_device(text: str) -> str:
    """A ``--device`` this machine has (:func:`salad_lite.cli_errors.device_option`), with the CPU-only hint."""
    try:
        return device_option(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error}; use --device cpu --quick for the CPU-only run") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", type=gpu_check_device, default="cuda",
                        help="cuda (default), cuda:1, cpu ... (checked before any check runs)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the script's own logic in seconds")
    parser.add_argument("--out", type=folder_option, default="gpu_check",
                        help="folder for gpu_check.json and gpu_check.md (not a file; checked before any check runs)")
    parser.add_argument("--skip-ddp", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 agreement means fp32
    torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    checks: dict[str, Any] = {}
    steps = [("forward agreement", forward_agreement), ("training throughput", training_throughput),
             ("Eq. 4 scorer", scorer_agreement)]
    if not args.skip_ddp:
        steps.append(("DDP step", ddp_step))
    failed = False
    for name, check in steps:
        t0 = time.perf_counter()
        try:
            checks[name] = check(device, args.quick)
        except Exception as error:  # noqa: BLE001 - one failed check must not lose the others
            traceback.print_exc()
            checks[name] = {"error": f"{type(error).__name__}: {error}"}
            failed = True
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    report = {"meta": {"device": str(device), "quick": args.quick, "torch": torch.__version__,
                       "cuda": torch.version.cuda, "python": platform.python_version(),
                       "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                       else platform.processor() or "CPU",
                       "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                       "seconds": time.perf_counter() - started},
              "checks": checks}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, allow_nan=True))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
