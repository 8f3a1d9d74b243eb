"""The network being pre-trained: a dilated ResNet (output stride 8 or 16), optionally
a DeepLabV3 ASPP decoder; and the projection head that objectives put on top (dropped at export).

The backbone is :class:`auxseg.nets.dilated_resnet.DilatedResNet` (mmseg parameter
names, DeepLabV3's dilation); it lives on the ground floor so that boundary
prediction can rebuild it from an export.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from auxseg.nets.dilated_resnet import DilatedResNet
from auxseg.nets.small import SMALL_MODELS, build_small_model

if TYPE_CHECKING:  # not imported at run time: pretrain.config builds its loss schema from the objectives,
    from pretrain.config import ModelConfig  # which import this module


class ConvBNReLU(nn.Module):
    """conv -> BN -> ReLU, with mmcv ``ConvModule``'s attribute names (``conv``, ``bn``) so keys match mmseg."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, dilation: int = 1):
        super().__init__()
        pad = 0 if kernel == 1 else dilation
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class ASPP(nn.Module):
    """DeepLabV3 atrous spatial pyramid pooling, laid out as mmseg's ``ASPPHead`` without its classifier.

    Dilations (1, 12, 24, 36) at stride 8 as mmseg's DeepLabV3 configs; the
    state_dict keys (``image_pool.1.*``, ``aspp_modules.N.*``, ``bottleneck.*``)
    are those of ``ASPPHead``, so the pre-trained decoder can initialise it.
    """

    def __init__(self, in_channels: int, channels: int = 512, dilations: tuple[int, ...] = (1, 12, 24, 36)):
        super().__init__()
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(in_channels, channels, 1))
        self.aspp_modules = nn.ModuleList([ConvBNReLU(in_channels, channels, 1 if d == 1 else 3, d) for d in dilations])
        self.bottleneck = ConvBNReLU(channels * (len(dilations) + 1), channels, 3)
        self.in_channels, self.out_channels, self.dilations = in_channels, channels, tuple(dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.bottleneck(torch.cat([pooled] + [m(x) for m in self.aspp_modules], dim=1))


class ProjectionHead(nn.Module):
    """Two 1x1 convs with a ReLU between, output L2-normalised per pixel: ``[B, C, h, w] -> [B, D, h, w]``.

    The head is pointwise, so :meth:`rows` applies the same weights to a set of
    pixel feature vectors; training projects only the sampled pixels that way
    (the same result as projecting the map and sampling it, at a fraction of
    the cost on large maps).
    """

    def __init__(self, in_channels: int, hidden: int = 512, out_dim: int = 256):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(x), dim=1)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C] -> [N, D]``, identical to :meth:`forward` at each pixel."""
        c1, c2 = self.proj[0], self.proj[2]
        x = F.relu(F.linear(x, c1.weight.flatten(1), c1.bias))
        return F.normalize(F.linear(x, c2.weight.flatten(1), c2.bias), dim=1)


class PretrainNet(nn.Module):
    """Backbone (+ optional ASPP decoder): the representation being pre-trained.

    ``forward(x [B, 3, H, W]) -> features [B, C, h, w]`` with ``C = out_channels``.
    Heads belong to the objective (:mod:`pretrain.objectives`), not to the network.
    The backbone is a dilated ResNet, or one of the small networks of
    :mod:`auxseg.contracts.small_model` (``model.arch`` pixel / linear / predseg1).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch in SMALL_MODELS:
            self.backbone = build_small_model(cfg.arch)
        else:
            self.backbone = DilatedResNet(cfg.arch, cfg.stem, cfg.output_stride)
        channels = self.backbone.out_channels
        self.decoder = ASPP(channels, cfg.decoder_channels) if cfg.decoder == "aspp" else None
        if self.decoder is not None:
            channels = self.decoder.out_channels
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return self.decoder(f) if self.decoder is not None else f


def set_frozen_bn(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (fixed running statistics; affine parameters still train)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
