"""``auxseg launch``: the torchrun command for 1 and 2 nodes, the SLURM batch script (run through
fake ``scontrol``/``srun`` to see the command each node gets), and one-line errors with exit code 2."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from loop import launch
from loop.cli import build_parser
from loop.cli import main as auxseg_main

PRETRAIN = ["-m", "loop", "pretrain", "configs/pretrain/default.yaml", "data.labels=/shared/aux", "train.device=cuda"]


def test_stage_command_adds_the_device_once():
    assert launch.stage_argv("pretrain", "configs/pretrain/default.yaml", ["data.labels=/shared/aux"]) == PRETRAIN
    assert launch.stage_argv("auxlabels", "a.yaml", ["extractor.device=cpu"]) == \
        ["-m", "loop", "auxlabels", "a.yaml", "extractor.device=cpu"]  # the user's choice wins
    assert launch.stage_argv("auxlabels", "a.yaml", [], device="config") == ["-m", "loop", "auxlabels", "a.yaml"]
    assert launch.stage_argv("auxlabels", "a.yaml", [])[-1] == "extractor.device=cuda"


def test_one_node_is_standalone():
    argv = launch.torchrun_argv(PRETRAIN, launch.TorchrunOptions(nproc_per_node=4))
    assert argv == ["torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "4", *PRETRAIN]


def test_two_nodes_c10d_same_command_on_every_node():
    cmds = [launch.torchrun_argv(PRETRAIN, launch.TorchrunOptions(nnodes=2, nproc_per_node=8, node_rank=r,
                                                                  rdzv_endpoint="node01:29500", rdzv_id="run1"))
            for r in (0, 1)]
    assert cmds[0] == cmds[1] == [
        "torchrun", "--nnodes", "2", "--nproc-per-node", "8", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "node01:29500", "--rdzv-id", "run1", *PRETRAIN,
    ]


def test_two_nodes_static_passes_the_node_rank():
    argv = launch.torchrun_argv(PRETRAIN, launch.TorchrunOptions(nnodes=2, nproc_per_node=8, node_rank=1,
                                                                 rdzv_backend="static", rdzv_endpoint="10.0.0.1:29400",
                                                                 max_restarts=2))
    assert argv[:11] == ["torchrun", "--nnodes", "2", "--nproc-per-node", "8", "--node-rank", "1",
                         "--rdzv-backend", "static", "--rdzv-endpoint", "10.0.0.1:29400"]
    assert argv[argv.index("--max-restarts") + 1] == "2" and argv[-len(PRETRAIN):] == PRETRAIN


def test_cli_prints_the_command(capsys):
    rc = auxseg_main(["launch", "--nnodes", "2", "--nproc-per-node", "8", "--rdzv-endpoint", "node01:29500",
                      "--rdzv-id", "run1", "auxlabels", "configs/auxlabels/default.yaml", "image_dir=/data/x"])
    out = capsys.readouterr().out.strip()
    assert rc == 0
    assert shlex.split(out) == [
        "torchrun", "--nnodes", "2", "--nproc-per-node", "8", "--rdzv-backend", "c10d", "--rdzv-endpoint",
        "node01:29500", "--rdzv-id", "run1", "-m", "loop", "auxlabels", "configs/auxlabels/default.yaml",
        "image_dir=/data/x", "extractor.device=cuda",
    ]
    assert "launch" in build_parser().format_help()


def test_run_executes_the_printed_command_with_the_local_torchrun(monkeypatch, capfd):
    # a stand-in for torchrun that prints what it was given
    monkeypatch.setattr(launch, "_local_torchrun", lambda: (sys.executable, "-c", "import sys; print(sys.argv[1:])"))
    rc = auxseg_main(["launch", "--run", "--device", "cpu", "pretrain", "configs/pretrain/tiny.yaml"])
    out = capfd.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("torchrun --standalone --nnodes 1 --nproc-per-node 1 -m loop pretrain")
    assert out[1] == str(["--standalone", "--nnodes", "1", "--nproc-per-node", "1", "-m", "loop", "pretrain",
                          "configs/pretrain/tiny.yaml", "train.device=cpu"])


def _slurm(tmp_path, *extra: str) -> tuple[str, dict]:
    script = tmp_path / "job.sbatch"
    rc = auxseg_main(["launch", "--slurm", "--script", str(script), "--nnodes", "2", "--nproc-per-node", "8",
                      "--cpus-per-task", "32", "--time", "12:00:00", "--job-name", "pt", "--partition", "gpu",
                      "--workdir", str(tmp_path), "--venv", "", *extra,
                      "pretrain", "configs/pretrain/default.yaml", "data.labels=/shared/aux"])
    assert rc == 0
    text = script.read_text()
    sbatch = dict(line[len("#SBATCH --"):].split("=", 1) for line in text.splitlines() if line.startswith("#SBATCH"))
    return text, sbatch


def test_slurm_script_header_and_syntax(tmp_path):
    text, sbatch = _slurm(tmp_path)
    assert sbatch == {"job-name": "pt", "nodes": "2", "ntasks-per-node": "1", "gpus-per-node": "8",
                      "cpus-per-task": "32", "time": "12:00:00", "output": "%x-%j.out", "partition": "gpu"}
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    assert max(i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")) < first_command  # sbatch reads no further
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)' in lines
    assert "MASTER_PORT=${MASTER_PORT:-29500}" in lines
    assert "source" not in text  # --venv "" activates nothing
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)


def test_slurm_script_runs_torchrun_once_per_node_with_the_first_host(tmp_path):
    """Run the script with fake scontrol/srun: srun gets one task per node and the torchrun command
    with the rendezvous on the first host, the allocation's node count and the job id."""
    _slurm(tmp_path, "--port", "29611")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a long host list: a reader that stops after one line would kill scontrol with SIGPIPE (exit 141)
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'gpu-a17\\ngpu-a18\\n'\nseq -f 'gpu-b%g' 200000\n")
    (bin_dir / "srun").write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {tmp_path}/srun_args\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-a[17-18]",
               SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="4711", SLURM_CPUS_PER_TASK="32")
    env.pop("MASTER_PORT", None)
    res = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "rendezvous gpu-a17:29611" in res.stdout
    args = (tmp_path / "srun_args").read_text().splitlines()
    assert args[:3] == ["--ntasks-per-node=1", "--cpus-per-task=32", "--kill-on-bad-exit=1"]
    assert args[3:] == [
        "torchrun", "--nnodes", "2", "--nproc-per-node", "8", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "gpu-a17:29611", "--rdzv-id", "4711",
        "-m", "loop", "pretrain", "configs/pretrain/default.yaml", "data.labels=/shared/aux", "train.device=cuda",
    ]


