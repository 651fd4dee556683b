"""torchrun awareness: which rank this is, its device, and the few collectives the trainer needs.

Single-process runs never touch ``torch.distributed``; every helper here degrades to a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_from_environ() -> DistEnv:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent -> a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistEnv(rank, world, local)


def default_device(env: DistEnv) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: torch.device | None = None, timeout_minutes: float = 60.0) -> DistEnv:
    """Join the torchrun job if there is one: gloo on CPU, nccl on CUDA. Idempotent."""
    env = env_from_environ()
    if not env.enabled:
        return env
    if not dist.is_initialized():
        device = device or default_device(env)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistEnv(dist.get_rank(), dist.get_world_size(), env.local_rank)


def current() -> DistEnv:
    """The job as torch.distributed sees it now (single process when not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), env_from_environ().local_rank)
    return DistEnv()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no-op on one process)."""
    if current().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any: keeps ranks agreeing on when to stop."""
    if not current().enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shard_batches(
    order: torch.Tensor, batch_size: int, env: DistEnv
) -> list[torch.Tensor]:
    """This rank's part of every global batch of `order` (a permutation of sample indices).

    Like DistributedSampler, `order` is padded by wrapping to a multiple of the world size; each
    global batch of `batch_size` is then split rank-strided, so every rank sees equally many
    samples per step and the averaged gradient equals the single-process one on the same global
    batch (exactly, when the sample count divides by the world size).
    """
    n = len(order)
    if env.world_size > 1 and n % env.world_size:
        extra = env.world_size - n % env.world_size
        order = torch.cat([order, order[:extra].repeat(extra // max(n, 1) + 1)[:extra]])
    batches = order.split(batch_size)
    return [batch[env.rank :: env.world_size] for batch in batches]


def gather_strided(part: torch.Tensor, total: int) -> torch.Tensor:
    """Undo ``rows[rank::world_size]``: every rank's strided share of `total` rows, back in order.

    Shares differ in length by at most one row; they are padded to equal length for all_gather.
    """
    env = current()
    if not env.enabled:
        return part
    per_rank = -(-total // env.world_size)
    padded = part.new_zeros(per_rank, *part.shape[1:])
    padded[: len(part)] = part
    shares = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(shares, padded)
    out = part.new_empty(total, *part.shape[1:])
    for rank, share in enumerate(shares):
        out[rank::env.world_size] = share[: len(range(rank, total, env.world_size))]
    return out
