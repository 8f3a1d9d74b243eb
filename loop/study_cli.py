"""``auxseg study CONFIG``: run a study's cells (or list them with ``--plan``), then write its report."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from auxseg import console
from auxseg.cli import EXIT_CONFIG_ERROR, add_verbose_argument, report_error
from auxseg.config import ConfigError
from auxseg.errors import AuxsegError
from auxseg.files import read_json_object


def _plan_table(plan) -> str:
    from loop.study import estimate

    rows = estimate(plan)
    todo = [r for r in rows if not r["done"]]
    lines = [f"{len(rows)} steps, {len(rows) - len(todo)} finished, {len(todo)} to run; "
             f"{len(plan.runs)} runs in the report ({len({(r.arm) for r in plan.runs})} arms)", ""]
    width = max(len(r["label"]) for r in rows)
    for r in rows:
        state = "done" if r["done"] else f"~{r['estimate_s'] / 60:.1f} min" + ("" if r["measured"] else "*")
        lines.append(f"  {r['label']:<{width}}  {state:>12}  cells/{r['key']}")
    total = sum(r["estimate_s"] for r in todo)
    lines += ["", f"estimated CPU time left: {total / 3600:.1f} h on one worker"
              + ("  (* the CamVid CPU protocol's rate on a 2-core machine; finished steps of this study replace it "
                 "with their own)" if any(not r["measured"] for r in todo) else "")]
    return "\n".join(lines)


def verdicts(study_json) -> list[str]:
    """The closing lines: each arm's paired difference to the reference, per labelled fraction."""
    data = read_json_object(study_json)
    return [""] + [f"{fraction}: {d['verdict']}" for fraction, arms in data["differences"].items()
                   for d in arms.values()]


def main(args: argparse.Namespace) -> int:
    from loop.study import load_study, plan, run_all
    from loop.study_report import write

    prog = "auxseg study"
    try:
        study = load_study(args.config, args.overrides)
        if args.plan:
            print(_plan_table(plan(study)))
            return 0
        with console.session(verbose=args.verbose):
            p = plan(study)
            procs = []
            if args.workers > 1:  # N copies of this command share the cells through the per-cell locks
                argv = [sys.executable, "-m", "loop", "study", args.config, *args.overrides, "--no-report"]
                procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for _ in range(args.workers - 1)]
                time.sleep(1.0)  # let them take the first cells
            run_all(p)
            codes = [proc.wait() for proc in procs]
            if any(codes):
                print(f"{prog}: error: a worker exited with {max(codes)}", file=sys.stderr)
                return 1
            if not args.no_report:
                path = write(p)
                for line in verdicts(path.with_suffix(".json")):
                    console.say(line)
                console.say(f"study report: {path}")
    except ConfigError as err:
        print(f"{prog}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (AuxsegError, FileNotFoundError) as err:
        return report_error(prog, err)
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "study",
        help="compare arms over pre-training and fine-tune seeds: paired differences with 95%% intervals",
        description=(
            "Run every (arm, labelled fraction, pre-training seed, fine-tune seed) cell of a study config "
            "(configs/study/*.yaml), sharing steps whose inputs are equal, then write <work_dir>/study.md and "
            "study.json: per arm mean, sd and 95% CI; the paired difference to the reference arm with its "
            "interval and a verdict; how much of the spread comes from each seed; unstable runs. A rerun "
            "reuses finished steps (docs/study.md)."
        ),
    )
    p.add_argument("config", help="study YAML (configs/study/...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="study overrides, e.g. 'pretrain_seeds=[0,1]'")
    p.add_argument("--plan", action="store_true", help="list the steps and the estimated CPU time, run nothing")
    p.add_argument("--workers", type=int, default=1,
                   help="run N steps at once on this machine (each worker takes unfinished steps under a lock)")
    p.add_argument("--no-report", action="store_true", help="run the steps only (workers of a SLURM array)")
    add_verbose_argument(p)
    p.set_defaults(func=main)
