"""``auxseg boundaries VERB ...``: BSDS-style boundary evaluation (``eval``) and classical baselines (``baseline``).

The ``boundaries`` command is a list of verbs that other modules can extend:
a module listed in ``loop.cli.SUBCOMMAND_MODULES`` adds its own verb from its
``add_parser(subparsers)`` with::

    from boundaries.cli import boundary_verbs

    def add_parser(subparsers):
        p = boundary_verbs(subparsers).add_parser("predict", help="...")
        p.add_argument(...)
        p.set_defaults(func=main)   # main(args) -> exit code

:func:`boundary_verbs` creates the ``boundaries`` command on first use, so
the modules may be listed in any order.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from auxseg.errors import AuxsegError

PROG = "auxseg boundaries"


def boundary_verbs(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The verb list of ``auxseg boundaries`` (created, with its help, the first time it is asked for)."""
    parser = subparsers.choices.get("boundaries")
    if parser is None:
        parser = subparsers.add_parser(
            "boundaries", help="boundary maps: BSDS-style evaluation (ODS/OIS/AP) and classical baselines",
            description="Boundary maps: evaluate them BSDS500-style against label maps or BSDS ground truth "
                        "(ODS, OIS, AP) and write classical baselines (Sobel, Canny, SLIC). See docs/boundaries.md.",
        )
        parser.set_defaults(func=lambda args: _no_verb(parser))
        parser._auxseg_verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    return parser._auxseg_verbs


