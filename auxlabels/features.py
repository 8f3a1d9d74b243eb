"""Frozen feature extractors, built by name from a checkpoint file (method.md, Stage 1 step 1).

Every builder loads its weights with :func:`auxseg.checkpoint_io.load_checkpoint`
(``weights_only=True``) and compares key sets exactly with
:func:`auxseg.checkpoint_io.check_keys`, so a checkpoint of the wrong format fails
loudly, naming the file. A builder returns a :class:`FeatureExtractor`: a frozen
module mapping normalised images ``[B, 3, H, W]`` to features ``[B, D, h, w]``
plus its normalisation constants and native output stride.

Random weights only by explicit choice (``random_init=True``), for ablations and tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, state_dict_of
from auxseg.config import ConfigError
from auxseg.contracts.backbone import export_output_stride, read_backbone_weights
from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD
from auxseg.files import sha256_file
from auxseg.mmseg_compat import build_in_mmseg_scope, import_mmseg, read_mmengine_config

from .config import ExtractorConfig
from .extractor_base import (  # noqa: F401  (re-exported: the registry's public names)
    EXTRACTOR_HELP,
    EXTRACTORS,
    Builder,
    FeatureExtractor,
    register_extractor,
    working_features,
    working_size,
)
from .extractor_base import require_checkpoint as _require_checkpoint

RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")
# VGG-19 `features` prefix lengths ending after the last ReLU of a block, and their strides
VGG19_LAYERS = {"conv3": (18, 4), "conv4": (27, 8), "conv5": (36, 16)}


class _ResNetTrunk(nn.Module):
    """A torchvision ResNet, or an :class:`auxseg.nets.dilated_resnet.DilatedResNet`, up to (and including) one of
    its stages."""

    def __init__(self, resnet: nn.Module, layer: str):
        super().__init__()
        if layer not in RESNET_LAYERS:
            raise ConfigError(f"extractor.layer: {layer!r} is not one of {list(RESNET_LAYERS)} for a ResNet")
        deep = getattr(resnet, "stem_type", "plain") == "deep"  # DilatedResNet's ResNetV1c stem
        head = [resnet.stem] if deep else [resnet.conv1, resnet.bn1, resnet.relu]
        self.stem = nn.Sequential(*head, resnet.maxpool)
        n = RESNET_LAYERS.index(layer) + 1
        self.stages = nn.Sequential(*[getattr(resnet, name) for name in RESNET_LAYERS[:n]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _torchvision_resnet(arch: str) -> nn.Module:
    if arch not in ("resnet18", "resnet34", "resnet50", "resnet101"):
        raise ConfigError(f"extractor.name: unsupported ResNet architecture {arch!r}")
    return getattr(torchvision.models, arch)(weights=None)


def _load_exact(model: nn.Module, state: dict, path: str | Path, what: str, ignore_prefix: str | None = None) -> None:
    """Load ``state`` into ``model`` after checking both key sets are identical."""
    expected = set(model.state_dict())
    if ignore_prefix is not None:
        expected = {k for k in expected if not k.startswith(ignore_prefix)}
    check_keys(expected, set(state), path, what)
    try:
        model.load_state_dict(state, strict=ignore_prefix is None)
    except RuntimeError as err:  # the right keys with the wrong shapes
        raise CheckpointError(f"{path}: {what} weights do not fit the model: {str(err).splitlines()[-1].strip()}") from err


def _plain_state_dict(ckpt, path: Path) -> dict:
    try:
        return state_dict_of(ckpt, path)
    except CheckpointError:
        raise
    except Exception as err:  # a checkpoint of an unexpected shape
        raise CheckpointError(f"{path}: no state_dict found: {err}") from err


def build_resnet(cfg: ExtractorConfig, arch: str, kind: str = "torchvision") -> FeatureExtractor:
    """A torchvision ResNet trunk from a ``kind`` checkpoint: "torchvision" (an ImageNet ``state_dict``,
    with or without ``fc.*``) or "moco" (``(module.)encoder_q.*``; the fc/MLP head, the key encoder and
    the queue are dropped). The file is read by :func:`auxseg.contracts.backbone.read_backbone_weights`."""
    path = _require_checkpoint(cfg)
    model = _torchvision_resnet(arch)
    if path is not None:
        weights = read_backbone_weights(path, kind)
        what = f"MoCo {arch} encoder_q" if kind == "moco" else f"torchvision {arch}"
        _load_exact(model, weights.state_dict, path, what, ignore_prefix="fc.")
    return FeatureExtractor(_ResNetTrunk(model, cfg.layer), description={"arch": arch})


for _arch in ("resnet18", "resnet50"):
    register_extractor(_arch, f"ImageNet {_arch} from a torchvision state_dict (layer: layer1..layer4)")(
        lambda cfg, arch=_arch: build_resnet(cfg, arch, "torchvision"))
    register_extractor(f"moco_{_arch}", f"MoCo v1/v2 {_arch} checkpoint (layer: layer1..layer4)")(
        lambda cfg, arch=_arch: build_resnet(cfg, arch, "moco"))


@register_extractor("vgg19", "ImageNet VGG-19 from a torchvision state_dict (layer: conv3|conv4|conv5)")
def build_vgg19(cfg: ExtractorConfig) -> FeatureExtractor:
    """ImageNet VGG-19 from a torchvision ``state_dict`` file (``features.*`` and ``classifier.*``)."""
    from torchvision.models.vgg import cfgs, make_layers

    path = _require_checkpoint(cfg)
    # only the convolutional part is built: the 120M-parameter classifier is never used, and
    # initialising it would take seconds; its key names are still checked exactly
    features = make_layers(cfgs["E"], batch_norm=False)
    if path is not None:
        state = _plain_state_dict(load_checkpoint(path), path)
        expected = {f"features.{k}" for k in features.state_dict()}
        if any(k.startswith("classifier.") for k in state):
            expected |= {f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")}
        check_keys(expected, set(state), path, "torchvision vgg19")
        features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
    if cfg.layer not in VGG19_LAYERS:
        raise ConfigError(f"extractor.layer: {cfg.layer!r} is not one of {list(VGG19_LAYERS)} for VGG-19")
    end, _ = VGG19_LAYERS[cfg.layer]
    return FeatureExtractor(features[:end], description={"arch": "vgg19"})


# ----------------------------------------------------------------------------- mmseg


def _mmseg_model_from_config(model_cfg) -> nn.Module:
    import_mmseg()
    from mmseg.registry import MODELS

    def no_syncbn(node):
        # a single process cannot run SyncBN; BN with the same keys is equivalent when frozen
        if isinstance(node, dict):
            if node.get("type") == "SyncBN":
                node["type"] = "BN"
            for v in node.values():
                no_syncbn(v)
        elif isinstance(node, list):
            for v in node:
                no_syncbn(v)

    model_cfg = dict(model_cfg)
    no_syncbn(model_cfg)
    # the weights come from our checkpoint; never fetch anything at build time
    if isinstance(model_cfg.get("backbone"), dict):
        model_cfg["backbone"] = dict(model_cfg["backbone"], init_cfg=None)
    model_cfg.pop("pretrained", None)
    return build_in_mmseg_scope(MODELS, model_cfg)


class _MMSegDecoderFeature(nn.Module):
    """An mmseg EncoderDecoder up to the decode head's feature before ``cls_seg``."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        if layer not in ("decoder", "backbone"):
            raise ConfigError(f"extractor.layer: {layer!r} must be 'decoder' or 'backbone' for mmseg")
        if layer == "decoder" and not hasattr(model.decode_head, "_forward_feature"):
            raise ValueError(f"decode head {type(model.decode_head).__name__} has no _forward_feature")
        self.backbone = model.backbone
        self.neck = model.neck if getattr(model, "with_neck", False) else None
        self.decode_head = model.decode_head
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        if self.layer == "backbone":
            return feats[-1]
        return self.decode_head._forward_feature(feats)


