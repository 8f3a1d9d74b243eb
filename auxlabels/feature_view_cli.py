"""``auxseg featureview [CONFIG] [key=value ...]``: an extractor's features as RGB images (PCA of guided-filtered features)."""

from __future__ import annotations

import argparse

from auxseg.cli import ConfigCommand, add_config_arguments, run_config_command

DESCRIPTION = """\
Show what a frozen extractor sees: for each image, its dense features are
upsampled to the working size, standardised and clipped, guided-filtered with
the image as guide, reduced to 3 channels by a per-image PCA and written as an
RGB PNG (same relative path as the image, in out_dir). Pixels the extractor
finds alike get alike colours (semantic soft segmentation, Aksoy et al. 2018).

Examples:
  auxseg featureview image_dir=data/camvid/val out_dir=runs/view extractor.name=resnet18 extractor.random_init=true
  auxseg featureview image_dir=data/camvid/val out_dir=runs/view max_images=8 extractor.name=auxseg_export \\
      extractor.checkpoint=runs/pretrain/backbone_torchvision.pth
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``featureview`` subcommand to the ``auxseg`` command."""
    from .cli import _extractor_list

    parser = subparsers.add_parser(
        "featureview",
        help="feature view: an extractor's features as RGB PNGs (guided filter + per-image PCA)",
        description=DESCRIPTION,
        epilog=_extractor_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "auxlabels", "image_dir=IMAGES out_dir=OUT extractor.name=resnet18", optional=True)
    parser.set_defaults(func=main)
    return parser


def _summary(cfg, record: dict) -> str:
    line = (f"{len(record['images'])} feature views in {cfg.out_dir} "
            f"({record['seconds_per_image']:.2f} s per image, working size {cfg.max_side or 'full'})")
    if record["skipped"]:
        line += f"; {len(record['skipped'])} unreadable images skipped (listed in feature_view.json)"
    return line


def main(args: argparse.Namespace) -> int:
    """Write the views; exit 0 on success, 1 on bad input, 2 on config errors (auxseg.cli)."""
    from .feature_view import FeatureViewConfig, run, validate

    command = ConfigCommand(prog="auxseg featureview", schema=FeatureViewConfig, run=run, summary=_summary,
                            check=validate)
    return run_config_command(args, command)
