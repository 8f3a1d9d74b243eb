"""Feature extraction for the pipeline: the frozen extractor over image batches, and the fit pass's cache."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np

from auxseg.files import atomic_path
from auxseg.precision import autocast

from .config import AuxLabelsConfig


class Features:
    """Runs the extractor over images, batched, and caches the fit images' native features on disk.

    ``timings`` (a dict of seconds) is updated in place under ``forward`` and ``resize_normalise``.
    """

    def __init__(self, cfg: AuxLabelsConfig, cache_dir: Path, timings: dict, checkpoint_sha256: str | None):
        import torch

        from .features import build_extractor

        self.torch = torch
        self.cfg = cfg.extractor
        self.device = torch.device(cfg.extractor.device)
        if self.device.type == "cuda" and self.device.index is None and "LOCAL_RANK" in os.environ:
            # under torchrun each rank drives its own GPU
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        self.model = build_extractor(cfg.extractor, checkpoint_sha256).to(self.device)
        self.on_cuda = self.device.type == "cuda"
        # bf16 autocast of the forward: extractor.amp on CUDA, extractor.amp_cpu on the CPU
        self.bf16 = cfg.extractor.amp if self.on_cuda else (self.device.type == "cpu" and cfg.extractor.amp_cpu)
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
        with autocast(self.device, "bf16" if self.bf16 else "none"):
            feats = self.model(x)
        out = [f.float().cpu().numpy() for f in feats]  # float32 for K-means whatever the forward's precision
        self.timings["forward"] = self.timings.get("forward", 0.0) + time.perf_counter() - t0
        return out

    def native_cached_or_computed(self, images: list[tuple[object, np.ndarray]]) -> list[np.ndarray]:
        """Native features of a same-size group of ``(item, image)``: from the cache when all are there."""
        natives = [self.cached(it.rel) for it, _ in images]
        if any(n is None for n in natives):
            natives = self.native([img for _, img in images])
        return natives

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
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, feats)
        except OSError as err:  # disk full and the like: the cache is an optimisation, the run goes on
            self.cache_budget = 0
            warnings.warn(f"feature cache switched off: cannot write {path} ({err}); features of the fit images "
                          "are computed again in the assignment pass", UserWarning, stacklevel=2)
            return
        self.cache_used += feats.nbytes

    def working(self, native: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
        """Working-stride, L2-normalised features as ``[h*w, D]`` float32 rows."""
        from .features import working_features

        t0 = time.perf_counter()
        f = working_features(self.torch.from_numpy(native)[None], size_hw, self.cfg.stride)[0]  # [h, w, D]
        rows = np.ascontiguousarray(f.reshape(-1, f.shape[-1]).numpy())  # [h*w, D]
        self.timings["resize_normalise"] = self.timings.get("resize_normalise", 0.0) + time.perf_counter() - t0
        return rows
