"""The L2 metric loss of semantic soft segmentation (Aksoy et al., SIGGRAPH 2018, supplement Eq. 1) and its
instance-balanced pixel sampler, as pure functions.

Two forms of the loss (docs/pretrain.md, "metric_l2"):

- ``printed`` (the supplement's Eq. 1): ``d = ||f_p - f_q||_2 / scale`` (scale = D, "we divide it by d");
  positive pairs ``log((1 + e^d) / 2)``, negative pairs ``log(1 + e^{-d} / 2)``.
- ``code`` (the authors' deprecated training function): ``d = ||f_p - f_q||_2^2 / scale`` (scale = 64);
  with ``s = 2 / (1 + e^d)`` positive pairs ``-log s`` (the same term as printed) and negative pairs
  ``-log(1 - s) = -log tanh(d / 2)``; positive pairs weighted 3, negative pairs 1.

Both are the (weighted) mean over ordered pairs ``p != q`` of the sampled pixels
(the supplement writes ``1/|P|`` in front of the double sum, which differs by the
constant factor ``|P| - 1``: a learning-rate scale).

The pairwise distances use the supplement's matrix form,
``D = diag(FF^T) 1^T + 1 diag(FF^T)^T - 2 FF^T`` on the stacked features ``F``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Form = Literal["printed", "code"]
CODE_SCALE = 64.0  # the official code divides the squared distance by 64
CODE_POS_WEIGHT = 3.0  # the official code weights positive pairs 3 : 1
MIN_ONE_MINUS_S = 1e-12  # code form: 1 - e^{-d} is floored here, so a negative pair at d = 0 costs 28.3, not inf


def pairwise_sq_dists(feats: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances of all rows by the matrix form (supplement, after Eq. 1).

    Args:
        feats: ``[N, D]`` float.
    Returns:
        ``[N, N]`` float, ``>= 0`` (rounding below zero is clamped), diagonal exactly 0.
    """
    sq = (feats * feats).sum(dim=1)  # [N] = diag(F F^T)
    dist = sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T  # [N, N]
    eye = torch.eye(len(feats), dtype=torch.bool, device=feats.device)
    return dist.clamp_min(0.0).masked_fill(eye, 0.0)


