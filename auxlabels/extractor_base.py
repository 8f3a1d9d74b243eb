"""The extractor registry and the frozen-extractor module every builder returns (no builder here).

:mod:`auxlabels.features` (ResNet, VGG, MoCo, mmseg, our exports) and
:mod:`auxlabels.vit_extractors` (DINOv2, DINO, timm) register their builders in
:data:`EXTRACTORS` through :func:`register_extractor`; both import this module and
neither imports the other's internals, so the imports run one way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from auxseg.checkpoint_io import CheckpointError
from auxseg.config import ConfigError
from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD

from .config import ExtractorConfig

Builder = Callable[[ExtractorConfig], "FeatureExtractor"]
EXTRACTORS: dict[str, Builder] = {}
"""Extractor builders by name: the one list of valid ``extractor.name`` values (config
validation, ``auxseg auxlabels --help`` and docs/auxlabels.md read it)."""
EXTRACTOR_HELP: dict[str, str] = {}


def check_extractor_name(name: str) -> None:
    """Raise ConfigError naming ``extractor.name`` (and the nearest registered name) when it is not registered.

    Call it after :mod:`auxlabels.features` is imported (that import registers every builder).
    """
    if name not in EXTRACTORS:
        import difflib

        near = difflib.get_close_matches(name, list(EXTRACTORS), n=1)
        raise ConfigError(f"extractor.name: {name!r} is not a registered extractor"
                          + (f" (did you mean {near[0]!r}?)" if near else "") + f"; known: {', '.join(EXTRACTORS)}")


def register_extractor(name: str, help: str) -> Callable[[Builder], Builder]:
    """Register ``fn(cfg: ExtractorConfig) -> FeatureExtractor`` as extractor ``name``; adding one is this."""

    def add(fn: Builder) -> Builder:
        if name in EXTRACTORS:
            raise ValueError(f"extractor {name!r} is registered twice")
        EXTRACTORS[name], EXTRACTOR_HELP[name] = fn, help
        return fn

    return add


class FeatureExtractor(nn.Module):
    """A frozen network returning one feature map per image.

    Attributes:
        body: module mapping ``[B, 3, H, W]`` normalised RGB to ``[B, D, h, w]``.
        mean, std: per-channel normalisation on the 0-255 scale, RGB order.
        stride: native output stride (image size / feature size): the builder's ``stride`` when it knows it
            (a ViT: its token stride), else measured at build time on a 64 px input.
        dim: D, the feature dimension.
        description: what was built (name, layer, checkpoint), for the manifest.
    """

    def __init__(self, body: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD, description: dict | None = None,
                 stride: int | None = None):
        super().__init__()
        self.body = body.eval()
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.description = dict(description or {})
        with torch.no_grad():  # measure stride and dim on a dummy input (64 px is a multiple of 32)
            out = self.body(torch.zeros(1, 3, 64, 64))
        self.dim = int(out.shape[1])
        # a 64 px input is not a multiple of every stride (14 px patches give 5 tokens: 12.8 px each)
        self.stride = stride or max(1, round(64 / out.shape[-1]))
        self.description.update(dim=self.dim, native_stride=self.stride)

    def train(self, mode: bool = True) -> FeatureExtractor:
        # frozen: BatchNorm always uses its running statistics
        return super().train(False)

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Features of a batch.

        Args:
            images_uint8: ``[B, 3, H, W]`` RGB on the 0-255 scale (any dtype).
        Returns:
            ``[B, D, h, w]`` float features at the native stride (not normalised).
        """
        x = (images_uint8.float() - self.mean) / self.std
        return self.body(x)


def working_features(feats: torch.Tensor, size_hw: tuple[int, int], stride: int) -> torch.Tensor:
    """Resize native features to the working stride and L2-normalise each pixel.

    Args:
        feats: ``[B, D, h, w]`` native features.
        size_hw: the image size (H, W) in pixels the features came from.
        stride: working stride; the grid is ``ceil(H/stride) x ceil(W/stride)``.
    Returns:
        float32 ``[B, h', w', D]`` (pixels-major, ready to flatten into rows) with unit L2 norm along D.
    """
    h, w = working_size(size_hw, stride)
    # channels-last: bilinear resize and the per-pixel norm are ~4x faster on CPU in this layout
    feats = feats.float().contiguous(memory_format=torch.channels_last)
    if feats.shape[-2:] != (h, w):
        feats = F.interpolate(feats, size=(h, w), mode="bilinear", align_corners=False)
    feats = feats.permute(0, 2, 3, 1)  # [B, h', w', D], contiguous in memory
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def working_size(size_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """The working-stride grid size for an image of ``(H, W)`` pixels."""
    return math.ceil(size_hw[0] / stride), math.ceil(size_hw[1] / stride)


# ----------------------------------------------------------------------------- torchvision


def require_checkpoint(cfg: ExtractorConfig) -> Path | None:
    """The checkpoint path of ``cfg``; None (after seeding) with ``random_init``; refuses both or neither."""
    if cfg.random_init:
        if cfg.checkpoint is not None:
            raise CheckpointError(
                f"extractor.random_init=true but extractor.checkpoint={cfg.checkpoint} is set; choose one"
            )
        torch.manual_seed(cfg.seed)
        return None
    if cfg.checkpoint is None:
        raise CheckpointError("extractor.checkpoint: required (random weights only with extractor.random_init=true)")
    return Path(cfg.checkpoint)
