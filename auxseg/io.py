"""File helpers shared by the stages: atomic writes, hashes, images, label maps, JSON-lines logs.

Every output is written to a temporary file in the destination folder and
renamed into place, so an interrupted run never leaves a half-written file
under the final name. A write that fails (disk full, read-only file system,
quota) raises :class:`WriteError`, one line naming the target file and the
cause; the temporary file is removed and the previous file at that path is
left intact. What each helper promises, and the test of each promise, is in
docs/reliability.md.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from auxseg.errors import AuxsegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(AuxsegError, OSError):
    """An image file that cannot be read, decoded or labelled; the one-line message names the file and why."""


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


def _cause(err: BaseException) -> str:
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
    return WriteError(path, _cause(err), getattr(err, "errno", None))


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
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Decode a JSON file; a file that is not valid JSON raises :class:`DataFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise DataFileError(f"{path}: not valid JSON: {_cause(err)}") from err


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
        raise DataFileError(f"{path}: not a readable .npz file ({type(err).__name__}: {_cause(err)})") from err


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


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file, one JSON object per line; blank lines are skipped.

    A torn last line (no final newline and not valid JSON: what ``kill -9``
    during :func:`append_jsonl` can leave) is ignored with a ``UserWarning``.
    Anything wrong before it, or a bad last line that does end in a newline,
    raises :class:`JsonLinesError` naming the file and the line number. A
    missing file raises ``FileNotFoundError``. The file is never modified.
    """
    path = Path(path)
    body, tail = _torn_tail(path.read_bytes())
    lines = body.split(b"\n")[:-1]  # body ends in "\n" (or is empty)
    records = [_parse_jsonl_line(path, n, raw) for n, raw in enumerate(lines, 1) if raw.strip()]
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


# ----------------------------------------------------------------------------- images


