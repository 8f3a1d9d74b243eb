"""The assignment pass: every image -> nearest centroid -> outliers to ignore -> a LabelJob for the CPU workers.

Streamed image by image, so memory does not grow with the number of images.
Under torchrun the image chunks are sharded over the ranks. Each finished
image is appended to this rank's journal before the next one is counted.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from auxseg.distributed import DistInfo
from auxseg.files import append_jsonl

from .config import AuxLabelsConfig
from .extraction import Features
from .features import working_size
from .fit_state import FitState
from .inputs import ImageItem, batches, prefetched, progress_bar, read_images, same_size_groups
from .labelling import LabelJob, LabelSettings, init_worker, label_image, warm_up
from .resume import finished_images, journal_path
from .run_context import RunContext

# CPU time the workers report per image, summed into the rank's timings
_CPU_TIMINGS = ("superpixels", "vote", "write", "soft_labels", "cpu_total")


def start_workers(num_workers: int) -> tuple[cf.ProcessPoolExecutor | None, list[cf.Future]]:
    """A pool of ``num_workers`` spawned label workers and their warm-up futures; (None, []) for 0.

    Started first so that spawning the workers overlaps the fit instead of
    stalling the first images. The workers exit when this process dies.
    """
    if num_workers <= 0:
        return None, []
    pool = cf.ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn"),
                                  initializer=init_worker, initargs=(os.getpid(),))
    return pool, [pool.submit(warm_up) for _ in range(num_workers)]


def shard(items: list[ImageItem], batch_size: int, done: set[str], dist: DistInfo) -> list[list[ImageItem]]:
    """This rank's chunks that still have an unlabelled image.

    A chunk is redone whole if any member is missing, so batches (and thus
    features) are identical to an uninterrupted run.
    """
    chunks = batches(items, batch_size)
    return [c for i, c in enumerate(chunks)
            if i % dist.world_size == dist.rank and any(it.rel not in done for it in c)]


class LabelQueue:
    """Runs LabelJobs in the worker pool (or in-process without one) and journals each result.

    The queue is bounded (4 jobs per worker), so memory stays flat. Leaving the
    ``with`` block on an error drops the unstarted jobs; running ones finish
    their atomic write.
    """

    def __init__(self, workers: tuple, num_workers: int, journal: Path, done: set[str], total: int, ctx: RunContext):
        """``workers``: ``(pool, warm-up futures)`` from :func:`start_workers`; ``total``: images to label."""
        self.pool, warm = workers
        self.pending: deque = deque(warm)
        self.limit = 4 * num_workers
        self.journal = journal
        self.done = done
        self.timings = ctx.timings
        self.cpu_time = dict.fromkeys(_CPU_TIMINGS, 0.0)
        self.total, self.show = total, ctx.show

    def __enter__(self) -> LabelQueue:
        self.bar = progress_bar(self.total, "auxlabels assign", self.show)
        return self

    def submit(self, job: LabelJob) -> None:
        if self.pool is None:
            self._finish(label_image(job))
            return
        self.pending.append(self.pool.submit(label_image, job))
        while len(self.pending) > self.limit:
            self._finish(self._wait(self.pending.popleft()))

    def drain(self) -> None:
        """Wait for every submitted job."""
        while self.pending:
            self._finish(self._wait(self.pending.popleft()))

    def _wait(self, future):
        t0 = time.perf_counter()
        result = future.result()
        self.timings["wait_workers"] = self.timings.get("wait_workers", 0.0) + time.perf_counter() - t0
        return result

    def _finish(self, result: dict | bool) -> None:
        if result is True:  # a warm-up task
            return
        for k, v in result.pop("timings").items():
            self.cpu_time[k] = self.cpu_time.get(k, 0.0) + v
        # one line per finished image, in one write: a kill loses at most the unfinished ones, and a line a kill
        # tore is cut off before the next record (not glued to it)
        append_jsonl(self.journal, result)
        self.done.add(result["rel"])
        self.bar.update(1)

    def __exit__(self, *exc) -> None:
        self.bar.close()
        for fut in self.pending:
            fut.cancel()
        if exc[0] is None:
            for k, v in self.cpu_time.items():
                self.timings[k] = self.timings.get(k, 0.0) + v


class Assigner:
    """Coarse labels at the working stride: nearest reference point, then outliers to ignore.

    With soft labels, also the ``soft_labels.topk`` nearest centroids of every
    cell and their squared distances (a separate search, so the hard labels are
    exactly those of a run without soft labels).
    """

    def __init__(self, feats: Features, fit: FitState, settings: LabelSettings, *, gpu: bool, outliers: bool):
        """``gpu``: faiss search on this rank's GPU (``kmeans.gpu``); ``outliers``: ``outliers.enabled``.

        Assignment time goes to ``feats.timings`` (the run's timings).
        """
        from .kmeans import NearestCentroid

        gpu_id = int(os.environ.get("LOCAL_RANK", "0")) if gpu else None
        self.nearest = NearestCentroid(fit.refs, gpu=gpu, gpu_id=gpu_id)
        self.ref_labels, self.thresholds = fit.ref_labels, fit.thresholds
        self.outliers = outliers
        self.stride = settings.stride
        self.feats, self.timings = feats, feats.timings
        self.settings = settings
        self.topk = settings.soft.topk if settings.soft is not None else 0

    def coarse_maps(self, group: list[tuple[ImageItem, np.ndarray]]) -> list[tuple[np.ndarray, tuple | None]]:
        """Per image of a same-size group: the ``[h, w]`` label map (uint8 or uint16, ignore = outlier) and,
        with soft labels, ``(ids uint16 [k, h, w], squared distances float32 [k, h, w])`` of the k nearest
        centroids (else None)."""
        natives = self.feats.native_cached_or_computed(group)
        dtype = np.uint8 if self.settings.dtype == "uint8" else np.uint16
        maps = []
        for (_, img), native in zip(group, natives):
            rows = self.feats.working(native, img.shape[:2])
            hw = working_size(img.shape[:2], self.stride)
            t0 = time.perf_counter()
            idx, dist = self.nearest.assign(rows)
            lab = self.ref_labels[idx]
            if self.outliers:
                lab = np.where(dist > self.thresholds[lab], self.settings.ignore_index, lab)
            near = None
            if self.topk:
                ids, sq = self.nearest.search(rows, self.topk)  # [h*w, k]
                near = (ids.T.reshape(-1, *hw).astype(np.uint16), sq.T.reshape(-1, *hw))
            maps.append((lab.reshape(hw).astype(dtype), near))
            self.timings["assign"] = self.timings.get("assign", 0.0) + time.perf_counter() - t0
        return maps


def label_all(cfg: AuxLabelsConfig, ctx: RunContext, items: list[ImageItem], assigner: Assigner | None,
              settings: LabelSettings, workers: tuple) -> None:
    """Label this rank's share of the images not yet done; each result goes to the rank's journal.

    ``assigner``: None for the superpixel baseline. ``workers``: ``(pool,
    warm-up futures)`` from :func:`start_workers`.
    """
    done = finished_images(cfg, ctx.out)
    todo = shard(items, cfg.extractor.batch_size, done, ctx.dist)
    n_todo = sum(sum(it.rel not in done for it in c) for c in todo)
    _announce(items, done, n_todo, ctx.dist)
    journal = journal_path(ctx.out, ctx.dist.rank, ctx.dist.world_size)
    with LabelQueue(workers, cfg.num_workers, journal, done, n_todo, ctx) as queue:
        _label_chunks(cfg.on_bad_image, ctx, todo, queue, assigner, settings)


def _label_chunks(on_bad_image: str, ctx: RunContext, todo: list[list[ImageItem]], queue: LabelQueue,
                  assigner: Assigner | None, settings: LabelSettings) -> None:
    """Read the ``todo`` chunks (prefetched), assign each same-size group, queue the images not yet done."""

    def read(chunk):
        return read_images(chunk, on_bad_image, ctx)

    for _chunk, loaded in prefetched(todo, read):
        for group in same_size_groups(loaded):
            coarse = assigner.coarse_maps(group) if assigner is not None else [(None, None)] * len(group)
            for (it, img), (c, near) in zip(group, coarse):
                if it.rel not in queue.done:
                    gt = str(it.gt_path) if it.gt_path else None
                    queue.submit(LabelJob(rel=it.rel, image=img, coarse=c, gt_path=gt, settings=settings, near=near))
    queue.drain()


def _announce(items: list[ImageItem], done: set[str], n_todo: int, dist: DistInfo) -> None:
    """One line on stderr: how many images there are, are done, and are left (on this rank)."""
    print(f"[auxlabels] {len(items)} images, {len(done)} already labelled, {n_todo} to label"
          + (f" on rank {dist.rank}/{dist.world_size}" if dist.world_size > 1 else ""), file=sys.stderr)
