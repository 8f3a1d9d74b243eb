"""``auxseg launch``: the torchrun command (or a SLURM batch script) for pre-training and
auxiliary labelling on several GPUs and machines.

Plain functions build the argument lists and the script text; :func:`add_parser` wires them
to the CLI. Nothing here imports a stage: the command it builds is ``-m loop STAGE CONFIG
overrides...``, which every rank runs, and the stages read torchrun's ``env://`` variables
(docs/pretrain.md and docs/auxlabels.md, multi-process sections; docs/cluster.md).

Rendezvous: with ``c10d`` (the default) every node runs the *same* command; torchrun's
rendezvous on ``HOST:PORT`` (a TCP store on HOST, which must be one of the nodes) assigns the
node ranks, so ``--node-rank`` is not passed (torchrun ignores it for c10d). With ``static`` the
endpoint is the master address and each node gives its own ``--node-rank``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STAGES = ("pretrain", "auxlabels")
# the override that puts a stage on the GPU of its LOCAL_RANK (both stages pick LOCAL_RANK themselves)
DEVICE_KEY = {"pretrain": "train.device", "auxlabels": "extractor.device"}
RDZV_BACKENDS = ("c10d", "static")
DEFAULT_PORT = 29500
EXIT_USAGE = 2
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")  # SLURM --time: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
_JOB = re.compile(r"^[A-Za-z0-9_.-]+$")


class LaunchError(ValueError):
    """Bad launcher input; printed as one line, exit code 2."""


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) -> (host, port); LaunchError when malformed."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"--rdzv-endpoint must be HOST:PORT with a port in 1..65535, got {endpoint!r}")
    return host, int(port)


def stage_argv(stage: str, config: str, overrides: list[str] = (), device: str = "cuda") -> list[str]:
    """``-m loop STAGE CONFIG overrides...``; ``device`` ("cuda", "cpu" or "config": leave it to the
    config) adds the stage's device override unless the overrides already set it."""
    if stage not in STAGES:
        raise LaunchError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if not config:
        raise LaunchError("give the stage's CONFIG (a YAML file)")
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise LaunchError(f"overrides are key=value, got {bad[0]!r}")
    extra = []
    key = DEVICE_KEY[stage]
    if device != "config" and not any(o.startswith(key + "=") for o in overrides):
        extra = [f"{key}={device}"]
    return ["-m", "loop", stage, config, *overrides, *extra]


@dataclass(frozen=True)
class TorchrunOptions:
    """How torchrun starts and connects the processes of one run (defaults: one process on one machine).

    Attributes:
        nnodes: machines; 1 without an endpoint uses ``--standalone`` (local rendezvous, free port).
        nproc_per_node: processes (= GPUs) per machine.
        node_rank: this machine's rank, 0..nnodes-1; passed only to the ``static`` backend
            (``c10d`` assigns node ranks at the rendezvous and torchrun ignores it there).
        rdzv_backend: ``c10d`` (default; same command on every node) or ``static``.
        rdzv_endpoint: ``HOST:PORT`` of the rendezvous (c10d: the TCP store, on one of the nodes;
            static: the master's address). Required when nnodes > 1.
        rdzv_id: job id shared by all nodes of one run (SLURM: the job id).
        max_restarts: torchrun restarts of the whole worker group after a failure.
    """

    nnodes: int = 1
    nproc_per_node: int = 1
    node_rank: int = 0
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str | None = None
    rdzv_id: str = "auxseg"
    max_restarts: int = 0

    def check(self) -> None:
        """Raise :class:`LaunchError` naming the flag of the first value out of range."""
        if self.nnodes < 1:
            raise LaunchError(f"--nnodes must be >= 1, got {self.nnodes}")
        if self.nproc_per_node < 1:
            raise LaunchError(f"--nproc-per-node must be >= 1, got {self.nproc_per_node}")
        if not 0 <= self.node_rank < self.nnodes:
            raise LaunchError(f"--node-rank must be in 0..{self.nnodes - 1} for --nnodes {self.nnodes}, "
                              f"got {self.node_rank}")
        if self.rdzv_backend not in RDZV_BACKENDS:
            raise LaunchError(f"--rdzv-backend must be one of {', '.join(RDZV_BACKENDS)}, got {self.rdzv_backend!r}")
        if not _JOB.match(self.rdzv_id):
            raise LaunchError(f"--rdzv-id may hold letters, digits, '_', '.', '-' only, got {self.rdzv_id!r}")
        if self.max_restarts < 0:
            raise LaunchError(f"--max-restarts must be >= 0, got {self.max_restarts}")


