"""Outlier removal: pixels far from their cluster centre become "ignore" (paper: 5%, supplement Table 4).

The threshold is estimated once, on a held-out pixel sample drawn with the fit
sample, so assignment can stream image by image; it is then applied to every
pixel. ``global``: one distance threshold; ``per_cluster``: one per cluster.
"""

from __future__ import annotations

import numpy as np


def outlier_thresholds(
    distances: np.ndarray, labels: np.ndarray, num_labels: int, fraction: float, mode: str = "global"
) -> np.ndarray:
    """Distance thresholds above which a pixel is an outlier.

    Args:
        distances: float ``[N]`` distance of each sample pixel to its assigned centre.
        labels: int ``[N]`` assigned cluster of each sample pixel, in ``0..num_labels-1``.
        num_labels: K.
        fraction: share of pixels to drop (0.05 = the 5% farthest).
        mode: ``"global"`` (one threshold for all clusters) or ``"per_cluster"``.
    Returns:
        float64 ``[K]`` thresholds (all equal in global mode; +inf drops nothing).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"outlier fraction must be in [0, 1), got {fraction}")
    thresholds = np.full(num_labels, np.inf)
    if fraction == 0.0 or distances.size == 0:
        return thresholds
    q = 1.0 - fraction
    if mode == "global":
        thresholds[:] = np.quantile(distances, q, method="higher")
    elif mode == "per_cluster":
        for k in range(num_labels):
            d = distances[labels == k]
            if d.size:
                thresholds[k] = np.quantile(d, q, method="higher")
    else:
        raise ValueError(f"outlier mode must be 'global' or 'per_cluster', got {mode!r}")
    return thresholds


def outlier_mask(distances: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """True where a pixel lies strictly beyond its cluster's threshold.

    Args:
        distances: float ``[...]``; labels: int ``[...]`` (same shape); thresholds: ``[K]``.
    """
    return distances > thresholds[labels]
