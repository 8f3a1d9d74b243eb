"""File helpers shared by the stages: atomic writes, JSON, NPZ, JSON-lines logs, hashes, and their errors.

Every output is written to a temporary file in the destination folder and
renamed into place, so an interrupted run never leaves a half-written file
under the final name. A write that fails (disk full, read-only file system,
quota) raises :class:`WriteError`, one line naming the target file and the
cause; the temporary file is removed and the previous file at that path is
left intact. What each helper promises, and the test of each promise, is in
docs/reliability.md. Images and label maps are :mod:`auxseg.images`.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from auxseg.errors import AuxsegError


class WriteError(AuxsegError, OSError):
    """A file that could not be written (disk full, read-only, ...); names the target and the cause.

    ``errno`` is the underlying OS error number when there is one (``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, path: str | Path, cause: str, errno: int | None = None):
        super().__init__(f"cannot write {path}: {cause}")
        self.errno = errno  # (no strerror / filename: str() stays the one-line message)
        self.path = str(path)
        self._parts = (str(path), cause, errno)

    def __reduce__(self):  # picklable, so a worker process can hand it to the parent
        return (type(self), self._parts)


class DataFileError(AuxsegError, ValueError):
    """A state or data file (JSON, NPZ) that cannot be decoded; the one-line message names the file."""


class JsonLinesError(AuxsegError, ValueError):
    """A JSON-lines file corrupt before its last line; the message names the file and the line number."""


# errno values that can only mean "the target could not be written", whatever step raised them
_WRITE_ERRNOS = {
    errno_codes.ENOSPC, errno_codes.EDQUOT, errno_codes.EFBIG, errno_codes.EROFS, errno_codes.EIO,
}


def error_cause(err: BaseException) -> str:
    """A short lower-case cause from an OSError ("no space left on device"), else its first line."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
        return text[:1].lower() + text[1:]
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def write_error(path: str | Path, err: BaseException) -> WriteError:
    """The :class:`WriteError` for a failed write of ``path`` (``raise write_error(path, err) from err``)."""
    if isinstance(err, WriteError):
        return err
    return WriteError(path, error_cause(err), getattr(err, "errno", None))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On error the temporary file is removed and ``path`` is left untouched. A
    failure to create, fill (disk full, quota, read-only: ENOSPC, EDQUOT,
    EFBIG, EROFS, EIO) or rename the file is re-raised as :class:`WriteError`
    naming ``path``; any other error of the caller's block passes through.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the permissions of an ordinary file
        os.close(fd)
    except OSError as err:
        raise write_error(path, err) from err
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as err:
            if isinstance(err, WriteError) or err.errno not in _WRITE_ERRNOS:
                raise
            raise write_error(path, err) from err
        try:
            os.replace(tmp_path, path)
        except OSError as err:
            raise write_error(path, err) from err
    finally:
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass  # never mask the original error; a stray ".name.*.tmp" is harmless


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a short write is not an error by itself)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); :class:`WriteError` on failure."""
    with atomic_path(path) as tmp:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
            try:
                _write_all(fd, data)
                os.fsync(fd)  # on some file systems a full disk only shows here
            finally:
                os.close(fd)
        except OSError as err:
            raise write_error(path, err) from err


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; :class:`WriteError` on failure."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in their order, a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Decode a JSON file; a file that is not valid JSON (or nests too deeply to decode, ``[[[[...``) raises
    :class:`DataFileError` naming it. A missing file raises ``FileNotFoundError``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise DataFileError(f"{path}: not valid JSON: {error_cause(err)}") from err
    except RecursionError as err:
        raise DataFileError(f"{path}: not valid JSON: arrays or objects nested too deeply") from err


