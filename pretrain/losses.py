"""The math of the pixel objectives as pure functions: targets, balanced sampling, losses.

The objectives (:mod:`pretrain.objectives`) call these; each takes tensors and
returns tensors, with every shape in its docstring and a hand-computed test.
:class:`PixelTargets` holds hard ids (auxiliary labels, original-pixel cells
or superpixels, made unique per image where needed) and has room for soft
per-pixel label distributions.

The ``infonce`` objective in one step:

    label/coords maps [B, 2, S, S]  --targets_at_features-->  ids [B, 2, h, w]  (-1 = ignore)
    ids --sample_balanced--> indices of <= budget pixels (balanced over ids)
    embeddings at those pixels [N, D] + PixelTargets(ids [N]) --supervised_infonce--> loss, stats

:func:`blockwise_supervised_infonce` is the same loss in O(N (D + block)) memory (no ``[N, N]``
matrix), for every labelled pixel of a batch; :func:`infonce_block_rows` picks its block size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE_ID = -1
# auto block size of the blockwise InfoNCE: one [rows, N] fp32 block of logits takes at most this
BLOCK_BYTES = 64 << 20


@dataclass
class PixelTargets:
    """What decides positives and negatives for N sampled pixels.

    ids: ``[N]`` int64, pixels with equal ids are positives of each other
    (never -1 after sampling). soft: optional ``[N, K]`` float per-pixel label
    distribution for soft-label objectives (rows sum to 1); unused by InfoNCE.
    """

    ids: torch.Tensor
    soft: torch.Tensor | None = None


# ----------------------------------------------------------------------------- targets


def nearest_to_grid(maps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sample integer maps ``[..., S_h, S_w]`` at the centres of an ``h x w`` grid (nearest) -> ``[..., h, w]``.

    Cell ``i`` of the feature map (stride ``S/h``) takes the input pixel under its
    centre, ``floor((i + 0.5) * S / h)``, so no label is ever interpolated.
    """
    sh, sw = maps.shape[-2:]
    rows = ((torch.arange(h, device=maps.device) + 0.5) * sh / h).long().clamp_(max=sh - 1)
    cols = ((torch.arange(w, device=maps.device) + 0.5) * sw / w).long().clamp_(max=sw - 1)
    return maps.index_select(-2, rows).index_select(-1, cols)


@dataclass(frozen=True)
class TargetMaps:
    """What target ids are made from: the maps of a batch's views at input resolution ``S``."""

    label: torch.Tensor  # [B, V, S, S] int64 label maps of the views, LabelIds.ignore_index = ignore
    coords: torch.Tensor  # [B, V, S, S] int64 original y * W + x per view pixel, -1 = padding
    index: torch.Tensor  # [B] int64 dataset index of each image (makes per-image ids unique)
    image_width: torch.Tensor  # [B] int64 original width W of each image


@dataclass(frozen=True)
class LabelIds:
    """How a label folder's values become ids: K, the ignore value, and whether ids are per image."""

    num_labels: int  # K of the label folder
    ignore_index: int
    per_image: bool = False  # offset ids by index * K (scope "image" folders: ids mean nothing across images)


