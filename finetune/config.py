"""Typed options of the fine-tune stage (``auxseg finetune CONFIG [key=value ...]``).

The network, dataset layout and schedule live in an mmsegmentation config
(``mmseg_config``, a short diff on mmseg's own under configs/finetune/mmseg/);
this dataclass says *what to run it on*: which data folder, which split of
the labelled training images, which initialisation, where to write, and the
few schedule knobs worth overriding from the command line. The YAML presets
are under configs/finetune/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from auxseg.config import (
    ConfigError,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    added_section,
    ranged,
)
from auxseg.paths import resolve_path


@dataclass
class SplitConfig:
    """Which labelled training images to use. At most one of file / fraction / num_images."""

    file: str | None = None  # split file of stems (see finetune/splits.py); relative to the repo root or cwd
    fraction: ranged(float, gt=0, le=1) | None = None  # e.g. 0.1 for the paper's 10% (method.md, Stage 3)
    num_images: PositiveInt | None = None  # e.g. 100 or 500 labelled images (supplement Table 7)
    seed: Seed = 0  # seed of the deterministic subset (fraction / num_images)


@dataclass
class InitConfig:
    """How the backbone is initialised (see finetune/convert.py)."""

    type: Literal["random", "export", "torchvision", "moco", "mmseg"] = "random"
    checkpoint: str | None = None
    # optional decoder export (decoder_mmseg.pth of `auxseg pretrain` with model.decoder=aspp): initialises
    # the DeepLabV3 ASPPHead of the mmseg config, whose in_channels/channels/dilations it must match
    decoder: str | None = None


@dataclass
class TargetsConfig:
    """What the training images are supervised with (docs/finetune.md, "Fine-tuning from priors")."""

    # labels: the dataset's label maps; coarse: priors built from them downsampled `factor` times and blurred;
    # prior_folder: per-image priors of a label folder with priors/ (auxseg.contracts.priors), K = dataset classes
    kind: Literal["labels", "coarse", "prior_folder"] = "labels"
    factor: PositiveInt = 16  # coarse: block size in label pixels (majority vote per block)
    blur_sigma: NonNegativeFloat | None = None  # coarse: Gaussian std in label pixels; None = factor (supplement E.1.2); 0 = none
    folder: str | None = None  # prior_folder: label folder of the training images (image_root = the train images)
    val_folder: str | None = None  # prior_folder: label folder of the validation images, for mIoU_r; None: no mIoU_r


@dataclass
class LossConfig:
    """The decode and auxiliary heads' loss: ce (on the argmax of the prior), or QR / RQ on the prior itself."""

    name: Literal["ce", "qr", "rq"] = "ce"
    warmup_iters: NonNegativeInt = 0  # qr/rq: cross-entropy on the prior for the first iterations (guard against collapse)
    mass_momentum: ranged(float, ge=0, lt=1) = 0.0  # qr/rq: 0 = class mass of the batch; m > 0: m * running + (1 - m) * batch
    smoothing: ranged(float, ge=0, lt=1) = 1e-4  # qr/rq: additive smoothing of q and p (supplement E.1.3); also for argmax r


@dataclass
class StrongViewConfig:
    """The strong perturbation of an unlabelled image; defaults are UniMatch's (``dataset/semi.py``,
    ``dataset/transform.py`` of LiheYoung/UniMatch, CVPR 2023), each drawn independently per view."""

    jitter_p: Fraction = 0.8  # probability of a colour jitter
    # brightness, contrast, saturation: factors from [1 - x, 1 + x]; hue: shift from [-x, x] of a turn (<= 0.5)
    jitter: ranged(tuple[float, float, float, float], ge=0, le=1) = (0.5, 0.5, 0.5, 0.25)
    grayscale_p: Fraction = 0.2
    blur_p: Fraction = 0.5
    blur_sigma: ranged(tuple[float, float], gt=0) = (0.1, 2.0)  # Gaussian std, px, drawn uniformly
    cutmix_p: Fraction = 0.5  # probability that a box of the view comes from another unlabelled image
    cutmix_area: ranged(tuple[float, float], gt=0, le=1) = (0.02, 0.4)  # box area, share of the image
    cutmix_aspect: ranged(tuple[float, float], gt=0) = (0.3, 1 / 0.3)  # box height / width


@dataclass
class ConsistencyConfig:
    """Weak-to-strong consistency on the unlabelled images (docs/consistency.md). ``none``: labels only."""

    # fixmatch: one strong view (Sohn et al. 2020, as UniMatch's fixmatch.py); unimatch: two strong views and a
    # feature-perturbation stream (Yang et al., CVPR 2023)
    method: Literal["none", "fixmatch", "unimatch"] = "none"
    threshold: Fraction = 0.95  # confidence a pseudo-label needs (UniMatch's Pascal / COCO configs)
    # loss = labelled_weight * (the mmseg config's losses on the labelled batch) + unlabelled_weight * L_u;
    # UniMatch halves both: (loss_x + loss_u) / 2
    labelled_weight: NonNegativeFloat = 0.5
    unlabelled_weight: NonNegativeFloat = 0.5
    # unimatch only: L_u = (1 - fp_share) * mean over the strong views + fp_share * the perturbed-feature term
    # (UniMatch: 0.25 + 0.25 + 0.5)
    fp_share: Fraction = 0.5
    fp_dropout: ranged(float, ge=0, lt=1) = 0.5  # unimatch only: Dropout2d on the encoder features
    # None: the training images outside the labelled split; else a folder of images (the dataset's image suffix)
    unlabelled_folder: str | None = None
    # score the pseudo-labels against the ground truth of unlabelled images that have one (a diagnostic: it is
    # logged, never trained on)
    score_pseudo_labels: bool = True
    strong: StrongViewConfig = field(default_factory=StrongViewConfig)

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def num_strong(self) -> int:
        return 2 if self.method == "unimatch" else 1