def _no_verb(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _fail(verb: str, err: BaseException) -> int:
    print(f"{PROG} {verb}: error: {err}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------- eval


def _eval_main(args: argparse.Namespace) -> int:
    from auxseg.files import atomic_write_json
    from boundaries.evaluation import EvalOptions, evaluate_folder

    if args.gt is None and args.bsds is None:
        print(f"{PROG} eval: give the ground truth: --gt LABEL_DIR or --bsds GT_MAT_DIR", file=sys.stderr)
        return 2
    if args.thresholds < 1:
        print(f"{PROG} eval: --thresholds must be >= 1, got {args.thresholds}", file=sys.stderr)
        return 2
    if args.max_dist <= 0 or args.ignore_margin < 0:
        print(f"{PROG} eval: --max-dist must be > 0 and --ignore-margin >= 0", file=sys.stderr)
        return 2
    kind, gt_dir = ("bsds", args.bsds) if args.bsds is not None else ("labels", args.gt)
    t0 = time.perf_counter()
    try:
        options = EvalOptions(ignore_index=args.ignore_index, ignore_margin=args.ignore_margin,
                              n_thresholds=args.thresholds, max_dist=args.max_dist, thin=not args.no_thin,
                              thin_gt=not args.no_thin_gt, segmentations=args.segmentations)
        result = evaluate_folder(args.pred_dir, gt_dir, kind, options, progress=not args.no_progress)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        if args.out is not None:
            atomic_write_json(args.out, result)
    except (AuxsegError, FileNotFoundError) as err:
        return _fail("eval", err)
    ods, ois = result["ods"], result["ois"]
    print(f"ODS F={ods['f']:.4f} (P={ods['precision']:.4f} R={ods['recall']:.4f} at t={ods['threshold']:.2f})  "
          f"OIS F={ois['f']:.4f}  AP={result['ap']:.4f}  [BSDS interpolated: ODS F={result['bsds']['ods_f']:.4f} "
          f"AP={result['bsds']['ap']:.4f}]  {result['num_images']} images"
          + (f"  -> {args.out}" if args.out is not None else ""))
    return 0


# ----------------------------------------------------------------------------- baseline


def _baseline_main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from auxseg.images import read_rgb, scan_images, write_label_png
    from boundaries.baselines import canny_boundaries, slic_boundaries, sobel_boundaries, to_uint8

    if args.levels < 1:
        print(f"{PROG} baseline: --levels must be >= 1, got {args.levels}", file=sys.stderr)
        return 2
    if args.method == "sobel":
        def method(rgb):
            return sobel_boundaries(rgb, sigma=args.sigma if args.sigma is not None else 1.0, nms=args.nms)
    elif args.method == "canny":
        def method(rgb):
            return canny_boundaries(rgb, sigma=args.sigma if args.sigma is not None else 2.0, levels=args.levels)
    else:
        try:
            segments = tuple(int(n) for n in args.segments.split(","))
            if not segments or min(segments) < 1:
                raise ValueError
        except ValueError:
            print(f"{PROG} baseline: --segments must be positive integers separated by commas, got {args.segments!r}",
                  file=sys.stderr)
            return 2

        def method(rgb):
            return slic_boundaries(rgb, segments)
    try:
        images, problems = scan_images(args.images)
        if problems:
            rel, why = next(iter(problems.items()))
            raise AuxsegError(f"cannot read image {Path(args.images) / rel}: {why}")
        if not images:
            raise AuxsegError(f"no images in {args.images}")
        out = Path(args.out_dir)
        t0 = time.perf_counter()
        for rel in tqdm(images, desc=f"boundaries {args.method}", unit="img", disable=args.no_progress,
                        dynamic_ncols=True):
            pb = method(read_rgb(Path(args.images) / rel))
            write_label_png(out / rel.with_suffix(".png"), to_uint8(pb))
        seconds = time.perf_counter() - t0
    except (AuxsegError, FileNotFoundError) as err:
        return _fail("baseline", err)
    print(f"{len(images)} boundary maps ({args.method}) -> {out}  ({seconds / len(images):.3f} s/image)")
    return 0


# ----------------------------------------------------------------------------- parser


def add_parser(subparsers) -> None:
    verbs = boundary_verbs(subparsers)
    from boundaries.evaluation import MAX_DIST, NUM_THRESHOLDS

    p = verbs.add_parser(
        "eval", help="ODS / OIS / AP of boundary PNGs against label maps or BSDS500 ground truth",
        description="Evaluate boundary maps BSDS500-style: PRED_DIR/<name>.png (uint8, 255 = strongest; 16-bit "
                    "and bilevel PNGs work too) for every ground-truth file <name>.png under --gt or <name>.mat "
                    "under --bsds. Each map is cut at --thresholds thresholds, thinned, and matched one to one "
                    "to the ground-truth boundaries within --max-dist x image diagonal. See docs/boundaries.md.",
    )
    p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted boundary PNGs")
    gt = p.add_mutually_exclusive_group()
    gt.add_argument("--gt", metavar="LABEL_DIR", help="folder of label PNGs (CamVid valannot/ layout)")
    gt.add_argument("--bsds", metavar="GT_MAT_DIR", help="folder of BSDS500 groundTruth .mat files")
    p.add_argument("--ignore-index", type=int, default=None,
                   help="label of unlabelled pixels in --gt maps (e.g. 255; CamVid: 11); default: none")
    p.add_argument("--ignore-margin", type=int, default=1,
                   help="also leave out pixels within this many pixels of an ignore pixel (default 1)")
    p.add_argument("--thresholds", type=int, default=NUM_THRESHOLDS,
                   help=f"number of thresholds (default {NUM_THRESHOLDS}: 0.01 .. 0.99)")
    p.add_argument("--max-dist", type=float, default=MAX_DIST,
                   help=f"match tolerance as a fraction of the image diagonal (default {MAX_DIST})")
    p.add_argument("--no-thin", action="store_true", help="do not thin the thresholded maps (BSDS thins them)")
    p.add_argument("--no-thin-gt", action="store_true",
                   help="do not thin the boundaries made from --gt label maps (default: thinned)")
    p.add_argument("--segmentations", action="store_true",
                   help="PRED_DIR holds label maps (hard segmentations: auxiliary labels, SLIC, ...): score their "
                        "label boundaries (one threshold; ODS = OIS)")
    p.add_argument("--out", type=Path, default=None, help="write every score, the PR curve and per-image results here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_eval_main)

    b = verbs.add_parser(
        "baseline", help="write classical boundary maps (Sobel, Canny, SLIC) as PNGs",
        description="Write one boundary PNG per image (uint8, 255 = strongest; same relative path, .png) with a "
                    "classical method: sobel (gradient magnitude, max-normalised per image), canny (fraction of "
                    "Canny settings that mark the pixel), slic (superpixel boundaries averaged over scales). "
                    "See docs/boundaries.md.",
    )
    b.add_argument("method", choices=("sobel", "canny", "slic"))
    b.add_argument("images", metavar="IMAGES", help="folder of images")
    b.add_argument("out_dir", metavar="OUT_DIR", help="where the boundary PNGs go")
    b.add_argument("--sigma", type=float, default=None, help="Gaussian smoothing in pixels (sobel: 1, canny: 2)")
    b.add_argument("--nms", action="store_true", help="sobel: non-maximum suppression along the gradient")
    b.add_argument("--levels", type=int, default=16, help="canny: number of threshold settings (default 16)")
    b.add_argument("--segments", default="100,200,400,800",
                   help="slic: superpixel counts averaged over (default 100,200,400,800)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_baseline_main)