def targets_at_features(mode: str, maps: TargetMaps, labels: LabelIds, *, h: int, w: int,
                        pixel_cell: int = 8) -> torch.Tensor:
    """Per-pixel target ids at feature resolution for one of the label modes.

    Args:
        mode: "aux" (auxiliary label), "superpixel" (label folder of scope "image"),
            or "pixel" (the original pixel, quantised to ``pixel_cell`` px squares).
        maps: the views' label maps ``[B, V, S, S]``, original coordinates ``[B, V, S, S]``,
            dataset indices ``[B]`` and image widths ``[B]`` (:class:`TargetMaps`).
        labels: K, the ignore value and per-image ids (:class:`LabelIds`).
        h, w: feature map size.

    Returns:
        ``[B, V, h, w]`` int64 ids, -1 where ignored.
    """
    if mode == "pixel":
        c = nearest_to_grid(maps.coords, h, w)  # [B, V, h, w]
        wid = maps.image_width.view(-1, 1, 1, 1)
        cells_x = (wid + pixel_cell - 1) // pixel_cell
        cell = (c // wid) // pixel_cell * cells_x + (c % wid) // pixel_cell
        # 2**32 cells per image is far beyond any image, so ids never collide across images
        ids = maps.index.view(-1, 1, 1, 1) * (1 << 32) + cell
        return torch.where(c >= 0, ids, torch.full_like(ids, IGNORE_ID))
    if mode not in ("aux", "superpixel"):
        raise ValueError(f"loss.mode: {mode!r} is not 'aux', 'pixel' or 'superpixel'")
    lab = nearest_to_grid(maps.label, h, w)
    valid = (lab != labels.ignore_index) & (lab >= 0) & (lab < labels.num_labels)
    ids = lab + maps.index.view(-1, 1, 1, 1) * labels.num_labels if labels.per_image else lab
    return torch.where(valid, ids, torch.full_like(ids, IGNORE_ID))


def sample_balanced(ids: torch.Tensor, budget: int, min_per_label: int = 2,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick at most ``budget`` pixels, balanced over the ids present.

    Each id with at least ``min_per_label`` valid pixels is eligible; every chosen
    id gets up to ``per = max(min_per_label, budget // n_eligible)`` pixels drawn
    without replacement, and when ``n_eligible * per > budget`` a random subset
    of ``budget // per`` ids is used (e.g. baseline #1, where nearly every pixel
    has its own id). Ignored pixels (id -1) are never drawn.

    Args:
        ids: ``[M]`` int64, -1 = ignore.
        budget: max number of pixels returned.
        generator: makes the draw a function of its seed (same on every rank).

    Returns:
        ``[N]`` int64 indices into ``ids``, N <= budget, grouped by id.
    """
    valid = (ids != IGNORE_ID).nonzero().squeeze(1)  # [M_valid]
    empty = ids.new_zeros(0, dtype=torch.long)
    if valid.numel() == 0 or budget < min_per_label:
        return empty
    uniq, inv, counts = torch.unique(ids[valid], return_inverse=True, return_counts=True)
    eligible = (counts >= min_per_label).nonzero().squeeze(1)
    if eligible.numel() == 0:
        return empty
    per = max(min_per_label, budget // eligible.numel())
    n_use = min(eligible.numel(), budget // per)
    chosen = torch.zeros(uniq.numel(), dtype=torch.bool, device=ids.device)
    pick = torch.randperm(eligible.numel(), generator=generator, device="cpu")[:n_use].to(ids.device)
    chosen[eligible[pick]] = True
    # random order inside each id: sort by a random key, then (stably) by id
    key = torch.rand(valid.numel(), generator=generator, device="cpu").to(ids.device)
    order = torch.argsort(key)
    order = order[torch.argsort(inv[order], stable=True)]
    group = inv[order]
    start = torch.cumsum(counts, 0) - counts  # first position of each id in the sorted order
    rank = torch.arange(order.numel(), device=ids.device) - start[group]
    take = (rank < per) & chosen[group]
    return valid[order[take]]


# ----------------------------------------------------------------------------- losses


class _LogSumExpOverOthers(torch.autograd.Function):
    """``lse_i = log sum_{j != self_col[i]} exp(q_i . k_j)`` for ``q [A, D]``, ``k [N, D]``, ``self_col [A]``.

    The InfoNCE denominator with a hand-written backward, so the pairwise work holds two ``[A, N]``
    fp32 buffers at most, forward or backward: autograd's own ``logsumexp`` backward keeps the
    logits and makes three more. Forward: logits ``q k^T`` (its own buffer, so the self pairs are
    set to -inf in place) and logsumexp's temporary; the logits are saved. Backward: the softmax
    ``exp(logit - lse)``, 0 at the self pairs, scaled by the incoming gradient in place, gives
    ``dq = P k`` and ``dk = P^T q``. Always fp32 (autocast off inside), as the loss's contract says.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, self_col: torch.Tensor) -> torch.Tensor:
        with torch.autocast(q.device.type, enabled=False):
            logits = torch.mm(q, k.t())  # [A, N]
            logits.scatter_(1, self_col[:, None], float("-inf"))
            lse = torch.logsumexp(logits, dim=1)  # [A]
        ctx.save_for_backward(q, k, logits, lse)
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        q, k, logits, lse = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):
            p = (logits - lse[:, None]).exp_().mul_(grad[:, None])  # [A, N], saved logits left intact
            return p.mm(k), p.t().mm(q), None


class _BlockwiseLogSumExpOverOthers(torch.autograd.Function):
    """:class:`_LogSumExpOverOthers` over row blocks of ``block`` anchors, logits recomputed in the backward.

    ``lse_i = log sum_{j != self_col[i]} exp(q_i . k_j)`` for ``q [A, D]``, ``k [N, D]``, ``self_col [A]``,
    as memory-efficient attention computes its softmax: the forward keeps only ``lse [A]``; the backward
    computes each block's logits ``q_b k^T [block, N]`` again, turns them into the softmax in place and
    accumulates ``dq_b = P_b k`` and ``dk += P_b^T q_b``. Pairwise work is one ``[block, N]`` fp32 buffer
    at a time, forward or backward, so memory is O(N (D + block)) and no ``[A, N]`` matrix ever exists;
    the price is one more ``q k^T`` product than the lean form. Always fp32 (autocast off inside).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, self_col: torch.Tensor, block: int) -> torch.Tensor:
        with torch.autocast(q.device.type, enabled=False):
            lse = q.new_empty(q.shape[0])  # [A]
            buf = q.new_empty(min(block, q.shape[0]), k.shape[0])  # [block, N], reused by every block
            for s in range(0, q.shape[0], block):
                logits = torch.mm(q[s:s + block], k.t(), out=buf[: min(block, q.shape[0] - s)])  # [b, N]
                logits.scatter_(1, self_col[s:s + block, None], float("-inf"))
                # logsumexp in place; the max is finite: every anchor has another pixel
                top = logits.amax(1, keepdim=True)  # [b, 1]
                lse[s:s + block] = logits.sub_(top).exp_().sum(1).log_().add_(top.squeeze(1))
        ctx.block = block
        ctx.save_for_backward(q, k, self_col, lse)
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        q, k, self_col, lse = ctx.saved_tensors
        block = ctx.block
        with torch.autocast(q.device.type, enabled=False):
            dq, dk = torch.empty_like(q), torch.zeros_like(k)  # [A, D], [N, D]
            buf = q.new_empty(min(block, q.shape[0]), k.shape[0])  # [block, N], reused by every block
            for s in range(0, q.shape[0], block):
                q_b, g_b = q[s:s + block], grad[s:s + block, None]  # [b, D], [b, 1]
                # the block's logits again, minus their logsumexp: [b, N]
                p = torch.addmm(-lse[s:s + block, None], q_b, k.t(), out=buf[: q_b.shape[0]])
                p.scatter_(1, self_col[s:s + block, None], float("-inf"))
                p.exp_()  # the softmax over the others, 0 at the self pair
                torch.mm(p, k, out=dq[s:s + block]).mul_(g_b)
                dk.addmm_(p.t(), q_b * g_b)
        return dq, dk, None, None


def supervised_infonce(feats: torch.Tensor, targets: PixelTargets, temperature: float = 0.1) -> tuple[torch.Tensor, dict]:
    """Supervised pixel InfoNCE over sampled pixels (method.md, Stage 2; temperature 0.1).

    For anchor ``i`` with positives ``P(i)`` (the other pixels with the same id,
    in any image or view) and all other sampled pixels ``A(i)`` in the
    denominator::

        l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(f_i.f_p / t) / sum_{a in A(i)} exp(f_i.f_a / t) )

    averaged over anchors with at least one positive. The lean form: the pairwise
    work holds at most two ``[A, N]`` fp32 buffers (about 8.4 bytes per pixel pair
    measured); :func:`blockwise_supervised_infonce` is the same loss in O(N (D + block)).

    Args:
        feats: ``[N, D]`` L2-normalised embeddings (computed in fp32 here).
        targets: ``ids [N]`` int64.
        temperature: t.

    Returns:
        (scalar loss, stats); the loss is 0 (with a graph) when no anchor has a positive.
        Stats: ``anchors``, ``positives_per_anchor``, and two reference levels for
        reading the loss: ``loss_chance`` = log(N - 1), its value when all
        similarities are equal, and ``loss_floor`` = mean of log |P(i)|, a lower
        bound reached only when every positive outscores every negative by far.
    """
    return _supervised_infonce(feats, targets, temperature, block_size=None)


def blockwise_supervised_infonce(feats: torch.Tensor, targets: PixelTargets, temperature: float = 0.1,
                                 block_size: int = 1024) -> tuple[torch.Tensor, dict]:
    """:func:`supervised_infonce` (same loss, stats and gradients) over row blocks of ``block_size`` anchors.

    Each block's logits ``[block_size, N]`` are computed in the forward, reduced to
    their logsumexp and dropped, and computed again in the backward (as
    memory-efficient attention does), so peak memory is O(N (D + block_size)):
    no ``[N, N]`` matrix is ever held, and every labelled pixel of a batch
    (tens of thousands) fits where the lean form would need gigabytes.

    Args:
        feats: ``[N, D]`` L2-normalised embeddings (computed in fp32 here).
        targets: ``ids [N]`` int64.
        temperature: t.
        block_size: anchors per block (>= 1); the pairwise work is one ``[block_size, N]``
            fp32 buffer at a time (4 bytes x block_size x N).

    Returns:
        (scalar loss, stats) as :func:`supervised_infonce`.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return _supervised_infonce(feats, targets, temperature, block_size=block_size)


