"""faiss K-means: fit once on a pixel sample, then nearest-centroid assignment (method.md, Stage 1 steps 2-3)."""

from __future__ import annotations

import warnings

import faiss
import numpy as np


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def fit_kmeans(
    sample: np.ndarray,
    k: int,
    niter: int = 25,
    nredo: int = 1,
    seed: int = 0,
    gpu: bool = False,
) -> np.ndarray:
    """Fit K-means with faiss on a pixel sample.

    Args:
        sample: float32 ``[N, D]`` pixel features (L2-normalised), N >= k.
        k: number of clusters (paper: 1.5 x number of classes, supplement Table 2).
        niter, nredo: Lloyd iterations and restarts (the best of ``nredo`` is kept).
        seed: faiss seed (initial centroids), so a fit is reproducible.
        gpu: use faiss GPU when available; otherwise warn and use the CPU.
    Returns:
        float32 centroids ``[k, D]``.
    """
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n, d = sample.shape
    if n < k:
        raise ValueError(f"K-means needs at least K={k} sample pixels, got {n}")
    use_gpu = bool(gpu and faiss_gpu_available())
    if gpu and not use_gpu:
        warnings.warn("kmeans.gpu=true but faiss sees no GPU (or is the CPU build); fitting on the CPU", stacklevel=2)
    # every sample point is used: our sample is already bounded (kmeans.fit_pixels), and
    # faiss's default cap of 256 points per centroid would silently subsample it further
    km = faiss.Kmeans(
        d, k, niter=niter, nredo=nredo, seed=seed, gpu=use_gpu, verbose=False,
        max_points_per_centroid=(n + k - 1) // k, spherical=False,
    )
    km.train(sample)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


class NearestCentroid:
    """Exact nearest-centroid search (faiss flat L2 index), the assignment step for every pixel."""

    def __init__(self, centroids: np.ndarray, gpu: bool = False, gpu_id: int | None = None):
        """Args: centroids ``[K, D]``; gpu: search on a GPU when faiss has one (``gpu_id``, default 0)."""
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.k, self.dim = centroids.shape
        index = faiss.IndexFlatL2(self.dim)
        if gpu and faiss_gpu_available():
            self._resources = faiss.StandardGpuResources()  # must outlive the GPU index
            index = faiss.index_cpu_to_gpu(self._resources, gpu_id or 0, index)
        index.add(centroids)
        self.index = index

    def assign(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each row.

        Args:
            feats: float32 ``[N, D]``.
        Returns:
            labels int64 ``[N]`` and Euclidean distances float32 ``[N]``.
        """
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.shape[1] != self.dim:
            raise ValueError(f"features have dimension {feats.shape[1]}, the centroids {self.dim}")
        sq, idx = self.index.search(feats, 1)
        return idx[:, 0].astype(np.int64), np.sqrt(np.maximum(sq[:, 0], 0.0)).astype(np.float32)

    def search(self, feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``min(k, K)`` nearest centroids of each row, nearest first (for soft labels).

        Args:
            feats: float32 ``[N, D]``.
        Returns:
            ids int64 ``[N, k]`` and squared Euclidean distances float32 ``[N, k]``.
        """
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.shape[1] != self.dim:
            raise ValueError(f"features have dimension {feats.shape[1]}, the centroids {self.dim}")
        sq, idx = self.index.search(feats, min(k, self.k))
        return idx.astype(np.int64), np.maximum(sq, 0.0).astype(np.float32)
