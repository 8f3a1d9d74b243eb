"""The objective interface: what a pre-training objective receives, owns and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn

from auxseg.contracts.label_folder import LabelFolder
from pretrain.losses import LabelIds, TargetMaps, nearest_to_grid

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
class SoftPrior:
    """A batch's soft per-pixel priors in the label folder's top-k form (docs/contracts.md section 1b).

    Carried through the views as top-k so memory does not grow with K; an
    objective densifies only the pixels it uses (:meth:`dense`). Padding pixels
    of a view have all ``probs`` 0.
    """

    ids: torch.Tensor  # [b, 2, k, S, S] int64 label ids, most probable first
    probs: torch.Tensor  # [b, 2, k, S, S] float32, sum to 1 over k (0 on padding)

    def at_grid(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views at the feature grid (nearest, as the labels): ids, probs ``[b*2*h*w, k]`` (rows image-major)."""
        k = self.ids.shape[2]
        ids = nearest_to_grid(self.ids.flatten(0, 1), h, w).permute(0, 2, 3, 1).reshape(-1, k)
        probs = nearest_to_grid(self.probs.flatten(0, 1), h, w).permute(0, 2, 3, 1).reshape(-1, k)
        return ids, probs

    @staticmethod
    def dense(ids: torch.Tensor, probs: torch.Tensor, num_labels: int) -> torch.Tensor:
        """``[N, K]`` float32 from top-k rows ``ids, probs [N, k]``."""
        out = torch.zeros(ids.shape[0], num_labels, dtype=torch.float32, device=probs.device)
        return out.scatter_add_(1, ids, probs.float())


@dataclass
class StepBatch:
    """One training step's batch as an objective sees it (all tensors on the training device).

    ``label``, ``coords`` and ``prior`` are at input resolution ``S``; feature
    maps are ``h x w`` (stride 8). Views are image-major: feature row
    ``2 * i + v`` is view ``v`` of image ``i``. ``prior`` is filled only for an
    objective whose :attr:`Objective.wants_priors` is true (the folder then has
    priors); it is the top-k form (:class:`SoftPrior`), never a dense ``[.., K, S, S]``.
    """

    label: torch.Tensor  # [b, 2, S, S] int64 auxiliary label per view pixel, folder.ignore_index = ignore
    coords: torch.Tensor  # [b, 2, S, S] int64 original y * W + x of each view pixel, -1 = padding
    index: torch.Tensor  # [b] int64 dataset index of each image
    size: torch.Tensor  # [b, 2] int64 original (H, W)
    folder: LabelFolder  # num_labels, ignore_index, scope of the label folder
    iteration: int
    generator: torch.Generator  # seeded by (train.seed, iteration): the same draw on every rank and every run
    # soft per-pixel priors (top-k) when the objective asked for them (wants_priors) and the folder has them
    prior: SoftPrior | None = None

    def target_maps(self) -> TargetMaps:
        """The maps target ids are made from (:func:`pretrain.losses.targets_at_features`)."""
        return TargetMaps(self.label, self.coords, self.index, self.size[:, 1])

    def label_ids(self) -> LabelIds:
        """How the label folder's values become ids: its K, ignore value and scope."""
        return LabelIds(self.folder.num_labels, self.folder.ignore_index, per_image=self.folder.scope == "image")


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
    # False: the objective ignores the labels, so `auxseg pretrain` also accepts a plain image folder
    # (data.source=images) for it
    needs_labels: ClassVar[bool] = True
    # True: the objective can use the label folder's soft priors (StepBatch.prior); its config field
    # ``use_priors`` switches them on
    uses_prior: ClassVar[bool] = False

    def __init__(self, cfg: Any, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels

    @property
    def lr_mult(self) -> float:
        return float(getattr(self.cfg, "lr_mult", 1.0))

    @property
    def wants_priors(self) -> bool:
        """True when the data path must load the folder's soft priors into ``StepBatch.prior``."""
        return self.uses_prior and bool(getattr(self.cfg, "use_priors", False))

    def exported_state(self) -> dict | None:
        """What of the objective travels with the export (None: nothing; its heads are dropped).

        ``local_prediction`` returns its predictor parameters, which the boundary
        production needs (``local_predictor.pth`` beside a ResNet, or inside
        ``small_model.pth``). :func:`pretrain.export.export_network` asks this
        instead of probing the objective for attributes.
        """
        return None

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