@register_extractor("mmseg", "mmseg EncoderDecoder checkpoint + extractor.config (layer: decoder|backbone)")
def build_mmseg(cfg: ExtractorConfig) -> FeatureExtractor:
    """mmseg EncoderDecoder (DeepLabV3 ASPPHead or PSPHead) from an mmengine checkpoint.

    The model definition comes from ``extractor.config``, a config file the user
    names (``auxseg finetune`` writes the one that ran as ``mmseg_config.py``).
    The config text mmengine stores in a checkpoint's ``meta['cfg']`` is Python
    and is never executed: a checkpoint is data. Features: the decode head's
    ``_forward_feature`` output (before the classifier), or the last backbone
    stage with ``layer: backbone``.
    """
    path = _require_checkpoint(cfg)
    if cfg.config is None:
        raise CheckpointError(
            f"{path or 'extractor'}: extractor.config is required for extractor.name=mmseg: name the mmseg "
            "config file of this model (a fine-tune run writes it as <work_dir>/mmseg_config.py); the "
            "config text stored inside a checkpoint is never executed"
        )
    ckpt = load_checkpoint(path) if path is not None else None
    config_path = Path(cfg.config)
    if not config_path.is_file():
        raise FileNotFoundError(f"extractor.config: {config_path} does not exist")
    model_cfg = read_mmengine_config(config_path, "extractor.config")
    if "model" not in model_cfg:
        raise CheckpointError(f"{config_path}: the mmseg config has no 'model' entry")
    model = _mmseg_model_from_config(model_cfg.model.to_dict())
    if ckpt is not None:
        state = _plain_state_dict(ckpt, path)
        _load_exact(model, state, path, "mmseg EncoderDecoder")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = model_cfg.get("data_preprocessor") or model_cfg.model.get("data_preprocessor")
    if pre is not None and pre.get("mean") is not None:
        mean, std = tuple(pre["mean"]), tuple(pre["std"])
    return FeatureExtractor(
        _MMSegDecoderFeature(model, cfg.layer),
        mean=mean,
        std=std,
        description={"arch": f"mmseg {type(model.decode_head).__name__} on {type(model.backbone).__name__}"},
    )