def infonce_block_rows(n: int, block_size: int = 0, block_bytes: int = BLOCK_BYTES) -> int:
    """Anchor rows per block of the InfoNCE loss over ``n`` pixels.

    ``block_size`` > 0 is taken as given; 0 (auto) takes as many rows as keep one
    ``[rows, n]`` fp32 block within ``block_bytes`` (at least 64, at most ``n``).
    A function of ``n`` only, not of the free memory, so a resumed run makes the
    same blocks (and the same floating-point sums) as the uninterrupted one.
    A result ``>= n`` means one block holds every anchor: the lean single pass.
    """
    if block_size > 0:
        return block_size
    return min(max(n, 1), max(64, block_bytes // (4 * max(n, 1))))


def _supervised_infonce(feats: torch.Tensor, targets: PixelTargets, temperature: float,
                        block_size: int | None) -> tuple[torch.Tensor, dict]:
    """The body of both forms: ``block_size`` None is the lean pass, an int the blockwise one."""
    ids = targets.ids
    n = feats.shape[0]
    feats = feats.to(torch.promote_types(feats.dtype, torch.float32))  # fp16/bf16 -> fp32, float64 stays
    # |P(i)| from per-id counts instead of an [N, N] equality mask
    _, group, counts = torch.unique(ids, return_inverse=True, return_counts=True)  # group [N], counts [U]
    num_pos = counts[group] - 1  # [N]
    has_pos = num_pos > 0
    if not bool(has_pos.any()):
        # nothing to contrast (e.g. a batch that is all ignore/padding): a zero loss that keeps the
        # graph connected, so every process of a DDP run still reduces (zero) gradients
        return feats.sum() * 0.0, {"anchors": 0, "positives_per_anchor": 0.0, "loss_chance": 0.0, "loss_floor": 0.0}
    anchors = has_pos.nonzero().squeeze(1)  # [A]; rows without a positive add nothing, so skip them
    a = anchors.numel()
    anchor_feats = feats[anchors] / temperature  # [A, D], temperature folded into the small operand
    if block_size is None:
        lse = _LogSumExpOverOthers.apply(anchor_feats, feats, anchors)  # [A], the only [A, N] work
    else:
        lse = _BlockwiseLogSumExpOverOthers.apply(anchor_feats, feats, anchors, block_size)  # [A], [block, N] at a time
    # sum_{p in P(i)} logit[i, p] = f_i/t . (sum of f over id(i) - f_i): per-id feature sums, no [N, N] mask;
    # a product and a sum (not a matmul), so fp32 under autocast too
    id_sums = feats.new_zeros(counts.numel(), feats.shape[1]).index_add_(0, group, feats)  # [U, D]
    pos_sum = (anchor_feats * (id_sums[group[anchors]] - feats[anchors])).sum(1)  # [A]
    # mean over P(i) of log_prob[i, p] = pos_sum / |P(i)| - lse_i
    loss = (lse - pos_sum / num_pos[anchors].to(feats.dtype)).mean()
    pos_counts = num_pos[anchors].float()
    stats = {"anchors": a, "positives_per_anchor": float(pos_counts.mean()),
             "loss_chance": math.log(n - 1), "loss_floor": float(pos_counts.log().mean())}
    return loss, stats


def _infonce_dense_reference(feats: torch.Tensor, targets: PixelTargets,
                             temperature: float = 0.1) -> tuple[torch.Tensor, dict]:
    """The former dense formulation of :func:`supervised_infonce` (same contract), kept only as the
    reference that ``tests/pretrain/test_pre_losses.py`` and ``tools/bench_infonce.py`` compare
    against; about five ``[N, N]`` intermediates (~21 bytes per pixel pair) in the forward. Only
    change: float64 input stays float64 (was cast to fp32), so the comparison can be exact.
    """
    ids = targets.ids
    n = feats.shape[0]
    feats = feats.to(torch.promote_types(feats.dtype, torch.float32))  # fp16/bf16 -> fp32, float64 stays
    logits = feats @ feats.t() / temperature  # [N, N]
    self_mask = torch.eye(n, dtype=torch.bool, device=feats.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # [N, N], -inf on the diagonal
    pos = (ids[:, None] == ids[None, :]) & ~self_mask  # [N, N]
    num_pos = pos.sum(1)  # [N]
    has_pos = num_pos > 0
    if not bool(has_pos.any()):
        # nothing to contrast (e.g. a batch that is all ignore/padding): a zero loss that keeps the
        # graph connected, so every process of a DDP run still reduces (zero) gradients
        return feats.sum() * 0.0, {"anchors": 0, "positives_per_anchor": 0.0, "loss_chance": 0.0, "loss_floor": 0.0}
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has_pos] / num_pos[has_pos]
    loss = -mean_log_prob_pos.mean()
    pos_counts = num_pos[has_pos].float()
    stats = {"anchors": int(has_pos.sum()), "positives_per_anchor": float(pos_counts.mean()),
             "loss_chance": math.log(n - 1), "loss_floor": float(pos_counts.log().mean())}
    return loss, stats
