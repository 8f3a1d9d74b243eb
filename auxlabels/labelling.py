"""Per-image CPU work of the assignment pass: upsample, superpixels, vote, PNG, counts, PmIoU counts
(and, with soft labels, the prior file: :mod:`.soft_labels`).

This module imports no torch, so worker processes start fast and stay small;
each worker runs single-threaded (several run side by side).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auxseg.contracts.label_folder import label_dtype, label_rel, prior_rel
from auxseg.contracts.priors import write_prior
from auxseg.files import atomic_write_bytes, sha256_file
from auxseg.images import encode_label_png, read_label
from auxseg.paths import output_file

from .config import SuperpixelConfig
from .metrics import GroundTruthError, confusion
from .soft_labels import SoftSettings, soft_prior
from .superpixels import compute_superpixels, superpixel_label_bound
from .vote import superpixel_vote


@dataclass(frozen=True)
class LabelSettings:
    """What every image of one run shares (picklable: sent to the workers with each job)."""

    labels_dir: str  # <out_dir>/labels
    num_labels: int  # K (or the superpixel bound); the ignore label is on top
    stride: int  # working stride of the coarse maps
    superpixels: SuperpixelConfig  # SLIC settings; ``enabled`` switches the vote in cluster mode
    num_classes: int | None  # M, for the PmIoU confusion counts
    gt_ignore: tuple[int, ...]  # ground-truth values left out of PmIoU
    soft: SoftSettings | None = None  # soft labels: write a prior file per image (None: off)

    @property
    def dtype(self) -> str:
        return label_dtype(self.num_labels)[0]

    @property
    def ignore_index(self) -> int:
        return label_dtype(self.num_labels)[1]


@dataclass
class LabelJob:
    """Everything one image needs after its pixels were assigned (picklable for worker processes)."""

    rel: str  # image path relative to the image root
    image: np.ndarray  # uint8 [H, W, 3]
    coarse: np.ndarray | None  # [h, w] labels at the working stride (ignore = outliers); None: superpixel mode
    gt_path: str | None
    settings: LabelSettings
    near: tuple[np.ndarray, np.ndarray] | None = None  # soft labels: k nearest centroids [k, h, w], squared distances

    @property
    def prior_path(self) -> Path:
        """The prior file's path (soft labels)."""
        return _in_out_dir(self.settings.soft.priors_dir, prior_rel(self.rel), self.rel)

    @property
    def out_path(self) -> Path:
        """The label PNG's path."""
        return _in_out_dir(self.settings.labels_dir, label_rel(self.rel), self.rel)


def _in_out_dir(folder: str, rel: str, image: str) -> Path:
    """``folder / rel``, checked to stay inside the run's out_dir (``folder``'s parent): a ``labels/`` or
    ``priors/`` folder that is a symbolic link to elsewhere is refused, not written through."""
    folder_path = Path(folder)
    return output_file(folder_path.parent, f"{folder_path.name}/{rel}", f"image {image}")


def init_worker(parent_pid: int | None = None) -> None:
    """Worker-process initialiser: one thread per numeric library, and exit when the parent dies.

    Several workers run in parallel, hence one thread each. Without a parent a
    worker would keep labelling for nobody (``kill -9`` of the run leaves no
    orphans): on Linux the kernel sends SIGTERM on the parent's death
    (PR_SET_PDEATHSIG); elsewhere a watchdog thread polls the parent's pid.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    if parent_pid is not None:
        _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            pr_set_pdeathsig = 1
            if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the prctl call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass  # no prctl: fall back to polling

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="auxlabels-parent-watchdog", daemon=True).start()


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


def _write_soft_prior(job: LabelJob, seg: np.ndarray | None, timings: dict) -> str:
    """The soft-label step (:mod:`.soft_labels`): the image's prior file, written atomically; its SHA-256."""
    t0 = time.perf_counter()
    cfg = job.settings
    ids, sq = job.near
    outlier = job.coarse == cfg.ignore_index  # the cells the hard labels ignore
    prior = soft_prior(ids.astype(np.int64), sq, outlier, seg, cfg.stride, cfg.num_labels, cfg.soft)
    write_prior(job.prior_path, prior, cfg.soft.topk)
    timings["soft_labels"] = time.perf_counter() - t0
    return sha256_file(job.prior_path)


def label_image(job: LabelJob) -> dict:
    """Turn one image's coarse assignment into its label PNG; return its journal record.

    The record holds the PNG's SHA-256, per-label pixel counts and, with ground
    truth, the sparse confusion counts for PmIoU.
    """
    t0 = time.perf_counter()
    cfg = job.settings
    image = job.image
    h, w = image.shape[:2]
    dtype = np.uint8 if cfg.dtype == "uint8" else np.uint16
    sp = cfg.superpixels
    timings = {}
    seg = None
    if job.coarse is None:  # the superpixel baseline: each superpixel is a label
        seg = compute_superpixels(image, sp.n_segments, sp.compactness, sp.method)
        if seg.max() >= superpixel_label_bound(sp.n_segments, sp.method):
            raise ValueError(f"{job.rel}: {seg.max() + 1} superpixels exceed the bound {cfg.num_labels}")
        label = seg.astype(dtype)
        timings["superpixels"] = time.perf_counter() - t0
    else:
        label = upsample_nearest(job.coarse, (h, w), cfg.stride).astype(dtype)
        if sp.enabled:
            t1 = time.perf_counter()
            seg = compute_superpixels(image, sp.n_segments, sp.compactness, sp.method)
            timings["superpixels"] = time.perf_counter() - t1
            t1 = time.perf_counter()
            label = superpixel_vote(label, seg, cfg.num_labels, cfg.ignore_index)
            timings["vote"] = time.perf_counter() - t1
    prior_sha256 = _write_soft_prior(job, seg, timings) if cfg.soft is not None and job.near is not None else None
    t1 = time.perf_counter()
    data = encode_label_png(label)
    atomic_write_bytes(job.out_path, data)
    timings["write"] = time.perf_counter() - t1
    counts = np.bincount(np.where(label == cfg.ignore_index, cfg.num_labels, label).ravel(), minlength=cfg.num_labels + 1)
    record = {
        "rel": job.rel,
        "label": job.out_path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": [h, w],
        "counts": sparse_counts(counts),
    }
    if prior_sha256 is not None:
        record["prior_sha256"] = prior_sha256
    if job.gt_path is not None:
        gt = read_label(job.gt_path)
        if gt.shape != (h, w):
            raise GroundTruthError(
                f"ground truth {job.gt_path} has size {gt.shape[1]}x{gt.shape[0]} but its image {job.rel} is {w}x{h}"
            )
        conf = confusion(label, gt, cfg.num_labels, cfg.num_classes, cfg.ignore_index, cfg.gt_ignore,
                         gt_path=job.gt_path)
        nz = np.argwhere(conf)
        record["confusion"] = [[int(i), int(j), int(conf[i, j])] for i, j in nz]
    timings["cpu_total"] = time.perf_counter() - t0
    record["timings"] = timings
    return record
