"""Helpers shared by the InfoNCE tests (lean, blockwise, dense reference)."""

from __future__ import annotations

import torch

from pretrain.losses import PixelTargets


def unit_features(n: int, d: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """``[n, d]`` L2-normalised random features that require grad."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).requires_grad_(True)


def loss_grad_stats(fn, feats: torch.Tensor, ids: torch.Tensor, t: float = 0.1):
    """``fn``'s loss, its gradient with respect to ``feats`` and its stats."""
    loss, stats = fn(feats, PixelTargets(ids), temperature=t)
    (grad,) = torch.autograd.grad(loss, feats)
    return loss.detach(), grad, stats