# ----------------------------------------------------------------------------- our pretrain export


class _MMSegBackboneStage(nn.Module):
    """An mmseg ResNet/ResNetV1c backbone returning one of its stage outputs."""

    def __init__(self, backbone: nn.Module, index: int):
        super().__init__()
        self.backbone = backbone
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[self.index]


@register_extractor("auxseg_export", "a backbone exported by `auxseg pretrain` (layer: layer1..layer4)")
def build_auxseg_export(cfg: ExtractorConfig) -> FeatureExtractor:
    """A backbone exported by our ``pretrain`` stage (docs/contracts.md section 2), validated by the contract.

    An export whose meta carries its pretrain config runs as it was trained: the dilated ResNet at
    ``model.output_stride`` (8 or 16). An export without that config (written by hand) runs as a plain
    ResNet, output stride 32.
    """
    path = _require_checkpoint(cfg)
    if path is None:
        raise CheckpointError("extractor auxseg_export needs a checkpoint (random_init is meaningless here)")
    if cfg.layer not in RESNET_LAYERS:
        raise ConfigError(f"extractor.layer: {cfg.layer!r} is not one of {list(RESNET_LAYERS)}")
    weights = read_backbone_weights(path, "export")
    meta, arch = weights.meta, weights.arch
    mean, std = tuple(weights.mean), tuple(weights.std)
    desc = {"arch": arch, "key_format": meta["key_format"], "stem": weights.stem}
    trained = (meta.get("config") or {}).get("model")
    if isinstance(trained, dict):  # a pretrain export: run it dilated, at the output stride it was trained at
        from auxseg.nets.dilated_resnet import DilatedResNet

        stride = export_output_stride(meta)  # a field of the contract, not the writer's training config
        try:
            net = DilatedResNet(arch, weights.stem, stride)
        except ValueError as err:
            raise CheckpointError(f"{path}: meta.config.model: {err}") from err
        _load_exact(net, weights.state_dict, path, f"{arch} backbone export")
        return FeatureExtractor(_ResNetTrunk(net, cfg.layer), mean=mean, std=std,
                                description={**desc, "output_stride": stride})
    if meta["key_format"] == "torchvision":
        model = _torchvision_resnet(arch)
        _load_exact(model, weights.state_dict, path, f"torchvision {arch} backbone export", ignore_prefix="fc.")
        return FeatureExtractor(_ResNetTrunk(model, cfg.layer), mean=mean, std=std, description=desc)
    import_mmseg()
    from mmseg.registry import MODELS

    backbone = build_in_mmseg_scope(
        MODELS,
        dict(type=weights.mmseg_type, depth=weights.depth, out_indices=(0, 1, 2, 3),
             norm_cfg=dict(type="BN", requires_grad=False)),
    )
    _load_exact(backbone, weights.state_dict, path, f"mmseg {weights.mmseg_type}-{weights.depth} backbone export")
    index = RESNET_LAYERS.index(cfg.layer)
    return FeatureExtractor(_MMSegBackboneStage(backbone, index), mean=mean, std=std, description=desc)


