"""``auxseg data prepare NAME ROOT``: turn an official dataset release into the layout the fine-tune reads.

One function per dataset, each given the folder the user downloaded into; each returns a
:class:`Prepared` (the folder to use as ``data_root`` and one line on what was done), and
``auxseg data prepare`` then runs :func:`finetune.dataset_check.check_dataset` on it.

- ``cityscapes``: ROOT holds the official ``leftImg8bit/`` and ``gtFine/`` (leftImg8bit_trainvaltest.zip,
  gtFine_trainvaltest.zip, unpacked); writes ``*_gtFine_labelTrainIds.png`` next to every
  ``*_gtFine_labelIds.png`` with the official label id -> train id table (cityscapesScripts'
  ``labels.py``; no cityscapesScripts needed). Existing files are kept unless ``overwrite``.
- ``nyuv2``: ROOT holds ``nyu_depth_v2_labeled.mat``, ``splits.mat`` and ``classMapping40.mat``
  (or ``.txt`` / ``.npy``); writes ``images/`` and ``labels40/`` (:mod:`finetune.nyuv2`).
- ``ade20k``: ROOT holds ``ADEChallengeData2016.zip`` or its unpacked ``ADEChallengeData2016/``
  (or is that folder); extracts the zip if needed. Labels are used as released (0 = other, ignored).
- ``camvid``: ROOT is the SegNet release's ``CamVid/`` folder; nothing to convert.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auxseg import console
from auxseg.errors import AuxsegError
from auxseg.files import atomic_path
from auxseg.images import read_label, write_label_png
from auxseg.paths import output_file, relative_inside

IGNORE_INDEX = 255


class PrepareError(AuxsegError, ValueError):
    """A download folder that does not hold what the dataset's official release has; names the file or folder."""


@dataclass(frozen=True)
class Prepared:
    """What a preparation produced: the dataset folder for ``data_root`` and one line on what it did."""

    data_root: Path
    message: str


# ----------------------------------------------------------------------------- Cityscapes

