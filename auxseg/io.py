"""File helpers shared by the stages: atomic writes, hashes, images and label maps.

Every output is written to a temporary file in the destination folder and
renamed into place, so an interrupted run never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from auxseg.errors import AuxsegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(AuxsegError, OSError):
    """An image file that cannot be read or decoded; the message names the file."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- images


def list_images(root: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files below ``root`` as sorted paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    return sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as uint8 RGB ``[H, W, 3]``.

    Gray, RGBA and palette images are converted to RGB; EXIF orientation is
    applied. A missing, unreadable or truncated file raises
    :class:`ImageReadError` naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncation is detected here
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (0, 0, 0, 255))
                img = Image.alpha_composite(background, img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG (uint8 or uint16) as a 2-D integer array."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read label map {path}: {err}") from err
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
