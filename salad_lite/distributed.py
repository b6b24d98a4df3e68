"""Distributed data-parallel helpers: the process group from torchrun's environment, rank queries, collectives.

``torchrun --nproc-per-node N salad-lite train ...`` starts N processes with
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`init_from_environment` turns them into a process group (NCCL on CUDA, one
GPU per process chosen by ``LOCAL_RANK``; gloo on the CPU), and
:class:`salad_lite.trainer.SaladTrainer` trains data-parallel whenever a group
of more than one process is initialised.

Every collective has a finite timeout: ``SALAD_LITE_DIST_TIMEOUT`` seconds
(:data:`TIMEOUT_ENV`, default :data:`DEFAULT_TIMEOUT_S` = 1800). A rank that
dies or hangs makes the others fail after at most that long instead of waiting
forever; a dead rank's peers usually fail at once (its connections close), and
torchrun then stops the job and names the failed rank. Rank 0 validates and
writes the checkpoints while the others wait, so the timeout must exceed the
longest validation + checkpoint of an epoch.

Without a process group (or with one of a single process) every helper is the
single-process identity: :func:`rank` is 0, :func:`all_gather_cat` returns its
input, :func:`barrier` does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from salad_lite.utils import is_int, resolve_device

TIMEOUT_ENV = "SALAD_LITE_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_RANGE_S = (1.0, 1e6)  # seconds: below, a rendezvous cannot finish; above, torch's millisecond count overflows


def collective_timeout(environ: Mapping[str, str] | None = None) -> timedelta:
    """The collective timeout: ``SALAD_LITE_DIST_TIMEOUT`` seconds, default :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        ValueError: the variable is set to something other than a number of seconds in
            :data:`TIMEOUT_RANGE_S` (named, with the range).
    """
    raw = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    low, high = TIMEOUT_RANGE_S
    if not (math.isfinite(seconds) and low <= seconds <= high):
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds in [{low:g}, {high:g}]")
    return timedelta(seconds=seconds)


def _environment_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


def init_from_environment(device: str = "auto") -> bool:
    """Join the process group torchrun describes in the environment; True when training is distributed.

    With ``WORLD_SIZE`` > 1 and no process group yet: NCCL when ``device``
    resolves to CUDA (the process's GPU is ``cuda:LOCAL_RANK``), gloo on the
    CPU, with the timeout of :func:`collective_timeout`. With ``WORLD_SIZE``
    unset or 1 nothing happens (False). A group that already exists is kept.

    Raises:
        ValueError: ``WORLD_SIZE``/``LOCAL_RANK`` are not integers, ``WORLD_SIZE`` < 1, or
            ``SALAD_LITE_DIST_TIMEOUT`` is not a number of seconds in range.
        RuntimeError: CUDA is requested but missing, or ``LOCAL_RANK`` names a GPU
            this machine does not have; torch's own errors when ``RANK``,
            ``MASTER_ADDR`` or ``MASTER_PORT`` are missing or the rendezvous fails.
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    ranks = _environment_int("WORLD_SIZE", 1)
    if ranks < 1:
        raise ValueError(f"environment variable WORLD_SIZE={ranks} must be >= 1 (the number of processes)")
    if ranks == 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    timeout = collective_timeout()
    if resolve_device(device).type == "cuda":
        local = _environment_int("LOCAL_RANK", 0)
        if not 0 <= local < torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s): "
                               "start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return True


def is_distributed() -> bool:
    """True when a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and validates."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point (nothing to wait for in a single process)."""
    if is_distributed():
        dist.barrier()


def local_device(device: str | torch.device = "auto") -> torch.device:
    """``device`` resolved for this process: a bare ``cuda`` becomes the GPU :func:`init_from_environment` chose.

    Raises:
        RuntimeError: CUDA requested but not available (from :func:`salad_lite.utils.resolve_device`).
    """
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return resolved


