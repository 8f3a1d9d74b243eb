"""A ResNet-18/50 with output stride 8 (or 16): the backbone ``pretrain`` trains and exports.

Parameter names are mmseg's: a plain stem (``conv1``/``bn1``, the torchvision /
ResNetV1b stem) gives keys identical to torchvision's ResNet (without ``fc``) and
to mmseg's ``ResNet``; the deep stem gives mmseg ``ResNetV1c`` keys
(``stem.0/1/3/4/6/7``). The residual stages are torchvision's blocks with
``replace_stride_with_dilation=[False, True, True]``: strides (1, 2, 1, 1) and
dilations (1, 1, 2, 4) with the first block of each dilated stage at half the
dilation, i.e. mmseg's DeepLabV3 setting ``contract_dilation=True``. With
``output_stride=16`` only the last stage is dilated: strides (1, 2, 2, 1),
dilations (1, 1, 1, 2), mmseg's ``-d16`` setting. The weights do not depend on
the output stride, so every backbone export's ``state_dict`` loads into it exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

ARCH_CHANNELS = {"resnet18": 512, "resnet50": 2048}


# mmseg backbone (strides, dilations) of each output stride this network builds, both with contract_dilation=True
MMSEG_LAYOUTS = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 16: ((1, 2, 2, 1), (1, 1, 1, 2))}
OUTPUT_STRIDES = tuple(MMSEG_LAYOUTS)


class DilatedResNet(nn.Module):
    """ResNet-18/50 with output stride 8 or 16; ``forward(x [B, 3, H, W]) -> [B, C, ceil(H/s), ceil(W/s)]``."""

    def __init__(self, arch: str = "resnet50", stem: str = "plain", output_stride: int = 8):
        super().__init__()
        if arch not in ARCH_CHANNELS:
            raise ValueError(f"model.arch: {arch!r} is not one of {sorted(ARCH_CHANNELS)}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"model.output_stride: {output_stride} is not one of {list(OUTPUT_STRIDES)}")
        dilate = [False, output_stride == 8, True]  # stages 2..4 that trade their stride for dilation
        base = getattr(torchvision.models, arch)(weights=None, replace_stride_with_dilation=dilate) \
            if arch == "resnet50" else torchvision.models.resnet18(weights=None)
        if arch == "resnet18":
            # torchvision's BasicBlock refuses dilation > 1, so dilate it here the way mmseg's
            # BasicBlock is dilated (conv1 only; first block of a stage at half, contract_dilation).
            if output_stride == 8:
                _dilate_basic(base.layer3, 2)
            _dilate_basic(base.layer4, 4 if output_stride == 8 else 2)
        self.arch, self.stem_type = arch, stem
        if stem == "plain":
            self.conv1, self.bn1, self.relu = base.conv1, base.bn1, base.relu
        elif stem == "deep":
            # mmseg ResNetV1c: three 3x3 convs (32, 32, 64 channels), the first with stride 2
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"model.stem: {stem!r} is not 'plain' or 'deep'")
        self.maxpool = base.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4
        self.out_channels = ARCH_CHANNELS[arch]
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x) if self.stem_type == "deep" else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _dilate_basic(layer: nn.Sequential, dilation: int) -> None:
    """Turn a strided BasicBlock stage into a dilated one (stride 1, like Bottleneck stages)."""
    for i, block in enumerate(layer):
        d = dilation // 2 if i == 0 else dilation
        if i == 0:
            block.conv1.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        block.conv1.dilation, block.conv1.padding = (d, d), (d, d)
