"""``auxseg auxlabels CONFIG [key=value ...]``: run the auxiliary-label stage from a YAML config."""

from __future__ import annotations

import argparse

from auxseg.cli import ConfigCommand, add_config_arguments, run_config_command, stage_step

DESCRIPTION = """\
Turn a folder of images into auxiliary-label PNGs (one per image, same relative
path) plus manifest.json, centroids.npy and, when ground truth is given,
pmiou.json (proxy mIoU). A frozen network's pixel features are clustered with
faiss K-means fitted on a sample, outliers are dropped and each SLIC superpixel
takes its majority cluster. Interrupted runs resume where they stopped.

Examples:
  auxseg auxlabels configs/auxlabels/tiny.yaml
  auxseg auxlabels configs/auxlabels/camvid_r18.yaml out_dir=runs/aux kmeans.k=17
  torchrun --nproc_per_node 4 -m loop auxlabels CONFIG   (shards the assignment pass)
"""


def _extractor_list() -> str:
    from .features import EXTRACTOR_HELP

    return "extractors (extractor.name):\n" + "".join(f"  {name:<15} {text}\n" for name, text in EXTRACTOR_HELP.items())


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``auxlabels`` subcommand to the ``auxseg`` command."""
    parser = subparsers.add_parser(
        "auxlabels",
        help="auxiliary labels: features -> K-means -> outliers -> superpixel vote -> label PNGs + PmIoU",
        description=DESCRIPTION,
        epilog=_extractor_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "auxlabels", "kmeans.k=17 extractor.device=cuda num_workers=2")
    parser.set_defaults(func=main)
    return parser


def _summary(cfg, manifest: dict) -> str:
    summary = f"{len(manifest['images'])} label PNGs in {cfg.out_dir} (K={manifest['num_labels']}, {manifest['dtype']})"
    if manifest.get("pmiou"):
        summary += f"; PmIoU {manifest['pmiou']['pmiou']:.2f} (majority {manifest['pmiou']['majority_miou']:.2f})"
    if manifest["skipped"]:
        summary += f"; {len(manifest['skipped'])} unreadable images skipped (listed in manifest.json)"
    return summary


def main(args: argparse.Namespace) -> int:
    """Run the stage from the config; exit 0 on success, 1 on bad input, 2 on config errors (auxseg.cli)."""
    from .config import AuxLabelsConfig
    from .pipeline import check_config, run

    command = ConfigCommand(prog="auxseg auxlabels", schema=AuxLabelsConfig, run=run, summary=_summary,
                            check=check_config, step=lambda cfg: stage_step("auxlabels", cfg.out_dir))
    return run_config_command(args, command)