# Official Cityscapes labelId -> trainId (cityscapesScripts' labels.py): the 19
# evaluated classes get 0..18, everything else (including the license plate, -1) is ignored.
CITYSCAPES_LABELID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def cityscapes_labelid_to_trainid(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``labelIds`` map ``[H, W]`` to ``trainIds`` (0..18, 255 = ignore), uint8."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABELID_TO_TRAINID.items():
        lut[label_id] = train_id
    if label_ids.dtype != np.uint8:
        if label_ids.min() < 0 or label_ids.max() > 255:
            raise ValueError(f"Cityscapes label ids must be in 0..255, got {label_ids.min()}..{label_ids.max()}")
        label_ids = label_ids.astype(np.uint8)
    return lut[label_ids]


def convert_cityscapes_labels(gt_root: str | Path, overwrite: bool = False) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` under ``gt_root``.

    Args:
        gt_root: the official ``gtFine`` folder (or one split of it).
        overwrite: rewrite files that already exist.

    Returns the number of files written. Each file is written atomically.
    """
    gt_root = Path(gt_root)
    if not gt_root.is_dir():
        raise FileNotFoundError(f"Cityscapes gtFine folder not found: {gt_root}")
    sources = sorted(gt_root.rglob("*_gtFine_labelIds.png"))
    if not sources:
        raise FileNotFoundError(f"no *_gtFine_labelIds.png files under {gt_root}")
    written = 0
    with console.bar(total=len(sources), desc="labelIds -> labelTrainIds", unit="img") as bar:
        for src in sources:
            dst = src.with_name(src.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
            if overwrite or not dst.exists():
                write_label_png(dst, cityscapes_labelid_to_trainid(read_label(src)))
                written += 1
            bar.update(1)
    return written


def prepare_cityscapes(root: Path, overwrite: bool = False) -> Prepared:
    for sub in ("leftImg8bit", "gtFine"):
        if not (root / sub).is_dir():
            raise PrepareError(f"{root}: no {sub}/ folder; unpack leftImg8bit_trainvaltest.zip and "
                               "gtFine_trainvaltest.zip from cityscapes-dataset.com here")
    written = convert_cityscapes_labels(root / "gtFine", overwrite=overwrite)
    return Prepared(root, f"wrote {written} *_gtFine_labelTrainIds.png files under {root / 'gtFine'}")


# ----------------------------------------------------------------------------- NYUv2


def _one_of(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise PrepareError(f"{root}: no {' / '.join(names)} ({what}; docs/finetune.md, 'Datasets and their preparation')")


def prepare_nyuv2(root: Path, out: Path | None = None, overwrite: bool = False) -> Prepared:
    from finetune.nyuv2 import convert

    labeled = _one_of(root, ("nyu_depth_v2_labeled.mat",), "the labelled release, 2.8 GB")
    splits = _one_of(root, ("splits.mat",), "trainNdxs / testNdxs")
    mapping = _one_of(root, ("classMapping40.mat", "classMapping40.txt", "classMapping40.npy"),
                      "Gupta et al.'s 894 -> 40 class mapping")
    out = out or root
    manifest = convert(labeled, mapping, splits, out, overwrite=overwrite)
    counts = manifest["counts"]
    return Prepared(out, f"wrote {counts['train']} train / {counts['test']} test images and 40-class labels in {out}")


# ----------------------------------------------------------------------------- ADE20K

ADE_FOLDER = "ADEChallengeData2016"


def _extract_zip(archive: Path, dest: Path) -> int:
    """Unpack ``archive`` into ``dest``; every member name is checked (none may leave ``dest``). Returns files written."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise PrepareError(f"{archive}: not a readable zip file ({err})") from err
    written = 0
    with zf, console.bar(total=len(zf.infolist()), desc=f"unpack {archive.name}", unit="file") as bar:
        for info in zf.infolist():
            bar.update(1)
            if info.is_dir():
                continue
            target = output_file(dest, relative_inside(info.filename, f"{archive}: {info.filename}"),
                                 f"{archive}: {info.filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            written += 1
    return written


def prepare_ade20k(root: Path) -> Prepared:
    if root.name == ADE_FOLDER and (root / "images").is_dir():
        return Prepared(root, f"{root} is already unpacked; nothing to convert (labels are used as released)")
    folder = root / ADE_FOLDER
    if folder.is_dir():
        return Prepared(folder, f"{folder} is already unpacked; nothing to convert (labels are used as released)")
    archive = root / f"{ADE_FOLDER}.zip"
    if not archive.is_file():
        raise PrepareError(f"{root}: neither {ADE_FOLDER}/ nor {ADE_FOLDER}.zip (the MIT Scene Parsing release, "
                           "sceneparsing.csail.mit.edu)")
    written = _extract_zip(archive, root)
    if not folder.is_dir():
        raise PrepareError(f"{archive}: holds no {ADE_FOLDER}/ folder")
    return Prepared(folder, f"unpacked {written} files from {archive.name} into {folder}")


# ----------------------------------------------------------------------------- CamVid


def prepare_camvid(root: Path) -> Prepared:
    return Prepared(root, f"{root}: the SegNet release is read as it is; nothing to convert")


DATASETS = ("cityscapes", "nyuv2", "ade20k", "camvid")


def prepare(name: str, root: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Prepared:
    """Prepare the dataset ``name`` downloaded into ``root``; ``out`` only for nyuv2 (default: ``root``)."""
    root = Path(root)
    if not root.is_dir():
        raise PrepareError(f"dataset folder not found: {root}")
    if name == "cityscapes":
        return prepare_cityscapes(root, overwrite)
    if name == "nyuv2":
        return prepare_nyuv2(root, Path(out) if out else None, overwrite)
    if name == "ade20k":
        return prepare_ade20k(root)
    if name == "camvid":
        return prepare_camvid(root)
    raise PrepareError(f"unknown dataset {name!r}; one of {', '.join(DATASETS)}")
