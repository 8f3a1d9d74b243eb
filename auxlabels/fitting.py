"""The fit phase: sample pixel features of ``n_fit`` images, fit K-means (or DBSCAN), estimate outlier thresholds.

method.md, Stage 1 steps 2-3. Runs once (rank 0 under torchrun); its state is
saved so that a resumed run and the other ranks reuse it.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from auxseg.distributed import barrier

from .config import AuxLabelsConfig, DBSCANConfig, KMeansConfig, OutlierConfig, resolve_k
from .extraction import Features
from .fit_state import FIT_STATE, FitState
from .inputs import ImageItem, batches, prefetched, progress_bar, read_images, same_size_groups
from .run_context import RunContext
from .superpixels import superpixel_label_bound


def planned_num_labels(cfg: AuxLabelsConfig) -> int | None:
    """K before the fit: the superpixel bound, the K-means K, or None (DBSCAN decides)."""
    if cfg.clusterer == "superpixel":
        return superpixel_label_bound(cfg.superpixels.n_segments, cfg.superpixels.method)
    if cfg.clusterer == "kmeans":
        return resolve_k(cfg)
    return None


def fit_or_load(cfg: AuxLabelsConfig, ctx: RunContext, items: list[ImageItem], feats: Features,
                num_labels: int | None) -> FitState:
    """The fit state: read from the run's folder when an earlier run saved it, else fitted by rank 0 and saved.

    ``num_labels``: K before the fit (:func:`planned_num_labels`). Every rank
    returns the same state (the others read what rank 0 wrote).
    """
    fit = None
    if (ctx.out / FIT_STATE).is_file():
        fit = FitState.load(ctx.out)
    elif ctx.dist.is_main:
        fit = fit_clusters(cfg, ctx, items, feats, num_labels)
        fit.save(ctx.out)
    barrier()
    return fit if fit is not None else FitState.load(ctx.out)


def sample_indices(n_pixels: int, n_fit: int, n_calib: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint fit and calibration pixel indices of one image, seeded by (seed, image index)."""
    rng = np.random.default_rng([seed, index])
    take = min(n_pixels, n_fit + n_calib)
    perm = rng.permutation(n_pixels)[:take]
    # a small image gives fewer pixels than asked: split them in the requested proportion
    n_fit_here = min(take, max(1, round(take * n_fit / (n_fit + n_calib))))
    return perm[:n_fit_here], perm[n_fit_here:]


def _fit_seed(cfg: AuxLabelsConfig) -> int:
    return cfg.kmeans.seed if cfg.clusterer == "kmeans" else cfg.dbscan.seed


def fit_images(cfg: AuxLabelsConfig, items: list[ImageItem]) -> list[ImageItem]:
    """The ``n_fit`` images the fit samples from: a seeded choice, in input order."""
    # the fit sees image_dir's images only, unless asked: eval images are labelled, not learned from
    pool_items = [it for it in items if cfg.fit_on_eval_images or not it.is_eval]
    n_fit = min(cfg.kmeans.n_fit, len(pool_items))
    order = np.random.default_rng(_fit_seed(cfg)).permutation(len(pool_items))[:n_fit]
    return [pool_items[i] for i in sorted(order)]


