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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, save_checkpoint, state_dict_of
from auxseg.io import sha256_file

EXPORT_FORMAT = "auxseg.backbone/1"
INIT_REPORT_FORMAT = "auxseg.finetune.init/1"
INIT_TYPES = ("random", "export", "torchvision", "moco", "mmseg")

# ImageNet statistics on the 0-255 scale, RGB: what torchvision and MoCo weights were trained with.
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]

# (blocks per stage, bottleneck?) -> depth
_RESNET_LAYOUTS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}
_MMSEG_TYPE_OF_STEM = {"plain": "ResNet", "deep": "ResNetV1c"}


@dataclass
class BackboneWeights:
    """Backbone weights in mmseg key format plus what is known about them."""

    state_dict: dict[str, torch.Tensor]
    depth: int
    stem: str  # "plain" | "deep"
    mean: list[float]
    std: list[float]
    source: str  # init type
    path: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mmseg_type(self) -> str:
        return _MMSEG_TYPE_OF_STEM[self.stem]


def infer_resnet(state_dict: dict[str, torch.Tensor], path: str | Path) -> tuple[int, str]:
    """Depth and stem of ResNet weights in torchvision/mmseg key format.

    Raises :class:`CheckpointError` naming ``path`` when the keys are not a ResNet's.
    """
    stem = "deep" if "stem.0.weight" in state_dict else "plain" if "conv1.weight" in state_dict else None
    if stem is None:
        raise CheckpointError(
            f"{path}: not ResNet backbone weights (no conv1.weight or stem.0.weight; first keys: "
            f"{', '.join(list(state_dict)[:5])})"
        )
    blocks = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(len(ids))
    bottleneck = "layer1.0.conv3.weight" in state_dict
    depth = _RESNET_LAYOUTS.get((tuple(blocks), bottleneck))
    if depth is None:
        raise CheckpointError(f"{path}: unknown ResNet layout: blocks per stage {blocks}, bottleneck={bottleneck}")
    return depth, stem


def read_backbone_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and validate a ``pretrain`` backbone export; returns ``(state_dict, meta)``."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "meta" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: not a backbone export (expected keys 'state_dict' and 'meta', "
            f"got {list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__})"
        )
    meta = ckpt["meta"]
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: meta format is {found!r}, this reader handles {EXPORT_FORMAT!r}")
    for key in ("arch", "stem", "key_format", "mmseg_type", "mean", "std"):
        if key not in meta:
            raise CheckpointError(f"{path}: backbone export meta lacks {key!r}")
    if meta["stem"] not in _MMSEG_TYPE_OF_STEM:
        raise CheckpointError(f"{path}: meta stem must be 'plain' or 'deep', got {meta['stem']!r}")
    if meta["mmseg_type"] != _MMSEG_TYPE_OF_STEM[meta["stem"]]:
        raise CheckpointError(
            f"{path}: meta says stem {meta['stem']!r} but mmseg_type {meta['mmseg_type']!r} "
            f"(expected {_MMSEG_TYPE_OF_STEM[meta['stem']]!r})"
        )
    if meta["key_format"] not in ("torchvision", "mmseg"):
        raise CheckpointError(f"{path}: meta key_format must be 'torchvision' or 'mmseg', got {meta['key_format']!r}")
    if meta["key_format"] == "torchvision" and meta["stem"] != "plain":
        raise CheckpointError(f"{path}: key_format 'torchvision' is only defined for stem 'plain'")
    if meta.get("channel_order", "rgb") != "rgb":
        raise CheckpointError(f"{path}: channel_order {meta['channel_order']!r} is not supported (rgb only)")
    state_dict = ckpt["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")
    return state_dict, meta


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _arch_depth(arch: str, path: str | Path) -> int:
    m = re.fullmatch(r"resnet(\d+)", str(arch))
    if not m:
        raise CheckpointError(f"{path}: meta arch {arch!r} is not a ResNet (resnet18/34/50/101/152)")
    return int(m.group(1))


def load_backbone_weights(init_type: str, path: str | Path) -> BackboneWeights:
    """Read a checkpoint of kind ``init_type`` and return its backbone weights in mmseg keys."""
    path = Path(path)
    if init_type == "export":
        sd, meta = read_backbone_export(path)
        depth, stem = infer_resnet(sd, path)
        if depth != _arch_depth(meta["arch"], path) or stem != meta["stem"]:
            raise CheckpointError(
                f"{path}: weights are a {stem}-stem ResNet-{depth} but meta says "
                f"{meta['stem']}-stem {meta['arch']}"
            )
        return BackboneWeights(sd, depth, stem, list(meta["mean"]), list(meta["std"]), init_type, str(path), meta)
    if init_type not in ("torchvision", "moco", "mmseg"):
        raise ValueError(f"init type must be one of {INIT_TYPES} for a checkpoint, got {init_type!r}")
    raw = state_dict_of(load_checkpoint(path), path)
    if init_type == "moco":
        prefix = next((p for p in ("module.encoder_q.", "encoder_q.") if any(k.startswith(p) for k in raw)), None)
        if prefix is None:
            raise CheckpointError(f"{path}: not a MoCo checkpoint (no 'module.encoder_q.*' keys)")
        sd = {k: v for k, v in _strip_prefix(raw, prefix).items() if not k.startswith("fc.")}
    elif init_type == "mmseg":
        sd = _strip_prefix(raw, "backbone.") if any(k.startswith("backbone.") for k in raw) else dict(raw)
    else:
        sd = {k: v for k, v in raw.items() if not k.startswith("fc.")}
    depth, stem = infer_resnet(sd, path)
    if init_type in ("torchvision", "moco") and stem != "plain":
        raise CheckpointError(f"{path}: a {init_type} checkpoint must have the plain stem, found the deep stem")
    return BackboneWeights(sd, depth, stem, list(IMAGENET_MEAN), list(IMAGENET_STD), init_type, str(path))


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


def verify_loaded(backbone: torch.nn.Module, converted: str | Path) -> int:
    """Check that every backbone tensor equals the converted checkpoint's; returns the count compared.

    Run after mmengine's ``init_weights`` so it proves the weights really
    arrived (``init_cfg=Pretrained`` alone loads non-strictly and only logs).
    """
    expected = state_dict_of(load_checkpoint(converted), converted)
    found = backbone.state_dict()
    check_keys(expected.keys(), found.keys(), converted)
    differing = [k for k, v in expected.items() if not torch.equal(found[k].detach().cpu(), v.cpu())]
    if differing:
        raise CheckpointError(
            f"{converted}: after initialisation {len(differing)} backbone tensors differ from the checkpoint "
            f"(first: {', '.join(differing[:5])}); the weights did not load"
        )
    return len(expected)
