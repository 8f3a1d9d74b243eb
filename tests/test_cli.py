"""The `auxseg` command line: help everywhere and the environment report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loop.cli import build_parser, main


def test_top_level_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "env" in capsys.readouterr().out


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    assert "env" in subcommands
    for name in subcommands:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0, name
        assert "usage: auxseg " + name in capsys.readouterr().out


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: auxseg" in capsys.readouterr().out


def test_env_report_runs_as_a_command():
    out = subprocess.run(
        [sys.executable, "-m", "loop", "env", "--json"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    env = json.loads(out)
    assert env["packages"]["torch"].startswith("2.")
    # timm runs the ViT extractors; transformers (a dev extra) is the DINOv2 their tests compare with
    from importlib import metadata

    assert env["packages"]["timm"] == metadata.version("timm")
    try:
        transformers = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers = None
    assert env["packages"].get("transformers") == transformers
    assert "available" in env["cuda"]
    assert set(env["mmcv_ops"]) == {"compiled", "compat_layer"}
    assert env["import mmseg.models"] is True
