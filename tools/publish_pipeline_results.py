"""Copy a finished pipeline run's report into a committed results file, with machine and command.

    python tools/publish_pipeline_results.py runs/camvid_cpu bench/results/camvid_downstream.md \\
        --command "auxseg pipeline configs/pipeline/camvid_cpu.yaml seeds=[0,1]"

Writes the results Markdown (the run's report.md under a header naming the
machine, the command and the step times) and copies the per-class and
training-curve figures next to it (``<results stem>_figures/``). The
auxiliary-label overlay stays in the run folder: it is large.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

FIGURES = ("per_class_iou.png", "training_curves.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", help="a finished pipeline work_dir (holds report.md and summary.json)")
    parser.add_argument("results", help="the Markdown results file to write")
    parser.add_argument("--command", required=True, help="the command that produced the run, quoted")
    args = parser.parse_args()

    work = Path(args.work_dir)
    report = work / "report.md"
    if not report.is_file():
        print(f"{report} not found: is {work} a finished pipeline run?", file=sys.stderr)
        return 2
    results = Path(args.results)
    fig_dir = results.with_name(results.stem + "_figures")
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:
        shutil.copyfile(work / "figures" / name, fig_dir / name)

    steps = []
    for record in sorted(work.glob("*/step.json")):
        data = json.loads(record.read_text())
        steps.append(f"{data['step']} {data['elapsed_s'] / 60:.1f} min")
    text = report.read_text().replace(f"{work.resolve()}/", f"{args.work_dir.rstrip('/')}/")  # no machine paths
    text = text.replace("](figures/", f"]({fig_dir.name}/")
    text = text.replace("![Auxiliary labels on validation images (overlay)](" + fig_dir.name + "/auxlabels_overlay.png)",
                        f"(overlay figure: `{work}/figures/auxlabels_overlay.png`, not committed: large)")
    header = [
        f"<!-- written by tools/publish_pipeline_results.py from {work} -->",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; other jobs shared the CPU at times, "
        "so step times are upper bounds.",
        f"Command: `{args.command}`.",
        f"Step wall times: {'; '.join(steps)}.",
        "",
    ]
    results.write_text("\n".join(header) + text)
    print(f"wrote {results} and {fig_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
