"""The auxlabels stage top to bottom: images -> features -> clusters -> cleaned label PNGs + manifest + PmIoU.

Phases (method.md, Stage 1):

1. **fit** -- extract features of ``n_fit`` images (a seeded choice), sample
   pixels, fit K-means (or DBSCAN), and estimate the outlier threshold on a
   held-out part of the sample. Runs once (rank 0 under torchrun).
2. **assign** -- for every image: features -> nearest centroid at the working
   stride -> outliers to ignore; then, in CPU worker processes, upsample to
   full resolution, SLIC superpixel vote, write the PNG atomically. Streamed
   image by image: memory does not grow with the number of images. Under
   torchrun the images are sharded over the ranks.
3. **finish** -- PmIoU on the images with ground truth, ``manifest.json`` with
   ``complete: true``.

Resume: each finished image is appended to ``progress*.jsonl`` with its PNG's
SHA-256. A rerun with the same settings reuses the centroids and skips exactly
the images whose PNG exists and matches its record; everything else is redone.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from auxseg.config import ConfigError, save_config, to_dict
from auxseg.contracts.common import versions
from auxseg.contracts.label_folder import MANIFEST_FORMAT, label_rel, labels_digest
from auxseg.io import (
    ImageReadError,
    atomic_path,
    atomic_write_json,
    list_images,
    read_json,
    read_rgb,
)

from .config import AuxLabelsConfig, resolve_k, validate
from .features import working_size
from .labelling import LabelJob, init_worker, label_image, warm_up
from .metrics import format_report, pmiou
from .superpixels import superpixel_label_bound

# settings that do not change the labels; everything else must match to resume
_NOT_FINGERPRINTED = ("num_workers", "progress", "resume", "keep_cache", "out_dir", "on_bad_image")


@dataclass(frozen=True)
class ImageItem:
    """One input image: its path relative to the image root, absolute path and optional ground truth."""

    rel: str
    path: Path
    gt_path: Path | None
    is_eval: bool = False  # from eval_image_dir: labelled and evaluated, not fitted on by default


# ----------------------------------------------------------------------------- inputs


def _read_list(list_file: Path, root: Path) -> list[Path]:
    if not list_file.is_file():
        raise FileNotFoundError(f"image_list not found: {list_file}")
    rels = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not (root / line).is_file():
            raise FileNotFoundError(f"{list_file}:{n}: image {root / line} not found")
        rels.append(Path(line))
    return sorted(set(rels))


def collect_images(cfg: AuxLabelsConfig) -> tuple[Path, list[ImageItem]]:
    """The image root and the sorted input items (labelled images plus optional eval images).

    With ``eval_image_dir`` the root is the common parent of both folders, so
    relative paths stay unique (``train/x.png``, ``val/y.png``).
    """
    image_dir = Path(cfg.image_dir).resolve()
    groups = [(image_dir, cfg.image_list, cfg.gt_dir, False)]
    if cfg.eval_image_dir is not None:
        groups.append((Path(cfg.eval_image_dir).resolve(), None, cfg.eval_gt_dir, True))
    root = Path(os.path.commonpath([g[0] for g in groups])) if len(groups) > 1 else image_dir
    items: dict[str, ImageItem] = {}
    for folder, list_file, gt_dir, is_eval in groups:
        rels = _read_list(Path(list_file), folder) if list_file else list_images(folder)
        if not rels:
            raise FileNotFoundError(f"no images found in {folder}" + (f" (list {list_file})" if list_file else ""))
        gt_root = Path(gt_dir).resolve() if gt_dir else None
        if gt_root is not None and not gt_root.is_dir():
            raise FileNotFoundError(f"ground-truth folder not found: {gt_root}")
        for rel in rels:
            gt_path = None
            if gt_root is not None:
                cand = gt_root / rel.with_suffix(".png")
                # images without ground truth are labelled but not evaluated
                gt_path = cand if cand.is_file() else None
            key = (folder / rel).relative_to(root).as_posix()
            items[key] = ImageItem(key, folder / rel, gt_path, is_eval)
    has_gt = cfg.gt_dir is not None or cfg.eval_gt_dir is not None
    if has_gt and not any(it.gt_path for it in items.values()):
        raise FileNotFoundError(
            f"no ground-truth PNG matches any image (gt_dir={cfg.gt_dir}, eval_gt_dir={cfg.eval_gt_dir}); "
            "ground truth must have the image's relative path with a .png suffix"
        )
    return root, [items[k] for k in sorted(items)]


# ----------------------------------------------------------------------------- run state


def _fingerprint(cfg: AuxLabelsConfig, items: list[ImageItem]) -> str:
    data = to_dict(cfg)
    for key in _NOT_FINGERPRINTED:
        data.pop(key, None)
    ckpt = cfg.extractor.checkpoint
    if ckpt and Path(ckpt).is_file():
        from auxseg.io import sha256_file

        data["checkpoint_sha256"] = sha256_file(ckpt)
    data["images"] = [(it.rel, str(it.gt_path) if it.gt_path else None) for it in items]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _read_journal(out: Path) -> dict[str, dict]:
    """Records of finished images from every ``progress*.jsonl`` (a torn last line is ignored)."""
    records: dict[str, dict] = {}
    for path in sorted(out.glob("progress*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(rec, dict) and "rel" in rec:
                records[rec["rel"]] = rec
    return records


def _verified(out: Path, records: dict[str, dict]) -> dict[str, dict]:
    """The records whose label PNG exists and has the recorded SHA-256."""
    from auxseg.io import sha256_file

    good = {}
    for rel, rec in records.items():
        if "sha256" not in rec:
            continue
        png = out / "labels" / label_rel(rel)
        if png.is_file() and sha256_file(png) == rec["sha256"]:
            good[rel] = rec
    return good


class _Dist:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1); a no-op single process otherwise."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started_here = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")  # coordination only: no tensors cross the ranks
                self.started_here = True

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.started_here:
            import torch.distributed as dist

            dist.destroy_process_group()


# ----------------------------------------------------------------------------- features


class _Features:
    """Runs the extractor over images, batched, and caches the fit images' native features on disk."""

    def __init__(self, cfg: AuxLabelsConfig, cache_dir: Path, timings: dict):
        import torch

        from .features import build_extractor

        self.torch = torch
        self.cfg = cfg.extractor
        self.device = torch.device(cfg.extractor.device)
        if self.device.type == "cuda" and self.device.index is None and "LOCAL_RANK" in os.environ:
            # under torchrun each rank drives its own GPU
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        self.model = build_extractor(cfg.extractor).to(self.device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda and cfg.extractor.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.cache_dir = cache_dir
        self.cache_budget = int(cfg.feature_cache_gb * 2**30)
        self.cache_used = sum(p.stat().st_size for p in cache_dir.glob("*.npy")) if cache_dir.is_dir() else 0
        self.timings = timings

    def _cache_path(self, rel: str) -> Path:
        return self.cache_dir / (hashlib.sha1(rel.encode()).hexdigest() + ".npy")

    def native(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Native-stride features ``[D, h, w]`` (float32) of same-size images, one forward pass."""
        torch = self.torch
        t0 = time.perf_counter()
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(self.device)  # [B, 3, H, W]
        if self.cfg.max_side is not None and max(x.shape[-2:]) > self.cfg.max_side:
            scale = self.cfg.max_side / max(x.shape[-2:])
            size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
            x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", antialias=True)
        if self.on_cuda and self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.on_cuda and self.cfg.amp):
            feats = self.model(x)
        out = [f.float().cpu().numpy() for f in feats]
        self.timings["forward"] = self.timings.get("forward", 0.0) + time.perf_counter() - t0
        return out

    def cached(self, rel: str) -> np.ndarray | None:
        """The fit pass's native features of an image, or None when not cached."""
        path = self._cache_path(rel)
        if path.is_file():
            try:
                return np.load(path)
            except (OSError, ValueError):
                return None  # a damaged cache entry is recomputed
        return None

    def store(self, rel: str, feats: np.ndarray) -> None:
        """Cache native features ``[D, h, w]`` on disk (atomically) while within the budget."""
        if self.cache_used + feats.nbytes > self.cache_budget:
            return
        path = self._cache_path(rel)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, feats)
        self.cache_used += feats.nbytes

    def working(self, native: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        """Working-stride, L2-normalised features as ``[h*w, D]`` float32 rows."""
        from .features import working_features

        t0 = time.perf_counter()
        f = working_features(self.torch.from_numpy(native)[None], size_hw, self.cfg.stride)[0]  # [h, w, D]
        rows = np.ascontiguousarray(f.reshape(-1, f.shape[-1]).numpy())  # [h*w, D]
        self.timings["resize_normalise"] = self.timings.get("resize_normalise", 0.0) + time.perf_counter() - t0
        return rows


def _read_images(items: list[ImageItem], on_bad: str, skipped: dict, timings: dict) -> list[tuple[ImageItem, np.ndarray]]:
    out = []
    for it in items:
        t0 = time.perf_counter()
        try:
            out.append((it, read_rgb(it.path)))
        except ImageReadError as err:
            if on_bad == "stop":
                raise
            if it.rel not in skipped:
                print(f"[auxlabels] skipping unreadable image: {err}", file=sys.stderr)
            skipped[it.rel] = str(err)
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t0
    return out


def _prefetched(chunks: list[list[ImageItem]], read):
    """Yield ``(chunk, read(chunk))``, decoding the next chunk in a thread while the caller works.

    PIL releases the GIL while decoding, so reading overlaps the forward pass.
    """
    if not chunks:
        return
    with cf.ThreadPoolExecutor(max_workers=1) as reader:
        nxt = reader.submit(read, chunks[0])
        for i, chunk in enumerate(chunks):
            loaded = nxt.result()
            if i + 1 < len(chunks):
                nxt = reader.submit(read, chunks[i + 1])
            yield chunk, loaded


def _same_size_groups(loaded: list[tuple[ImageItem, np.ndarray]]) -> list[list[tuple[ImageItem, np.ndarray]]]:
    groups: dict[tuple, list] = {}
    for it, img in loaded:
        groups.setdefault(img.shape, []).append((it, img))
    return list(groups.values())


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


# ----------------------------------------------------------------------------- fit


def _sample_indices(n_pixels: int, n_fit: int, n_calib: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint fit and calibration pixel indices of one image, seeded by (seed, image index)."""
    rng = np.random.default_rng([seed, index])
    take = min(n_pixels, n_fit + n_calib)
    perm = rng.permutation(n_pixels)[:take]
    # a small image gives fewer pixels than asked: split them in the requested proportion
    n_fit_here = min(take, max(1, round(take * n_fit / (n_fit + n_calib))))
    return perm[:n_fit_here], perm[n_fit_here:]


def _fit(cfg: AuxLabelsConfig, items: list[ImageItem], feats: _Features, num_labels: int | None, skipped: dict, timings: dict, show: bool) -> dict:
    """Sample pixels from the fit images, fit the clusterer, estimate the outlier thresholds."""
    from .kmeans import NearestCentroid
    from .outliers import outlier_thresholds

    kind = cfg.clusterer
    seed = cfg.kmeans.seed if kind == "kmeans" else cfg.dbscan.seed
    # the fit sees image_dir's images only, unless asked: eval images are labelled, not learned from
    pool_items = [it for it in items if cfg.fit_on_eval_images or not it.is_eval]
    n_fit = min(cfg.kmeans.n_fit, len(pool_items))
    order = np.random.default_rng(seed).permutation(len(pool_items))[:n_fit]
    fit_items = [pool_items[i] for i in sorted(order)]
    budget = cfg.kmeans.fit_pixels if kind == "kmeans" else cfg.dbscan.num_samples
    per_image = math.ceil(budget / n_fit)
    calib_per_image = math.ceil(per_image * cfg.kmeans.calib_fraction) if cfg.outliers.enabled else 0
    # filled in place: a list of per-image arrays plus a concatenation would hold the sample twice
    sample = calib = None
    n_sample = n_calib = 0
    index_of = {it.rel: i for i, it in enumerate(items)}
    bar = _progress(None, len(fit_items), "auxlabels fit: features", show)
    def read(batch):
        return _read_images(batch, cfg.on_bad_image, skipped, timings)

    for batch, loaded in _prefetched(_batches(fit_items, cfg.extractor.batch_size), read):
        for group in _same_size_groups(loaded):
            natives = feats.native([img for _, img in group])
            for (it, img), native in zip(group, natives):
                feats.store(it.rel, native)
                rows = feats.working(native, img.shape[:2])
                fi, ci = _sample_indices(len(rows), per_image, calib_per_image, seed, index_of[it.rel])
                if sample is None:
                    sample = np.empty((len(fit_items) * per_image, rows.shape[1]), np.float32)
                    calib = np.empty((len(fit_items) * calib_per_image, rows.shape[1]), np.float32)
                sample[n_sample : n_sample + len(fi)] = rows[fi]
                calib[n_calib : n_calib + len(ci)] = rows[ci]
                n_sample += len(fi)
                n_calib += len(ci)
        bar.update(len(batch))
    bar.close()
    if sample is None:
        raise ValueError("no readable image to fit on (every fit image was skipped)")
    sample, calib = sample[:n_sample], calib[:n_calib]
    t0 = time.perf_counter()
    info: dict = {"n_fit_images": len(fit_items) - sum(it.rel in skipped for it in fit_items),
                  "fit_pixels": int(len(sample)), "calib_pixels": int(len(calib)), "pixels_per_image": per_image}
    if kind == "kmeans":
        from .kmeans import fit_kmeans

        if cfg.kmeans.threads is not None:
            import faiss

            faiss.omp_set_num_threads(cfg.kmeans.threads)
        print(f"[auxlabels] K-means: K={num_labels} on {len(sample)} pixels x {sample.shape[1]} dims", file=sys.stderr)
        centroids = fit_kmeans(sample, num_labels, cfg.kmeans.niter, cfg.kmeans.nredo, cfg.kmeans.seed, cfg.kmeans.gpu)
        refs, ref_labels = centroids, np.arange(num_labels)
    else:
        from .dbscan import fit_dbscan

        print(f"[auxlabels] DBSCAN on {len(sample)} pixels x {sample.shape[1]} dims", file=sys.stderr)
        refs, ref_labels, eps = fit_dbscan(sample, cfg.dbscan.eps, cfg.dbscan.min_samples, cfg.dbscan.eps_quantile)
        num_labels = int(ref_labels.max()) + 1
        centroids = np.stack([refs[ref_labels == k].mean(axis=0) for k in range(num_labels)])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
        info.update(eps=eps, core_samples=int(len(refs)))
    timings["fit"] = time.perf_counter() - t0
    thresholds = np.full(num_labels, np.inf)
    if cfg.outliers.enabled and len(calib):
        idx, dist = NearestCentroid(refs).assign(calib)
        thresholds = outlier_thresholds(dist, ref_labels[idx], num_labels, cfg.outliers.fraction, cfg.outliers.mode)
    info["num_labels"] = int(num_labels)
    return {"centroids": centroids.astype(np.float32), "refs": refs.astype(np.float32),
            "ref_labels": ref_labels.astype(np.int64), "thresholds": thresholds, "info": info}


# ----------------------------------------------------------------------------- run


def _config_summary(cfg: AuxLabelsConfig) -> dict:
    return to_dict(cfg)


def run(cfg: AuxLabelsConfig) -> dict:
    """Run the whole stage and return the manifest (also written to ``<out_dir>/manifest.json``).

    Under torchrun (``WORLD_SIZE > 1``) rank 0 fits, every rank labels its shard
    of the images, and rank 0 writes the manifest; every rank returns it.
    """
    validate(cfg)
    t_start = time.perf_counter()
    dist = _Dist()
    pool, warm = None, []
    if cfg.num_workers > 0:
        # started first so that spawning the workers overlaps the fit instead of stalling the first images
        pool = cf.ProcessPoolExecutor(cfg.num_workers, mp_context=mp.get_context("spawn"), initializer=init_worker)
        warm = [pool.submit(warm_up) for _ in range(cfg.num_workers)]
    try:
        return _run(cfg, dist, t_start, pool, warm)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        dist.close()


def _run(cfg: AuxLabelsConfig, dist: _Dist, t_start: float, pool, warm: list) -> dict:
    out = Path(cfg.out_dir).resolve()
    show = cfg.progress and dist.rank == 0
    root, items = collect_images(cfg)
    fingerprint = _fingerprint(cfg, items)
    manifest_path = out / "manifest.json"
    state_path = out / "fit_state.npz"
    previous = None
    has_work = state_path.is_file() or any(out.glob("progress*.jsonl"))
    if manifest_path.is_file():
        previous = read_json(manifest_path)
        if previous.get("fingerprint") != fingerprint and not has_work:
            previous = None  # a run that failed before producing anything: start afresh
        elif previous.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{manifest_path}: this folder holds labels made with other settings or images; "
                "choose another out_dir (nothing was changed)"
            )
        if previous is not None and not cfg.resume:
            raise ConfigError(f"{manifest_path}: out_dir already holds this run; set resume=true to reuse it")
    timings: dict = {}
    skipped: dict[str, str] = {}

    mode = cfg.clusterer
    if mode == "superpixel":
        num_labels = superpixel_label_bound(cfg.superpixels.n_segments, cfg.superpixels.method)
    elif mode == "kmeans":
        num_labels = resolve_k(cfg)
    else:
        num_labels = None  # DBSCAN decides

    cache_dir = out / "cache"
    # built before anything is written: a wrong checkpoint leaves no half-made folder behind
    feats = _Features(cfg, cache_dir, timings) if mode != "superpixel" else None
    if dist.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if previous is None:
            atomic_write_json(manifest_path, {"format": MANIFEST_FORMAT, "complete": False, "fingerprint": fingerprint,
                                              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    fit: dict | None = None
    timings["setup"] = time.perf_counter() - t_start  # inputs, fingerprint, building the extractor
    if mode != "superpixel":
        if state_path.is_file():
            with np.load(state_path) as z:
                fit = {k: z[k] for k in z.files}
            fit["info"] = json.loads(str(fit["info"]))
        elif dist.rank == 0:
            fit = _fit(cfg, items, feats, num_labels, skipped, timings, show)
            with atomic_path(out / "centroids.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, fit["centroids"])
            with atomic_path(state_path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, centroids=fit["centroids"], refs=fit["refs"], ref_labels=fit["ref_labels"],
                             thresholds=fit["thresholds"], info=json.dumps(fit["info"]))
        dist.barrier()
        if fit is None:  # other ranks: rank 0 has written the fit state
            with np.load(state_path) as z:
                fit = {k: z[k] for k in z.files}
            fit["info"] = json.loads(str(fit["info"]))
        num_labels = int(fit["info"]["num_labels"])
    dtype = "uint8" if num_labels <= 254 else "uint16"
    ignore_index = 255 if dtype == "uint8" else 65535

    # ---- assignment pass
    # only the names are kept in memory: the records are re-read from the journal at the end
    done = set(_verified(out, _read_journal(out))) if cfg.resume else set()
    chunks = _batches(items, cfg.extractor.batch_size)
    # a chunk is redone whole if any member is missing, so batches (and thus features) are identical
    todo = [c for i, c in enumerate(chunks) if i % dist.world == dist.rank and any(it.rel not in done for it in c)]
    journal = out / (f"progress.rank{dist.rank}.jsonl" if dist.world > 1 else "progress.jsonl")
    nearest = None
    if fit is not None:
        from .kmeans import NearestCentroid

        gpu_id = int(os.environ.get("LOCAL_RANK", "0")) if cfg.kmeans.gpu else None
        nearest = NearestCentroid(fit["refs"], gpu=cfg.kmeans.gpu, gpu_id=gpu_id)
    n_todo = sum(sum(it.rel not in done for it in c) for c in todo)
    print(f"[auxlabels] {len(items)} images, {len(done)} already labelled, {n_todo} to label"
          + (f" on rank {dist.rank}/{dist.world}" if dist.world > 1 else ""), file=sys.stderr)
    pending: deque = deque(warm)
    cpu_time = {"superpixels": 0.0, "vote": 0.0, "write": 0.0, "cpu_total": 0.0}
    bar = _progress(None, n_todo, "auxlabels assign", show)
    with open(journal, "a") as jf:

        def finish(result: dict | bool) -> None:
            if result is True:  # a warm-up task
                return
            for k, v in result.pop("timings").items():
                cpu_time[k] = cpu_time.get(k, 0.0) + v
            jf.write(json.dumps(result) + "\n")
            jf.flush()  # one line per finished image: a kill loses at most the unfinished ones
            done.add(result["rel"])
            bar.update(1)

        def submit(job: LabelJob) -> None:
            if pool is None:
                finish(label_image(job))
                return
            pending.append(pool.submit(label_image, job))
            while len(pending) > 4 * cfg.num_workers:  # bounded queue: memory stays flat
                finish(wait(pending.popleft()))

        def wait(future):
            t0 = time.perf_counter()
            result = future.result()
            timings["wait_workers"] = timings.get("wait_workers", 0.0) + time.perf_counter() - t0
            return result

        try:
            def read(chunk):
                return _read_images(chunk, cfg.on_bad_image, skipped, timings)

            for _chunk, loaded in _prefetched(todo, read):
                for group in _same_size_groups(loaded):
                    if mode == "superpixel":
                        coarse_maps = [None] * len(group)
                    else:
                        natives = [feats.cached(it.rel) for it, _ in group]
                        if any(n is None for n in natives):
                            natives = feats.native([img for _, img in group])
                        coarse_maps = []
                        for (_, img), native in zip(group, natives):
                            rows = feats.working(native, img.shape[:2])
                            t0 = time.perf_counter()
                            idx, dist_ = nearest.assign(rows)
                            lab = fit["ref_labels"][idx]
                            if cfg.outliers.enabled:
                                lab = np.where(dist_ > fit["thresholds"][lab], ignore_index, lab)
                            coarse = lab.reshape(working_size(img.shape[:2], cfg.extractor.stride))
                            coarse_maps.append(coarse.astype(np.uint8 if dtype == "uint8" else np.uint16))
                            timings["assign"] = timings.get("assign", 0.0) + time.perf_counter() - t0
                    for (it, img), coarse in zip(group, coarse_maps):
                        if it.rel in done:
                            continue
                        submit(LabelJob(
                            rel=it.rel, image=img, image_path=str(it.path),
                            coarse=coarse, stride=cfg.extractor.stride,
                            out_path=str(out / "labels" / label_rel(it.rel)),
                            gt_path=str(it.gt_path) if it.gt_path else None,
                            mode="superpixel" if mode == "superpixel" else "cluster",
                            num_labels=num_labels, ignore_index=ignore_index, dtype=dtype,
                            superpixels=cfg.superpixels.enabled, sp_method=cfg.superpixels.method,
                            sp_segments=cfg.superpixels.n_segments, sp_compactness=cfg.superpixels.compactness,
                            num_classes=cfg.num_classes, gt_ignore=tuple(cfg.gt_ignore_values),
                        ))
            while pending:
                finish(wait(pending.popleft()))
        finally:
            bar.close()
            for fut in pending:  # on error: unstarted jobs are dropped, running ones finish their atomic write
                fut.cancel()
    for k, v in cpu_time.items():
        timings[k] = timings.get(k, 0.0) + v
    timings_path = out / f"timings.rank{dist.rank}.json"
    atomic_write_json(timings_path, {"timings": timings, "skipped": skipped})
    dist.barrier()
    if dist.rank == 0:
        manifest = _finish(cfg, out, root, items, fingerprint, num_labels, ignore_index, dtype, fit, feats,
                           dist.world, t_start, previous)
    dist.barrier()
    if dist.rank != 0:
        manifest = read_json(manifest_path)
    return manifest


def _finish(cfg, out, root, items, fingerprint, num_labels, ignore_index, dtype, fit, feats, world, t_start, previous) -> dict:
    """Merge the journals, compute PmIoU, write pmiou.json and the complete manifest."""
    t_finish = time.perf_counter()
    records = _read_journal(out)
    timings: dict = {}
    skipped: dict = {}
    for rank in range(world):  # files of an earlier run with more ranks are not this run's
        path = out / f"timings.rank{rank}.json"
        if not path.is_file():
            continue
        data = read_json(path)
        for k, v in data["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
        skipped.update(data["skipped"])
    labelled = [it for it in items if it.rel in records and it.rel not in skipped]
    missing = [it.rel for it in items if it.rel not in records and it.rel not in skipped]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no label after the assignment pass (first: {missing[0]})")
    counts = np.zeros(num_labels + 1, dtype=np.int64)
    conf = None
    n_eval = 0
    for it in labelled:
        rec = records[it.rel]
        for k, v in rec["counts"].items():
            counts[int(k)] += v
        if "confusion" in rec:
            if conf is None:
                conf = np.zeros((num_labels + 1, cfg.num_classes), dtype=np.int64)
            for i, j, c in rec["confusion"]:
                conf[i, j] += c
            n_eval += 1
    report = None
    if conf is not None:
        t0 = time.perf_counter()
        report = pmiou(conf, cfg.class_names or None)
        report.update(num_images=n_eval, scope="global" if cfg.clusterer != "superpixel" else "image")
        timings["pmiou"] = time.perf_counter() - t0
        atomic_write_json(out / "pmiou.json", report)
        print(format_report(report), file=sys.stderr)
    pairs = [(label_rel(it.rel), records[it.rel]["sha256"]) for it in labelled]
    timings["finish"] = time.perf_counter() - t_finish
    timings["total_wall"] = time.perf_counter() - t_start
    manifest = {
        "format": MANIFEST_FORMAT,
        "num_labels": int(num_labels),
        "ignore_index": int(ignore_index),
        "dtype": dtype,
        "scope": "image" if cfg.clusterer == "superpixel" else "global",
        "image_root": str(root),
        "images": [it.rel for it in labelled],
        # labelled only to measure PmIoU; consumers that train must leave them out (contracts section 1)
        "eval_images": [it.rel for it in labelled if it.is_eval],
        "labels_sha256": labels_digest(pairs),
        "complete": True,
        "clusterer": cfg.clusterer,
        "extractor": feats.model.description if feats is not None else None,
        "working_stride": cfg.extractor.stride if cfg.clusterer != "superpixel" else None,
        "clustering": None if fit is None else {
            **fit["info"],
            "k": int(num_labels),
            "seed": cfg.kmeans.seed if cfg.clusterer == "kmeans" else cfg.dbscan.seed,
            "niter": cfg.kmeans.niter if cfg.clusterer == "kmeans" else None,
        },
        "centroids": "centroids.npy" if fit is not None else None,
        "outliers": {
            "enabled": cfg.outliers.enabled and fit is not None,
            "fraction": cfg.outliers.fraction,
            "mode": cfg.outliers.mode,
            "thresholds": None if fit is None else [None if not np.isfinite(t) else float(t) for t in fit["thresholds"]],
        },
        "superpixels": {"enabled": cfg.superpixels.enabled, "method": cfg.superpixels.method,
                        "n_segments": cfg.superpixels.n_segments, "compactness": cfg.superpixels.compactness},
        "label_pixel_counts": counts[:num_labels].tolist(),
        "ignored_pixels": int(counts[num_labels]),
        "ignored_share": float(counts[num_labels] / max(1, counts.sum())),
        "skipped": [{"path": rel, "error": err} for rel, err in sorted(skipped.items())],
        "pmiou": None if report is None else {"pmiou": report["pmiou"], "majority_miou": report["majority_miou"],
                                              "num_images": n_eval, "file": "pmiou.json"},
        "timings": timings,
        "world_size": world,
        "versions": versions(),
        "config": _config_summary(cfg),
        "fingerprint": fingerprint,
        "created": (previous or {}).get("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(out / "manifest.json", manifest)
    if not cfg.keep_cache and (out / "cache").is_dir():
        for p in (out / "cache").glob("*.npy"):
            p.unlink()
        (out / "cache").rmdir()
    return manifest
