"""The fit phase: sample pixel features of ``n_fit`` images, fit K-means (or DBSCAN), estimate outlier thresholds.

method.md, Stage 1 steps 2-3. Runs once (rank 0 under torchrun); its state is
saved so that a resumed run and the other ranks reuse it.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from auxseg.distributed import DistInfo, barrier

from .config import AuxLabelsConfig, resolve_k
from .extraction import Features
from .inputs import ImageItem, batches, prefetched, progress_bar, read_images, same_size_groups
from .resume import FIT_STATE, load_fit_state, save_fit_state
from .superpixels import superpixel_label_bound


def planned_num_labels(cfg: AuxLabelsConfig) -> int | None:
    """K before the fit: the superpixel bound, the K-means K, or None (DBSCAN decides)."""
    if cfg.clusterer == "superpixel":
        return superpixel_label_bound(cfg.superpixels.n_segments, cfg.superpixels.method)
    if cfg.clusterer == "kmeans":
        return resolve_k(cfg)
    return None


def fit_or_load(cfg: AuxLabelsConfig, out: Path, items: list[ImageItem], feats: Features, num_labels: int | None,
                dist: DistInfo, skipped: dict, timings: dict, show: bool) -> dict:
    """The fit state: read from ``out`` when an earlier run saved it, else fitted by rank 0 and saved.

    Every rank returns the same state (the others read what rank 0 wrote).
    """
    fit = None
    if (out / FIT_STATE).is_file():
        fit = load_fit_state(out)
    elif dist.is_main:
        fit = fit_clusters(cfg, items, feats, num_labels, skipped, timings, show)
        save_fit_state(out, fit)
    barrier()
    return fit if fit is not None else load_fit_state(out)


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


class _PixelSample:
    """Fit and calibration rows, filled in place.

    A list of per-image arrays plus a concatenation would hold the sample twice.
    """

    def __init__(self, n_images: int, per_image: int, calib_per_image: int):
        self.shape = (n_images, per_image, calib_per_image)
        self.sample = self.calib = None
        self.n_sample = self.n_calib = 0

    def add(self, rows: np.ndarray, fit_idx: np.ndarray, calib_idx: np.ndarray) -> None:
        if self.sample is None:
            n_images, per_image, calib_per_image = self.shape
            self.sample = np.empty((n_images * per_image, rows.shape[1]), np.float32)
            self.calib = np.empty((n_images * calib_per_image, rows.shape[1]), np.float32)
        self.sample[self.n_sample : self.n_sample + len(fit_idx)] = rows[fit_idx]
        self.calib[self.n_calib : self.n_calib + len(calib_idx)] = rows[calib_idx]
        self.n_sample += len(fit_idx)
        self.n_calib += len(calib_idx)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.sample is None:
            raise ValueError("no readable image to fit on (every fit image was skipped)")
        return self.sample[: self.n_sample], self.calib[: self.n_calib]


def sample_pixels(cfg: AuxLabelsConfig, items: list[ImageItem], fit_items: list[ImageItem], feats: Features,
                  per_image: int, calib_per_image: int, skipped: dict, timings: dict, show: bool):
    """Fit rows ``[N, D]`` and calibration rows ``[N_c, D]`` from the fit images' working features.

    Each image's native features are cached for the assignment pass.
    """
    seed = _fit_seed(cfg)
    index_of = {it.rel: i for i, it in enumerate(items)}
    pixels = _PixelSample(len(fit_items), per_image, calib_per_image)
    bar = progress_bar(len(fit_items), "auxlabels fit: features", show)

    def read(batch):
        return read_images(batch, cfg.on_bad_image, skipped, timings)

    for batch, loaded in prefetched(batches(fit_items, cfg.extractor.batch_size), read):
        for group in same_size_groups(loaded):
            natives = feats.native([img for _, img in group])
            for (it, img), native in zip(group, natives):
                feats.store(it.rel, native)
                rows = feats.working(native, img.shape[:2])
                pixels.add(rows, *sample_indices(len(rows), per_image, calib_per_image, seed, index_of[it.rel]))
        bar.update(len(batch))
    bar.close()
    return pixels.arrays()


def _cluster(cfg: AuxLabelsConfig, sample: np.ndarray, num_labels: int | None, info: dict):
    """(centroids, refs, ref_labels): K-means centroids are their own references; DBSCAN's are its core samples."""
    if cfg.clusterer == "kmeans":
        from .kmeans import fit_kmeans

        if cfg.kmeans.threads is not None:
            import faiss

            faiss.omp_set_num_threads(cfg.kmeans.threads)
        print(f"[auxlabels] K-means: K={num_labels} on {len(sample)} pixels x {sample.shape[1]} dims", file=sys.stderr)
        centroids = fit_kmeans(sample, num_labels, cfg.kmeans.niter, cfg.kmeans.nredo, cfg.kmeans.seed, cfg.kmeans.gpu)
        return centroids, centroids, np.arange(num_labels)
    from .dbscan import fit_dbscan

    print(f"[auxlabels] DBSCAN on {len(sample)} pixels x {sample.shape[1]} dims", file=sys.stderr)
    refs, ref_labels, eps = fit_dbscan(sample, cfg.dbscan.eps, cfg.dbscan.min_samples, cfg.dbscan.eps_quantile)
    num_labels = int(ref_labels.max()) + 1
    centroids = np.stack([refs[ref_labels == k].mean(axis=0) for k in range(num_labels)])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    info.update(eps=eps, core_samples=int(len(refs)))
    return centroids, refs, ref_labels