def scan_images(root: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> tuple[list[Path], dict[str, str]]:
    """Image files below ``root`` and the image-named entries that cannot be read, both relative to ``root``.

    Symbolic links to folders outside the tree are followed (a dataset assembled
    from links is common); a folder is scanned once, by its real path when it
    has one inside the tree, so link loops end and nothing is listed twice.
    Returns (sorted image paths, ``{relative path: reason}``) where a reason is
    a dangling link, a link loop or a folder that cannot be listed. Hidden
    files and folders are ignored.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    images: list[Path] = []
    problems: dict[str, str] = {}
    # every folder reachable without following links: a link to one of them adds nothing
    seen = set()
    for folder, subdirs, _ in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        seen.add(_inode(Path(folder)))

    def walk(folder: Path) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            problems[folder.relative_to(root).as_posix() or "."] = f"cannot list the folder ({_cause(err)})"
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            rel = path.relative_to(root)
            try:
                if entry.is_dir():  # follows links
                    if not entry.is_symlink():
                        walk(path)
                    elif _inode(path) not in seen:
                        seen.add(_inode(path))
                        walk(path)
                    continue
                ok, reason = entry.is_file(), "dangling symbolic link"
            except OSError as err:  # ELOOP and the like
                ok, reason = False, f"symbolic link loop ({_cause(err)})"
            if path.suffix.lower() not in suffixes:
                continue
            if ok:
                images.append(rel)
            elif entry.is_symlink():
                problems[rel.as_posix()] = reason

    walk(root)
    return sorted(images), problems


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def list_images(root: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files below ``root`` as sorted paths relative to ``root`` (see :func:`scan_images`)."""
    return scan_images(root, suffixes)[0]


def _open_decoded(path: Path, what: str, data: bytes | None = None) -> Image.Image:
    """Open and fully decode an image with PIL (use it in ``with``); any failure is an :class:`ImageReadError`.

    ``data``: the file's bytes when the caller has read them already (decoded
    from memory; ``path`` then only names the file in messages). The message is
    one line: ``cannot read <what> <path>: <reason>``.
    """
    try:
        if (data is not None and not data) or (data is None and path.is_file() and path.stat().st_size == 0):
            raise ImageReadError(f"cannot read {what} {path}: empty file (0 bytes)")
        with warnings.catch_warnings():  # PIL only warns between 1x and 2x its pixel limit: refuse there too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data) if data is not None else path)
        try:
            img.load()  # decode now so truncation is detected here
        except BaseException:
            img.close()
            raise
        return img
    except ImageReadError:
        raise
    except FileNotFoundError as err:
        raise ImageReadError(f"cannot read {what} {path}: file not found") from err
    except IsADirectoryError as err:
        raise ImageReadError(f"cannot read {what} {path}: is a directory") from err
    except UnidentifiedImageError as err:
        raise ImageReadError(f"cannot read {what} {path}: not an image PIL can decode (unknown format or corrupt header)") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # refused before decoding
        raise ImageReadError(f"cannot read {what} {path}: {_one_line(err)}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, OSError) and err.errno and err.strerror:  # permission denied, I/O error, ...
            reason = err.strerror[:1].lower() + err.strerror[1:]
        else:  # PIL's decoders: "image file is truncated", "broken data stream", ...
            reason = f"truncated or corrupt image data ({_one_line(err)})"
        raise ImageReadError(f"cannot read {what} {path}: {reason}") from err


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]`` from a decoded image of any PIL mode (rules: :func:`read_rgb`)."""
    mode = img.mode
    reject = f"cannot read image {path}: mode {mode}"
    if mode in _UINT16_MODES or mode == "I":
        values = np.asarray(img)  # uint16 (any byte order) or int32
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                f"{reject}: 32-bit integer values {int(values.min())}..{int(values.max())} are outside 0..65535, "
                "so there is no defined way to show them as 8-bit"
            )
        gray = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 0..65535 -> 0..255, rounded
    elif mode == "F":
        values = np.asarray(img, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ImageReadError(f"{reject}: float values are not all finite (NaN or infinity)")
        if values.size and (values.min() < 0.0 or values.max() > 1.0):
            raise ImageReadError(
                f"{reject}: float values {float(values.min()):g}..{float(values.max()):g} are outside 0..1 "
                "(float images are read as intensities in 0..1)"
            )
        gray = np.rint(values * 255.0).astype(np.uint8)
    elif mode == "La":  # premultiplied luminance + alpha: keep the stored luminance, drop alpha
        gray = np.asarray(img)[..., 0].astype(np.uint8)
    else:
        # 1, L, P, PA, LA, RGB, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV: PIL's own conversion;
        # for modes with alpha that drops the alpha channel and keeps the stored colour
        try:
            with warnings.catch_warnings():
                # "Palette images with Transparency expressed in bytes should be converted to RGBA":
                # we drop transparency on purpose
                warnings.filterwarnings("ignore", message="Palette images with Transparency")
                rgb = img.convert("RGB")
        except (ValueError, OSError) as err:
            raise ImageReadError(f"{reject} cannot be converted to RGB ({_one_line(err)})") from err
        return np.asarray(rgb, dtype=np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as uint8 RGB ``[H, W, 3]``, whatever mode and bit depth PIL opens it in.

    EXIF orientation is applied. Conversions:

    - 8-bit gray ``L``, bilevel ``1`` (0 / 255), palette ``P``/``PA``, ``CMYK``,
      ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB;
    - alpha (``RGBA``, ``LA``, ``PA``, transparent ``P``): dropped, the stored
      colour is kept (no compositing onto a background);
    - 16-bit gray (``I;16``, ``I;16B``, ...): ``round(v / 257)``, so 65535 -> 255;
    - 32-bit integer ``I``: the same as 16-bit when every value is in 0..65535
      (how PIL and many tools hold 16-bit data), otherwise rejected;
    - 32-bit float ``F``: read as intensities in 0..1 (``round(v * 255)``);
      values outside 0..1 or not finite are rejected;
    - 16-bit RGB(A) files: PIL itself decodes them to 8 bits.

    A missing, empty, truncated, non-image or unconvertible file raises
    :class:`ImageReadError` whose one-line message names the file and the reason.
    """
    path = Path(path)
    with _open_decoded(path, "image") as img:
        try:
            img = ImageOps.exif_transpose(img)
        except (OSError, ValueError, SyntaxError) as err:
            raise ImageReadError(f"cannot read image {path}: bad EXIF orientation ({_one_line(err)})") from err
        return _to_rgb(img, path)


def read_label(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """Read a single-channel label PNG (uint8 or uint16) as a 2-D integer array.

    ``data``: the file's bytes, if already read (e.g. to hash them too).
    Decoding failures raise :class:`ImageReadError` naming the file, as in :func:`read_rgb`.
    """
    path = Path(path)
    with _open_decoded(path, "label map", data) as img:
        arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"label map {path} must be single-channel, got shape {arr.shape}")
    return arr


def encode_label_png(label: np.ndarray) -> bytes:
    """Encode a 2-D uint8 or uint16 label map as PNG bytes (lossless)."""
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    if label.dtype == np.uint8:
        img = Image.fromarray(label, mode="L")
    elif label.dtype == np.uint16:
        img = Image.fromarray(label)
        if img.mode not in ("I;16",):
            img = Image.fromarray(label.astype(np.uint16), mode="I;16")
    else:
        raise ValueError(f"label map dtype must be uint8 or uint16, got {label.dtype}")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_label_png(path: str | Path, label: np.ndarray) -> None:
    """Write a label map as a single-channel PNG, atomically."""
    atomic_write_bytes(path, encode_label_png(label))


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write a uint8 ``[H, W, 3]`` image as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