def torchrun_argv(stage_args: list[str], options: TorchrunOptions = TorchrunOptions(), *,
                  torchrun: tuple[str, ...] = ("torchrun",)) -> list[str]:
    """The torchrun command line for one node.

    Args:
        stage_args: what every rank runs, from :func:`stage_argv` (``-m loop STAGE CONFIG ...``).
        options: nodes, processes and rendezvous (:class:`TorchrunOptions`).
        torchrun: the launcher executable (``torchrun`` or ``python -m torch.distributed.run``).
    """
    o = options
    o.check()
    argv = [*torchrun]
    if o.nnodes == 1 and o.rdzv_endpoint is None:
        argv += ["--standalone", "--nnodes", "1", "--nproc-per-node", str(o.nproc_per_node)]
    else:
        if o.rdzv_endpoint is None:
            raise LaunchError(f"--nnodes {o.nnodes} needs --rdzv-endpoint HOST:PORT (a host every node can reach)")
        parse_endpoint(o.rdzv_endpoint)
        argv += ["--nnodes", str(o.nnodes), "--nproc-per-node", str(o.nproc_per_node)]
        if o.rdzv_backend == "static":
            argv += ["--node-rank", str(o.node_rank)]
        argv += ["--rdzv-backend", o.rdzv_backend, "--rdzv-endpoint", o.rdzv_endpoint, "--rdzv-id", o.rdzv_id]
    if o.max_restarts:
        argv += ["--max-restarts", str(o.max_restarts)]
    return argv + list(stage_args)


SLURM_TEMPLATE = """\
#!/bin/bash
# Written by `auxseg launch --slurm` (docs/cluster.md): {stage} on {nodes} node(s) x {gpus_per_node} GPU(s).
# Submit with: sbatch {script_name}
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --cpus-per-task={cpus_per_task}
#SBATCH --time={time}
#SBATCH --output={output}
{extra_sbatch}
set -euo pipefail

cd {workdir}
{activate}
# The rendezvous runs on the first node of the allocation; every node runs the same torchrun
# command, which assigns node ranks at the rendezvous (c10d backend). sed, not head: head exits after one
# line, scontrol then dies of SIGPIPE, and pipefail would end the job.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
MASTER_PORT=${{MASTER_PORT:-{port}}}
export MASTER_ADDR MASTER_PORT
# One OpenMP thread per rank (torchrun's own default for several processes): the data-loader
# workers are the CPU parallelism.
export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-1}}
# export NCCL_DEBUG=INFO            # print the transport NCCL picked (IB, sockets) when debugging
# export NCCL_SOCKET_IFNAME=ib0     # the interface the nodes reach each other on, if not the default

echo "auxseg {stage}: $SLURM_JOB_NUM_NODES node(s) x {gpus_per_node} GPU(s), rendezvous $MASTER_ADDR:$MASTER_PORT"
# srun starts one task per node; --cpus-per-task is passed on explicitly because srun no longer
# inherits it from sbatch (SLURM >= 22.05)
srun --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 \\
  {command}
"""


