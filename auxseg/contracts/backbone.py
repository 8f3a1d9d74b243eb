"""The backbone and decoder exports (docs/contracts.md sections 2, 2b) and every ResNet checkpoint kind we read.

``pretrain`` writes an export with :func:`export_meta` and :func:`export_filenames`;
``finetune`` and ``auxlabels`` read it, and every other supported ResNet
checkpoint, with :func:`read_backbone_weights`, which returns the weights in
one key format (torchvision / mmseg ``ResNet`` keys, no ``fc``; ``stem.*`` for
the deep stem) together with what is known about them. Expected key sets come
from :func:`resnet_keys`, so no reader needs the model class of the writer.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, state_dict_of
from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD, MMSEG_TYPE_OF_STEM, Provenance, versions

EXPORT_FORMAT = "auxseg.backbone/1"
DECODER_FORMAT = "auxseg.decoder/1"
DECODER_FILENAME = "decoder_mmseg.pth"
REQUIRED_META = ("format", "arch", "stem", "key_format", "mmseg_type", "mean", "std", "channel_order",
                 "config", "auxlabels_sha256", "auxlabels_manifest", "iteration", "versions")
RESNET_DEPTHS = (18, 34, 50, 101, 152)
CHECKPOINT_KINDS = ("export", "torchvision", "moco", "mmseg")
"""What :func:`read_backbone_weights` reads: our export, a torchvision ImageNet state_dict, a MoCo
v1/v2 checkpoint (``module.encoder_q.*`` or ``encoder_q.*``), an mmseg/mmengine checkpoint (``backbone.*``)."""
MOCO_PREFIXES = ("module.encoder_q.", "encoder_q.")

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# (blocks per stage, bottleneck?) -> depth
_RESNET_LAYOUTS = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}


# ----------------------------------------------------------------------------- key sets


def arch_depth(arch: str, path: str | Path = "<meta>") -> int:
    """``"resnet50" -> 50``; a :class:`CheckpointError` naming ``path`` for anything else."""
    m = re.fullmatch(r"resnet(\d+)", str(arch))
    if not m or int(m.group(1)) not in RESNET_DEPTHS:
        raise CheckpointError(f"{path}: arch {arch!r} is not a ResNet (resnet18/34/50/101/152)")
    return int(m.group(1))


@functools.cache
def resnet_keys(arch: str, stem: str) -> frozenset[str]:
    """The state_dict keys of a ResNet backbone without ``fc``: torchvision's for the plain stem,
    with ``conv1``/``bn1`` replaced by ResNetV1c's ``stem.0/1/3/4/6/7`` for the deep stem."""
    import torchvision

    arch_depth(arch)
    if stem not in MMSEG_TYPE_OF_STEM:
        raise ValueError(f"stem {stem!r} is not 'plain' or 'deep'")
    with torch.device("meta"):  # keys only: no memory, no initialisation time
        keys = {k for k in getattr(torchvision.models, arch)(weights=None).state_dict() if not k.startswith("fc.")}
    if stem == "deep":
        keys = {k for k in keys if not k.startswith(("conv1.", "bn1."))}
        keys |= {f"stem.{i}.weight" for i in (0, 3, 6)} | {f"stem.{i}.{p}" for i in (1, 4, 7) for p in _BN}
    return frozenset(keys)


def aspp_keys(num_branches: int) -> frozenset[str]:
    """mmseg ``ASPPHead`` keys without ``conv_seg`` and without the ``decode_head.`` prefix."""
    modules = ["image_pool.1", "bottleneck", *[f"aspp_modules.{i}" for i in range(num_branches)]]
    return frozenset([f"{m}.conv.weight" for m in modules] + [f"{m}.bn.{p}" for m in modules for p in _BN])


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


# ----------------------------------------------------------------------------- writing


def export_filenames(stem: str) -> dict[str, str]:
    """The export files written for a stem: key format -> file name.

    A plain-stem backbone is written in both key formats (the key names
    coincide; the meta says which consumer each file targets), a deep-stem
    one only as mmseg ``ResNetV1c``.
    """
    names = {"mmseg": "backbone_mmseg.pth"}
    if stem == "plain":
        names["torchvision"] = "backbone_torchvision.pth"
    return names