def shard_sizes(batch: int, ranks: int | None = None) -> list[int]:
    """How many images of a global batch of ``batch`` each rank takes: contiguous, sizes differing by at most 1.

    Rank r takes images ``sum(sizes[:r]) .. sum(sizes[:r + 1]) - 1`` (the first
    ``batch % ranks`` ranks one more). ``ranks`` defaults to :func:`world_size`.

    Raises:
        ValueError: ``batch`` or ``ranks`` not an int >= 1; fewer images than ranks (a rank would have no image).
    """
    ranks = world_size() if ranks is None else ranks
    if not (is_int(batch) and batch >= 1 and is_int(ranks) and ranks >= 1):
        raise ValueError(f"shard_sizes needs ints batch >= 1 and ranks >= 1, got batch={batch!r}, ranks={ranks!r}")
    if batch < ranks:
        raise ValueError(f"a global batch of {batch} image(s) cannot feed {ranks} ranks")
    return [batch // ranks + (r < batch % ranks) for r in range(ranks)]


def _padded_gather(tensor: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """All-gather rows of unequal counts (``sizes[r]`` from rank r): padded to the longest, trimmed, concatenated."""
    tensor = tensor.contiguous()
    longest = max(sizes)
    if tensor.shape[0] < longest:
        tensor = torch.cat([tensor, tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))])
    parts = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(parts, tensor)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward hands each rank the gradient of its rows summed over every rank's loss."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        ctx.sizes = sizes
        return _padded_gather(tensor, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:dist.get_rank()])
        return grad[start:start + ctx.sizes[dist.get_rank()]], None


