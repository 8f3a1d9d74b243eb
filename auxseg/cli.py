"""The ``auxseg`` command: one subcommand per stage, plus ``env``.

Each stage package provides ``<stage>/cli.py`` with ``add_parser(subparsers)``,
which adds its subcommand and sets ``func`` to a ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

# Modules that contribute subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = (
    "auxlabels.cli",
    "pretrain.cli",
    "finetune.cli",
    "auxseg.pipeline_cli",
    "auxseg.env_report",
)


def add_config_arguments(parser: argparse.ArgumentParser, stage: str, example: str) -> None:
    """The arguments every config-driven subcommand takes: CONFIG, key=value overrides, --print-config."""
    parser.add_argument("config", help=f"YAML config (see configs/{stage}/; keys in docs/{stage}.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def load_cli_config(schema: type, args: argparse.Namespace, prog: str, check: Callable | None = None) -> Any:
    """Load ``args.config`` + overrides as ``schema`` (and ``check`` it); None after printing a config error."""
    from auxseg.config import ConfigError, load_config

    try:
        cfg = load_config(schema, args.config, args.overrides)
        if check is not None:
            check(cfg)
    except ConfigError as err:
        print(f"{prog}: config error: {err}", file=sys.stderr)
        return None
    return cfg


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
