"""The environment is read, not obeyed blindly: stale distributed variables and broken plug-in folders.

Each case runs the real command line in a fresh interpreter (the variables are
read at start-up) and checks its exit code, that stderr holds one line naming
the variables or the folder, and that it ends promptly instead of hanging.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auxseg.distributed import DistributedEnvError, dist_timeout_s, env_dist_info

REPO = Path(__file__).resolve().parents[1]
DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "AUXSEG_DIST_TIMEOUT",
             "AUXSEG_OBJECTIVE_PATH")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _auxseg(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loop", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr less the announcement lines (``[auxseg] ...``) and Python warnings."""
    return [line for line in proc.stderr.splitlines()
            if line.strip() and not line.startswith("[auxseg]") and "Warning" not in line and not line.startswith(" ")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variables, message", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "WORLD_SIZE=2 is set but MASTER_PORT is not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK=2 is outside 0..1"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"RANK": "3"}, "RANK=3 is set but WORLD_SIZE is unset"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "99999"}, "MASTER_PORT=99999 is not a port"),
])
def test_inconsistent_distributed_variables_are_named(monkeypatch, variables, message):
    for key in DIST_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedEnvError, match=message):
        env_dist_info()


def test_no_variables_is_one_process(monkeypatch):
    for key in DIST_VARS:
        monkeypatch.delenv(key, raising=False)
    info = env_dist_info()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert dist_timeout_s() == 1800
    monkeypatch.setenv("AUXSEG_DIST_TIMEOUT", "nan")
    with pytest.raises(DistributedEnvError, match="AUXSEG_DIST_TIMEOUT='nan'"):
        dist_timeout_s()


def test_stale_world_size_gives_one_line_not_a_traceback(tmp_path):
    proc = _auxseg(["pretrain", str(REPO / "configs/pretrain/tiny.yaml"), f"out_dir={tmp_path / 'out'}"],
                   _env(WORLD_SIZE="2"), tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not" in lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_peers_are_announced_and_time_out(tmp_path):
    """Inside a SLURM / torchrun shell (all variables set, no peer coming) the command used to hang silently."""
    env = _env(WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               AUXSEG_DIST_TIMEOUT="3")
    t0 = time.monotonic()
    proc = _auxseg(["pretrain", str(REPO / "configs/pretrain/tiny.yaml"), f"out_dir={tmp_path / 'out'}"], env,
                   tmp_path, timeout=90)
    assert time.monotonic() - t0 < 60
    assert "[auxseg] rank 0 of 2: joining the other processes at 127.0.0.1:" in proc.stdout + proc.stderr
    lines = _error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "rank 0 of 2: the process group at 127.0.0.1:" in lines[0] and "did not form within 3 s" in lines[0]


def test_missing_plugin_folder_breaks_only_the_commands_that_train(tmp_path):
    env = _env(AUXSEG_OBJECTIVE_PATH=str(tmp_path / "gone"))
    help_proc = _auxseg(["--help"], env, tmp_path)
    assert help_proc.returncode == 0 and "pretrain" in help_proc.stdout, help_proc.stderr
    proc = _auxseg(["pretrain", str(REPO / "configs/pretrain/tiny.yaml"), f"out_dir={tmp_path / 'out'}"], env,
                   tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert f"AUXSEG_OBJECTIVE_PATH: {tmp_path / 'gone'} is not a folder" in lines[0]
    assert not (tmp_path / "out").exists()


def test_plugin_file_that_fails_to_import_is_named(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("import not_a_module_anywhere\n")
    proc = _auxseg(["pretrain", str(REPO / "configs/pretrain/tiny.yaml"), f"out_dir={tmp_path / 'out'}"],
                   _env(AUXSEG_OBJECTIVE_PATH=str(plugins)), tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert f"cannot import {plugins / 'broken.py'} (ModuleNotFoundError" in lines[0]