def all_gather_cat(tensor: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` [b_r, ...] in rank order: [sum_r b_r, ...]; the input itself in one process.

    ``sizes`` (the b_r, e.g. :func:`shard_sizes`) saves a collective when every
    rank knows them; otherwise they are gathered first. With ``requires_grad``
    the result carries gradients back: each rank's rows receive the gradient of
    the sum of every rank's loss (what DistributedDataParallel then averages).

    Raises:
        ValueError: ``sizes`` has not one entry per rank or disagrees with this rank's rows.
    """
    if not is_distributed():
        return tensor
    if sizes is None:
        count = torch.tensor([tensor.shape[0]], device=tensor.device)
        counts = [torch.empty_like(count) for _ in range(world_size())]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
    if len(sizes) != world_size() or sizes[rank()] != tensor.shape[0]:
        raise ValueError(f"all_gather_cat: sizes {list(sizes)} do not fit rank {rank()} of {world_size()} "
                         f"holding {tensor.shape[0]} rows")
    if tensor.requires_grad:
        return _GatherWithGradient.apply(tensor, tuple(sizes))
    return _padded_gather(tensor, sizes)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``tensor`` (any shape; a new tensor, no gradient); the input itself in one process."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def broadcast_(tensor: torch.Tensor, source: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` on every rank with rank ``source``'s (same shape and dtype everywhere); returns it."""
    if is_distributed():
        dist.broadcast(tensor, source)
    return tensor


def _collective_device() -> torch.device:
    """Where a collective's tensors live: this process's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj: Any, source: int = 0) -> Any:
    """Rank ``source``'s JSON-serialisable ``obj`` on every rank (the others pass anything, e.g. None).

    Sent as JSON text (its length, then its UTF-8 bytes), never pickled.

    Raises:
        TypeError: on rank ``source``, ``obj`` is not JSON-serialisable.
    """
    if not is_distributed():
        return obj
    device = _collective_device()
    payload = json.dumps(obj).encode("utf-8") if rank() == source else b""
    length = broadcast_(torch.tensor([len(payload)], dtype=torch.int64, device=device), source)
    data = torch.zeros(int(length), dtype=torch.uint8, device=device)
    if rank() == source:
        data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    return json.loads(bytes(broadcast_(data, source).cpu().numpy()).decode("utf-8"))


def check_ranks_agree(values: Mapping[str, str]) -> None:
    """Refuse a data-parallel run whose ranks differ in any of ``values`` (name -> text); nothing in one process.

    Each rank hashes every value (SHA-256) and the digests are all-gathered (no pickle), so
    a rank started with another configuration, other images or another checkpoint is named
    before it trains: data-parallel training with such ranks would mix their memory rows or
    losses silently.

    Raises:
        ValueError: on every rank, naming the values that differ from rank 0's and the ranks that hold them.
    """
    if not is_distributed():
        return
    names = sorted(values)
    own = torch.tensor([list(hashlib.sha256(values[name].encode("utf-8")).digest()) for name in names],
                       dtype=torch.uint8, device=_collective_device())  # [F, 32]
    digests = [torch.empty_like(own) for _ in range(world_size())]
    dist.all_gather(digests, own)
    differ = {name: [r for r in range(1, world_size()) if not torch.equal(digests[r][i], digests[0][i])]
              for i, name in enumerate(names)}
    differ = {name: ranks for name, ranks in differ.items() if ranks}
    if differ:
        detail = "; ".join(f"{name} (rank(s) {', '.join(map(str, ranks))})" for name, ranks in differ.items())
        raise ValueError(f"the ranks of this data-parallel run disagree with rank 0 on: {detail}. Every rank must be "
                         "started with the same command, configuration, seed, data and run folder (a folder every "
                         "rank shares)")


class CollectiveError(RuntimeError):
    """A collective of data-parallel training failed: another rank died, stopped answering or disagreed."""


@contextlib.contextmanager
def collective_failure_context(where: str) -> Iterator[None]:
    """In data-parallel training, re-raise a ``RuntimeError`` of the block as a :class:`CollectiveError` naming this
    rank and ``where``.

    A rank that dies closes its connections, and its peers' next collective
    fails (gloo: "Connection reset by peer"); one that hangs makes them fail
    after :func:`collective_timeout`. The message says so and how to resume. In a
    single process the block's errors pass unchanged.

    Raises:
        CollectiveError: the block raised a ``RuntimeError`` (torch's ``DistError`` included), chained.
    """
    try:
        yield
    except RuntimeError as error:
        if not is_distributed() or isinstance(error, CollectiveError):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CollectiveError(
            f"rank {rank()} of {world_size()} failed during {where}: {first_line}\n"
            f"If another rank died or stopped answering (the collective timeout is "
            f"{collective_timeout().total_seconds():.0f} s, {TIMEOUT_ENV}), torchrun names the first rank that "
            "failed. Rerun the same command to resume: every rank loads the run's 'last' checkpoint.") from error


class _AllReduceWithGradient(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks (each rank's copy feeds its loss)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, for CPU tensors (gloo).

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this layer does the same on
    the CPU with two differentiable all-reduces per call (sum, then centred
    sum of squares, accumulated in float64 like the CPU ``batch_norm``). The
    running statistics are updated from the global mean and unbiased variance,
    so they are identical on every rank. In eval mode, or without a process
    group, it is a plain ``BatchNorm``. Input [B, C, ...] with at least 2 dims.

    Raises:
        ValueError: input with fewer than 2 dims, or one value per channel over the whole global batch.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.double()
        first = _AllReduceWithGradient.apply(torch.cat([x.sum(dims), x.new_tensor([input.numel() // input.shape[1]])]))
        count = first[-1].detach()
        if float(count) <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(count)} over all ranks")
        mean = first[:-1] / count  # [C]
        centred = x - mean.view(shape)
        var = _AllReduceWithGradient.apply(centred.pow(2).sum(dims)) / count  # [C], biased: normalises the batch
        out = (centred * torch.rsqrt(var + self.eps).view(shape)).to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                unbiased = var * count / (count - 1)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm*d`` of ``module`` made synchronous across ranks.

    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlooSyncBatchNorm` elsewhere.

    Parameters and buffers keep their names and values, so state dicts load either way.
    Returns the converted module (the same object unless ``module`` is itself a BatchNorm).
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (GlooSyncBatchNorm,
                                                                                      nn.SyncBatchNorm)):
        synced = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        synced = synced.to(device)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


__all__ = ["DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "CollectiveError", "GlooSyncBatchNorm", "all_gather_cat", "all_reduce_sum", "barrier",
           "broadcast_", "broadcast_object", "check_ranks_agree", "collective_failure_context", "collective_timeout",
           "convert_sync_batchnorm", "init_from_environment", "is_distributed", "is_main_process", "local_device",
           "rank", "shard_sizes", "world_size"]
