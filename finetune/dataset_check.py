"""Is this folder a dataset the fine-tune can read? :func:`check_dataset` looks at every file once.

It checks, per split of a :class:`Layout` (the folders and file-name suffixes of one dataset):

- the layout: the image and label folders exist;
- pairing: every image has its label and every label its image (same relative stem);
- each label: single-channel (an RGB label is refused: class ids, not colours), readable, its
  values within the dataset's classes and ignore values, the same size as its image;
- each image: readable (fully decoded), its size;
- split files: every line names an image of the training split (one stem per line, or the
  ``image label`` pairs of the literature's split files).

The result is a :class:`DatasetReport`: a table of what was found and one :class:`Problem` per
fault, each naming its file. ``auxseg data check`` prints it; the pipeline runs it before its
first step and stops on the first problem. Layouts: :data:`LAYOUTS` (docs/your_own_data.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from auxseg import console
from auxseg.errors import AuxsegError
from auxseg.images import IMAGE_SUFFIXES, ImageReadError, read_label, read_rgb, scan_images
from auxseg.paths import UnsafePathError

MAX_PRINTED_PROBLEMS = 50  # `auxseg data check` prints this many problem lines (--all: every one)


class DatasetCheckError(AuxsegError, ValueError):
    """A dataset folder with problems (layout, pairing, label values, sizes, split files); names the first."""


@dataclass(frozen=True)
class SplitDirs:
    """One split of a layout: its image and label folders, relative to the dataset root."""

    name: str
    images: str
    labels: str


@dataclass(frozen=True)
class Layout:
    """Where a dataset keeps its images and labels and which label values are valid.

    Valid label values: the classes ``first_class .. first_class + num_classes - 1`` and the
    ``ignore`` values. ``img_suffix`` / ``label_suffix`` end every image / label file name; the
    rest of the path below the split folder (the stem) pairs them.
    """

    name: str
    splits: tuple[SplitDirs, ...]
    img_suffix: str
    label_suffix: str
    num_classes: int
    ignore: tuple[int, ...] = (255,)
    first_class: int = 0
    train_split: str = "train"  # split files name images of this split
    prepare_hint: str = ""  # what `auxseg data prepare` does for this dataset, shown when labels are missing

    def valid_values(self) -> np.ndarray:
        return np.array(sorted({*range(self.first_class, self.first_class + self.num_classes), *self.ignore}))

    def describe_values(self) -> str:
        last = self.first_class + self.num_classes - 1
        ignore = ", ".join(str(v) for v in self.ignore)
        return f"{self.num_classes} classes ({self.first_class}..{last})" + (f", ignore {ignore}" if ignore else "")


CAMVID_LIKE = (SplitDirs("train", "train", "trainannot"), SplitDirs("val", "val", "valannot"))

LAYOUTS: dict[str, Layout] = {
    # the SegNet release: label 11 is "Unlabelled" (ignored)
    "camvid": Layout("camvid", CAMVID_LIKE, ".png", ".png", num_classes=11, ignore=(11,)),
    # your own data and the pipeline's layout: classes and ignore values are yours (`folder_layout`)
    "folder": Layout("folder", CAMVID_LIKE, ".png", ".png", num_classes=0),
    "cityscapes": Layout(
        "cityscapes",
        (SplitDirs("train", "leftImg8bit/train", "gtFine/train"), SplitDirs("val", "leftImg8bit/val", "gtFine/val")),
        "_leftImg8bit.png", "_gtFine_labelTrainIds.png", num_classes=19,
        prepare_hint="writes *_gtFine_labelTrainIds.png from the official *_gtFine_labelIds.png"),
    "nyuv2": Layout(
        "nyuv2",
        (SplitDirs("train", "images/train", "labels40/train"), SplitDirs("test", "images/test", "labels40/test")),
        ".png", ".png", num_classes=40,
        prepare_hint="converts nyu_depth_v2_labeled.mat, splits.mat and classMapping40.mat into images/ and labels40/"),
    # ADEChallengeData2016: 0 = "other", ignored through mmseg's reduce_zero_label; classes 1..150
    "ade20k": Layout(
        "ade20k",
        (SplitDirs("training", "images/training", "annotations/training"),
         SplitDirs("validation", "images/validation", "annotations/validation")),
        ".jpg", ".png", num_classes=150, ignore=(0,), first_class=1, train_split="training",
        prepare_hint="extracts ADEChallengeData2016.zip"),
}


def folder_layout(num_classes: int, ignore: Iterable[int] = (255,), img_suffix: str = ".png") -> Layout:
    """The CamVid-layout folder of your own data (``train/ trainannot/ val/ valannot/``) with your classes."""
    return replace(LAYOUTS["folder"], num_classes=num_classes, ignore=tuple(ignore), img_suffix=img_suffix)


@dataclass(frozen=True)
class Problem:
    """One fault, naming its file (or folder)."""

    path: str
    message: str

    def __str__(self) -> str:
        """``<path>: <message>``, the path said once (messages of auxseg.images name it themselves)."""
        message = self.message.replace(f" {self.path}:", ":").replace(f"{self.path}: ", "").replace(f" {self.path}", "")
        return f"{self.path}: {message}"


@dataclass
class SplitReport:
    """What one split holds."""

    name: str
    images: int = 0
    labels: int = 0
    paired: int = 0
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # (width, height) -> images
    values: set[int] = field(default_factory=set)  # label values seen
    problems: int = 0
    unlabelled: int = 0  # training images without label that no split file names (used unlabelled only)


@dataclass
class DatasetReport:
    """The result of :func:`check_dataset`: one row per split, split files, and every problem."""

    root: Path
    layout: Layout
    splits: list[SplitReport] = field(default_factory=list)
    split_files: list[tuple[str, int]] = field(default_factory=list)  # (file, images it names)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self) -> list[str]:
        """The table of what was found, one line per split (and per split file)."""
        lines = [f"{self.root} as {self.layout.name}: {self.layout.describe_values()}"]
        rows = [("split", "images", "labels", "paired", "image sizes", "label values", "problems")]
        for sp in self.splits:
            rows.append((sp.name, str(sp.images), str(sp.labels), str(sp.paired), _sizes(sp.sizes),
                         _values(sp.values, self.layout), str(sp.problems)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"  {sp.name}: {sp.unlabelled} images without label, named by no split file: used unlabelled "
                  "(auxiliary labels, pre-training)" for sp in self.splits if sp.unlabelled]
        lines += [f"  split file {name}: {n} images, all in {self.layout.train_split}" for name, n in self.split_files]
        return lines

    def problem_lines(self, limit: int | None = MAX_PRINTED_PROBLEMS) -> list[str]:
        shown = self.problems if limit is None else self.problems[:limit]
        lines = [str(p) for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"... and {len(self.problems) - len(shown)} more problems (`--all` lists every one)")
        return lines

    def raise_if_problems(self, what: str) -> None:
        """Raise :class:`DatasetCheckError` naming the first problem, with the command that lists them all."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise DatasetCheckError(f"{what}: {self.problems[0]}{more}; `auxseg data check {self.root} --dataset "
                                    f"{self.layout.name}{_layout_args(self.layout)}` lists every problem")


