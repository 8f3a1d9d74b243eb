"""The data of a consistency fine-tune: labelled and unlabelled images batched together, strong views, CutMix boxes.

:class:`ConsistencyDataset` (mmseg ``DATASETS``) wraps the labelled training dataset of the mmseg config
(``dataset``, its pipeline unchanged) and a dataset of unlabelled images (``unlabelled``, the same class
with :func:`unlabelled_pipeline`). Item ``i`` is the labelled item ``i mod N_l`` plus, under the key
``unlabelled``, the weak view of unlabelled image ``i mod N_u`` (the train pipeline's geometry: resize,
crop, flip; no photometric change), a CutMix partner (another unlabelled image, weak view), the strong
views of both (:func:`strong_view`) and one CutMix box per strong view (:func:`cutmix_box`). The length
is ``max(N_l, N_u)``: one pass of the sampler sees every unlabelled image once (UniMatch repeats the
labelled set to the unlabelled set's length).

Strong views are photometric only, drawn on the weak view, so every strong-view pixel shows the weak-view
pixel at the same place: a pseudo-label needs no geometric transform, only the view's CutMix
(:func:`finetune.consistency_losses.cutmix`, applied to images, pseudo-labels, confidences and valid masks
alike). Every random number comes from numpy's global generator, as in mmseg's own transforms (seeded by
mmengine per worker), in a fixed count per item, so a resumed run (mmengine replays the data of the
iterations it skips) sees the same items.

The ground truth of an unlabelled image, where the dataset has one, is carried as ``diag_seg_map`` through
the same geometry (:class:`RenameToDiagnostic`) for the logged pseudo-label accuracy only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF

from auxseg.config import ConfigError
from auxseg.mmseg_compat import import_mmseg
from finetune.config import StrongViewConfig

import_mmseg()

from mmcv.transforms.base import BaseTransform  # noqa: E402  (needs the compatibility layer first)
from mmseg.registry import DATASETS, TRANSFORMS  # noqa: E402

IGNORE_INDEX = 255
GEOMETRIC_TRANSFORMS = ("Resize", "RandomResize", "RandomCrop", "RandomFlip")  # carry diag_seg_map, add no padding
PHOTOMETRIC_TRANSFORMS = ("PhotoMetricDistortion",)  # left out of the weak view (UniMatch: geometry only)


# ----------------------------------------------------------------------------- strong views and boxes


@dataclass(frozen=True)
class StrongParams:
    """One strong view's random choices (:func:`sample_strong`)."""

    jitter: tuple[float, float, float, float] | None  # brightness, contrast, saturation factors and hue shift
    order: tuple[int, ...]  # the order of the four jitter operations (torchvision's ColorJitter shuffles too)
    grayscale: bool
    blur_sigma: float | None


def sample_strong(rng, cfg: StrongViewConfig) -> StrongParams:
    """Draw a strong view's parameters (always the same count of numbers). ``rng``: numpy's ``RandomState`` API."""
    b, c, s, h = cfg.jitter
    jitter_on = rng.random_sample() < cfg.jitter_p
    factors = (rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
               rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-h, h))
    order = tuple(int(i) for i in rng.permutation(4))
    grayscale = rng.random_sample() < cfg.grayscale_p
    blur_on = rng.random_sample() < cfg.blur_p
    sigma = rng.uniform(*cfg.blur_sigma)
    return StrongParams(tuple(float(f) for f in factors) if jitter_on else None, order, bool(grayscale),
                        float(sigma) if blur_on else None)


def strong_view(image: np.ndarray, p: StrongParams) -> np.ndarray:
    """Colour jitter, grayscale and Gaussian blur (in that order, as UniMatch) of a uint8 ``[H, W, 3]`` BGR image."""
    rgb = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)  # [3, H, W] RGB uint8
    if p.jitter is not None:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for i in p.order:
            rgb = ops[i](rgb, p.jitter[i])
    if p.grayscale:
        rgb = TF.rgb_to_grayscale(rgb, num_output_channels=3)
    out = np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()[:, :, ::-1])  # [H, W, 3] BGR
    if p.blur_sigma is not None:  # PIL's GaussianBlur(radius) in UniMatch: radius is the std
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=p.blur_sigma, sigmaY=p.blur_sigma)
    return out


def cutmix_box(rng, height: int, width: int, cfg: StrongViewConfig) -> np.ndarray:
    """A bool ``[H, W]`` box (all False with probability ``1 - cutmix_p``): area share and aspect (h / w) drawn
    uniformly from ``cutmix_area`` and ``cutmix_aspect``, position uniform. UniMatch redraws until the box
    fits; here a side that does not fit is clipped to the image (a fixed count of draws)."""
    on = rng.random_sample() < cfg.cutmix_p
    area = rng.uniform(*cfg.cutmix_area) * height * width
    aspect = rng.uniform(*cfg.cutmix_aspect)
    u, v = rng.random_sample(), rng.random_sample()
    box = np.zeros((height, width), dtype=bool)
    if on:
        h = min(height, max(1, int(np.sqrt(area * aspect))))
        w = min(width, max(1, int(np.sqrt(area / aspect))))
        top, left = int(u * (height - h + 1)), int(v * (width - w + 1))
        box[top:top + h, left:left + w] = True
    return box


