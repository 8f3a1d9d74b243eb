"""Pre-training objectives as plug-ins (docs/architecture.md, "How to add an objective").

An objective is an :class:`Objective` subclass registered under a name with
:func:`register_objective`. It receives the dense feature maps of both views
and the batch (:class:`StepBatch`), owns its parameters (projection heads,
classifier heads, learned constants: saved and resumed with the model, with
an optional learning-rate multiplier ``lr_mult``), declares its typed config
section (``loss.<name>`` in the pretrain config; unknown keys are rejected)
and returns the loss and a dict of stats. The training step in
:func:`pretrain.train.train` never changes when an objective is added.

:data:`OBJECTIVES` holds

- at import: every module of this package (adding an objective = adding one file here);
- after :func:`load_plugins` (which :func:`registry`, :func:`check_plugins` and
  :func:`build_objective` call): every ``*.py`` file in the folders named by the
  environment variable ``AUXSEG_OBJECTIVE_PATH`` (``os.pathsep``-separated), one-file
  objectives kept outside the package, e.g. in a research repository; and the
  ``auxseg.objectives`` entry-point group, so an installed package can contribute
  objectives too.

Plug-ins are someone else's code, so they run only when a command needs the list of
objectives: reading a pretrain config (its ``loss`` section lists them,
:mod:`pretrain.config`), training, and ``auxseg pretrain --help``. ``auxseg --help`` and
the other stages never run them.
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

__all__ = ["OBJECTIVES", "Objective", "StepBatch", "register_objective", "build_objective", "check_plugins",
           "load_plugins", "registry"]

ENTRY_POINT_GROUP = "auxseg.objectives"
PATH_VARIABLE = "AUXSEG_OBJECTIVE_PATH"
DISCOVERY_ERRORS: list[str] = []
"""Plug-ins that could not be loaded, one line each. :func:`load_plugins` records them instead of raising,
so that listing the objectives (``auxseg pretrain --help``, the config schema) still works; the commands
that train (:func:`check_plugins`) refuse to start."""
_plugins_loaded = False


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
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # a half-run module would pass as loaded next time
        raise


def _failure(err: BaseException) -> str:
    """What a plug-in's import did, in a few words: the exception, or the exit it asked for."""
    if isinstance(err, SystemExit):
        return f"it called sys.exit({err.code!r}) while being imported"
    return f"{type(err).__name__}: {err}"


def _import_builtin() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")  # the package's own: a failure here is a bug


def load_plugins() -> None:
    """Import the objectives of ``AUXSEG_OBJECTIVE_PATH`` and of the entry points, once per process.

    A plug-in that fails (an exception, or ``sys.exit`` at import) is recorded in
    :data:`DISCOVERY_ERRORS` with one line naming the variable or entry point and the
    file, and the others still load. ``KeyboardInterrupt`` is not caught: Ctrl-C stops
    the command. A plug-in that hangs at import hangs the commands that need the
    registry, and only those.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for folder in filter(None, os.environ.get(PATH_VARIABLE, "").split(os.pathsep)):
        if not Path(folder).is_dir():
            DISCOVERY_ERRORS.append(f"{PATH_VARIABLE}: {folder} is not a folder (unset the variable or fix the path)")
            continue
        for path in sorted(Path(folder).glob("*.py")):
            try:
                _load_file(path)
            except (Exception, SystemExit) as err:  # the user's file: record it, name it
                DISCOVERY_ERRORS.append(f"{PATH_VARIABLE}: cannot import {path} ({_failure(err)})")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()  # an installed package's objective module registers itself on import
        except (Exception, SystemExit) as err:
            DISCOVERY_ERRORS.append(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}): cannot import it "
                                    f"({_failure(err)})")


def registry() -> dict[str, type[Objective]]:
    """:data:`OBJECTIVES` with the plug-ins loaded: what config validation and ``--help`` list."""
    load_plugins()
    return OBJECTIVES


def check_plugins() -> None:
    """Raise :class:`PluginError` (one line) when a plug-in failed to load; commands that train call this."""
    load_plugins()
    if DISCOVERY_ERRORS:
        more = f" (and {len(DISCOVERY_ERRORS) - 1} more)" if len(DISCOVERY_ERRORS) > 1 else ""
        raise PluginError(" ".join(DISCOVERY_ERRORS[0].split()) + more)


_import_builtin()


def build_objective(name: str, cfg, in_channels: int) -> Objective:
    """The objective ``name`` with its config section ``cfg`` on features of ``in_channels`` channels."""
    check_plugins()
    if name not in OBJECTIVES:
        raise ValueError(f"loss.name: {name!r} is not a registered objective (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name](cfg, in_channels)