def _layout_args(layout: Layout) -> str:
    if layout.name != "folder":
        return ""
    ignore = "".join(f" --ignore {v}" for v in layout.ignore)
    return f" --num-classes {layout.num_classes}{ignore}" + (
        f" --img-suffix {layout.img_suffix}" if layout.img_suffix != ".png" else "")


def _sizes(sizes: dict[tuple[int, int], int]) -> str:
    if not sizes:
        return "-"
    if len(sizes) == 1:
        (w, h), = sizes
        return f"{w}x{h}"
    ws, hs = [w for w, _ in sizes], [h for _, h in sizes]
    return f"{len(sizes)} sizes, {min(ws)}-{max(ws)} x {min(hs)}-{max(hs)}"


def _values(values: set[int], layout: Layout) -> str:
    """``10/19 classes + 255``: how many of the classes the labels hold, and which ignore values."""
    if not values:
        return "-"
    classes = [v for v in values if layout.first_class <= v < layout.first_class + layout.num_classes]
    ignore = sorted(v for v in values if v in layout.ignore)
    other = sorted(values - set(classes) - set(ignore))
    text = f"{len(classes)}/{layout.num_classes} classes" + "".join(f" + {v}" for v in ignore)
    return text + (f", invalid {','.join(str(v) for v in other[:3])}{'...' if len(other) > 3 else ''}" if other else "")


