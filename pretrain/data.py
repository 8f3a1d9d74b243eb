"""Images plus an auxiliary-label folder -> pairs of augmented views.

The label folder is read through its manifest (docs/contracts.md section 1):
number of labels, ignore value, scope and image list come from there, never
from the user. Batches are drawn by :class:`StepSampler`, a deterministic
function of (seed, iteration), so a resumed run sees exactly the images and
augmentations an uninterrupted one would, and ranks of a distributed run
split the very batch a single process would draw.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from auxseg.io import list_images, read_json, read_label, read_rgb, sha256_file
from pretrain.config import AugmentConfig
from pretrain.transforms import make_view, sample_view_params

MANIFEST_FORMAT = "auxseg.auxlabels/1"


class LabelFolderError(ValueError):
    """An auxiliary-label folder that is missing, incomplete or inconsistent; names the folder or file."""


@dataclass(frozen=True)
class LabelFolder:
    """What the pre-training stage needs from an auxiliary-label folder's manifest."""

    root: Path
    manifest_path: Path
    num_labels: int
    ignore_index: int
    scope: str  # "global" or "image"
    image_root: Path
    images: tuple[str, ...]  # the training images: the manifest's images less its eval_images
    labels_sha256: str

    def label_path(self, rel: str) -> Path:
        return self.root / "labels" / Path(rel).with_suffix(".png")


def compute_labels_sha256(labels_dir: Path, images: list[str] | tuple[str, ...]) -> str:
    """The ``labels_sha256`` of a label set (docs/contracts.md section 1).

    SHA-256 over the lines ``"<label path relative to labels/>\\t<file sha256>\\n"``
    (POSIX paths), sorted by path.
    """
    pairs = sorted(
        (Path(rel).with_suffix(".png").as_posix(), sha256_file(labels_dir / Path(rel).with_suffix(".png")))
        for rel in images
    )
    h = hashlib.sha256()
    for rel, digest in pairs:
        h.update(f"{rel}\t{digest}\n".encode())
    return h.hexdigest()


def read_label_folder(path: str | Path, image_root: str | Path | None = None, verify_hash: bool = True) -> LabelFolder:
    """Open an auxiliary-label folder, checking its manifest, and return its description.

    Raises :class:`LabelFolderError` naming the folder when the manifest is
    missing, of another format, marked incomplete, or when a label PNG is
    missing or the label hash does not match the manifest.
    """
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise LabelFolderError(f"{root}: not an auxiliary-label folder (no manifest.json)")
    try:
        m = read_json(manifest_path)
    except ValueError as err:
        raise LabelFolderError(str(err)) from err
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise LabelFolderError(f"{manifest_path}: format {found!r}, expected {MANIFEST_FORMAT!r}")
    if m.get("complete") is not True:
        raise LabelFolderError(
            f"{manifest_path}: the label folder is incomplete (complete={m.get('complete')!r}); "
            "the auxlabels run that wrote it did not finish"
        )
    for key in ("num_labels", "ignore_index", "scope", "image_root", "images", "labels_sha256"):
        if key not in m:
            raise LabelFolderError(f"{manifest_path}: missing key {key!r}")
    if m["scope"] not in ("global", "image"):
        raise LabelFolderError(f"{manifest_path}: scope {m['scope']!r} is not 'global' or 'image'")
    labelled = tuple(str(r) for r in m["images"])
    # validation images are labelled only so their PmIoU can be measured: never train on them
    eval_only = {str(r) for r in m.get("eval_images", [])}
    images = tuple(r for r in labelled if r not in eval_only)
    if not images:
        raise LabelFolderError(
            f"{manifest_path}: no training images (the image list is empty"
            + (f" once its {len(eval_only)} eval_images are left out)" if eval_only else ")")
        )
    folder = LabelFolder(
        root=root,
        manifest_path=manifest_path,
        num_labels=int(m["num_labels"]),
        ignore_index=int(m["ignore_index"]),
        scope=str(m["scope"]),
        image_root=Path(image_root) if image_root else Path(m["image_root"]),
        images=images,
        labels_sha256=str(m["labels_sha256"]),
    )
    missing = [r for r in labelled if not folder.label_path(r).is_file()]
    if missing:
        raise LabelFolderError(f"{root}: {len(missing)} label PNGs missing, e.g. {folder.label_path(missing[0])}")
    if not folder.image_root.is_dir():
        raise LabelFolderError(
            f"{manifest_path}: image_root {folder.image_root} does not exist (set data.image_root if the images moved)"
        )
    if verify_hash:
        digest = compute_labels_sha256(root / "labels", labelled)
        if digest != folder.labels_sha256:
            raise LabelFolderError(
                f"{manifest_path}: labels_sha256 does not match the label PNGs on disk "
                f"(manifest {folder.labels_sha256[:12]}..., files {digest[:12]}...); the labels changed "
                "after the manifest was written (data.verify_hash=false skips this check)"
            )
    return folder


