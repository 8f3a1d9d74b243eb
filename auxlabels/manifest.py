"""The label folder's self-description: the started manifest, per-rank timings, PmIoU and the complete manifest.

The format is the contract of docs/contracts.md section 1
(:mod:`auxseg.contracts.label_folder`); ``complete: true`` is written last.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from auxseg.config import save_config, to_dict
from auxseg.contracts.common import versions
from auxseg.contracts.label_folder import (
    MANIFEST_FORMAT,
    LabelledImages,
    label_folder_manifest,
    label_rel,
    labels_digest,
    prior_rel,
)
from auxseg.contracts.priors import prior_manifest_entry
from auxseg.files import atomic_write_json, read_json_object

from .config import AuxLabelsConfig
from .fit_state import FitState
from .inputs import ImageItem, Inputs
from .metrics import format_report, pmiou
from .resume import RunIdentity, read_journal
from .run_context import RunContext


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_started(cfg: AuxLabelsConfig, out: Path, fingerprint: str, previous: dict | None) -> None:
    """Create ``out`` with the resolved ``config.yaml`` and, for a new run, a ``complete: false`` manifest."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if previous is None:
        atomic_write_json(out / "manifest.json", {"format": MANIFEST_FORMAT, "complete": False,
                                                  "fingerprint": fingerprint, "created": _now()})


def write_rank_timings(ctx: RunContext) -> None:
    """This rank's phase timings (seconds) and skipped images, for rank 0 to merge."""
    atomic_write_json(ctx.out / f"timings.rank{ctx.dist.rank}.json", {"timings": ctx.timings, "skipped": ctx.skipped})


