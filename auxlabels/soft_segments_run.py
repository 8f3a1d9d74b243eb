"""``auxseg softsegments``: semantic soft segments of a folder of images, written as a label folder with priors.

For every image (docs/auxlabels.md, "Soft segments"): the semantic features
``f~`` (the extractor's feature view -- guided filter + per-image PCA to 3-D,
:func:`auxlabels.feature_view.views_of_image` -- or the image's colour with
``features: colour``), then :func:`auxlabels.soft_segments.soft_segments_of_image`.
The output is an auxiliary-label folder (docs/contracts.md sections 1 and 1b):

- ``priors/<rel>.npz`` -- the K soft layers as a per-pixel prior over K segments
  (full image resolution, :func:`auxseg.contracts.priors.write_prior`);
- ``labels/<rel>.png`` -- their argmax (uint8; no pixel is ignored);
- ``manifest.json`` with ``scope: "image"`` (segment ids mean nothing across
  images) and the ``prior`` key, plus ``config.yaml``;
- ``progress.jsonl``: one line per finished image (file hashes, label counts,
  seconds), so that a rerun with the same settings skips the images already done.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from auxseg.config import ConfigError, PositiveFloat, PositiveInt, to_dict
from auxseg.contracts.common import versions
from auxseg.contracts.label_folder import (
    LABELS_DIR,
    PRIORS_DIR,
    LabelledImages,
    label_folder_manifest,
    label_rel,
    labels_digest,
    prior_rel,
)
from auxseg.contracts.priors import prior_manifest_entry, write_prior
from auxseg.distributed import DistInfo
from auxseg.errors import AuxsegError
from auxseg.files import append_jsonl, atomic_write_json, sha256_file
from auxseg.images import ImageReadError, read_rgb, scan_images, write_label_png
from auxseg.paths import check_separate, output_file, read_path_list

from .config import ExtractorConfig
from .resume import RunIdentity, checkpoint_sha256, previous_manifest, read_journal, verified
from .run_context import RunContext
from .soft_segments import SoftSegmentsParams, soft_segments_of_image

JOURNAL = "progress.jsonl"
# settings that do not change the segments; everything else must match to resume
NOT_FINGERPRINTED = ("progress", "resume", "out_dir", "on_bad_image")


class SoftSegmentsError(AuxsegError, RuntimeError):
    """The soft segmentation of one image failed; the message names the image."""


@dataclass
class SoftSegmentsConfig:
    """``auxseg softsegments``: which images, which semantic features, the segmentation's parameters, where to write."""

    image_dir: str = ""  # folder of images (searched recursively)
    image_list: str | None = None  # optional text file of paths relative to image_dir, one per line
    max_images: PositiveInt | None = None  # only the first N images (sorted by path)
    out_dir: str = "runs/soft_segments"
    features: Literal["extractor", "colour"] = "extractor"  # f~: the extractor's feature view, or the RGB colour
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    clip: PositiveFloat = 5.0  # feature view: standardised features clipped to [-clip, clip] (official: raw features +-5)
    guide_radius: PositiveInt = 5  # feature view: guided-filter window 2r+1 = 11 px (official: NeighborhoodSize 10)
    guide_eps: PositiveFloat = 0.01  # feature view: guided-filter epsilon on the [0, 1] image (MATLAB's default)
    soft: SoftSegmentsParams = field(default_factory=SoftSegmentsParams)
    topk: PositiveInt | None = None  # segments stored per pixel in the prior files (null: all soft.segments, exact)
    on_bad_image: Literal["skip", "stop"] = "skip"  # unreadable image: report and skip, or stop the run
    resume: bool = True  # a rerun with the same settings skips the images already written (progress.jsonl)
    progress: bool = True  # tqdm progress bar over images


def validate(cfg: SoftSegmentsConfig) -> None:
    """Cross-field rules; raise ConfigError naming the key."""
    if not cfg.image_dir:
        raise ConfigError("image_dir: required (a folder of images)")
    check_separate(cfg.out_dir, "out_dir", {"image_dir": cfg.image_dir})
    if cfg.features == "extractor":
        from .features import EXTRACTORS

        if cfg.extractor.name not in EXTRACTORS:
            raise ConfigError(f"extractor.name: {cfg.extractor.name!r} is not one of {sorted(EXTRACTORS)}")
        if cfg.extractor.checkpoint is None and not cfg.extractor.random_init:
            raise ConfigError("extractor.checkpoint: required (a weights file); random weights only with "
                              "extractor.random_init=true (or features=colour for no extractor)")
    # each key's own range (soft.segments in 2..255, soft.eig_shift < 0, ...) is in the schema


