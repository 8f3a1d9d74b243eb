"""Generic process-group helpers shared by the stages; every one is a no-op in a single process.

Launch with ``torchrun --nproc_per_node=N ...``: the rank, world size and local
rank come from the ``env://`` variables torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so multi-node runs work the same way.
Stage-specific collectives (pretrain's gathers) live in the stage.

torch is imported inside the functions: importing this module stays cheap for
code paths that never go distributed.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

from auxseg import console
from auxseg.errors import AuxsegError

TIMEOUT_VARIABLE = "AUXSEG_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800  # torch's own default for gloo and nccl


class DistributedEnvError(AuxsegError, RuntimeError):
    """Distributed variables that are incomplete or inconsistent, or processes that never joined (one line)."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank, world size and the rank within its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedEnvError(f"{name}={raw!r} is not an integer") from None


def env_dist_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's variables; one process (0, 1, 0) when unset.

    The variables are read, not obeyed blindly: a shell left over from a torchrun
    or SLURM job often keeps some of them. ``WORLD_SIZE > 1`` needs ``RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` too, the rank must lie in
    ``0..WORLD_SIZE-1`` and the port in 1..65535; otherwise
    :class:`DistributedEnvError` names the variables, before anything waits.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise DistributedEnvError(f"WORLD_SIZE={world}: must be >= 1")
    rank = _env_int("RANK", None)
    if world == 1:
        if rank not in (None, 0):
            raise DistributedEnvError(f"RANK={rank} is set but WORLD_SIZE is {os.environ.get('WORLD_SIZE', 'unset')}: "
                                      "unset RANK to run one process, or launch with torchrun")
        local_rank = _env_int("LOCAL_RANK", 0)
        return DistInfo(0, 1, max(local_rank, 0))
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v, "").strip()]
    if missing:
        raise DistributedEnvError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: a "
            "distributed run needs WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT (torchrun sets them all); unset "
            "WORLD_SIZE to run one process (a leftover of an earlier job?), or start the command with torchrun")
    if not 0 <= rank < world:
        raise DistributedEnvError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    port = _env_int("MASTER_PORT", None)
    if not 1 <= port <= 65535:
        raise DistributedEnvError(f"MASTER_PORT={port} is not a port number (1..65535)")
    local_rank = _env_int("LOCAL_RANK", rank)
    if local_rank < 0:
        raise DistributedEnvError(f"LOCAL_RANK={local_rank}: must be >= 0")
    return DistInfo(rank, world, local_rank)


TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST")


def slurm_dist_info() -> DistInfo:
    """Rank, world size and local rank from SLURM's variables (``srun``), checked like :func:`env_dist_info`.

    mmengine's ``launcher=slurm`` reads ``SLURM_PROCID``, ``SLURM_NTASKS`` and
    ``SLURM_NODELIST`` (and ``SLURM_LOCALID``, ``MASTER_PORT`` when set) and overwrites
    the torchrun variables with them; a missing or malformed one would end in a
    ``KeyError`` or a wait. :class:`DistributedEnvError` names it instead.
    """
    missing = [v for v in SLURM_VARIABLES if not os.environ.get(v, "").strip()]
    if missing:
        stale = [v for v in TORCHRUN_VARIABLES if os.environ.get(v, "").strip()]
        verb = "is" if len(stale) == 1 else "are"
        hint = f" ({', '.join(stale)} {verb} set: a leftover of an earlier job?)" if stale else ""
        raise DistributedEnvError(
            f"launcher=slurm but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set{hint}: start the "
            "command with srun inside a SLURM job, or use launcher=pytorch with torchrun, or launcher=none")
    world, rank = _env_int("SLURM_NTASKS", 1), _env_int("SLURM_PROCID", 0)
    if world < 1 or not 0 <= rank < world:
        raise DistributedEnvError(f"SLURM_PROCID={rank} is outside 0..{world - 1} (SLURM_NTASKS={world})")
    local_rank = _env_int("SLURM_LOCALID", 0)
    if local_rank < 0:
        raise DistributedEnvError(f"SLURM_LOCALID={local_rank}: must be >= 0")
    port = _env_int("MASTER_PORT", 29500)  # mmengine's default when unset
    if not 1 <= port <= 65535:
        raise DistributedEnvError(f"MASTER_PORT={port} is not a port number (1..65535)")
    return DistInfo(rank, world, local_rank)


def launcher_dist_info(launcher: str) -> DistInfo:
    """This process's place in a run started by ``launcher``, checked before anything is written.

    ``"none"``: one process (mmengine reads no variable); ``"pytorch"``: torchrun's
    variables (:func:`env_dist_info`), all of which must be set, since mmengine reads
    ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` itself; ``"slurm"``: SLURM's
    (:func:`slurm_dist_info`). Also checks ``AUXSEG_DIST_TIMEOUT``. Errors are one
    :class:`DistributedEnvError` line naming the variables.
    """
    if launcher == "none":
        return DistInfo()
    dist_timeout_s()  # a malformed timeout is refused now, not when the processes start to wait
    if launcher == "slurm":
        return slurm_dist_info()
    info = env_dist_info()
    missing = [v for v in TORCHRUN_VARIABLES if not os.environ.get(v, "").strip()]
    if missing:
        raise DistributedEnvError(
            f"launcher={launcher} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start the "
            "command with torchrun (it sets them all), or set launcher=none to run one process")
    return info


def announce_join(info: DistInfo, where: str) -> None:
    """Say, before waiting, that this process joins the others at ``where`` and for how long it waits."""
    line = (f"[auxseg] rank {info.rank} of {info.world_size}: joining the other processes at {where} "
            f"(waits up to {dist_timeout_s():g} s, {TIMEOUT_VARIABLE})")
    if console.current() is not None:  # a command's session: on the terminal, not in a step's log file
        console.say(line)
    else:
        print(line, file=sys.stderr, flush=True)


def dist_timeout_s() -> float:
    """Seconds a process waits for the others (joining, and any collective): ``AUXSEG_DIST_TIMEOUT`` or 1800."""
    raw = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise DistributedEnvError(f"{TIMEOUT_VARIABLE}={raw!r}: must be a number of seconds > 0")
    return value


def init_process_group(info: DistInfo, backend: str) -> bool:
    """Join torchrun's process group when ``world_size > 1`` and none is joined yet.

    Returns True when this call created the group (so the caller knows it may destroy it).
    """
    if info.world_size <= 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    timeout = dist_timeout_s()
    announce_join(info, where)
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                                timeout=datetime.timedelta(seconds=timeout))
    except Exception as err:  # DistStoreError, RuntimeError, TimeoutError: all mean "the group did not form"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DistributedEnvError(
            f"rank {info.rank} of {info.world_size}: the process group at {where} did not form within {timeout:g} s "
            f"({type(err).__name__}: {first}); are the other {info.world_size - 1} processes running?") from err
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
