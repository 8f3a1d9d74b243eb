"""``auxseg data prepare NAME ROOT`` and ``auxseg data check ROOT --dataset NAME``: a dataset folder, ready and checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from auxseg import console
from auxseg.cli import EXIT_INPUT_ERROR, add_verbose_argument, report_error
from auxseg.errors import AuxsegError

DESCRIPTION = """\
prepare: convert an official dataset release, as downloaded, into the layout the fine-tune
reads, then check it. check: look at every file of a dataset folder: the layout, image /
label pairing, each label's mode, values (against the classes and ignore values) and size,
each image's readability and size, and the split files given; print a table of what was
found and one line per problem naming the file; exit 1 if there is any.

Examples:
  auxseg data prepare cityscapes data/cityscapes          # writes *_gtFine_labelTrainIds.png
  auxseg data prepare nyuv2 downloads/nyu --out data/nyuv2
  auxseg data check data/cityscapes --dataset cityscapes --split-file splits/cityscapes_literature/1_16/labeled.txt
  auxseg data check data/mine --dataset folder --num-classes 5 --ignore 255
"""


def _layout(args: argparse.Namespace):
    from finetune.dataset_check import LAYOUTS, DatasetCheckError, folder_layout

    if args.dataset == "folder":
        if args.num_classes is None:
            raise DatasetCheckError("--dataset folder: give --num-classes (and --ignore, default 255)")
        return folder_layout(args.num_classes, args.ignore if args.ignore is not None else [255],
                             args.img_suffix or ".png")
    if args.num_classes is not None or args.ignore is not None:
        raise DatasetCheckError(f"--dataset {args.dataset}: its classes are fixed; --num-classes and --ignore are "
                                "for --dataset folder")
    layout = LAYOUTS[args.dataset]
    return layout if args.img_suffix is None else _with_suffix(layout, args.img_suffix)


def _with_suffix(layout, suffix: str):
    from dataclasses import replace

    return replace(layout, img_suffix=suffix)


def print_report(report, show_all: bool) -> None:
    """The table, then one line per problem (stdout), and the verdict."""
    for line in report.table():
        console.say(line)
    for line in report.problem_lines(None if show_all else 50):
        console.say(line)
    console.say(f"{len(report.problems)} problems" if report.problems else "no problems")


def check_and_print(root: Path, layout, args: argparse.Namespace) -> int:
    from finetune.dataset_check import check_dataset

    with console.step("check", None) as st:
        report = check_dataset(root, layout, split_files=args.split_file or (), splits=args.splits)
        files = sum(sp.images + sp.labels for sp in report.splits)
        st.done(f"{files} files in {len(report.splits)} splits, {len(report.problems)} problems")
    print_report(report, args.all)
    return 0 if report.ok else EXIT_INPUT_ERROR


def main_check(args: argparse.Namespace) -> int:
    try:
        with console.session(verbose=args.verbose):
            return check_and_print(Path(args.root), _layout(args), args)
    except (AuxsegError, FileNotFoundError) as err:
        return report_error("auxseg data check", err)


def main_prepare(args: argparse.Namespace) -> int:
    from finetune.prepare import PrepareError, prepare

    try:
        if args.out is not None and args.name != "nyuv2":  # the others are prepared where they were unpacked
            raise PrepareError(f"--out is for nyuv2 only; the {args.name} dataset stays in ROOT ({args.root})")
        with console.session(verbose=args.verbose):
            with console.step(f"prepare {args.name}", None) as st:
                done = prepare(args.name, args.root, out=args.out, overwrite=args.overwrite)
                st.done(done.message)
            args.dataset, args.num_classes, args.ignore = args.name, None, None
            return check_and_print(done.data_root, _layout(args), args)
    except (AuxsegError, FileNotFoundError) as err:
        return report_error("auxseg data prepare", err)


def _check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split-file", action="append", metavar="FILE",
                   help="a split file whose images must exist (stems, or the literature's 'image label' lines); "
                        "repeatable, e.g. splits/cityscapes_literature/1_8/labeled.txt")
    p.add_argument("--splits", nargs="+", metavar="SPLIT", help="check only these splits (e.g. val)")
    p.add_argument("--img-suffix", metavar="SUFFIX", help="image file suffix, if not the layout's (e.g. .jpg)")
    p.add_argument("--all", action="store_true", help="print every problem (default: the first 50)")
    add_verbose_argument(p)


def add_parser(subparsers) -> None:
    from finetune.dataset_check import LAYOUTS
    from finetune.prepare import DATASETS

    parser = subparsers.add_parser("data", help="prepare an official dataset release, or check a dataset folder",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    prep = actions.add_parser("prepare", help="convert a downloaded release into the fine-tune's layout, then check it",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("name", choices=DATASETS)
    prep.add_argument("root", help="the folder the release was downloaded (and unpacked) into")
    prep.add_argument("--out", help="nyuv2 only: where images/ and labels40/ go (default: ROOT)")
    prep.add_argument("--overwrite", action="store_true", help="rewrite files an earlier run wrote")
    _check_options(prep)
    prep.set_defaults(func=main_prepare)
    check = actions.add_parser("check", help="check a dataset folder: layout, pairing, label values and sizes, splits",
                               description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("root", help="the dataset folder (data_root)")
    check.add_argument("--dataset", required=True, choices=sorted(LAYOUTS),
                       help="its layout; 'folder' = your own data in the CamVid layout (train/ trainannot/ val/ valannot/)")
    check.add_argument("--num-classes", type=int, metavar="N", help="--dataset folder: the number of classes")
    check.add_argument("--ignore", type=int, action="append", metavar="VALUE",
                       help="--dataset folder: a label value that is not a class (repeatable; default 255)")
    _check_options(check)
    check.set_defaults(func=main_check)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

