"""An example objective in one file: a K-way linear classifier on the dense features, with a learned
logit scale. It is not meant to pre-train well; it shows the whole plug-in interface (own config section,
own parameters with an lr multiplier, the dense feature map, stats) and is trained through the CLI by
tests/pretrain/test_pre_objectives.py."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain.losses import nearest_to_grid
from pretrain.objectives import Objective, StepBatch, register_objective


@dataclass
class TinyClassifierConfig:
    max_classes: int = 64  # classifier outputs; label values >= this are ignored
    lr_mult: float = 10.0  # the head learns 10x faster than the backbone


@register_objective("tiny_classifier")
class TinyClassifier(Objective):
    """Cross-entropy of a 1x1-conv classifier on the auxiliary labels at feature resolution (an example)."""

    Config = TinyClassifierConfig
    progress_stats = {"accuracy": "acc"}

    def __init__(self, cfg: TinyClassifierConfig, in_channels: int):
        super().__init__(cfg, in_channels)
        self.classifier = nn.Conv2d(in_channels, cfg.max_classes, 1)
        self.log_scale = nn.Parameter(torch.zeros(()))  # a learned constant, saved and resumed with the model

    def forward(self, features: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, dict]:
        h, w = features.shape[-2:]
        target = nearest_to_grid(batch.label, h, w).flatten(0, 1)  # [b*2, h, w]
        valid = (target >= 0) & (target < min(batch.folder.num_labels, self.cfg.max_classes))
        target = torch.where(valid, target, torch.full_like(target, -100))
        logits = self.classifier(features).float() * self.log_scale.exp()  # [b*2, K, h, w]
        loss = F.cross_entropy(logits, target, ignore_index=-100)
        accuracy = float((logits.argmax(1) == target)[valid].float().mean()) if bool(valid.any()) else 0.0
        return loss, {"accuracy": accuracy, "scale": float(self.log_scale.exp())}
