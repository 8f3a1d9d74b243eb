"""QR and RQ (implicit posterior, Rolf et al., UAI 2022) as mmseg losses, and the decode heads that feed them.

``QRLoss`` / ``RQLoss`` (mmseg ``MODELS``) take the head's logits and the
per-pixel prior; the math is :mod:`auxseg.methods.implicit_posterior`. They need the
prior, which mmseg's ``BaseDecodeHead.loss_by_feat`` does not pass, so they
run inside a ``Prior*`` head (``PriorASPPHead``, ``PriorPSPHead``,
``PriorFCNHead``, ``PriorDepthwiseSeparableASPPHead``): the mmseg head of the
same name whose ``loss_by_feat`` hands each prior-loss the batch's
``gt_prior`` (see :mod:`finetune.priors`) and every other loss the labels as
usual. An mmseg config uses them with a short diff::

    model = dict(decode_head=dict(type='PriorASPPHead', loss_decode=dict(type='RQLoss', loss_weight=1.0)))

plus ``LoadPrior`` and ``PackSegInputsWithPrior`` in the train pipeline.
``auxseg finetune`` with ``targets``/``loss`` does all of this itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from auxseg.methods.implicit_posterior import (
    SMOOTHING,
    batch_class_mass,
    qr_loss,
    rq_loss,
    smooth,
    soft_cross_entropy,
)
from auxseg.mmseg_compat import import_mmseg

import_mmseg()

from mmseg.models.decode_heads import ASPPHead, DepthwiseSeparableASPPHead, FCNHead, PSPHead  # noqa: E402
from mmseg.models.losses import accuracy  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402


class _PriorLoss(nn.Module):
    """QR / RQ of a head's logits against a per-pixel prior, over all valid pixels of the batch.

    Args:
        loss_weight: multiplies the loss (mmseg convention).
        smoothing: additive constant on q and p before renormalising (supplement E.1.3: 1e-4).
        mass_momentum: 0: the class mass qbar of this batch only; m in (0, 1): qbar =
            m * running + (1 - m) * batch, the running estimate (a buffer, saved with the
            model and resumed) updated every training call: for batches too small to hold
            every class (A.4). Gradients flow through the batch part only.
        warmup_iters: the first training calls use cross-entropy on the (smoothed)
            prior instead: a guard against the degenerate solution (A.6 step 6). Counted
            by a buffer, so a resumed run continues the count.
        loss_name: the key in the loss dict; must start with ``loss_`` for mmengine to sum it.
    """

    needs_prior = True  # the Prior* heads pass gt_prior to losses with this flag
    default_name = "loss_qr"

    def __init__(self, loss_weight: float = 1.0, smoothing: float = SMOOTHING, mass_momentum: float = 0.0,
                 warmup_iters: int = 0, loss_name: str | None = None) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0 or not 0.0 <= mass_momentum < 1.0 or warmup_iters < 0:
            raise ValueError("smoothing and mass_momentum must be in [0, 1) and warmup_iters >= 0")
        self.loss_weight, self.smoothing = float(loss_weight), float(smoothing)
        self.mass_momentum, self.warmup_iters = float(mass_momentum), int(warmup_iters)
        self._loss_name = loss_name or self.default_name
        if not self._loss_name.startswith("loss_"):
            raise ValueError(f"loss_name must start with 'loss_' (mmengine sums only those), got {self._loss_name!r}")
        self.register_buffer("running_mass", torch.zeros(0))  # [K], set by set_num_classes
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))  # training calls so far

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def set_num_classes(self, num_classes: int) -> None:
        """Give the running class mass its shape (uniform start) before any checkpoint is loaded."""
        self.running_mass = torch.full((num_classes,), 1.0 / num_classes)

    @staticmethod
    def objective(q: torch.Tensor, p: torch.Tensor, qbar: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, seg_logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``[B, K, H, W]`` against prior ``[B, K, H, W]`` (rows of zeros are ignored); a scalar."""
        if seg_logits.shape != prior.shape:
            raise ValueError(f"logits {tuple(seg_logits.shape)} and prior {tuple(prior.shape)} differ in shape")
        k = seg_logits.shape[1]
        logits = seg_logits.float().permute(0, 2, 3, 1).reshape(-1, k)  # [B*H*W, K]
        p = prior.float().permute(0, 2, 3, 1).reshape(-1, k)  # [B*H*W, K]
        valid = p.sum(dim=1) > 0
        with torch.autocast(seg_logits.device.type, enabled=False):
            q = smooth(logits[valid].softmax(dim=1), self.smoothing)  # [N, K]
            # [K], over every valid pixel of the batch, and their number (of all processes: every process
            # calls it, whatever its own N, and takes the same decisions on the same n_all)
            qbar, n_all = batch_class_mass(q)
            if n_all < 1:
                return seg_logits.sum() * 0.0 + qbar.sum() * 0.0
            p = p[valid]
            p = smooth(p, self.smoothing) if self.smoothing > 0 else p / p.sum(dim=1, keepdim=True)
            if self.mass_momentum > 0:
                if self.running_mass.numel() != k:
                    raise ValueError(f"{type(self).__name__}: running class mass has {self.running_mass.numel()} "
                                     f"entries, the logits {k} classes (use it in a Prior* decode head)")
                qbar = self.mass_momentum * self.running_mass.to(q) + (1 - self.mass_momentum) * qbar
                if self.training:
                    self.running_mass = qbar.detach()
            warm = self.training and int(self.iteration) < self.warmup_iters
            if q.shape[0] < 1:  # another process has the pixels: take part in the collective, add nothing
                loss = seg_logits.sum() * 0.0 + qbar.sum() * 0.0
            elif warm:  # the warm-up keeps qbar in the graph: its backward is a collective in a distributed run
                loss = soft_cross_entropy(q, p) + qbar.sum() * 0.0
            else:
                loss = self.objective(q, p, qbar)
        if self.training:
            self.iteration += 1
        return self.loss_weight * loss


