"""The math of weak-to-strong consistency (FixMatch, UniMatch): pure functions of tensors, no I/O, no state.

A confident prediction on the weakly augmented unlabelled image is the target of the same image
under strong perturbations (Sohn et al., NeurIPS 2020; Yang et al., "Revisiting weak-to-strong
consistency in semi-supervised semantic segmentation", CVPR 2023). The training step that uses
them is :meth:`finetune.consistency.ConsistencyEncoderDecoder.consistency_loss`; the defaults and
where they come from are in docs/consistency.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def pseudo_labels(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidence and class of each pixel's softmax, without gradient.

    Args:
        logits: ``[B, K, H, W]``.
    Returns:
        conf float32 ``[B, H, W]`` (the largest class probability), label int64 ``[B, H, W]`` (its class).
    """
    conf, label = logits.detach().float().softmax(dim=1).max(dim=1)
    return conf, label


def cutmix(own: torch.Tensor, partner: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``partner`` inside the box, ``own`` elsewhere: the same mix for images, pseudo-labels, confidences, masks.

    Args:
        own, partner: ``[B, H, W]`` or ``[B, C, H, W]``, same shape and dtype.
        box: bool ``[B, H, W]``.
    """
    mask = box if own.dim() == box.dim() else box.unsqueeze(1)  # [B, 1, H, W] for images
    return torch.where(mask, partner, own)


def unlabelled_ce(logits: torch.Tensor, target: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor,
                  threshold: float) -> torch.Tensor:
    """Cross-entropy on the confident pseudo-labels, divided by the number of valid pixels (UniMatch's form).

    ``sum_{p valid, conf_p >= threshold} CE(logits_p, target_p) / max(1, #valid)``: a pixel below the
    threshold adds 0 but still counts in the denominator, so the loss grows with the confident share.

    Args:
        logits: ``[B, K, H, W]`` (gradient flows through them).
        target: int64 ``[B, H, W]`` pseudo-labels.
        conf: ``[B, H, W]`` their confidence.
        valid: bool ``[B, H, W]``, False on padding (not part of any image).
        threshold: in [0, 1].
    Returns:
        a scalar.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")  # [B, H, W]
    keep = valid & (conf >= threshold)
    return ce[keep].sum() / valid.sum().clamp(min=1)


@dataclass(frozen=True)
class LossWeights:
    """``labelled * L_x + unlabelled * ((1 - fp_share) * mean_v L_s(v) + fp_share * L_fp)`` (docs/consistency.md)."""

    labelled: float = 0.5
    unlabelled: float = 0.5
    fp_share: float = 0.0  # 0 for FixMatch (no perturbed-feature stream); 0.5 for UniMatch


def unlabelled_terms(strong: list[torch.Tensor], fp: torch.Tensor | None, w: LossWeights) -> dict[str, torch.Tensor]:
    """The weighted unlabelled summands: ``loss_u_strong`` and (with a perturbed-feature term) ``loss_u_fp``.

    Args:
        strong: one scalar :func:`unlabelled_ce` per strong view.
        fp: the scalar of the perturbed-feature stream, or None.
    """
    share = w.fp_share if fp is not None else 0.0
    terms = {"loss_u_strong": w.unlabelled * (1.0 - share) * torch.stack(strong).mean()}
    if fp is not None:
        terms["loss_u_fp"] = w.unlabelled * share * fp
    return terms


def pseudo_label_counts(conf: torch.Tensor, label: torch.Tensor, valid: torch.Tensor, gt: torch.Tensor,
                        threshold: float, ignore_index: int = 255) -> torch.Tensor:
    """Pixel counts behind the logged diagnostics of one batch's weak view (summed over processes by the caller).

    Args:
        conf, label: :func:`pseudo_labels` of the weak view ``[B, H, W]``.
        valid: bool ``[B, H, W]``.
        gt: int64 ``[B, H, W]`` ground truth where known, ``ignore_index`` elsewhere (never a training target).
    Returns:
        float64 ``[6]``: valid pixels, confident valid pixels, confident pixels with ground truth and
        the correct ones among them, pixels with ground truth and the correct ones among them.
    """
    known = valid & (gt != ignore_index)
    confident = valid & (conf >= threshold)
    right = label == gt
    counts = [valid.sum(), confident.sum(), (confident & known).sum(), (confident & known & right).sum(),
              known.sum(), (known & right).sum()]
    return torch.stack(counts).double()


def pseudo_label_stats(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mask_ratio`` (confident share of the valid pixels), ``pseudo_acc`` (accuracy of the confident pseudo-labels)
    and ``pseudo_acc_all`` (of all of them) from :func:`pseudo_label_counts`; a ratio without pixels is left out."""
    n_valid, n_conf, n_conf_known, n_conf_right, n_known, n_right = counts.unbind()
    stats = {}
    for name, num, den in (("mask_ratio", n_conf, n_valid), ("pseudo_acc", n_conf_right, n_conf_known),
                           ("pseudo_acc_all", n_right, n_known)):
        if den > 0:
            stats[name] = (num / den).float()
    return stats