def export_meta(*, arch: str, stem: str, key_format: str, provenance: Provenance, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, output_stride: int | None = None) -> dict[str, Any]:
    """The meta block of a backbone export (every key of :data:`REQUIRED_META`, plus ``output_stride``: the
    stride the backbone was trained at, for readers that rebuild it dilated; None for a plain ResNet)."""
    return {
        "format": EXPORT_FORMAT,
        "arch": arch,
        "stem": stem,
        "key_format": key_format,
        "mmseg_type": MMSEG_TYPE_OF_STEM[stem],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "channel_order": "rgb",
        "config": provenance.config,
        "auxlabels_sha256": provenance.auxlabels_sha256,
        "auxlabels_manifest": provenance.auxlabels_manifest,
        "iteration": int(provenance.iteration),
        "output_stride": None if output_stride is None else int(output_stride),
        "versions": versions(("torch", "torchvision")),
    }


def export_output_stride(meta: dict) -> int:
    """The output stride a pretrain export was trained at: its ``output_stride`` meta field; exports written
    before the field existed name it in their training config, and the oldest were all trained at 8."""
    if meta.get("output_stride") is not None:
        return int(meta["output_stride"])
    trained = (meta.get("config") or {}).get("model") or {}
    return int(trained.get("output_stride", 8))


def decoder_meta(*, in_channels: int, channels: int, dilations: tuple[int, ...],
                 provenance: Provenance) -> dict[str, Any]:
    """The meta block of a decoder export (section 2b)."""
    return {
        "format": DECODER_FORMAT,
        "mmseg_type": "ASPPHead",
        "in_channels": int(in_channels),
        "channels": int(channels),
        "dilations": [int(d) for d in dilations],
        "config": provenance.config,
        "auxlabels_sha256": provenance.auxlabels_sha256,
        "auxlabels_manifest": provenance.auxlabels_manifest,
        "iteration": int(provenance.iteration),
        "versions": versions(("torch", "torchvision")),
    }


# ----------------------------------------------------------------------------- reading


def _tensor_state(ckpt: Any, path: str | Path, what: str) -> dict[str, torch.Tensor]:
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: {what} has no state_dict of tensors")
    return state