def list_inputs(cfg: SoftSegmentsConfig) -> tuple[Path, list[str], dict[str, str]]:
    """The image root, the sorted image paths relative to it, and unreadable entries ``{rel: reason}``."""
    root = Path(cfg.image_dir).expanduser()
    problems: dict[str, str] = {}
    if cfg.image_list:
        listing = Path(cfg.image_list)
        rels = sorted(set(read_path_list(listing, "image")))
        for rel in rels:
            if not (root / rel).is_file():
                raise FileNotFoundError(f"{listing}: image {root / rel} not found")
    else:
        found, problems = scan_images(root)
        rels = [p.as_posix() for p in found]
    rels = rels[: cfg.max_images]
    if not rels:
        raise FileNotFoundError(f"no images found in {root}" + (f" (list {cfg.image_list})" if cfg.image_list else ""))
    owner: dict[str, str] = {}
    for rel in rels:  # x.png and x.jpg would write one label PNG
        if label_rel(rel) in owner:
            raise ConfigError(f"image_dir: {root / owner[label_rel(rel)]} and {root / rel} would both be labelled as "
                              f"{LABELS_DIR}/{label_rel(rel)}; rename one of them")
        owner[label_rel(rel)] = rel
    return root, rels, {rel: f"cannot read image {root / rel}: {why}" for rel, why in problems.items()}


class _Semantic:
    """The semantic features ``f~`` of an image: the extractor's feature view in [0, 1], or None (colour)."""

    def __init__(self, cfg: SoftSegmentsConfig):
        self.cfg = cfg
        self.extractor = None
        if cfg.features == "extractor":
            import torch

            from .features import build_extractor

            self.extractor = build_extractor(cfg.extractor).to(torch.device(cfg.extractor.device))

    @property
    def description(self) -> dict | None:
        return None if self.extractor is None else self.extractor.description

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        if self.extractor is None:
            return None
        from .feature_view import ViewParams, views_of_image

        params = ViewParams(max_side=self.cfg.soft.working_side, clip=self.cfg.clip, radius=self.cfg.guide_radius,
                            eps=self.cfg.guide_eps, guide="colour", extract_max_side=self.cfg.extractor.max_side)
        view = views_of_image(self.extractor, image, params)["view"]
        return view.astype(np.float64) / 255.0  # [h, w, 3] in [0, 1], per-channel min-max as in B.4


def _fingerprint(cfg: SoftSegmentsConfig, rels: list[str]) -> str:
    """Hash of everything that decides the segments: settings, the extractor's weights and the images."""
    data = to_dict(cfg)
    for key in NOT_FINGERPRINTED:
        data.pop(key, None)
    data["checkpoint_sha256"] = checkpoint_sha256(cfg) if cfg.features == "extractor" else None
    data["images"] = rels
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _reusable(cfg: SoftSegmentsConfig, out: Path, fingerprint: str) -> dict[str, dict]:
    """Journal records of an earlier run of these settings whose label and prior files are intact.

    Raises ConfigError when ``out`` holds another run's work (or this run's
    with ``resume`` off); nothing has been written at that point.
    """
    previous = previous_manifest(cfg, out, fingerprint)
    if previous is None:
        return {}
    return verified(out, read_journal(out), priors=True)


def run(cfg: SoftSegmentsConfig) -> dict:
    """Write the label folder (labels/, priors/, manifest.json, config.yaml) and return the manifest.

    An image that cannot be read is skipped and listed in the manifest (``on_bad_image: stop``
    stops instead); a soft segmentation that fails raises :class:`SoftSegmentsError` naming the image.
    """
    from .inputs import progress_bar
    from .manifest import write_started

    validate(cfg)
    t_start = time.perf_counter()
    created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    root, rels, skipped = list_inputs(cfg)
    if skipped and cfg.on_bad_image == "stop":
        raise ImageReadError(f"{min(skipped.items())[1]} (on_bad_image=stop)")
    semantic = _Semantic(cfg)  # a wrong checkpoint fails here, before anything is written
    ctx = RunContext(out=Path(cfg.out_dir), dist=DistInfo(), show=cfg.progress, t_start=t_start, skipped=skipped)
    identity = RunIdentity(_fingerprint(cfg, rels), None)
    records = _reusable(cfg, ctx.out, identity.fingerprint)
    if not records:  # a fresh start: lines of another run must not be read as this run's
        (ctx.out / JOURNAL).unlink(missing_ok=True)
    write_started(cfg, ctx.out, identity.fingerprint, None)
    todo = [r for r in rels if r not in skipped and r not in records]
    if records:
        print(f"[softsegments] {len(rels)} images, {len(rels) - len(todo) - len(skipped)} already done, "
              f"{len(todo)} to segment", file=sys.stderr)
    with progress_bar(len(todo), "soft segments", ctx.show) as bar:
        for rel in todo:
            record = _segment_image(cfg, ctx, semantic, root, rel)
            if record is not None:
                records[rel] = record
                append_jsonl(ctx.out / JOURNAL, record)  # a kill loses at most the image in progress
            bar.update(1)
    written = {r: records[r] for r in rels if r in records}
    if not written:
        raise SoftSegmentsError(f"{root}: no image could be read ({len(skipped)} skipped, first: {min(skipped.values())})")
    manifest = _manifest(cfg, ctx, root, written, semantic.description, identity, created)
    atomic_write_json(ctx.out / "manifest.json", manifest)
    return manifest


