"""Typed configuration of the pre-training stage (``auxseg pretrain CONFIG``).

Defaults follow the paper where it gives a value (augmentations: supplement
Table 8; temperature 0.1 and the SGD/poly schedule: ``docs/method.md``,
Stage 2) and are marked "choice" where the sources are silent. Presets live in
``configs/pretrain/`` (``tiny.yaml`` runs on a laptop CPU in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Literal

from auxseg.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Seed, ranged


@dataclass
class DataConfig:
    # "folder": read an auxiliary-label folder (docs/contracts.md section 1).
    # "synthetic": generate auxseg.synthetic images and write their ground truth as a label
    # folder under <out_dir>/synthetic_data (for the tiny preset and demos; no downloads).
    # "images": a plain image folder (data.images), only for objectives that use no labels
    # (e.g. local_prediction); an all-ignore label folder is written under <out_dir>/unlabelled.
    source: Literal["folder", "synthetic", "images"] = "folder"
    labels: str = ""  # auxiliary-label folder holding manifest.json
    images: str = ""  # only for source="images": the image folder (searched recursively)
    image_root: str | None = None  # overrides the manifest's image_root (data moved elsewhere)
    verify_hash: bool = True  # recompute labels_sha256 and refuse a folder whose labels changed
    batch_size: PositiveInt = 16  # global number of images per step (each gives two views); paper choice
    num_workers: NonNegativeInt = 4
    synthetic_images: PositiveInt = 16  # only for source="synthetic"
    synthetic_size: ranged(tuple[int, int], ge=8) = (96, 128)  # (height, width), only for source="synthetic"


@dataclass
class AugmentConfig:
    """Two-view augmentation; every default is supplement Table 8 unless marked choice."""

    color_jitter: ranged(tuple[float, float, float, float], ge=0) = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    color_jitter_p: Fraction = 1.0  # choice: Table 8 gives no probability, so jitter is always applied
    grayscale_p: Fraction = 0.2
    cutout: ranged(tuple[int, int], ge=0) = (0, 40)  # side of the erased square, px (of the output crop)
    scale: ranged(tuple[float, float], gt=0) = (0.4, 2.5)
    rotation: ranged(tuple[float, float], ge=-180, le=180) = (-60.0, 60.0)  # degrees
    crop: ranged(tuple[int, int], ge=8) = (321, 361)  # side of the square crop window, px (after scaling)
    out_size: ranged(int, ge=8) = 321  # choice: every crop window is resized to this side so views batch together
    flip_p: Fraction = 0.5

    def __post_init__(self) -> None:
        for name in ("cutout", "scale", "rotation", "crop"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: the range {[lo, hi]} is empty (min > max)")
        for name in ("color_jitter_p", "grayscale_p", "flip_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: a probability must be in [0, 1], got {getattr(self, name)}")
        if self.scale[0] <= 0 or self.crop[0] < 1 or self.out_size < 8:
            raise ValueError("scale must be > 0, crop >= 1 px and out_size >= 8 px")


@dataclass
class ModelConfig:
    # resnet18 / resnet50: dilated ResNet (output stride 8, exported for mmseg). pixel / linear / predseg1:
    # the small networks of the local-prediction method (auxseg.contracts.small_model; random init, no decoder,
    # exported as small_model.pth).
    arch: Literal["resnet18", "resnet50", "pixel", "linear", "predseg1"] = "resnet50"
    stem: Literal["plain", "deep"] = "plain"  # plain = torchvision/ResNetV1b, deep = mmseg ResNetV1c
    # ResNets: 8 (mmseg's -d8 configs: stages 3 and 4 dilated) or 16 (-d16: only stage 4 dilated; about half
    # the compute). The weights do not depend on it: fine-tune with the mmseg config of the same stride.
    output_stride: ranged(int, ge=8, le=32) = 8
    decoder: Literal["none", "aspp"] = "none"  # pre-train the DeepLabV3 ASPP decoder too
    decoder_channels: PositiveInt = 512  # choice (mmseg's DeepLabV3 uses 512)
    # Initialisation: "random", or a checkpoint path (torchvision ImageNet state_dict, MoCo v2
    # checkpoint, or our own backbone export); keys are checked exactly.
    init: str = "random"
    # "train": ordinary BN; "sync": SyncBatchNorm across processes (CUDA only in torch);
    # "frozen": BN layers in eval mode with fixed statistics (affine still trained).
    norm: Literal["train", "sync", "frozen"] = "train"

    def __post_init__(self) -> None:
        from auxseg.nets.small import SMALL_MODELS

        if self.output_stride not in (8, 16):
            raise ValueError(f"model.output_stride must be 8 or 16, got {self.output_stride}")
        if self.arch in SMALL_MODELS and (self.decoder != "none" or self.init != "random"):
            raise ValueError(f"model.arch={self.arch} is a small model: it takes no decoder (model.decoder=none) "
                             "and starts from random weights (model.init=random)")


def _loss_schema() -> type:
    """``loss``: the objective's name plus one typed section per registered objective (``loss.<name>``).

    Built from :func:`pretrain.objectives.registry` (plug-ins included), so a new objective's
    section is validated like every other (unknown keys and wrong types are errors).
    """
    from pretrain.objectives import DISCOVERY_ERRORS, registry

    objectives = registry()  # runs the plug-ins: only commands that read a pretrain config get here

    def check_name(self) -> None:
        if self.name not in objectives:
            if DISCOVERY_ERRORS:  # the objective may be the plug-in that failed to load: say that first
                raise ValueError(f"loss.name: {self.name!r} is not registered; {DISCOVERY_ERRORS[0]}")
            raise ValueError(f"loss.name: {self.name!r} is not a registered objective (known: {', '.join(objectives)})")

    fields = [("name", str, field(default="infonce"))]
    fields += [(name, cls.Config, field(default_factory=cls.Config)) for name, cls in objectives.items()]
    return make_dataclass("LossConfig", fields, namespace={"__post_init__": check_name, "__module__": __name__})


def _default_loss():
    _define_schema()
    return LossConfig()  # noqa: F821  (defined by _define_schema)


def objective_section(loss_cfg) -> object:
    """The config section of the chosen objective, ``loss.<loss.name>``."""
    return getattr(loss_cfg, loss_cfg.name)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"  # method.md choice: SGD momentum 0.9
    lr: PositiveFloat = 0.01  # choice: base lr for batch 16
    momentum: Fraction = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    betas: ranged(tuple[float, float], ge=0, lt=1) = (0.9, 0.999)  # AdamW only
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    power: NonNegativeFloat = 0.9  # poly exponent
    min_lr: NonNegativeFloat = 1e-4
    warmup_iters: NonNegativeInt = 500
    warmup_ratio: Fraction = 0.1  # lr at iteration 0 = warmup_ratio * lr
    grad_clip: NonNegativeFloat = 0.0  # max global grad norm; 0 = off


@dataclass
class TrainConfig:
    max_iters: PositiveInt = 20000  # method.md: some 10k-40k iterations on GPU
    stop_at: NonNegativeInt = 0  # stop (with a checkpoint) at this iteration, as if killed; 0 = run to max_iters
    seed: Seed = 0
    device: str = "cpu"  # "cpu" or "cuda" (or "cuda:N"); under torchrun cuda uses LOCAL_RANK
    # autocast of the network's forward: bf16 on CUDA, or on a CPU with native bf16 (avx512_bf16 / amx_bf16,
    # `auxseg env`); fp16 with a GradScaler. The loss is fp32 either way. Opt-in: fp32 stays the default.
    amp: Literal["none", "bf16", "fp16"] = "none"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on cuda, gloo on cpu
    checkpoint_every: NonNegativeInt = 1000  # iterations between training checkpoints (0 = only at the end)
    keep_checkpoints: PositiveInt = 2
    resume: str = "auto"  # "auto": latest checkpoint in out_dir; "none"; or a path
    log_every: PositiveInt = 20
    histogram_every: PositiveInt = 200
    progress: bool = True  # tqdm progress bar with ETA (rank 0)
    tensorboard: bool = True


@dataclass
class PretrainConfig:
    out_dir: str = "work/pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=_default_loss)  # noqa: F821  (defined on first use, below)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# LossConfig and PretrainConfig exist from their first use on, not from import: the ``loss`` section lists the
# registered objectives, and registering them runs the plug-in files (pretrain.objectives.load_plugins).
# Importing this module for ModelConfig or AugmentConfig, or building the command line, runs none.
_PRETRAIN_CONFIG = globals().pop("PretrainConfig")


def _define_schema() -> None:
    if "PretrainConfig" not in globals():  # (not LossConfig: importlib.reload keeps the old one)
        globals()["LossConfig"] = _loss_schema()  # before PretrainConfig is handed out: its type hints name it
        globals()["PretrainConfig"] = _PRETRAIN_CONFIG


def __getattr__(name: str):
    if name in ("LossConfig", "PretrainConfig"):
        _define_schema()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
