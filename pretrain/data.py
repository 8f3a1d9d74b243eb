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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from auxseg.contracts.label_folder import (  # noqa: F401  (re-exported for the stage's users)
    LABELS_DIR,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    LabelFolder,
    LabelFolderError,
    LabelledImages,
    compute_labels_sha256,
    label_folder_manifest,
    label_rel,
    read_label_folder,
    write_groundtruth_label_folder,
)
from auxseg.contracts.priors import read_prior_topk
from auxseg.files import atomic_write_json, read_json_object
from auxseg.images import list_images, read_label, read_rgb, write_label_png
from auxseg.paths import output_file
from pretrain.config import AugmentConfig
from pretrain.transforms import make_view, prior_view, sample_view_params


def sample_rng(seed: int, iteration: int, slot: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, iteration, slot in the batch)."""
    return np.random.default_rng([seed, iteration, slot])


class TwoViewDataset(Dataset):
    """Image + label map -> two augmented views with their label and coordinate maps.

    ``dataset[(index, iteration, slot)]`` returns a dict with ``image [2, 3, S, S]``
    float (normalised), ``label [2, S, S]`` int64 (ignore = the folder's
    ``ignore_index``), ``coords [2, S, S]`` int64 (original ``y * W + x``, -1 on
    padding), ``index`` (the image's position in the folder) and ``size`` (H, W).
    With ``priors`` (the folder must have them) also ``prior_ids`` int64 and
    ``prior_probs`` float32 ``[2, k, S, S]``: the soft prior in top-k form, warped
    exactly as the label map (:func:`pretrain.transforms.prior_view`).
    """

    def __init__(self, folder: LabelFolder, augment: AugmentConfig, seed: int = 0, priors: bool = False):
        if priors and not folder.has_priors:
            raise LabelFolderError(f"{folder.root}: soft priors were asked for but this label folder has none")
        self.folder = folder
        self.augment = augment
        self.seed = seed
        self.priors = priors

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
        sample = {
            "image": torch.stack([v[0] for v in views]),
            "label": torch.stack([v[1] for v in views]),
            "coords": torch.stack([v[2] for v in views]),
            "index": torch.tensor(index),
            "size": torch.tensor(image.shape[:2]),
        }
        if self.priors:
            sample.update(self._prior_views(rel, image.shape[:2], sample["coords"]))
        return sample

    def _prior_views(self, rel: str, size_hw: tuple[int, int], coords: torch.Tensor) -> dict:
        """``prior_ids`` / ``prior_probs [2, k, S, S]`` of both views (top-k, never densified over K)."""
        f = self.folder
        ids, probs = read_prior_topk(f.prior_path(rel), f.num_labels)
        h, w = ids.shape[1:]
        want = (-(-size_hw[0] // f.prior_stride), -(-size_hw[1] // f.prior_stride))
        if (h, w) != want:
            raise LabelFolderError(
                f"{f.prior_path(rel)}: prior grid is {w}x{h} but its image {f.image_root / rel} "
                f"({size_hw[1]}x{size_hw[0]}) at prior stride {f.prior_stride} needs {want[1]}x{want[0]}")
        pv = [prior_view(ids, probs, c.numpy(), size_hw[1], f.prior_stride) for c in coords]
        return {"prior_ids": torch.stack([v[0] for v in pv]), "prior_probs": torch.stack([v[1] for v in pv])}


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
    """Stack samples: ``image [B, 2, 3, S, S]``, ``label``/``coords [B, 2, S, S]``, ``index [B]``, ``size [B, 2]``
    (and, with priors, ``prior_ids``/``prior_probs [B, 2, k, S, S]``, which the loop puts in ``StepBatch.prior``)."""
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


UNLABELLED_EXTRACTOR = "none: unlabelled images, every pixel ignore"


def write_unlabelled_label_folder(image_root: str | Path, out: str | Path) -> Path:
    """Write a label folder for a plain image folder whose labels are all the ignore value (255).

    For objectives that use no labels (``needs_labels = False``, ``data.source=images``):
    the data path, the resume check (``labels_sha256`` identifies the image set and
    sizes) and the export provenance stay those of any label folder. Each label PNG
    is one constant plane (some hundred bytes). Rewritten only when the image list changed.
    """
    image_root, out = Path(image_root), Path(out)
    if not image_root.is_dir():
        raise LabelFolderError(f"data.images: {image_root} is not a folder")
    images = [p.as_posix() for p in list_images(image_root)]
    if not images:
        raise LabelFolderError(f"data.images: no images under {image_root}")
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        m = read_json_object(manifest)
        if m.get("images") == images and m.get("image_root") == str(image_root.resolve()):
            return out
    for rel in images:
        try:
            with Image.open(image_root / rel) as img:
                width, height = img.size
        except OSError as err:
            raise LabelFolderError(f"{image_root / rel}: not a readable image ({err})") from err
        write_label_png(output_file(out, f"{LABELS_DIR}/{label_rel(rel)}", f"image {image_root / rel}"),
                        np.full((height, width), 255, np.uint8))
    labelled = LabelledImages(image_root.resolve(), images, compute_labels_sha256(out / LABELS_DIR, images))
    atomic_write_json(manifest, label_folder_manifest(num_labels=1, scope="image", labelled=labelled,
                                                      extractor=UNLABELLED_EXTRACTOR))
    return out