def test_slurm_script_activates_the_given_virtualenv(tmp_path):
    text = launch.slurm_script(PRETRAIN, launch.SlurmJob(nodes=1, gpus_per_node=4), stage="pretrain",
                               venv="/opt/my env", workdir="/repo")
    assert "source '/opt/my env/bin/activate'" in text.splitlines() and "cd /repo" in text.splitlines()


@pytest.mark.parametrize("argv, message", [
    (["--nnodes", "0"], "--nnodes must be >= 1, got 0"),
    (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:29500"], "--node-rank must be in 0..1"),
    (["--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
    (["--nnodes", "2", "--rdzv-endpoint", "node01"], "--rdzv-endpoint must be HOST:PORT"),
    (["--nnodes", "2", "--rdzv-endpoint", "node01:99999"], "--rdzv-endpoint must be HOST:PORT"),
    (["--nproc-per-node", "0"], "--nproc-per-node must be >= 1"),
    (["--slurm", "--time", "tomorrow"], "--time must be a SLURM time"),
    (["--slurm", "--nnodes", "0"], "--nnodes must be >= 1"),
    (["--slurm", "--partition", "gpu; rm -rf /"], "--partition must be a plain word"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    rc = auxseg_main(["launch", *argv, "--script", str(tmp_path / "x.sbatch"), "pretrain", "c.yaml"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("auxseg launch: error: ") and message in err, err
    assert not (tmp_path / "x.sbatch").exists()


def test_bad_stage_and_override_are_one_line_errors(capsys):
    assert auxseg_main(["launch", "finetune", "c.yaml"]) == 2
    assert "stage must be one of pretrain, auxlabels" in capsys.readouterr().err
    assert auxseg_main(["launch", "pretrain", "c.yaml", "train.max_iters"]) == 2
    assert "overrides are key=value, got 'train.max_iters'" in capsys.readouterr().err
