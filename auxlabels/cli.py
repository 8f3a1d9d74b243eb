"""``auxseg auxlabels CONFIG [key=value ...]``: run the auxiliary-label stage from a YAML config."""

from __future__ import annotations

import argparse
import sys

from auxseg.cli import add_config_arguments, load_cli_config

DESCRIPTION = """\
Turn a folder of images into auxiliary-label PNGs (one per image, same relative
path) plus manifest.json, centroids.npy and, when ground truth is given,
pmiou.json (proxy mIoU). A frozen network's pixel features are clustered with
faiss K-means fitted on a sample, outliers are dropped and each SLIC superpixel
takes its majority cluster. Interrupted runs resume where they stopped.

Examples:
  auxseg auxlabels configs/auxlabels/tiny.yaml
  auxseg auxlabels configs/auxlabels/camvid_r18.yaml out_dir=runs/aux kmeans.k=17
  torchrun --nproc_per_node 4 -m auxseg.cli auxlabels CONFIG   (shards the assignment pass)
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``auxlabels`` subcommand to the ``auxseg`` command."""
    parser = subparsers.add_parser(
        "auxlabels",
        help="auxiliary labels: features -> K-means -> outliers -> superpixel vote -> label PNGs + PmIoU",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "auxlabels", "kmeans.k=17 extractor.device=cuda num_workers=2")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """Load and check the config, run the stage, print a one-line summary; 0 on success, 1 on bad input, 2 on config errors."""
    from auxseg.checkpoint_io import CheckpointError
    from auxseg.config import ConfigError, dump_config
    from auxseg.io import ImageReadError

    from .config import AuxLabelsConfig, validate

    cfg = load_cli_config(AuxLabelsConfig, args, "auxseg auxlabels", validate)
    if cfg is None:
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from .pipeline import run

    try:
        manifest = run(cfg)
    except (ConfigError, CheckpointError, ImageReadError, FileNotFoundError, ValueError) as err:
        print(f"auxseg auxlabels: error: {err}", file=sys.stderr)
        return 1
    summary = f"{len(manifest['images'])} label PNGs in {cfg.out_dir} (K={manifest['num_labels']}, {manifest['dtype']})"
    if manifest.get("pmiou"):
        summary += f"; PmIoU {manifest['pmiou']['pmiou']:.2f} (majority {manifest['pmiou']['majority_miou']:.2f})"
    if manifest["skipped"]:
        summary += f"; {len(manifest['skipped'])} unreadable images skipped (listed in manifest.json)"
    print(summary)
    return 0
