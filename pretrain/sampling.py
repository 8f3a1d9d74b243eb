"""Balanced pixel sampling over the global batch, shared by objectives that work on sampled pixels."""

from __future__ import annotations

import torch

from pretrain.distributed import all_gather_cat, gather_rows_with_grad, is_distributed
from pretrain.losses import sample_balanced


def sampled_embeddings(features: torch.Tensor, ids_local: torch.Tensor, budget: int, min_per_label: int,
                       generator: torch.Generator, project=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample pixels over the global batch and return their embeddings and ids, in the same order on every rank.

    Args:
        features: ``[b*V, C, h, w]`` this process's feature maps (image-major, then view).
        ids_local: ``[b, V, h, w]`` int64 target ids, -1 = ignore.
        project: ``[n, C] -> [n, D]`` applied to this process's sampled rows before the
            gather (the projection head); None keeps the features.

    Returns:
        feats ``[N, D]`` (with gradient, gathered from all processes), ids ``[N]``.
    """
    ids_global = all_gather_cat(ids_local).reshape(-1)  # [B*V*h*w], rank order = single-process order
    sel = sample_balanced(ids_global, budget, min_per_label, generator)  # [N], identical on all ranks
    return embeddings_at(features, sel, ids_local.numel(), project), ids_global[sel]


def embeddings_at(features: torch.Tensor, sel: torch.Tensor, per_rank: int, project=None) -> torch.Tensor:
    """The (projected) feature rows at global flat pixel indices ``sel``, gathered from all processes.

    Args:
        features: ``[b*V, C, h, w]`` this process's feature maps (image-major, then view).
        sel: ``[N]`` int64 indices into the global ``[B*V*h*w]`` pixels (rank order), identical on all ranks.
        per_rank: pixels per process, ``b*V*h*w``.
        project: ``[n, C] -> [n, D]`` applied before the gather; None keeps the features.

    Returns:
        ``[N, D]`` with gradient, in the order of ``sel``.
    """
    owner = sel // per_rank  # [N] which process holds each sampled pixel
    world = torch.distributed.get_world_size() if is_distributed() else 1
    rank = torch.distributed.get_rank() if world > 1 else 0
    mine = sel[owner == rank] - rank * per_rank  # local flat indices (image*V+view, y, x)
    _, _, h, w = features.shape
    n_img, yx = mine // (h * w), mine % (h * w)
    feats_local = features[n_img, :, yx // w, yx % w]  # [n_r, C] without copying the whole map
    if project is not None:
        feats_local = project(feats_local)  # [n_r, D]
    counts = [int((owner == r).sum()) for r in range(world)]
    pieces = gather_rows_with_grad(feats_local, counts)  # per rank, in that rank's sel order
    # back to the order of `sel`: position of each row of cat(pieces) in sel
    where = torch.cat([(owner == r).nonzero().squeeze(1) for r in range(world)])
    return torch.cat(pieces)[torch.argsort(where)]  # [N, D] in the order of sel
