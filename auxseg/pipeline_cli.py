"""``auxseg pipeline CONFIG`` and ``auxseg demo``: the semi-supervised loop end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from auxseg.config import ConfigError, load_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "demo.yaml"


def _run(config: Path, overrides: list[str]) -> int:
    from auxseg.pipeline import PipelineConfig, run

    try:
        cfg = load_config(PipelineConfig, config, overrides)
        run(cfg)
    except ConfigError as err:
        print(f"error: {err}")
        return 2
    return 0


def main_pipeline(args: argparse.Namespace) -> int:
    return _run(Path(args.config), args.overrides)


def main_demo(args: argparse.Namespace) -> int:
    if not DEMO_CONFIG.is_file():
        print(f"error: the demo config is missing: {DEMO_CONFIG}")
        return 2
    return _run(DEMO_CONFIG, args.overrides)


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
    p.add_argument("config", help="pipeline YAML config (see configs/pipeline/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seeds=[0,1]")
    p.set_defaults(func=main_pipeline)

    d = subparsers.add_parser(
        "demo",
        help="the pipeline on a dataset the project generates itself (CPU, no downloads, ~10 min)",
        description=(
            f"Run the pipeline with {DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[2])}: a synthetic dataset "
            "whose classes look alike across images, ResNet-18 DeepLabV3 at small resolution, on the CPU. "
            "Prints where the report is."
        ),
    )
    d.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. work_dir=runs/demo2")
    d.set_defaults(func=main_demo)
