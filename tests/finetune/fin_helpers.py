"""Helpers of the fine-tune tests (imported by conftest.py and the tests; a unique module name on purpose)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_DEEPLAB = REPO_ROOT / "configs/finetune/mmseg/tiny/deeplabv3_r18-d8_tiny.py"
TINY_PSP = REPO_ROOT / "configs/finetune/mmseg/tiny/pspnet_r18-d8_tiny.py"


def tiny_mmseg_cfg(path: Path, data_root: Path, work_dir: Path, max_iters: int = 2):
    """The tiny mmseg config on ``data_root``: ``max_iters`` iterations, validate + checkpoint at the end."""
    from finetune.mmseg_config import load_mmseg_config

    cfg = load_mmseg_config(path)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = str(data_root)
    cfg.train_cfg.max_iters = max_iters
    cfg.train_cfg.val_interval = 2
    cfg.param_scheduler[0].end = max_iters
    cfg.default_hooks.checkpoint.interval = 2
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    cfg.experiment_name = f"test_{work_dir.name}"
    return cfg





def resnet18_export(path: Path, deep: bool = False, seed: int = 0) -> Path:
    """Write a backbone export per docs/contracts.md section 2 (random weights, like a real export's format).

    Plain stem: a torchvision resnet18 state_dict minus ``fc``, torchvision keys.
    Deep stem: mmseg's own ResNetV1c-18 state_dict, mmseg keys.
    """
    from auxseg.checkpoint_io import save_checkpoint

    torch.manual_seed(seed)
    if deep:
        from auxseg.mmseg_compat import import_mmseg

        import_mmseg()
        from mmseg.models.backbones import ResNetV1c

        state_dict = ResNetV1c(depth=18).state_dict()
        stem, key_format, mmseg_type = "deep", "mmseg", "ResNetV1c"
    else:
        import torchvision

        state_dict = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
        stem, key_format, mmseg_type = "plain", "torchvision", "ResNet"
    # distinctive values, so a test can tell loaded weights from a fresh init
    state_dict = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v for k, v in state_dict.items()}
    meta = {
        "format": "auxseg.backbone/1",
        "arch": "resnet18",
        "stem": stem,
        "key_format": key_format,
        "mmseg_type": mmseg_type,
        "mean": [120.0, 115.0, 100.0],
        "std": [60.0, 58.0, 57.0],
        "channel_order": "rgb",
        "config": {"note": "test export"},
        "auxlabels_sha256": None,
        "auxlabels_manifest": None,
        "iteration": 10,
        "versions": {"torch": str(torch.__version__), "auxseg": "0.1.0"},
    }
    save_checkpoint({"state_dict": copy.deepcopy(state_dict), "meta": meta}, path)
    return path





class TrainedRun:
    """What a tiny mmseg Runner run left behind: its work_dir and what hooks saw."""

    def __init__(self, work_dir: Path, train_iters: int, val_metrics: list[dict], cfg=None):
        self.work_dir, self.train_iters, self.val_metrics, self.cfg = work_dir, train_iters, val_metrics, cfg


def train_tiny(config: Path, data_root: Path, work_dir: Path, backbone_type: str, max_iters: int = 2,
               resume: bool = False, hooks=()) -> TrainedRun:
    """Train the tiny mmseg config with mmseg's own IoUMetric; count iterations and validations."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from auxseg.checkpoint_io import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()  # mmengine's resume calls torch.load(weights_only=True) itself

    class Count(Hook):
        def __init__(self):
            self.train_iters, self.val_metrics = 0, []

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.train_iters += 1

        def after_val_epoch(self, runner, metrics=None):
            self.val_metrics.append(dict(metrics))

    cfg = tiny_mmseg_cfg(config, data_root, work_dir, max_iters=max_iters)
    cfg.model.backbone.type = backbone_type
    cfg.val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])  # mmseg's own metric
    if resume:
        cfg.param_scheduler[0].end = 2  # the restored scheduler state is what counts (environment.md)
        cfg.resume = True
        cfg.experiment_name = f"resumed_{work_dir.parent.name}"
    counter = Count()
    runner = Runner.from_cfg(cfg)
    runner.register_hook(counter)
    for hook in hooks:
        runner.register_hook(hook)
    runner.train()
    return TrainedRun(work_dir, counter.train_iters, counter.val_metrics, cfg)