def read_json_object(path: str | Path) -> dict:
    """:func:`read_json` for a file that must hold a JSON object (a manifest, a step record, a report):
    anything else (``[]``, ``null``, a number) raises :class:`DataFileError` naming the file and what it holds."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataFileError(f"{path}: expected a JSON object, found {_json_kind(data)}")
    return data


def _json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (``an array``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "a number"
    return "an array" if isinstance(value, list) else "a string"


MAX_ARRAY_BYTES = 4 << 30  # what one .npz file may expand to in memory (its arrays' declared sizes, summed)


def npz_declared_bytes(path: str | Path) -> int:
    """The bytes the arrays of an ``.npz`` file declare in their headers, read without loading any array.

    A compressed member can declare far more than the file holds (a "zip
    bomb"); this is the number to bound before ``np.load`` allocates it.
    """
    import zipfile

    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    return total


def check_npz_size(path: str | Path, max_bytes: int = MAX_ARRAY_BYTES) -> None:
    """Raise :class:`DataFileError` when an ``.npz`` file's arrays would take more than ``max_bytes`` once read."""
    path = Path(path)
    try:
        declared = npz_declared_bytes(path)
    except FileNotFoundError:
        raise
    except Exception:  # not a zip, no npy header, ...: np.load, which the caller runs next, names the problem
        return
    if declared > max_bytes:
        raise DataFileError(f"{path}: its arrays declare {declared / 2**30:.1f} GiB (at most {max_bytes / 2**30:.1f} GiB "
                            f"is read from one file; {path.stat().st_size} bytes on disk)")


def read_npz(path: str | Path, max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read into memory with ``allow_pickle=False`` (nothing is executed).

    A truncated or damaged file (``BadZipFile``, a short read, a pickled object)
    raises :class:`DataFileError` naming the file instead of the decoder's
    traceback, and so does a file whose arrays declare more than ``max_bytes``
    (checked from the headers, before anything is allocated).
    """
    path = Path(path)
    check_npz_size(path, max_bytes)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, ValueError, OSError: all mean "cannot decode"
        raise DataFileError(f"{path}: not a readable .npz file ({type(err).__name__}: {error_cause(err)})") from err


# ----------------------------------------------------------------------------- JSON-lines logs


def _torn_tail(data: bytes) -> tuple[bytes, bytes]:
    """Split ``data`` into its newline-terminated part and an unterminated last line (maybe empty)."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], data[cut:]


def _parse_jsonl_line(path: Path, lineno: int, raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JsonLinesError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as err:
        raise JsonLinesError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from err
    except RecursionError as err:
        raise JsonLinesError(f"{path}:{lineno}: not valid JSON (arrays or objects nested too deeply)") from err
    if not isinstance(rec, dict):
        raise JsonLinesError(f"{path}:{lineno}: not a JSON object (got {type(rec).__name__})")
    return rec


def _warn_torn(path: Path, lineno: int, tail: bytes, action: str) -> None:
    warnings.warn(
        f"{path}:{lineno}: ignoring a torn last line ({len(tail)} bytes, no newline; "
        f"a run killed mid-write leaves one){action}",
        UserWarning,
        stacklevel=3,
    )


def read_jsonl(path: str | Path, skip_bad: str | None = None) -> list[dict]:
    """Records of a JSON-lines file, one JSON object per line; blank lines are skipped.

    A torn last line (no final newline and not valid JSON: what ``kill -9``
    during :func:`append_jsonl` can leave) is ignored with a ``UserWarning``.
    Anything wrong before it, or a bad last line that does end in a newline,
    raises :class:`JsonLinesError` naming the file and the line number, unless
    ``skip_bad`` says what skipping a record costs (a journal of redoable work:
    "its image is labelled again"): then each bad line is a ``UserWarning``
    naming the file and line, followed by ``skip_bad``. A missing file raises
    ``FileNotFoundError``. The file is never modified.
    """
    path = Path(path)
    body, tail = _torn_tail(path.read_bytes())
    lines = body.split(b"\n")[:-1]  # body ends in "\n" (or is empty)
    records = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            records.append(_parse_jsonl_line(path, n, raw))
        except JsonLinesError as err:
            if skip_bad is None:
                raise
            warnings.warn(f"{err}; skipped: {skip_bad}", UserWarning, stacklevel=2)
    if tail.strip():
        try:
            records.append(_parse_jsonl_line(path, len(lines) + 1, tail))
        except JsonLinesError:
            _warn_torn(path, len(lines) + 1, tail, "")
    return records


def _last_line_start(fd: int, size: int, chunk: int = 1 << 16) -> int:
    """Offset just after the last newline of the open file (0 if it has none), reading backwards."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        block = os.pread(fd, end - start, start)
        i = block.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as one line to a JSON-lines file (created with its folder if absent).

    The line goes out in one ``write`` on an ``O_APPEND`` descriptor, so a
    killed process loses at most this line and leaves at most a torn last line,
    which :func:`read_jsonl` ignores. A torn last line already there is cut off
    first (with a warning) so the new record is not glued onto it; only the
    last line is looked at, so an append costs the same however long the file
    is (corruption further up is :func:`read_jsonl`'s to report). A failed write
    (disk full) raises :class:`WriteError` and the file is cut back to what it was.
    """
    if not isinstance(record, dict):
        raise TypeError(f"append_jsonl: record must be a dict, got {type(record).__name__}")
    path = Path(path)
    line = (json.dumps(record) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            start = _last_line_start(fd, size)
            tail = os.pread(fd, size - start, start)
            try:
                _parse_jsonl_line(path, 0, tail)
                line = b"\n" + line  # a complete record that only lacks its newline
            except JsonLinesError:
                lineno = 1 + (os.pread(fd, start, 0).count(b"\n") if start else 0)
                _warn_torn(path, lineno, tail, "; cutting it off before appending")
                os.ftruncate(fd, start)
                size = start
        try:
            _write_all(fd, line)
        except OSError as err:
            try:
                os.ftruncate(fd, size)  # drop the part that landed
            except OSError:
                pass
            raise write_error(path, err) from err
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
