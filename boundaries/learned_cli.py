"""``auxseg boundaries predict``: boundary PNGs from a network trained with the local-prediction objective.

The ``boundaries`` command and its other verbs are :mod:`boundaries.cli`;
the work is :mod:`boundaries.learned` (imported when the verb runs, so
``auxseg --help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys

from auxseg.errors import AuxsegError


def add_parser(subparsers) -> None:
    """Add the verb ``auxseg boundaries predict`` (the ``boundaries`` command is :mod:`boundaries.cli`)."""
    from boundaries.cli import boundary_verbs

    p = boundary_verbs(subparsers).add_parser(
        "predict", help="boundary PNGs from a network trained with loss.name=local_prediction",
        description="Boundary maps from the switch posteriors of a network trained with the local-prediction "
                    "objective (a small model's small_model.pth, or a ResNet's local_predictor.pth with its backbone "
                    "export beside it, or the run's folder): 1 - pi per pixel, optional spectral globalisation, non-maximum "
                    "suppression; one uint8 PNG per image (255 = strongest), ready for `auxseg boundaries eval`. "
                    "See docs/boundaries.md.",
    )
    add_predict_arguments(p)


def add_predict_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``auxseg boundaries predict``."""
    p.add_argument("checkpoint", help="small_model.pth or local_predictor.pth (or the output folder) of `auxseg "
                                      "pretrain` with loss.name=local_prediction")
    p.add_argument("images", help="folder of images (searched recursively)")
    p.add_argument("out", help="output folder: one 8-bit PNG per image, same relative path")
    p.add_argument("--reduce", choices=("mean", "max"), default="mean",
                   help="mean or max of 1 - pi over the pairs touching a pixel (default: mean)")
    p.add_argument("--globalize", action="store_true", help="add the spectral (gPb-style) boundary")
    p.add_argument("--weight", type=float, default=0.5, help="share of the spectral map (default: 0.5)")
    p.add_argument("--graph-side", type=int, default=64, help="nodes per side of the spectral graph (default: 64)")
    p.add_argument("--vectors", type=int, default=8, help="non-trivial eigenvectors (default: 8)")
    p.add_argument("--no-nms", action="store_true", help="write the strength map without non-maximum suppression")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=predict_main)
    return p


def predict_main(args: argparse.Namespace) -> int:
    """``auxseg boundaries predict``: exit 0 with one summary line, 1 with a one-line input error."""
    from boundaries.learned import BoundaryOptions, predict_folder

    opts = BoundaryOptions(reduce=args.reduce, globalize=args.globalize, weight=args.weight,
                           graph_side=args.graph_side, n_vectors=args.vectors, nms=not args.no_nms,
                           device=args.device)
    if not 0.0 <= opts.weight <= 1.0 or opts.graph_side < 2 or opts.n_vectors < 1:
        print("auxseg boundaries predict: error: --weight must be in [0, 1], --graph-side >= 2, --vectors >= 1",
              file=sys.stderr)
        return 2
    try:
        paths = predict_folder(args.checkpoint, args.images, args.out, opts, progress=not args.no_progress)
    except (AuxsegError, FileNotFoundError) as err:
        print(f"auxseg boundaries predict: error: {err}", file=sys.stderr)
        return 1
    print(f"done: {len(paths)} boundary maps in {args.out}")
    return 0