def _segment_image(cfg: SoftSegmentsConfig, ctx: RunContext, semantic: _Semantic, root: Path, rel: str) -> dict | None:
    """Segment one image and write its label PNG and prior file; return its journal record.

    An unreadable image is recorded in ``ctx.skipped`` (None is returned), or raises with ``on_bad_image: stop``.
    """
    path = root / rel
    try:
        image = read_rgb(path)
    except ImageReadError as err:
        if cfg.on_bad_image == "stop":
            raise
        ctx.skipped[rel] = str(err)
        return None
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        feats = semantic(image)
        result = soft_segments_of_image(image, feats, cfg.soft)
    except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError) as err:
        raise SoftSegmentsError(f"{path}: soft segmentation failed ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})") from err
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    k = cfg.soft.segments
    layers = result.layers  # [K, H, W] float32, sums to one
    label = layers.argmax(axis=0).astype(np.uint8)
    label_path = output_file(ctx.out, f"{LABELS_DIR}/{label_rel(rel)}", f"image {rel}")
    prior_path = output_file(ctx.out, f"{PRIORS_DIR}/{prior_rel(rel)}", f"image {rel}")
    write_label_png(label_path, label)
    write_prior(prior_path, layers, _topk(cfg))
    return {"rel": rel, "sha256": sha256_file(label_path), "prior_sha256": sha256_file(prior_path),
            "counts": np.bincount(label.ravel(), minlength=k)[:k].tolist(),
            "seconds": wall, "cpu_seconds": cpu, "timings": result.info["seconds"]}


def _topk(cfg: SoftSegmentsConfig) -> int:
    """Segments stored per pixel in the prior files."""
    return min(cfg.topk or cfg.soft.segments, cfg.soft.segments)


def _manifest(cfg: SoftSegmentsConfig, ctx: RunContext, root: Path, written: dict[str, dict],
              extractor: dict | None, identity: RunIdentity, created: str) -> dict:
    """The complete manifest of the images ``written`` (``{rel: journal record}``, in input order)."""
    k = cfg.soft.segments
    done = list(written.values())
    counts = np.sum([rec["counts"] for rec in done], axis=0, dtype=np.int64)
    timings: dict[str, float] = {}  # per phase, summed over the images (of every run that wrote one)
    for rec in done:
        for key, value in rec["timings"].items():
            timings[key] = timings.get(key, 0.0) + value
    timings["total_wall"] = time.perf_counter() - ctx.t_start  # this run only
    labelled = LabelledImages(root.resolve(), list(written),
                              labels_digest([(label_rel(r), rec["sha256"]) for r, rec in written.items()]))
    return label_folder_manifest(  # scope image: segment j of one image has nothing to do with j of another
        num_labels=k, scope="image", labelled=labelled, dtype="uint8", **{
        "clusterer": "soft_segments",
        "extractor": extractor,
        "semantic_features": "feature view (guided filter + PCA-3)" if cfg.features == "extractor" else "colour",
        "prior": prior_manifest_entry(_topk(cfg), 1, [(prior_rel(r), rec["prior_sha256"]) for r, rec in written.items()],
                                      source="auxlabels.soft_segments",
                                      resolution="image", working_side=cfg.soft.working_side),
        "soft_segments": to_dict(cfg.soft),
        "label_pixel_counts": counts.tolist(),
        "ignored_pixels": 0,
        "ignored_share": 0.0,
        "skipped": [{"path": rel, "error": err} for rel, err in sorted(ctx.skipped.items())],
        "seconds_per_image": float(np.mean([rec["seconds"] for rec in done])),  # wall, features to layers
        "cpu_seconds_per_image": float(np.mean([rec["cpu_seconds"] for rec in done])),
        "timings": timings,
        "versions": versions(),
        "config": to_dict(cfg),
        "fingerprint": identity.fingerprint,
        "created": created,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
    })
