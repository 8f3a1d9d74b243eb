"""Deterministic subsets of the labelled training images ("10%", "20%", "100 images").

A split is chosen from the *sorted* list of training-image stems and a seed,
so anyone with the same dataset gets the same subset, on any machine and with
any numpy version: images are ranked by ``sha256(f"{seed}:{stem}")`` and the
first ``k`` are taken. For one seed, smaller splits are subsets of larger ones
(the 10% images are among the 20% images).

A split file is plain text, one stem per line, sorted (the format mmseg's
``ann_file`` reads): the image path relative to the image folder, without the
image suffix (``0001TP_006690`` for CamVid, ``aachen/aachen_000000_000019``
for Cityscapes with suffix ``_leftImg8bit.png``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from auxseg.errors import AuxsegError
from auxseg.files import atomic_write_text
from auxseg.paths import relative_inside


class SplitError(AuxsegError, ValueError):
    """A split spec, split file or image folder that does not fit; names the file or value."""


@dataclass(frozen=True)
class SplitSpec:
    """Which subset: a ``fraction`` in (0, 1] or a number of images ``count``, and a ``seed``."""

    fraction: float | None = None
    count: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.count is None):
            raise SplitError("give exactly one of fraction or count")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise SplitError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.count is not None and self.count < 1:
            raise SplitError(f"count must be >= 1, got {self.count}")

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> SplitSpec:
        """``"10%"`` -> 10 percent, ``"100"`` or ``"100img"`` -> 100 images."""
        text = text.strip()
        if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text):
            return cls(fraction=float(m.group(1)) / 100, seed=seed)
        if m := re.fullmatch(r"(\d+)\s*(?:img|images)?", text):
            return cls(count=int(m.group(1)), seed=seed)
        raise SplitError(f"split {text!r} must look like '10%' or '100img'")

    def size(self, total: int) -> int:
        """How many of ``total`` images this spec selects (at least 1; rounds half up)."""
        if self.count is not None:
            if self.count > total:
                raise SplitError(f"asked for {self.count} images but only {total} are available")
            return self.count
        return max(1, min(total, math.floor(self.fraction * total + 0.5)))

    def name(self) -> str:
        """File-name stem: ``train_10pct_seed0`` or ``train_100img_seed0``."""
        if self.count is not None:
            return f"train_{self.count}img_seed{self.seed}"
        pct = self.fraction * 100
        pct_text = f"{pct:g}".replace(".", "p")
        return f"train_{pct_text}pct_seed{self.seed}"


def list_stems(image_dir: str | Path, img_suffix: str) -> list[str]:
    """Sorted stems (relative path without ``img_suffix``) of all images below ``image_dir``."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise SplitError(f"training image folder not found: {image_dir}")
    stems = sorted(
        p.relative_to(image_dir).as_posix()[: -len(img_suffix)]
        for p in image_dir.rglob(f"*{img_suffix}")
        if p.is_file() and not p.name.startswith(".")
    )
    if not stems:
        raise SplitError(f"no images ending in {img_suffix!r} under {image_dir}")
    return stems


def rank_key(stem: str, seed: int) -> str:
    """The sort key that orders images for a seed (platform- and library-independent)."""
    return hashlib.sha256(f"{seed}:{stem}".encode()).hexdigest()


def select(stems: list[str], spec: SplitSpec) -> list[str]:
    """The subset of ``stems`` for ``spec``, sorted. Independent of the input order."""
    unique = sorted(set(stems))
    if len(unique) != len(stems):
        raise SplitError("the stem list has duplicates")
    ranked = sorted(unique, key=lambda s: rank_key(s, spec.seed))
    return sorted(ranked[: spec.size(len(unique))])


def split_text(stems: list[str]) -> str:
    return "".join(f"{s}\n" for s in stems)


def write_split(path: str | Path, stems: list[str]) -> Path:
    """Write a split file atomically (one stem per line)."""
    path = Path(path)
    atomic_write_text(path, split_text(stems))
    return path


def _entry_stem(line: str, where: str, image_prefix: str | None, img_suffix: str | None) -> str:
    """The stem of one split-file line: a stem as it is, or the stem of an image path relative to the
    dataset root, optionally followed by its label path, as in the literature's split files
    (``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png gtFine/train/aachen/...``).

    Every path is checked by :func:`~auxseg.paths.relative_inside` (``where`` names the line). A line
    is an image path only when its first word ends with ``img_suffix``, so stems may hold spaces.
    """
    columns = line.split(maxsplit=1)
    if image_prefix is None or not img_suffix or not columns[0].endswith(img_suffix):
        return relative_inside(line, where)
    image = relative_inside(columns[0], where)
    if len(columns) == 2:
        relative_inside(columns[1], where)  # the label path: checked, not used (the dataset pairs it)
    prefix = image_prefix.strip("/") + "/"
    if not image.startswith(prefix):
        raise SplitError(f"{where}: image {columns[0]!r} is not a training image of this dataset "
                         f"(expected {prefix}<stem>{img_suffix})")
    return image[len(prefix): -len(img_suffix)]


def read_split(path: str | Path, available: list[str] | None = None, *, image_prefix: str | None = None,
               img_suffix: str | None = None) -> list[str]:
    """Read a split file; with ``available``, check every stem exists among the training images.

    Lines are stems, or image paths relative to the dataset root with an optional label path after
    them (the literature's format): ``image_prefix`` (the training image folder relative to the
    root, e.g. ``leftImg8bit/train``) and ``img_suffix`` (``_leftImg8bit.png``) turn those into stems.
    """
    path = Path(path)
    if not path.is_file():
        raise SplitError(f"split file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SplitError(f"{path}: cannot read as a text file ({type(err).__name__}: {err})") from err
    # as auxseg.paths.read_path_list, but column-aware: a path that leaves its folder is refused, naming the line
    stems = [_entry_stem(line.strip(), f"{path}:{n}", image_prefix, img_suffix)
             for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.strip().startswith("#")]
    if not stems:
        raise SplitError(f"split file {path} is empty")
    if len(set(stems)) != len(stems):
        raise SplitError(f"split file {path} lists some images twice")
    if available is not None:
        missing = sorted(set(stems) - set(available))
        if missing:
            raise SplitError(
                f"split file {path}: {len(missing)} stems are not among the training images "
                f"(first: {', '.join(missing[:3])}); wrong dataset or image suffix?"
            )
    return stems
