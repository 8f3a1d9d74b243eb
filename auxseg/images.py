"""Images and label maps: finding them in a folder, decoding any PIL mode to RGB, label PNGs in and out.

A file that cannot be read raises :class:`ImageReadError`, one line naming
the file and why; writes are atomic (:func:`auxseg.files.atomic_write_bytes`).
What each reader promises is in docs/reliability.md.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from auxseg.errors import AuxsegError
from auxseg.files import atomic_write_bytes, error_cause

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(AuxsegError, OSError):
    """An image file that cannot be read, decoded or labelled; the one-line message names the file and why."""


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
            problems[folder.relative_to(root).as_posix() or "."] = f"cannot list the folder ({error_cause(err)})"
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
                ok, reason = False, f"symbolic link loop ({error_cause(err)})"
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
