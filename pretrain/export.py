"""Backbone export (docs/contracts.md section 2) and its validating loader.

The projection head (and the decoder) are dropped; the file holds the
backbone weights and a meta block that says what they are, so ``finetune``
and ``auxlabels`` read it without being told. A plain-stem backbone is
written in both key formats (``torchvision`` and mmseg ``ResNet``; the key
names coincide, the meta says which consumer each file targets); a deep-stem
backbone only as mmseg ``ResNetV1c``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import auxseg
from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, save_checkpoint
from pretrain.model import ARCH_CHANNELS, DilatedResNet
from pretrain.transforms import MEAN, STD

EXPORT_FORMAT = "auxseg.backbone/1"
MMSEG_TYPE = {"plain": "ResNet", "deep": "ResNetV1c"}
REQUIRED_META = ("format", "arch", "stem", "key_format", "mmseg_type", "mean", "std", "channel_order",
                 "config", "auxlabels_sha256", "auxlabels_manifest", "iteration", "versions")


def export_filenames(stem: str) -> dict[str, str]:
    """The export files written for a stem: key format -> file name."""
    names = {"mmseg": "backbone_mmseg.pth"}
    if stem == "plain":
        names["torchvision"] = "backbone_torchvision.pth"
    return names


def export_backbone(backbone: DilatedResNet, out_dir: str | Path, *, config: dict, iteration: int,
                    auxlabels_sha256: str | None, auxlabels_manifest: str | None) -> dict[str, Path]:
    """Write the backbone export(s) into ``out_dir``; returns key format -> path."""
    state = {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()}
    paths = {}
    for key_format, name in export_filenames(backbone.stem_type).items():
        meta = {
            "format": EXPORT_FORMAT,
            "arch": backbone.arch,
            "stem": backbone.stem_type,
            "key_format": key_format,
            "mmseg_type": MMSEG_TYPE[backbone.stem_type],
            "mean": list(MEAN),
            "std": list(STD),
            "channel_order": "rgb",
            "config": config,
            "auxlabels_sha256": auxlabels_sha256,
            "auxlabels_manifest": auxlabels_manifest,
            "iteration": int(iteration),
            "versions": {"torch": str(torch.__version__), "auxseg": str(auxseg.__version__)},
        }
        paths[key_format] = save_checkpoint({"state_dict": state, "meta": meta}, Path(out_dir) / name)
    return paths


DECODER_FORMAT = "auxseg.decoder/1"
DECODER_FILENAME = "decoder_mmseg.pth"


def export_decoder(decoder, out_dir: str | Path, *, config: dict, iteration: int,
                   auxlabels_sha256: str | None, auxlabels_manifest: str | None) -> Path:
    """Write a pre-trained ASPP decoder in mmseg ``ASPPHead`` key format (no ``conv_seg``, no ``decode_head.``)."""
    state = {k: v.detach().cpu().clone() for k, v in decoder.state_dict().items()}
    meta = {
        "format": DECODER_FORMAT,
        "mmseg_type": "ASPPHead",
        "in_channels": decoder.in_channels,
        "channels": decoder.out_channels,
        "dilations": list(decoder.dilations),
        "config": config,
        "auxlabels_sha256": auxlabels_sha256,
        "auxlabels_manifest": auxlabels_manifest,
        "iteration": int(iteration),
        "versions": {"torch": str(torch.__version__), "auxseg": str(auxseg.__version__)},
    }
    return save_checkpoint({"state_dict": state, "meta": meta}, Path(out_dir) / DECODER_FILENAME)


def load_decoder_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load and validate a decoder export; returns (state_dict, meta). Raises CheckpointError naming the file."""
    from pretrain.model import ASPP

    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != DECODER_FORMAT:
        raise CheckpointError(f"{path}: not an auxseg decoder export (format {DECODER_FORMAT!r})")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: decoder export has no state_dict")
    expected = ASPP(int(meta["in_channels"]), int(meta["channels"]), tuple(meta["dilations"])).state_dict().keys()
    check_keys(expected, state.keys(), path, "ASPP decoder")
    return state, meta


def validate_export(ckpt: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Check a loaded export object against the contract; returns (state_dict, meta)."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("meta"), dict):
        raise CheckpointError(f"{path}: not an auxseg backbone export (no meta block)")
    meta = ckpt["meta"]
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: meta.format is {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: meta lacks {missing}")
    arch, stem, key_format = meta["arch"], meta["stem"], meta["key_format"]
    if arch not in ARCH_CHANNELS:
        raise CheckpointError(f"{path}: meta.arch {arch!r} is not one of {sorted(ARCH_CHANNELS)}")
    if stem not in MMSEG_TYPE:
        raise CheckpointError(f"{path}: meta.stem {stem!r} is not 'plain' or 'deep'")
    if key_format not in export_filenames(stem):
        raise CheckpointError(f"{path}: key_format {key_format!r} is not valid for stem {stem!r}")
    if meta["mmseg_type"] != MMSEG_TYPE[stem]:
        raise CheckpointError(f"{path}: mmseg_type {meta['mmseg_type']!r} does not match stem {stem!r}")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict is missing or holds non-tensors")
    expected = DilatedResNet(arch, stem).state_dict().keys()
    check_keys(expected, state.keys(), path, f"{arch} {stem}-stem backbone")
    return state, meta


def load_backbone_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load and validate a backbone export (``weights_only=True``); returns (state_dict, meta).

    Raises :class:`CheckpointError` naming the file when it is not a valid
    ``auxseg.backbone/1`` export or its keys do not match its declared arch/stem.
    """
    return validate_export(load_checkpoint(path), path)
