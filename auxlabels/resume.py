"""What a rerun may reuse: the settings fingerprint and the journal of finished images.

Each finished image is appended to ``progress*.jsonl`` with its PNG's SHA-256.
A rerun with the same fingerprint reuses the fit state (:mod:`.fit_state`:
centroids, thresholds) and skips exactly the images whose PNG exists and
matches its record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from auxseg.config import ConfigError, to_dict
from auxseg.contracts.label_folder import PRIORS_DIR, label_rel, prior_rel
from auxseg.files import read_json_object, read_jsonl, sha256_file

from .config import AuxLabelsConfig, ExtractorConfig
from .fit_state import FIT_STATE
from .inputs import ImageItem

# settings that do not change the labels; everything else must match to resume
NOT_FINGERPRINTED = ("num_workers", "progress", "resume", "keep_cache", "out_dir", "on_bad_image")


@dataclass(frozen=True)
class RunIdentity:
    """Which run a folder holds: the settings fingerprint, and the manifest of an earlier run of it (or None)."""

    fingerprint: str
    previous: dict | None


def checkpoint_sha256(cfg: AuxLabelsConfig) -> str | None:
    """SHA-256 of the extractor checkpoint, or None when there is no such file (hashed once per run)."""
    ckpt = cfg.extractor.checkpoint
    return sha256_file(ckpt) if ckpt and Path(ckpt).is_file() else None


def fingerprint(cfg: AuxLabelsConfig, items: list[ImageItem], ckpt_sha256: str | None) -> str:
    """Hash of everything that decides the labels: settings, checkpoint contents, images and ground truth."""
    data = to_dict(cfg)
    for key in NOT_FINGERPRINTED:
        data.pop(key, None)
    if not cfg.soft_labels.enabled:  # off: the same fingerprint as before soft labels existed, so old runs resume
        data.pop("soft_labels", None)
    if not cfg.extractor.amp_cpu:  # off: the same fingerprint as before the switch existed
        data["extractor"].pop("amp_cpu", None)
    vit_defaults = ExtractorConfig()
    for key in ("arch", "blocks", "token_stride", "max_tokens"):  # ViT keys at their defaults: as before they existed
        if key in data["extractor"] and data["extractor"][key] == getattr(vit_defaults, key):
            data["extractor"].pop(key)
    if ckpt_sha256 is not None:
        data["checkpoint_sha256"] = ckpt_sha256
    data["images"] = [(it.rel, str(it.gt_path) if it.gt_path else None) for it in items]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def previous_manifest(cfg: AuxLabelsConfig, out: Path, fp: str) -> dict | None:
    """The manifest of an earlier run of these settings in ``out`` to resume, or None to start afresh.

    Raises ConfigError when ``out`` holds another run's work, or this run's
    while ``resume`` is off; nothing has been written at that point.
    """
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return None
    previous = read_json_object(manifest_path)
    # a finished folder counts as work even without its journal (one written before journals existed)
    has_work = previous.get("complete") is True or (out / FIT_STATE).is_file() or any(out.glob("progress*.jsonl"))
    if previous.get("fingerprint") != fp and not has_work:
        return None  # a run that failed before producing anything: start afresh
    if previous.get("fingerprint") != fp:
        raise ConfigError(
            f"{manifest_path}: this folder holds labels made with other settings or images; "
            "choose another out_dir, or delete this one to replace it (nothing was changed)"
        )
    if not cfg.resume:
        raise ConfigError(f"{manifest_path}: out_dir already holds this run; set resume=true to reuse it")
    return previous


def read_journal(out: Path) -> dict[str, dict]:
    """Records of finished images from every ``progress*.jsonl``, read with :func:`auxseg.files.read_jsonl`.

    A torn last line (a kill mid-append) and a corrupt line before it are each a warning naming the
    file and line, and their images are labelled again: a record only saves work, and earlier
    versions could leave a kill's torn line glued to the next record mid-file."""
    records: dict[str, dict] = {}
    for path in sorted(out.glob("progress*.jsonl")):
        for rec in read_jsonl(path, skip_bad="its image is labelled again"):
            if "rel" in rec:
                records[rec["rel"]] = rec
    return records


def verified(out: Path, records: dict[str, dict], priors: bool = False) -> dict[str, dict]:
    """The records whose label PNG exists and has the recorded SHA-256 (and, with ``priors``, the prior file too)."""
    good = {}
    for rel, rec in records.items():
        if "sha256" not in rec or (priors and "prior_sha256" not in rec):
            continue
        png = out / "labels" / label_rel(rel)
        if not (png.is_file() and sha256_file(png) == rec["sha256"]):
            continue
        prior = out / PRIORS_DIR / prior_rel(rel)
        if priors and not (prior.is_file() and sha256_file(prior) == rec["prior_sha256"]):
            continue
        good[rel] = rec
    return good


def finished_images(cfg: AuxLabelsConfig, out: Path) -> set[str]:
    """Images a resumed run skips: journalled with a matching PNG and prior file (none when ``resume`` is off)."""
    # only the names are kept in memory: the records are re-read from the journal at the end
    return set(verified(out, read_journal(out), cfg.soft_labels.enabled)) if cfg.resume else set()


def journal_path(out: Path, rank: int, world_size: int) -> Path:
    """This rank's journal: ``progress.jsonl``, or ``progress.rank<r>.jsonl`` under torchrun."""
    return out / (f"progress.rank{rank}.jsonl" if world_size > 1 else "progress.jsonl")
