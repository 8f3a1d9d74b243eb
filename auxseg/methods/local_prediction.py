"""Local prediction with a switch-variable MRF (Schuett & Ma; docs/related-methods.md part C): the pure math.

A feature map is a pairwise MRF. The factor between ``x`` and ``x + d`` has a
binary switch: on (same object: a Gaussian around the neighbour's feature),
off (boundary: a constant density ``u``). Marginalising the switch gives

    phi_d(v, g) = p_d N(v; g, C_d) + (1 - p_d) u                      (C.1)
    S_x(v)      = sum_d log phi_d(v, f_{x+d})                           (score)
    pi_{x,d}    = p_d N(f_x; f_{x+d}, C_d) / phi_d(f_x, f_{x+d})        (switch posterior)

Choices where the sources are silent (docs/pretrain.md, "local_prediction"):

- ``C_d`` is diagonal; its log-diagonal and ``logit(p_d)`` are learned per offset.
- ``d`` and ``-d`` share parameters: a symmetric pairwise factor (a diagonal
  Gaussian is symmetric in its two arguments), so ``pi_{x,d} = pi_{x+d,-d}``
  exactly and the affinity matrix built from ``pi`` is symmetric.
- ``u`` is fixed: the density of a uniform distribution with unit variance per
  channel (the box ``[-sqrt 3, sqrt 3]^c``), the same spread as the standardised
  features, ``log u = -c log(2 sqrt 3)``; see :func:`log_uniform_density`.

Everything here is a function of tensors (no modules, no I/O), used by the
pre-training objective and by the boundary production alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEIGHBOURHOODS = (4, 8, 12, 20)

# The half of each neighbourhood whose negatives complete it (table C.3): one offset per
# unordered pair {d, -d}, ordered by distance. A neighbourhood of size n is the first n/2
# of these plus their negatives.
_HALF_OFFSETS = (
    (0, 1), (1, 0),  # distance 1
    (1, 1), (1, -1),  # sqrt 2
    (0, 2), (2, 0),  # 2
    (1, 2), (2, 1), (1, -2), (2, -1),  # sqrt 5
)


def offsets(size: int) -> list[tuple[int, int]]:
    """The ``size`` neighbour offsets ``(dy, dx)`` of table C.3 (4, 8, 12 or 20).

    The first ``size/2`` are one of each pair ``{d, -d}`` and the last ``size/2``
    their negatives in the same order, so offset ``k`` uses parameter row
    ``k % (size/2)`` (:func:`param_index`).
    """
    if size not in NEIGHBOURHOODS:
        raise ValueError(f"neighbourhood must be one of {NEIGHBOURHOODS}, got {size}")
    half = list(_HALF_OFFSETS[: size // 2])
    return half + [(-dy, -dx) for dy, dx in half]


def param_index(size: int) -> torch.Tensor:
    """``[size]`` int64: the parameter row of each offset of :func:`offsets` (``d`` and ``-d`` share one)."""
    return torch.arange(size) % (size // 2)


def radius(size: int) -> int:
    """The largest ``|dy|`` or ``|dx|`` of the neighbourhood (1 for 4 and 8, 2 for 12 and 20)."""
    return max(max(abs(dy), abs(dx)) for dy, dx in offsets(size))


def log_uniform_density(channels: int) -> float:
    """``log u`` for ``channels``-dimensional standardised features: the uniform with unit variance per channel.

    A uniform on ``[-a, a]`` has variance ``a^2 / 3``; unit variance gives
    ``a = sqrt 3`` and density ``1 / (2 sqrt 3)`` per channel.
    """
    return -channels * math.log(2.0 * math.sqrt(3.0))


def log_gaussian(v: torch.Tensor, g: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``log N(v; g, diag(exp(log_var)))``, broadcasting over leading dims.

    Args:
        v, g: ``[..., c]`` candidate and mean.
        log_var: ``[..., c]`` log of the diagonal covariance.
    Returns:
        ``[...]``.
    """
    return -0.5 * (((v - g) ** 2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi)).sum(-1)


