"""Label-free local prediction with a switch-variable MRF (Schuett & Ma; docs/related-methods.md part C).

One step: features of both views -> standardise per channel over the batch ->
noise step (alpha) -> per repetition, sample ``locations`` interior positions per
map and ``negatives`` other positions of the same map for each -> the position
or factor loss of :mod:`auxseg.methods.local_prediction` -> mean over repetitions.

The objective uses no labels (``needs_labels = False``): it trains on a plain
image folder (``data.source=images``) or on any label folder, whose labels it
ignores. Its own parameters, learned with ``lr_mult`` (10x in the supplement),
are per offset pair ``{d, -d}``: ``logit_p [n/2]`` and ``log_var [n/2, C]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from auxseg.config import Fraction, NonNegativeFloat, PositiveInt
from auxseg.methods.local_prediction import (
    NEIGHBOURHOODS,
    add_noise,
    contrastive_loss,
    factor_scores,
    log_gaussian_pairs,
    log_uniform_density,
    offsets,
    param_index,
    radius,
    standardise,
)
from pretrain.objectives.base import Objective, StepBatch, register_objective


@dataclass
class LocalPredictionConfig:
    neighbourhood: PositiveInt = 8  # 4 | 8 | 12 | 20 neighbours (table C.3)
    loss: Literal["position", "factor"] = "position"  # C.2
    noise: Fraction = 0.0  # alpha of the noise step (supplement A.2: 0, 0.1 or 0.2)
    negatives: PositiveInt = 10  # random other locations per sampled location and repetition (supplement A)
    # Independent draws of locations and negatives on the same features, averaged in one graph: the same
    # gradient as accumulating `repetitions` backward passes of loss/repetitions (supplement A: 5 for pixel,
    # 10 for linear and predseg1).
    repetitions: PositiveInt = 5
    locations: PositiveInt = 256  # choice: sampled positions per feature map (memory is bounded by this, not the image)
    lr_mult: NonNegativeFloat = 10.0  # supplement A: 10x learning rate for p and C

    def __post_init__(self) -> None:
        if self.neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(f"neighbourhood must be one of {list(NEIGHBOURHOODS)}, got {self.neighbourhood}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.negatives < 1 or self.repetitions < 1 or self.locations < 1:
            raise ValueError("negatives, repetitions and locations must be >= 1")
        if self.lr_mult <= 0:
            raise ValueError(f"lr_mult must be > 0, got {self.lr_mult}")


@register_objective("local_prediction")
class LocalPrediction(Objective):
    """Label-free local prediction with a switch-variable MRF (position or factor loss); owns p_d and C_d."""

    Config = LocalPredictionConfig
    needs_labels = False
    progress_stats = {"connection_pct": "p%", "posterior_pct": "pi%"}

    def __init__(self, cfg: LocalPredictionConfig, in_channels: int):
        super().__init__(cfg, in_channels)
        half = cfg.neighbourhood // 2
        self.logit_p = nn.Parameter(torch.zeros(half))  # p_d = 0.5 at the start
        self.log_var = nn.Parameter(torch.zeros(half, in_channels))  # C_d = I: the standardised feature scale
        self.log_u = log_uniform_density(in_channels)
        self.register_buffer("rows", param_index(cfg.neighbourhood), persistent=False)

    def exported_state(self) -> dict:
        """The predictor parameters: the boundary production needs them (stored with the export)."""
        return self.predictor()

    def predictor(self) -> dict:
        """The parameters the boundary production needs (stored in the small-model export)."""
        return {"neighbourhood": self.cfg.neighbourhood, "log_u": self.log_u,
                "logit_p": self.logit_p.detach(), "log_var": self.log_var.detach()}

    def sample(self, n_maps: int, h: int, w: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (flat ``y * w + x``) for one repetition.

        Returns:
            (centres ``[n_maps, L]``, drawn from the interior so every neighbour exists;
            negatives ``[n_maps, L, K]``, uniform over the map's other positions).
        """
        c, r = self.cfg, radius(self.cfg.neighbourhood)
        ys = torch.randint(r, h - r, (n_maps, c.locations), generator=generator)
        xs = torch.randint(r, w - r, (n_maps, c.locations), generator=generator)
        centre = ys * w + xs
        neg = torch.randint(0, h * w - 1, (n_maps, c.locations, c.negatives), generator=generator)
        neg = neg + (neg >= centre[..., None]).long()  # skip the centre itself
        return centre, neg

    def forward(self, features: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        n_maps, ch, h, w = features.shape
        r = radius(c.neighbourhood)
        if h <= 2 * r or w <= 2 * r:
            raise ValueError(f"loss.local_prediction: the feature maps are {h}x{w}, too small for neighbourhood "
                             f"{c.neighbourhood} (need more than {2 * r}x{2 * r}); use larger crops (augment.out_size)")
        with torch.autocast(features.device.type, enabled=False):  # the loss in fp32 whatever the AMP setting
            f = standardise(features.float())
            noise = torch.randn(f.shape, generator=batch.generator).to(f.device) if c.noise > 0 else None
            f = add_noise(f, c.noise, noise)
            rows = f.flatten(2).transpose(1, 2)  # [n_maps, h*w, C]
            shift = torch.tensor([dy * w + dx for dy, dx in offsets(c.neighbourhood)])  # [D]
            logit_p, log_var = self.logit_p[self.rows], self.log_var[self.rows]  # [D], [D, C]
            # the repetitions' draws, made one after the other, then gathered in one indexing op (its
            # backward writes one map-sized gradient, not one per repetition)
            draws = [self.sample(n_maps, h, w, batch.generator) for _ in range(c.repetitions)]
            centre = torch.cat([d[0] for d in draws], 1)  # [n_maps, R*L]
            neg = torch.cat([d[1] for d in draws], 1)  # [n_maps, R*L, K]
            cand_idx = torch.cat([centre[..., None], neg], -1).to(f.device)  # [n_maps, R*L, 1+K]
            neigh_idx = (centre[..., None] + shift).to(f.device)  # [n_maps, R*L, D]
            take = torch.arange(n_maps, device=f.device)[:, None, None]
            cand = rows[take, cand_idx].flatten(0, 1)  # [N, 1+K, C], N = n_maps * R * L
            neigh = rows[take, neigh_idx].flatten(0, 1)  # [N, D, C]
            # every draw has n_maps * L locations, so the mean over all of them is the mean over the
            # repetitions of each draw's loss
            # the factor scores once: the loss and the step's statistics both read them
            scores = factor_scores(cand, neigh, logit_p, log_var, self.log_u)  # [N, 1+K, D]
            loss = contrastive_loss(scores, c.loss)
            with torch.no_grad():
                log_n = log_gaussian_pairs(cand[:, :1], neigh, log_var)[:, 0]  # [N, D]
                posterior = float(torch.sigmoid(logit_p + log_n - self.log_u).mean())
                ranked = scores.detach().sum(-1, keepdim=True) if c.loss == "position" else scores.detach()
                top1 = float((ranked.argmax(1) == 0).float().mean())
        p = float(torch.sigmoid(self.logit_p.detach()).mean())
        return loss, {"connection_probability": p, "posterior": posterior, "connection_pct": 100 * p,
                      "posterior_pct": 100 * posterior, "top1": top1}

    def histograms(self) -> dict:
        return {"connection_probability": (torch.sigmoid(self.logit_p.detach()).cpu(), None),
                "log_var": (self.log_var.detach().cpu().flatten(), None)}
