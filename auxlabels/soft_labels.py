"""Soft auxiliary labels: a per-pixel prior over the K clusters, written beside each hard label PNG.

The rule (docs/auxlabels.md, "Soft labels"), at the working stride (one cell
per feature pixel):

1. **distance softmax** -- the ``topk`` nearest centroids of a cell, with
   squared distances ``d_j``, get ``p_own(j) ∝ exp(-d_j / (tau * m))``; ``m`` is
   the median squared nearest-centroid distance of the fit's held-out pixels
   (fixed per run), ``tau = soft_labels.temperature``. Outlier cells (those the
   hard labels ignore) use ``tau * outlier_temperature``: a flatter prior
   instead of no prior.
2. **superpixel soft vote** -- with superpixels, each superpixel's mean
   distribution ``pbar_S`` is the pixel-weighted mean of ``p_own`` over its
   non-outlier pixels (outliers do not vote, as in the hard vote); a cell gets
   ``pbar`` = the mean of ``pbar_S`` over its pixels' superpixels (superpixels
   without a non-outlier pixel contribute the cell's own ``p_own``), and
   ``p = (1 - w) p_own + w pbar`` with ``w = soft_labels.superpixel_weight``.
3. the prior file keeps the top ``topk`` labels of ``p`` (auxseg.contracts.priors).

Pure numpy (and scipy.sparse), no torch: it runs in the CPU label workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from auxseg.contracts.label_folder import PRIORS_DIR

from .config import SoftLabelsConfig

_BINCOUNT_LIMIT = 1 << 23  # entries (64 MB of int64) of the (cell, superpixel) count table


@dataclass(frozen=True)
class SoftSettings:
    """What the label workers need to write priors (picklable)."""

    priors_dir: str  # <out_dir>/priors
    topk: int  # labels stored per cell (also the number of nearest centroids searched)
    temperature: float  # tau, relative to distance_scale
    outlier_temperature: float  # multiplier of tau for outlier cells (>= 1: flatter)
    superpixel_weight: float  # w of the superpixel soft vote, in [0, 1]
    distance_scale: float  # m: median squared nearest-centroid distance of the fit's held-out pixels


def soft_settings(soft: SoftLabelsConfig, superpixels: bool, out: Path, scale: float | None) -> SoftSettings | None:
    """The workers' soft-label settings for a run (None when ``soft.enabled`` is off).

    ``superpixels``: ``superpixels.enabled`` (off: no soft vote); ``scale``: the
    fit state's ``soft_distance_scale``, the distance unit m.
    """
    if not soft.enabled:
        return None
    if scale is None:  # the fingerprint includes soft_labels, so a fit state without it is another run's
        raise RuntimeError(f"{out}: the saved fit state has no soft_distance_scale; use a new out_dir")
    return SoftSettings(priors_dir=str(out / PRIORS_DIR), topk=soft.topk, temperature=soft.temperature,
                        outlier_temperature=soft.outlier_temperature,
                        superpixel_weight=soft.superpixel_weight if superpixels else 0.0,
                        distance_scale=float(scale))


def distance_scale(sq_nearest: np.ndarray) -> float:
    """m: the median of squared nearest-centroid distances ``[N]`` (floored at 1e-12 so tau * m > 0)."""
    if sq_nearest.size == 0:
        return 1.0
    return max(float(np.median(sq_nearest)), 1e-12)


def distance_softmax(sq_dist: np.ndarray, temperature: np.ndarray | float) -> np.ndarray:
    """Softmax of negative squared distances.

    Args:
        sq_dist: float ``[k, ...]`` squared distances to the k nearest centroids.
        temperature: float, scalar or ``[...]`` (per cell), > 0, in squared-distance units.
    Returns:
        float64 ``[k, ...]`` probabilities summing to 1 over k.
    """
    logits = -np.asarray(sq_dist, dtype=np.float64) / temperature
    logits -= logits.max(axis=0, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=0, keepdims=True)


def own_prior(sq_dist: np.ndarray, outlier: np.ndarray, settings: SoftSettings) -> np.ndarray:
    """Step 1: ``p_own [k, h, w]`` over the k nearest centroids from their squared distances ``[k, h, w]``.

    ``outlier`` bool ``[h, w]``: cells whose temperature is multiplied by ``outlier_temperature``.
    """
    tau = settings.temperature * settings.distance_scale
    temperature = np.where(outlier, tau * settings.outlier_temperature, tau)
    return distance_softmax(sq_dist, temperature)


def dense_cells(ids: np.ndarray, probs: np.ndarray, num_labels: int) -> np.ndarray:
    """float64 ``[h*w, K]`` from top-k ids / probs ``[k, h, w]``."""
    k, h, w = ids.shape
    cells = np.broadcast_to(np.arange(h * w), (k, h * w)).ravel()
    return sp.csr_matrix((probs.reshape(-1), (cells, ids.reshape(-1))), shape=(h * w, num_labels)).toarray()


def superpixel_mix(p_own: np.ndarray, outlier: np.ndarray, segments: np.ndarray, stride: int,
                   weight: float) -> np.ndarray:
    """Step 2: ``(1 - w) p_own + w pbar`` per cell, ``pbar`` the superpixel soft vote.

    Args:
        p_own: float ``[h*w, K]`` per-cell distribution (cells row-major on the working grid).
        outlier: bool ``[h, w]``: cells that do not vote.
        segments: int ``[H, W]`` superpixel ids of the full-resolution image; pixel (y, x)
            lies in cell ``(min(y // stride, h - 1), min(x // stride, w - 1))``.
        stride: working stride.
        weight: w in [0, 1].
    Returns:
        float64 ``[h*w, K]``, rows summing to 1.
    """
    h, w = outlier.shape
    height, width = segments.shape
    rows = np.minimum(np.arange(height) // stride, h - 1)
    cols = np.minimum(np.arange(width) // stride, w - 1)
    cell = (rows[:, None] * w + cols[None, :]).ravel()  # [H*W] cell of each pixel
    seg = segments.ravel().astype(np.int64)
    n_seg = int(seg.max()) + 1
    if n_seg > 4 * seg.size:  # very sparse ids (as in vote.py): compact them
        _, seg = np.unique(seg, return_inverse=True)
        n_seg = int(seg.max()) + 1
    # pixel counts of the (cell, superpixel) pairs that occur (a few per cell): a bincount over all pairs
    # when that table is small (faster than sorting the pixels), else np.unique
    code = cell * n_seg + seg
    if h * w * n_seg <= _BINCOUNT_LIMIT:
        table = np.bincount(code, minlength=h * w * n_seg)
        pairs = np.flatnonzero(table)
        area = table[pairs]
    else:
        pairs, area = np.unique(code, return_counts=True)
    pc, ps = pairs // n_seg, pairs % n_seg
    area = area.astype(np.float64)
    votes = area * ~outlier.ravel()[pc]  # pixels of voting (non-outlier) cells
    mass = np.bincount(ps, weights=votes, minlength=n_seg)  # [S] voting pixels per superpixel
    vote_matrix = sp.csr_matrix((votes, (ps, pc)), shape=(n_seg, h * w))  # [S, h*w]
    pbar_seg = (vote_matrix @ p_own) / np.maximum(mass, 1)[:, None]  # [S, K]
    # a cell's pbar: pixel-weighted over its superpixels; a superpixel without a vote gives the cell's own p
    cell_area = np.bincount(pc, weights=area, minlength=h * w)  # [h*w], >= 1
    voted_area = area * (mass > 0)[ps]
    share = sp.csr_matrix((voted_area / cell_area[pc], (pc, ps)), shape=(h * w, n_seg))  # [h*w, S]
    pbar = share @ pbar_seg + (1.0 - np.asarray(share.sum(axis=1)))[:, :1] * p_own
    return (1.0 - weight) * p_own + weight * pbar


def soft_prior(ids: np.ndarray, sq_dist: np.ndarray, outlier: np.ndarray, segments: np.ndarray | None,
               stride: int, num_labels: int, settings: SoftSettings) -> np.ndarray:
    """The whole rule: dense prior float32 ``[K, h, w]`` at the working stride, summing to 1 over K.

    Args:
        ids: int ``[k, h, w]`` the k nearest centroids of each cell, nearest first.
        sq_dist: float ``[k, h, w]`` their squared distances.
        outlier: bool ``[h, w]``.
        segments: int ``[H, W]`` superpixels of the image, or None (no soft vote).
    """
    k, h, w = ids.shape
    p_own = dense_cells(ids, own_prior(sq_dist, outlier, settings), num_labels)  # [h*w, K]
    if segments is not None and settings.superpixel_weight > 0:
        p_own = superpixel_mix(p_own, outlier, segments, stride, settings.superpixel_weight)
    return p_own.T.reshape(num_labels, h, w).astype(np.float32)
