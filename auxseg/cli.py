"""What every ``auxseg`` subcommand shares: config arguments, config loading and error handling.

The ``auxseg`` command itself (the list of subcommands) lives one floor up,
in :mod:`loop.cli`; each stage's ``<stage>/cli.py`` adds its subcommand with
``add_parser(subparsers)`` and runs it through :func:`run_config_command`, so
every stage prints errors and exits the same way:

- exit 2: a config error (unknown key, wrong type, invalid value);
- exit 1: any other error caused by the input (:class:`~auxseg.errors.AuxsegError`:
  a missing or malformed file, a checkpoint that does not fit, ...);
- exit 0: success, after one summary line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auxseg import console
from auxseg.config import ConfigError, dump_config, load_config
from auxseg.errors import AuxsegError
from auxseg.paths import output_file

EXIT_INPUT_ERROR = 1
EXIT_CONFIG_ERROR = 2


def add_config_arguments(parser: argparse.ArgumentParser, stage: str, example: str, optional: bool = False) -> None:
    """The arguments every config-driven subcommand takes: CONFIG, key=value overrides, --print-config."""
    parser.add_argument("config", nargs="?" if optional else None,
                        help=f"YAML config (see configs/{stage}/; keys in docs/{stage}.md)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_verbose_argument(parser)
    parser.set_defaults(config_optional=optional)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: every step's full output (mmengine's and mmseg's logs, warnings) on the terminal."""
    parser.add_argument("--verbose", action="store_true",
                        help="print every step's full output (mmengine / mmseg logs, warnings) instead of one "
                             "line per step; without it that output goes to the step's console.log")


def stage_step(name: str, out_dir: str | Path) -> tuple[str, Path] | None:
    """The console step of a stage command: ``(name, <out_dir>/console.log)``; None in the other processes of a
    torchrun job (only rank 0 draws the line; the others print as before).

    The log is opened before the stage checks its folder (:func:`auxseg.paths.check_separate`), so a
    ``console.log`` that is a symbolic link is refused here (:class:`~auxseg.paths.UnsafePathError`)."""
    if os.environ.get("RANK", "0") != "0":
        return None
    return name, output_file(out_dir, "console.log", f"{name} log")


def config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``(CONFIG, overrides)`` of the command line.

    Where CONFIG is optional, argparse takes the first ``key=value`` for it when
    no config file is given; such a word that names no file is an override.
    """
    config, overrides = args.config, list(args.overrides)
    if getattr(args, "config_optional", False) and config and "=" in config and not Path(config).is_file():
        return None, [config, *overrides]
    return config, overrides


def load_cli_config(schema: type, args: argparse.Namespace, prog: str, check: Callable | None = None) -> Any:
    """Load ``args.config`` + overrides as ``schema`` (and ``check`` it); None after printing a config error."""
    try:
        cfg = load_config(schema, *config_and_overrides(args))
        if check is not None:
            check(cfg)
    except ConfigError as err:
        print(f"{prog}: config error: {err}", file=sys.stderr)
        return None
    return cfg


def report_error(prog: str, err: BaseException) -> int:
    """Print an input error as one line and return its exit code (2 for config errors, else 1)."""
    if isinstance(err, ConfigError):
        print(f"{prog}: config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(f"{prog}: error: {err}", file=sys.stderr)
    return EXIT_INPUT_ERROR


@dataclass(frozen=True)
class ConfigCommand:
    """A config-driven subcommand: its name, its config schema, the work, and how it reports.

    ``run(cfg)`` does the work; ``summary(cfg, result)`` turns its result into
    the line printed on success (None prints nothing); ``check(cfg)`` raises
    :class:`ConfigError` for what the schema cannot say; ``show(cfg)`` is what
    ``--print-config`` prints (default: the resolved config); ``step(cfg)`` ->
    ``(name, log file)`` (or None) makes the run one step of the console
    (:mod:`auxseg.console`): one running line with the stage's progress, its full
    output in the log file (unless ``--verbose``), and the summary as the closing line.
    """

    prog: str  # "auxseg <stage>", the prefix of every error line
    schema: type
    run: Callable[[Any], Any]
    summary: Callable[[Any, Any], str | None] | None = None
    check: Callable[[Any], None] | None = None
    show: Callable[[Any], str] = dump_config
    step: Callable[[Any], tuple[str, Path] | None] | None = None


def run_config_command(args: argparse.Namespace, command: ConfigCommand) -> int:
    """Load the config, honour ``--print-config``, run, print the summary line; return the exit code.

    Errors that the input caused (:class:`~auxseg.errors.AuxsegError`, and
    ``FileNotFoundError`` for a path that does not exist) become one line on stderr.
    """
    prog, run, summary, step = command.prog, command.run, command.summary, command.step
    cfg = load_cli_config(command.schema, args, prog, command.check)
    if cfg is None:
        return EXIT_CONFIG_ERROR
    if getattr(args, "print_config", False):
        try:
            print(command.show(cfg), end="")
        except (AuxsegError, FileNotFoundError) as err:
            return report_error(prog, err)
        return 0
    verbose = bool(getattr(args, "verbose", False))
    try:
        with console.session(verbose=verbose):
            where = step(cfg) if step is not None else None
            if where is None:
                result = run(cfg)
            else:
                with console.step(*where) as st:
                    result = run(cfg)
                    st.done(summary(cfg, result) if summary is not None else None)
                return 0
    except (AuxsegError, FileNotFoundError) as err:
        return report_error(prog, err)
    line = summary(cfg, result) if summary is not None else None
    if line:
        print(line)
    return 0
