"""``auxseg pipeline CONFIG`` and ``auxseg demo``: the semi-supervised loop end to end."""

from __future__ import annotations

import argparse

from auxseg.cli import ConfigCommand, add_config_arguments, add_verbose_argument, run_config_command
from auxseg.presets import ROOT

DEMO_CONFIG = ROOT / "configs" / "pipeline" / "demo.yaml"  # shipped in the package: works after pip install


def main_pipeline(args: argparse.Namespace) -> int:
    from loop.pipeline import PipelineConfig, run, shown_config

    command = ConfigCommand(prog=f"auxseg {args.command}", schema=PipelineConfig, run=run, show=shown_config)
    return run_config_command(args, command)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="the whole semi-supervised loop: segmenter -> auxiliary labels -> pre-train -> fine-tune -> report",
        description=(
            "Run the semi-supervised loop of supplement Table 7 from one config: fine-tune a segmenter on "
            "the labelled subset (also the baseline), label all training images with its features, "
            "pre-train with those auxiliary labels, fine-tune on the same subset, evaluate, and write "
            "<work_dir>/report.md. Finished steps of an earlier run with the same config are reused."
        ),
    )
    add_config_arguments(p, "pipeline", "seeds=[0,1]")
    p.set_defaults(func=main_pipeline)

    d = subparsers.add_parser(
        "demo",
        help="the pipeline on a dataset the project generates itself (CPU, no downloads, a few minutes)",
        description=(
            f"Run the pipeline with {DEMO_CONFIG.relative_to(ROOT)}: a synthetic dataset "
            "whose classes look alike across images, ResNet-18 DeepLabV3 at small resolution, on the CPU. "
            "Prints where the report is."
        ),
    )
    d.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. work_dir=runs/demo2")
    d.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_verbose_argument(d)
    d.set_defaults(func=main_pipeline, config=str(DEMO_CONFIG))
