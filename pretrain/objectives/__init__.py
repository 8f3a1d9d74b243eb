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

from auxseg.errors import AuxsegError
from pretrain.objectives.base import OBJECTIVES, Objective, StepBatch, register_objective

__all__ = ["OBJECTIVES", "Objective", "StepBatch", "register_objective", "build_objective", "check_plugins"]

ENTRY_POINT_GROUP = "auxseg.objectives"
PATH_VARIABLE = "AUXSEG_OBJECTIVE_PATH"
DISCOVERY_ERRORS: list[str] = []
"""Plug-ins that could not be loaded, one line each. Discovery runs at import, which every command does
(the config schema lists the objectives), so a broken plug-in folder is recorded here instead of raised:
only the commands that train (:func:`check_plugins`) refuse to start."""


class PluginError(AuxsegError, ImportError):
    """An objective plug-in (``AUXSEG_OBJECTIVE_PATH`` folder or file, or entry point) that cannot be loaded."""


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
            importlib.import_module(f"{__name__}.{info.name}")  # the package's own: a failure here is a bug
    for folder in filter(None, os.environ.get(PATH_VARIABLE, "").split(os.pathsep)):
        if not Path(folder).is_dir():
            DISCOVERY_ERRORS.append(f"{PATH_VARIABLE}: {folder} is not a folder (unset the variable or fix the path)")
            continue
        for path in sorted(Path(folder).glob("*.py")):
            try:
                _load_file(path)
            except Exception as err:  # the user's file: record it, name it
                DISCOVERY_ERRORS.append(f"{PATH_VARIABLE}: cannot import {path} ({type(err).__name__}: {err})")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()  # an installed package's objective module registers itself on import
        except Exception as err:
            DISCOVERY_ERRORS.append(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}): cannot import it "
                                    f"({type(err).__name__}: {err})")


def check_plugins() -> None:
    """Raise :class:`PluginError` (one line) when a plug-in failed to load; commands that train call this."""
    if DISCOVERY_ERRORS:
        more = f" (and {len(DISCOVERY_ERRORS) - 1} more)" if len(DISCOVERY_ERRORS) > 1 else ""
        raise PluginError(" ".join(DISCOVERY_ERRORS[0].split()) + more)


_discover()


def build_objective(name: str, cfg, in_channels: int) -> Objective:
    """The objective ``name`` with its config section ``cfg`` on features of ``in_channels`` channels."""
    check_plugins()
    if name not in OBJECTIVES:
        raise ValueError(f"loss.name: {name!r} is not a registered objective (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name](cfg, in_channels)
