"""The auxlabels stage's typed config schema (load it with ``auxseg.config.load_config``).

Defaults marked "paper" come from the NeurIPS 2021 supplement
(``docs/auxlabels.md`` lists them); the rest are this project's choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from auxseg.config import (
    ConfigError,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    ranged,
)
from auxseg.paths import check_separate


@dataclass
class ExtractorConfig:
    """The frozen feature extractor (see ``auxlabels.features.EXTRACTORS``)."""

    name: str = "resnet50"  # a name registered in auxlabels.features.EXTRACTORS (`auxseg auxlabels --help` lists them)
    checkpoint: str | None = None  # weights file; null only together with random_init: true
    random_init: bool = False  # explicit opt-in to random weights (ablations, tests)
    config: str | None = None  # mmseg model config (.py) when the checkpoint carries no meta.cfg
    layer: str = "layer4"  # ResNet: layer1..layer4; VGG: conv3|conv4|conv5; mmseg: decoder|backbone
    stride: PositiveInt = 8  # working stride: features are resized to 1/stride of the image (choice: 4 or 8)
    max_side: ranged(int, ge=16) | None = None  # downscale images whose longer side exceeds this before extraction
    batch_size: PositiveInt = 4  # images per forward pass (same-size images are batched together)
    device: str = "cpu"  # "cpu" or "cuda[:i]"
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU)
    # bf16 autocast of the forward on the CPU (opt-in; pays on a CPU with native bf16, `auxseg env`); the
    # features are cast back to float32 before K-means either way
    amp_cpu: bool = False
    channels_last: bool = True  # channels-last memory format on CUDA (ignored on CPU)
    seed: Seed = 0  # seed of the random initialisation when random_init is true
    # ViT / timm extractors (auxlabels.vit_extractors; docs/auxlabels.md, "Foundation-model extractors"):
    arch: str | None = None  # dinov2: vits14..vitg14_reg4, dino: vits8..vitb16 (null: from the file); timm: model name
    blocks: ranged(list[int], ge=-128, le=127) = field(default_factory=list)  # ViT blocks / timm CNN levels, concatenated; []: the last
    token_stride: PositiveInt | None = None  # ViT: image px per token (image scaled by patch/token_stride); null: the patch size
    max_tokens: PositiveInt = 4096  # ViT: at most this many patch tokens per image (larger images are scaled down)


@dataclass
class KMeansConfig:
    """faiss K-means fitted on a pixel sample, then nearest-centroid assignment of every pixel."""

    k: ranged(int, ge=2) | None = None  # null: round(k_factor * num_classes) (paper: K = 1.5 M, Table 2)
    k_factor: PositiveFloat = 1.5
    n_fit: PositiveInt = 5000  # images the fit samples pixels from (paper: 5,000, Table 5); all if fewer
    fit_pixels: PositiveInt = 100_000  # pixels in the fit sample, spread evenly over the n_fit images (choice)
    calib_fraction: NonNegativeFloat = 0.2  # extra held-out pixels (relative to fit_pixels) for the outlier threshold
    niter: PositiveInt = 25
    nredo: PositiveInt = 1
    seed: Seed = 0
    gpu: bool = False  # faiss GPU when available; falls back to CPU with a warning
    threads: PositiveInt | None = None  # faiss OpenMP threads (null: faiss default)


@dataclass
class DBSCANConfig:
    """scikit-learn DBSCAN on a bounded pixel sample (paper: 20,000 pixels)."""

    num_samples: PositiveInt = 20_000
    eps: PositiveFloat | None = None  # null: the eps_quantile of the min_samples-th neighbour distance
    eps_quantile: Fraction = 0.5
    min_samples: PositiveInt = 10
    seed: Seed = 0


@dataclass
class OutlierConfig:
    """Outlier removal: the pixels farthest from their cluster centre become ignore (paper: 5%, Table 4)."""

    enabled: bool = True
    fraction: ranged(float, ge=0, lt=1) = 0.05
    mode: Literal["global", "per_cluster"] = "global"  # one threshold, or one per cluster (choice)


@dataclass
class SuperpixelConfig:
    """SLIC superpixels; each superpixel takes the majority cluster of its non-ignored pixels."""

    enabled: bool = True
    method: Literal["fast_slic", "skimage"] = "fast_slic"
    n_segments: PositiveInt = 500  # paper: 200-2000 give the same mIoU (Table 3)
    compactness: PositiveFloat = 10.0


@dataclass
class SoftLabelsConfig:
    """Soft auxiliary labels: a prior over the K clusters per working-stride cell, beside each label PNG.

    The rule is in :mod:`auxlabels.soft_labels` and docs/auxlabels.md; K-means only.
    """

    enabled: bool = False  # off: the stage writes exactly what it wrote before (no priors/)
    topk: ranged(int, ge=1, le=255) = 3  # nearest centroids searched per cell and labels stored per cell (choice)
    temperature: PositiveFloat = 0.1  # tau, in units of the median squared nearest-centroid distance (choice)
    outlier_temperature: PositiveFloat = 4.0  # outlier cells use tau * this (flatter prior instead of ignore; choice)
    superpixel_weight: Fraction = 0.5  # w: p = (1 - w) p_own + w * superpixel mean (choice); 0 = no soft vote


@dataclass
class AuxLabelsConfig:
    """Everything the auxlabels stage needs: inputs, extractor, clusterer, cleaning, outputs."""

    image_dir: str = ""  # folder of images (searched recursively)
    image_list: str | None = None  # optional text file of paths relative to image_dir, one per line
    gt_dir: str | None = None  # optional ground truth for image_dir images (same relative stem, .png)
    eval_image_dir: str | None = None  # optional extra (validation) images labelled in the same run
    eval_gt_dir: str | None = None  # ground truth for eval_image_dir
    fit_on_eval_images: bool = False  # also sample eval_image_dir images for the K-means/DBSCAN fit
    num_classes: PositiveInt | None = None  # M, for K = round(1.5 M) and PmIoU
    class_names: list[str] = field(default_factory=list)
    gt_ignore_values: ranged(list[int], ge=0, le=65535) = field(default_factory=lambda: [255])
    out_dir: str = "runs/auxlabels"
    clusterer: Literal["kmeans", "dbscan", "superpixel"] = "kmeans"
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    dbscan: DBSCANConfig = field(default_factory=DBSCANConfig)
    outliers: OutlierConfig = field(default_factory=OutlierConfig)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    soft_labels: SoftLabelsConfig = field(default_factory=SoftLabelsConfig)
    num_workers: NonNegativeInt = 0  # CPU worker processes for superpixels/vote/PNG writing (0: in-process)
    on_bad_image: Literal["skip", "stop"] = "skip"  # unreadable image: report and skip, or stop the run
    feature_cache_gb: NonNegativeFloat = 4.0  # disk budget for caching the fit images' features between passes
    keep_cache: bool = False
    resume: bool = True  # reuse finished outputs of an interrupted run with the same settings
    progress: bool = True  # tqdm progress bars


def validate(cfg: AuxLabelsConfig) -> None:
    """Check cross-field rules the schema cannot express (each key's own range is in the schema, checked by
    the loader); raise ConfigError naming the key."""
    if not cfg.image_dir:
        raise ConfigError("image_dir: required (a folder of images)")
    if cfg.gt_dir is not None and cfg.num_classes is None:
        raise ConfigError("num_classes: required when gt_dir is given (PmIoU needs M)")
    if cfg.eval_gt_dir is not None and cfg.eval_image_dir is None:
        raise ConfigError("eval_gt_dir: given without eval_image_dir")
    if cfg.eval_gt_dir is not None and cfg.num_classes is None:
        raise ConfigError("num_classes: required when eval_gt_dir is given (PmIoU needs M)")
    if cfg.class_names and cfg.num_classes is not None and len(cfg.class_names) != cfg.num_classes:
        raise ConfigError(
            f"class_names: {len(cfg.class_names)} names for num_classes={cfg.num_classes}"
        )
    if cfg.clusterer == "kmeans" and cfg.kmeans.k is None and cfg.num_classes is None:
        raise ConfigError("kmeans.k: set it, or set num_classes so that K = round(k_factor * M)")
    if cfg.clusterer != "superpixel" and cfg.extractor.checkpoint is None and not cfg.extractor.random_init:
        raise ConfigError(
            "extractor.checkpoint: required (a weights file); random weights only with "
            "extractor.random_init=true"
        )
    if cfg.clusterer == "superpixel" and not cfg.superpixels.enabled:
        raise ConfigError("superpixels.enabled: the superpixel clusterer needs superpixels")
    if cfg.soft_labels.enabled and cfg.clusterer != "kmeans":
        raise ConfigError(f"soft_labels.enabled: soft labels need clusterer=kmeans, not {cfg.clusterer!r}")
    # labels written inside an image folder would be read back as images by the next scan
    check_separate(cfg.out_dir, "out_dir", {"image_dir": cfg.image_dir, "eval_image_dir": cfg.eval_image_dir,
                                            "gt_dir": cfg.gt_dir, "eval_gt_dir": cfg.eval_gt_dir})


def resolve_k(cfg: AuxLabelsConfig) -> int:
    """K for K-means: ``kmeans.k`` or round-half-up of ``k_factor * num_classes`` (11 classes -> 17)."""
    if cfg.kmeans.k is not None:
        return cfg.kmeans.k
    assert cfg.num_classes is not None
    # int(x + 0.5), not round(): Python rounds 16.5 to 16 (banker's rounding)
    return max(2, int(cfg.kmeans.k_factor * cfg.num_classes + 0.5))