def log_factor(v: torch.Tensor, g: torch.Tensor, logit_p: torch.Tensor, log_var: torch.Tensor,
               log_u: float) -> torch.Tensor:
    """``log phi_d(v, g) = log(p N(v; g, C) + (1 - p) u)``, computed with logaddexp (no underflow).

    Args:
        v, g: ``[..., c]`` candidate feature and the neighbour's feature.
        logit_p: ``[...]`` logit of the prior probability that the factor is on.
        log_var: ``[..., c]`` log-diagonal of ``C``.
        log_u: log of the constant "off" density.
    Returns:
        ``[...]``.
    """
    on = F.logsigmoid(logit_p) + log_gaussian(v, g, log_var)
    return torch.logaddexp(on, F.logsigmoid(-logit_p) + log_u)


def switch_posterior(v: torch.Tensor, g: torch.Tensor, logit_p: torch.Tensor, log_var: torch.Tensor,
                     log_u: float) -> torch.Tensor:
    """``pi = p N(v; g, C) / phi(v, g)``: the posterior that the factor is on (shapes as :func:`log_factor`)."""
    return torch.sigmoid(logit_p + log_gaussian(v, g, log_var) - log_u)


def log_gaussian_pairs(cand: torch.Tensor, neigh: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``log N(cand_m; neigh_d, C_d)`` for every candidate and neighbour without an ``[N, M, D, c]`` tensor.

    Args:
        cand: ``[N, M, c]`` candidates per location.
        neigh: ``[N, D, c]`` neighbour features per location.
        log_var: ``[D, c]``.
    Returns:
        ``[N, M, D]``.
    """
    prec = torch.exp(-log_var)  # [D, c]
    # (v - g)^2 / s = v^2/s - 2 v g/s + g^2/s, each term a matrix product
    vv = torch.einsum("nmc,dc->nmd", cand * cand, prec)
    vg = torch.einsum("nmc,ndc->nmd", cand, neigh * prec)
    gg = torch.einsum("ndc,dc->nd", neigh * neigh, prec)
    quad = vv - 2 * vg + gg[:, None, :]
    norm = (log_var.sum(-1) + log_var.shape[-1] * math.log(2 * math.pi))  # [D]
    return -0.5 * (quad + norm)


def factor_scores(cand: torch.Tensor, neigh: torch.Tensor, logit_p: torch.Tensor, log_var: torch.Tensor,
                  log_u: float) -> torch.Tensor:
    """``log phi_d(cand_m, neigh_d)`` for every location, candidate and offset.

    Args:
        cand: ``[N, M, c]`` candidate vectors ``v`` per location (true feature and negatives).
        neigh: ``[N, D, c]`` the features ``f_{x+d}`` of each location's neighbours.
        logit_p: ``[D]``; log_var: ``[D, c]`` (per offset, already expanded from shared rows).
        log_u: log of the "off" density.
    Returns:
        ``[N, M, D]``.
    """
    on = F.logsigmoid(logit_p) + log_gaussian_pairs(cand, neigh, log_var)
    return torch.logaddexp(on, F.logsigmoid(-logit_p) + log_u)


def prediction_score(cand: torch.Tensor, neigh: torch.Tensor, logit_p: torch.Tensor, log_var: torch.Tensor,
                     log_u: float) -> torch.Tensor:
    """``S_x(v) = sum_d log phi_d(v, f_{x+d})`` (shapes as :func:`factor_scores`); returns ``[N, M]``."""
    return factor_scores(cand, neigh, logit_p, log_var, log_u).sum(-1)


def contrastive_loss(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """The position or factor loss from the factor scores of :func:`factor_scores` (``[N, 1 + K, D]``).

    ``position`` (C.2): InfoNCE of ``S_x(f_x)`` against ``S_x`` of other locations' features,
    ``L = mean_x [ -log exp S_x(f_x) / (exp S_x(f_x) + sum_k exp S_x(f_{y_k})) ]``.

    ``factor`` (C.2, form chosen here): the same InfoNCE for each factor on its own,
    ``L = mean_{x,d} [ -log phi_d(f_x, f_{x+d}) / (phi_d(f_x, f_{x+d}) + sum_k phi_d(f_{y_k}, f_{x+d})) ]``,
    with the same K negatives ``y_k`` for every offset of a location.

    Candidate 0 is the true ``f_x``; the others are the negatives. Returns a scalar.
    """
    if kind not in ("position", "factor"):
        raise ValueError(f"unknown local-prediction loss {kind!r} (position | factor)")
    if kind == "position":
        scores = scores.sum(-1)  # [N, 1+K]: the product of the neighbours' factors
    return (torch.logsumexp(scores, dim=1) - scores[:, 0]).mean()


def position_loss(cand: torch.Tensor, neigh: torch.Tensor, logit_p: torch.Tensor, log_var: torch.Tensor,
                  log_u: float) -> torch.Tensor:
    """Position loss of :func:`contrastive_loss` from candidates ``[N, 1 + K, c]`` (``cand[:, 0]`` the true
    ``f_x``) and neighbours (shapes as :func:`factor_scores`)."""
    return contrastive_loss(factor_scores(cand, neigh, logit_p, log_var, log_u), "position")


def factor_loss(cand: torch.Tensor, neigh: torch.Tensor, logit_p: torch.Tensor, log_var: torch.Tensor,
                log_u: float) -> torch.Tensor:
    """Factor loss of :func:`contrastive_loss`; arguments as :func:`position_loss`."""
    return contrastive_loss(factor_scores(cand, neigh, logit_p, log_var, log_u), "factor")


def shifted(features: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``f_{x+d}`` at every ``x`` of a map, and where it exists.

    Args:
        features: ``[B, c, h, w]``.
    Returns:
        (``[B, c, h, w]`` with ``out[..., y, x] = features[..., y + dy, x + dx]`` (0 outside the map),
        ``[h, w]`` bool, True where ``(y + dy, x + dx)`` is inside the map).
    """
    h, w = features.shape[-2:]
    out = torch.zeros_like(features)
    valid = torch.zeros(h, w, dtype=torch.bool, device=features.device)
    ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    out[..., ys, xs] = features[..., yd, xd]
    valid[ys, xs] = True
    return out, valid


def posterior_maps(features: torch.Tensor, size: int, logit_p: torch.Tensor, log_var: torch.Tensor,
                   log_u: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch posteriors ``pi_{x,d}`` at every location of a map, for every offset of the neighbourhood.

    Args:
        features: ``[B, c, h, w]`` standardised features.
        size: neighbourhood size (4, 8, 12, 20).
        logit_p: ``[size/2]``; log_var: ``[size/2, c]`` (the shared parameter rows).
        log_u: log of the "off" density.
    Returns:
        (``pi [B, size, h, w]``, 0 where the neighbour is outside the map;
        ``valid [size, h, w]`` bool).
    """
    rows = param_index(size).to(features.device)
    pis, valids = [], []
    for k, (dy, dx) in enumerate(offsets(size)):
        g, valid = shifted(features, dy, dx)
        r = rows[k]
        lv = log_var[r].view(1, -1, 1, 1)  # [1, c, 1, 1]
        log_n = -0.5 * (((features - g) ** 2) * torch.exp(-lv) + lv + math.log(2 * math.pi)).sum(1)  # [B, h, w]
        pis.append(torch.sigmoid(logit_p[r] + log_n - log_u) * valid)
        valids.append(valid)
    return torch.stack(pis, 1), torch.stack(valids)


def standardise(features: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per channel over the batch and all positions (C.4, before the noise step).

    ``[B, c, h, w] -> [B, c, h, w]``; gradients flow through the statistics (as in BatchNorm).
    """
    mean = features.mean(dim=(0, 2, 3), keepdim=True)
    var = features.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (features - mean) / torch.sqrt(var + eps)


def add_noise(features: torch.Tensor, alpha: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``sqrt(1 - alpha^2) f + alpha eps`` (supplement A.2); keeps zero mean and unit variance.

    ``noise``: the ``eps`` draw (same shape as ``features``); standard normal when None.
    """
    if alpha == 0:
        return features
    if noise is None:
        noise = torch.randn_like(features)
    return math.sqrt(1.0 - alpha * alpha) * features + alpha * noise
