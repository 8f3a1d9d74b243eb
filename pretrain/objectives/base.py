"""The objective interface: what a pre-training objective receives, owns and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from auxseg.contracts.label_folder import LabelFolder

OBJECTIVES: dict[str, type[Objective]] = {}
"""Registered objectives by name (``loss.name``): the one list that config validation, ``--help`` and docs read."""


def register_objective(name: str):
    """Class decorator: register an :class:`Objective` subclass under ``name`` (its config section is ``loss.<name>``)."""

    def add(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is registered twice ({OBJECTIVES[name].__module__}, {cls.__module__})")
        if not hasattr(cls, "Config"):
            raise TypeError(f"objective {name!r}: {cls.__name__} has no Config dataclass")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return add


@dataclass
class StepBatch:
    """One training step's batch as an objective sees it (all tensors on the training device).

    ``label`` and ``coords`` are at input resolution ``S``; feature maps are
    ``h x w`` (stride 8). Views are image-major: feature row ``2 * i + v`` is
    view ``v`` of image ``i``.
    """

    label: torch.Tensor  # [b, 2, S, S] int64 auxiliary label per view pixel, folder.ignore_index = ignore
    coords: torch.Tensor  # [b, 2, S, S] int64 original y * W + x of each view pixel, -1 = padding
    index: torch.Tensor  # [b] int64 dataset index of each image
    size: torch.Tensor  # [b, 2] int64 original (H, W)
    folder: LabelFolder  # num_labels, ignore_index, scope of the label folder
    iteration: int
    generator: torch.Generator  # seeded by (train.seed, iteration): the same draw on every rank and every run
    prior: torch.Tensor | None = None  # optional soft per-pixel priors [b, 2, K, S, S] (rows sum to 1)


class Objective(nn.Module):
    """Base class of a pre-training objective.

    Subclasses set ``Config`` (a dataclass: the ``loss.<name>`` section; a field
    ``lr_mult`` scales the learning rate of the objective's own parameters) and
    implement :meth:`forward`. Parameters created in ``__init__`` are trained,
    checkpointed and resumed with the backbone, and dropped at export.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    progress_stats: ClassVar[dict[str, str]] = {}  # stat key -> short label on the progress bar

    def __init__(self, cfg: Any, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels

    @property
    def lr_mult(self) -> float:
        return float(getattr(self.cfg, "lr_mult", 1.0))

    def check_folder(self, folder: LabelFolder) -> None:
        """Called once with the label folder, before the optimizer is built and any checkpoint is loaded.

        Raise :class:`~auxseg.contracts.label_folder.LabelFolderError` if this
        objective cannot use ``folder``; build here what depends on it (a head
        with one output per auxiliary label, as ``qr``/``rq`` do).
        """

    def forward(self, features: torch.Tensor, batch: StepBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss and stats of one step.

        Args:
            features: ``[b*2, C, h, w]`` this process's dense feature maps of both views.
            batch: the step's labels, coordinates and bookkeeping.

        Returns:
            (scalar loss with a graph, stats: str -> float). Under DDP the loss
            must be the same function of the global batch on every process
            (gather what you need; :func:`pretrain.sampling.sampled_embeddings` does).
        """
        raise NotImplementedError

    def histograms(self) -> dict[str, tuple[torch.Tensor, Any]]:
        """Optional TensorBoard histograms of the last step: name -> (values, bins or None)."""
        return {}