# ----------------------------------------------------------------------------- small local-prediction networks


@register_extractor("small_model", "a pixel/linear/predseg1 network exported by `auxseg pretrain` (small_model.pth)")
def build_small_model_export(cfg: ExtractorConfig) -> FeatureExtractor:
    """A small network (:mod:`auxseg.contracts.small_model`, e.g. trained with ``loss.name=local_prediction``) from its
    ``small_model.pth`` export; features are the network's output (``layer``: output, or the default layer4
    meaning the same)."""
    from auxseg.contracts.small_model import read_small_model

    path = _require_checkpoint(cfg)
    if path is None:
        raise CheckpointError("extractor small_model needs a checkpoint (random_init is meaningless here)")
    if cfg.layer not in ("output", "layer4"):
        raise ConfigError(f"extractor.layer: {cfg.layer!r}: a small model has one output (layer: output)")
    export = read_small_model(path)
    return FeatureExtractor(export.model, mean=export.mean, std=export.std,
                            description={"arch": export.meta["arch"], "iteration": export.meta.get("iteration")})


def build_extractor(cfg: ExtractorConfig, checkpoint_sha256: str | None = None) -> FeatureExtractor:
    """Build the configured extractor, frozen and in eval mode, with a description for the manifest.

    ``checkpoint_sha256``: the checkpoint's SHA-256 when the caller has already
    hashed it (the pipeline's fingerprint does), so a large file is read once;
    computed here when not given.
    """
    if cfg.name not in EXTRACTORS:
        raise ConfigError(f"extractor.name: {cfg.name!r} is not one of {sorted(EXTRACTORS)}")
    extractor = EXTRACTORS[cfg.name](cfg)
    if cfg.checkpoint and checkpoint_sha256 is None:
        checkpoint_sha256 = sha256_file(cfg.checkpoint)
    extractor.description.update(
        name=cfg.name,
        layer=cfg.layer,
        checkpoint=str(Path(cfg.checkpoint).resolve()) if cfg.checkpoint else None,
        checkpoint_sha256=checkpoint_sha256 if cfg.checkpoint else None,
        random_init=cfg.random_init,
        random_init_seed=cfg.seed if cfg.random_init else None,
    )
    return extractor.eval()


# the DINOv2 / DINO / timm extractors register after these (their module imports only extractor_base)
from . import vit_extractors  # noqa: E402, F401
