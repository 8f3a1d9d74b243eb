"""``metric_l2``: the L2 metric loss of semantic soft segmentation (Aksoy et al., SIGGRAPH 2018) on auxiliary labels.

One step: per-pixel target ids at feature resolution (the auxiliary label) ->
``repeats`` draws of the instance-balanced sampler (per image ``labels_per_image``
labels x ``pixels_per_label`` pixels, both views pooled) -> the optional
projection head on the sampled pixels only -> :func:`pretrain.metric_l2.metric_l2_loss`
per draw -> the mean over draws. The math is in :mod:`pretrain.metric_l2`.

``positives``: ``across_images`` (our method: a draw's pairs are formed over the
whole batch's sample, so the same auxiliary label in two images is a positive
pair) or ``per_image`` (the original: pairs only between pixels of one image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from auxseg.config import NonNegativeFloat, PositiveFloat, PositiveInt
from pretrain.distributed import all_gather_cat
from pretrain.losses import targets_at_features
from pretrain.metric_l2 import metric_l2_loss, sample_instances
from pretrain.model import ProjectionHead
from pretrain.objectives.base import Objective, StepBatch, register_objective
from pretrain.sampling import embeddings_at


@dataclass
class MetricL2Config:
    form: Literal["printed", "code"] = "printed"  # supplement Eq. 1 as printed, or the official code's variant
    positives: Literal["across_images", "per_image"] = "across_images"  # pairs over the batch, or inside an image
    labels_per_image: PositiveInt = 3  # P_inst (supplement §1)
    pixels_per_label: PositiveInt = 50  # P_pix; the supplement: 1,000 (one image per step); 50 keeps CPU steps cheap
    repeats: PositiveInt = 10  # draws per step, averaged in one graph (supplement: 10, gradients accumulated)
    min_pixels: PositiveInt = 2  # a label is drawn in an image only with at least this many pixels at feature resolution
    scale: PositiveFloat | None = None  # distance divisor; null: the feature dimension D (printed) or 64 (code)
    pos_weight: PositiveFloat | None = None  # weight of positive pairs; null: 1 (printed) or 3 (code)
    head_dim: PositiveInt | None = 128  # projection head output (the paper's features are 128-d); null: no head
    head_hidden: PositiveInt = 512  # hidden width of the 2-layer 1x1-conv head
    lr_mult: NonNegativeFloat = 1.0  # learning-rate multiplier of the head (the paper: 10x for its new layers)

    def __post_init__(self) -> None:
        if self.labels_per_image < 2:
            raise ValueError(f"labels_per_image must be >= 2 (a negative pair needs two labels), got {self.labels_per_image}")
        if self.pixels_per_label < 1 or self.repeats < 1 or self.min_pixels < 1:
            raise ValueError("pixels_per_label, repeats and min_pixels must be >= 1")
        if self.scale is not None and self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.pos_weight is not None and self.pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {self.pos_weight}")
        if self.head_dim is not None and (self.head_dim < 1 or self.head_hidden < 1):
            raise ValueError("head_dim and head_hidden must be >= 1 (head_dim: null for no head)")
        if self.lr_mult <= 0:
            raise ValueError(f"lr_mult must be > 0, got {self.lr_mult}")


class MetricHead(ProjectionHead):
    """The projection head's two 1x1 convs without the L2 normalisation: a metric loss needs free norms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C] -> [N, D]``, identical to :meth:`forward` at each pixel."""
        c1, c2 = self.proj[0], self.proj[2]
        return F.linear(F.relu(F.linear(x, c1.weight.flatten(1), c1.bias)), c2.weight.flatten(1), c2.bias)


@register_objective("metric_l2")
class MetricL2(Objective):
    """L2 metric loss of semantic soft segmentation (Aksoy et al. 2018) on an instance-balanced pixel sample."""

    Config = MetricL2Config
    progress_stats = {"pos_dist": "dpos", "neg_dist": "dneg"}

    def __init__(self, cfg: MetricL2Config, in_channels: int):
        super().__init__(cfg, in_channels)
        self.head = MetricHead(in_channels, cfg.head_hidden, cfg.head_dim) if cfg.head_dim is not None else None

    def forward(self, features: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        h, w = features.shape[-2:]
        ids = targets_at_features("aux", batch.target_maps(), batch.label_ids(), h=h, w=w)  # [b, 2, h, w], -1 = ignore
        ids_global = all_gather_cat(ids)  # [B, 2, h, w]: every rank draws the same sample
        per_image = ids_global[0].numel()  # 2*h*w pixels per image
        draws, skipped = [], 0
        for _ in range(c.repeats):
            sel, n_skip = sample_instances(ids_global.flatten(1), c.labels_per_image, c.pixels_per_label,
                                           batch.generator, c.min_pixels)
            draws.append(sel)
            skipped += n_skip
        sel_all = torch.cat(draws)  # [sum n_r]
        # the draws overlap: project each sampled pixel once, then index (gradients add up over its uses)
        sel_unique, where = torch.unique(sel_all, return_inverse=True)
        project = self.head.rows if self.head is not None else None
        feats_all = embeddings_at(features, sel_unique, ids.numel(), project)[where]  # [sum n_r, D]
        ids_all = ids_global.reshape(-1)[sel_all]
        image_all = sel_all // per_image  # [sum n_r] image of each sampled pixel
        losses, pos, neg, pairs = [], [], [], 0.0
        with torch.autocast(features.device.type, enabled=False):  # the loss in fp32 whatever the AMP setting
            for f, i, g in zip(feats_all.float().split([len(s) for s in draws]), ids_all.split([len(s) for s in draws]),
                               image_all.split([len(s) for s in draws])):
                loss, st = metric_l2_loss(f, i, form=c.form, scale=c.scale, pos_weight=c.pos_weight,
                                          groups=g if c.positives == "per_image" else None)
                losses.append(loss)
                pos.append(st["pos_dist"])
                neg.append(st["neg_dist"])
                pairs += st["pairs"]
        # the mean over draws in one graph: its gradient is the mean of the draws' gradients, i.e. the paper's
        # accumulation over repeated samplings (a sum there; a constant factor 1/repeats here)
        loss = torch.stack(losses).mean()
        stats = {
            "pos_dist": _nanmean(pos), "neg_dist": _nanmean(neg),
            "pixels": len(sel_all) / c.repeats, "pairs": pairs / c.repeats, "images_skipped": skipped / c.repeats,
        }
        return loss, stats


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")