def _merged_timings(out: Path, world: int) -> tuple[dict, dict]:
    """Timings summed over this run's ranks, and every rank's skipped images."""
    timings: dict = {}
    skipped: dict = {}
    for rank in range(world):  # files of an earlier run with more ranks are not this run's
        path = out / f"timings.rank{rank}.json"
        if not path.is_file():
            continue
        data = read_json_object(path)
        for k, v in data["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
        skipped.update(data["skipped"])
    return timings, skipped


def _label_statistics(records: dict, labelled: list[ImageItem], num_labels: int, num_classes: int | None):
    """Pixel counts per label ``[K + 1]`` (last: ignore), the PmIoU confusion ``[K + 1, M]`` (or None) and its image count."""
    counts = np.zeros(num_labels + 1, dtype=np.int64)
    conf = None
    n_eval = 0
    for it in labelled:
        rec = records[it.rel]
        for k, v in rec["counts"].items():
            counts[int(k)] += v
        if "confusion" not in rec:
            continue
        if conf is None:
            conf = np.zeros((num_labels + 1, num_classes), dtype=np.int64)
        for i, j, c in rec["confusion"]:
            conf[i, j] += c
        n_eval += 1
    return counts, conf, n_eval


def _write_pmiou(cfg: AuxLabelsConfig, out: Path, conf: np.ndarray | None, n_eval: int, timings: dict) -> dict | None:
    """PmIoU of the labelled images with ground truth: ``pmiou.json`` and a table on stderr; None without any."""
    if conf is None:
        return None
    t0 = time.perf_counter()
    report = pmiou(conf, cfg.class_names or None)
    report.update(num_images=n_eval, scope="global" if cfg.clusterer != "superpixel" else "image")
    timings["pmiou"] = time.perf_counter() - t0
    atomic_write_json(out / "pmiou.json", report)
    print(format_report(report), file=sys.stderr)
    return report


def _method_sections(cfg: AuxLabelsConfig, fit: FitState | None, num_labels: int) -> dict:
    """The manifest's ``clustering``, ``centroids``, ``outliers`` and ``superpixels`` entries, in that order."""
    return {
        "clustering": None if fit is None else {
            **fit.info,
            "k": int(num_labels),
            "seed": cfg.kmeans.seed if cfg.clusterer == "kmeans" else cfg.dbscan.seed,
            "niter": cfg.kmeans.niter if cfg.clusterer == "kmeans" else None,
        },
        "centroids": "centroids.npy" if fit is not None else None,
        "outliers": {
            "enabled": cfg.outliers.enabled and fit is not None,
            "fraction": cfg.outliers.fraction,
            "mode": cfg.outliers.mode,
            "thresholds": None if fit is None else [None if not np.isfinite(t) else float(t) for t in fit.thresholds],
        },
        "superpixels": {"enabled": cfg.superpixels.enabled, "method": cfg.superpixels.method,
                        "n_segments": cfg.superpixels.n_segments, "compactness": cfg.superpixels.compactness},
    }


def _prior_section(cfg: AuxLabelsConfig, fit: FitState | None, records: dict, labelled: list[ImageItem]) -> dict:
    """``{"prior": ...}`` (docs/contracts.md section 1b) with soft labels, else ``{}`` (the key is absent)."""
    soft = cfg.soft_labels
    if not soft.enabled or fit is None:
        return {}
    pairs = [(prior_rel(it.rel), records[it.rel]["prior_sha256"]) for it in labelled]
    return {"prior": prior_manifest_entry(
        min(soft.topk, fit.num_labels), cfg.extractor.stride, pairs,
        source="auxlabels.soft_labels", temperature=soft.temperature, outlier_temperature=soft.outlier_temperature,
        superpixel_weight=soft.superpixel_weight if cfg.superpixels.enabled else 0.0,
        distance_scale=fit.soft_distance_scale)}


def finish(cfg: AuxLabelsConfig, ctx: RunContext, inputs: Inputs, fit: FitState | None, num_labels: int,
           extractor: dict | None, identity: RunIdentity) -> dict:
    """Merge the journals, compute PmIoU, write pmiou.json and the complete manifest; return the manifest.

    ``fit``: None for the superpixel baseline; ``num_labels``: K (the fit's, or
    the superpixel bound); ``extractor``: the extractor's description (None for
    the superpixel baseline). Timings and skipped images are merged from every
    rank's ``timings.rank<r>.json``.
    """
    t_finish = time.perf_counter()
    out, world = ctx.out, ctx.dist.world_size
    records = read_journal(out)
    timings, skipped = _merged_timings(out, world)
    labelled = [it for it in inputs.items if it.rel in records and it.rel not in skipped]
    missing = [it.rel for it in inputs.items if it.rel not in records and it.rel not in skipped]
    if missing:
        raise RuntimeError(f"{len(missing)} images have no label after the assignment pass (first: {missing[0]})")
    counts, conf, n_eval = _label_statistics(records, labelled, num_labels, cfg.num_classes)
    report = _write_pmiou(cfg, out, conf, n_eval, timings)
    pairs = [(label_rel(it.rel), records[it.rel]["sha256"]) for it in labelled]
    timings["finish"] = time.perf_counter() - t_finish
    timings["total_wall"] = time.perf_counter() - ctx.t_start
    listed = LabelledImages(
        inputs.root, [it.rel for it in labelled], labels_digest(pairs),
        # labelled only to measure PmIoU; consumers that train must leave them out (contracts section 1)
        eval_images=[it.rel for it in labelled if it.is_eval])
    manifest = label_folder_manifest(
        num_labels=num_labels, scope="image" if cfg.clusterer == "superpixel" else "global", labelled=listed, **{
        "clusterer": cfg.clusterer,
        "extractor": extractor,
        "working_stride": cfg.extractor.stride if cfg.clusterer != "superpixel" else None,
        **_method_sections(cfg, fit, num_labels),
        **_prior_section(cfg, fit, records, labelled),
        "label_pixel_counts": counts[:num_labels].tolist(),
        "ignored_pixels": int(counts[num_labels]),
        "ignored_share": float(counts[num_labels] / max(1, counts.sum())),
        "skipped": [{"path": rel, "error": err} for rel, err in sorted(skipped.items())],
        "pmiou": None if report is None else {"pmiou": report["pmiou"], "majority_miou": report["majority_miou"],
                                              "num_images": n_eval, "file": "pmiou.json"},
        "timings": timings,
        "world_size": world,
        "versions": versions(),
        "config": to_dict(cfg),
        "fingerprint": identity.fingerprint,
        "created": (identity.previous or {}).get("created", _now()),
        "finished": _now(),
    })
    atomic_write_json(out / "manifest.json", manifest)
    _drop_cache(cfg, out)
    return manifest


def _drop_cache(cfg: AuxLabelsConfig, out: Path) -> None:
    """Delete the fit pass's feature cache unless ``keep_cache``."""
    if not cfg.keep_cache and (out / "cache").is_dir():
        for p in (out / "cache").glob("*.npy"):
            p.unlink()
        (out / "cache").rmdir()
