"""The small feature networks of the local-prediction method (docs/related-methods.md C.5).

``pixel``, ``linear`` and ``predseg1`` are pre-trained by ``auxseg pretrain``
(``model.arch``) and rebuilt by every reader of their export
(:mod:`auxseg.contracts.small_model`): auxlabels' ``small_model`` extractor and
the boundary production. Networks only: no files, no formats.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SmallModel(nn.Module):
    """Base of the small networks: ``forward(x [B, 3, H, W]) -> [B, out_channels, ~H/stride, ~W/stride]``."""

    arch: str = ""
    out_channels: int = 0
    stride: int = 1


class PixelModel(SmallModel):
    """``pixel`` (C.5): the identity; the features are the (normalised) colour values."""

    arch, out_channels, stride = "pixel", 3, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class LinearModel(SmallModel):
    """``linear`` (C.5): one 11x11 convolution to 50 channels (padding 5: the map keeps the image size)."""

    arch, out_channels, stride = "linear", 50, 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 50, 11, padding=5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))`` with two 3x3 convolutions (C.5; kernel size inferred)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class PredSeg1(SmallModel):
    """``predseg1`` (C.5): four processing steps separated by strided 1x1 convolutions; total stride 12.

    3x3 conv (3 ch) + ReLU -> 1x1 stride 3 (3 -> 64) -> 11x11 conv (64 ch) + ReLU -> 1x1 stride 2 (64 -> 128)
    -> residual block (128) -> 1x1 stride 2 (128 -> 256) -> residual block (256).
    Inferred where the supplement is silent: channel changes happen in the strided
    1x1 convs, the residual convs are 3x3, a ReLU follows each of the first two
    steps (else steps 1-2 and the subsampling would compose into one linear map),
    no normalisation layers.
    """

    arch, out_channels, stride = "predseg1", 256, 12

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),
            nn.Conv2d(3, 64, 1, stride=3),
            nn.Conv2d(64, 64, 11, padding=5), nn.ReLU(),
            nn.Conv2d(64, 128, 1, stride=2),
            ResidualBlock(128),
            nn.Conv2d(128, 256, 1, stride=2),
            ResidualBlock(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


SMALL_MODELS: dict[str, type[SmallModel]] = {"pixel": PixelModel, "linear": LinearModel, "predseg1": PredSeg1}
"""The small architectures by name (``model.arch`` in the pretrain config)."""


def build_small_model(arch: str) -> SmallModel:
    """A freshly initialised small network by name."""
    if arch not in SMALL_MODELS:
        raise ValueError(f"model.arch: {arch!r} is not a small model ({', '.join(SMALL_MODELS)})")
    return SMALL_MODELS[arch]()