def sample_rng(seed: int, iteration: int, slot: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, iteration, slot in the batch)."""
    return np.random.default_rng([seed, iteration, slot])


class TwoViewDataset(Dataset):
    """Image + label map -> two augmented views with their label and coordinate maps.

    ``dataset[(index, iteration, slot)]`` returns a dict with ``image [2, 3, S, S]``
    float (normalised), ``label [2, S, S]`` int64 (ignore = the folder's
    ``ignore_index``), ``coords [2, S, S]`` int64 (original ``y * W + x``, -1 on
    padding), ``index`` (the image's position in the folder) and ``size`` (H, W).
    """

    def __init__(self, folder: LabelFolder, augment: AugmentConfig, seed: int = 0):
        self.folder = folder
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.folder.images)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, iteration, slot = key
        rel = self.folder.images[index]
        image = read_rgb(self.folder.image_root / rel)
        label_path = self.folder.label_path(rel)
        label = read_label(label_path)
        if label.shape != image.shape[:2]:
            raise LabelFolderError(
                f"{label_path}: label map is {label.shape[1]}x{label.shape[0]} but its image "
                f"{self.folder.image_root / rel} is {image.shape[1]}x{image.shape[0]}"
            )
        rng = sample_rng(self.seed, iteration, slot)
        views = []
        for _ in range(2):
            params = sample_view_params(rng, image.shape[0], image.shape[1], self.augment)
            views.append(make_view(image, label, params, self.folder.ignore_index))
        return {
            "image": torch.stack([v[0] for v in views]),
            "label": torch.stack([v[1] for v in views]),
            "coords": torch.stack([v[2] for v in views]),
            "index": torch.tensor(index),
            "size": torch.tensor(image.shape[:2]),
        }


@functools.lru_cache(maxsize=4)
def image_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The permutation of the ``n`` images in one epoch (cached: every slot of a batch asks for it)."""
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
    order.flags.writeable = False
    return order


class StepSampler(Sampler):
    """Yields, per iteration, this rank's part of the global batch as (index, iteration, slot) keys.

    Iteration ``t`` uses global batch positions ``t*B .. t*B+B-1`` of an endless
    sequence of seeded epoch permutations (the last partial batch of an epoch
    continues into the next). Rank ``r`` of ``W`` takes the contiguous slots
    ``r*B/W .. (r+1)*B/W - 1``, so concatenating the ranks gives the single-process
    batch. Start at ``start_iter`` to resume.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, start_iter: int, max_iters: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"data.batch_size={batch_size} is not divisible by the {world_size} processes")
        self.n, self.batch, self.seed = num_images, batch_size, seed
        self.start, self.stop = start_iter, max_iters
        self.rank, self.world = rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def batch_keys(self, iteration: int) -> list[tuple[int, int, int]]:
        per_rank = self.batch // self.world
        keys = []
        for slot in range(self.rank * per_rank, (self.rank + 1) * per_rank):
            pos = iteration * self.batch + slot
            epoch, offset = divmod(pos, self.n)
            keys.append((int(image_order(self.seed, epoch, self.n)[offset]), iteration, slot))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for it in range(self.start, self.stop):
            yield self.batch_keys(it)


def collate(samples: list[dict]) -> dict:
    """Stack samples: ``image [B, 2, 3, S, S]``, ``label``/``coords [B, 2, S, S]``, ``index [B]``, ``size [B, 2]``."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def write_groundtruth_label_folder(dataset_root: str | Path, out: str | Path, split: str = "train",
                                   num_classes: int | None = None) -> Path:
    """Write ground-truth label maps of a CamVid-layout dataset as an auxiliary-label folder.

    Perfectly informative "auxiliary labels" (scope "global"), in the exact
    format of docs/contracts.md section 1; used by the tiny preset and the tests
    so this stage runs without the auxlabels stage.
    """
    from auxseg.io import atomic_write_json, write_label_png

    dataset_root, out = Path(dataset_root), Path(out)
    image_root = dataset_root / split
    images = [p.as_posix() for p in list_images(image_root)]
    info = read_json(dataset_root / "dataset.json") if (dataset_root / "dataset.json").is_file() else {}
    k = int(num_classes or info.get("num_classes", 0))
    if k <= 0:
        raise ValueError(f"{dataset_root}: give num_classes (no dataset.json with num_classes)")
    ignore = 255
    for rel in images:
        gt = read_label(dataset_root / f"{split}annot" / Path(rel).with_suffix(".png"))
        lab = np.where(gt < k, gt, ignore).astype(np.uint8)
        write_label_png(out / "labels" / Path(rel).with_suffix(".png"), lab)
    atomic_write_json(out / "manifest.json", {
        "format": MANIFEST_FORMAT,
        "num_labels": k,
        "ignore_index": ignore,
        "dtype": "uint8",
        "scope": "global",
        "image_root": str(image_root.resolve()),
        "images": images,
        "labels_sha256": compute_labels_sha256(out / "labels", images),
        "complete": True,
        "extractor": "ground truth",
    })
    return out