def validate_export(ckpt: Any, path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Check a loaded backbone export against the contract; returns (state_dict, meta)."""
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not an auxseg backbone export (no meta block)")
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: meta.format is {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: meta lacks {missing}")
    arch, stem, key_format = meta["arch"], meta["stem"], meta["key_format"]
    arch_depth(arch, path)
    if stem not in MMSEG_TYPE_OF_STEM:
        raise CheckpointError(f"{path}: meta.stem {stem!r} is not 'plain' or 'deep'")
    if key_format not in export_filenames(stem):
        raise CheckpointError(f"{path}: key_format {key_format!r} is not valid for stem {stem!r}")
    if meta["mmseg_type"] != MMSEG_TYPE_OF_STEM[stem]:
        raise CheckpointError(f"{path}: mmseg_type {meta['mmseg_type']!r} does not match stem {stem!r}")
    if meta["channel_order"] != "rgb":
        raise CheckpointError(f"{path}: channel_order {meta['channel_order']!r} is not supported (rgb only)")
    for key in ("mean", "std"):
        values = meta[key]
        if not (isinstance(values, list | tuple) and len(values) == 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
            raise CheckpointError(f"{path}: meta.{key} must be three numbers (RGB, 0-255 scale), got {values!r}")
    state = _tensor_state(ckpt, path, "backbone export")
    check_keys(resnet_keys(arch, stem), state.keys(), path, f"{arch} {stem}-stem backbone")
    return state, meta


def load_backbone_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load and validate a backbone export (``weights_only=True``); returns (state_dict, meta).

    Raises :class:`CheckpointError` naming the file when it is not a valid
    ``auxseg.backbone/1`` export or its keys do not match its declared arch/stem.
    """
    return validate_export(load_checkpoint(path), path)


def load_decoder_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load and validate a decoder export; returns (state_dict, meta). Raises CheckpointError naming the file."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != DECODER_FORMAT:
        raise CheckpointError(f"{path}: not an auxseg decoder export (format {DECODER_FORMAT!r})")
    for key in ("in_channels", "channels", "dilations"):
        if key not in meta:
            raise CheckpointError(f"{path}: decoder export meta lacks {key!r}")
    state = _tensor_state(ckpt, path, "decoder export")
    check_keys(aspp_keys(len(meta["dilations"])), state.keys(), path, "ASPP decoder")
    return state, meta


@dataclass
class BackboneWeights:
    """ResNet backbone weights in torchvision / mmseg key format plus what is known about them."""

    state_dict: dict[str, torch.Tensor]
    depth: int
    stem: str  # "plain" | "deep"
    mean: list[float]
    std: list[float]
    kind: str  # one of CHECKPOINT_KINDS
    path: str
    meta: dict[str, Any] = field(default_factory=dict)  # the export meta (kind "export"), else empty

    @property
    def arch(self) -> str:
        return f"resnet{self.depth}"

    @property
    def mmseg_type(self) -> str:
        return MMSEG_TYPE_OF_STEM[self.stem]


def detect_kind(ckpt: Any) -> str:
    """The kind of a loaded checkpoint (one of :data:`CHECKPOINT_KINDS`), from its meta and key prefixes."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("meta"), dict) and ckpt["meta"].get("format") == EXPORT_FORMAT:
        return "export"
    try:
        state = state_dict_of(ckpt)
    except CheckpointError:
        return "torchvision"  # the reader then says what is wrong, naming the file
    if any(k.startswith(MOCO_PREFIXES) for k in state):
        return "moco"
    if any(k.startswith("backbone.") for k in state):
        return "mmseg"
    return "torchvision"


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def read_backbone_weights(path: str | Path, kind: str = "auto") -> BackboneWeights:
    """Read a ResNet checkpoint of ``kind`` (or detect it) and return its backbone weights, key-checked.

    The weights come back without ``fc``, the MoCo key encoder, the ``backbone.``
    prefix or anything else that is not the backbone; their key set is checked
    exactly against :func:`resnet_keys` of the depth and stem they show, so a
    truncated or foreign checkpoint fails here, naming the file.
    """
    path = Path(path)
    if kind not in ("auto", *CHECKPOINT_KINDS):
        raise ValueError(f"checkpoint kind {kind!r} is not one of {('auto', *CHECKPOINT_KINDS)}")
    ckpt = load_checkpoint(path)
    if kind == "auto":
        kind = detect_kind(ckpt)
    if kind == "export":
        sd, meta = validate_export(ckpt, path)
        depth, stem = arch_depth(meta["arch"], path), meta["stem"]
        return BackboneWeights(sd, depth, stem, list(meta["mean"]), list(meta["std"]), kind, str(path), meta)
    raw = state_dict_of(ckpt, path)
    if kind == "moco":
        prefix = next((p for p in MOCO_PREFIXES if any(k.startswith(p) for k in raw)), None)
        if prefix is None:
            raise CheckpointError(f"{path}: not a MoCo checkpoint: no '{MOCO_PREFIXES[0]}*' or "
                                  f"'{MOCO_PREFIXES[1]}*' keys (first keys: {', '.join(list(raw)[:4])})")
        sd = {k: v for k, v in _strip_prefix(raw, prefix).items() if not k.startswith("fc.")}
    elif kind == "mmseg":
        sd = _strip_prefix(raw, "backbone.") if any(k.startswith("backbone.") for k in raw) else dict(raw)
    else:
        sd = {k: v for k, v in raw.items() if not k.startswith("fc.")}
    depth, stem = infer_resnet(sd, path)
    if kind in ("torchvision", "moco") and stem != "plain":
        raise CheckpointError(f"{path}: a {kind} checkpoint must have the plain stem, found the deep stem")
    check_keys(resnet_keys(f"resnet{depth}", stem), sd.keys(), path, f"{kind} resnet{depth} backbone")
    return BackboneWeights(sd, depth, stem, list(IMAGENET_MEAN), list(IMAGENET_STD), kind, str(path))