@MODELS.register_module()
class QRLoss(_PriorLoss):
    """QR (free energy, land-cover form): ``sum_l qbar_l log qbar_l - mean_i sum_l q_i(l) log p_i(l)``."""

    default_name = "loss_qr"

    @staticmethod
    def objective(q, p, qbar):
        return qr_loss(q, p, qbar)


@MODELS.register_module()
class RQLoss(_PriorLoss):
    """RQ: ``mean_i KL(r_i || q_i)``, gradients through r; with hard priors, cross-entropy."""

    default_name = "loss_rq"

    @staticmethod
    def objective(q, p, qbar):
        return rq_loss(q, p, qbar)


def stack_priors(batch_data_samples, size: tuple[int, int]) -> torch.Tensor:
    """The batch's ``gt_prior`` ``[B, K, H, W]``, zero-padded at the bottom/right to ``size`` like the images."""
    priors = []
    for sample in batch_data_samples:
        if "gt_prior" not in sample:
            raise ValueError("QRLoss/RQLoss need the prior: put LoadPrior (after LoadAnnotations) and "
                             "PackSegInputsWithPrior in the train pipeline (docs/finetune.md)")
        p = sample.gt_prior.data  # [K, h, w]
        priors.append(F.pad(p, (0, size[1] - p.shape[-1], 0, size[0] - p.shape[-2]), value=0.0))
    return torch.stack(priors, dim=0)


class PriorLossHeadMixin:
    """``loss_by_feat`` of mmseg's BaseDecodeHead, also passing ``gt_prior`` to losses with ``needs_prior``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for loss in self._loss_modules():
            if getattr(loss, "needs_prior", False):
                loss.set_num_classes(self.out_channels)

    def _loss_modules(self) -> list:
        return list(self.loss_decode) if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]

    def loss_by_feat(self, seg_logits: torch.Tensor, batch_data_samples) -> dict:
        losses = self._loss_modules()
        if not any(getattr(loss, "needs_prior", False) for loss in losses):
            return super().loss_by_feat(seg_logits, batch_data_samples)
        if self.sampler is not None:
            raise ValueError("QRLoss/RQLoss weigh every pixel by its prior; a decode-head sampler is not supported")
        seg_label = self._stack_batch_gt(batch_data_samples)  # [B, 1, H, W], padded with 255
        seg_logits = resize(seg_logits, size=seg_label.shape[2:], mode="bilinear", align_corners=self.align_corners)
        prior = stack_priors(batch_data_samples, seg_label.shape[2:]).to(seg_logits.device)  # [B, K, H, W]
        seg_label = seg_label.squeeze(1)
        out: dict = {}
        for loss in losses:
            if getattr(loss, "needs_prior", False):
                value = loss(seg_logits, prior)
            else:
                value = loss(seg_logits, seg_label, weight=None, ignore_index=self.ignore_index)
            out[loss.loss_name] = out[loss.loss_name] + value if loss.loss_name in out else value
        out["acc_seg"] = accuracy(seg_logits, seg_label, ignore_index=self.ignore_index)  # vs argmax of the prior
        return out


@MODELS.register_module()
class PriorASPPHead(PriorLossHeadMixin, ASPPHead):
    """DeepLabV3's ASPPHead whose prior-losses (QRLoss, RQLoss) get the batch's ``gt_prior``."""


@MODELS.register_module()
class PriorPSPHead(PriorLossHeadMixin, PSPHead):
    """PSPNet's PSPHead whose prior-losses (QRLoss, RQLoss) get the batch's ``gt_prior``."""


@MODELS.register_module()
class PriorFCNHead(PriorLossHeadMixin, FCNHead):
    """FCNHead (the auxiliary head of the configs) whose prior-losses get the batch's ``gt_prior``."""


@MODELS.register_module()
class PriorDepthwiseSeparableASPPHead(PriorLossHeadMixin, DepthwiseSeparableASPPHead):
    """DeepLabV3+'s head whose prior-losses (QRLoss, RQLoss) get the batch's ``gt_prior``."""


PRIOR_HEADS = {"ASPPHead": "PriorASPPHead", "PSPHead": "PriorPSPHead", "FCNHead": "PriorFCNHead",
               "DepthwiseSeparableASPPHead": "PriorDepthwiseSeparableASPPHead"}
