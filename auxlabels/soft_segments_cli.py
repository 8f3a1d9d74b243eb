"""``auxseg softsegments [CONFIG] [key=value ...]``: semantic soft segments as an auxiliary-label folder with priors."""

from __future__ import annotations

import argparse

from auxseg.cli import ConfigCommand, add_config_arguments, run_config_command

DESCRIPTION = """\
Semantic soft segmentation (Aksoy et al., SIGGRAPH 2018) of every image in a
folder: a matting Laplacian plus semantic and colour affinities between
superpixels, its smallest eigenvectors, a constrained sparsification into soft
layers, grouping by semantic features and a final relaxed sparsification, at a
reduced working resolution (soft.working_side). Writes an auxiliary-label
folder: priors/<rel>.npz (the K soft layers, a per-pixel prior), labels/<rel>.png
(their argmax) and manifest.json (scope "image"), which `auxseg pretrain` reads.

Examples:
  auxseg softsegments image_dir=data/camvid/val out_dir=runs/soft features=colour
  auxseg softsegments image_dir=data/camvid/val out_dir=runs/soft extractor.name=resnet50 \\
      extractor.checkpoint=weights/resnet50.pth soft.segments=5 soft.working_side=160
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``softsegments`` subcommand to the ``auxseg`` command."""
    from .cli import _extractor_list

    parser = subparsers.add_parser(
        "softsegments",
        help="semantic soft segments (Aksoy et al. 2018) -> label folder with per-pixel priors",
        description=DESCRIPTION,
        epilog=_extractor_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "auxlabels", "image_dir=IMAGES out_dir=OUT features=colour soft.segments=5",
                         optional=True)
    parser.set_defaults(func=main)
    return parser


def _summary(cfg, manifest: dict) -> str:
    line = (f"{len(manifest['images'])} soft segmentations in {cfg.out_dir} (K={manifest['num_labels']}, "
            f"{manifest['seconds_per_image']:.1f} s per image at working side {cfg.soft.working_side})")
    if manifest["skipped"]:
        line += f"; {len(manifest['skipped'])} unreadable images skipped (listed in manifest.json)"
    return line


def main(args: argparse.Namespace) -> int:
    """Write the folder; exit 0 on success, 1 on bad input, 2 on config errors (auxseg.cli)."""
    from .soft_segments_run import SoftSegmentsConfig, run, validate

    command = ConfigCommand(prog="auxseg softsegments", schema=SoftSegmentsConfig, run=run, summary=_summary,
                            check=validate)
    return run_config_command(args, command)
