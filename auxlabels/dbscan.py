"""DBSCAN as the alternative clusterer (supplement Table 1 #5), fitted on a bounded pixel sample.

DBSCAN is quadratic in the worst case, so it runs on ``num_samples`` pixels only
(paper: 20,000). Rule for every other pixel: it takes the cluster of its nearest
*core* sample (density-reachability extended by 1-NN), and its distance to that
core sample is what outlier removal thresholds. Sample points DBSCAN called noise
are not used as references.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import DBSCAN
from sklearn.neighbors import NearestNeighbors


def auto_eps(sample: np.ndarray, min_samples: int, quantile: float) -> float:
    """A data-driven eps: the ``quantile`` of each point's distance to its ``min_samples``-th neighbour."""
    nn = NearestNeighbors(n_neighbors=min(min_samples, len(sample))).fit(sample)
    dist, _ = nn.kneighbors(sample)
    return float(np.quantile(dist[:, -1], quantile))


def fit_dbscan(sample: np.ndarray, eps: float | None, min_samples: int, eps_quantile: float = 0.5) -> tuple[np.ndarray, np.ndarray, float]:
    """Cluster a pixel sample with DBSCAN and keep its core samples as references.

    Args:
        sample: float32 ``[N, D]`` L2-normalised pixel features.
        eps: neighbourhood radius (Euclidean); None picks :func:`auto_eps`.
        min_samples: DBSCAN's density threshold.
    Returns:
        core features float32 ``[C, D]``, their cluster ids int64 ``[C]`` (``0..K-1``), and eps used.
    """
    if eps is None:
        eps = auto_eps(sample, min_samples, eps_quantile)
    db = DBSCAN(eps=eps, min_samples=min_samples, n_jobs=1).fit(sample)
    core = db.core_sample_indices_
    labels = db.labels_[core]
    if core.size == 0 or labels.max() < 0:
        raise ValueError(
            f"DBSCAN found no cluster in {len(sample)} pixels with eps={eps:.4f}, "
            f"min_samples={min_samples}; raise dbscan.eps or lower dbscan.min_samples"
        )
    # compact ids (DBSCAN numbers clusters from 0 already; this guards against gaps)
    _, labels = np.unique(labels, return_inverse=True)
    return np.ascontiguousarray(sample[core], dtype=np.float32), labels.astype(np.int64), float(eps)
