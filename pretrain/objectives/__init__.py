"""Pre-training objectives as plug-ins (docs/architecture.md, "How to add an objective").

An objective is an :class:`Objective` subclass registered under a name with
:func:`register_objective`. It receives the dense feature maps of both views
and the batch (:class:`StepBatch`), owns its parameters (projection heads,
classifier heads, learned constants: saved and resumed with the model, with
an optional learning-rate multiplier ``lr_mult``), declares its typed config
section (``loss.<name>`` in the pretrain config; unknown keys are rejected)
and returns the loss and a dict of stats. The training step in
:func:`pretrain.train.train` never changes when an objective is added.

:data:`OBJECTIVES` is filled, at import, from

- every module of this package (adding an objective = adding one file here);
- every ``*.py`` file in the folders named by the environment variable
  ``AUXSEG_OBJECTIVE_PATH`` (``os.pathsep``-separated): one-file objectives kept
  outside the package, e.g. in a research repository;
- the ``auxseg.objectives`` entry-point group, so an installed package can
  contribute objectives too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

from pretrain.objectives.base import OBJECTIVES, Objective, StepBatch, register_objective

__all__ = ["OBJECTIVES", "Objective", "StepBatch", "register_objective", "build_objective"]

ENTRY_POINT_GROUP = "auxseg.objectives"
PATH_VARIABLE = "AUXSEG_OBJECTIVE_PATH"


def _load_file(path: Path) -> None:
    """Import a one-file objective from ``path``; it registers itself."""
    name = f"auxseg_objective_{path.stem}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{PATH_VARIABLE}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    for folder in filter(None, os.environ.get(PATH_VARIABLE, "").split(os.pathsep)):
        if not Path(folder).is_dir():
            raise NotADirectoryError(f"{PATH_VARIABLE}: {folder} is not a folder")
        for path in sorted(Path(folder).glob("*.py")):
            _load_file(path)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # an installed package's objective module registers itself on import


_discover()


def build_objective(name: str, cfg, in_channels: int) -> Objective:
    """The objective ``name`` with its config section ``cfg`` on features of ``in_channels`` channels."""
    if name not in OBJECTIVES:
        raise ValueError(f"loss.name: {name!r} is not a registered objective (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name](cfg, in_channels)