def _files(folder: Path, suffix: str, problems: list[Problem]) -> dict[str, Path]:
    """``{stem: path}`` of the files below ``folder`` whose names end with ``suffix`` (hidden ones skipped)."""
    found, unreadable = scan_images(folder, (_extension(suffix),))
    problems.extend(Problem(str(folder / rel), why) for rel, why in unreadable.items())
    out = {}
    for rel in found:
        text = rel.as_posix()
        if text.endswith(suffix):
            out[text[: -len(suffix)]] = folder / rel
    return out


def _image_suffixes(layout: Layout) -> tuple[str, ...]:
    """Other image suffixes to notice (an image of the wrong type is named, not silently skipped)."""
    return tuple(s for s in IMAGE_SUFFIXES if s != _extension(layout.img_suffix))


def _extension(suffix: str) -> str:
    """``.png`` of ``_leftImg8bit.png`` (and of ``.png``, which ``Path`` reads as a hidden name without one)."""
    return "." + suffix.rsplit(".", 1)[-1].lower()


def _check_label(path: Path, image_size: tuple[int, int] | None, valid: np.ndarray, layout: Layout,
                 report: SplitReport, problems: list[Problem]) -> None:
    try:
        with Image.open(path) as img:
            mode, bands = img.mode, len(img.getbands())
    except (OSError, SyntaxError, ValueError):
        mode, bands = "L", 1  # not even a header: read_label below names the reason
    if bands != 1 or mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B", "1"):
        problems.append(Problem(str(path), f"label PNG in mode {mode} ({bands} channels); labels are single-channel "
                                           "class ids (a colour-coded label must be mapped to ids first)"))
        return
    try:
        label = read_label(path)
    except (ImageReadError, ValueError) as err:
        problems.append(Problem(str(path), str(err)))
        return
    values = np.unique(label)
    report.values.update(int(v) for v in values)
    bad = values[~np.isin(values, valid)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        problems.append(Problem(str(path), f"label values {shown} are not classes of {layout.name} "
                                           f"({layout.describe_values()})"))
    if image_size is not None and (label.shape[1], label.shape[0]) != image_size:
        problems.append(Problem(str(path), f"label is {label.shape[1]}x{label.shape[0]}, its image "
                                           f"{image_size[0]}x{image_size[1]}"))


def _check_split(root: Path, sp: SplitDirs, layout: Layout, problems: list[Problem],
                 labelled: set[str] | None = None) -> tuple[SplitReport, set[str]]:
    """Check one split; returns its report and the stems of its images. With ``labelled`` (the stems the
    split files name), an image outside it may lack its label: it is only used unlabelled."""
    report = SplitReport(sp.name)
    before = len(problems)
    image_dir, label_dir = root / sp.images, root / sp.labels
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            problems.append(Problem(str(folder), f"folder missing (the {layout.name} layout has "
                                                 f"{sp.images}/ and {sp.labels}/)"))
    if not image_dir.is_dir() or not label_dir.is_dir():
        report.problems = len(problems) - before
        return report, set()
    images = _files(image_dir, layout.img_suffix, problems)
    labels = _files(label_dir, layout.label_suffix, problems)
    report.images, report.labels = len(images), len(labels)
    if not images:
        others = [p for p in image_dir.rglob("*") if p.suffix.lower() in _image_suffixes(layout)]
        hint = f" (found {len(others)} other images, e.g. {others[0].name})" if others else ""
        problems.append(Problem(str(image_dir), f"no images ending in {layout.img_suffix}{hint}"))
    if images and not labels:
        hint = f"; `auxseg data prepare {layout.name}` {layout.prepare_hint}" if layout.prepare_hint else ""
        problems.append(Problem(str(label_dir), f"no labels ending in {layout.label_suffix}{hint}"))
        report.problems = len(problems) - before
        return report, set(images)
    valid = layout.valid_values()
    stems = sorted(set(images) | set(labels))
    with console.bar(total=len(stems), desc=f"check {sp.name}", unit="file", disable=not console.in_step()) as bar:
        for stem in stems:
            size = None
            if stem in images:
                try:
                    size = read_rgb(images[stem]).shape[1::-1]  # (width, height), after EXIF orientation
                    report.sizes[size] = report.sizes.get(size, 0) + 1
                except ImageReadError as err:
                    problems.append(Problem(str(images[stem]), str(err)))
                if stem not in labels and labelled is not None and stem not in labelled:
                    report.unlabelled += 1
                elif stem not in labels:
                    problems.append(Problem(str(images[stem]), f"image without label (expected {label_dir / stem}"
                                                               f"{layout.label_suffix})"))
            else:
                problems.append(Problem(str(labels[stem]), f"label without image (expected {image_dir / stem}"
                                                           f"{layout.img_suffix})"))
            if stem in labels:
                if stem in images:
                    report.paired += 1
                _check_label(labels[stem], size, valid, layout, report, problems)
            bar.update(1)
    report.problems = len(problems) - before
    return report, set(images)


def split_file_stems(path: Path, layout: Layout) -> list[str]:
    """The image stems a split file names: one stem per line (``finetune.splits``), or the literature's
    ``<images>/<stem><img_suffix> <labels>/...`` pairs (e.g. the Cityscapes splits of UniMatch)."""
    from finetune.splits import read_split

    train = next(sp for sp in layout.splits if sp.name == layout.train_split)
    return read_split(path, image_prefix=train.images, img_suffix=layout.img_suffix)


def check_dataset(root: str | Path, layout: Layout, split_files: Iterable[str | Path] = (),
                  splits: Iterable[str] | None = None) -> DatasetReport:
    """Check the dataset folder ``root`` against ``layout`` (and the given split files); never raises for a
    fault in the data: every one is a :class:`Problem` of the report.

    ``split_files`` name the labelled training images (e.g. the pipeline's ``labelled.file``): each must
    exist and have its label, while a training image that no split file names may lack one (it is used
    unlabelled: auxiliary labels and pre-training). Without split files every image needs its label.
    ``splits`` (default: all) limits the splits checked; split files are still checked against the
    training images, then by their names only (nothing of that split is read).
    """
    root = Path(root)
    report = DatasetReport(root, layout)
    if not root.is_dir():
        report.problems.append(Problem(str(root), "dataset folder not found"))
        return report
    if layout.num_classes < 1:
        raise DatasetCheckError(f"{layout.name}: give the number of classes (--num-classes)")
    named: dict[Path, list[str]] = {}
    for path in map(Path, split_files):
        try:
            named[path] = split_file_stems(path, layout)
        except (AuxsegError, UnsafePathError, FileNotFoundError) as err:
            report.problems.append(Problem(str(path), str(err)))
    labelled = set().union(*named.values()) if named else None
    wanted = set(splits) if splits is not None else None
    train_stems: set[str] | None = None
    for sp in layout.splits:
        if wanted is not None and sp.name not in wanted:
            continue
        is_train = sp.name == layout.train_split
        split_report, stems = _check_split(root, sp, layout, report.problems, labelled if is_train else None)
        report.splits.append(split_report)
        if is_train:
            train_stems = stems
    train_dir = root / next(sp.images for sp in layout.splits if sp.name == layout.train_split)
    if named and not train_dir.is_dir():  # nothing to check the names against: one line per file, not per name
        report.problems += [Problem(str(path), f"not checked: the images it names belong in {train_dir}, which is "
                                               "missing") for path in named]
        return report
    if named and train_stems is None:  # the training split was left out (--splits): list its image names
        train_stems = set(_files(train_dir, layout.img_suffix, []))
    for path, stems in named.items():
        missing = [s for s in stems if s not in train_stems]
        report.problems += [Problem(str(path), f"names {s!r}, which is not an image of {train_dir}") for s in missing]
        if not missing:
            report.split_files.append((str(path), len(stems)))
    return report
