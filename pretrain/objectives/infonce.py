"""Cross-image supervised pixel InfoNCE: the method's objective (method.md, Stage 2) and baselines #1 / #2.

One step: per-pixel target ids at feature resolution (auxiliary label, original
pixel cell, or superpixel) -> balanced sampling of at most ``budget`` pixels
over the global batch (or, with ``all_pixels``, every labelled pixel) -> the
projection head on those pixels only -> :func:`pretrain.losses.supervised_infonce`,
or :func:`pretrain.losses.blockwise_supervised_infonce` when one block of
``block_size`` anchors does not hold them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from auxseg.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ranged
from auxseg.contracts.label_folder import LabelFolder, LabelFolderError
from pretrain.distributed import all_gather_cat
from pretrain.losses import (
    IGNORE_ID,
    PixelTargets,
    blockwise_supervised_infonce,
    infonce_block_rows,
    supervised_infonce,
    targets_at_features,
)
from pretrain.model import ProjectionHead
from pretrain.objectives.base import Objective, StepBatch, register_objective
from pretrain.sampling import embeddings_at, sampled_embeddings


@dataclass
class InfoNCEConfig:
    # aux: positives = same auxiliary label in any image/view (the method).
    # pixel: baseline #1, positives = the same original pixel in the other view.
    # superpixel: baseline #2, positives = the same superpixel (a label folder of scope "image").
    mode: Literal["aux", "pixel", "superpixel"] = "aux"
    temperature: PositiveFloat = 0.1  # method.md, Stage 2
    budget: ranged(int, ge=2) = 2048  # sampled pixels per step over the whole batch, both views (method.md: 1-4k)
    min_per_label: PositiveInt = 2  # a label is only sampled with at least this many pixels (>= 2: a positive)
    pixel_cell: PositiveInt = 8  # baseline #1: original pixels in the same cell x cell square count as "the same"
    head_hidden: PositiveInt = 512  # choice: hidden width of the 2-layer 1x1-conv projection head
    embed_dim: PositiveInt = 256  # choice (method.md): projection output, L2-normalised
    lr_mult: NonNegativeFloat = 1.0  # learning-rate multiplier of the projection head
    # every labelled feature pixel of the global batch (both views) instead of the balanced sample of
    # `budget` (which is then unused); with more than 4,096 pixels the loss runs blockwise, O(N (D + block))
    all_pixels: bool = False
    # anchors per block of the loss (memory 4 bytes x block_size x N per block); 0 = auto: blocks of at most
    # 64 MiB, and the lean single pass while such a block holds every pixel (N <= 4,096). Choice.
    block_size: NonNegativeInt = 0

    def __post_init__(self) -> None:
        if self.min_per_label < 2:
            raise ValueError(f"min_per_label must be >= 2 (an anchor needs a positive), got {self.min_per_label}")
        if self.budget < self.min_per_label:
            raise ValueError(f"budget ({self.budget}) must be >= min_per_label ({self.min_per_label})")
        if self.temperature <= 0 or self.pixel_cell < 1:
            raise ValueError("temperature must be > 0 and pixel_cell >= 1")
        if self.lr_mult <= 0:
            raise ValueError(f"lr_mult must be > 0, got {self.lr_mult}")


@register_objective("infonce")
class InfoNCE(Objective):
    """Supervised pixel InfoNCE over sampled pixels, positives across images; owns the projection head."""

    Config = InfoNCEConfig
    progress_stats = {"positives_per_anchor": "pos"}

    def __init__(self, cfg: InfoNCEConfig, in_channels: int):
        super().__init__(cfg, in_channels)
        self.head = ProjectionHead(in_channels, cfg.head_hidden, cfg.embed_dim)
        self._hist: dict = {}

    def check_folder(self, folder: LabelFolder) -> None:
        if self.cfg.mode == "superpixel" and folder.scope != "image":
            raise LabelFolderError(f"{folder.manifest_path}: loss.infonce.mode=superpixel needs a label folder of "
                                   f"scope 'image' (superpixel ids), this one has scope {folder.scope!r}")

    def forward(self, features: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, dict]:
        c, folder = self.cfg, batch.folder
        h, w = features.shape[-2:]
        ids = targets_at_features(c.mode, batch.target_maps(), batch.label_ids(), h=h, w=w,
                                  pixel_cell=c.pixel_cell)  # [b, 2, h, w], -1 = ignore
        # the pointwise projection head runs on the chosen pixels only: [N, D], L2-normalised
        if c.all_pixels:
            feats, sel_ids = _labelled_embeddings(features, ids, project=self.head.rows)
        else:
            feats, sel_ids = sampled_embeddings(features, ids, c.budget, c.min_per_label, batch.generator,
                                                project=self.head.rows)
        rows = infonce_block_rows(sel_ids.numel(), c.block_size)
        with torch.autocast(features.device.type, enabled=False):  # the loss in fp32 whatever the AMP setting
            if rows >= sel_ids.numel():  # one block holds every anchor: the lean single pass
                loss, stats = supervised_infonce(feats.float(), PixelTargets(sel_ids), temperature=c.temperature)
            else:
                loss, stats = blockwise_supervised_infonce(feats.float(), PixelTargets(sel_ids),
                                                           temperature=c.temperature, block_size=rows)
        self._hist = {"ids": ids, "sel_ids": sel_ids, "num_labels": folder.num_labels}
        return loss, stats

    def histograms(self) -> dict:
        if not self._hist:
            return {}
        ids, k = self._hist["ids"], self._hist["num_labels"]
        out = {"sampled_ids_per_label": (torch.unique(self._hist["sel_ids"], return_counts=True)[1].cpu(), None)}
        valid = ids[ids >= 0]
        if self.cfg.mode == "aux" and valid.numel():
            # label histogram of the batch (ids are label values for scope "global")
            out["label_histogram"] = ((valid % k).cpu(), np.arange(k + 1) - 0.5)
        return out


def _labelled_embeddings(features: torch.Tensor, ids_local: torch.Tensor, project=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every labelled pixel of the global batch: embeddings ``[N, D]`` (with gradient) and ids ``[N]``.

    As :func:`pretrain.sampling.sampled_embeddings` without the sample: the ids of all
    processes are gathered, every pixel whose id is not -1 is taken, in global order, so
    every process holds the same rows in the same order (``features [b*V, C, h, w]``,
    ``ids_local [b, V, h, w]`` int64).
    """
    ids_global = all_gather_cat(ids_local).reshape(-1)  # [B*V*h*w], rank order = single-process order
    sel = (ids_global != IGNORE_ID).nonzero().squeeze(1)  # [N]
    return embeddings_at(features, sel, ids_local.numel(), project), ids_global[sel]