def metric_terms(d: torch.Tensor, form: Form) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss of a positive and of a negative pair at scaled distance ``d`` (any shape, ``d >= 0``).

    Returns:
        (positive term, negative term), each the shape of ``d``, computed stably from ``e^{-d}``:
        ``log((1 + e^d)/2) = d + log1p(e^{-d}) - log 2`` (both forms);
        printed negative ``log(1 + e^{-d}/2) = log1p(e^{-d}/2)``;
        code negative ``-log tanh(d/2) = -log(1 - e^{-d}) + log(1 + e^{-d})``.
    """
    e = torch.exp(-d)  # shared by both terms; d >= 0, so no overflow
    lp = torch.log1p(e)
    pos = d + lp - math.log(2.0)  # softplus(d) - log 2 for d >= 0
    if form == "printed":
        neg = torch.log1p(0.5 * e)
    elif form == "code":
        neg = lp - torch.log((-torch.expm1(-d)).clamp_min(MIN_ONE_MINUS_S))
    else:
        raise ValueError(f"form must be 'printed' or 'code', got {form!r}")
    return pos, neg


def metric_l2_loss(feats: torch.Tensor, ids: torch.Tensor, *, form: Form = "printed", scale: float | None = None,
                   pos_weight: float | None = None, groups: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The L2 metric loss (supplement Eq. 1, or the official code's variant) over sampled pixels.

    Args:
        feats: ``[N, D]`` float features of the sampled pixels (not normalised).
        ids: ``[N]`` int64 labels; equal ids are a positive pair, different ids a negative pair.
        form: "printed" (Eq. 1, distance = L2 / scale) or "code" (squared L2 / scale, ``-log tanh(d/2)``
            negatives).
        scale: distance divisor; None: D for "printed" (supplement: "we divide it by d"), 64 for "code".
        pos_weight: weight of positive pairs (negatives weigh 1); None: 1 for "printed", 3 for "code".
        groups: optional ``[N]`` int64; pairs are only formed inside a group (one image: the original
            per-image training). None: every pair of the sample.

    Returns:
        (scalar loss = sum of weight * term over ordered pairs p != q / number of such pairs,
        stats: ``pos_dist`` / ``neg_dist`` the mean scaled distance of positive / negative pairs
        (nan when there are none), ``pairs``).
    """
    n, dim = feats.shape
    if scale is None:
        scale = float(dim) if form == "printed" else CODE_SCALE
    if pos_weight is None:
        pos_weight = 1.0 if form == "printed" else CODE_POS_WEIGHT
    sq = pairwise_sq_dists(feats)  # [N, N]
    if form == "printed":
        # sqrt has an infinite slope at 0: a floor keeps identical rows (gradient 0 there) finite
        d = sq.clamp_min(1e-12).sqrt() / scale
    else:
        d = sq / scale
    same = ids[:, None] == ids[None, :]  # [N, N]
    pair = ~torch.eye(n, dtype=torch.bool, device=feats.device)
    if groups is not None:
        pair &= groups[:, None] == groups[None, :]
    pos_mask, neg_mask = pair & same, pair & ~same
    n_pairs = int(pair.sum())
    if n_pairs == 0:
        return feats.sum() * 0.0, {"pos_dist": float("nan"), "neg_dist": float("nan"), "pairs": 0.0}
    pos, neg = metric_terms(d, form)
    term = torch.where(same, pos * pos_weight, neg).masked_fill(~pair, 0.0)  # [N, N], 0 outside the pairs
    loss = term.sum() / n_pairs
    with torch.no_grad():
        n_pos, n_neg = int(pos_mask.sum()), int(neg_mask.sum())
        stats = {
            "pos_dist": float(d.masked_fill(~pos_mask, 0.0).sum()) / n_pos if n_pos else float("nan"),
            "neg_dist": float(d.masked_fill(~neg_mask, 0.0).sum()) / n_neg if n_neg else float("nan"),
            "pairs": float(n_pairs),
        }
    return loss, stats


def sample_instances(ids: torch.Tensor, labels_per_image: int, pixels_per_label: int, generator: torch.Generator,
                     min_pixels: int = 2) -> tuple[torch.Tensor, int]:
    """The instance-balanced sampler (supplement §1): per image, ``P`` random labels x ``N`` random pixels each.

    A label is eligible in an image when it has at least ``min_pixels`` valid
    pixels there (both views together). Of the eligible labels, ``P`` are drawn
    at random (all of them when fewer); an image with fewer than 2 eligible labels
    is skipped (no negative pair inside it; the official code skips images with
    fewer than 3). Each drawn label gives ``N`` of its pixels, drawn without
    replacement (all of them when it has fewer).

    Args:
        ids: ``[B, M]`` int64 target ids per image (``M = V*h*w`` pixels of its views), -1 = ignore.
        generator: CPU generator; the draw is a function of its state alone.

    Returns:
        (``[n]`` int64 flat indices into ``ids.reshape(-1)``, grouped by image then label;
        number of images skipped).
    """
    flat = ids.cpu()
    picks: list[torch.Tensor] = []
    skipped = 0
    for i in range(flat.shape[0]):
        row = flat[i]
        uniq, counts = torch.unique(row[row >= 0], return_counts=True)
        eligible = uniq[counts >= min_pixels]
        if eligible.numel() < 2:
            skipped += 1
            continue
        chosen = eligible[torch.randperm(eligible.numel(), generator=generator)[:labels_per_image]]
        for label in chosen.tolist():
            where = (row == label).nonzero().squeeze(1)
            take = where[torch.randperm(where.numel(), generator=generator)[:pixels_per_label]]
            picks.append(take + i * flat.shape[1])
    sel = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    return sel.to(ids.device), skipped
