"""``auxseg finetune CONFIG [key=value ...]``: fine-tune an mmseg segmenter from a YAML config."""

from __future__ import annotations

import argparse

from auxseg.cli import ConfigCommand, add_config_arguments, run_config_command, stage_step

DESCRIPTION = """\
Fine-tune DeepLabV3 or PSPNet (mmsegmentation, mmengine Runner) on a fixed,
seeded split of the labelled training images, starting from a backbone
export of `auxseg pretrain`, a torchvision/ImageNet or MoCo checkpoint, an
mmseg checkpoint, or random weights. The backbone keys are checked exactly
(a wrong checkpoint stops the run before training) and the loaded tensors
are verified before the first step. Writes into work_dir: config.yaml,
mmseg_config.py, split.txt, init_report.json, iter_*.pth (resume) and
results.json (mIoU, aAcc, per-class IoU on the validation split).
Re-running the same command resumes from the newest checkpoint.

Examples:
  auxseg finetune configs/finetune/tiny.yaml data_root=/tmp/synthetic
  auxseg finetune configs/finetune/camvid_10pct.yaml init.type=export init.checkpoint=runs/pre/backbone.pth
  auxseg finetune configs/finetune/default.yaml split.num_images=100 work_dir=work_dirs/camvid_100img
  auxseg finetune configs/finetune/cityscapes.yaml device=cuda split.fraction=0.1
  auxseg finetune configs/finetune/camvid_10pct.yaml targets.kind=coarse targets.factor=16 loss.name=rq
  auxseg finetune configs/finetune/camvid_10pct.yaml consistency.method=unimatch   # + the unlabelled images
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune DeepLabV3/PSPNet with mmsegmentation on a seeded label split; writes results.json",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "finetune", "split.fraction=0.1 init.type=export init.checkpoint=F max_iters=2000")
    parser.set_defaults(func=main)
    return parser


def _summary(cfg, results: dict) -> str:
    posterior = f", mIoU_r {results['mIoU_r']:.2f} (argmax r)" if results.get("mIoU_r") is not None else ""
    return (
        f"mIoU {results['mIoU']:.2f}{posterior} (aAcc {results['aAcc']:.2f}) on {results['evaluated_on']['num_images']} "
        f"validation images after {results['iteration']} iterations, {results['split']['num_images']} training "
        f"images; results in {results['work_dir']}/results.json"
    )


def main(args: argparse.Namespace) -> int:
    """Run the stage from the config; exit 0 on success, 1 on bad input, 2 on config errors (auxseg.cli)."""
    from .config import FinetuneConfig, resolve_paths
    from .run import run

    command = ConfigCommand(prog="auxseg finetune", schema=FinetuneConfig, run=run, summary=_summary,
                            step=lambda cfg: stage_step("finetune", resolve_paths(cfg).work_dir))
    return run_config_command(args, command)
