"""Process-group helpers of pretrain; every function is a no-op (or the identity) in a single process.

Launch with ``torchrun --nproc_per_node=N -m loop pretrain CONFIG``: the
group is initialised from the ``env://`` variables torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so multi-node runs work the
same way. gloo on CPU, nccl on CUDA. The generic helpers (rank info, barrier,
cleanup) come from :mod:`auxseg.distributed`; the gathers the loss needs live here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from auxseg.distributed import (
    DistInfo,
    DistributedEnvError,
    barrier,
    cleanup,
    env_dist_info,
    init_process_group,
    is_distributed,
)

__all__ = [
    "DistInfo",
    "all_gather_cat",
    "barrier",
    "cleanup",
    "gather_rows_with_grad",
    "init_distributed",
    "is_distributed",
]


def init_distributed(device: str = "cpu", backend: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when WORLD_SIZE > 1; return (rank info, this process's device)."""
    info = env_dist_info()
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedEnvError("train.device is cuda but no CUDA device is visible")
        if info.world_size > 1 or dev.index is None:
            dev = torch.device("cuda", info.local_rank if info.world_size > 1 else 0)
        torch.cuda.set_device(dev)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    init_process_group(info, backend)
    return info, dev


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors of all ranks along dim 0, in rank order (no gradient)."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's slice of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)  # [W, *x.shape]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # every rank computed a loss on the gathered tensor; the gradient of their sum w.r.t.
        # this rank's input is the sum of their gradients at this rank's slice
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


def gather_rows_with_grad(x: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """Gather ``[counts[rank], D]`` rows from every rank, keeping gradients; returns one tensor per rank.

    Rows are padded to ``max(counts)`` for the collective, then trimmed. With
    every rank computing the same loss on the gathered rows, the gradient that
    reaches each rank is ``world_size`` times its share; DDP's gradient
    averaging divides that back out.
    """
    if not is_distributed():
        return [x]
    m = max(counts)
    padded = torch.cat([x, x.new_zeros(m - x.shape[0], *x.shape[1:])]) if x.shape[0] < m else x
    stacked = _GatherWithGrad.apply(padded)  # [W, m, D]
    return [stacked[r, : counts[r]] for r in range(len(counts))]