# ----------------------------------------------------------------------------- the unlabelled pipeline


@TRANSFORMS.register_module()
class RenameToDiagnostic(BaseTransform):
    """Move ``gt_seg_map`` to ``diag_seg_map`` (a seg field, so the geometry moves it): no transform or loss
    reads it as a target; the consistency step only scores pseudo-labels against it."""

    def transform(self, results: dict) -> dict:
        results["diag_seg_map"] = results.pop("gt_seg_map")
        results["seg_fields"] = ["diag_seg_map" if f == "gt_seg_map" else f for f in results.get("seg_fields", [])]
        return results


def unlabelled_pipeline(train_pipeline: list, with_ground_truth: bool) -> list[dict]:
    """The weak view's pipeline from the mmseg config's train pipeline: its loading and geometry, no photometric
    change and no packing; ``RandomCrop`` never looks at labels (``cat_max_ratio=1``). With
    ``with_ground_truth`` the label map is loaded as ``diag_seg_map`` (:class:`RenameToDiagnostic`)."""
    out = []
    for step in train_pipeline:
        kind = step["type"]
        if kind == "LoadImageFromFile" or kind in GEOMETRIC_TRANSFORMS:
            out.append(dict(step, cat_max_ratio=1.0) if kind == "RandomCrop" else dict(step))
        elif kind == "LoadAnnotations":
            if with_ground_truth:
                out += [dict(step), dict(type="RenameToDiagnostic")]
        elif kind not in PHOTOMETRIC_TRANSFORMS + ("PackSegInputs",):
            raise ConfigError(f"consistency: the train pipeline's {kind} is not known to the weak view of the "
                              f"unlabelled images (known: LoadImageFromFile, LoadAnnotations, "
                              f"{', '.join(GEOMETRIC_TRANSFORMS + PHOTOMETRIC_TRANSFORMS)}, PackSegInputs)")
    if not any(step["type"] == "RandomCrop" for step in out):
        raise ConfigError("consistency: the train pipeline needs a RandomCrop, so labelled and unlabelled images "
                          "share one batch size")
    return out


# ----------------------------------------------------------------------------- the dataset


def _chw(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> ``[3, H, W]`` (channel order kept: BGR, as ``PackSegInputs`` packs images)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


@DATASETS.register_module()
class ConsistencyDataset(torch.utils.data.Dataset):
    """Labelled items with the unlabelled views of a consistency fine-tune (module docstring).

    Args:
        dataset: the labelled dataset config (the mmseg config's train dataset).
        unlabelled: the unlabelled dataset config (its pipeline ends before packing).
        strong: :class:`~finetune.config.StrongViewConfig` as a dict.
        num_strong: strong views per image (FixMatch 1, UniMatch 2).
    """

    def __init__(self, dataset: dict, unlabelled: dict, strong: dict, num_strong: int) -> None:
        self.dataset = DATASETS.build(copy.deepcopy(dataset))
        self.unlabelled = DATASETS.build(copy.deepcopy(unlabelled))
        self.strong = StrongViewConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in strong.items()})
        self.num_strong = int(num_strong)
        if len(self.unlabelled) == 0:
            raise ConfigError("consistency: the unlabelled dataset is empty")

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def __len__(self) -> int:
        return max(len(self.dataset), len(self.unlabelled))

    def _weak(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The weak view (uint8 ``[H, W, 3]`` BGR) and its diagnostic ground truth ``[H, W]`` (255: none)."""
        results = self.unlabelled[index]
        image = results["img"]
        gt = results.get("diag_seg_map")
        return image, (np.full(image.shape[:2], IGNORE_INDEX, np.uint8) if gt is None else gt.astype(np.uint8))

    def __getitem__(self, index: int) -> dict:
        rng = np.random  # numpy's global generator, as mmseg's own transforms: mmengine seeds it per worker
        item = dict(self.dataset[index % len(self.dataset)])
        n = len(self.unlabelled)
        own = index % n
        mate = (own + 1 + rng.randint(n - 1)) % n if n > 1 else own  # another image when there is one
        (image, gt), (partner, _) = self._weak(own), self._weak(mate)
        views = [[strong_view(img, sample_strong(rng, self.strong)) for _ in range(self.num_strong)]
                 for img in (image, partner)]
        boxes = [cutmix_box(rng, *image.shape[:2], self.strong) for _ in range(self.num_strong)]
        item["unlabelled"] = {
            "weak": _chw(image), "strong": torch.stack([_chw(v) for v in views[0]]),  # [V, 3, H, W]
            "partner_weak": _chw(partner), "partner_strong": torch.stack([_chw(v) for v in views[1]]),
            "box": torch.from_numpy(np.stack(boxes)),  # bool [V, H, W]
            "gt": torch.from_numpy(np.ascontiguousarray(gt)),  # uint8 [H, W], diagnostics only
        }
        return item
