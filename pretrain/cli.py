"""``auxseg pretrain``: run pre-training from a config, or export a training checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from auxseg.checkpoint_io import CheckpointError, check_keys
from auxseg.cli import (
    EXIT_CONFIG_ERROR,
    ConfigCommand,
    add_config_arguments,
    config_and_overrides,
    report_error,
    run_config_command,
    stage_step,
)
from auxseg.config import from_dict
from auxseg.errors import AuxsegError
from auxseg.paths import check_contained

DESCRIPTION = """\
Cross-image pixel contrastive pre-training on auxiliary labels (stage 2).

Reads the auxiliary-label folder named by data.labels (its manifest gives the
number of labels, ignore value and image folder), trains the backbone with a
pre-training objective (default: supervised pixel InfoNCE, loss.name=infonce) over two augmented views of every image, and
writes to out_dir: config.yaml, log.jsonl, tensorboard/, checkpoints/iter_*.pth
(resumable; a rerun resumes automatically) and the backbone export
backbone_mmseg.pth (+ backbone_torchvision.pth for the plain stem, + decoder_mmseg.pth
with model.decoder=aspp; small_model.pth instead for model.arch=pixel|linear|predseg1).
Objectives that use no labels (loss.name=local_prediction) also train on a plain
image folder: data.source=images data.images=PATH.

Multi-process: torchrun --nproc_per_node=N -m loop pretrain CONFIG ...
"""

EPILOG = """\
examples:
  auxseg pretrain configs/pretrain/tiny.yaml
  auxseg pretrain configs/pretrain/default.yaml data.labels=work/auxlabels out_dir=work/pretrain
  auxseg pretrain configs/pretrain/default.yaml loss.infonce.mode=pixel model.stem=deep train.device=cuda train.amp=bf16
  auxseg pretrain configs/pretrain/local_prediction.yaml data.images=data/camvid/train model.arch=linear
  auxseg pretrain --export work/pretrain/checkpoints/iter_0010000.pth --out work/export
"""


OBJECTIVES_PLACE = "{objectives}"  # in the epilog: the registered objectives, listed when the help is printed


def _objective_list() -> str:
    from pretrain.objectives import DISCOVERY_ERRORS, registry

    lines = [f"  {name:<18} {(cls.__doc__ or '').strip().splitlines()[0]}" for name, cls in registry().items()]
    lines += [f"  (not loaded: {error})" for error in DISCOVERY_ERRORS]
    return "\nobjectives (loss.name; settings under loss.<name>):\n" + "\n".join(lines) + "\n"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Lists the objectives only when ``auxseg pretrain --help`` is printed: listing them runs the plug-in
    files, which building the parser (``auxseg --help``, every other command) must not do."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if OBJECTIVES_PLACE in text:
            text = text.replace(OBJECTIVES_PLACE, _objective_list())
        return super()._fill_text(text, width, indent)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain", help="contrastive pre-training on auxiliary labels (stage 2)", description=DESCRIPTION,
        epilog=EPILOG + OBJECTIVES_PLACE, formatter_class=_HelpFormatter,
    )
    add_config_arguments(p, "pretrain", "train.max_iters=100", optional=True)
    p.add_argument("--export", metavar="CHECKPOINT",
                   help="do not train: write the backbone export(s) of this training checkpoint")
    p.add_argument("--out", metavar="DIR", help="with --export: output folder (default: the checkpoint's out_dir)")
    p.set_defaults(func=main)
    return p


def export_from_checkpoint(checkpoint: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write the backbone export(s) of a training checkpoint; returns key format -> path."""
    from auxseg.checkpoint_io import load_checkpoint
    from pretrain.checkpoint import STATE_FORMAT
    from pretrain.config import PretrainConfig
    from pretrain.data import read_label_folder
    from pretrain.export import export_network
    from pretrain.train import PretrainModel

    ckpt = load_checkpoint(checkpoint)
    if not isinstance(ckpt, dict) or ckpt.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{checkpoint}: not a pretrain training checkpoint (format {STATE_FORMAT!r})")
    cfg = from_dict(PretrainConfig, ckpt["config"])
    model = PretrainModel(cfg)
    # only the network is exported: the objective's heads (whose shapes may depend on the label folder) are not needed
    net_state = {k[len("net."):]: v for k, v in ckpt["model"].items() if k.startswith("net.")}
    check_keys(model.net.state_dict().keys(), net_state.keys(), checkpoint, "network")
    model.net.load_state_dict(net_state)
    sha, manifest = None, None
    try:
        labels = {"folder": cfg.data.labels, "images": Path(cfg.out_dir) / "unlabelled"}.get(
            cfg.data.source, Path(cfg.out_dir) / "synthetic_data" / "auxlabels")
        folder = read_label_folder(labels, image_root=cfg.data.image_root, verify_hash=False)
        sha, manifest = folder.labels_sha256, str(folder.manifest_path)
    except (ValueError, OSError) as err:
        print(f"warning: label folder not readable ({err}); the export meta will not name it", file=sys.stderr)
    provenance = dict(config=ckpt["config"], iteration=ckpt["iteration"], auxlabels_sha256=sha,
                      auxlabels_manifest=manifest)
    if model.objective.exported_state() is not None:
        # what the objective exports (local_prediction's predictor) comes from the checkpoint too; its shapes
        # depend on the config only. Other objectives' heads (shapes from the label folder) are not needed.
        obj_state = {k[len("objective."):]: v for k, v in ckpt["model"].items() if k.startswith("objective.")}
        check_keys(model.objective.state_dict().keys(), obj_state.keys(), checkpoint, "objective")
        model.objective.load_state_dict(obj_state)
    check_contained(out or cfg.out_dir, "--out" if out else "out_dir")  # a linked subfolder would take the files
    return export_network(model.net, model.objective, out or cfg.out_dir, provenance)


def _summary(cfg, path: Path) -> str | None:
    """The closing line: the last logged loss (the run's headline number) and the export; rank 0 only."""
    if os.environ.get("RANK", "0") != "0":
        return None  # one line per job, not per process
    from pretrain.train import final_loss_line

    loss = final_loss_line(Path(cfg.out_dir))
    return f"{loss}, done: {path}" if loss else f"done: {path}"


def main(args: argparse.Namespace) -> int:
    """Train from the config (or write an export with --export); exit codes as every stage (auxseg.cli)."""
    from pretrain.config import PretrainConfig  # loads the objective plug-ins (the loss section lists them)
    from pretrain.train import run

    if args.export:
        try:
            for key_format, path in export_from_checkpoint(args.export, args.out).items():
                print(f"export ({key_format}): {path}")
        except (AuxsegError, FileNotFoundError) as err:
            return report_error("auxseg pretrain", err)
        return 0
    if config_and_overrides(args)[0] is None:
        print("auxseg pretrain: give a CONFIG (or --export CHECKPOINT)", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    command = ConfigCommand(prog="auxseg pretrain", schema=PretrainConfig, run=run, summary=_summary,
                            step=lambda cfg: stage_step("pretrain", cfg.out_dir))
    return run_config_command(args, command)
