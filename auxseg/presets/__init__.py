"""The presets that ship inside the distribution: YAML configs per stage, mmseg configs and the seeded splits.

They live in this package (``auxseg/presets/configs/``, ``auxseg/presets/splits/``;
the repository root links ``configs`` and ``splits`` here), so an installed
wheel has them too. A relative path that starts with ``configs/`` or
``splits/`` and does not exist in the current folder is found here
(:func:`auxseg.paths.resolve_path`), and ``auxseg configs list | show | copy``
lets a user browse them and copy one to edit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOP_FOLDERS = ("configs", "splits")
PRESET_SUFFIXES = (".yaml", ".py", ".txt", ".json")


def preset_path(rel: str | Path) -> Path | None:
    """The shipped file or folder ``rel`` (e.g. ``configs/pretrain/tiny.yaml``), or None if there is none."""
    rel = Path(rel)
    if rel.is_absolute() or not rel.parts or rel.parts[0] not in TOP_FOLDERS or ".." in rel.parts:
        return None
    path = ROOT / rel
    return path if path.exists() else None


def list_presets(prefix: str = "") -> list[str]:
    """Shipped preset files as ``configs/<stage>/...`` paths, optionally those under ``prefix``."""
    found = []
    for top in TOP_FOLDERS:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in PRESET_SUFFIXES and "__pycache__" not in path.parts:
                rel = path.relative_to(ROOT).as_posix()
                if rel.startswith(prefix) or rel.startswith(f"configs/{prefix}"):
                    found.append(rel)
    return found


def _main(args: argparse.Namespace) -> int:
    if args.action == "list":
        names = list_presets(args.name or "")
        if not names:
            print(f"auxseg configs: no preset under {args.name!r}", file=sys.stderr)
            return 1
        print("\n".join(names))
        return 0
    if not args.name:
        print(f"auxseg configs {args.action}: give a preset, e.g. configs/pretrain/tiny.yaml", file=sys.stderr)
        return 2
    path = preset_path(args.name) or preset_path(f"configs/{args.name}")
    if path is None or not path.is_file():
        print(f"auxseg configs: no shipped preset {args.name!r} (`auxseg configs list` shows them)", file=sys.stderr)
        return 1
    if args.action == "show":
        print(path.read_text(), end="")
        return 0
    dest = Path(args.dest or path.name)
    if dest.is_dir():
        dest = dest / path.name
    if dest.exists() and not args.force:
        print(f"auxseg configs copy: {dest} exists (--force overwrites it)", file=sys.stderr)
        return 1
    shutil.copyfile(path, dest)
    print(f"{dest}  (a copy of {path.relative_to(ROOT).as_posix()}; its _base_ paths are relative to the presets, "
          "so point them at `configs/...` or copy the bases too)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "configs", help="list, show or copy the shipped presets (configs/ and splits/)",
        description="The presets ship inside the package, so they work after `pip install` from any folder: "
                    "a path such as configs/pretrain/tiny.yaml that does not exist in the current folder is "
                    "read from the package.",
    )
    p.add_argument("action", choices=("list", "show", "copy"))
    p.add_argument("name", nargs="?", help="a preset (configs/pipeline/demo.yaml) or, for list, a prefix (pretrain)")
    p.add_argument("dest", nargs="?", help="copy: target file or folder (default: the current folder)")
    p.add_argument("--force", action="store_true", help="copy: overwrite an existing file")
    p.set_defaults(func=_main)