@dataclass(frozen=True)
class SlurmJob:
    """The allocation and ``#SBATCH`` settings of a batch script.

    Attributes:
        nodes, gpus_per_node: the allocation (torchrun starts ``gpus_per_node`` processes per node).
        cpus_per_task: CPU cores per node for the torchrun task (data-loader workers of all its ranks).
        time: SLURM time limit (``HH:MM:SS`` or ``D-HH:MM:SS``).
        job_name: ``--job-name``.
        output: SLURM log file pattern (``%x`` job name, ``%j`` job id); its folder must exist.
        port: default MASTER_PORT (the environment can override it at submission).
        partition, account: optional ``#SBATCH`` lines.
    """

    nodes: int
    gpus_per_node: int
    cpus_per_task: int = 8
    time: str = "24:00:00"
    job_name: str = "auxseg"
    output: str = "%x-%j.out"
    port: int = DEFAULT_PORT
    partition: str | None = None
    account: str | None = None

    def check(self) -> None:
        """Raise :class:`LaunchError` naming the flag of the first bad value."""
        if self.nodes < 1:
            raise LaunchError(f"--nnodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise LaunchError(f"--nproc-per-node must be >= 1, got {self.gpus_per_node}")
        if self.cpus_per_task < 1:
            raise LaunchError(f"--cpus-per-task must be >= 1, got {self.cpus_per_task}")
        if not _TIME.match(self.time):
            raise LaunchError(f"--time must be a SLURM time such as 24:00:00 or 1-12:00:00, got {self.time!r}")
        if not _JOB.match(self.job_name):
            raise LaunchError(f"--job-name may hold letters, digits, '_', '.', '-' only, got {self.job_name!r}")
        if not 0 < self.port < 65536:
            raise LaunchError(f"--port must be in 1..65535, got {self.port}")
        for flag, value in (("--output", self.output), ("--partition", self.partition), ("--account", self.account)):
            if value is not None and (not value or any(c in value for c in "\n'\"$` ")):
                raise LaunchError(f"{flag} must be a plain word without spaces or quotes, got {value!r}")


def slurm_script(stage_args: list[str], job: SlurmJob, *, stage: str, workdir: str | Path = ".",
                 venv: str | Path | None = None, torchrun: tuple[str, ...] = ("torchrun",),
                 script_name: str = "JOB.sbatch") -> str:
    """A SLURM batch script: one task per node, each running torchrun with the c10d rendezvous on the
    allocation's first host (``scontrol show hostnames $SLURM_JOB_NODELIST``), ``--rdzv-id $SLURM_JOB_ID``.

    Args:
        stage_args: ``-m loop STAGE CONFIG ...`` from :func:`stage_argv`.
        job: the allocation and ``#SBATCH`` settings (:class:`SlurmJob`).
        stage: the stage's name, for the script's comments.
        workdir: the folder the job runs in (the repository root: configs are relative to it).
        venv: a virtualenv to activate first (None: none).
        script_name: where the script is written, for its "submit with" comment.
    """
    job.check()
    argv = torchrun_argv(stage_args, TorchrunOptions(nnodes=job.nodes, nproc_per_node=job.gpus_per_node,
                                                     rdzv_backend="c10d", rdzv_endpoint=f"localhost:{job.port}",
                                                     rdzv_id="job"), torchrun=torchrun)
    # values the batch shell fills in: the allocation's node count (so a resized allocation still
    # meets), the first host and port, the job id (unique per run: a requeued job starts afresh)
    shell = {"--nnodes": '"$SLURM_JOB_NUM_NODES"', "--rdzv-endpoint": '"$MASTER_ADDR:$MASTER_PORT"',
             "--rdzv-id": '"$SLURM_JOB_ID"'}
    words = [shlex.quote(a) for a in argv]
    for flag, expr in shell.items():
        words[argv.index(flag) + 1] = expr
    split = len(argv) - len(stage_args)  # launcher options / the stage command on its own line
    command = " ".join(words[:split]) + " \\\n    " + " ".join(words[split:])
    extra = [f"#SBATCH --partition={job.partition}\n" if job.partition else "",
             f"#SBATCH --account={job.account}\n" if job.account else ""]
    activate = f"source {shlex.quote(str(Path(venv) / 'bin' / 'activate'))}" if venv else ""
    return SLURM_TEMPLATE.format(
        script_name=script_name, job_name=job.job_name, nodes=job.nodes,
        gpus_per_node=job.gpus_per_node, cpus_per_task=job.cpus_per_task, time=job.time, output=job.output,
        extra_sbatch="".join(extra), workdir=shlex.quote(str(workdir)), activate=activate,
        port=job.port, stage=stage, command=command,
    )


# ----------------------------------------------------------------------------- CLI


def _default_venv() -> str | None:
    """The virtualenv this command runs in, if any (activated by the batch script)."""
    return sys.prefix if sys.prefix != sys.base_prefix else None


def _local_torchrun() -> tuple[str, ...]:
    """torchrun next to this interpreter, on PATH, or ``python -m torch.distributed.run``."""
    here = Path(sys.executable).parent / "torchrun"
    if here.is_file():
        return (str(here),)
    found = shutil.which("torchrun")
    return (found,) if found else (sys.executable, "-m", "torch.distributed.run")


def main(args: argparse.Namespace) -> int:
    prog = "auxseg launch"
    try:
        stage_args = stage_argv(args.stage, args.config, args.overrides, args.device)
        if args.slurm:
            script = Path(args.script or f"auxseg_{args.stage}.sbatch")
            job = SlurmJob(nodes=args.nnodes, gpus_per_node=args.nproc_per_node, cpus_per_task=args.cpus_per_task,
                           time=args.time, job_name=args.job_name or f"auxseg-{args.stage}", output=args.output,
                           port=args.port, partition=args.partition, account=args.account)
            text = slurm_script(stage_args, job, stage=args.stage, workdir=Path(args.workdir).resolve(),
                                venv=args.venv, script_name=str(script))
        else:
            argv = torchrun_argv(stage_args, TorchrunOptions(
                nnodes=args.nnodes, nproc_per_node=args.nproc_per_node, node_rank=args.node_rank,
                rdzv_backend=args.rdzv_backend, rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id,
                max_restarts=args.max_restarts))
    except LaunchError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.slurm:
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        print(f"{prog}: wrote {script}; submit with: sbatch {shlex.quote(str(script))}")
        if not args.run:
            return 0
        if shutil.which("sbatch") is None:
            print(f"{prog}: error: --run needs sbatch, which is not on PATH", file=sys.stderr)
            return 1
        return subprocess.call(["sbatch", str(script)])
    print(shlex.join(argv), flush=True)
    if not args.run:
        return 0
    # the printed command names torchrun; run the one that belongs to this interpreter
    return subprocess.call([*_local_torchrun(), *argv[1:]], env=dict(os.environ))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "launch",
        help="print (or run) the torchrun command for pretrain/auxlabels on several GPUs and nodes, "
             "or write a SLURM batch script",
        description=(
            "Build the torchrun command that runs `-m loop STAGE CONFIG overrides...` on every GPU of one or more "
            "machines, print it, and with --run execute it on this machine. With --slurm write a batch script "
            "instead (one srun task per node, c10d rendezvous on the first node). See docs/cluster.md."
        ),
        epilog=(
            "examples:\n"
            "  auxseg launch --nproc-per-node 4 pretrain configs/pretrain/default.yaml data.labels=work/auxlabels\n"
            "  auxseg launch --nnodes 2 --nproc-per-node 8 --rdzv-endpoint node01:29500 --rdzv-id run1 \\\n"
            "      pretrain configs/pretrain/default.yaml data.labels=/shared/auxlabels   # same on both nodes\n"
            "  auxseg launch --slurm --nnodes 2 --nproc-per-node 8 --time 12:00:00 auxlabels CONFIG"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", metavar="STAGE", help=f"one of {', '.join(STAGES)}")
    p.add_argument("config", metavar="CONFIG", help="the stage's YAML config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, passed on unchanged")
    p.add_argument("--nnodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes = GPUs per machine (default 1)")
    p.add_argument("--node-rank", type=int, default=0,
                   help="this machine's rank (static backend only; c10d assigns ranks itself)")
    p.add_argument("--rdzv-backend", default="c10d", choices=RDZV_BACKENDS, help="rendezvous (default c10d)")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="rendezvous address; required with --nnodes > 1")
    p.add_argument("--rdzv-id", default="auxseg", metavar="JOB", help="id shared by the nodes of one run")
    p.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts after a failure")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu", "config"),
                   help="add train.device= / extractor.device= (default cuda; 'config': leave the config's)")
    p.add_argument("--run", action="store_true", help="execute the command here (with --slurm: sbatch the script)")
    s = p.add_argument_group("SLURM (--slurm)")
    s.add_argument("--slurm", action="store_true", help="write a SLURM batch script instead of printing a command")
    s.add_argument("--script", metavar="PATH", help="where to write it (default auxseg_STAGE.sbatch)")
    s.add_argument("--job-name", help="default auxseg-STAGE")
    s.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per node (default 8)")
    s.add_argument("--time", default="24:00:00", help="time limit (default 24:00:00)")
    s.add_argument("--output", default="%x-%j.out", help="log file pattern (default %%x-%%j.out)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"MASTER_PORT (default {DEFAULT_PORT})")
    s.add_argument("--partition", help="#SBATCH --partition")
    s.add_argument("--account", help="#SBATCH --account")
    s.add_argument("--workdir", default=".", help="the job's working directory (default: here, the repo root)")
    s.add_argument("--venv", default=_default_venv(), help="virtualenv to activate (default: the current one)")
    p.set_defaults(func=main)
