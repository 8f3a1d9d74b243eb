"""Training checkpoints (exact resume) and initial weights (ImageNet, MoCo, mmseg, our export).

A training checkpoint holds only tensors and plain data, so it loads with
``torch.load(weights_only=True)``: model, optimizer, AMP scaler, the iteration
(which fixes the schedule and the data position, both functions of it) and
the global RNG states.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, save_checkpoint
from auxseg.contracts.backbone import read_backbone_weights

STATE_FORMAT = "auxseg.pretrain-state/2"  # /2: model = network (net.*) + objective (objective.*)
_CKPT_RE = re.compile(r"iter_(\d+)\.pth$")


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"iter_{iteration:07d}.pth"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The training checkpoint with the highest iteration in ``out_dir/checkpoints``, or None."""
    found = [(int(m.group(1)), p) for p in (Path(out_dir) / "checkpoints").glob("iter_*.pth")
             if (m := _CKPT_RE.search(p.name))]
    return max(found)[1] if found else None


def rng_state() -> dict:
    # our own randomness is seeded per iteration; the global states are saved for code that uses them
    np_state = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain(x):
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))  # noqa: NPY002
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainingParts:
    """What a training checkpoint saves and restores besides the RNG: the model, its optimizer and AMP scaler."""

    model: nn.Module  # the PretrainModel (network + objective), not DDP-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


@dataclass(frozen=True)
class TrainedOn:
    """The data a run trains on, recorded in its checkpoints: a resume from other data is refused."""

    labels_sha256: str | None = None  # the label folder's labels_sha256
    priors_sha256: str | None = None  # its soft priors' hash when the objective uses them; None: no priors

    @classmethod
    def of(cls, folder, uses_priors: bool) -> TrainedOn:
        """The data of a :class:`~auxseg.contracts.label_folder.LabelFolder`, its priors only when used."""
        return cls(folder.labels_sha256, folder.priors_sha256 if uses_priors else None)


def save_training_state(path: str | Path, parts: TrainingParts, *, iteration: int, config: dict, keep: int = 0,
                        data: TrainedOn = TrainedOn()) -> Path:
    """Write a resumable checkpoint atomically; keep only the newest ``keep`` in its folder (0 = all).

    ``data`` identifies the label folder trained on and its soft priors when the
    objective used them: a resume from a different folder or other priors is
    refused (:func:`load_training_state`).
    """
    path = Path(path)
    save_checkpoint({
        "format": STATE_FORMAT,
        "iteration": int(iteration),
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else {},
        "rng": rng_state(),
        "config": config,
        "labels_sha256": data.labels_sha256,
        "priors_sha256": data.priors_sha256,
    }, path)
    if keep > 0:
        old = sorted(p for p in path.parent.glob("iter_*.pth") if _CKPT_RE.search(p.name))[:-keep]
        for p in old:
            p.unlink(missing_ok=True)
    return path


def _resume_sections(config: dict) -> tuple[str, ...]:
    """The config sections a resumed run must share with its checkpoint: the network and the objective."""
    name = (config.get("loss") or {}).get("name")
    return ("model", "loss.name", f"loss.{name}")


def _section(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


# Resume-checked config keys that appeared after checkpoints had been written, with the value every
# older checkpoint implies (so those checkpoints still resume).
ADDED_SINCE = {"model": {"output_stride": 8}}


def with_added_defaults(config: dict) -> dict:
    """A recorded pretrain config (checkpoint or pipeline step) with the ``ADDED_SINCE`` keys it lacks filled in."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for section, defaults in ADDED_SINCE.items():
        if isinstance(out.get(section), dict):
            out[section] = {**defaults, **out[section]}
    return out


def load_training_state(path: str | Path, parts: TrainingParts, *, config: dict,
                        data: TrainedOn = TrainedOn()) -> int:
    """Restore model, optimizer, scaler and RNG from a training checkpoint; returns its iteration.

    Refuses a checkpoint whose model or objective settings differ from ``config``,
    or that was trained on another label set than ``data.labels_sha256`` (None:
    not checked) or on other soft priors than ``data.priors_sha256`` (None: no
    priors used) (resuming those would silently train something else).
    """
    labels_sha256, priors_sha256 = data.labels_sha256, data.priors_sha256
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a pretrain training checkpoint (format {STATE_FORMAT!r})")
    # keys added since: a checkpoint without one was trained with its old meaning
    saved = with_added_defaults(ckpt.get("config", {}))
    for section in _resume_sections(config):
        before = _section(saved, section)
        if before != _section(config, section):
            raise CheckpointError(
                f"{path}: its {section} config differs from this run's; resume with the same settings "
                f"(saved {before}, now {_section(config, section)})"
            )
    if labels_sha256 is not None and ckpt.get("labels_sha256") not in (None, labels_sha256):
        raise CheckpointError(
            f"{path}: it was trained on another label set (labels_sha256 {str(ckpt['labels_sha256'])[:12]}..., "
            f"data.labels now gives {labels_sha256[:12]}... from {_section(config, 'data.labels') or 'the synthetic data'}); "
            "resume with the same label folder, or use a new out_dir")
    if ckpt.get("priors_sha256") != priors_sha256:  # None on both sides: no soft priors used
        raise CheckpointError(
            f"{path}: it was trained on other soft priors (priors_sha256 {str(ckpt.get('priors_sha256'))[:12]}..., "
            f"now {str(priors_sha256)[:12]}... from {_section(config, 'data.labels') or 'the synthetic data'}); "
            "resume with the same label folder and priors, or use a new out_dir")
    state = ckpt["model"]
    check_keys(parts.model.state_dict().keys(), state.keys(), path, "model")
    parts.model.load_state_dict(state)
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.scaler.is_enabled() and ckpt["scaler"]:
        parts.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["iteration"])


def init_backbone(backbone: nn.Module, init: str) -> str:
    """Initialise the backbone from ``init`` ("random" or a checkpoint path); keys must match exactly.

    Returns a description of what was loaded (for logs and the export meta).
    """
    if init == "random":
        return "random"
    weights = read_backbone_weights(init)  # our export, MoCo, mmseg or torchvision; detected from the file
    state, kind = weights.state_dict, weights.kind
    check_keys(backbone.state_dict().keys(), state.keys(), init, f"backbone ({kind} checkpoint)")
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:  # same keys, wrong shapes (e.g. resnet18 weights for resnet50 keys)
        raise CheckpointError(f"{init}: {kind} weights do not fit the backbone: {err}") from err
    return f"{kind}:{init}"
