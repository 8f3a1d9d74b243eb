"""Cross-image supervised pixel InfoNCE: the method's objective (method.md, Stage 2) and baselines #1 / #2.

One step: per-pixel target ids at feature resolution (auxiliary label, original
pixel cell, or superpixel) -> balanced sampling of at most ``budget`` pixels
over the global batch -> the projection head on the sampled pixels only ->
:func:`pretrain.losses.supervised_infonce`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from auxseg.contracts.label_folder import LabelFolder, LabelFolderError
from pretrain.losses import PixelTargets, supervised_infonce, targets_at_features
from pretrain.model import ProjectionHead
from pretrain.objectives.base import Objective, StepBatch, register_objective
from pretrain.sampling import sampled_embeddings


@dataclass
class InfoNCEConfig:
    # aux: positives = same auxiliary label in any image/view (the method).
    # pixel: baseline #1, positives = the same original pixel in the other view.
    # superpixel: baseline #2, positives = the same superpixel (a label folder of scope "image").
    mode: Literal["aux", "pixel", "superpixel"] = "aux"
    temperature: float = 0.1  # method.md, Stage 2
    budget: int = 2048  # sampled pixels per step over the whole batch, both views (method.md: 1-4k)
    min_per_label: int = 2  # a label is only sampled with at least this many pixels (>= 2: a positive)
    pixel_cell: int = 8  # baseline #1: original pixels in the same cell x cell square count as "the same"
    head_hidden: int = 512  # choice: hidden width of the 2-layer 1x1-conv projection head
    embed_dim: int = 256  # choice (method.md): projection output, L2-normalised
    lr_mult: float = 1.0  # learning-rate multiplier of the projection head

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
        ids = targets_at_features(
            c.mode, batch.label, batch.coords, batch.index, batch.size[:, 1], h=h, w=w,
            num_labels=folder.num_labels, ignore_index=folder.ignore_index,
            per_image_ids=folder.scope == "image", pixel_cell=c.pixel_cell,
        )  # [b, 2, h, w], -1 = ignore
        # the pointwise projection head runs on the sampled pixels only: [N, D], L2-normalised
        feats, sel_ids = sampled_embeddings(features, ids, c.budget, c.min_per_label, batch.generator,
                                            project=self.head.rows)
        with torch.autocast(features.device.type, enabled=False):  # the loss in fp32 whatever the AMP setting
            loss, stats = supervised_infonce(feats.float(), PixelTargets(sel_ids), temperature=c.temperature)
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
