"""QR and RQ (implicit posterior, Rolf et al., UAI 2022) as pre-training objectives on auxiliary labels.

A K-way 1x1-conv head on the dense features gives q; the prior p of each pixel
comes from the label folder's soft priors with ``use_priors: true``
(``StepBatch.prior``, top-k per pixel, densified only at the pixels the loss
uses; outlier pixels, ignored by the hard labels, then take part with their
flatter prior), else from its hard auxiliary label (one-hot). Both are
smoothed additively (1e-4). The batch class mass qbar is taken over all valid
pixels of both views of the batch, optionally mixed with a running estimate
(``mass_momentum``) for small batches. A cross-entropy warm-up on the prior
(``warmup_iters``) guards against the degenerate solution the paper describes
(q collapsing onto few classes while r follows the prior); the math is in
:mod:`auxseg.methods.implicit_posterior`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from auxseg.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ranged
from auxseg.contracts.label_folder import LabelFolderError
from auxseg.methods.implicit_posterior import (
    SMOOTHING,
    batch_class_mass,
    implied_posterior,
    qr_loss,
    rq_loss,
    smooth,
)
from pretrain.losses import nearest_to_grid
from pretrain.objectives.base import Objective, SoftPrior, StepBatch, register_objective


@dataclass
class ImplicitPosteriorConfig:
    smoothing: PositiveFloat = SMOOTHING  # supplement E.1.3, on q and on p
    mass_momentum: ranged(float, ge=0, lt=1) = 0.0  # 0: qbar of this batch only; m > 0: m * running + (1 - m) * batch (small batches)
    warmup_iters: NonNegativeInt = 0  # cross-entropy on the prior for the first iterations (guard against collapse)
    max_pixels: PositiveInt = 8192  # pixels per step the loss uses (a seeded subset when there are more): bounds memory
    lr_mult: NonNegativeFloat = 1.0  # learning-rate multiplier of the K-way head
    use_priors: bool = False  # p from the label folder's soft priors (priors/, docs/contracts.md 1b), not one-hot

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 1.0 or not 0.0 <= self.mass_momentum < 1.0:
            raise ValueError("smoothing and mass_momentum must be in [0, 1)")
        if self.warmup_iters < 0 or self.max_pixels < 2 or self.lr_mult <= 0:
            raise ValueError("warmup_iters must be >= 0, max_pixels >= 2 and lr_mult > 0")


class _ImplicitPosterior(Objective):
    Config = ImplicitPosteriorConfig
    progress_stats = {"posterior_agreement": "agree"}
    uses_prior = True
    loss_fn = staticmethod(qr_loss)

    def __init__(self, cfg: ImplicitPosteriorConfig, in_channels: int):
        super().__init__(cfg, in_channels)
        self.head: nn.Conv2d | None = None  # K comes from the label folder: built in check_folder
        self.register_buffer("running_mass", torch.zeros(0))

    def check_folder(self, folder) -> None:
        if self.cfg.use_priors and not folder.has_priors:
            raise LabelFolderError(
                f"{folder.root}: loss.{self.name}.use_priors=true but this label folder has no soft priors "
                "(write them with auxlabels soft_labels.enabled=true)")
        # the head has one output per auxiliary label; built here so it exists before the optimizer
        self.head = nn.Conv2d(self.in_channels, folder.num_labels, 1)
        self.running_mass = torch.full((folder.num_labels,), 1.0 / folder.num_labels)

    def forward(self, features: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, dict]:
        c, k = self.cfg, batch.folder.num_labels
        h, w = features.shape[-2:]
        logits = self.head(features).float()  # [b*2, K, h, w]
        logits = logits.permute(0, 2, 3, 1).reshape(-1, k)  # [b*2*h*w, K]
        if batch.prior is not None:  # soft priors, top-k per pixel: [b*2*h*w, k] ids and probs
            ids, probs = batch.prior.at_grid(h, w)
            valid = probs.sum(dim=1) > 0  # 0 only on view padding
        else:  # hard auxiliary labels -> one-hot priors, in the same top-1 form
            label = nearest_to_grid(batch.label, h, w).reshape(-1)  # [b*2*h*w]
            valid = (label >= 0) & (label < k)
            ids, probs = label.clamp(0, k - 1)[:, None], torch.ones(label.numel(), 1, device=label.device)
        idx = valid.nonzero().squeeze(1)
        if idx.numel() > c.max_pixels:
            pick = torch.randperm(idx.numel(), generator=batch.generator)[: c.max_pixels].to(idx.device)
            idx = idx[pick]
        with torch.autocast(features.device.type, enabled=False):
            q = smooth(logits[idx].softmax(dim=1), c.smoothing)  # [N, K]
            # of all processes' pixels: every process calls it, whatever its own N, and takes the same
            # decisions on the same n_all
            qbar, n_all = batch_class_mass(q)
            if n_all < 2:
                return logits.sum() * 0.0 + qbar.sum() * 0.0, {"pixels": float(idx.numel())}
            if c.mass_momentum > 0:
                qbar = c.mass_momentum * self.running_mass.to(q.device) + (1 - c.mass_momentum) * qbar
                self.running_mass = qbar.detach().cpu()
            if idx.numel() == 0:  # another process has the pixels: take part in the collective, add nothing
                return logits.sum() * 0.0 + qbar.sum() * 0.0, {"pixels": 0.0}
            prior = SoftPrior.dense(ids[idx], probs[idx], k)  # [N, K]: dense only at the N pixels used
            p = smooth(prior, c.smoothing) if c.smoothing > 0 else prior
            if batch.iteration < c.warmup_iters:  # cross-entropy on the prior; qbar kept in the graph (above)
                loss = -(p * q.log()).sum(dim=1).mean() + qbar.sum() * 0.0
            else:
                loss = self.loss_fn(q, p, qbar)
            with torch.no_grad():
                r = implied_posterior(q, p, qbar)
                agreement = float((r.argmax(1) == q.argmax(1)).float().mean())
                used = int((qbar > 1.0 / (10 * k)).sum())
        return loss, {"pixels": float(idx.numel()), "posterior_agreement": agreement, "classes_used": float(used)}


@register_objective("qr")
class QR(_ImplicitPosterior):
    """Implicit-posterior QR loss (free energy) of a K-way head on the auxiliary labels as priors."""

    loss_fn = staticmethod(qr_loss)


@register_objective("rq")
class RQ(_ImplicitPosterior):
    """Implicit-posterior RQ loss, KL(r || q), of a K-way head on the auxiliary labels as priors."""

    loss_fn = staticmethod(rq_loss)
