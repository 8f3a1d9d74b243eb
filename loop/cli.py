"""The ``auxseg`` command: one subcommand per stage, plus the loop's ``pipeline`` / ``demo`` and ``env``.

Each contributing module provides ``add_parser(subparsers)``, which adds its
subcommand and sets ``func`` to a ``main(args) -> int``. This module stands
above the stages (it names them all); the stages never import it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Modules that contribute subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = (
    "auxlabels.cli",
    "auxlabels.feature_view_cli",
    "auxlabels.soft_segments_cli",
    "pretrain.cli",
    "finetune.cli",
    "finetune.data_cli",
    "loop.pipeline_cli",
    "loop.study_cli",
    "loop.launch",
    "auxseg.presets",
    "auxseg.env_report",
    "boundaries.cli",
    "boundaries.learned_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auxseg",
        description=(
            "Contrastive pre-training of semantic segmentation networks with auxiliary labels: "
            "auxiliary labels from a frozen network (auxlabels), pixel contrastive pre-training "
            "(pretrain), mmsegmentation fine-tuning (finetune)."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue  # a stage not installed in this checkout
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
