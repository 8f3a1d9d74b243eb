"""Safe checkpoint loading and atomic saving for the whole project.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: only
tensors, plain containers and an allow-list of types may be unpickled. That is
the right default (a pickle can run arbitrary code), but mmengine 0.10.7
checkpoints also hold a few mmengine and numpy objects, so its resume,
``load_from`` and ``init_cfg=Pretrained`` fail on checkpoints mmengine itself
wrote. We never switch safe loading off. Instead :data:`MMENGINE_SAFE_GLOBALS`
lists exactly the extra types those checkpoints need, and

- :func:`load_checkpoint` loads any checkpoint with ``weights_only=True`` and
  that allow-list, and names the file when a checkpoint is refused;
- :func:`allow_mmengine_checkpoints` adds the same list to torch's
  process-wide allow-list so mmengine's own ``torch.load`` calls work.

Our own checkpoints hold only tensors and plain Python data, so they load with
plain ``weights_only=True`` too.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxseg.errors import AuxsegError
from auxseg.io import atomic_path


class CheckpointError(AuxsegError, RuntimeError):
    """A checkpoint that is missing, corrupt, unsafe or of the wrong format; names the file."""


def _numpy_globals() -> list:
    """numpy objects that appear in pickled arrays and scalars (numpy 1.x and 2.x names)."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtype_classes = [
        type(np.dtype(name))
        for name in (
            "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "float16", "float32", "float64", "complex64", "complex128", "str", "object",
        )
    ]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def _mmengine_globals() -> list:
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:
        return []

    def history_buffer_method(obj: Any, name: str) -> Any:
        """A ``getattr`` that only fetches HistoryBuffer's statistics methods.

        mmengine pickles ``HistoryBuffer._statistics_methods`` (plain functions
        such as ``HistoryBuffer.min``), which pickle writes as
        ``getattr(HistoryBuffer, "min")``. Allowing the real ``getattr`` would
        let a crafted file reach any attribute of any allowed object; this
        stand-in is registered under the name ``builtins.getattr`` instead.
        """
        if obj is HistoryBuffer and isinstance(name, str) and not name.startswith("_"):
            method = HistoryBuffer.__dict__.get(name)
            if callable(method):
                return method
        raise pickle.UnpicklingError(
            f"refusing getattr({getattr(obj, '__name__', type(obj).__name__)}, {name!r}) while unpickling: "
            "only HistoryBuffer statistics methods are allowed"
        )

    return [HistoryBuffer, (history_buffer_method, "builtins.getattr")]


MMENGINE_SAFE_GLOBALS: list = [*_numpy_globals(), *_mmengine_globals()]
"""The types, beyond torch's defaults, that mmengine 0.10.x checkpoints contain."""


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` everywhere in this process read mmengine checkpoints.

    Adds only :data:`MMENGINE_SAFE_GLOBALS` to torch's allow-list; arbitrary
    pickled objects are still refused. Idempotent.
    """
    torch.serialization.add_safe_globals(MMENGINE_SAFE_GLOBALS)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` and the mmengine allow-list.

    Raises :class:`CheckpointError` naming the file if it is missing, not a
    torch checkpoint, truncated, or holds any object outside the allow-list
    (for example a pickle that would run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    # torch's safe_globals context removes its entries on exit, even ones that
    # allow_mmengine_checkpoints() had added for the whole process: add only the missing ones.
    already = set(torch.serialization.get_safe_globals())
    extra = [g for g in MMENGINE_SAFE_GLOBALS if g not in already]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing to load {path}: it contains objects outside the safe allow-list "
            f"(only tensors, plain data and mmengine's known types are loaded). Details: {err}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err


def save_checkpoint(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file and rename it into place."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def state_dict_of(checkpoint: Any, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: its ``state_dict`` / ``model`` entry, or itself."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise CheckpointError(f"{path}: no state_dict found (top-level keys: {_keys(checkpoint)})")


def _keys(obj: Any) -> str:
    if not isinstance(obj, dict):
        return type(obj).__name__
    keys = list(obj)
    return ", ".join(map(str, keys[:8])) + (" ..." if len(keys) > 8 else "")


def check_keys(
    expected: set[str] | list[str],
    found: set[str] | list[str],
    path: str | Path,
    what: str = "backbone",
) -> None:
    """Raise :class:`CheckpointError` unless the two key sets are identical.

    The message names the file and the first missing / unexpected keys. Use it
    the way MoCo's ``main_lincls.py`` does: a checkpoint that loads "mostly" is
    a silent failure.
    """
    expected, found = set(expected), set(found)
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        raise CheckpointError(f"{path}: {what} keys do not match the model; " + "; ".join(parts))
