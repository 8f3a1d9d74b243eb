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
from typing import Any, Literal

from auxseg.config import ConfigError


@dataclass
class SplitConfig:
    """Which labelled training images to use. At most one of file / fraction / num_images."""

    file: str | None = None  # split file of stems (see finetune/splits.py); relative to the repo root or cwd
    fraction: float | None = None  # e.g. 0.1 for the paper's 10% (method.md, Stage 3)
    num_images: int | None = None  # e.g. 100 or 500 labelled images (supplement Table 7)
    seed: int = 0  # seed of the deterministic subset (fraction / num_images)


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
    factor: int = 16  # coarse: block size in label pixels (majority vote per block)
    blur_sigma: float | None = None  # coarse: Gaussian std in label pixels; None = factor (supplement E.1.2); 0 = none
    folder: str | None = None  # prior_folder: label folder of the training images (image_root = the train images)
    val_folder: str | None = None  # prior_folder: label folder of the validation images, for mIoU_r; None: no mIoU_r


@dataclass
class LossConfig:
    """The decode and auxiliary heads' loss: ce (on the argmax of the prior), or QR / RQ on the prior itself."""

    name: Literal["ce", "qr", "rq"] = "ce"
    warmup_iters: int = 0  # qr/rq: cross-entropy on the prior for the first iterations (guard against collapse)
    mass_momentum: float = 0.0  # qr/rq: 0 = class mass of the batch; m > 0: m * running + (1 - m) * batch
    smoothing: float = 1e-4  # qr/rq: additive smoothing of q and p (supplement E.1.3); also for argmax r


@dataclass
class FinetuneConfig:
    mmseg_config: str = "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"
    data_root: str | None = None  # overrides the mmseg config's data_root (train and val)
    work_dir: str = "work_dirs/finetune/tiny"
    split: SplitConfig = field(default_factory=SplitConfig)
    init: InitConfig = field(default_factory=InitConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    max_iters: int | None = None  # None: the mmseg config's schedule
    val_interval: int | None = None  # None: the mmseg config's
    checkpoint_interval: int | None = None  # None: the mmseg config's
    batch_size: int | None = None  # per process; None: the mmseg config's
    lr: float | None = None  # None: the mmseg config's
    num_workers: int = 2  # dataloader worker processes (0 = load in the main process)
    seed: int = 0  # mmengine randomness seed (model init, sampler, augmentation)
    deterministic: bool = False
    device: Literal["cpu", "cuda"] = "cpu"
    amp: bool = False  # bf16 autocast (cuda only)
    launcher: Literal["none", "pytorch", "slurm"] = "none"  # DDP launcher; BN becomes SyncBN when distributed
    resume: bool = True  # continue from the newest checkpoint in work_dir when there is one
    tensorboard: bool = True  # also log scalars to <work_dir>/<timestamp>/vis_data (TensorBoard)
    log_interval: int | None = None  # iterations between log lines; None: the mmseg config's
    cfg_options: dict[str, Any] = field(default_factory=dict)  # extra mmseg config overrides, dotted keys

    def __post_init__(self) -> None:
        chosen = [k for k in ("file", "fraction", "num_images") if getattr(self.split, k) is not None]
        if len(chosen) > 1:
            raise ConfigError(f"split: give only one of file / fraction / num_images, got {', '.join(chosen)}")
        if self.split.fraction is not None and not 0 < self.split.fraction <= 1:
            raise ConfigError(f"split.fraction must be in (0, 1], got {self.split.fraction}")
        if self.split.num_images is not None and self.split.num_images < 1:
            raise ConfigError(f"split.num_images must be >= 1, got {self.split.num_images}")
        if self.amp and self.device != "cuda":
            raise ConfigError("amp=true needs device=cuda (bf16 autocast on CPU is not the tested path)")
        t, loss = self.targets, self.loss
        if t.factor < 1 or (t.blur_sigma is not None and t.blur_sigma < 0):
            raise ConfigError(f"targets.factor must be >= 1 and targets.blur_sigma >= 0, got {t.factor}, {t.blur_sigma}")
        if (t.kind == "prior_folder") != (t.folder is not None):
            raise ConfigError("targets.folder is required with targets.kind=prior_folder and only then")
        if t.val_folder is not None and t.kind != "prior_folder":
            raise ConfigError("targets.val_folder is only used with targets.kind=prior_folder")
        if loss.warmup_iters < 0 or not 0.0 <= loss.mass_momentum < 1.0 or not 0.0 <= loss.smoothing < 1.0:
            raise ConfigError("loss.warmup_iters must be >= 0, loss.mass_momentum and loss.smoothing in [0, 1)")
        for key in ("max_iters", "val_interval", "checkpoint_interval", "batch_size", "log_interval"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
