"""The export formats of the small feature networks (:mod:`auxseg.nets.small`): one writer, one reader.

``pixel``, ``linear`` and ``predseg1`` are pre-trained by ``auxseg pretrain``
(``model.arch``) and read back by ``auxlabels`` (extractor ``small_model``) and
by the boundary production (``auxseg boundaries predict``), so the format
lives here, in the contracts room, written once.

They cannot become an mmseg backbone, so their export is its own
self-describing file, ``small_model.pth`` (format :data:`SMALL_MODEL_FORMAT`):
the network weights, the meta block (architecture, channels, stride,
normalisation, the training config) and, when trained with the
``local_prediction`` objective, its predictor parameters (``logit_p``,
``log_var``, neighbourhood) which the boundary production needs. A ResNet
trained with that objective is exported as an ordinary backbone plus
``local_predictor.pth`` (format :data:`LOCAL_PREDICTOR_FORMAT`): the same
predictor parameters and the name of the backbone file beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from auxseg.checkpoint_io import CheckpointError, check_keys, load_checkpoint, save_checkpoint
from auxseg.contracts.common import IMAGENET_MEAN, IMAGENET_STD, Provenance, versions
from auxseg.nets.small import SMALL_MODELS, SmallModel, build_small_model

SMALL_MODEL_FORMAT = "auxseg.small-model/1"
SMALL_MODEL_FILENAME = "small_model.pth"
LOCAL_PREDICTOR_FORMAT = "auxseg.local-predictor/1"
LOCAL_PREDICTOR_FILENAME = "local_predictor.pth"


def small_model_meta(model: SmallModel, *, provenance: Provenance, predictor: dict | None, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD) -> dict[str, Any]:
    """The meta block of a small-model export."""
    return {
        "format": SMALL_MODEL_FORMAT,
        "arch": model.arch,
        "out_channels": model.out_channels,
        "stride": model.stride,
        "mean": [float(v) for v in mean],  # 0-255 scale, RGB order
        "std": [float(v) for v in std],
        "channel_order": "rgb",
        "has_predictor": predictor is not None,
        "config": provenance.config,
        "auxlabels_sha256": provenance.auxlabels_sha256,  # the (possibly all-ignore) label folder trained on
        "auxlabels_manifest": provenance.auxlabels_manifest,
        "iteration": int(provenance.iteration),
        "versions": versions(("torch",)),
    }


def save_small_model(path: str | Path, model: SmallModel, *, config: dict, iteration: int,
                     predictor: dict | None = None, auxlabels_sha256: str | None = None,
                     auxlabels_manifest: str | None = None) -> Path:
    """Write the small-model export (atomically).

    ``predictor``: ``{"neighbourhood": int, "log_u": float, "logit_p": [n/2] tensor, "log_var": [n/2, c]
    tensor}`` of the ``local_prediction`` objective, or None.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if predictor is not None:
        predictor = _plain_predictor(predictor)
    provenance = Provenance(config, iteration, auxlabels_sha256, auxlabels_manifest)
    meta = small_model_meta(model, provenance=provenance, predictor=predictor)
    return save_checkpoint({"format": SMALL_MODEL_FORMAT, "state_dict": state, "predictor": predictor, "meta": meta},
                           path)


def check_predictor(predictor: Any, channels: int, path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless ``predictor`` fits a ``channels``-wide feature map."""
    if not isinstance(predictor, dict):
        raise CheckpointError(f"{path}: the predictor is a {type(predictor).__name__}, not a dict")
    missing = {"neighbourhood", "log_u", "logit_p", "log_var"} - set(predictor)
    if missing:
        raise CheckpointError(f"{path}: predictor lacks {', '.join(sorted(missing))}")
    n = int(predictor["neighbourhood"])
    if tuple(predictor["logit_p"].shape) != (n // 2,) or tuple(predictor["log_var"].shape) != (n // 2, channels):
        raise CheckpointError(f"{path}: predictor shapes {tuple(predictor['logit_p'].shape)}, "
                              f"{tuple(predictor['log_var'].shape)} do not fit neighbourhood {n} and {channels} channels")


def _plain_predictor(predictor: dict) -> dict:
    return {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in predictor.items()}


@dataclass(frozen=True)
class PredictorNetwork:
    """The ResNet a local predictor belongs to, as ``local_predictor.pth`` records it."""

    arch: str  # resnet18 ... resnet152
    stem: str  # "plain" or "deep"
    out_channels: int  # channels of the feature map the predictor models
    stride: int  # output stride of that feature map
    backbone: str  # file name of the backbone export, in the same folder


def save_local_predictor(path: str | Path, predictor: dict, network: PredictorNetwork, *, iteration: int) -> Path:
    """Write ``local_predictor.pth`` beside a ResNet's backbone export (atomically).

    A ResNet trained with ``loss.name=local_prediction`` is exported as an
    ordinary backbone (``network.backbone`` names the file, in the same folder);
    this file adds what the boundary production needs: the predictor parameters
    (as in :func:`save_small_model`) and the network they belong to.
    """
    meta = {"format": LOCAL_PREDICTOR_FORMAT, "arch": network.arch, "stem": network.stem,
            "out_channels": int(network.out_channels), "stride": int(network.stride), "backbone": network.backbone,
            "iteration": int(iteration), "versions": versions(("torch",))}
    return save_checkpoint({"format": LOCAL_PREDICTOR_FORMAT, "predictor": _plain_predictor(predictor),
                            "meta": meta}, path)


@dataclass
class SmallModelExport:
    """A loaded network that the boundary production and the extractors can run: the network (eval mode), its
    predictor parameters (or None) and meta (with ``mean`` / ``std``). A small-model export, or a ResNet backbone
    export with its ``local_predictor.pth`` (:func:`boundaries.learned.read_predicting_network`)."""

    model: nn.Module
    predictor: dict | None
    meta: dict
    path: Path

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.meta["std"])


def read_small_model(path: str | Path) -> SmallModelExport:
    """Load a small-model export, checking its format, architecture and exact key set; errors name the file."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != SMALL_MODEL_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        if isinstance(ckpt, dict) and found is None and isinstance(ckpt.get("meta"), dict):
            found = ckpt["meta"].get("format")
        raise CheckpointError(f"{path}: not a small-model export (format {found!r}, expected {SMALL_MODEL_FORMAT!r}; "
                              f"`auxseg pretrain` writes {SMALL_MODEL_FILENAME} for model.arch in "
                              f"{'|'.join(SMALL_MODELS)})")
    meta = ckpt.get("meta") or {}
    arch = meta.get("arch")
    if arch not in SMALL_MODELS:
        raise CheckpointError(f"{path}: meta.arch {arch!r} is not one of {', '.join(SMALL_MODELS)}")
    model = build_small_model(arch)
    state = ckpt.get("state_dict") or {}
    check_keys(model.state_dict().keys(), state.keys(), path, f"{arch} network")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: {arch} weights do not fit the model: {str(err).splitlines()[-1].strip()}") from err
    predictor = ckpt.get("predictor")
    if predictor is not None:
        check_predictor(predictor, model.out_channels, path)
    return SmallModelExport(model.eval(), predictor, meta, path)
