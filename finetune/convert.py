"""Backbone initialisation for fine-tuning: checkpoint file -> mmseg ResNet backbone weights, key-checked.

Sources (``init.type``):

- ``export``: our ``pretrain`` backbone export (docs/contracts.md section 2).
  Its meta says the architecture, the stem (plain -> mmseg ``ResNet``, deep ->
  ``ResNetV1c``) and the input normalisation; the fine-tune config follows it.
- ``torchvision``: an ImageNet classifier ``state_dict`` as torchvision saves it
  (``fc.*`` dropped). torchvision's ResNet keys are exactly mmseg ``ResNet`` keys.
- ``moco``: a MoCo v1/v2 training checkpoint (``module.encoder_q.*``; the key
  encoder and the projection ``fc`` are dropped).
- ``mmseg``: an mmseg/mmengine checkpoint or backbone file (``backbone.*``
  prefix stripped; stem from the keys).
- ``random``: mmseg's default initialisation.

Every checkpoint source is compared with the backbone the config builds;
any missing or unexpected key is a :class:`~auxseg.checkpoint_io.CheckpointError`
naming the file (the method's stem trap: ResNetV1c's deep stem vs the plain
stem of torchvision/MoCo weights, method.md "Stage 3").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, save_checkpoint, state_dict_of
from auxseg.contracts.backbone import (
    CHECKPOINT_KINDS,
    BackboneWeights,
    load_decoder_export,
    read_backbone_weights,
)
from auxseg.files import sha256_file

INIT_REPORT_FORMAT = "auxseg.finetune.init/1"
INIT_TYPES = ("random", *CHECKPOINT_KINDS)


def load_backbone_weights(init_type: str, path: str | Path) -> BackboneWeights:
    """Read a checkpoint of kind ``init_type`` (``export``, ``torchvision``, ``moco``, ``mmseg``) as backbone weights."""
    if init_type not in CHECKPOINT_KINDS:
        raise ValueError(f"init type must be one of {INIT_TYPES} for a checkpoint, got {init_type!r}")
    return read_backbone_weights(path, init_type)


def backbone_keys(backbone_cfg: dict) -> list[str]:
    """The state_dict keys of the backbone an mmseg config describes (built once, randomly)."""
    from mmseg.registry import MODELS

    cfg = copy.deepcopy(dict(backbone_cfg))
    cfg.pop("init_cfg", None)
    cfg.pop("pretrained", None)
    return list(MODELS.build(cfg).state_dict())


def configure_backbone(mmcfg, weights: BackboneWeights | None, converted: str | Path | None) -> None:
    """Point an mmseg config (``mmengine.Config``) at ``weights``; ``None`` = random init.

    Sets the backbone type from the stem, checks its depth against the
    weights, loads them through ``init_cfg=Pretrained`` and sets the data
    preprocessor's mean/std to the weights' normalisation (RGB, 0-255).
    """
    model = mmcfg.model
    model.pretrained = None  # mmseg's base configs name open-mmlab URLs: never download
    backbone = model.backbone
    if weights is None:
        backbone.init_cfg = None
        return
    if backbone.get("depth") != weights.depth:
        raise CheckpointError(
            f"{weights.path}: the weights are a ResNet-{weights.depth} but the mmseg config builds a "
            f"ResNet-{backbone.get('depth')}; use the matching preset (r18 configs for resnet18, r50 for resnet50)"
        )
    backbone.type = weights.mmseg_type
    backbone.init_cfg = dict(type="Pretrained", checkpoint=str(converted))
    model.data_preprocessor.mean = list(weights.mean)
    model.data_preprocessor.std = list(weights.std)
    model.data_preprocessor.bgr_to_rgb = True  # mmseg loads BGR; the weights expect RGB


def prepare_init(init_type: str, checkpoint: str | None, mmcfg, work_dir: str | Path) -> dict[str, Any]:
    """Convert the init checkpoint, configure the mmseg config, check keys exactly; return the init report.

    Writes ``<work_dir>/init_backbone.pth`` (mmseg keys, plain tensors) for
    non-random inits. Raises :class:`CheckpointError` naming the checkpoint
    when its keys differ from the backbone's in any way.
    """
    work_dir = Path(work_dir)
    report: dict[str, Any] = {
        "format": INIT_REPORT_FORMAT,
        "type": init_type,
        "checkpoint": None,
        "checkpoint_sha256": None,
        "converted": None,
        "missing_keys": [],
        "unexpected_keys": [],
    }
    if init_type == "random":
        if checkpoint:
            raise CheckpointError(f"init.type is 'random' but init.checkpoint is set ({checkpoint})")
        configure_backbone(mmcfg, None, None)
        report.update(backbone_type=mmcfg.model.backbone.type, depth=mmcfg.model.backbone.get("depth"))
        return report
    if not checkpoint:
        raise CheckpointError(f"init.type is {init_type!r} but no init.checkpoint was given")
    weights = load_backbone_weights(init_type, checkpoint)
    converted = work_dir / "init_backbone.pth"
    configure_backbone(mmcfg, weights, converted)
    expected = backbone_keys(mmcfg.model.backbone)
    missing = sorted(set(expected) - set(weights.state_dict))
    unexpected = sorted(set(weights.state_dict) - set(expected))
    report.update(missing_keys=missing, unexpected_keys=unexpected)
    check_keys(expected, weights.state_dict.keys(), checkpoint, what=f"{weights.mmseg_type}-{weights.depth} backbone")
    save_checkpoint({"state_dict": weights.state_dict}, converted)
    report.update(
        checkpoint=str(Path(checkpoint).resolve()),
        checkpoint_sha256=sha256_file(checkpoint),
        converted=str(converted.resolve()),
        backbone_type=weights.mmseg_type,
        depth=weights.depth,
        stem=weights.stem,
        mean=weights.mean,
        std=weights.std,
        num_tensors=len(weights.state_dict),
        export_meta={k: v for k, v in weights.meta.items() if k != "config"} or None,
    )
    return report


def verify_loaded(module: torch.nn.Module, converted: str | Path, not_loaded: tuple[str, ...] = (),
                  what: str = "backbone") -> int:
    """Check that every tensor of ``module`` equals the converted checkpoint's; returns the count compared.

    Run after mmengine's ``init_weights`` so it proves the weights really
    arrived (``init_cfg=Pretrained`` alone loads non-strictly and only logs).
    Keys starting with a prefix in ``not_loaded`` (a decode head's classifier
    ``conv_seg.``) are the module's own and are not compared.
    """
    expected = state_dict_of(load_checkpoint(converted), converted)
    found = {k: v for k, v in module.state_dict().items() if not k.startswith(not_loaded)}
    check_keys(expected.keys(), found.keys(), converted, what)
    differing = [k for k, v in expected.items() if not torch.equal(found[k].detach().cpu(), v.cpu())]
    if differing:
        raise CheckpointError(
            f"{converted}: after initialisation {len(differing)} {what} tensors differ from the checkpoint "
            f"(first: {', '.join(differing[:5])}); the weights did not load"
        )
    return len(expected)


def prepare_decoder_init(decoder: str | Path, mmcfg, work_dir: str | Path) -> dict[str, Any]:
    """Initialise the config's DeepLabV3 decode head from a decoder export (docs/contracts.md section 2b).

    The export must fit the head exactly: an ``ASPPHead`` with the same
    ``in_channels``, ``channels`` and ``dilations``; every key but the classifier
    ``conv_seg.*`` is loaded. Writes ``<work_dir>/init_decoder.pth`` and returns
    the report entry. Raises :class:`CheckpointError` naming the file otherwise.
    """
    state, meta = load_decoder_export(decoder)
    head = mmcfg.model.decode_head
    found = {"type": head.get("type"), "in_channels": head.get("in_channels"), "channels": head.get("channels"),
             "dilations": list(head.get("dilations", (1, 6, 12, 18)))}
    wanted = {"type": meta["mmseg_type"], "in_channels": meta["in_channels"], "channels": meta["channels"],
              "dilations": list(meta["dilations"])}
    if found != wanted:
        diff = ", ".join(f"{k} {wanted[k]!r} (config: {found[k]!r})" for k in wanted if wanted[k] != found[k])
        raise CheckpointError(f"{decoder}: the decoder export does not fit model.decode_head of the mmseg config: {diff}")
    converted = Path(work_dir) / "init_decoder.pth"
    save_checkpoint({"state_dict": state}, converted)
    # the classifier keeps mmseg's own initialisation; everything else comes from the export
    head.init_cfg = [dict(type="Normal", std=0.01, override=dict(name="conv_seg")),
                     dict(type="Pretrained", checkpoint=str(converted))]
    return {"decoder": str(Path(decoder).resolve()), "decoder_sha256": sha256_file(decoder),
            "decoder_converted": str(converted.resolve()), "decoder_tensors": len(state)}
