"""Segmentation datasets for fine-tuning, registered in mmseg's ``DATASETS``.

- :class:`CamVidDataset`: the SegNet release of CamVid (11 classes; label 11
  "Unlabelled" becomes the ignore value 255 when labels are loaded).
- :class:`NYUv2Dataset`: the semantic NYUv2 labelled subset with Gupta et al.'s
  40-class mapping, in the layout written by ``auxseg data prepare nyuv2``
  (mmseg's own ``NYUDataset`` is for depth only).
- :class:`LabelFolderDataset`: any CamVid-layout folder whose classes are
  given in the config (the synthetic data of ``auxseg.synthetic`` for tests).
- Cityscapes and ADE20K use mmseg's own classes and layouts;
  ``auxseg data prepare cityscapes`` (:mod:`finetune.prepare`) writes the
  ``*_labelTrainIds.png`` files mmseg's ``CityscapesDataset`` reads, from the
  official ``*_labelIds.png``.

Importing this module installs the mmcv compatibility layer first, so mmseg
configs can name it in ``custom_imports``.
"""

from __future__ import annotations

import numpy as np

from auxseg.mmseg_compat import import_mmseg

import_mmseg()

from mmseg.datasets import BaseSegDataset  # noqa: E402  (needs the compatibility layer first)
from mmseg.registry import DATASETS  # noqa: E402

from finetune.nyuv2 import NYUV2_40_CLASSES  # noqa: E402  (the NYUv2 format module owns its class list)

IGNORE_INDEX = 255

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)
# The SegNet tutorial's colour code for the 11 classes.
CAMVID_PALETTE = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [0, 0, 192], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]
CAMVID_UNLABELLED = 11

def _palette(n: int, seed: int = 7) -> list[list[int]]:
    """A fixed pseudo-random palette (only used for visualisation)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3)).tolist()


class _ExtraLabelMapMixin:
    """Adds fixed ``{raw value: new value}`` remappings (e.g. "unlabelled" -> 255) to mmseg's label map.

    mmseg applies ``label_map`` in ``LoadAnnotations``; it only builds one when
    the user selects a subset of classes. We merge our fixed entries into it so
    both work together.
    """

    EXTRA_LABEL_MAP: dict[int, int] = {}

    @classmethod
    def get_label_map(cls, new_classes=None):
        label_map = super().get_label_map(new_classes)
        if not cls.EXTRA_LABEL_MAP:
            return label_map
        merged = dict(label_map or {})
        merged.update(cls.EXTRA_LABEL_MAP)
        return merged


@DATASETS.register_module()
class CamVidDataset(_ExtraLabelMapMixin, BaseSegDataset):
    """CamVid, SegNet layout: ``train/ trainannot/ val/ valannot/``, PNG images and labels.

    Label values 0..10 are the classes of :data:`CAMVID_CLASSES`; 11
    ("Unlabelled") is mapped to 255 and ignored by the loss and by IoUMetric.
    """

    METAINFO = dict(classes=CAMVID_CLASSES, palette=CAMVID_PALETTE)
    EXTRA_LABEL_MAP = {CAMVID_UNLABELLED: IGNORE_INDEX}

    def __init__(self, img_suffix: str = ".png", seg_map_suffix: str = ".png", **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)


@DATASETS.register_module()
class NYUv2Dataset(BaseSegDataset):
    """Semantic NYUv2 (labelled subset, 795 train / 654 test), 40 classes.

    Layout written by ``auxseg data prepare nyuv2``: ``images/{train,test}/NNNN.png``
    and ``labels40/{train,test}/NNNN.png`` with values 0..39 and 255 for
    unlabelled pixels (the raw class 0), so no ``reduce_zero_label`` is needed.
    """

    METAINFO = dict(classes=NYUV2_40_CLASSES, palette=_palette(40))

    def __init__(self, img_suffix: str = ".png", seg_map_suffix: str = ".png", **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)


@DATASETS.register_module()
class LabelFolderDataset(BaseSegDataset):
    """A CamVid-layout folder whose class names come from the config's ``metainfo``.

    Label PNG values are ``0..C-1`` with 255 = ignore (``auxseg.synthetic``'s
    output). Without ``metainfo=dict(classes=...)`` it refuses to build, since
    IoUMetric needs the class names.
    """

    METAINFO: dict = dict()

    def __init__(self, img_suffix: str = ".png", seg_map_suffix: str = ".png", metainfo=None, **kwargs):
        if not metainfo or not metainfo.get("classes"):
            raise ValueError("LabelFolderDataset needs metainfo=dict(classes=[...]) in the dataset config")
        metainfo = dict(metainfo)
        metainfo.setdefault("palette", _palette(len(metainfo["classes"])))
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, metainfo=metainfo, **kwargs)