def fit_clusters(cfg: AuxLabelsConfig, items: list[ImageItem], feats: Features, num_labels: int | None,
                 skipped: dict, timings: dict, show: bool) -> dict:
    """Sample pixels from the fit images, fit the clusterer, estimate the outlier thresholds.

    Returns ``centroids [K, D]``, ``refs [R, D]`` and ``ref_labels [R]`` (the
    points assignment compares against and their labels), ``thresholds [K]``
    (inf: no outliers) and ``info`` for the manifest (with soft labels, its
    ``soft_distance_scale``: the median squared nearest-centroid distance).
    """
    from .kmeans import NearestCentroid
    from .outliers import outlier_thresholds

    chosen = fit_images(cfg, items)
    budget = cfg.kmeans.fit_pixels if cfg.clusterer == "kmeans" else cfg.dbscan.num_samples
    per_image = math.ceil(budget / len(chosen))
    calib_per_image = math.ceil(per_image * cfg.kmeans.calib_fraction) if cfg.outliers.enabled else 0
    sample, calib = sample_pixels(cfg, items, chosen, feats, per_image, calib_per_image, skipped, timings, show)
    t0 = time.perf_counter()
    info: dict = {"n_fit_images": len(chosen) - sum(it.rel in skipped for it in chosen),
                  "fit_pixels": int(len(sample)), "calib_pixels": int(len(calib)), "pixels_per_image": per_image}
    centroids, refs, ref_labels = _cluster(cfg, sample, num_labels, info)
    num_labels = len(centroids)
    timings["fit"] = time.perf_counter() - t0
    thresholds = np.full(num_labels, np.inf)
    if cfg.outliers.enabled and len(calib):
        idx, dist = NearestCentroid(refs).assign(calib)
        thresholds = outlier_thresholds(dist, ref_labels[idx], num_labels, cfg.outliers.fraction, cfg.outliers.mode)
    if cfg.soft_labels.enabled:  # the soft labels' distance unit: held-out pixels when there are any
        from .soft_labels import distance_scale

        _, near = NearestCentroid(refs).assign(calib if len(calib) else sample)
        info["soft_distance_scale"] = distance_scale(near.astype(np.float64) ** 2)
    info["num_labels"] = int(num_labels)
    return {"centroids": centroids.astype(np.float32), "refs": refs.astype(np.float32),
            "ref_labels": ref_labels.astype(np.int64), "thresholds": thresholds, "info": info}
