"""The auxlabels stage top to bottom: images -> features -> clusters -> cleaned label PNGs + manifest + PmIoU.

Steps of :func:`run` (method.md, Stage 1), each in its own module:

1. **inputs** (:mod:`.inputs`) -- the images and their ground truth; two
   images that would write one label PNG are refused.
2. **resume** (:mod:`.resume`) -- the settings fingerprint; a folder holding
   another run is refused before anything is written.
3. **extraction** (:mod:`.extraction`) -- the frozen extractor, built before
   anything is written (a wrong checkpoint leaves no half-made folder).
4. **fit** (:mod:`.fitting`) -- features of ``n_fit`` images (a seeded
   choice), a pixel sample, K-means (or DBSCAN), the outlier threshold on a
   held-out part of the sample. Once, on rank 0 under torchrun; saved
   (:class:`.fit_state.FitState`), so a resumed run reuses it.
5. **assignment** (:mod:`.assignment`) -- for every image: features ->
   nearest centroid at the working stride -> outliers to ignore; then, in CPU
   worker processes (:mod:`.labelling`), upsample to full resolution, SLIC
   superpixel vote, write the PNG atomically and journal it. Streamed image by
   image; under torchrun the images are sharded over the ranks. With
   ``soft_labels.enabled`` the same pass also writes each image's soft prior
   (:mod:`.soft_labels`: k nearest centroids -> distance softmax -> superpixel
   soft vote -> ``priors/<rel>.npz``).
6. **manifest** (:mod:`.manifest`) -- PmIoU on the images with ground truth,
   ``manifest.json`` with ``complete: true``.

What the phases share -- the output folder, the ranks, timings, skipped
images, the progress switch -- is one :class:`.run_context.RunContext`.

Resume: each finished image is appended to ``progress*.jsonl`` with its PNG's
SHA-256. A rerun with the same settings reuses the centroids and skips exactly
the images whose PNG exists and matches its record; everything else is redone.
"""

from __future__ import annotations

import time
from pathlib import Path

from auxseg.contracts.label_folder import labels_digest
from auxseg.distributed import DistInfo, barrier, cleanup, env_dist_info, init_process_group
from auxseg.files import read_json_object

from .assignment import Assigner, label_all, start_workers
from .config import AuxLabelsConfig, validate
from .extraction import Features
from .extractor_base import check_extractor_name
from .fitting import fit_or_load, planned_num_labels
from .inputs import ImageItem, collect_images
from .labelling import LabelSettings
from .manifest import finish, write_rank_timings, write_started
from .resume import RunIdentity, checkpoint_sha256, fingerprint, previous_manifest
from .run_context import RunContext
from .soft_labels import soft_settings

__all__ = ["ImageItem", "collect_images", "labels_digest", "run"]


def check_config(cfg: AuxLabelsConfig) -> None:
    """Every check of the config before a run: the cross-field rules and the extractor's name."""
    validate(cfg)
    if cfg.clusterer != "superpixel":
        check_extractor_name(cfg.extractor.name)  # the registry is complete here: features is imported


def run(cfg: AuxLabelsConfig) -> dict:
    """Run the whole stage and return the manifest (also written to ``<out_dir>/manifest.json``).

    Under torchrun (``WORLD_SIZE > 1``) rank 0 fits, every rank labels its shard
    of the images, and rank 0 writes the manifest; every rank returns it.
    """
    check_config(cfg)  # before anything is written or started
    t_start = time.perf_counter()
    dist = env_dist_info()
    joined = init_process_group(dist, "gloo")  # coordination only: no tensors cross the ranks
    pool, warm = start_workers(cfg.num_workers)
    try:
        return _run(cfg, dist, t_start, (pool, warm))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if joined:
            cleanup()


def _run(cfg: AuxLabelsConfig, dist: DistInfo, t_start: float, workers: tuple) -> dict:
    ctx = RunContext(out=Path(cfg.out_dir).resolve(), dist=dist, show=cfg.progress and dist.is_main, t_start=t_start)

    # inputs and resume checks: each may refuse the run, and nothing is written yet
    inputs = collect_images(cfg)
    ctx.skipped.update(inputs.unreadable)  # dangling links and link loops: listed as skipped with their reason
    ckpt_sha256 = checkpoint_sha256(cfg)
    fp = fingerprint(cfg, inputs.items, ckpt_sha256)
    identity = RunIdentity(fp, previous_manifest(cfg, ctx.out, fp))

    num_labels = planned_num_labels(cfg)
    feats = Features(cfg, ctx.out / "cache", ctx.timings, ckpt_sha256) if cfg.clusterer != "superpixel" else None
    if dist.is_main:
        write_started(cfg, ctx.out, fp, identity.previous)
    ctx.timings["setup"] = time.perf_counter() - t_start  # inputs, fingerprint, building the extractor

    fit = assigner = scale = None
    if feats is not None:
        fit = fit_or_load(cfg, ctx, inputs.items, feats, num_labels)
        num_labels, scale = fit.num_labels, fit.soft_distance_scale
    settings = LabelSettings(
        labels_dir=str(ctx.out / "labels"), num_labels=num_labels, stride=cfg.extractor.stride,
        superpixels=cfg.superpixels, num_classes=cfg.num_classes, gt_ignore=tuple(cfg.gt_ignore_values),
        soft=soft_settings(cfg.soft_labels, cfg.superpixels.enabled, ctx.out, scale),
    )
    if fit is not None:
        assigner = Assigner(feats, fit, settings, gpu=cfg.kmeans.gpu, outliers=cfg.outliers.enabled)
    label_all(cfg, ctx, inputs.items, assigner, settings, workers)
    write_rank_timings(ctx)

    barrier()
    if dist.is_main:
        extractor = feats.model.description if feats is not None else None
        manifest = finish(cfg, ctx, inputs, fit, num_labels, extractor, identity)
    barrier()
    return manifest if dist.is_main else read_json_object(ctx.out / "manifest.json")
