"""The stage's inputs: which images (and ground truth) to label, and reading them in batches (with a progress bar)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auxseg import console
from auxseg.contracts.label_folder import label_rel
from auxseg.errors import AuxsegError
from auxseg.images import ImageReadError, read_rgb, scan_images
from auxseg.paths import read_path_list

from .config import AuxLabelsConfig
from .run_context import RunContext


class LabelPathCollisionError(AuxsegError, ValueError):
    """Two input images would write the same label PNG (``x.png`` and ``x.jpg`` both give ``x.png``)."""


@dataclass(frozen=True)
class ImageItem:
    """One input image: its path relative to the image root, absolute path and optional ground truth."""

    rel: str
    path: Path
    gt_path: Path | None
    is_eval: bool = False  # from eval_image_dir: labelled and evaluated, not fitted on by default


@dataclass(frozen=True)
class Inputs:
    """The images of a run: their common root, the sorted items, and the image-named entries that cannot be read."""

    root: Path
    items: list[ImageItem]
    unreadable: dict[str, str]  # path relative to the root -> one-line error


def _read_list(list_file: Path, root: Path) -> list[Path]:
    """The images a list names, relative to ``root``; a line that leaves ``root`` is refused (:func:`read_path_list`)."""
    rels = read_path_list(list_file, "image")
    for rel in rels:
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{list_file}: image {root / rel} not found")
    return sorted({Path(rel) for rel in rels})


def _folder_items(folder: Path, root: Path, list_file: str | None, gt_dir: str | None, is_eval: bool,
                  unreadable: dict[str, str]) -> list[ImageItem]:
    """The images of one input folder (all, or those of ``list_file``), each with its ground truth if any.

    Image-named entries that cannot be read (dangling links, link loops) are
    added to ``unreadable`` as ``{path relative to root: reason}``.
    """
    if list_file:
        rels = _read_list(Path(list_file), folder)
    else:
        rels, problems = scan_images(folder)
        unreadable.update(((folder / rel).relative_to(root).as_posix(), f"cannot read image {folder / rel}: {why}")
                          for rel, why in problems.items())
    if not rels:
        raise FileNotFoundError(f"no images found in {folder}" + (f" (list {list_file})" if list_file else ""))
    gt_root = _absolute(gt_dir) if gt_dir else None
    if gt_root is not None and not gt_root.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt_root}")
    items = []
    for rel in rels:
        gt = gt_root / rel.with_suffix(".png") if gt_root is not None else None
        # images without ground truth are labelled but not evaluated
        gt_path = gt if gt is not None and gt.is_file() else None
        items.append(ImageItem((folder / rel).relative_to(root).as_posix(), folder / rel, gt_path, is_eval))
    return items


def _absolute(path: str | Path) -> Path:
    """An absolute, normalised path that keeps symbolic links as the user named them (never resolved:
    label paths must stay relative to the folders the user gave, wherever their links point)."""
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def collect_images(cfg: AuxLabelsConfig) -> Inputs:
    """The image root, the sorted input items (labelled images plus optional eval images) and the
    image-named entries that cannot be read (``{path relative to the root: one-line error}``).

    With ``eval_image_dir`` the root is the common parent of both folders, so
    relative paths stay unique (``train/x.png``, ``val/y.png``). Two images
    whose label PNGs would be the same file are refused here, before anything
    is written.
    """
    image_dir = _absolute(cfg.image_dir)
    groups = [(image_dir, cfg.image_list, cfg.gt_dir, False)]
    if cfg.eval_image_dir is not None:
        groups.append((_absolute(cfg.eval_image_dir), None, cfg.eval_gt_dir, True))
    root = Path(os.path.commonpath([g[0] for g in groups])) if len(groups) > 1 else image_dir
    items: dict[str, ImageItem] = {}
    unreadable: dict[str, str] = {}
    for folder, list_file, gt_dir, is_eval in groups:
        items.update((it.rel, it) for it in _folder_items(folder, root, list_file, gt_dir, is_eval, unreadable))
    has_gt = cfg.gt_dir is not None or cfg.eval_gt_dir is not None
    if has_gt and not any(it.gt_path for it in items.values()):
        raise FileNotFoundError(
            f"no ground-truth PNG matches any image (gt_dir={cfg.gt_dir}, eval_gt_dir={cfg.eval_gt_dir}); "
            "ground truth must have the image's relative path with a .png suffix"
        )
    ordered = [items[k] for k in sorted(items)]
    check_label_paths_unique(ordered)
    if unreadable and cfg.on_bad_image == "stop":
        raise ImageReadError(f"{min(unreadable.items())[1]} (on_bad_image=stop)")
    return Inputs(root, ordered, unreadable)


def check_label_paths_unique(items: list[ImageItem]) -> None:
    """Raise :class:`LabelPathCollisionError` naming both images when two map to one label PNG."""
    owner: dict[str, ImageItem] = {}
    for it in items:
        png = label_rel(it.rel)
        if png in owner:
            raise LabelPathCollisionError(
                f"{owner[png].path} and {it.path} would both be labelled as labels/{png}; rename one of them"
            )
        owner[png] = it


def read_images(items: list[ImageItem], on_bad: str, ctx: RunContext) -> list[tuple[ImageItem, np.ndarray]]:
    """Decode ``items`` to RGB; with ``on_bad="skip"`` an unreadable one is reported once and recorded in the
    run's ``skipped`` (the time spent goes to its ``read`` timing)."""
    out = []
    for it in items:
        t0 = time.perf_counter()
        try:
            out.append((it, read_rgb(it.path)))
        except ImageReadError as err:
            if on_bad == "stop":
                raise
            if it.rel not in ctx.skipped:
                print(f"[auxlabels] skipping unreadable image: {err}", file=sys.stderr)
            ctx.skipped[it.rel] = str(err)
        ctx.add_time("read", time.perf_counter() - t0)
    return out


def prefetched(chunks: list[list[ImageItem]], read):
    """Yield ``(chunk, read(chunk))``, decoding the next chunk in a thread while the caller works.

    PIL releases the GIL while decoding, so reading overlaps the forward pass.
    """
    if not chunks:
        return
    with cf.ThreadPoolExecutor(max_workers=1) as reader:
        nxt = reader.submit(read, chunks[0])
        for i, chunk in enumerate(chunks):
            loaded = nxt.result()
            if i + 1 < len(chunks):
                nxt = reader.submit(read, chunks[i + 1])
            yield chunk, loaded


def same_size_groups(loaded: list[tuple[ImageItem, np.ndarray]]) -> list[list[tuple[ImageItem, np.ndarray]]]:
    """Split decoded images into groups of one shape (one forward pass each), first-seen order."""
    groups: dict[tuple, list] = {}
    for it, img in loaded:
        groups.setdefault(img.shape, []).append((it, img))
    return list(groups.values())


def batches(items: list, size: int) -> list[list]:
    """Consecutive chunks of ``size`` items (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def progress_bar(total: int, desc: str, enabled: bool):
    """A bar counting images (``unit="img"``): the console step's line, or a tqdm bar (:func:`auxseg.console.bar`);
    disabled: updates cost nothing and print nothing."""
    return console.bar(total=total, desc=desc, unit="img", disable=not enabled)
