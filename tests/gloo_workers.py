"""Run a function in two (or more) CPU processes joined by gloo, as the distributed tests need.

``run_gloo(body, world, data, tmp_path)`` starts ``world`` spawned processes on a free local
port; each joins the group, calls ``body(rank, world, data)`` and saves what it returns; the
results come back in rank order. A process that waits in a collective another never reaches
fails the test after ``timeout`` seconds instead of hanging the suite. ``body`` must be a
module-level function (spawned processes import it by name).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


def _worker(rank: int, world: int, port: int, body: Callable, data: Any, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(body(rank, world, data), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def run_gloo(body: Callable, world: int, data: Any, folder: Path, timeout: float = 120.0) -> list[Any]:
    """``[body(0, world, data), ..., body(world - 1, world, data)]``, each run in its own gloo process."""
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(folder / "rank")
    ctx = mp.start_processes(_worker, args=(world, port, body, data, out), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:  # a collective that one process never reached
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"distributed workers still waiting after {timeout} s")
    return [torch.load(f"{out}.{rank}") for rank in range(world)]
