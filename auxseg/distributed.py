"""Generic process-group helpers shared by the stages; every one is a no-op in a single process.

Launch with ``torchrun --nproc_per_node=N ...``: the rank, world size and local
rank come from the ``env://`` variables torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so multi-node runs work the same way.
Stage-specific collectives (pretrain's gathers) live in the stage.

torch is imported inside the functions: importing this module stays cheap for
code paths that never go distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank, world size and the rank within its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's variables; one process (0, 1, 0) when unset."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistInfo(rank, world, local_rank)


def init_process_group(info: DistInfo, backend: str) -> bool:
    """Join torchrun's process group when ``world_size > 1`` and none is joined yet.

    Returns True when this call created the group (so the caller knows it may destroy it).
    """
    if info.world_size <= 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return True


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank; nothing in a single process."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
