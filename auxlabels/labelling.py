"""Per-image CPU work of the assignment pass: upsample, superpixels, vote, PNG, counts, PmIoU counts.

This module imports no torch, so worker processes start fast and stay small;
each worker runs single-threaded (several run side by side).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auxseg.io import atomic_write_bytes, encode_label_png, read_label, read_rgb

from .metrics import confusion
from .superpixels import compute_superpixels, superpixel_label_bound
from .vote import superpixel_vote


@dataclass
class LabelJob:
    """Everything one image needs after its pixels were assigned (picklable for worker processes)."""

    rel: str  # image path relative to the image root
    image: np.ndarray | None  # uint8 [H, W, 3]; None: the worker reads image_path itself
    image_path: str
    coarse: np.ndarray | None  # int [h, w] labels at the working stride (ignore = outliers); None: superpixel mode
    stride: int
    out_path: str  # label PNG path
    gt_path: str | None
    mode: str  # "cluster" or "superpixel"
    num_labels: int
    ignore_index: int
    dtype: str  # "uint8" or "uint16"
    superpixels: bool
    sp_method: str
    sp_segments: int
    sp_compactness: float
    num_classes: int | None
    gt_ignore: tuple[int, ...]


def init_worker() -> None:
    """Worker-process initialiser: one thread for every numeric library (workers run in parallel)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def warm_up() -> bool:
    """A no-op task: submitting it starts the workers (and their imports) while the fit runs."""
    return True


def upsample_nearest(coarse: np.ndarray, size_hw: tuple[int, int], stride: int) -> np.ndarray:
    """Full-resolution ``[H, W]`` map from a working-stride map: pixel (y, x) takes cell (y // s, x // s)."""
    h, w = size_hw
    rows = np.minimum(np.arange(h) // stride, coarse.shape[0] - 1)
    cols = np.minimum(np.arange(w) // stride, coarse.shape[1] - 1)
    return coarse[rows[:, None], cols[None, :]]


def sparse_counts(values: np.ndarray) -> dict[str, int]:
    """Non-zero entries of a 1-D count vector as ``{index: count}`` (compact for the journal)."""
    nz = np.flatnonzero(values)
    return {str(int(i)): int(values[i]) for i in nz}


def label_image(job: LabelJob) -> dict:
    """Turn one image's coarse assignment into its label PNG; return its journal record.

    The record holds the PNG's SHA-256, per-label pixel counts and, with ground
    truth, the sparse confusion counts for PmIoU.
    """
    t0 = time.perf_counter()
    image = job.image if job.image is not None else read_rgb(job.image_path)
    h, w = image.shape[:2]
    dtype = np.uint8 if job.dtype == "uint8" else np.uint16
    timings = {}
    if job.mode == "superpixel":
        seg = compute_superpixels(image, job.sp_segments, job.sp_compactness, job.sp_method)
        if seg.max() >= superpixel_label_bound(job.sp_segments, job.sp_method):
            raise ValueError(f"{job.rel}: {seg.max() + 1} superpixels exceed the bound {job.num_labels}")
        label = seg.astype(dtype)
        timings["superpixels"] = time.perf_counter() - t0
    else:
        label = upsample_nearest(job.coarse, (h, w), job.stride).astype(dtype)
        if job.superpixels:
            t1 = time.perf_counter()
            seg = compute_superpixels(image, job.sp_segments, job.sp_compactness, job.sp_method)
            timings["superpixels"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            label = superpixel_vote(label, seg, job.num_labels, job.ignore_index)
            timings["vote"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    data = encode_label_png(label)
    atomic_write_bytes(job.out_path, data)
    timings["write"] = time.perf_counter() - t1
    counts = np.bincount(np.where(label == job.ignore_index, job.num_labels, label).ravel(), minlength=job.num_labels + 1)
    record = {
        "rel": job.rel,
        "label": str(Path(job.out_path).name),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": [h, w],
        "counts": sparse_counts(counts),
    }
    if job.gt_path is not None:
        gt = read_label(job.gt_path)
        if gt.shape != (h, w):
            raise ValueError(
                f"ground truth {job.gt_path} has size {gt.shape[1]}x{gt.shape[0]} but its image {job.rel} is {w}x{h}"
            )
        conf = confusion(label, gt, job.num_labels, job.num_classes, job.ignore_index, job.gt_ignore)
        nz = np.argwhere(conf)
        record["confusion"] = [[int(i), int(j), int(conf[i, j])] for i, j in nz]
    timings["cpu_total"] = time.perf_counter() - t0
    record["timings"] = timings
    return record
