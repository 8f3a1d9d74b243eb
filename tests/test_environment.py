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


# ----------------------------------------------------------------------------- plug-ins run only where needed

# every command below in one interpreter: each exit code, and whether the plug-in file ever ran
_HELP_DRIVER = """
import sys
from pathlib import Path
from loop.cli import main
codes = []
for args in (["--help"], ["auxlabels", "--help"], ["finetune", "--help"]):
    try:
        codes.append(main(args))
    except SystemExit as err:
        codes.append(err.code)
print("codes", codes, "ran", Path("ran").exists(), file=sys.stderr)
"""


def _plugins(tmp_path: Path, body: str) -> Path:
    """A plug-in folder whose one file leaves a marker ``ran`` in the working folder, then runs ``body``."""
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / "bye.py").write_text(f"from pathlib import Path\nPath('ran').touch()\n{body}\n")
    return folder


@pytest.mark.parametrize("plugin", ["sys_exit", "hangs", "missing_folder"])
def test_help_and_other_stages_never_run_the_plugins(tmp_path, plugin):
    """``sys.exit('bye')`` in a plug-in made ``auxseg --help`` (and auxlabels', finetune's) exit 1; a plug-in that
    hangs hung them: plug-ins were imported at start-up by every command."""
    path = {"sys_exit": lambda: _plugins(tmp_path, "import sys; sys.exit('bye')"),
            "hangs": lambda: _plugins(tmp_path, "import time; time.sleep(3600)"),
            "missing_folder": lambda: tmp_path / "gone"}[plugin]()
    proc = subprocess.run([sys.executable, "-c", _HELP_DRIVER], env=_env(AUXSEG_OBJECTIVE_PATH=str(path)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "codes [0, 0, 0] ran False" in proc.stderr, proc.stderr[-2000:]
    assert "usage: auxseg" in proc.stdout and "auxseg finetune" in proc.stdout


def test_an_auxlabels_run_never_runs_the_plugins(tmp_path):
    from auxseg.synthetic import SyntheticSpec, make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", SyntheticSpec(num_train=0, num_val=2, height=32, width=40))
    plugins = _plugins(tmp_path, "import sys; sys.exit('bye')")
    proc = _auxseg(["auxlabels", str(REPO / "configs/auxlabels/tiny.yaml"), f"image_dir={data / 'val'}",
                    f"gt_dir={data / 'valannot'}", f"out_dir={tmp_path / 'out'}", "kmeans.n_fit=2",
                    "superpixels.n_segments=20"],
                   _env(AUXSEG_OBJECTIVE_PATH=os.pathsep.join([str(tmp_path / "gone"), str(plugins)])), tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "manifest.json").is_file() and not (tmp_path / "ran").exists()


def test_plugin_that_calls_sys_exit_is_one_line_for_pretrain(tmp_path):
    plugins = _plugins(tmp_path, "import sys; sys.exit('bye')")
    proc = _auxseg(["pretrain", str(REPO / "configs/pretrain/tiny.yaml"), f"out_dir={tmp_path / 'out'}"],
                   _env(AUXSEG_OBJECTIVE_PATH=str(plugins)), tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert (f"AUXSEG_OBJECTIVE_PATH: cannot import {plugins / 'bye.py'} (it called sys.exit('bye') while being "
            "imported)") in lines[0]
    assert not (tmp_path / "out").exists()


def test_pretrain_help_lists_the_objectives_and_a_plugin_that_failed(tmp_path):
    plugins = _plugins(tmp_path, "import sys; sys.exit('bye')")
    proc = _auxseg(["pretrain", "--help"], _env(AUXSEG_OBJECTIVE_PATH=str(plugins)), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  infonce " in proc.stdout and f"(not loaded: AUXSEG_OBJECTIVE_PATH: cannot import {plugins}" in proc.stdout


def test_broken_entry_point_is_one_line_for_pretrain(tmp_path):
    """An installed package that declares an ``auxseg.objectives`` entry point whose module does not import."""
    site = tmp_path / "site"
    dist = site / "broken_objectives-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-objectives\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[auxseg.objectives]\nbroken = not_a_module_anywhere\n")
    env = _env(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    proc = _auxseg(["pretrain", str(REPO / "configs/pretrain/tiny.yaml"), f"out_dir={tmp_path / 'out'}"], env,
                   tmp_path)
    lines = _error_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert ("entry point broken = not_a_module_anywhere (auxseg.objectives): cannot import it "
            "(ModuleNotFoundError: No module named 'not_a_module_anywhere')") in lines[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- every launcher checks the variables


@pytest.mark.parametrize("launcher, device, message", [
    ("pytorch", "cpu", "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not"),
    ("pytorch", "cuda", "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not"),
    ("slurm", "cuda", "launcher=slurm but SLURM_PROCID, SLURM_NTASKS, SLURM_NODELIST are not set (WORLD_SIZE is set"),
])
def test_finetune_checks_the_variables_of_every_launcher(tmp_path, monkeypatch, capsys, launcher, device, message):
    """With launcher=slurm, or pytorch on CUDA, mmengine read the variables itself: a stale WORLD_SIZE ended in a
    KeyError or a 30-minute wait, after the work_dir was written."""
    from loop.cli import main

    for key in DIST_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["finetune", str(REPO / "configs/finetune/tiny.yaml"), f"data_root={tmp_path / 'data'}",
                 f"work_dir={tmp_path / 'work'}", f"launcher={launcher}", f"device={device}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("auxseg finetune: error: ") and message in lines[0]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("variables, launcher, message", [
    ({}, "pytorch", "launcher=pytorch but WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}, "pytorch",
     "launcher=pytorch but LOCAL_RANK is not set"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, "slurm", "launcher=slurm but SLURM_NODELIST is not set: "),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n[1-2]"}, "slurm", "SLURM_PROCID=2 is outside 0..1"),
    ({"SLURM_PROCID": "x", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n1"}, "slurm", "SLURM_PROCID='x' is not an integer"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n1", "AUXSEG_DIST_TIMEOUT": "0"}, "slurm",
     "AUXSEG_DIST_TIMEOUT='0': must be a number of seconds > 0"),
])
def test_launcher_variables_are_named(monkeypatch, variables, launcher, message):
    from auxseg.distributed import launcher_dist_info

    for key in (*DIST_VARS, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedEnvError, match=message):
        launcher_dist_info(launcher)


def test_launcher_variables_that_fit_give_the_place_of_the_process(monkeypatch):
    from auxseg.distributed import launcher_dist_info

    for key in (*DIST_VARS, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    assert launcher_dist_info("none").world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "7")  # launcher=none: mmengine reads none of them, neither do we
    assert launcher_dist_info("none").world_size == 1
    for key, value in {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_NODELIST": "n[1-2]", "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(key, value)
    info = launcher_dist_info("slurm")
    assert (info.rank, info.world_size, info.local_rank) == (3, 4, 1)
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    info = launcher_dist_info("pytorch")
    assert (info.rank, info.world_size, info.local_rank) == (1, 2, 1)
