"""Convert the official NYUv2 labelled release into the image/label PNG layout of ``NYUv2Dataset``.

Inputs (public files, see docs/finetune.md for where they come from):

- ``nyu_depth_v2_labeled.mat``: MATLAB v7.3 (HDF5). ``images`` is stored as
  ``[N, 3, W, H]`` uint8 and ``labels`` as ``[N, W, H]`` with the 894 raw class
  ids (0 = unlabelled): HDF5 keeps MATLAB's column-major order, so each image
  is transposed back to ``[H, W, 3]``.
- ``splits.mat``: ``trainNdxs`` (795) and ``testNdxs`` (654), 1-based image indices.
- ``classMapping40.mat`` (Gupta et al., CVPR 2013): ``mapClass`` ``[1, 894]``
  mapping raw id ``k`` (1..894) to a 40-class id (1..40). A text or ``.npy``
  file with the same 894 numbers is accepted too.

Output::

    out/images/{train,test}/0001.png      RGB, 640x480
    out/labels40/{train,test}/0001.png    uint8, 0..39, 255 = unlabelled
    out/dataset.json                      classes, counts, source files

File names are the 1-based index in the labelled release, so they match the
official split files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auxseg import console
from auxseg.errors import AuxsegError
from auxseg.files import atomic_write_json, sha256_file
from auxseg.images import write_label_png, write_rgb_png

# The 40 classes of Gupta et al. (CVPR 2013), in the order of their classMapping40.mat (1..40 -> 0..39).
NYUV2_40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)

NUM_RAW_CLASSES = 894
IGNORE_INDEX = 255
FORMAT = "auxseg.nyuv2/1"


class NYUv2FormatError(AuxsegError, ValueError):
    """An input file that is not in the official layout; names the file."""


def _loadmat(path: Path) -> dict:
    """Read a MATLAB file of format v5 (scipy) or v7.3 (HDF5, h5py) into name -> array."""
    import scipy.io

    try:
        return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:  # v7.3 files are HDF5
        import h5py

        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k]) for k in f if isinstance(f[k], h5py.Dataset)}
    except (ValueError, OSError) as err:
        raise NYUv2FormatError(f"cannot read MATLAB file {path}: {err}") from err


def read_class_mapping(path: str | Path, num_classes: int = 40) -> np.ndarray:
    """A lookup table ``[895]`` uint8: raw id (0..894) -> 0..num_classes-1, raw 0 and unmapped -> 255."""
    path = Path(path)
    if not path.is_file():
        raise NYUv2FormatError(f"class mapping file not found: {path}")
    if path.suffix == ".mat":
        data = _loadmat(path)
        key = next((k for k in ("mapClass", "classMapping40", "mapping") if k in data), None)
        if key is None:
            raise NYUv2FormatError(f"{path}: no 'mapClass' variable (found: {', '.join(data)})")
        values = np.asarray(data[key]).ravel()
    elif path.suffix == ".npy":
        values = np.load(path, allow_pickle=False).ravel()
    else:
        values = np.loadtxt(path, dtype=np.int64).ravel()
    if values.size != NUM_RAW_CLASSES:
        raise NYUv2FormatError(f"{path}: expected {NUM_RAW_CLASSES} mapped ids, got {values.size}")
    values = values.astype(np.int64)
    if values.min() < 0 or values.max() > num_classes:
        raise NYUv2FormatError(f"{path}: mapped ids must be in 0..{num_classes}, got {values.min()}..{values.max()}")
    lut = np.full(NUM_RAW_CLASSES + 1, IGNORE_INDEX, dtype=np.uint8)
    mapped = values > 0  # 0 in the mapping also means "no class"
    lut[1:][mapped] = (values[mapped] - 1).astype(np.uint8)
    return lut


def read_splits(path: str | Path, num_images: int) -> dict[str, np.ndarray]:
    """``{"train": idx, "test": idx}``, 0-based, from the official 1-based ``splits.mat``."""
    path = Path(path)
    if not path.is_file():
        raise NYUv2FormatError(f"split file not found: {path}")
    data = _loadmat(path)
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in data:
            raise NYUv2FormatError(f"{path}: no {key!r} variable (found: {', '.join(data)})")
        idx = np.asarray(data[key]).ravel().astype(np.int64) - 1
        if idx.size == 0 or idx.min() < 0 or idx.max() >= num_images:
            raise NYUv2FormatError(f"{path}: {key} must be 1-based indices in 1..{num_images}")
        out[split] = np.sort(idx)
    if np.intersect1d(out["train"], out["test"]).size:
        raise NYUv2FormatError(f"{path}: trainNdxs and testNdxs overlap")
    return out


def convert(
    labeled_mat: str | Path,
    mapping: str | Path,
    splits: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
) -> dict:
    """Write images and 40-class label PNGs for the train and test splits; returns the manifest.

    Files already present are kept unless ``overwrite`` (every file is written
    atomically, so an interrupted run can simply be started again).
    """
    import h5py

    labeled_mat, out_dir = Path(labeled_mat), Path(out_dir)
    if not labeled_mat.is_file():
        raise NYUv2FormatError(f"labelled release not found: {labeled_mat}")
    lut = read_class_mapping(mapping)
    try:
        f = h5py.File(labeled_mat, "r")
    except OSError as err:
        raise NYUv2FormatError(f"{labeled_mat} is not the MATLAB v7.3 (HDF5) labelled release: {err}") from err
    with f:
        images, labels = _image_and_label_arrays(f, labeled_mat)
        split_idx = read_splits(splits, images.shape[0])
        counts = {split: _write_split((images, labels), idx, lut, out_dir, split, overwrite, labeled_mat)
                  for split, idx in split_idx.items()}
    manifest = {
        "format": FORMAT,
        "classes": list(NYUV2_40_CLASSES),
        "num_classes": 40,
        "ignore_index": IGNORE_INDEX,
        "counts": counts,
        "layout": {"images": "images/{split}/NNNN.png", "labels": "labels40/{split}/NNNN.png"},
        "sources": {
            "labeled_mat": {"name": labeled_mat.name, "bytes": labeled_mat.stat().st_size},
            "mapping": {"name": Path(mapping).name, "sha256": sha256_file(mapping)},
            "splits": {"name": Path(splits).name, "sha256": sha256_file(splits)},
        },
    }
    atomic_write_json(out_dir / "dataset.json", manifest)
    return manifest


def _image_and_label_arrays(f, labeled_mat: Path):
    """The release's ``images [N, 3, W, H]`` and ``labels [N, W, H]`` datasets, their shapes checked."""
    for key in ("images", "labels"):
        if key not in f:
            raise NYUv2FormatError(f"{labeled_mat}: no {key!r} dataset (found: {', '.join(f)})")
    images, labels = f["images"], f["labels"]
    if images.ndim != 4 or images.shape[1] != 3 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise NYUv2FormatError(
            f"{labeled_mat}: expected images [N, 3, W, H] and labels [N, W, H], "
            f"got {images.shape} and {labels.shape}"
        )
    return images, labels


def _write_split(arrays: tuple, idx: np.ndarray, lut: np.ndarray, out_dir: Path, split: str, overwrite: bool,
                 labeled_mat: Path) -> int:
    """Write the images ``idx`` (0-based) of ``arrays = (images, labels)`` as ``images/<split>/NNNN.png``
    (1-based) and their 40-class labels as ``labels40/<split>/NNNN.png``; returns the count."""
    images, labels = arrays
    for i in console.iterate(idx, desc=f"NYUv2 {split}", unit="img"):
        name = f"{i + 1:04d}.png"
        img_path, lab_path = out_dir / "images" / split / name, out_dir / "labels40" / split / name
        if not overwrite and img_path.exists() and lab_path.exists():
            continue
        raw = np.asarray(labels[i]).T  # [H, W]
        if raw.min() < 0 or raw.max() > NUM_RAW_CLASSES:
            raise NYUv2FormatError(f"{labeled_mat}: image {i + 1} has label ids outside 0..{NUM_RAW_CLASSES}")
        write_rgb_png(img_path, np.asarray(images[i]).transpose(2, 1, 0))  # [H, W, 3]
        write_label_png(lab_path, lut[raw.astype(np.int64)])
    return int(idx.size)