@dataclass
class FinetuneConfig:
    mmseg_config: str = "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"
    data_root: str | None = None  # overrides the mmseg config's data_root (train and val)
    work_dir: str = "work_dirs/finetune/tiny"
    split: SplitConfig = field(default_factory=SplitConfig)
    init: InitConfig = field(default_factory=InitConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    max_iters: PositiveInt | None = None  # None: the mmseg config's schedule
    val_interval: PositiveInt | None = None  # None: the mmseg config's
    checkpoint_interval: PositiveInt | None = None  # None: the mmseg config's
    batch_size: PositiveInt | None = None  # per process; None: the mmseg config's
    lr: PositiveFloat | None = None  # None: the mmseg config's
    num_workers: NonNegativeInt = 2  # dataloader worker processes (0 = load in the main process)
    seed: Seed = 0  # mmengine randomness seed (model init, sampler, augmentation)
    deterministic: bool = False
    device: Literal["cpu", "cuda"] = "cpu"
    # bf16 autocast: mmengine's AmpOptimWrapper on cuda, finetune.amp.CPUBf16OptimWrapper on cpu (pays on a CPU
    # with native bf16, `auxseg env`). Opt-in.
    amp: bool = False
    launcher: Literal["none", "pytorch", "slurm"] = "none"  # DDP launcher; BN becomes SyncBN when distributed
    resume: bool = True  # continue from the newest checkpoint in work_dir when there is one
    tensorboard: bool = True  # also log scalars to <work_dir>/<timestamp>/vis_data (TensorBoard)
    log_interval: PositiveInt | None = None  # iterations between log lines; None: the mmseg config's
    # extra mmseg config overrides, dotted keys; passed to mmseg as given, except that the loader refuses a NaN or
    # infinite number anywhere inside (auxseg.config)
    cfg_options: dict[str, Any] = field(default_factory=dict)
    # learn from the unlabelled images too (FixMatch / UniMatch); left out of the saved config while off
    consistency: ConsistencyConfig = added_section(ConsistencyConfig)

    def __post_init__(self) -> None:
        chosen = [k for k in ("file", "fraction", "num_images") if getattr(self.split, k) is not None]
        if len(chosen) > 1:
            raise ConfigError(f"split: give only one of file / fraction / num_images, got {', '.join(chosen)}")
        t = self.targets
        if (t.kind == "prior_folder") != (t.folder is not None):
            raise ConfigError("targets.folder is required with targets.kind=prior_folder and only then")
        if t.val_folder is not None and t.kind != "prior_folder":
            raise ConfigError("targets.val_folder is only used with targets.kind=prior_folder")
        if self.launcher == "slurm" and self.device == "cpu":
            raise ConfigError("launcher=slurm needs device=cuda (mmengine's SLURM start picks a GPU); on CPUs start "
                              "the processes with torchrun and launcher=pytorch")
        c = self.consistency
        if c.enabled and (t.kind != "labels" or self.loss.name != "ce"):
            raise ConfigError(f"consistency.method={c.method} trains on labels with cross-entropy; it does not "
                              f"combine with targets.kind={t.kind} / loss.name={self.loss.name}")
        for key in ("blur_sigma", "cutmix_area", "cutmix_aspect"):
            low, high = getattr(c.strong, key)
            if low > high:
                raise ConfigError(f"consistency.strong.{key}: [{low}, {high}] is not an interval (low > high)")


@dataclass(frozen=True)
class FinetunePaths:
    """Every path of a :class:`FinetuneConfig`, resolved once (:func:`auxseg.paths.resolve_path`) when a run
    starts; None where the config names none."""

    work_dir: Path
    mmseg_config: Path
    data_root: Path | None
    split_file: Path | None
    init_checkpoint: Path | None
    init_decoder: Path | None
    targets_folder: Path | None
    targets_val_folder: Path | None
    unlabelled_folder: Path | None


def resolve_paths(cfg: FinetuneConfig) -> FinetunePaths:
    """The config's paths as absolute paths (relative ones against the working folder, or the shipped presets)."""

    def optional(value: str | None) -> Path | None:
        return None if value is None else resolve_path(value)

    return FinetunePaths(
        work_dir=resolve_path(cfg.work_dir), mmseg_config=resolve_path(cfg.mmseg_config),
        data_root=optional(cfg.data_root), split_file=optional(cfg.split.file or None),
        init_checkpoint=optional(cfg.init.checkpoint or None), init_decoder=optional(cfg.init.decoder or None),
        targets_folder=optional(cfg.targets.folder), targets_val_folder=optional(cfg.targets.val_folder),
        unlabelled_folder=optional(cfg.consistency.unlabelled_folder))