class PixelSample:
    """Fit and calibration rows of ``n_images`` images, ``per_image`` and ``calib_per_image`` each, filled in place.

    A list of per-image arrays plus a concatenation would hold the sample twice.
    """

    def __init__(self, n_images: int, per_image: int, calib_per_image: int):
        self.n_images, self.per_image, self.calib_per_image = n_images, per_image, calib_per_image
        self.sample = self.calib = None
        self.n_sample = self.n_calib = 0

    def add(self, rows: np.ndarray, fit_idx: np.ndarray, calib_idx: np.ndarray) -> None:
        """Copy the fit rows ``rows[fit_idx]`` and calibration rows ``rows[calib_idx]`` of one image's ``[N, D]``."""
        if self.sample is None:
            self.sample = np.empty((self.n_images * self.per_image, rows.shape[1]), np.float32)
            self.calib = np.empty((self.n_images * self.calib_per_image, rows.shape[1]), np.float32)
        self.sample[self.n_sample : self.n_sample + len(fit_idx)] = rows[fit_idx]
        self.calib[self.n_calib : self.n_calib + len(calib_idx)] = rows[calib_idx]
        self.n_sample += len(fit_idx)
        self.n_calib += len(calib_idx)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Fit rows ``[N, D]`` and calibration rows ``[N_c, D]`` (float32)."""
        if self.sample is None:
            raise ValueError("no readable image to fit on (every fit image was skipped)")
        return self.sample[: self.n_sample], self.calib[: self.n_calib]


def sample_pixels(cfg: AuxLabelsConfig, ctx: RunContext, feats: Features, items: list[ImageItem],
                  fit_items: list[ImageItem]) -> PixelSample:
    """The fit and calibration rows of the fit images' working features, the pixel budget spread evenly.

    ``items``: every input image (an image's index among them seeds its pixel
    choice); ``fit_items``: those the fit samples. Each image's native
    features are cached for the assignment pass.
    """
    seed = _fit_seed(cfg)
    budget = cfg.kmeans.fit_pixels if cfg.clusterer == "kmeans" else cfg.dbscan.num_samples
    per_image = math.ceil(budget / len(fit_items))
    calib_per_image = math.ceil(per_image * cfg.kmeans.calib_fraction) if cfg.outliers.enabled else 0
    index_of = {it.rel: i for i, it in enumerate(items)}
    pixels = PixelSample(len(fit_items), per_image, calib_per_image)
    bar = progress_bar(len(fit_items), "auxlabels fit: features", ctx.show)

    def read(batch):
        return read_images(batch, cfg.on_bad_image, ctx)

    for batch, loaded in prefetched(batches(fit_items, cfg.extractor.batch_size), read):
        for group in same_size_groups(loaded):
            natives = feats.native([img for _, img in group])
            for (it, img), native in zip(group, natives):
                feats.store(it.rel, native)
                rows = feats.working(native, img.shape[:2])
                pixels.add(rows, *sample_indices(len(rows), per_image, calib_per_image, seed, index_of[it.rel]))
        bar.update(len(batch))
    bar.close()
    return pixels


def _kmeans_centroids(kmeans: KMeansConfig, sample: np.ndarray, num_labels: int) -> np.ndarray:
    """K-means centroids ``[K, D]`` of the sample rows (faiss)."""
    from .kmeans import fit_kmeans

    if kmeans.threads is not None:
        import faiss

        faiss.omp_set_num_threads(kmeans.threads)
    print(f"[auxlabels] K-means: K={num_labels} on {len(sample)} pixels x {sample.shape[1]} dims", file=sys.stderr)
    return fit_kmeans(sample, num_labels, kmeans.niter, kmeans.nredo, kmeans.seed, kmeans.gpu)


def _dbscan_clusters(dbscan: DBSCANConfig, sample: np.ndarray, summary: dict):
    """(centroids, refs, ref_labels) of DBSCAN: its core samples are the references, their normalised means the
    centroids; ``eps`` and ``core_samples`` are added to ``summary``."""
    from .dbscan import fit_dbscan

    print(f"[auxlabels] DBSCAN on {len(sample)} pixels x {sample.shape[1]} dims", file=sys.stderr)
    refs, ref_labels, eps = fit_dbscan(sample, dbscan.eps, dbscan.min_samples, dbscan.eps_quantile)
    num_labels = int(ref_labels.max()) + 1
    centroids = np.stack([refs[ref_labels == k].mean(axis=0) for k in range(num_labels)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    summary.update(eps=eps, core_samples=int(len(refs)))
    return centroids, refs, ref_labels


def _thresholds(outliers: OutlierConfig, refs: np.ndarray, ref_labels: np.ndarray, calib: np.ndarray,
                num_labels: int) -> np.ndarray:
    """Outlier distance per label ``[K]`` from the held-out rows ``calib`` (inf everywhere: no outliers)."""
    from .kmeans import NearestCentroid
    from .outliers import outlier_thresholds

    if not (outliers.enabled and len(calib)):
        return np.full(num_labels, np.inf)
    idx, dist = NearestCentroid(refs).assign(calib)
    return outlier_thresholds(dist, ref_labels[idx], num_labels, outliers.fraction, outliers.mode)


def fit_clusters(cfg: AuxLabelsConfig, ctx: RunContext, items: list[ImageItem], feats: Features,
                 num_labels: int | None) -> FitState:
    """Sample pixels from the fit images, fit the clusterer, estimate the outlier thresholds.

    ``num_labels``: the K-means K (None for DBSCAN, which finds its own). With
    soft labels, the state's ``soft_distance_scale`` is the median squared
    nearest-centroid distance of the held-out pixels.
    """
    from .kmeans import NearestCentroid

    chosen = fit_images(cfg, items)
    pixels = sample_pixels(cfg, ctx, feats, items, chosen)
    sample, calib = pixels.arrays()
    t0 = time.perf_counter()
    summary: dict = {"n_fit_images": len(chosen) - sum(it.rel in ctx.skipped for it in chosen),
                     "fit_pixels": int(len(sample)), "calib_pixels": int(len(calib)),
                     "pixels_per_image": pixels.per_image}
    if cfg.clusterer == "kmeans":
        centroids = refs = _kmeans_centroids(cfg.kmeans, sample, num_labels)
        ref_labels = np.arange(num_labels)
    else:
        centroids, refs, ref_labels = _dbscan_clusters(cfg.dbscan, sample, summary)
    num_labels = len(centroids)
    ctx.timings["fit"] = time.perf_counter() - t0
    thresholds = _thresholds(cfg.outliers, refs, ref_labels, calib, num_labels)
    scale = None
    if cfg.soft_labels.enabled:  # the soft labels' distance unit: held-out pixels when there are any
        from .soft_labels import distance_scale

        _, near = NearestCentroid(refs).assign(calib if len(calib) else sample)
        scale = distance_scale(near.astype(np.float64) ** 2)
    return FitState(centroids=centroids.astype(np.float32), refs=refs.astype(np.float32),
                    ref_labels=ref_labels.astype(np.int64), thresholds=thresholds, num_labels=int(num_labels),
                    soft_distance_scale=scale, summary=summary)
