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

Every failure is one line that names the file and says what is wrong with it
(not a torch checkpoint, truncated, unsafe content, disk full); none of them
suggests switching safe loading off. See docs/reliability.md.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auxseg.errors import AuxsegError
from auxseg.files import WriteError, atomic_path, write_error


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

    Raises :class:`CheckpointError`, one line naming the file, if it is
    missing, not a torch checkpoint at all (empty, text, a plain pickle, ...),
    truncated or corrupt, or holds any object outside the allow-list (for
    example a pickle that would run code).
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
    except Exception as err:
        # what the file is, decided only after torch failed: nothing torch can load is turned away
        not_torch = _not_a_torch_checkpoint(path)
        if not_torch:
            raise CheckpointError(f"{path} is not a torch checkpoint ({not_torch})") from err
        if isinstance(err, pickle.UnpicklingError):
            raise CheckpointError(
                f"refusing to load {path}: it contains objects outside the safe allow-list "
                f"(only tensors, plain data and mmengine's known types are loaded). Details: {_unpickling_detail(err)}"
            ) from err
        if isinstance(err, OSError):
            raise CheckpointError(f"cannot read checkpoint {path}: {_first_sentence(err)}") from err
        if isinstance(err, (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError)):
            raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupt ({_first_sentence(err)})") from err
        raise


# The first pickle in a legacy (pre-zip) torch file is this magic number, in any pickle protocol.
_LEGACY_HEADS = tuple(
    pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)
)


def _not_a_torch_checkpoint(path: Path) -> str | None:
    """What the file is when its first bytes show it is no torch checkpoint; ``None`` if it may be one."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if not head:
        return "empty file, 0 bytes"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or head[257:262] == b"ustar":
        return None  # torch's zip format (or its oldest, tar one): a damaged checkpoint, not a foreign file
    if head.startswith(_LEGACY_HEADS):
        return None
    if len(head) >= 10 and head[8:10] == b'{"':
        return "a safetensors file; read it with safetensors.torch.load_file"
    if head.startswith(b"\x80"):
        return "a plain pickle, not written by torch.save"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"a text file starting {first[:40]!r}"
    return f"unknown binary data starting {head[:8].hex(' ')}"


def _first_sentence(err: BaseException) -> str:
    """The first sentence of an error's first line (torch's messages run to several)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[:1].lower() + err.strerror[1:]
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[0].split(". ")[0].rstrip(".")


def _unpickling_detail(err: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its advice to turn safe loading off."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    keep = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or re.search(r"weights_only|Weights only load failed|Check the documentation|^\(\d\)", line):
            continue
        line = line.removeprefix("WeightsUnpickler error:").strip()
        line = line.split(". Please use")[0].rstrip(".")  # drop "allow-list it if you trust it"
        if line:
            keep.append(line)
    return "; ".join(keep) or type(err).__name__


def save_checkpoint(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file and rename it into place.

    A failed write (an ``OSError`` such as ENOSPC, or torch's "enforce fail at
    inline_container.cc" when the disk fills mid-file) raises
    :class:`~auxseg.files.WriteError`, one line: "cannot write <path>: <cause>".
    The temporary file is removed and a previous file at ``path`` is left intact.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except OSError as err:
            raise write_error(path, err) from err
        except RuntimeError as err:
            if not _TORCH_WRITE_FAILURE.search(str(err)):
                raise
            raise _torch_write_error(path, err) from err
    return path


# how torch's C++ stream writer reports a failed write (it raises RuntimeError, not OSError)
_TORCH_WRITE_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|file write failed|cannot be opened")


def _torch_write_error(path: Path, err: RuntimeError) -> WriteError:
    """torch reports a full disk as a failed assertion; check the free space to say which it was."""
    detail = _first_sentence(err)
    try:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < (64 << 20):
        return WriteError(path, f"no space left on device ({free >> 20} MiB free; torch: {detail})", errno.ENOSPC)
    return WriteError(path, f"torch could not write the file ({detail})")


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
