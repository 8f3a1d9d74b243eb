"""The consistency fine-tune's training step, on mmseg's own segmenter: :class:`ConsistencyEncoderDecoder`.

mmengine's ``train_step`` is unchanged: it runs the data preprocessor, then the model's ``forward`` in
``loss`` mode, sums every loss key and steps the optimizer (under DDP, one forward through the
wrapper, so gradients are synchronised as usual). Two registered mmseg components plug into it:

- :class:`ConsistencyDataPreProcessor` (mmseg ``MODELS``): mmseg's ``SegDataPreProcessor`` for the
  labelled batch, plus the same normalisation and padding for the unlabelled views that
  :class:`finetune.consistency_data.ConsistencyDataset` adds under ``unlabelled``;
- :class:`ConsistencyEncoderDecoder` (mmseg ``MODELS``): mmseg's ``EncoderDecoder`` whose loss mode also
  takes ``unlabelled`` and computes the whole FixMatch / UniMatch step in
  :meth:`~ConsistencyEncoderDecoder.consistency_loss`. It has no parameter or buffer of its own:
  its checkpoints are ``EncoderDecoder`` checkpoints key for key, and prediction is mmseg's.

The math is :mod:`finetune.consistency_losses`; defaults and sources: docs/consistency.md.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from auxseg.mmseg_compat import import_mmseg
from finetune.consistency_losses import (
    LossWeights,
    cutmix,
    pseudo_label_counts,
    pseudo_label_stats,
    pseudo_labels,
    unlabelled_ce,
    unlabelled_terms,
)

import_mmseg()

from mmseg.models.data_preprocessor import SegDataPreProcessor  # noqa: E402  (needs the compatibility layer first)
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import add_prefix  # noqa: E402


@dataclass(frozen=True)
class StepSettings:
    """What the step needs of ``FinetuneConfig.consistency`` (written into ``model.consistency``), plus the seed."""

    method: str = "fixmatch"
    threshold: float = 0.95
    labelled_weight: float = 0.5
    unlabelled_weight: float = 0.5
    fp_share: float = 0.5
    fp_dropout: float = 0.5
    seed: int = 0

    @property
    def num_strong(self) -> int:
        return 2 if self.method == "unimatch" else 1

    @property
    def weights(self) -> LossWeights:
        share = self.fp_share if self.method == "unimatch" else 0.0
        return LossWeights(self.labelled_weight, self.unlabelled_weight, share)


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """The torch seed of one training step of one process (64 bits of ``sha256("seed:iteration:rank")``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{iteration}:{rank}".encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def step_rng(seed: int, device: torch.device):
    """Run the step with torch's generator seeded by :func:`step_seed` and restore the generator afterwards.

    The dropout of the heads and of the perturbed-feature stream is then a function of (seed, iteration,
    rank), so a resumed run repeats an uninterrupted one bit for bit (mmengine does not save torch's
    generator; the data side is replayed by mmengine itself).
    """
    from mmengine.dist import get_rank
    from mmengine.logging import MessageHub

    iteration = int(MessageHub.get_current_instance().get_info("iter", 0))
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(step_seed(seed, iteration, get_rank()))
        yield


def mixed_images(u: dict, v: int) -> torch.Tensor:
    """Strong view ``v`` of the batch with its CutMix box filled from the partners' strong view ``[B, 3, H, W]``."""
    return cutmix(u["strong"][v], u["partner_strong"][v], u["box"][v])


def mixed_targets(u: dict, v: int, weak: tuple[torch.Tensor, torch.Tensor],
                  partner: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The targets of :func:`mixed_images`: the weak view's pseudo-labels moved through the same box.

    Args:
        u: the unlabelled batch (:meth:`ConsistencyDataPreProcessor.unlabelled_batch`).
        weak, partner: ``(conf, label)`` ``[B, H, W]`` of the weak views and of the partners' weak views.
    Returns:
        label int64, conf float, valid bool, each ``[B, H, W]``. No geometric move is needed: a strong view
        is a photometric change of its weak view (:mod:`finetune.consistency_data`).
    """
    box = u["box"][v]
    return (cutmix(weak[1], partner[1], box), cutmix(weak[0], partner[0], box),
            cutmix(u["valid"], u["partner_valid"], box))


def _pad(x: torch.Tensor, size: tuple[int, int], value: float) -> torch.Tensor:
    """Pad the last two dims of ``x`` at the bottom / right to ``size``."""
    h, w = x.shape[-2:]
    if h > size[0] or w > size[1]:
        raise ValueError(f"an unlabelled view of {h}x{w} px is larger than the labelled batch ({size[0]}x{size[1]}); "
                         "the train pipeline's RandomCrop and the data preprocessor's size must agree")
    return F.pad(x, (0, size[1] - w, 0, size[0] - h), value=value)


@MODELS.register_module()
class ConsistencyDataPreProcessor(SegDataPreProcessor):
    """mmseg's ``SegDataPreProcessor``; a batch with ``unlabelled`` views gets them normalised and padded like
    its images, to the labelled batch's size: ``weak``, ``partner_weak`` ``[B, 3, H, W]``, ``strong``,
    ``partner_strong`` ``[V, B, 3, H, W]``, ``box`` bool ``[V, B, H, W]``, ``valid``, ``partner_valid`` bool
    ``[B, H, W]`` (False on padding) and ``gt`` int64 ``[B, H, W]`` (255 where unknown; diagnostics only)."""

    def forward(self, data: dict, training: bool = False) -> dict:
        if "unlabelled" not in data:
            return super().forward(data, training)
        out = super().forward({k: v for k, v in data.items() if k != "unlabelled"}, training)
        out["unlabelled"] = self.unlabelled_batch(self.cast_data(data["unlabelled"]), tuple(out["inputs"].shape[-2:]))
        return out

    def _image(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """uint8 ``[..., 3, h, w]`` (BGR as packed) -> float ``[..., 3, H, W]``, as the labelled images."""
        if self.channel_conversion:
            img = img[..., [2, 1, 0], :, :]
        img = img.float()
        if self._enable_normalize:
            img = (img - self.mean) / self.std
        return _pad(img, size, self.pad_val)

    def unlabelled_batch(self, u: dict, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The collated per-item lists of :class:`~finetune.consistency_data.ConsistencyDataset` as batch tensors."""
        def valid(images):
            return torch.stack([_pad(torch.ones(img.shape[-2:], dtype=torch.bool, device=img.device), size, False)
                                for img in images])

        return {
            "weak": torch.stack([self._image(x, size) for x in u["weak"]]),
            "partner_weak": torch.stack([self._image(x, size) for x in u["partner_weak"]]),
            "strong": torch.stack([self._image(x, size) for x in u["strong"]], dim=1),  # [V, B, 3, H, W]
            "partner_strong": torch.stack([self._image(x, size) for x in u["partner_strong"]], dim=1),
            "box": torch.stack([_pad(b, size, False) for b in u["box"]], dim=1),  # [V, B, H, W]
            "valid": valid(u["weak"]), "partner_valid": valid(u["partner_weak"]),
            "gt": torch.stack([_pad(g.long(), size, self.seg_pad_val) for g in u["gt"]]),
        }


@MODELS.register_module()
class ConsistencyEncoderDecoder(EncoderDecoder):
    """mmseg's ``EncoderDecoder`` whose loss mode learns from unlabelled views too (FixMatch / UniMatch).

    Args:
        consistency: :class:`StepSettings` as a dict. Everything else is ``EncoderDecoder``'s.
    """

    def __init__(self, *args, consistency: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.settings = StepSettings(**(consistency or {}))

    def forward(self, inputs, data_samples=None, mode: str = "tensor", unlabelled: dict | None = None):
        if mode == "loss" and unlabelled is not None:
            with step_rng(self.settings.seed, inputs.device):
                return self.consistency_loss(inputs, data_samples, unlabelled)
        return super().forward(inputs, data_samples, mode)

    def _full(self, logits: torch.Tensor, size) -> torch.Tensor:
        """Logits at image resolution (bilinear, as mmseg's losses resize them)."""
        return resize(logits, size=tuple(size), mode="bilinear", align_corners=self.decode_head.align_corners)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        """Decode-head logits of ``images`` ``[N, 3, H, W]`` at image resolution ``[N, K, H, W]``."""
        return self._full(self.decode_head.forward(self.extract_feat(images)), images.shape[-2:])

    def _eval_logits(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`_logits` in eval mode without gradient (UniMatch's pseudo-labels of the CutMix partner)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self._logits(images)
        finally:
            self.train(was_training)

    def _labelled_losses(self, feats: list, logits: torch.Tensor, data_samples) -> dict:
        """The mmseg config's decode and auxiliary losses on the labelled batch, loss terms times the labelled weight."""
        losses = add_prefix(self.decode_head.loss_by_feat(logits, data_samples), "decode")
        if self.with_auxiliary_head:
            b = logits.shape[0]
            losses.update(self._auxiliary_head_forward_train([f[:b] for f in feats], data_samples))
        w = self.settings.labelled_weight
        return {k: v * w if "loss" in k else v for k, v in losses.items()}

    def _diagnostics(self, conf, label, valid, gt) -> dict[str, torch.Tensor]:
        """mask_ratio, pseudo_acc, pseudo_acc_all of the weak view, over the batch of every process."""
        counts = pseudo_label_counts(conf, label, valid, gt, self.settings.threshold)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        return pseudo_label_stats(counts)

    def consistency_loss(self, inputs: torch.Tensor, data_samples, u: dict) -> dict[str, torch.Tensor]:
        """One FixMatch / UniMatch step: the loss dict mmengine sums (keys with "loss") and logs.

        Args:
            inputs: labelled images ``[B, 3, H, W]``; data_samples: their labels.
            u: :meth:`ConsistencyDataPreProcessor.unlabelled_batch` (B unlabelled images and partners).
        """
        s, b, size = self.settings, inputs.shape[0], inputs.shape[-2:]
        partner = pseudo_labels(self._eval_logits(u["partner_weak"]))  # (conf, label) [B, H, W]
        # labelled and weak views through one backbone pass (BN sees both, as UniMatch); UniMatch's
        # perturbed-feature stream is the weak view's features under Dropout2d, decoded in the same pass
        feats = self.extract_feat(torch.cat([inputs, u["weak"]]))  # levels [2B, C_l, h_l, w_l]
        if s.method == "unimatch":
            feats_head = [torch.cat([f, F.dropout2d(f[b:], s.fp_dropout, training=True)]) for f in feats]  # [3B, ...]
        else:
            feats_head = feats
        logits = self.decode_head.forward(feats_head)  # [2B or 3B, K, h, w]
        losses = self._labelled_losses(feats, logits[:b], data_samples)
        conf, label = pseudo_labels(self._full(logits[b:2 * b], size))  # the weak view's pseudo-labels [B, H, W]
        # the strong views, each mixed with its partner in its box, in one pass
        logits_strong = self._logits(torch.cat([mixed_images(u, v) for v in range(s.num_strong)]))  # [V*B, K, H, W]
        strong = [unlabelled_ce(view_logits, *mixed_targets(u, v, (conf, label), partner), s.threshold)
                  for v, view_logits in enumerate(logits_strong.chunk(s.num_strong))]
        fp = None
        if s.method == "unimatch":
            fp = unlabelled_ce(self._full(logits[2 * b:], size), label, conf, u["valid"], s.threshold)
        losses.update(unlabelled_terms(strong, fp, s.weights))
        losses.update(self._diagnostics(conf, label, u["valid"], u["gt"]))
        return losses
